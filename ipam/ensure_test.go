package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

func v6pool(name, cidr string, blockSize int) pool.Pool {
	return pool.Pool{Name: name, CIDR: mustPrefix(cidr), BlockSize: blockSize}
}

// TestEnsureBlockClaimsOnceAndAssignsThere: a node without a block gets
// one claimed, the same one again on every later call (with no write), and
// its first AutoAssign takes an address from it.
func TestEnsureBlockClaimsOnceAndAssignsThere(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28), v6pool("p6", "fd00::/120", 124))
	v4, v6, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, IPv6: true})
	require.NoError(t, err)
	require.True(t, mustPrefix("10.0.0.0/24").Contains(v4.Addr()))
	require.Equal(t, 28, v4.Bits())
	require.True(t, mustPrefix("fd00::/120").Contains(v6.Addr()))
	require.Equal(t, 124, v6.Bits())
	require.ElementsMatch(t, []netip.Prefix{v4, v6}, e.affine("node-1"))

	counting := storetest.NewCountingStore(e.store)
	a, err := ipam.New(counting, ipam.Options{})
	require.NoError(t, err)
	for range 3 {
		again4, again6, err := a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, IPv6: true})
		require.NoError(t, err)
		require.Equal(t, v4, again4)
		require.Equal(t, v6, again6)
	}
	ops, _ := storetest.CountsOf(counting)
	for _, op := range []storetest.Op{storetest.OpCreate, storetest.OpUpdate, storetest.OpDelete} {
		for _, k := range ipam.Kinds {
			require.Zero(t, ops.Of(op, k), "a node that holds its blocks gets them without a write: %s", ops)
		}
	}

	got := e.mustAssign4("node-1", "pod-a", 1)
	require.Equal(t, v4, got[0].Block, "the node's first address comes from the block ensured")
	e.requireConsistent()
}

// TestEnsureBlockReturnsTheNodesBlock: a node that holds blocks gets its
// first one in pool order, full or not, as Calico's does; only one family
// asked for gives the zero Prefix for the other.
func TestEnsureBlockReturnsTheNodesBlock(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 30))
	got := e.mustAssign4("node-1", "pod-a", 4) // fills one /30
	v4, v6, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true})
	require.NoError(t, err)
	require.Equal(t, got[0].Block, v4, "the full block is the node's block")
	require.False(t, v6.IsValid(), "IPv6 not asked for")
	require.Len(t, e.affine("node-1"), 1, "nothing claimed")
}

// TestEnsureBlockPools: the pools are chosen as for a workload's
// AutoAssign: by nodeSelector, Manual pools only by name, named pools in
// the order given; a family no pool serves fails, naming why.
func TestEnsureBlockPools(t *testing.T) {
	rack := v4pool("rack-a", "10.1.0.0/24", 26)
	rack.NodeSelector = `rack == "a"`
	manual := v4pool("manual", "10.2.0.0/24", 26)
	manual.AssignmentMode = pool.Manual
	lb := v4pool("lb", "10.3.0.0/24", 26)
	lb.AllowedUses = []pool.Use{pool.UseLoadBalancer}
	e := newEnv(t, rack, manual, lb)

	v4, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-a", NodeLabels: selector.Set{"rack": "a"}, IPv4: true})
	require.NoError(t, err)
	require.True(t, rack.CIDR.Contains(v4.Addr()), "%s from the pool that selects the node", v4)

	_, _, err = e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-b", IPv4: true})
	require.ErrorIs(t, err, pool.ErrNoPool, "neither a Manual pool nor a LoadBalancer pool serves a node unasked")
	require.ErrorContains(t, err, `ensure block for node "node-b": IPv4`)
	require.Empty(t, e.affine("node-b"))

	v4, _, err = e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-b", IPv4: true, IPv4Pools: []string{"manual"}})
	require.NoError(t, err)
	require.True(t, manual.CIDR.Contains(v4.Addr()), "%s from the pool named", v4)

	_, _, err = e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-c", IPv4: true, IPv4Pools: []string{"ghost"}})
	require.ErrorIs(t, err, ipam.ErrPoolNotFound)
}

// TestEnsureBlockAllOrNothing: a family that fails gives up the block
// just claimed for the other, so the node holds nothing afterwards.
func TestEnsureBlockAllOrNothing(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	_, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, IPv6: true})
	require.ErrorIs(t, err, pool.ErrNoPool, "no IPv6 pool")
	require.Empty(t, e.affine("node-1"))

	// The IPv6 pool full: the IPv4 block is claimed, then given up.
	e2 := newEnv(t, v4pool("p", "10.0.0.0/24", 28), v6pool("p6", "fd00::/124", 124))
	_, v6, err := e2.a.EnsureBlock(e2.ctx, ipam.EnsureBlockArgs{Node: "node-0", IPv6: true})
	require.NoError(t, err)
	_, _, err = e2.a.EnsureBlock(e2.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, IPv6: true})
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.ErrorContains(t, err, `IPv6: not enough free addresses: no unclaimed block left in pool "p6"`)
	require.Empty(t, e2.affine("node-1"), "the IPv4 block claimed first is given up")
	require.Equal(t, []netip.Prefix{v6}, e2.affine("node-0"), "another node's block stays its own")
	e2.requireConsistent()
}

// TestEnsureBlockConfig: with AutoAllocateBlocks off a node without a
// block gets none; a node with one still gets it. A node's index entry
// whose block is gone is dropped and a block claimed instead.
func TestEnsureBlockConfig(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	held, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true})
	require.NoError(t, err)
	cfg := ipam.DefaultConfig()
	cfg.AutoAllocateBlocks = false
	cfg.StrictAffinity = true // blocks only as claimed by hand (ClaimAffinity)
	e.config(cfg)

	_, _, err = e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-2", IPv4: true})
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.ErrorContains(t, err, "autoAllocateBlocks is off")
	require.Empty(t, e.affine("node-2"))
	again, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true})
	require.NoError(t, err)
	require.Equal(t, held, again)

	// An index entry left without its block (as a crash leaves it).
	e.config(ipam.DefaultConfig())
	stale := mustPrefix("10.0.0.240/28")
	_, err = e.store.Create(e.ctx, ipam.KindAffinity, "host:node-3/"+blockKeyOf(stale), nil)
	require.NoError(t, err)
	got, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-3", IPv4: true})
	require.NoError(t, err)
	require.NotEqual(t, stale, got)
	require.Equal(t, []netip.Prefix{got}, e.affine("node-3"), "the stale entry is dropped")
	e.requireConsistent()
}

// blockKeyOf is the store key of an IPv4 block (see ipam.KindBlock).
func blockKeyOf(p netip.Prefix) string {
	b := p.Addr().As4()
	return fmt.Sprintf("v4:%02x%02x%02x%02x/%d", b[0], b[1], b[2], b[3], p.Bits())
}

// TestEnsureBlockReserves: a block claimed with ReserveFirst and
// ReserveLast keeps those addresses back, as AutoAssign's claims do, and a
// pool whose blocks would keep none is passed over.
func TestEnsureBlockReserves(t *testing.T) {
	e := newEnv(t, v4pool("tiny", "10.9.0.0/24", 30), v4pool("p", "10.0.0.0/24", 28))
	v4, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, ReserveFirst: 3, ReserveLast: 1, IPv4Pools: []string{"tiny", "p"}})
	require.NoError(t, err)
	require.True(t, mustPrefix("10.0.0.0/24").Contains(v4.Addr()), "%s: tiny's /30 blocks would keep no address", v4)
	got := e.mustAssign4("node-1", "pod-a", 1)
	require.Equal(t, v4.Addr().Next().Next().Next(), got[0].Addr, "the first three addresses are reserved")
	for _, u := range e.utilization() {
		if u.Name == "p" {
			require.Equal(t, 4, int(u.Reserved.Int64()))
		}
	}

	_, _, err = e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-2", IPv4: true, ReserveFirst: 3, ReserveLast: 1, IPv4Pools: []string{"tiny"}})
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.ErrorContains(t, err, `pool "tiny"'s blocks are too small to reserve 3+1 addresses`)
}

// TestEnsureBlockSkipsReservedBlock: a node's block that reservations
// cover whole has no address to give; the node gets another.
func TestEnsureBlockSkipsReservedBlock(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	first, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true})
	require.NoError(t, err)
	require.NoError(t, e.a.CreateReservation(e.ctx, ipam.Reservation{Name: "r", CIDRs: []netip.Prefix{first}}))
	second, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true})
	require.NoError(t, err)
	require.NotEqual(t, first, second)
	require.ElementsMatch(t, []netip.Prefix{first, second}, e.affine("node-1"))

	// Under MaxBlocksPerHost, a node whose blocks are all reserved whole
	// gets no other.
	cfg := ipam.DefaultConfig()
	cfg.MaxBlocksPerHost = 2
	e.config(cfg)
	require.NoError(t, e.a.CreateReservation(e.ctx, ipam.Reservation{Name: "r2", CIDRs: []netip.Prefix{second}}))
	_, _, err = e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true})
	require.ErrorIs(t, err, ipam.ErrBlockLimit)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.ErrorContains(t, err, "maxBlocksPerHost blocks (2), all of them reserved whole")
}

// TestEnsureBlockInvalid: bad arguments fail with ErrInvalid, naming
// what is wrong, and change nothing.
func TestEnsureBlockInvalid(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	for _, tt := range []struct {
		args ipam.EnsureBlockArgs
		msg  string
	}{
		{ipam.EnsureBlockArgs{Node: "node-1"}, "no family asked for"},
		{ipam.EnsureBlockArgs{IPv4: true}, "empty node name"},
		{ipam.EnsureBlockArgs{Node: "a/b", IPv4: true}, `node name "a/b" contains "/"`},
		{ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, ReserveFirst: -1}, "reserved addresses per block"},
		{ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, ReserveLast: ipam.MaxHostReserved + 1}, "reserved addresses per block"},
		{ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, IPv4Pools: []string{""}}, "an empty pool name"},
	} {
		_, _, err := e.a.EnsureBlock(e.ctx, tt.args)
		require.ErrorIs(t, err, ipam.ErrInvalid, "%+v", tt.args)
		require.ErrorContains(t, err, tt.msg)
	}
	recs, err := e.store.List(e.ctx, ipam.KindBlock, ipam.KeyRange{})
	require.NoError(t, err)
	require.Empty(t, recs)
}

// TestEnsureBlockConcurrentNodes: nodes ensuring their blocks at once, on
// allocators of their own, each get a block of their own.
func TestEnsureBlockConcurrentNodes(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	const nodes = 8
	got := make([]netip.Prefix, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		a := e.allocator()
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], _, errs[i] = a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: fmt.Sprintf("node-%d", i), IPv4: true})
		}()
	}
	wg.Wait()
	seen := map[netip.Prefix]int{}
	for i := range nodes {
		require.NoError(t, errs[i])
		require.Equal(t, []netip.Prefix{got[i]}, e.affine(fmt.Sprintf("node-%d", i)))
		seen[got[i]]++
	}
	require.Len(t, seen, nodes, "every node its own block")
	e.requireConsistent()
}

// TestEnsureBlockGivesUpUnselected: as after an AutoAssign, the node's
// empty block in a pool that no longer selects it is given up once the
// node has its block in a pool that does.
func TestEnsureBlockGivesUpUnselected(t *testing.T) {
	e := newEnv(t, v4pool("a", "10.0.0.0/24", 28), v4pool("b", "10.1.0.0/24", 28))
	old, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true})
	require.NoError(t, err)
	require.True(t, mustPrefix("10.0.0.0/24").Contains(old.Addr()), "pool a comes first")

	a, err := e.a.Pool(e.ctx, "a")
	require.NoError(t, err)
	a.NodeSelector = `rack == "x"`
	require.NoError(t, e.a.UpdatePool(e.ctx, a))

	got, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true})
	require.NoError(t, err)
	require.True(t, mustPrefix("10.1.0.0/24").Contains(got.Addr()), "%s from pool b", got)
	require.Equal(t, []netip.Prefix{got}, e.affine("node-1"), "the empty block in pool a is given up")
	e.requireConsistent()
}

// TestEnsureBlockCollectorKeepsEachFamily: the collector keeps a node's
// last block of each family, so a dual-stack node that ensured its blocks
// and has no workload yet keeps both.
func TestEnsureBlockCollectorKeepsEachFamily(t *testing.T) {
	e := newEnv(t, v4pool("v4", "10.0.0.0/24", 28), v6pool("v6", "fd00::/120", 124))
	v4, v6, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "win-1", IPv4: true, IPv6: true})
	require.NoError(t, err)
	c, err := ipam.NewCollector(e.a, func(context.Context, ipam.Allocation) (bool, error) { return true, nil }, ipam.CollectorOptions{Grace: time.Minute})
	require.NoError(t, err)
	_, err = c.Collect(e.ctx)
	require.NoError(t, err)
	e.clock.Advance(2 * time.Minute)
	res, err := c.Collect(e.ctx)
	require.NoError(t, err)
	require.Empty(t, res.ReleasedBlocks)
	require.ElementsMatch(t, []netip.Prefix{v4, v6}, e.affine("win-1"))

	// With a second empty IPv4 block, the first is no longer the last of
	// its family, and goes (it has been empty for the grace period).
	second := mustPrefix("10.0.0.0/28")
	if second == v4 {
		second = mustPrefix("10.0.0.16/28")
	}
	_, err = e.a.ClaimAffinity(e.ctx, "win-1", second)
	require.NoError(t, err)
	res, err = c.Collect(e.ctx)
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{v4}, res.ReleasedBlocks)
	require.ElementsMatch(t, []netip.Prefix{second, v6}, e.affine("win-1"))
}
