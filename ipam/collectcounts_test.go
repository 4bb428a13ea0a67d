package ipam_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
)

// TestCollectorRepairsStaleCounts: handle records that count more than
// the blocks hold, as a crash or a failed write leaves them, are rewritten
// once they have stood unchanged for the grace period, on the pass after
// it (which settles: see TestCollectorRebuildSettles). A record counting
// nothing any block holds is deleted, and its handle is new again for a
// request with NewHandle; one counting too much for a block it does use
// is lowered.
func TestCollectorRepairsStaleCounts(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	used := e.mustAssign4("node-1", "partly", 1)[0]
	blk := used.Block
	// "ghost" counts an address in a block that holds none of it; "partly"
	// counts two where it holds one.
	_, err := e.store.Create(e.ctx, ipam.KindHandle, "ghost", ipam.EncodeHandle(map[netip.Prefix]int{blk: 1}))
	require.NoError(t, err)
	rec, err := e.store.Get(e.ctx, ipam.KindHandle, "partly")
	require.NoError(t, err)
	_, err = e.store.Update(e.ctx, ipam.KindHandle, "partly", ipam.EncodeHandle(map[netip.Prefix]int{blk: 2}), rec.Revision)
	require.NoError(t, err)

	o := &owners{alive: map[string]bool{"partly": true}}
	c := newCollector(t, e, o, time.Minute)
	newGhost := ipam.AutoAssignArgs{Num4: 1, Handle: "ghost", Node: "node-1", NewHandle: true}

	require.Empty(t, collect(t, e, c).RepairedHandles, "not yet: it may be an assignment in flight")
	_, err = e.a.AutoAssign(e.ctx, newGhost)
	require.ErrorIs(t, err, ipam.ErrHandleExists)

	e.clock.Advance(time.Minute)
	require.Empty(t, collect(t, e, c).RepairedHandles, "ripe: this pass's read settles for one pass")
	_, err = e.a.AutoAssign(e.ctx, newGhost)
	require.ErrorIs(t, err, ipam.ErrHandleExists)
	e.clock.Advance(30 * time.Second)
	res := collect(t, e, c)
	require.Equal(t, []string{"ghost", "partly"}, res.RepairedHandles)
	_, err = e.store.Get(e.ctx, ipam.KindHandle, "ghost")
	require.ErrorIs(t, err, ipam.ErrNotFound)
	rec, err = e.store.Get(e.ctx, ipam.KindHandle, "partly")
	require.NoError(t, err)
	counts, err := ipam.DecodeHandle(rec.Value)
	require.NoError(t, err)
	require.Equal(t, map[netip.Prefix]int{blk: 1}, counts)
	e.requireConsistent()

	got, err := e.a.AutoAssign(e.ctx, newGhost)
	require.NoError(t, err, "the handle is new again")
	require.Equal(t, 1, got.Len())
	require.Empty(t, collect(t, e, c).RepairedHandles, "nothing left to repair")
}

// TestCollectorStaleCountClockRestarts: a record whose revision changes
// (its handle assigned or released meanwhile) starts its grace period
// again, and one that the blocks come to bear out (the assignment in
// flight landed) is forgotten.
func TestCollectorStaleCountClockRestarts(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	blk := e.mustAssign4("node-1", "warm", 1)[0].Block
	_, err := e.store.Create(e.ctx, ipam.KindHandle, "slow", ipam.EncodeHandle(map[netip.Prefix]int{blk: 1}))
	require.NoError(t, err)
	o := &owners{alive: map[string]bool{"warm": true, "slow": true}}
	c := newCollector(t, e, o, time.Minute)

	collect(t, e, c)
	e.clock.Advance(50 * time.Second)
	// The record changes: another address under the handle, as an
	// ordinary AutoAssign writes it (count and block).
	e.mustAssign4("node-1", "slow", 1)
	collect(t, e, c)
	e.clock.Advance(50 * time.Second)
	require.Empty(t, collect(t, e, c).RepairedHandles, "100 s since first seen, but only 50 s at this revision")
	e.clock.Advance(20 * time.Second)
	require.Empty(t, collect(t, e, c).RepairedHandles, "ripe: settling for one pass")
	e.clock.Advance(30 * time.Second)
	require.Equal(t, []string{"slow"}, collect(t, e, c).RepairedHandles)
	e.requireConsistent()

	// An assignment in flight: its count is raised, and its block written
	// (here by hand) before the grace period is over.
	rec, err := e.store.Get(e.ctx, ipam.KindHandle, "warm")
	require.NoError(t, err)
	_, err = e.store.Update(e.ctx, ipam.KindHandle, "warm", ipam.EncodeHandle(map[netip.Prefix]int{blk: 2}), rec.Revision)
	require.NoError(t, err)
	require.Empty(t, collect(t, e, c).RepairedHandles)
	e.clock.Advance(30 * time.Second)
	key := storeKey(t, e, blk)
	b := storedBlocks(t, e)[key]
	_, err = b.Assign(blk.Addr().Next().Next().Next().Next().Next(), block.Owner{Handle: "warm", Attrs: map[string]string{ipam.AttrNode: "node-1"}})
	require.NoError(t, err)
	brec, err := e.store.Get(e.ctx, ipam.KindBlock, key)
	require.NoError(t, err)
	data, err := b.MarshalBinary()
	require.NoError(t, err)
	_, err = e.store.Update(e.ctx, ipam.KindBlock, key, data, brec.Revision)
	require.NoError(t, err)
	require.Empty(t, collect(t, e, c).RepairedHandles)
	e.clock.Advance(time.Minute)
	require.Empty(t, collect(t, e, c).RepairedHandles, "the blocks bear the count out")
	e.requireConsistent()
}
