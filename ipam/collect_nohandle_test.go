package ipam_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
)

// TestCollectorHandlelessAllocationsApart: addresses without a handle
// (Calico may have written them; carve's own calls always name one)
// belong to no common owner, so each is released on its own once its
// owner is dead, never held back by another handle-less address whose
// owner lives.
func TestCollectorHandlelessAllocationsApart(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	held := e.mustAssign4("node-1", "pod", 1)[0]

	// Two addresses without a handle in node-1's block, told apart by an
	// attribute.
	key := storeKey(t, e, held.Block)
	rec, err := e.store.Get(e.ctx, ipam.KindBlock, key)
	require.NoError(t, err)
	var b block.Block
	require.NoError(t, b.UnmarshalBinary(rec.Value))
	live, _ := b.Allocate(nil, 1, block.Owner{Attrs: map[string]string{"vm": "live"}})
	dead, _ := b.Allocate(nil, 1, block.Owner{Attrs: map[string]string{"vm": "dead"}})
	require.Len(t, live, 1)
	require.Len(t, dead, 1)
	data, err := b.MarshalBinary()
	require.NoError(t, err)
	_, err = e.store.Update(e.ctx, ipam.KindBlock, key, data, rec.Revision)
	require.NoError(t, err)

	alive := func(_ context.Context, a ipam.Allocation) (bool, error) {
		return a.Handle == "pod" || a.Attrs["vm"] == "live", nil
	}
	c, err := ipam.NewCollector(e.a, alive, ipam.CollectorOptions{Grace: time.Minute})
	require.NoError(t, err)
	res, err := c.Collect(e.ctx)
	require.NoError(t, err)
	require.Equal(t, 3, res.Allocations)
	e.clock.Advance(2 * time.Minute)
	res, err = c.Collect(e.ctx)
	require.NoError(t, err)
	require.Equal(t, dead, allocAddrs(res.Released), "the dead VM's address, alone")

	got, err := e.a.Owner(e.ctx, live[0])
	require.NoError(t, err)
	require.Equal(t, "live", got.Attrs["vm"])
}
