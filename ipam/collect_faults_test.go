package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
)

type collectFaultState struct {
	ms     *memstore.Store
	clk    *clock
	live   map[netip.Addr]string
	dead   map[netip.Addr]string
	oracle *owners
}

func collectFaultSetup(t *testing.T) *collectFaultState {
	ctx := t.Context()
	st := &collectFaultState{ms: memstore.New(), clk: newClock(), live: map[netip.Addr]string{}, dead: map[netip.Addr]string{}}
	a, err := ipam.New(st.ms, ipam.Options{Now: st.clk.Now})
	require.NoError(t, err)
	require.NoError(t, a.CreatePool(ctx, v4pool("p", "10.0.0.0/24", 28)))
	assign := func(node, h string, n int, into map[netip.Addr]string) []ipam.Assigned {
		res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: n, Handle: h, Node: node})
		require.NoError(t, err)
		for _, x := range res.IPv4 {
			into[x.Addr] = h
		}
		return res.IPv4
	}
	assign("node-1", "L", 1, st.live)
	d := assign("node-1", "D", 17, st.dead) // two blocks
	require.Len(t, blocksOf(d), 2)
	assign("node-2", "N2", 1, st.live)
	res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 16, Handle: "tmp", Node: "node-2"})
	require.NoError(t, err)
	require.Len(t, blocksOf(res.IPv4), 2)
	_, err = a.ReleaseByHandle(ctx, "tmp") // node-2: one block in use, one empty
	require.NoError(t, err)
	assign("node-3", "G", 1, st.dead) // node-3 is gone
	// A record counting an address no block gives it.
	g := d[0].Block
	_, err = st.ms.Create(ctx, ipam.KindHandle, "ghost", ipam.EncodeHandle(map[netip.Prefix]int{g: 1}))
	require.NoError(t, err)
	st.oracle = &owners{alive: map[string]bool{"L": true, "N2": true}}
	return st
}

func (st *collectFaultState) collector(t *testing.T, s ipam.Store) *ipam.Collector {
	a, err := ipam.New(s, ipam.Options{Now: st.clk.Now})
	require.NoError(t, err)
	c, err := ipam.NewCollector(a, st.oracle.live, ipam.CollectorOptions{Grace: time.Minute,
		Nodes: func(_ context.Context, node string) (bool, error) { return node != "node-3", nil }})
	require.NoError(t, err)
	return c
}

// TestCollectorFaultAtEveryOperation: a collector's passes over a
// store with leaks (a dead handle across two blocks, a gone node's
// address), an empty block, a gone node and a record counting an
// address nobody holds, with a fault at each operation in each mode.
// After it, no live address may be released or lose its count, every
// node that exists keeps a block, and a collector (the same one, or a
// new one after a crash) collects everything in the end. Its allocator
// hands blocks to the store (BlockKeeper), or writes them as bytes.
func TestCollectorFaultAtEveryOperation(t *testing.T) {
	ctx := context.Background()
	passes := func(c *ipam.Collector, clk *clock) {
		for range 6 {
			_, _ = c.Collect(ctx)
			clk.Advance(time.Minute)
		}
	}
	for _, keeper := range keepers {
		st := collectFaultSetup(t)
		fs := storetest.NewFaultyStore(st.ms, storetest.Fault{})
		passes(st.collector(t, faultyView(fs, true, keeper)), st.clk)
		total := fs.Ops()
		t.Logf("keeper=%v: %d operations", keeper, total)
		for _, commits := range []bool{true, false} {
			for at := int64(1); at <= total; at++ {
				for _, mode := range []storetest.FaultMode{storetest.FailOnce, storetest.Crash, storetest.CrashAfter, storetest.LostReply} {
					t.Run(fmt.Sprintf("keeper=%v/commits=%v/%d/%v", keeper, commits, at, mode), func(t *testing.T) {
						st := collectFaultSetup(t)
						fs := storetest.NewFaultyStore(st.ms, storetest.Fault{At: at, Mode: mode})
						c := st.collector(t, faultyView(fs, commits, keeper))
						passes(c, st.clk)
						a, err := ipam.New(st.ms, ipam.Options{Now: st.clk.Now})
						require.NoError(t, err)
						check := func(when string) {
							r, err := a.Check(ctx)
							require.NoError(t, err)
							for _, p := range r.Problems {
								if p.Kind == ipam.ProblemHandleMissing {
									t.Errorf("%s: a count too low: %v", when, p)
								}
							}
							for addr, h := range st.live {
								own, err := a.Owner(ctx, addr)
								require.NoError(t, err, "%s: %s of live %s", when, addr, h)
								require.Equal(t, h, own.Handle)
							}
							for _, node := range []string{"node-1", "node-2"} {
								n := 0
								u, err := a.Utilization(ctx)
								require.NoError(t, err)
								for _, pu := range u {
									for _, b := range pu.Blocks {
										if b.Affinity.Name == node {
											n++
										}
									}
								}
								require.NotZero(t, n, "%s: %s lost its last block", when, node)
							}
						}
						check("after the faulty passes")
						if fs.Crashed() {
							var s ipam.Store = st.ms
							if !keeper {
								s = storetest.WithoutBlockKeeper(s)
							}
							c = st.collector(t, s)
						}
						passes(c, st.clk)
						check("after more passes")
						for addr, h := range st.dead {
							own, err := a.Owner(ctx, addr)
							if err == nil {
								t.Errorf("%s of dead %s never collected (owner %s)", addr, h, own.Handle)
							}
						}
						_, err = st.ms.Get(ctx, ipam.KindHandle, "ghost")
						require.ErrorIs(t, err, ipam.ErrNotFound, "the ghost record stays")
						r, err := a.Check(ctx)
						require.NoError(t, err)
						for _, p := range r.Problems {
							// A stale index entry is what a failed release of
							// affinity leaves; the index is a superset.
							if p.Kind != ipam.ProblemAffinityStale {
								t.Errorf("not clean: %v", p)
							}
						}
					})
				}
			}
		}
	}
}
