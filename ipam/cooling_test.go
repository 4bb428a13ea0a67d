package ipam_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestCoolingOutlivesAffinity: an empty block whose addresses are still
// cooling is kept, without affinity, when its node's affinity goes or its
// last address is released from a block without one, so the release times
// survive: the next node to take the block over does not get a cooling
// address. Before, the block was deleted with its release times, and a new
// claim of it started afresh at its first address.
func TestCoolingOutlivesAffinity(t *testing.T) {
	for _, c := range []struct {
		name string
		// release empties node-1's block, whose first address has just
		// been released (cooling), and leaves it without affinity.
		release func(e *env, got []ipam.Assigned)
	}{
		{"ReleaseHostAffinities", func(e *env, got []ipam.Assigned) {
			_, err := e.a.ReleaseHostAffinities(e.ctx, "node-1", false)
			require.NoError(e.t, err)
		}},
		{"ReleaseAffinity", func(e *env, got []ipam.Assigned) {
			require.NoError(e.t, e.a.ReleaseAffinity(e.ctx, "node-1", got[0].Block, true))
		}},
		{"last address of a block without affinity", func(e *env, got []ipam.Assigned) {
			// Give the block up while it still holds an address, then
			// release that address (cooling too).
			x := e.mustAssign4("node-1", "b", 1)
			_, err := e.a.ReleaseHostAffinities(e.ctx, "node-1", false)
			require.NoError(e.t, err)
			_, err = e.a.ReleaseByHandle(e.ctx, "b")
			require.NoError(e.t, err)
			require.NotEqual(e.t, got[0].Addr, x[0].Addr)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/29", 29)) // one block of 8
			e.cooldown(time.Hour)
			got := e.mustAssign4("node-1", "a", 1)
			_, err := e.a.ReleaseByHandle(e.ctx, "a")
			require.NoError(t, err)
			c.release(e, got)

			r, err := e.a.Check(e.ctx)
			require.NoError(t, err)
			require.True(t, r.Clean(), "%v", r.Problems)
			require.Equal(t, []netip.Prefix{got[0].Block}, r.Cooling, "kept, empty and without affinity")
			require.Empty(t, e.affine("node-1"))

			// node-2 takes the block over and gets another address, even
			// from an allocator that does not reclaim other nodes' blocks.
			noReclaim, err := ipam.New(e.store, ipam.Options{Now: e.clock.Now, ReclaimAge: -1})
			require.NoError(t, err)
			res, err := noReclaim.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "c", Node: "node-2"})
			require.NoError(t, err)
			x := res.IPv4
			require.Equal(t, got[0].Block, x[0].Block)
			require.NotEqual(t, got[0].Addr, x[0].Addr, "still cooling")
			require.Equal(t, []netip.Prefix{got[0].Block}, e.affine("node-2"))
			blk, err := e.a.Block(e.ctx, got[0].Block)
			require.NoError(t, err)
			_, cooling := blk.ReleasedAt(got[0].Addr)
			require.True(t, cooling, "the take-over keeps the release times")
			e.requireConsistent()
		})
	}
}

// TestCoolingBlockAfterCooldown: once the cooldown has passed, an empty
// block kept for it is listed as cooled, not as a problem, so that a
// healthy store checks clean whatever the time; Repair leaves it, the
// Collector deletes it; DeletePool deletes one at once.
func TestCoolingBlockAfterCooldown(t *testing.T) {
	e, got := keptBlock(t)
	e.clock.Advance(time.Hour + time.Second)
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.True(t, r.Clean(), "%v", r.Problems)
	require.Empty(t, r.Cooling)
	require.Equal(t, []netip.Prefix{got[0].Block}, r.Cooled)
	acts, r, err := e.a.Repair(e.ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	require.Empty(t, acts)
	require.Equal(t, []netip.Prefix{got[0].Block}, r.Cooled, "Repair leaves it")

	c, err := ipam.NewCollector(e.a, func(context.Context, ipam.Allocation) (bool, error) { return true, nil }, ipam.CollectorOptions{})
	require.NoError(t, err)
	res, err := c.Collect(e.ctx)
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{got[0].Block}, res.DeletedBlocks)
	_, err = e.a.Block(e.ctx, got[0].Block)
	require.ErrorIs(t, err, ipam.ErrNotFound)
	r, err = e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Empty(t, r.Cooled)

	// Turning the cooldown off ends it at once: a block kept for it is
	// cooled from then on.
	keep, _ := keptBlock(t)
	keep.cooldown(0)
	r, err = keep.a.Check(keep.ctx)
	require.NoError(t, err)
	require.True(t, r.Clean(), "%v", r.Problems)
	require.Equal(t, []netip.Prefix{got[0].Block}, r.Cooled)

	// DeletePool does not keep cooling blocks: the pool is going away, and
	// a pool made in its place may carve blocks of another size.
	e.mustAssign4("node-1", "b", 1)
	_, err = e.a.ReleaseByHandle(e.ctx, "b")
	require.NoError(t, err)
	require.NoError(t, e.a.DeletePool(e.ctx, "p"))
	r, err = e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Zero(t, r.Blocks)
	require.True(t, r.Clean(), "%v", r.Problems)
	require.NoError(t, e.a.CreatePool(e.ctx, v4pool("q", "10.0.0.0/29", 30)))
}
