package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
)

// damagedStore builds a store with one problem of each repairable kind
// and returns it with the allocations it holds (address -> handle).
func damagedStore(t *testing.T) (*memstore.Store, map[netip.Addr]string) {
	ctx := t.Context()
	ms := memstore.New()
	a, err := ipam.New(ms, ipam.Options{})
	require.NoError(t, err)
	require.NoError(t, a.CreatePool(ctx, v4pool("p", "10.0.0.0/24", 28)))
	held := map[netip.Addr]string{}
	assign := func(node, h string, n int) []ipam.Assigned {
		res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: n, Handle: h, Node: node})
		require.NoError(t, err)
		for _, x := range res.IPv4 {
			held[x.Addr] = h
		}
		return res.IPv4
	}
	excess := assign("node-1", "excess", 2)
	assign("node-1", "missing", 1)
	low := assign("node-2", "low", 3)
	assign("node-2", "fine", 1)
	set := func(h string, value []byte) {
		rec, err := ms.Get(ctx, ipam.KindHandle, h)
		require.NoError(t, err)
		_, err = ms.Update(ctx, ipam.KindHandle, h, value, rec.Revision)
		require.NoError(t, err)
	}
	set("excess", ipam.EncodeHandle(map[netip.Prefix]int{excess[0].Block: 5}))
	set("low", ipam.EncodeHandle(map[netip.Prefix]int{low[0].Block: 1}))
	rec, err := ms.Get(ctx, ipam.KindHandle, "missing")
	require.NoError(t, err)
	require.NoError(t, ms.Delete(ctx, ipam.KindHandle, "missing", rec.Revision))
	// A record without addresses (a crash after its raise).
	_, err = ms.Create(ctx, ipam.KindHandle, "ghost", ipam.EncodeHandle(map[netip.Prefix]int{excess[0].Block: 1}))
	require.NoError(t, err)
	// A stale index entry, and an unindexed block.
	_, err = ms.Create(ctx, ipam.KindAffinity, "host:node-9/v4:0a0000f0/28", nil)
	require.NoError(t, err)
	key := "host:node-2/v4:" + fmt.Sprintf("%08x", low[0].Block.Addr().As4()) + "/28"
	rec, err = ms.Get(ctx, ipam.KindAffinity, key)
	require.NoError(t, err, key)
	require.NoError(t, ms.Delete(ctx, ipam.KindAffinity, key, rec.Revision))
	// An empty block without affinity (a crash leftover).
	b, err := block.New(mustPrefix("10.0.0.224/28"))
	require.NoError(t, err)
	data, err := b.MarshalBinary()
	require.NoError(t, err)
	_, err = ms.Create(ctx, ipam.KindBlock, "v4:0a0000e0/28", data)
	require.NoError(t, err)
	r, err := a.Check(ctx)
	require.NoError(t, err)
	require.True(t, r.Repairable())
	require.GreaterOrEqual(t, len(r.Problems), 6, "%v", r.Problems)
	return ms, held
}

// TestRepairFaultAtEveryOperation runs Repair on a damaged store
// with a fault at each of its operations, in each mode: what it reports
// Done must be done (the problem gone from a check right after), no
// address may lose its count, and a Repair after it leaves the store
// clean with every address still its handle's; with BlockKeeper and
// without.
func TestRepairFaultAtEveryOperation(t *testing.T) {
	ctx := context.Background()
	for _, keeper := range keepers {
		ms, _ := damagedStore(t)
		fs := storetest.NewFaultyStore(ms, storetest.Fault{})
		a, err := ipam.New(faultyView(fs, true, keeper), ipam.Options{})
		require.NoError(t, err)
		_, after, err := a.Repair(ctx, ipam.RepairOptions{})
		require.NoError(t, err)
		require.True(t, after.Clean(), "%v", after.Problems)
		total := fs.Ops()
		for at := int64(1); at <= total; at++ {
			for _, mode := range []storetest.FaultMode{storetest.FailOnce, storetest.Crash, storetest.CrashAfter, storetest.LostReply} {
				t.Run(fmt.Sprintf("keeper=%v/%d/%v", keeper, at, mode), func(t *testing.T) {
					ms, held := damagedStore(t)
					fs := storetest.NewFaultyStore(ms, storetest.Fault{At: at, Mode: mode})
					a, err := ipam.New(faultyView(fs, true, keeper), ipam.Options{})
					require.NoError(t, err)
					actions, _, _ := a.Repair(ctx, ipam.RepairOptions{})
					clean, err := ipam.New(ms, ipam.Options{})
					require.NoError(t, err)
					r, err := clean.Check(ctx)
					require.NoError(t, err)
					for _, act := range actions {
						if !act.Done {
							continue
						}
						for _, p := range r.Problems {
							if p.Kind == act.Problem.Kind && p.Record == act.Problem.Record && p.Block == act.Problem.Block {
								t.Errorf("reported done, still there: %v (%s)", act.Problem, act.Note)
							}
						}
					}
					for _, p := range r.Problems {
						if p.Kind == ipam.ProblemHandleMissing && p.Handle != "missing" && p.Handle != "low" {
							t.Errorf("a count lowered too far: %v", p)
						}
					}
					_, after, err := clean.Repair(ctx, ipam.RepairOptions{})
					require.NoError(t, err)
					require.True(t, after.Clean(), "%v", after.Problems)
					for addr, h := range held {
						own, err := clean.Owner(ctx, addr)
						require.NoError(t, err)
						require.Equal(t, h, own.Handle)
					}
				})
			}
		}
	}
}
