package ipam_test

import (
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

// TestClaimDuringPoolReplacement: a node's claim has read the pool set and
// is about to create its block when the pool is deleted and re-created
// with another block size, and another node claims a block of the new
// size over the same addresses. The first claim must give its block up,
// or two blocks would hold the same addresses for two owners.
func TestClaimDuringPoolReplacement(t *testing.T) {
	e := newEnv(t, v4pool("old", "10.0.0.0/24", 28))
	replaced := false
	var once sync.Once
	hs := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if op != "create" || kind != ipam.KindBlock {
			return
		}
		once.Do(func() {
			require.NoError(t, e.a.DeletePool(e.ctx, "old"))
			require.NoError(t, e.a.CreatePool(e.ctx, v4pool("new", "10.0.0.0/24", 26)))
			for _, node := range []string{"node-b", "node-c", "node-d", "node-e"} {
				e.mustAssign4(node, "h-"+node, 1)
			}
			replaced = true
		})
	}}
	claimer, err := ipam.New(hs, ipam.Options{})
	require.NoError(t, err)
	_, err = claimer.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h-a", Node: "node-a"})
	require.True(t, replaced, "the pools changed between the claim's read and its block write")
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.ErrorContains(t, err, `pool "old" changed during the request`)

	requireClean(t, e)
	allocs, err := e.a.Allocations(e.ctx, mustPrefix("10.0.0.0/24"))
	require.NoError(t, err)
	require.Len(t, allocs, 4, "node-b..e hold one address each")
	seen := map[netip.Addr]string{}
	for _, x := range allocs {
		require.NotContains(t, seen, x.Addr, "%s held by %s and %s", x.Addr, seen[x.Addr], x.Handle)
		seen[x.Addr] = x.Handle
		require.Equal(t, 26, x.Block.Bits())
	}
	require.Empty(t, e.affine("node-a"))
}

// TestClaimDuringPoolDeletion: a claim creates its block just after
// DeletePool has listed the pool's blocks. The pool must not be left
// deleted with a block still affine to a node, and the claim fails, as it
// would have had it come after the deletion.
func TestClaimDuringPoolDeletion(t *testing.T) {
	for _, how := range []string{"AutoAssign", "AssignIP", "ClaimAffinity"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
			var once sync.Once
			listed := false
			// DeletePool disables the pool, then lists its blocks: the
			// claim's block write comes just after that list.
			hs := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
				if op == "create" && kind == ipam.KindBlock {
					once.Do(func() {
						p, err := e.a.Pool(e.ctx, "p")
						require.NoError(t, err)
						p.Disabled = true
						require.NoError(t, e.a.UpdatePool(e.ctx, p))
						listed = true
					})
				}
			}}
			claimer, err := ipam.New(hs, ipam.Options{})
			require.NoError(t, err)
			switch how {
			case "AutoAssign":
				_, err = claimer.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-a"})
				require.ErrorIs(t, err, ipam.ErrNoSpace)
			case "AssignIP":
				_, err = claimer.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.7"), Handle: "h", Node: "node-a"})
				require.ErrorIs(t, err, ipam.ErrNotInPool)
			case "ClaimAffinity":
				_, err = claimer.ClaimAffinity(e.ctx, "node-a", mustPrefix("10.0.0.0/26"))
				require.ErrorIs(t, err, ipam.ErrNotInPool)
			}
			require.True(t, listed)
			require.ErrorContains(t, err, `pool "p"`)
			require.Empty(t, e.affine("node-a"), "the claim gave its block up")
			require.NoError(t, e.a.DeletePool(e.ctx, "p"))
			requireClean(t, e)
			pools, err := e.a.Pools(e.ctx)
			require.NoError(t, err)
			require.Empty(t, pools)
			require.NoError(t, e.a.CreatePool(e.ctx, pool.Pool{Name: "q", CIDR: mustPrefix("10.0.0.0/24"), BlockSize: 28}),
				"nothing of the old pool is left in the way")
		})
	}
}
