package ipam_test

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
)

// TestConcurrentNodes has 32 nodes, each with its own allocator on one
// store (as 32 processes on one datastore), allocate a block's worth of
// addresses one at a time, all at once, from a pool of exactly 32 blocks.
func TestConcurrentNodes(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(fmt.Sprintf("shared-allocator=%v", shared), func(t *testing.T) {
			const nodes, perNode = 32, 32 // /22 with /27 blocks: 32 blocks of 32
			e := newEnv(t, v4pool("small", "10.10.0.0/22", 27))
			var mu sync.Mutex
			owner := map[netip.Addr]string{}
			var wg sync.WaitGroup
			errs := make(chan error, nodes)
			for n := range nodes {
				a := e.a
				if !shared {
					a = e.allocator()
				}
				node := fmt.Sprintf("node-%02d", n)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range perNode {
						handle := fmt.Sprintf("%s-pod-%d", node, i)
						res, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: handle, Node: node})
						if err != nil {
							errs <- fmt.Errorf("%s: %w", handle, err)
							return
						}
						mu.Lock()
						if prev, ok := owner[res.IPv4[0].Addr]; ok {
							mu.Unlock()
							errs <- fmt.Errorf("%s given to %s and %s", res.IPv4[0].Addr, prev, handle)
							return
						}
						owner[res.IPv4[0].Addr] = node
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			require.Equal(t, nodes*perNode, len(owner), "every request up to capacity succeeded")

			// One block per node while blocks last: each node's addresses
			// fill exactly the block it claimed.
			u := e.utilization()
			require.Len(t, u[0].Blocks, nodes)
			holders := map[string]bool{}
			for _, b := range u[0].Blocks {
				require.Equal(t, 32, b.InUse)
				require.Zero(t, b.Borrowed, "block %s", b.Prefix)
				require.False(t, holders[b.Affinity.Name], "%s holds two blocks", b.Affinity.Name)
				holders[b.Affinity.Name] = true
			}

			// Full: the next request fails cleanly.
			_, err := e.assign4("node-00", "one-too-many", 1)
			require.ErrorIs(t, err, ipam.ErrNoSpace)
		})
	}
}

// TestConcurrentReleaseAndAssign races releases against assignments on one
// node's blocks from several allocators and checks the totals.
func TestConcurrentReleaseAndAssign(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.20.0.0/24", 28))
	const workers, rounds = 8, 40
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		a := e.allocator()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				handle := fmt.Sprintf("w%d-r%d", w, r)
				node := fmt.Sprintf("node-%d", w%3)
				res, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 2, Handle: handle, Node: node})
				if err != nil {
					errs <- err
					return
				}
				if r%2 == 0 {
					got, err := a.ReleaseByHandle(e.ctx, handle)
					if err != nil || len(got) != 2 {
						errs <- fmt.Errorf("release %s: %v %v", handle, got, err)
						return
					}
				} else {
					rel, err := a.ReleaseIPs(e.ctx, ipam.Release{Addr: res.IPv4[0].Addr, Seq: res.IPv4[0].Seq, Handle: handle})
					if err != nil || len(rel.Released) != 1 {
						errs <- fmt.Errorf("release %s: %+v %v", handle, rel, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Half the rounds kept one address each.
	var inUse uint64
	for _, pu := range e.utilization() {
		inUse += pu.InUse
	}
	require.EqualValues(t, workers*rounds/2, inUse)
	for w := range workers {
		for r := 1; r < rounds; r += 2 {
			ips, err := e.a.IPsByHandle(e.ctx, fmt.Sprintf("w%d-r%d", w, r))
			require.NoError(t, err)
			require.Len(t, ips, 1)
		}
	}
}

// TestStoreOpsPerAssign measures the store round trips of a steady-state
// AutoAssign and of the ReleaseByHandle after it: a node with a block that
// has room, pools and configuration cached. Calico needs about nine for
// the assignment. carve's budget is one and two with a store that offers
// Committer (the handle and the block in one commit; the release reads the
// handle first), two and three without.
func TestStoreOpsPerAssign(t *testing.T) {
	for _, c := range []struct {
		commits, gens bool
		trips         [2]int // per AutoAssign, per ReleaseByHandle
	}{
		{true, true, [2]int{1, 2}},
		{false, true, [2]int{2, 3}},
		// Without Generations nothing is cached: an assignment reads the
		// pools, configuration, reservations and the node's blocks, and
		// the reservations and pools again after its write (see
		// stillCarved); a release reads the pools, configuration and
		// reservations.
		{true, false, [2]int{7, 5}},
		{false, false, [2]int{8, 6}},
	} {
		commits := c.commits
		t.Run(fmt.Sprintf("commits=%t/generations=%t", commits, c.gens), func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/16", 26))
			var s ipam.Store = e.store
			switch {
			case !commits && !c.gens:
				s = plainStore{e.store}
			case !commits:
				s = withoutCommits{Store: e.store}
			case !c.gens:
				s = withoutGenerations{Store: e.store}
			}
			counting := storetest.NewCountingStore(s)
			_, ok := counting.(ipam.Committer)
			require.Equal(t, commits, ok, "the counting store offers Committer")
			_, ok = counting.(ipam.Generations)
			require.Equal(t, c.gens, ok, "the counting store offers Generations")
			a, err := ipam.New(counting, ipam.Options{})
			require.NoError(t, err)
			for i := range 2 { // warm up: claim the block, fill the caches
				_, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: fmt.Sprint("warm", i), Node: "node-1"})
				require.NoError(t, err)
			}
			const n = 20
			before, _ := storetest.CountsOf(counting)
			for i := range n {
				_, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: fmt.Sprint("pod", i), Node: "node-1"})
				require.NoError(t, err)
			}
			mid, _ := storetest.CountsOf(counting)
			for i := range n {
				_, err := a.ReleaseByHandle(e.ctx, fmt.Sprint("pod", i))
				require.NoError(t, err)
			}
			after, _ := storetest.CountsOf(counting)
			assigns, releases := mid.Sub(before), after.Sub(mid)
			t.Logf("store operations for %d steady-state AutoAssigns: %s; for their releases: %s", n, assigns, releases)
			trips := c.trips
			require.EqualValues(t, trips[0]*n, assigns.Total(), "round trips per AutoAssign: %s", assigns)
			require.EqualValues(t, n, assigns.Of(storetest.OpCreate, ipam.KindHandle))
			require.EqualValues(t, n, assigns.Of(storetest.OpUpdate, ipam.KindBlock))
			require.EqualValues(t, trips[1]*n, releases.Total(), "round trips per ReleaseByHandle: %s", releases)
			require.EqualValues(t, n, releases.Of(storetest.OpGet, ipam.KindHandle))
			require.EqualValues(t, n, releases.Of(storetest.OpUpdate, ipam.KindBlock))
			require.EqualValues(t, n, releases.Of(storetest.OpDelete, ipam.KindHandle))
			if commits {
				require.EqualValues(t, 2*n, assigns.Commits()+releases.Commits())
			}
			e.requireConsistent()
		})
	}
}

// withoutCommits is a memstore without Committer: the field, shallower
// than the method the embedded store promotes, hides it, so allocators on
// it write records one by one.
type withoutCommits struct {
	*memstore.Store
	Commit struct{}
}

// withoutGenerations is a memstore without Generations, as withoutCommits
// is one without Committer.
type withoutGenerations struct {
	*memstore.Store
	Generation struct{}
}

// plainStore is a memstore with neither (nor BlockKeeper).
type plainStore struct{ ipam.Store }

func TestAllocatorErrorsAreClear(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	tests := []struct {
		name string
		args ipam.AutoAssignArgs
		want string
	}{
		{"no handle", ipam.AutoAssignArgs{Num4: 1, Node: "n"}, "empty handle"},
		{"no node", ipam.AutoAssignArgs{Num4: 1, Handle: "h"}, "empty node name"},
		{"nothing", ipam.AutoAssignArgs{Handle: "h", Node: "n"}, "no addresses asked for"},
		{"negative", ipam.AutoAssignArgs{Num4: -1, Handle: "h", Node: "n"}, "negative count"},
		{"huge", ipam.AutoAssignArgs{Num4: 1 << 30, Handle: "h", Node: "n"}, "above the limit"},
		{"slash in node", ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "a/b"}, `node name "a/b" contains "/"`},
		{"control in handle", ipam.AutoAssignArgs{Num4: 1, Handle: "h\x00", Node: "n"}, "control character"},
		{"bad use", ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n", Use: "Pods"}, `unknown use "Pods"`},
		{"bad attr", ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n", Attrs: map[string]string{"": "x"}}, "attribute"},
	}
	run := func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, err := e.a.AutoAssign(e.ctx, tt.args)
				require.ErrorIs(t, err, ipam.ErrInvalid)
				require.Contains(t, err.Error(), tt.want)
			})
		}
	}
	t.Run("new node", run)
	require.Zero(t, e.store.Len(ipam.KindBlock), "no invalid request wrote anything")
	require.Zero(t, e.store.Len(ipam.KindHandle))
	// The allocator does not check again the name of a node it has met;
	// every other check still applies to it.
	e.mustAssign4("n", "h0", 1)
	t.Run("known node", run)
	require.EqualValues(t, 1, e.store.Len(ipam.KindHandle), "no invalid request wrote anything")

	_, err := ipam.New(nil, ipam.Options{})
	require.ErrorIs(t, err, ipam.ErrInvalid)
	_, err = e.a.ReleaseIPs(e.ctx, ipam.Release{})
	require.ErrorIs(t, err, ipam.ErrInvalid)
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("fe80::1%eth0"), Handle: "h", Node: "n"})
	require.ErrorIs(t, err, ipam.ErrInvalid)
	_, err = e.a.ReleaseByHandle(e.ctx, "")
	require.ErrorIs(t, err, ipam.ErrInvalid)
	err = e.a.SetConfig(e.ctx, ipam.Config{})
	require.ErrorIs(t, err, ipam.ErrInvalidConfig)
	require.True(t, errors.Is(err, ipam.ErrInvalidConfig))
	require.ErrorContains(t, err, "nodes could only borrow, never claim a block (start from DefaultConfig)")
}

// TestClaimCostIndependentOfPoolSize: a node's first AutoAssign claims a
// block with the same store round trips in a /24 (4 blocks) as in a /48
// IPv6 pool (2^74 blocks), because claiming walks the pool without listing
// or probing it.
func TestClaimCostIndependentOfPoolSize(t *testing.T) {
	cost := func(p pool.Pool, num4, num6 int) storetest.Counts {
		e := newEnv(t, p)
		counting := storetest.NewCountingStore(e.store)
		a, err := ipam.New(counting, ipam.Options{})
		require.NoError(t, err)
		// Warm the pool cache, as any running allocator has it.
		_, err = a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: num4, Num6: num6, Handle: "warm", Node: "other"})
		require.NoError(t, err)
		before, _ := storetest.CountsOf(counting)
		_, err = a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: num4, Num6: num6, Handle: "first", Node: "new-node"})
		require.NoError(t, err)
		after, _ := storetest.CountsOf(counting)
		return after.Sub(before)
	}
	small := cost(v4pool("small", "10.0.0.0/24", 26), 1, 0)
	huge := cost(pool.Pool{Name: "huge", CIDR: mustPrefix("fd00::/48"), BlockSize: 122}, 0, 1)
	t.Logf("claim in a /24: %s; in a /48 of /122 blocks: %s", small, huge)
	require.Equal(t, small.Total(), huge.Total())
	require.Zero(t, huge.Of(storetest.OpList, ipam.KindBlock), "no block listing")
}

// TestReadsDuringWrites has one goroutine assign and release on a node's
// block while others read it through the same allocator (Block,
// IPsByHandle, Owner). Under -race this checks that readers get blocks of
// their own, never the cached copy a later write turns into scratch.
func TestReadsDuringWrites(t *testing.T) {
	e := newEnv(t, v4pool("small", "10.10.0.0/24", 26))
	held := e.mustAssign4("node-a", "keeper", 1)
	blk, addr := held[0].Block, held[0].Addr
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			h := fmt.Sprintf("pod-%d", i)
			if _, err := e.assign4("node-a", h, 1); err != nil {
				t.Error(err)
				return
			}
			if _, err := e.a.ReleaseByHandle(e.ctx, h); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for range 300 {
		b, err := e.a.Block(e.ctx, blk)
		require.NoError(t, err)
		require.Contains(t, b.AddrsOf("keeper", nil), addr)
		got, err := e.a.IPsByHandle(e.ctx, "keeper")
		require.NoError(t, err)
		require.Equal(t, []netip.Addr{addr}, got)
		own, err := e.a.Owner(e.ctx, addr)
		require.NoError(t, err)
		require.Equal(t, "keeper", own.Handle)
	}
	close(stop)
	wg.Wait()
}
