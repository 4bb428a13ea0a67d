package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
)

// lifecycleFaultStore is a store for the maintenance operations to fail
// in: two workload pools and a LoadBalancer pool, a cooldown, a node
// holding blocks in both workload pools (one of them empty and cooling,
// one with a cooling address among used ones), another node, stored
// labels. It returns the addresses held, by handle.
func lifecycleFaultStore(t *testing.T) (*env, map[netip.Addr]string) {
	t.Helper()
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28), v4pool("q", "10.1.0.0/24", 28),
		pool.Pool{Name: "lb", CIDR: mustPrefix("10.2.0.0/24"), BlockSize: 28, AllowedUses: []pool.Use{pool.UseLoadBalancer}})
	e.cooldown(time.Minute)
	held := map[netip.Addr]string{}
	assign := func(args ipam.AutoAssignArgs) []ipam.Assigned {
		res, err := e.a.AutoAssign(e.ctx, args)
		require.NoError(t, err)
		for _, x := range res.IPv4 {
			held[x.Addr] = args.Handle
		}
		return res.IPv4
	}
	a := assign(ipam.AutoAssignArgs{Num4: 3, Handle: "a", Node: "n1", IPv4Pools: []string{"p"}})
	assign(ipam.AutoAssignArgs{Num4: 20, Handle: "b", Node: "n1", IPv4Pools: []string{"p"}}) // two blocks
	assign(ipam.AutoAssignArgs{Num4: 2, Handle: "c", Node: "n1", IPv4Pools: []string{"q"}})
	assign(ipam.AutoAssignArgs{Num4: 2, Handle: "d", Node: "n2", IPv4Pools: []string{"p"}})
	assign(ipam.AutoAssignArgs{Num4: 2, Handle: "svc", Use: pool.UseLoadBalancer})
	assign(ipam.AutoAssignArgs{Num4: 16, Handle: "tmp", Node: "n1", IPv4Pools: []string{"q"}})
	_, err := e.a.ReleaseByHandle(e.ctx, "tmp") // n1's second block in q: empty, cooling
	require.NoError(t, err)
	for addr, h := range held {
		if h == "tmp" {
			delete(held, addr)
		}
	}
	_, err = e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: a[0].Addr, Handle: "a", Seq: a[0].Seq}) // a cooling address among used ones
	require.NoError(t, err)
	delete(held, a[0].Addr)
	require.NoError(t, e.a.SetNodeLabels(e.ctx, "n1", map[string]string{"rack": "a"}))
	e.requireConsistent()
	return e, held
}

// TestLifecycleFaultAtEveryOperation fails each store operation of each
// maintenance call (ReleaseHostAffinities, ReleaseAffinity of a whole
// family, ReleaseLoadBalancerAffinity, ClaimAffinity, DeletePool of each
// kind of pool, and Collector passes that strip a gone node) in each
// fault mode, with and without commits, with and without BlockKeeper.
// Afterwards no address held is lost or changes hands, Check finds only
// what Repair fixes, Repair leaves the store clean, and the call made
// again on a healthy allocator finishes and leaves it clean too.
func TestLifecycleFaultAtEveryOperation(t *testing.T) {
	type op struct {
		name string
		run  func(ctx context.Context, a *ipam.Allocator, e *env) error
	}
	ops := []op{
		{"ReleaseHostAffinities", func(ctx context.Context, a *ipam.Allocator, _ *env) error {
			_, err := a.ReleaseHostAffinities(ctx, "n1", false)
			return err
		}},
		{"ReleaseAffinity", func(ctx context.Context, a *ipam.Allocator, _ *env) error {
			return a.ReleaseAffinity(ctx, "n1", mustPrefix("0.0.0.0/0"), false)
		}},
		{"ReleaseAffinityOfPool", func(ctx context.Context, a *ipam.Allocator, _ *env) error {
			return a.ReleaseAffinity(ctx, "n1", mustPrefix("10.0.0.0/24"), false)
		}},
		{"ReleaseLoadBalancerAffinity", func(ctx context.Context, a *ipam.Allocator, _ *env) error {
			return a.ReleaseLoadBalancerAffinity(ctx, mustPrefix("10.2.0.0/24"), false)
		}},
		{"ClaimAffinity", func(ctx context.Context, a *ipam.Allocator, _ *env) error {
			_, err := a.ClaimAffinity(ctx, "n3", mustPrefix("10.1.0.0/25"))
			return err
		}},
		{"DeletePool", func(ctx context.Context, a *ipam.Allocator, _ *env) error { return a.DeletePool(ctx, "q") }},
		{"DeleteLoadBalancerPool", func(ctx context.Context, a *ipam.Allocator, _ *env) error { return a.DeletePool(ctx, "lb") }},
		{"Collector", func(ctx context.Context, a *ipam.Allocator, e *env) error {
			c, err := ipam.NewCollector(a, func(context.Context, ipam.Allocation) (bool, error) { return true, nil },
				ipam.CollectorOptions{Grace: time.Minute, Nodes: func(_ context.Context, n string) (bool, error) { return n != "n1", nil }})
			if err != nil {
				return err
			}
			var errs []error
			for range 4 {
				if _, err := c.Collect(ctx); err != nil {
					errs = append(errs, err)
				}
				e.clock.Advance(time.Minute)
			}
			return errors.Join(errs...)
		}},
	}
	modes := []storetest.FaultMode{storetest.FailOnce, storetest.Crash, storetest.CrashAfter, storetest.LostReply}
	for _, o := range ops {
		t.Run(o.name, func(t *testing.T) {
			for _, mode := range modes {
				for _, commits := range []bool{false, true} {
					for _, keeper := range keepers {
						struck := 0
						for at := int64(1); ; at++ {
							e, held := lifecycleFaultStore(t)
							f := storetest.NewFaultyStore(e.store, storetest.Fault{At: at, Mode: mode})
							a, err := ipam.New(faultyView(f, commits, keeper), ipam.Options{Now: e.clock.Now})
							require.NoError(t, err)
							opErr := o.run(e.ctx, a, e)
							if f.Ops() < at {
								break
							}
							struck++
							tag := fmt.Sprintf("%v, commits %v, keeper %v, fault at op %d (%v)", mode, commits, keeper, at, opErr)
							for _, addr := range slices.SortedFunc(maps.Keys(held), func(x, y netip.Addr) int { return x.Compare(y) }) {
								owner, err := e.a.Owner(e.ctx, addr)
								require.NoError(t, err, "%s: %s", tag, addr)
								require.Equal(t, held[addr], owner.Handle, "%s: %s", tag, addr)
							}
							r, err := e.a.Check(e.ctx)
							require.NoError(t, err, tag)
							require.True(t, r.Repairable(), "%s: %v", tag, r.Problems)
							_, after, err := e.a.Repair(e.ctx, ipam.RepairOptions{})
							require.NoError(t, err, tag)
							require.True(t, after.Clean(), "%s: after Repair: %v", tag, after.Problems)

							if o.name != "Collector" {
								err = o.run(e.ctx, e.a, e)
								if o.name == "DeletePool" || o.name == "DeleteLoadBalancerPool" {
									if err != nil {
										require.ErrorIs(t, err, ipam.ErrPoolNotFound, tag)
									}
								} else {
									require.NoError(t, err, tag)
								}
							}
							r, err = e.a.Check(e.ctx)
							require.NoError(t, err, tag)
							require.True(t, r.Clean(), "%s: after the call again: %v", tag, r.Problems)
						}
						require.Positive(t, struck, "%v: no fault struck", mode)
					}
				}
			}
		})
	}
}
