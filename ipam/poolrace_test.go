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

// TestStaleViewAssignsIntoUncarvedBlock: a request read the pools (pool
// "old", /28 blocks) before the pool was replaced by "new" (/26 blocks,
// over the same range), and a claim that also read the old pools made a
// /28 block for the node after the replacement, which it is about to give
// up. The request finds that /28 among the node's blocks and assigns there
// before the claim gives it up: it must not keep that address, which the
// new pool's /26 block over it may assign again. It fails with
// ErrNotInPool, having assigned nothing, and the claim gives its block up.
func TestStaleViewAssignsIntoUncarvedBlock(t *testing.T) {
	for _, c := range []struct {
		name string
		do   func(e *env, a *ipam.Allocator) (ipam.AutoAssignResult, error)
	}{
		{"AutoAssign", func(e *env, a *ipam.Allocator) (ipam.AutoAssignResult, error) {
			return a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod-y", Node: "node-a"})
		}},
		{"AssignIPs", func(e *env, a *ipam.Allocator) (ipam.AutoAssignResult, error) {
			return a.AssignIPs(e.ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.1")}, Handle: "pod-y", Node: "node-a"})
		}},
	} {
		t.Run(c.name, func(t *testing.T) { staleViewAssignsIntoUncarvedBlock(t, c.do) })
	}
}

func staleViewAssignsIntoUncarvedBlock(t *testing.T, do func(e *env, a *ipam.Allocator) (ipam.AutoAssignResult, error)) {
	e := newEnv(t, v4pool("old", "10.0.0.0/24", 28))
	res, err, claimErr := staleViewRace(t, e, v4pool("new", "10.0.0.0/24", 26), "v4:0a000000/28", 0, do)
	require.ErrorIs(t, err, ipam.ErrNotInPool, "the request assigned %v", res)
	var ae *ipam.AddrError
	require.ErrorAs(t, err, &ae)
	require.Contains(t, err.Error(), `pool "new"`)
	require.ErrorIs(t, claimErr, ipam.ErrNotInPool)

	_, err = e.a.IPsByHandle(e.ctx, "pod-y")
	require.ErrorIs(t, err, ipam.ErrHandleNotFound)
	_, err = e.store.Get(e.ctx, ipam.KindBlock, "v4:0a000000/28")
	require.ErrorIs(t, err, ipam.ErrNotFound, "the claim gave its /28 up")
	e.requireConsistent()

	// The new pool assigns the address the request had.
	got, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod-z", Node: "node-a"})
	require.NoError(t, err)
	require.Equal(t, 26, got.IPv4[0].Block.Bits())
	e.requireConsistent()
}

// TestOtherAllocatorInClaimWindow: AssignIP read the pool set (pool
// "old", /28 blocks); before it claims the address's missing block, the
// pool is deleted and re-created as "new" with /26 blocks. The claim
// creates the /28 block, and then (claimStands) reads the pool set, sees
// that no pool carves a /28 there and gives the block up. Between the
// block's create and that give-up the block is in the node's index, and
// another allocator serving the same node (another process), which has
// read the new pools, assigns for the node: it must not take an address
// from the /28 (poolOf counts only the blocks a pool carves), or the
// give-up would find the block not empty and leave it, and the new pool's
// own /26 block over the same addresses could assign that address again:
// two owners, and a block overlap that Repair cannot fix. (The claimer's
// first index entry is removed by DeletePool's index sweep and written
// again by putIndex, so the window opens at the claim's read of the pool
// set.)
func TestOtherAllocatorInClaimWindow(t *testing.T) {
	e := newEnv(t)
	require.NoError(t, e.a.CreatePool(e.ctx, v4pool("old", "10.0.0.0/24", 28)))
	other := e.allocator() // a second process serving node-a, on the store directly
	var got ipam.AutoAssignResult
	var otherErr error
	windowHit := false
	err := claimInWindow(t, e, v4pool("new", "10.0.0.0/24", 26), "v4:0a000000/28", func() {
		windowHit = true
		got, otherErr = other.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod-y", Node: "node-a"})
	})
	require.True(t, windowHit, "the other allocator ran between the claim's block create and its pool read")
	require.ErrorIs(t, err, ipam.ErrNotInPool, "the claim saw the pool replaced")
	require.NoError(t, otherErr)
	require.Len(t, got.IPv4, 1)
	y := got.IPv4[0]
	t.Logf("node-a's other allocator got %s in block %s", y.Addr, y.Block)

	// Someone else asks for that address in the new pool.
	z, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: y.Addr, Handle: "pod-z", Node: "node-b"})
	if err == nil {
		t.Errorf("%s assigned twice: to pod-y in %s and to pod-z in %s", y.Addr, y.Block, z.Block)
	}
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Empty(t, r.Problems, "a block of the old size is left in the new pool")
}

// TestEnsureBlockInClaimWindow: as
// TestOtherAllocatorInClaimWindow, but the other allocator
// serving node-a calls EnsureBlock in the window. It returns the /28 that
// the claim is about to give up: a block of a size no pool carves, which
// is gone when the claim returns. EnsureBlock documents "A block returned
// is the node's when the call returns" and that it is a block of the
// pools AutoAssign would choose.
func TestEnsureBlockInClaimWindow(t *testing.T) {
	e := newEnv(t)
	require.NoError(t, e.a.CreatePool(e.ctx, v4pool("old", "10.0.0.0/24", 28)))
	other := e.allocator()
	var got netip.Prefix
	var otherErr error
	err := claimInWindow(t, e, v4pool("new", "10.0.0.0/24", 26), "v4:0a000000/28", func() {
		got, _, otherErr = other.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-a", IPv4: true})
	})
	require.ErrorIs(t, err, ipam.ErrNotInPool)
	require.NoError(t, otherErr)
	require.Equal(t, 26, got.Bits(), "EnsureBlock returned %s, a block of the old pool's size", got)
	_, err = e.a.Block(e.ctx, got)
	require.NoError(t, err, "the block EnsureBlock returned is gone")
}

// TestStaleViewNewPoolInsideBlock: as
// TestStaleViewAssignsIntoUncarvedBlock, but the pool that replaces "old"
// (10.0.0.0/24, /26 blocks) is smaller than one of old's blocks:
// "new" is 10.0.0.32/27 with /29 blocks, inside the /26 10.0.0.0/26. A
// claim that read the old pools makes 10.0.0.0/26 for node-a after the
// replacement; a request that also read the old pools assigns 10.0.0.6
// there before the claim gives the block up. 10.0.0.6 is in no pool now;
// were it to stand, the claim would find its block not empty and keep it:
// a /26 overlapping the new
// pool, whose own /29 blocks then cover the same addresses. stillCarved
// must refuse the address: a pool overlaps its block without carving it.
// (Found by a review.)
func TestStaleViewNewPoolInsideBlock(t *testing.T) {
	for _, lag := range []bool{false, true} {
		t.Run(fmt.Sprintf("generationsLag=%t", lag), func(t *testing.T) { staleViewNewPoolInsideBlock(t, lag) })
	}
}

// staleViewNewPoolInsideBlock is TestStaleViewNewPoolInsideBlock; with lag
// set, the request's allocator sees the store's generations as a store fed
// by a watch that has not delivered the pool change yet does: the pool
// generation has not moved, and the check must not trust it.
func staleViewNewPoolInsideBlock(t *testing.T, lag bool) {
	e := newEnv(t, v4pool("old", "10.0.0.0/24", 26))
	var frozen uint64
	if lag {
		frozen = e.store.Generation(ipam.KindPool)
	}
	res, err, claimErr := staleViewRace(t, e, v4pool("new", "10.0.0.32/27", 29), "v4:0a000000/26", frozen,
		func(e *env, a *ipam.Allocator) (ipam.AutoAssignResult, error) {
			return a.AssignIPs(e.ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.6")}, Handle: "pod-y", Node: "node-a"})
		})
	require.ErrorIs(t, err, ipam.ErrNotInPool)
	t.Logf("request: %v, %v; claim: %v", res, err, claimErr)

	// The new pool assigns an address that the /26 covers too.
	z, zerr := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.40"), Handle: "pod-z", Node: "node-b"})
	t.Logf("new pool: %v, %v", z, zerr)

	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Empty(t, r.Problems, "a block of the old pool overlaps the new pool: request got %v", res)
}

// staleViewRace replaces pool "old" of e by replacement while a request
// (do, on an allocator of its own) and a claim of node-a's block at
// blockKey (an AssignIP of 10.0.0.5) have both read the old pools: the
// claim makes its block, of the old size, after the replacement, and
// waits before it reads the pools again (claimStands) until the request,
// which reaches the node's blocks (AutoAssign) or the address's block
// (AssignIPs) once the claim made its block, is done. With frozen not
// zero, the request's store offers generations with the pool generation
// stuck at it (laggingGens). It returns the request's result and error,
// and the claim's error.
func staleViewRace(t *testing.T, e *env, replacement pool.Pool, blockKey string, frozen uint64, do func(e *env, a *ipam.Allocator) (ipam.AutoAssignResult, error)) (ipam.AutoAssignResult, error, error) {
	t.Helper()
	atWindow, requestDone := make(chan struct{}), make(chan struct{})
	var claimErr error
	claimed := make(chan struct{})

	var start sync.Once
	requestStore := &opHookStore{Store: e.store, before: func(op string, kind ipam.Kind, key string) error {
		if op == "list" && kind == ipam.KindAffinity || op == "get" && kind == ipam.KindBlock {
			start.Do(func() {
				go func() {
					defer close(claimed)
					claimErr = claimInWindow(t, e, replacement, blockKey, func() {
						close(atWindow)
						<-requestDone
					})
				}()
				<-atWindow
			})
		}
		return nil
	}}
	var rs ipam.Store = requestStore
	if frozen != 0 {
		rs = laggingGens{requestStore, e.store, frozen}
	}
	request, err := ipam.New(rs, ipam.Options{})
	require.NoError(t, err)
	res, err := do(e, request)
	close(requestDone)
	<-claimed
	return res, err, claimErr
}

// laggingGens offers the generations of gens, but the pool generation
// stays at pool: a store fed by a watch that lags.
type laggingGens struct {
	ipam.Store
	gens ipam.Generations
	pool uint64
}

func (s laggingGens) Generation(k ipam.Kind) uint64 {
	if k == ipam.KindPool {
		return s.pool
	}
	return s.gens.Generation(k)
}

// claimInWindow makes, on an allocator of its own, node-a's claim of the
// missing block blockKey of pool "old" (an AssignIP of 10.0.0.5) and
// returns its error. Just before the claim's block write, "old" is
// deleted and replacement made; inWindow runs once, at the claim's read
// of the pools that confirms it (claimStands), after its block write and
// its index write.
func claimInWindow(t *testing.T, e *env, replacement pool.Pool, blockKey string, inWindow func()) error {
	t.Helper()
	var replace, window sync.Once
	hs := &opHookStore{Store: e.store, before: func(op string, kind ipam.Kind, key string) error {
		switch {
		case op == "create" && kind == ipam.KindBlock:
			replace.Do(func() {
				require.NoError(t, e.a.DeletePool(e.ctx, "old"))
				require.NoError(t, e.a.CreatePool(e.ctx, replacement))
			})
		case op == "get" && kind == ipam.KindPool:
			if _, err := e.store.Get(e.ctx, ipam.KindBlock, blockKey); err == nil {
				window.Do(inWindow)
			}
		}
		return nil
	}}
	claimer, err := ipam.New(hs, ipam.Options{})
	require.NoError(t, err)
	_, err = claimer.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.5"), Handle: "pod-x", Node: "node-a"})
	return err
}
