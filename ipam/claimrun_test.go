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

// TestClaimRunFindsNodesBlock: a request that reserves addresses at the
// ends of each block it claims (ReserveFirst, ReserveLast) needs two new
// blocks at the least, going by what a new block gives it. Its first claim
// finds the block made the node's meanwhile by another allocator, without
// reservations: that block alone has room for the whole request. The
// request must claim no second block, which it would leave empty, as the
// node's, for nothing.
func TestClaimRunFindsNodesBlock(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28)) // blocks of 16
	other := e.allocator()
	raced := false
	hooked := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if !raced && op == "create" && kind == ipam.KindBlock {
			raced = true
			// Another allocator serving node-1 claims the same block,
			// the first of the node's walk, without reservations.
			_, err := other.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "other", Node: "node-1"})
			require.NoError(t, err)
		}
	}}
	a, err := ipam.New(hooked, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)

	// 14: more than the 12 a new block gives with 3+1 reserved.
	got, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 14, Handle: "h", Node: "node-1", ReserveFirst: 3, ReserveLast: 1})
	require.NoError(t, err)
	require.True(t, raced)
	require.Len(t, blocksOf(got.IPv4), 1, "the node's block has room for all 14")
	require.Len(t, e.affine("node-1"), 1, "no second block claimed")
	e.requireHolds("h", got.IPv4)
}
