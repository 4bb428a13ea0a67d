package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
)

// createPools creates pools through a; the one place these
// tests create pools (CreatePool's signature may change).
func createPools(t testing.TB, ctx context.Context, a *ipam.Allocator, pools ...pool.Pool) {
	t.Helper()
	for _, p := range pools {
		require.NoError(t, a.CreatePool(ctx, p), "create pool %s", p.Name)
	}
}

var fixedPools = []pool.Pool{
	{Name: "v4", CIDR: netip.MustParsePrefix("10.0.0.0/24"), BlockSize: 28},
	{Name: "v6", CIDR: netip.MustParsePrefix("fd00::/120"), BlockSize: 124},
}

// fixedScenario is one AssignIP(s) request and the store it meets.
type fixedScenario struct {
	name string
	// setup prepares the store through a (clean) and returns the
	// addresses that must still be cooling after a failed request.
	setup func(t *testing.T, ctx context.Context, a *ipam.Allocator, clk *clock) (cooling []netip.Addr)
	args  ipam.AssignIPsArgs
	// want is the sentinel of the request's failure on a healthy store;
	// nil: it succeeds.
	want error
}

func fixedScenarios() []fixedScenario {
	cool := func(t *testing.T, ctx context.Context, a *ipam.Allocator, clk *clock) []netip.Addr {
		cfg := ipam.DefaultConfig()
		cfg.ReleaseCooldown = time.Hour
		require.NoError(t, a.SetConfig(ctx, cfg))
		_, err := a.AssignIPs(ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.5"), mustAddr("fd00::5")}, Handle: "old", Node: "node-1"})
		require.NoError(t, err)
		_, err = a.ReleaseByHandle(ctx, "old")
		require.NoError(t, err)
		clk.Advance(time.Minute)
		return []netip.Addr{mustAddr("10.0.0.5"), mustAddr("fd00::5")}
	}
	taken := func(t *testing.T, ctx context.Context, a *ipam.Allocator) {
		_, err := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.200"), Handle: "other", Node: "node-2"})
		require.NoError(t, err)
	}
	steady := func(t *testing.T, ctx context.Context, a *ipam.Allocator, clk *clock) []netip.Addr {
		_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "warm", Node: "node-1"})
		require.NoError(t, err)
		return nil
	}
	return []fixedScenario{
		{name: "one new block", setup: func(*testing.T, context.Context, *ipam.Allocator, *clock) []netip.Addr { return nil },
			args: ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.17")}, Handle: "h", Node: "node-1"}},
		{name: "one steady", setup: steady,
			args: ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.9")}, Handle: "h", Node: "node-1"}},
		{name: "one steady new handle", setup: steady,
			args: ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.9")}, Handle: "h", Node: "node-1", NewHandle: true}},
		{name: "pair steady new handle", setup: steady,
			args: ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.9"), mustAddr("fd00::9")}, Handle: "h", Node: "node-1", NewHandle: true}},
		{name: "three new blocks new handle", setup: func(*testing.T, context.Context, *ipam.Allocator, *clock) []netip.Addr { return nil },
			args: ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.17"), mustAddr("fd00::3"), mustAddr("10.0.0.18")}, Handle: "h", Node: "node-1", NewHandle: true}},
		{name: "cooling ignored", setup: cool,
			args: ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.5"), mustAddr("fd00::5")}, Handle: "h", Node: "node-1", IgnoreCooldown: true}},
		{name: "cooling ignored then in use", setup: func(t *testing.T, ctx context.Context, a *ipam.Allocator, clk *clock) []netip.Addr {
			c := cool(t, ctx, a, clk)
			taken(t, ctx, a)
			return c
		},
			args: ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.5"), mustAddr("fd00::5"), mustAddr("10.0.0.200")}, Handle: "h", Node: "node-1", IgnoreCooldown: true},
			want: ipam.ErrInUse},
		{name: "cooling kept block adopted", setup: func(t *testing.T, ctx context.Context, a *ipam.Allocator, clk *clock) []netip.Addr {
			c := cool(t, ctx, a, clk)
			_, err := a.ReleaseHostAffinities(ctx, "node-1", false) // the blocks stay, cooling, without affinity
			require.NoError(t, err)
			return c
		},
			args: ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.6"), mustAddr("fd00::6")}, Handle: "h", Node: "node-3"}},
		{name: "new handle then in use", setup: func(t *testing.T, ctx context.Context, a *ipam.Allocator, clk *clock) []netip.Addr {
			taken(t, ctx, a)
			return nil
		},
			args: ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.17"), mustAddr("fd00::3"), mustAddr("10.0.0.200")}, Handle: "h", Node: "node-1", NewHandle: true},
			want: ipam.ErrInUse},
		{name: "strict affinity", setup: func(t *testing.T, ctx context.Context, a *ipam.Allocator, clk *clock) []netip.Addr {
			cfg := ipam.DefaultConfig()
			cfg.StrictAffinity = true
			require.NoError(t, a.SetConfig(ctx, cfg))
			steady(t, ctx, a, clk)
			taken(t, ctx, a)
			return nil
		},
			args: ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.9"), mustAddr("10.0.0.33"), mustAddr("10.0.0.201")}, Handle: "h", Node: "node-1"},
			want: ipam.ErrStrictAffinity},
	}
}

// TestAssignIPsFaultMatrix fails, loses the reply of, or crashes at
// (before and after) each store operation of AssignIP(s) requests of many
// shapes, with and without Committer, with and without BlockKeeper, and
// checks what the docs promise: a success is whole; a failure assigned
// nothing unless its error says addresses stay under the handle; an error
// matches the request's own sentinel or the store's fault, never
// ErrHandleExists (nobody else touched the handle); Check finds only what
// the write order allows (a count too high, a stale index entry); Repair
// leaves the store clean; addresses that cooled before still cool; and
// the request then goes through (or fails as it would on a healthy
// store).
func TestAssignIPsFaultMatrix(t *testing.T) {
	for _, sc := range fixedScenarios() {
		for _, commits := range []bool{false, true} {
			for _, keeper := range keepers {
				t.Run(fmt.Sprintf("%s/commits=%t/keeper=%t", sc.name, commits, keeper), func(t *testing.T) {
					mk := func(f storetest.Fault) (*memstore.Store, *storetest.FaultyStore, *ipam.Allocator, *ipam.Allocator, *clock, []netip.Addr) {
						ctx := t.Context()
						s := memstore.New()
						clk := newClock()
						clean, err := ipam.New(s, ipam.Options{Now: clk.Now})
						require.NoError(t, err)
						createPools(t, ctx, clean, fixedPools...)
						cooling := sc.setup(t, ctx, clean, clk)
						fs := storetest.NewFaultyStore(s, f)
						a, err := ipam.New(faultyView(fs, commits, keeper), ipam.Options{Now: clk.Now})
						require.NoError(t, err)
						return s, fs, a, clean, clk, cooling
					}
					_, fs, a, _, _, _ := mk(storetest.Fault{})
					_, err := a.AssignIPs(t.Context(), sc.args)
					if sc.want == nil {
						require.NoError(t, err)
					} else {
						require.ErrorIs(t, err, sc.want)
					}
					n := fs.Ops()
					for _, mode := range []storetest.FaultMode{storetest.FailOnce, storetest.LostReply, storetest.Crash, storetest.CrashAfter} {
						for at := int64(1); at <= n; at++ {
							name := fmt.Sprintf("%s at %d", mode, at)
							ctx := t.Context()
							_, fs, a, clean, clk, cooling := mk(storetest.Fault{At: at, Mode: mode})
							res, err := a.AssignIPs(ctx, sc.args)
							held, herr := clean.AssignedByHandle(ctx, sc.args.Handle)
							switch {
							case err == nil:
								require.Nil(t, sc.want, "%s: succeeded where it must fail", name)
								require.Equal(t, len(sc.args.Addrs), res.Len(), name)
								require.NoError(t, herr, name)
								require.Equal(t, len(sc.args.Addrs), held.Len(), name)
							default:
								require.Zero(t, res.Len(), name)
								require.NotErrorIs(t, err, ipam.ErrHandleExists, "%s: nobody else wrote the handle: %v", name, err)
								if sc.want != nil || !errors.Is(err, storetest.ErrInjected) {
									ok := errors.Is(err, storetest.ErrInjected) || sc.want != nil && errors.Is(err, sc.want)
									require.True(t, ok, "%s: unexpected error: %v", name, err)
								}
								if !fs.Crashed() && herr == nil && held.Len() > 0 {
									require.ErrorContains(t, err, "stays under the handle", "%s: addresses assigned: %v", name, held)
								}
							}
							// Only what the write order allows.
							r, cerr := clean.Check(ctx)
							require.NoError(t, cerr, name)
							for _, p := range r.Problems {
								switch p.Kind {
								case ipam.ProblemHandleExcess, ipam.ProblemAffinityStale:
								default:
									t.Fatalf("%s (err %v): Check found %v", name, err, p)
								}
							}
							_, _, rerr := clean.Repair(ctx, ipam.RepairOptions{})
							require.NoError(t, rerr, name)
							r, cerr = clean.Check(ctx)
							require.NoError(t, cerr, name)
							require.True(t, r.Clean(), "%s: after Repair: %v", name, r.Problems)
							// Addresses that were cooling still are, unless the
							// request holds them.
							if err != nil {
								for _, addr := range cooling {
									if _, oerr := clean.Owner(ctx, addr); oerr == nil {
										continue
									}
									_, serr := clean.AssignIP(ctx, ipam.AssignIPArgs{Addr: addr, Handle: "stranger", Node: "node-9"})
									require.ErrorIs(t, serr, ipam.ErrCoolingDown, "%s (err %v): %s", name, err, addr)
								}
							}
							// The workload goes on.
							if _, rerr := clean.ReleaseByHandle(ctx, sc.args.Handle); rerr != nil {
								require.ErrorIs(t, rerr, ipam.ErrHandleNotFound, name)
							}
							clk.Advance(2 * time.Hour) // past any cooldown the release above started
							res, err = clean.AssignIPs(ctx, sc.args)
							if sc.want == nil {
								require.NoError(t, err, name)
								require.Equal(t, len(sc.args.Addrs), res.Len(), name)
							} else {
								require.ErrorIs(t, err, sc.want, name)
							}
							r, cerr = clean.Check(ctx)
							require.NoError(t, cerr, name)
							require.True(t, r.Clean(), "%s: after again: %v", name, r.Problems)
						}
					}
				})
			}
		}
	}
}
