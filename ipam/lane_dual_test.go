package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

// TestLaneDualStackMore: more dual-stack cases where an attempt of the
// lane does not simply succeed, with the lane and without.
func TestLaneDualStackMore(t *testing.T) {
	req, warm := dualReq, dualWarm
	var cases []laneScenario
	for at := 1; at <= 4; at++ {
		cases = append(cases,
			laneScenario{name: fmt.Sprintf("reserved v4 meanwhile at %d", at), run: func(t *testing.T, d *laneDiff) {
				warm(t, d)
				// The node's IPv4 block, as the first request found it.
				d.interfere(at, "reserve", reserve(ipam.Reservation{Name: "r", CIDRs: []netip.Prefix{d.addrs[0][0].Block}}))
				d.assign(t, 0, req("h2"))
			}},
			laneScenario{name: fmt.Sprintf("reserved v6 meanwhile at %d", at), run: func(t *testing.T, d *laneDiff) {
				warm(t, d)
				// The node's IPv6 block.
				d.interfere(at, "reserve", reserve(ipam.Reservation{Name: "r", CIDRs: []netip.Prefix{d.addrs[0][1].Block}}))
				d.assign(t, 0, req("h2"))
			}},
			laneScenario{name: fmt.Sprintf("v6 block released at %d", at), run: func(t *testing.T, d *laneDiff) {
				warm(t, d)
				d.release(t, 0, "h0")
				d.release(t, 0, "h1")
				d.assign(t, 0, ipam.AutoAssignArgs{Num4: 1, Handle: "k", Node: "n0"})
				d.interfere(at, "ReleaseHostAffinities n0", func(ctx context.Context, a *ipam.Allocator) error {
					_, err := a.ReleaseHostAffinities(ctx, "n0", false)
					return err
				})
				d.assign(t, 0, req("h2"))
			}},
			laneScenario{name: fmt.Sprintf("same handle meanwhile at %d", at), run: func(t *testing.T, d *laneDiff) {
				warm(t, d)
				d.interfere(at, "AutoAssign h2", func(ctx context.Context, a *ipam.Allocator) error {
					_, err := a.AutoAssign(ctx, req("h2"))
					return err
				})
				args := req("h2")
				args.NewHandle = true
				d.assign(t, 0, args)
			}},
			laneScenario{name: fmt.Sprintf("other node claims at %d", at), run: func(t *testing.T, d *laneDiff) {
				warm(t, d)
				d.interfere(at, "AutoAssign n1", func(ctx context.Context, a *ipam.Allocator) error {
					_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "x", Node: "n1"})
					return err
				})
				d.assign(t, 0, req("h2"))
			}},
		)
	}
	cases = append(cases,
		laneScenario{name: "new handle exists", run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			args := req("h1")
			args.NewHandle = true
			d.assign(t, 0, args)
		}},
		laneScenario{name: "partial, no room for v6", run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			d.assign(t, 1, ipam.AutoAssignArgs{Num6: 14, Handle: "all6", Node: "n1"})
			d.assign(t, 0, ipam.AutoAssignArgs{Num4: 1, Handle: "v4", Node: "n0"})
			args := req("h2")
			args.Partial = true
			d.assign(t, 0, args)
			d.release(t, 0, "h2")
			d.release(t, 0, "h0")
		}},
	)
	runLaneScenarios(t, dualConfig, dualPools, cases)
}

// TestLaneDualStackGivesUpUnselected: the node holds an empty block of
// each family in a pool that no longer selects it, beside one in a pool
// that does. A dual-stack request the lane serves gives both up, as
// AutoAssign does once it has assigned: the lane gathers each family's
// unselected blocks as AutoAssign does.
func TestLaneDualStackGivesUpUnselected(t *testing.T) {
	pools := []pool.Pool{
		{Name: "a4", CIDR: netip.MustParsePrefix("10.0.0.0/30"), BlockSize: 30}, // one block
		{Name: "b4", CIDR: netip.MustParsePrefix("10.0.1.0/28"), BlockSize: 30},
		{Name: "c6", CIDR: netip.MustParsePrefix("fd00::/126"), BlockSize: 126}, // one block
		{Name: "d6", CIDR: netip.MustParsePrefix("fd00:1::/124"), BlockSize: 126},
	}
	unselected := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/30"), netip.MustParsePrefix("fd00::/126")}
	for _, commits := range []bool{false, true} {
		t.Run(fmt.Sprintf("commits=%t", commits), func(t *testing.T) {
			d := newLaneDiff(t, ipam.Config{AutoAllocateBlocks: true}, pools, commits)
			// n0 fills a4's and c6's one block, then claims in b4 and d6.
			d.assign(t, 0, ipam.AutoAssignArgs{Num4: 4, Num6: 4, Handle: "fill", Node: "n0"})
			d.assign(t, 0, ipam.AutoAssignArgs{Num4: 1, Handle: "n1", Node: "n1"})
			d.assign(t, 0, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h0", Node: "n0"})
			d.assign(t, 0, ipam.AutoAssignArgs{Num4: 1, Handle: "h1", Node: "n0"}) // n0's blocks as they are now
			d.release(t, 0, "fill")
			for _, name := range []string{"a4", "c6"} {
				d.change(t, 0, name+" selects another rack", nodeSelector(name, `rack == "x"`))
			}
			// Allocator 0 reads the pools again for another node, without
			// touching n0's blocks, so the lane's view is current for n0.
			d.assign(t, 0, ipam.AutoAssignArgs{Num4: 1, Handle: "n1b", Node: "n1", NodeLabels: selector.Set{"rack": "a"}})
			served := d.trace.served
			// With n0's labels, which the selectors read now.
			d.assign(t, 0, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h2", Node: "n0", NodeLabels: selector.Set{"rack": "a"}})
			require.Greater(t, d.trace.served, served, "the lane served the dual-stack request")
			for _, w := range d.w {
				for _, blk := range unselected {
					b, err := w.allocs[2].Block(context.Background(), blk)
					if err == nil {
						require.True(t, b.Affinity().IsZero(), "%s is n0's no more: %v", blk, b.Affinity())
					} else {
						require.ErrorIs(t, err, ipam.ErrNotFound)
					}
				}
			}
		})
	}
}
