package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// cancelNoCommit is a cancelStore without Committer: the field, shallower
// than the method the embedded store promotes, hides it.
type cancelNoCommit struct {
	*cancelStore
	Commit struct{}
}

// TestCancelledFixedAssignments: a caller of AssignIP(s), EnsureBlock or
// ReleaseAffinity that gives up at any store operation (between two, or
// during one) leaves a store that Check finds clean at once, and a failed
// AssignIPs leaves nothing: no address under the handle, no block claimed
// for the node, cooling addresses still cooling. With and without
// Committer.
func TestCancelledFixedAssignments(t *testing.T) {
	type call struct {
		name string
		run  func(ctx context.Context, a *ipam.Allocator) error
		// nothing: on failure the request leaves nothing (handle h, node-1's blocks).
		nothing bool
		want    error
	}
	calls := []call{
		{"three new blocks new handle", func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.AssignIPs(ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.17"), mustAddr("fd00::3"), mustAddr("10.0.0.18")}, Handle: "h", Node: "node-1", NewHandle: true})
			return err
		}, true, nil},
		{"cooling ignored then in use", func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.AssignIPs(ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.5"), mustAddr("fd00::5"), mustAddr("10.0.0.200")}, Handle: "h", Node: "node-1", IgnoreCooldown: true})
			return err
		}, true, ipam.ErrInUse},
		{"one new block", func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.40"), Handle: "h", Node: "node-1", NewHandle: true})
			return err
		}, true, nil},
		{"ensure block", func(ctx context.Context, a *ipam.Allocator) error {
			_, _, err := a.EnsureBlock(ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, IPv6: true})
			return err
		}, false, nil},
		{"release affinity", func(ctx context.Context, a *ipam.Allocator) error {
			return a.ReleaseAffinity(ctx, "node-2", mustPrefix("10.0.0.0/24"), false)
		}, false, nil},
		{"release host affinities", func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.ReleaseHostAffinities(ctx, "node-2", false)
			return err
		}, false, nil},
	}
	for _, c := range calls {
		for _, commits := range []bool{false, true} {
			for _, inFlight := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/commits=%t/inflight=%t", c.name, commits, inFlight), func(t *testing.T) {
					for at := 1; ; at++ {
						ctx := t.Context()
						ms := memstore.New()
						clk := newClock()
						a, err := ipam.New(ms, ipam.Options{Now: clk.Now})
						require.NoError(t, err)
						createPools(t, ctx, a, fixedPools...)
						cfg := ipam.DefaultConfig()
						cfg.ReleaseCooldown = time.Hour
						require.NoError(t, a.SetConfig(ctx, cfg))
						_, err = a.AssignIPs(ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.5"), mustAddr("fd00::5")}, Handle: "old", Node: "node-2"})
						require.NoError(t, err)
						_, err = a.ReleaseByHandle(ctx, "old")
						require.NoError(t, err)
						_, err = a.AssignIP(ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.200"), Handle: "other", Node: "node-2"})
						require.NoError(t, err)
						_, err = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 3, Num6: 2, Handle: "more", Node: "node-2"})
						require.NoError(t, err)
						clk.Advance(time.Minute)
						before := affineBlocks(t, a, "node-1")

						cctx, cancel := context.WithCancel(ctx)
						cs := &cancelStore{Store: ms, at: at, inFlight: inFlight, cancel: cancel}
						var st ipam.Store = cs
						if !commits {
							st = cancelNoCommit{cancelStore: cs}
						}
						b, err := ipam.New(st, ipam.Options{Now: clk.Now})
						require.NoError(t, err)
						err = c.run(cctx, b)
						cancel()
						done := cs.n < at || !inFlight && cs.n == at
						name := fmt.Sprintf("cancelled at %d", at)
						rep, cerr := a.Check(ctx)
						require.NoError(t, cerr)
						require.Empty(t, rep.Problems, "%s (err %v)", name, err)
						if err != nil {
							ok := errors.Is(err, context.Canceled) || c.want != nil && errors.Is(err, c.want)
							require.True(t, ok, "%s: %v", name, err)
							if c.nothing && !strings.Contains(err.Error(), "stays under the handle") {
								_, herr := a.IPsByHandle(ctx, "h")
								require.ErrorIs(t, herr, ipam.ErrHandleNotFound, "%s (err %v)", name, err)
								require.Equal(t, before, affineBlocks(t, a, "node-1"), "%s (err %v): blocks claimed stay", name, err)
							}
							for _, addr := range []netip.Addr{mustAddr("10.0.0.5"), mustAddr("fd00::5")} {
								if _, oerr := a.Owner(ctx, addr); oerr == nil {
									continue
								}
								_, serr := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: addr, Handle: "stranger", Node: "node-9"})
								require.ErrorIs(t, serr, ipam.ErrCoolingDown, "%s (err %v): %s", name, err, addr)
							}
						} else if c.want != nil {
							t.Fatalf("%s: succeeded, want %v", name, c.want)
						}
						if done {
							t.Logf("%d operations", at)
							return
						}
					}
				})
			}
		}
	}
}
