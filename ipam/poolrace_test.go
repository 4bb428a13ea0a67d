package ipam_test

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
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

// TestCreatePoolDuringDeletion: an overlapping pool's deletion finishes
// while CreatePool runs, leaving a block that holds an address. However
// the two interleave, the new pool, of another block size, must be
// refused, or a block of its own could overlap that one: two owners for an
// address. (CreatePool used to look for leftover blocks before it read the
// pool set; a deletion in between let it through.)
func TestCreatePoolDuringDeletion(t *testing.T) {
	e := newEnv(t, v4pool("old", "10.0.0.0/24", 26))
	var once sync.Once
	var x ipam.Assigned
	deleteOld := func() {
		once.Do(func() {
			x = e.mustAssign4("node-a", "h-a", 1)[0]
			require.NoError(t, e.a.DeletePool(e.ctx, "old"))
		})
	}
	rs := &readHookStore{hookStore{Store: e.store}}
	rs.hook = func(op string, kind ipam.Kind, key string) {
		if op == "listed" && kind == ipam.KindBlock {
			deleteOld() // just after a look for leftover blocks
		}
	}
	creator, err := ipam.New(rs, ipam.Options{})
	require.NoError(t, err)
	err = creator.CreatePool(e.ctx, v4pool("new", "10.0.0.0/24", 28))
	require.True(t, errors.Is(err, pool.ErrOverlap) || errors.Is(err, ipam.ErrLeftoverBlocks), "%v", err)
	deleteOld() // if the attempt never looked for leftovers
	err = creator.CreatePool(e.ctx, v4pool("new", "10.0.0.0/24", 28))
	require.ErrorIs(t, err, ipam.ErrLeftoverBlocks)
	require.ErrorContains(t, err, x.Block.String())

	pools, err := e.a.Pools(e.ctx)
	require.NoError(t, err)
	require.Empty(t, pools, "nothing created")
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: x.Addr, Handle: "h-b", Node: "node-b"})
	require.ErrorIs(t, err, ipam.ErrNotInPool)
}

// TestReclaimDuringPoolDeletion: a node takes over another node's empty
// block just after DeletePool listed the pool's blocks. The takeover, which
// read the pools before their deletion began, must give the block up
// rather than leave it affine to the reclaiming node outside every pool.
func TestReclaimDuringPoolDeletion(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/26", 26)) // one block
	e.mustAssign4("node-a", "h-a", 1)
	_, err := e.a.ReleaseByHandle(e.ctx, "h-a") // empty, still node-a's
	require.NoError(t, err)
	e.clock.Advance(2 * time.Minute)

	ps := newPauseStore(e, func(op string, kind ipam.Kind, key string) bool {
		return op == "update" && kind == ipam.KindBlock // takeOver's block write
	})
	reclaimer, err := ipam.New(ps, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)
	done := make(chan error, 1)
	var res ipam.AutoAssignResult
	go func() {
		var err error
		res, err = reclaimer.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h-x", Node: "node-x"})
		done <- err
	}()
	<-ps.paused

	var once sync.Once
	var reclaimErr error
	rs := &readHookStore{hookStore{Store: e.store}}
	rs.hook = func(op string, kind ipam.Kind, key string) {
		if op == "listed" && kind == ipam.KindBlock {
			once.Do(func() {
				close(ps.resume)
				reclaimErr = <-done
			})
		}
	}
	deleter, err := ipam.New(rs, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)
	require.NoError(t, deleter.DeletePool(e.ctx, "p"))
	require.ErrorIs(t, reclaimErr, ipam.ErrNoSpace, "the pool was disabled before the takeover's write")
	require.ErrorContains(t, reclaimErr, `pool "p" changed during the request`)
	require.Empty(t, res.IPv4)

	requireNoAffineBlocks(t, e)
}

// TestUpdateDuringPoolDeletion: an UpdatePool with the pool's spec
// (Disabled false, say a controller re-applying a manifest) enables the
// pool again while DeletePool runs, and a node claims a block after
// DeletePool's list. DeletePool must keep the pool rather than remove it
// with that block affine to the node.
func TestUpdateDuringPoolDeletion(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	spec, err := e.a.Pool(e.ctx, "p")
	require.NoError(t, err)
	spec.Version = 0 // a manifest carries none: the update is unconditional
	var once sync.Once
	rs := &readHookStore{hookStore{Store: e.store}}
	rs.hook = func(op string, kind ipam.Kind, key string) {
		if op == "listed" && kind == ipam.KindBlock {
			once.Do(func() {
				require.NoError(t, e.a.UpdatePool(e.ctx, spec)) // e.g. a controller re-applying the manifest
				e.mustAssign4("node-a", "h-a", 1)
			})
		}
	}
	deleter, err := ipam.New(rs, ipam.Options{})
	require.NoError(t, err)
	err = deleter.DeletePool(e.ctx, "p")
	require.ErrorIs(t, err, ipam.ErrPoolEnabled)
	require.NotErrorIs(t, err, ipam.ErrTooManyConflicts, "not retried as a race")
	require.EqualError(t, err, `ipam: delete pool "p": pool was enabled again during its deletion; it is kept`)
	kept, err := e.a.Pool(e.ctx, "p")
	require.NoError(t, err, "the pool is kept")
	require.False(t, kept.Disabled)
	requireClean(t, e)
	require.Len(t, e.affine("node-a"), 1, "node-a's block stays in a pool that exists")

	require.NoError(t, e.a.DeletePool(e.ctx, "p"), "called again, the deletion finishes")
	requireNoAffineBlocks(t, e)
}

// requireNoAffineBlocks checks that no block of the store is affine to a
// node, as after the deletion of its only pool.
func requireNoAffineBlocks(t *testing.T, e *env) {
	t.Helper()
	for _, b := range storedBlocks(t, e) {
		require.True(t, b.Affinity().IsZero(), "block %s of the deleted pool is still affine to %s", b.Prefix(), b.Affinity())
	}
}

// TestDeletePoolFollowsAffinityChanges: the block's affinity changes after
// DeletePool lists the block, twice, as reclaims by other nodes could do.
// DeletePool follows it to whoever holds the block last and releases that,
// or, when the affinity never settles, fails and keeps the pool.
func TestDeletePoolFollowsAffinityChanges(t *testing.T) {
	for _, c := range []struct {
		name  string
		flips int // affinity changes before each read of the block
	}{{"settles", 2}, {"never settles", 1 << 30}} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/26", 26)) // one block
			held := e.mustAssign4("node-a", "h-a", 1)[0]
			key := storeKey(t, e, held.Block)
			listed, flips := false, 0
			rs := &readHookStore{hookStore{Store: e.store}}
			rs.hook = func(op string, kind ipam.Kind, k string) {
				if op == "listed" && kind == ipam.KindBlock {
					listed = true
				}
				if !listed || op != "get" || kind != ipam.KindBlock || k != key || flips == c.flips {
					return
				}
				flips++
				rec, err := e.store.Get(e.ctx, ipam.KindBlock, key)
				require.NoError(t, err)
				b := new(block.Block)
				require.NoError(t, b.UnmarshalBinary(rec.Value))
				b.SetAffinity(block.Host(fmt.Sprint("node-", flips)), e.clock.Now())
				value, err := b.MarshalBinary()
				require.NoError(t, err)
				_, err = e.store.Update(e.ctx, ipam.KindBlock, key, value, rec.Revision)
				require.NoError(t, err)
			}
			deleter, err := ipam.New(rs, ipam.Options{Now: e.clock.Now, MaxRetries: 4})
			require.NoError(t, err)
			err = deleter.DeletePool(e.ctx, "p")
			if c.flips > 100 {
				require.ErrorIs(t, err, ipam.ErrTooManyConflicts)
				require.ErrorContains(t, err, "its affinity kept changing")
				p, err := e.a.Pool(e.ctx, "p")
				require.NoError(t, err, "a failed deletion keeps the pool")
				require.True(t, p.Disabled)
				return
			}
			require.NoError(t, err)
			require.Equal(t, 2, flips)
			requireNoAffineBlocks(t, e)
			own, err := e.a.Owner(e.ctx, held.Addr)
			require.NoError(t, err)
			require.Equal(t, "h-a", own.Handle, "the address stays assigned")
		})
	}
}
