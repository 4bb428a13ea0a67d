package ipam_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestClaimRunReclaimsPlannedBlock: a batch plans on the node's two
// blocks as its cache sees them, but the second is gone from the store
// (another allocator released it and stopped before dropping its index
// record, as a crash leaves it). The batch then claims that very block
// again, in a run of several blocks, so the block has two entries in the
// reservation: the one for the node's blocks, and the one for the run.
// What is left of both must be lowered at the end: the counts come out
// exact.
func TestClaimRunReclaimsPlannedBlock(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28)) // blocks of 16
	warm := e.mustAssign4("node-1", "warm", 32)    // the node's first two blocks
	blocks := blocksOf(warm)
	require.Len(t, blocks, 2)
	_, err := e.a.ReleaseByHandle(e.ctx, "warm") // e.a caches both empty and node-1's
	require.NoError(t, err)
	second := warm[len(warm)-1].Block
	key := storeKey(t, e, second)
	rec, err := e.store.Get(e.ctx, ipam.KindBlock, key)
	require.NoError(t, err)
	require.NoError(t, e.store.Delete(e.ctx, ipam.KindBlock, key, rec.Revision)) // the index record stays

	got, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 50, Handle: "h", Node: "node-1"})
	require.NoError(t, err)
	require.Len(t, got.IPv4, 50)
	require.Contains(t, blocksOf(got.IPv4), second, "claimed again")
	e.requireHolds("h", got.IPv4)
}
