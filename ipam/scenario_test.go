package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
)

// Calico's scenarios, as a user of Calico IPAM knows them.

func TestTwoNodesOneBlockSecondBorrows(t *testing.T) {
	e := newEnv(t, v4pool("small", "10.0.0.0/28", 28))
	first := e.mustAssign4("node-1", "h1", 4)
	require.Equal(t, map[netip.Prefix]int{mustPrefix("10.0.0.0/28"): 4}, blocksOf(first))
	require.Equal(t, []netip.Prefix{mustPrefix("10.0.0.0/28")}, e.affine("node-1"))

	// The pool has one block, held by node-1: node-2 borrows from it.
	second := e.mustAssign4("node-2", "h2", 2)
	require.Equal(t, map[netip.Prefix]int{mustPrefix("10.0.0.0/28"): 2}, blocksOf(second))
	require.Empty(t, e.affine("node-2"), "borrowing never claims")

	u := e.utilization()
	require.Len(t, u, 1)
	require.EqualValues(t, 6, u[0].InUse)
	require.EqualValues(t, 2, u[0].Borrowed)
	require.EqualValues(t, 10, u[0].Free.Int64())
	require.Equal(t, 2, u[0].Blocks[0].Borrowed)
}

// TestBorrowSeesReleaseByAnotherAllocator: an allocator whose cached copy
// of another node's block says full must still borrow an address that
// another allocator (another process) has freed there since.
func TestBorrowSeesReleaseByAnotherAllocator(t *testing.T) {
	e := newEnv(t, v4pool("small", "10.0.0.0/29", 30)) // two blocks of 4
	first := e.mustAssign4("node-1", "h1", 4)          // fills a block, cached full by e.a
	e.mustAssign4("node-2", "h2", 4)                   // claims and fills the other
	other := e.allocator()
	_, err := other.ReleaseByHandle(e.ctx, "h1")
	require.NoError(t, err)

	// node-3 can claim nothing and must borrow from node-1's block.
	got := e.mustAssign4("node-3", "h3", 2)
	require.Equal(t, map[netip.Prefix]int{first[0].Block: 2}, blocksOf(got))
}

// TestAssignAcrossBlocks: a request larger than a block takes its
// addresses from several blocks, first the node's own (one of them cached
// as full while another allocator emptied it), then new ones: every address
// distinct and inside its block, all of them the handle's, all released by
// it.
func TestAssignAcrossBlocks(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26)) // four blocks of 64
	first := e.mustAssign4("node-1", "h1", 64)     // fills a block, cached full by e.a
	other := e.allocator()
	_, err := other.ReleaseByHandle(e.ctx, "h1")
	require.NoError(t, err)

	got := e.mustAssign4("node-1", "h2", 150)
	seen := map[netip.Addr]bool{}
	for _, x := range got {
		require.False(t, seen[x.Addr], "%s assigned twice", x.Addr)
		seen[x.Addr] = true
		require.True(t, x.Block.Contains(x.Addr), "%s outside its block %s", x.Addr, x.Block)
	}
	blocks := blocksOf(got)
	require.Len(t, blocks, 3)
	require.Equal(t, 64, blocks[first[0].Block], "the node's emptied block is used first")
	require.Len(t, e.affine("node-1"), 3)

	held, err := e.a.IPsByHandle(e.ctx, "h2")
	require.NoError(t, err)
	require.ElementsMatch(t, addrs(got), held)
	released, err := e.a.ReleaseByHandle(e.ctx, "h2")
	require.NoError(t, err)
	require.ElementsMatch(t, addrs(got), released)
}

// TestOwnerAttributes: an allocation records the caller's attributes and,
// under AttrNode, its node, which the caller may repeat but not contradict;
// AutoAssign and AssignIP refuse bad attributes alike, before writing
// anything.
func TestOwnerAttributes(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h1", Node: "n1",
		Attrs: map[string]string{ipam.AttrNode: "other", "pod": "web"}})
	require.ErrorIs(t, err, ipam.ErrInvalid)
	require.ErrorContains(t, err, `attribute node="other" differs from the node "n1"`)
	res, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h1", Node: "n1",
		Attrs: map[string]string{ipam.AttrNode: "n1", "pod": "web"}})
	require.NoError(t, err)
	own, err := e.a.Owner(e.ctx, res.IPv4[0].Addr)
	require.NoError(t, err)
	require.Equal(t, map[string]string{ipam.AttrNode: "n1", "pod": "web"}, own.Attrs)

	x, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.9"), Handle: "h2", Node: "n1",
		Attrs: map[string]string{ipam.AttrNode: "n1"}})
	require.NoError(t, err)
	own, err = e.a.Owner(e.ctx, x.Addr)
	require.NoError(t, err)
	require.Equal(t, map[string]string{ipam.AttrNode: "n1"}, own.Attrs)

	many := map[string]string{}
	for i := range ipam.MaxAttrs + 1 {
		many[fmt.Sprint("k", i)] = "v"
	}
	for _, attrs := range []map[string]string{
		{"": "x"},
		{ipam.AttrNode: "n3"},
		{"k": strings.Repeat("v", ipam.MaxAttrLen+1)},
		{"k": "\xff"},
		many,
	} {
		_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h3", Node: "n1", Attrs: attrs})
		require.ErrorIs(t, err, ipam.ErrInvalid)
		_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.10"), Handle: "h3", Node: "n2", Attrs: attrs})
		require.ErrorIs(t, err, ipam.ErrInvalid)
	}
	require.Equal(t, 2, e.store.Len(ipam.KindHandle), "no refused request wrote anything")
	require.Equal(t, []netip.Prefix(nil), e.affine("n2"))
}

// TestReleaseByHandleWithStaleCounts: a handle record may count addresses
// its blocks no longer hold (a crash between a release's two writes leaves
// that). ReleaseByHandle then releases nothing and fails with
// ErrHandleNotFound, as for a handle without a record, and it leaves the
// count, which it cannot tell from an assignment in
// flight (TestReleaseByHandleDuringAssign); Check reports it and Repair
// removes it.
func TestReleaseByHandleWithStaleCounts(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	got := e.mustAssign4("node-1", "h1", 2)
	rec, err := e.store.Get(e.ctx, ipam.KindHandle, "h1")
	require.NoError(t, err)
	_, err = e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: got[0].Addr}, ipam.Release{Addr: got[1].Addr})
	require.NoError(t, err)
	// Put the record back as a crash before its update would have left it.
	_, err = e.store.Create(e.ctx, ipam.KindHandle, "h1", rec.Value)
	require.NoError(t, err)

	released, err := e.a.ReleaseByHandle(e.ctx, "h1")
	require.ErrorIs(t, err, ipam.ErrHandleNotFound, "it holds nothing")
	require.ErrorContains(t, err, "its record counts 2 addresses that no block holds")
	require.Nil(t, released)
	_, err = e.a.IPsByHandle(e.ctx, "h1")
	require.ErrorIs(t, err, ipam.ErrHandleNotFound)
	after, err := e.store.Get(e.ctx, ipam.KindHandle, "h1")
	require.NoError(t, err)
	require.Equal(t, rec.Value, after.Value, "the count it cannot account for stays")
	e.requireExcessRepaired()
	require.Zero(t, e.store.Len(ipam.KindHandle))
}

// requireExcessRepaired checks that Check finds a handle counting too much
// and nothing else, and that Repair makes the store clean.
func (e *env) requireExcessRepaired() {
	e.t.Helper()
	r, err := e.a.Check(e.ctx)
	require.NoError(e.t, err)
	require.Equal(e.t, []ipam.ProblemKind{ipam.ProblemHandleExcess}, kinds(r))
	_, report, err := e.a.Repair(e.ctx, ipam.RepairOptions{})
	require.NoError(e.t, err)
	require.True(e.t, report.Clean(), "%v", report.Problems)
}

// TestReleaseByHandleDuringAssign: ReleaseByHandle runs between the two
// writes of an assignment to the same handle (a CNI DEL racing the ADD of
// the same container): the handle's count is raised, the block write is
// still to come. The release finds nothing in the block yet and must leave
// the count alone, so that the address the assignment then writes is
// counted and can be released by handle.
func TestReleaseByHandleDuringAssign(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	var (
		armed       bool
		releasedMid []netip.Addr
	)
	hooked := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if armed && op == "update" && kind == ipam.KindBlock {
			armed = false // the count is raised; the block write is next
			var err error
			releasedMid, err = e.a.ReleaseByHandle(e.ctx, "h")
			require.ErrorIs(t, err, ipam.ErrHandleNotFound, "nothing is assigned yet")
		}
	}}
	assigner, err := ipam.New(hooked, ipam.Options{})
	require.NoError(t, err)
	// The node's block exists, so the next assignment updates it.
	_, err = assigner.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "other", Node: "node-1"})
	require.NoError(t, err)

	armed = true
	got, err := assigner.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-1"})
	require.NoError(t, err)
	require.False(t, armed, "the release ran between the assignment's writes")
	require.Nil(t, releasedMid, "nothing was assigned yet")

	held, err := e.a.IPsByHandle(e.ctx, "h")
	require.NoError(t, err, "the assignment is still counted")
	require.Equal(t, addrs(got.IPv4), held)
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.True(t, r.Clean(), "%v", r.Problems)
	released, err := e.a.ReleaseByHandle(e.ctx, "h")
	require.NoError(t, err)
	require.Equal(t, held, released)
}

// TestClaimSeesBlockDeletedByAnotherAllocator: an allocator whose cache
// still holds a block its node claimed must not take that copy's word for
// a new claim once another allocator has removed the block.
func TestClaimSeesBlockDeletedByAnotherAllocator(t *testing.T) {
	e := newEnv(t, v4pool("one", "10.0.0.0/30", 30)) // a single block
	first := e.mustAssign4("node-1", "h1", 1)        // e.a caches the block as node-1's
	other := e.allocator()
	_, err := other.ReleaseByHandle(e.ctx, "h1")
	require.NoError(t, err)
	_, err = other.ReleaseHostAffinities(e.ctx, "node-1", true) // the empty block is deleted
	require.NoError(t, err)

	got := e.mustAssign4("node-1", "h2", 2)
	require.Equal(t, map[netip.Prefix]int{first[0].Block: 2}, blocksOf(got))
	require.Equal(t, []netip.Prefix{first[0].Block}, e.affine("node-1"))
}

func TestStrictAffinityForbidsBorrowing(t *testing.T) {
	e := newEnv(t, v4pool("small", "10.0.0.0/28", 28))
	e.config(ipam.Config{StrictAffinity: true, AutoAllocateBlocks: true})
	e.mustAssign4("node-1", "h1", 1)

	_, err := e.assign4("node-2", "h2", 1)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	var ae *ipam.AssignError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, 1, ae.Short4)
	require.Zero(t, ae.Result.Len())
	require.Contains(t, err.Error(), "strictAffinity forbids borrowing")
	require.Contains(t, err.Error(), "no unclaimed block left")
	_, err = e.a.IPsByHandle(e.ctx, "h2")
	require.ErrorIs(t, err, ipam.ErrHandleNotFound, "nothing recorded for the failed request")
}

func TestMaxBlocksPerHost(t *testing.T) {
	// Four /30 blocks of 4 addresses.
	p := v4pool("p", "10.0.0.0/28", 30)

	t.Run("borrows past the cap", func(t *testing.T) {
		e := newEnv(t, p)
		e.config(ipam.Config{AutoAllocateBlocks: true, MaxBlocksPerHost: 1})
		e.mustAssign4("node-2", "other", 1) // node-2 holds a block to borrow from
		got := e.mustAssign4("node-1", "h", 6)
		require.Len(t, e.affine("node-1"), 1, "claims stop at the cap")
		require.Len(t, blocksOf(got), 2, "the rest is borrowed")
	})
	t.Run("strict stops at the cap", func(t *testing.T) {
		e := newEnv(t, p)
		e.config(ipam.Config{StrictAffinity: true, AutoAllocateBlocks: true, MaxBlocksPerHost: 2})
		e.mustAssign4("node-1", "a", 8)
		_, err := e.assign4("node-1", "b", 1)
		require.ErrorIs(t, err, ipam.ErrNoSpace)
		require.Contains(t, err.Error(), "maxBlocksPerHost")
		require.Len(t, e.affine("node-1"), 2)
	})
}

func TestDisabledPoolSkippedButReleasable(t *testing.T) {
	e := newEnv(t, v4pool("a-old", "10.0.0.0/24", 26), v4pool("b-new", "10.1.0.0/24", 26))
	old := e.mustAssign4("node-1", "h-old", 1)
	require.True(t, mustPrefix("10.0.0.0/24").Contains(old[0].Addr), "old sorts first")

	require.NoError(t, e.a.DisablePool(e.ctx, "a-old"))
	got := e.mustAssign4("node-1", "h-new", 1)
	require.True(t, mustPrefix("10.1.0.0/24").Contains(got[0].Addr), "a disabled pool is skipped, its block too")

	res, err := e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: old[0].Addr})
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{old[0].Addr}, res.Released)

	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.9"), Handle: "x", Node: "node-1"})
	require.ErrorIs(t, err, ipam.ErrNotInPool)
}

func TestNodeSelectorsPerRack(t *testing.T) {
	rack0 := v4pool("rack-0", "10.0.0.0/24", 26)
	rack0.NodeSelector = `rack == "0"`
	rack1 := v4pool("rack-1", "10.0.1.0/24", 26)
	rack1.NodeSelector = `rack == "1"`
	e := newEnv(t, rack0, rack1)

	for _, tt := range []struct {
		node, rack string
		want       netip.Prefix
	}{
		{"node-a", "0", rack0.CIDR},
		{"node-b", "1", rack1.CIDR},
	} {
		res, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h-" + tt.node, Node: tt.node, NodeLabels: labels("rack", tt.rack)})
		require.NoError(t, err)
		require.True(t, tt.want.Contains(res.IPv4[0].Addr), "%s in rack %s got %s", tt.node, tt.rack, res.IPv4[0].Addr)
	}
	_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-3", NodeLabels: labels("rack", "2")})
	require.ErrorIs(t, err, pool.ErrNoPool)
	require.NotErrorIs(t, err, ipam.ErrNoSpace, "no pool qualifies: not a full pool")
	require.Contains(t, err.Error(), `does not match node node-3`)
}

// A full pool and a missing one are told apart: ErrNoSpace for the first,
// pool.ErrNoPool for the second, both when a partial request meets one in
// each family.
func TestShortfallCauses(t *testing.T) {
	e := newEnv(t, v4pool("small", "10.0.0.0/30", 30))
	e.mustAssign4("node-1", "fill", 4)

	_, err := e.assign4("node-1", "h", 1)
	var ae *ipam.AssignError
	require.ErrorAs(t, err, &ae)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.NotErrorIs(t, err, pool.ErrNoPool, "the pool qualifies; it is full")

	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "node-1", Partial: true})
	require.ErrorAs(t, err, &ae)
	require.Equal(t, [2]int{1, 1}, [2]int{ae.Short4, ae.Short6})
	require.ErrorIs(t, err, ipam.ErrNoSpace, "IPv4: full")
	require.ErrorIs(t, err, pool.ErrNoPool, "IPv6: no pool")

	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num6: 1, Handle: "h", Node: "node-1"})
	require.ErrorAs(t, err, &ae)
	require.ErrorIs(t, err, pool.ErrNoPool)
	require.NotErrorIs(t, err, ipam.ErrNoSpace, "no IPv6 pool at all")
	require.NotErrorIs(t, err, ipam.ErrBlockLimit)
	require.NotErrorIs(t, err, ipam.ErrStrictAffinity)
}

// TestShortfallLimits: a shortfall that a limit of the configuration caused,
// in a pool with room left, matches that limit as well as ErrNoSpace, so a
// caller can tell a full pool from a capped node.
func TestShortfallLimits(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	e.mustAssign4("node-1", "first", 16)
	e.mustAssign4("node-2", "other", 1)

	e.config(ipam.Config{AutoAllocateBlocks: true, MaxBlocksPerHost: 1})
	res, err := e.assign4("node-1", "borrows", 2)
	require.NoError(t, err, "without StrictAffinity the capped node borrows")
	require.Equal(t, map[netip.Prefix]int{e.affine("node-2")[0]: 2}, blocksOf(res.IPv4))

	e.config(ipam.Config{StrictAffinity: true, AutoAllocateBlocks: true, MaxBlocksPerHost: 1})
	_, err = e.assign4("node-1", "h", 1)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.ErrorIs(t, err, ipam.ErrBlockLimit)
	require.ErrorIs(t, err, ipam.ErrStrictAffinity)

	e.config(ipam.Config{StrictAffinity: true, AutoAllocateBlocks: true})
	e.mustAssign4("node-1", "h", 1) // claims a second block
	e.config(ipam.Config{StrictAffinity: true})
	_, err = e.assign4("node-1", "h2", 16)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.ErrorIs(t, err, ipam.ErrStrictAffinity, "autoAllocateBlocks off, no borrowing")
	require.NotErrorIs(t, err, ipam.ErrBlockLimit, "no cap")

	// A capped family that borrowed what it needed does not make the
	// other family's shortfall a cap's.
	e.mustAssign4("node-1", "fill", 15) // both of node-1's blocks are full
	e.config(ipam.Config{AutoAllocateBlocks: true, MaxBlocksPerHost: 1})
	res, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "dual", Node: "node-1", Partial: true})
	require.ErrorIs(t, err, pool.ErrNoPool, "no IPv6 pool")
	require.Len(t, res.IPv4, 1, "borrowed")
	require.NotErrorIs(t, err, ipam.ErrBlockLimit)
	require.NotErrorIs(t, err, ipam.ErrNoSpace)
}

func TestRequestedPoolsOverrideSelectors(t *testing.T) {
	rack1 := v4pool("rack-1", "10.0.1.0/24", 26)
	rack1.NodeSelector = `rack == "1"`
	e := newEnv(t, v4pool("default", "10.0.0.0/24", 26), rack1)
	res, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-a", NodeLabels: labels("rack", "0"), IPv4Pools: []string{"rack-1"}})
	require.NoError(t, err)
	require.True(t, rack1.CIDR.Contains(res.IPv4[0].Addr))

	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h2", Node: "node-a", IPv4Pools: []string{"missing"}})
	require.ErrorIs(t, err, pool.ErrNoPool)
	require.ErrorIs(t, err, ipam.ErrPoolNotFound, "a misspelt name is told from a full pool")
	require.ErrorContains(t, err, "pool missing: no pool has this name or CIDR")

	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h3", Node: "node-a", IPv4Pools: []string{rack1.CIDR.String()}})
	require.NoError(t, err, "a pool can be named by its CIDR")
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h4", Node: "node-a", IPv4Pools: []string{"rack-1"}, IPv6Pools: []string{"rack-1"}, Num6: 1})
	require.ErrorIs(t, err, pool.ErrNoPool)
	require.NotErrorIs(t, err, ipam.ErrPoolNotFound, "the pool exists, in the other family")
}

func TestManualPoolOnlyWhenRequested(t *testing.T) {
	manual := v4pool("manual", "10.0.0.0/24", 26)
	manual.AssignmentMode = pool.Manual
	e := newEnv(t, manual)
	_, err := e.assign4("node-1", "h", 1)
	require.ErrorIs(t, err, pool.ErrNoPool)

	res, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-1", IPv4Pools: []string{"manual"}})
	require.NoError(t, err)
	require.True(t, manual.CIDR.Contains(res.IPv4[0].Addr))
}

// TestAssignIPIsExplicit: naming an address chooses its pool, whatever the
// pool's selectors and assignment mode say (as in Calico); only a disabled
// pool refuses.
func TestAssignIPIsExplicit(t *testing.T) {
	rack := v4pool("rack-1", "10.0.0.0/24", 26)
	rack.NodeSelector = `rack == "1"`
	rack.NamespaceSelector = `team == "a"`
	rack.AssignmentMode = pool.Manual
	e := newEnv(t, rack)
	_, err := e.assign4("node-9", "auto", 1) // node-9 has no rack label
	require.ErrorIs(t, err, pool.ErrNoPool)

	got, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.7"), Handle: "h", Node: "node-9"})
	require.NoError(t, err)
	require.Equal(t, mustAddr("10.0.0.7"), got.Addr)
	require.Equal(t, []netip.Prefix{mustPrefix("10.0.0.0/26")}, e.affine("node-9"))

	require.NoError(t, e.a.DisablePool(e.ctx, "rack-1"))
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.8"), Handle: "h", Node: "node-9"})
	require.ErrorIs(t, err, ipam.ErrNotInPool)
	require.ErrorContains(t, err, `pool "rack-1" is disabled`)
}

func TestAllowedUses(t *testing.T) {
	tunnel := v4pool("tunnel", "10.0.0.0/24", 26)
	tunnel.AllowedUses = []pool.Use{pool.UseTunnel}
	workload := v4pool("workload", "10.0.1.0/24", 26)
	workload.AllowedUses = []pool.Use{pool.UseWorkload}
	e := newEnv(t, tunnel, workload)

	res, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "tun", Node: "n", Use: pool.UseTunnel})
	require.NoError(t, err)
	require.True(t, tunnel.CIDR.Contains(res.IPv4[0].Addr))

	res, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod", Node: "n"})
	require.NoError(t, err)
	require.True(t, workload.CIDR.Contains(res.IPv4[0].Addr), "the zero Use means Workload")

	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.1.200"), Handle: "x", Node: "n", Use: pool.UseTunnel})
	require.ErrorIs(t, err, ipam.ErrNotInPool)
	require.Contains(t, err.Error(), "does not allow use Tunnel")
}

func TestAssignIPTakenRefused(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	x, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.77"), Handle: "a", Node: "node-1"})
	require.NoError(t, err)
	require.Equal(t, mustPrefix("10.0.0.64/26"), x.Block)
	require.Equal(t, []netip.Prefix{mustPrefix("10.0.0.64/26")}, e.affine("node-1"), "AssignIP claims the block")

	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.77"), Handle: "b", Node: "node-2"})
	require.ErrorIs(t, err, ipam.ErrInUse)
	own, err := e.a.Owner(e.ctx, mustAddr("10.0.0.77"))
	require.NoError(t, err)
	require.Equal(t, "a", own.Handle)
	require.Equal(t, "node-1", own.Attrs[ipam.AttrNode])

	// Strict affinity: node-2 may not assign into node-1's block.
	e.config(ipam.Config{StrictAffinity: true, AutoAllocateBlocks: true})
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.78"), Handle: "b", Node: "node-2"})
	require.ErrorIs(t, err, ipam.ErrStrictAffinity)
}

func TestStaleSequenceReleaseRefused(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/30", 30))
	first := e.mustAssign4("node-1", "pod-a", 1)[0]
	_, err := e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: first.Addr, Seq: first.Seq})
	require.NoError(t, err)
	// The address is handed out again (the block is tiny: it comes round).
	var again ipam.Assigned
	for i := 0; ; i++ {
		x := e.mustAssign4("node-1", "pod-b", 1)[0]
		if x.Addr == first.Addr {
			again = x
			break
		}
		require.Less(t, i, 4)
	}
	require.NotEqual(t, first.Seq, again.Seq)

	// A late release carrying the first allocation's sequence number is
	// refused and frees nothing.
	res, err := e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: first.Addr, Seq: first.Seq})
	require.ErrorIs(t, err, ipam.ErrSeqMismatch)
	var ae *ipam.AddrError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, first.Addr, ae.Addr)
	require.Equal(t, 1, strings.Count(err.Error(), first.Addr.String()+":"), "the address is named once: %v", err)
	require.True(t, strings.HasPrefix(err.Error(), "ipam: block "), err.Error())
	require.Empty(t, res.Released)
	own, err := e.a.Owner(e.ctx, first.Addr)
	require.NoError(t, err)
	require.Equal(t, "pod-b", own.Handle)

	// So is a release naming the wrong handle.
	_, err = e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: first.Addr, Handle: "pod-a"})
	require.ErrorIs(t, err, ipam.ErrHandleMismatch)

	// Several refusals: one line each, after a line that counts them.
	held, err := e.a.IPsByHandle(e.ctx, "pod-b")
	require.NoError(t, err)
	other := held[0]
	if other == first.Addr {
		other = held[1]
	}
	_, err = e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: first.Addr, Handle: "pod-a"}, ipam.Release{Addr: other, Seq: 1})
	require.ErrorIs(t, err, ipam.ErrHandleMismatch)
	require.ErrorIs(t, err, ipam.ErrSeqMismatch)
	lines := strings.Split(err.Error(), "\n")
	require.Len(t, lines, 3, err.Error())
	require.Equal(t, "ipam: release: 2 addresses refused:", lines[0])
	require.Contains(t, lines[1], "release "+first.Addr.String()+`: handle "pod-a" does not match "pod-b"`)
	require.Contains(t, lines[2], "release "+other.String()+": sequence number 1 does not match")
}

// TestReleaseRepeatedAddress: an address given more than once in one
// ReleaseIPs is released once and listed once, as first given; entries that
// disagree on what must hold refuse the whole call, before anything is
// released.
func TestReleaseRepeatedAddress(t *testing.T) {
	mapped := func(a netip.Addr) netip.Addr { return netip.AddrFrom16(a.As16()) }
	for _, pad := range []int{0, 20} { // 20: more entries than are compared pairwise
		cases := []struct {
			name      string
			rels      func(got []ipam.Assigned) []ipam.Release
			released  func(got []ipam.Assigned) []netip.Addr
			invalid   string
			stillHeld bool
		}{
			{
				name: "same entry twice",
				rels: func(got []ipam.Assigned) []ipam.Release {
					return []ipam.Release{{Addr: got[0].Addr}, {Addr: got[1].Addr}, {Addr: got[0].Addr}}
				},
				released: func(got []ipam.Assigned) []netip.Addr { return []netip.Addr{got[0].Addr, got[1].Addr} },
			},
			{
				name: "mapped and plain, with the same checks",
				rels: func(got []ipam.Assigned) []ipam.Release {
					return []ipam.Release{
						{Addr: mapped(got[0].Addr), Handle: "h", Seq: got[0].Seq},
						{Addr: got[0].Addr, Handle: "h", Seq: got[0].Seq},
					}
				},
				released: func(got []ipam.Assigned) []netip.Addr { return []netip.Addr{mapped(got[0].Addr)} },
			},
			{
				name: "different handles",
				rels: func(got []ipam.Assigned) []ipam.Release {
					return []ipam.Release{{Addr: got[1].Addr}, {Addr: got[0].Addr, Handle: "h"}, {Addr: got[0].Addr, Handle: "other"}}
				},
				invalid:   `given twice with different handles ("h", "other")`,
				stillHeld: true,
			},
			{
				name: "a handle and none",
				rels: func(got []ipam.Assigned) []ipam.Release {
					return []ipam.Release{{Addr: got[0].Addr}, {Addr: got[0].Addr, Handle: "h"}}
				},
				invalid:   `given twice with different handles ("", "h")`,
				stillHeld: true,
			},
			{
				name: "different sequence numbers",
				rels: func(got []ipam.Assigned) []ipam.Release {
					return []ipam.Release{{Addr: got[0].Addr, Seq: got[0].Seq}, {Addr: mapped(got[0].Addr), Seq: got[0].Seq + 1}}
				},
				invalid:   "given twice with different sequence numbers",
				stillHeld: true,
			},
		}
		for _, c := range cases {
			t.Run(fmt.Sprintf("pad=%d/%s", pad, c.name), func(t *testing.T) {
				e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
				got := e.mustAssign4("node-1", "h", 2)
				rels := c.rels(got)
				var free []netip.Addr // addresses never assigned, padding the call
				for i := range pad {
					addr := netip.AddrFrom4([4]byte{10, 0, 0, byte(200 + i)})
					free = append(free, addr)
					rels = append(rels, ipam.Release{Addr: addr})
				}
				res, err := e.a.ReleaseIPs(e.ctx, rels...)
				if c.invalid != "" {
					require.ErrorIs(t, err, ipam.ErrInvalid)
					require.ErrorContains(t, err, got[0].Addr.String()+" "+c.invalid)
					require.Empty(t, res.Released)
					ips, err := e.a.IPsByHandle(e.ctx, "h")
					require.NoError(t, err)
					require.Len(t, ips, 2, "a refused call released something")
					return
				}
				require.NoError(t, err)
				require.Equal(t, c.released(got), res.Released)
				require.Equal(t, orEmpty(free), orEmpty(res.NotAllocated))
				e.requireConsistent()
			})
		}
	}
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func TestDualStackAllOrNothing(t *testing.T) {
	v6 := pool.Pool{Name: "v6", CIDR: mustPrefix("fd00::/120"), BlockSize: 120}
	e := newEnv(t, v4pool("v4", "10.0.0.0/24", 26), v6)
	e.config(ipam.Config{StrictAffinity: true, AutoAllocateBlocks: true})
	// The only IPv6 block goes to node-0.
	_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num6: 1, Handle: "x", Node: "node-0"})
	require.NoError(t, err)

	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 2, Num6: 1, Handle: "dual", Node: "node-1"})
	var ae *ipam.AssignError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, 1, ae.Short6)
	require.Zero(t, ae.Result.Len())
	_, err = e.a.IPsByHandle(e.ctx, "dual")
	require.ErrorIs(t, err, ipam.ErrHandleNotFound, "the IPv4 half was given back")
	for _, pu := range e.utilization() {
		if pu.Name == "v4" {
			require.Zero(t, pu.InUse)
		}
	}

	// Partial keeps what it got and says what is missing.
	res, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 2, Num6: 1, Handle: "dual", Node: "node-1", Partial: true})
	require.ErrorAs(t, err, &ae)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.Len(t, res.IPv4, 2)
	require.Empty(t, res.IPv6)
	require.Equal(t, res, ae.Result)
	got, err := e.a.IPsByHandle(e.ctx, "dual")
	require.NoError(t, err)
	require.ElementsMatch(t, addrs(res.IPv4), got)
}

func TestPoolDeletion(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	e.mustAssign4("node-1", "kept", 1)
	e.mustAssign4("node-2", "released", 1)
	_, err := e.a.ReleaseByHandle(e.ctx, "released")
	require.NoError(t, err)
	require.Len(t, e.affine("node-2"), 1, "an empty affine block stays with its node")

	require.NoError(t, e.a.DeletePool(e.ctx, "p"))
	_, err = e.a.Pool(e.ctx, "p")
	require.ErrorIs(t, err, ipam.ErrPoolNotFound)
	err = e.a.DeletePool(e.ctx, "p")
	require.ErrorIs(t, err, ipam.ErrPoolNotFound)
	require.EqualError(t, err, `ipam: delete pool "p": pool not found`)

	u := e.utilization()
	require.Len(t, u, 1, "only the orphan entry is left")
	require.Empty(t, u[0].Name)
	require.Len(t, u[0].Blocks, 1, "node-2's empty block was deleted, node-1's kept for its address")
	require.True(t, u[0].Blocks[0].Affinity.IsZero(), "and lost its affinity")
	ips, err := e.a.IPsByHandle(e.ctx, "kept")
	require.NoError(t, err)
	require.Len(t, ips, 1, "allocations stay until released")

	got, err := e.a.ReleaseByHandle(e.ctx, "kept")
	require.NoError(t, err)
	require.Equal(t, ips, got)
	require.Empty(t, e.utilization(), "the last release deleted the orphan block")
	_, err = e.assign4("node-1", "new", 1)
	require.True(t, errors.Is(err, pool.ErrNoPool))
}

func netipPool(name string, cidr netip.Prefix, blockSize int) pool.Pool {
	return pool.Pool{Name: name, CIDR: cidr, BlockSize: blockSize}
}

// A pool deleted while its blocks hold addresses cannot be replaced by one
// that carves the same range differently: the new blocks would overlap the
// old ones and could hand out an address twice.
func TestPoolRecreatedWithOtherBlockSize(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	kept := e.mustAssign4("node-1", "kept", 1)[0]
	require.NoError(t, e.a.DeletePool(e.ctx, "p"))

	err := e.a.CreatePool(e.ctx, v4pool("p2", "10.0.0.0/24", 27))
	require.ErrorIs(t, err, ipam.ErrLeftoverBlocks)
	require.Contains(t, err.Error(), kept.Block.String()+" (1 address in use: release it first)")
	err = e.a.CreatePool(e.ctx, netipPool("p2", netip.PrefixFrom(kept.Addr, 30).Masked(), 30))
	require.ErrorIs(t, err, ipam.ErrLeftoverBlocks, "a pool inside a leftover block")

	// The same carving is fine: the old block becomes the new pool's.
	require.NoError(t, e.a.CreatePool(e.ctx, v4pool("p2", "10.0.0.0/24", 26)))
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: kept.Addr, Handle: "x", Node: "node-2"})
	require.ErrorIs(t, err, ipam.ErrInUse)

	// Once the old addresses are released, any carving goes.
	require.NoError(t, e.a.DeletePool(e.ctx, "p2"))
	_, err = e.a.ReleaseByHandle(e.ctx, "kept")
	require.NoError(t, err)
	require.NoError(t, e.a.CreatePool(e.ctx, v4pool("p3", "10.0.0.0/24", 27)))
}

// An empty block a crash left in a deleted pool's range is in a new pool's
// way as well; the refusal says that Repair deletes it, and it does.
func TestPoolRecreatedOverEmptyLeftover(t *testing.T) {
	e := newEnv(t)
	e.leftoverBlock("10.0.0.64/26", "v4:0a000040/26")

	err := e.a.CreatePool(e.ctx, v4pool("p", "10.0.0.0/24", 27))
	require.ErrorIs(t, err, ipam.ErrLeftoverBlocks)
	require.Contains(t, err.Error(), "10.0.0.64/26 (empty: Repair deletes it)")
	err = e.a.CreatePool(e.ctx, v4pool("p", "10.0.0.64/28", 28))
	require.ErrorIs(t, err, ipam.ErrLeftoverBlocks, "a pool inside the block")
	require.Contains(t, err.Error(), "10.0.0.64/26 (empty: Repair deletes it)")
	require.Equal(t, 1, strings.Count(err.Error(), "10.0.0.64/26"), "named once: %v", err)

	_, r, err := e.a.Repair(e.ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	require.True(t, r.Clean(), "%v", r.Problems)
	require.NoError(t, e.a.CreatePool(e.ctx, v4pool("p", "10.0.0.0/24", 27)))
}

func TestAllocationsWithin(t *testing.T) {
	e := newEnv(t, v4pool("a", "10.0.0.0/24", 26), v4pool("b", "10.0.1.0/24", 26))
	res, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 2, Handle: "x", Node: "n1", IPv4Pools: []string{"a"}})
	require.NoError(t, err)
	require.Equal(t, "a", res.IPv4[0].Pool)
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "y", Node: "n1", IPv4Pools: []string{"b"}})
	require.NoError(t, err)

	got, err := e.a.Allocations(e.ctx, mustPrefix("10.0.0.0/24"))
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.Equal(t, "x", got[0].Handle)
	require.Equal(t, "n1", got[0].Attrs[ipam.AttrNode])
	one, err := e.a.Allocations(e.ctx, netip.PrefixFrom(res.IPv4[1].Addr, 32))
	require.NoError(t, err, "a prefix inside a block")
	require.Len(t, one, 1)
	require.Equal(t, res.IPv4[1].Addr, one[0].Addr)
	all, err := e.a.Allocations(e.ctx, mustPrefix("0.0.0.0/0"))
	require.NoError(t, err)
	require.Len(t, all, 3)
	_, err = e.a.Allocations(e.ctx, netip.Prefix{})
	require.ErrorIs(t, err, ipam.ErrInvalid)

	// An IPv4-mapped prefix is refused, as pools and reservations refuse
	// one, by every call that takes a prefix: no block lies in it, so it
	// would find nothing.
	mapped := mustPrefix("::ffff:10.0.0.0/120")
	_, err = e.a.Allocations(e.ctx, mapped)
	require.ErrorIs(t, err, ipam.ErrInvalid)
	require.ErrorContains(t, err, "write IPv4 ranges in IPv4 form (10.0.0.0/24)")
	_, err = e.a.Block(e.ctx, mustPrefix("::ffff:10.0.0.0/122"))
	require.ErrorIs(t, err, ipam.ErrInvalid)
	_, err = e.a.ClaimAffinity(e.ctx, "n1", mapped)
	require.ErrorIs(t, err, ipam.ErrInvalid)
	require.ErrorIs(t, e.a.ReleaseAffinity(e.ctx, "n1", mapped, false), ipam.ErrInvalid)
	still, err := e.a.Allocations(e.ctx, mustPrefix("0.0.0.0/0"))
	require.NoError(t, err)
	require.Equal(t, all, still, "nothing changed")

	text, err := ipam.KindBlock.MarshalText()
	require.NoError(t, err)
	var k ipam.Kind
	require.NoError(t, k.UnmarshalText(text))
	require.Equal(t, ipam.KindBlock, k)
	require.Error(t, k.UnmarshalText([]byte("blocks")))

	err = e.a.UpdatePool(e.ctx, pool.Pool{Name: "a", CIDR: mustPrefix("10.0.0.0/24"), BlockSize: 27})
	require.ErrorIs(t, err, pool.ErrImmutable)
	require.Equal(t, 1, strings.Count(err.Error(), `"a"`), "the pool is named once: %v", err)
}

// When one family has no pool, the error says that family is short, not
// both, and gives the reasons of every family that failed.
func TestAssignErrorNamesTheFamilyWithoutPool(t *testing.T) {
	e := newEnv(t, v4pool("v4", "10.0.0.0/24", 26))
	_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "n"})
	var ae *ipam.AssignError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, 0, ae.Short4)
	require.Equal(t, 1, ae.Short6)
	require.ErrorIs(t, err, pool.ErrNoPool)
	require.Contains(t, err.Error(), "short of 1 of 1 IPv6, nothing kept")
	require.Zero(t, e.store.Len(ipam.KindBlock), "nothing written")

	res, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "n", Partial: true})
	require.ErrorAs(t, err, &ae)
	require.Len(t, res.IPv4, 1, "partial gets the family that has a pool")

	// Both families without a pool: both reasons.
	rack := v4pool("rack", "10.9.0.0/24", 26)
	rack.NodeSelector = `rack == "9"`
	e = newEnv(t, rack)
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "n"})
	require.ErrorAs(t, err, &ae)
	require.Equal(t, 1, ae.Short4)
	require.Equal(t, 1, ae.Short6)
	require.Len(t, ae.Reasons, 2)
}

// TestBatchWritesHandleOnce: a request spanning several of the node's
// blocks writes its handle record once, not once per block, and so does
// its release, by handle or by address: each write encodes the whole
// record, so one per block would make a batch's cost grow with the square
// of its blocks.
func TestBatchWritesHandleOnce(t *testing.T) {
	releases := map[string]func(a *ipam.Allocator, e *env, got []ipam.Assigned) ([]netip.Addr, error){
		"ReleaseByHandle": func(a *ipam.Allocator, e *env, _ []ipam.Assigned) ([]netip.Addr, error) {
			return a.ReleaseByHandle(e.ctx, "batch")
		},
		"ReleaseIPs": func(a *ipam.Allocator, e *env, got []ipam.Assigned) ([]netip.Addr, error) {
			var rels []ipam.Release
			for _, x := range got {
				rels = append(rels, ipam.Release{Addr: x.Addr, Handle: "batch"})
			}
			res, err := a.ReleaseIPs(e.ctx, rels...)
			return res.Released, err
		},
	}
	for name, release := range releases {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/24", 28)) // blocks of 16
			store := storetest.NewCountingStore(e.store)
			a, err := ipam.New(store, ipam.Options{})
			require.NoError(t, err)
			args := ipam.AutoAssignArgs{Num4: 40, Handle: "warm", Node: "node-1"}
			_, err = a.AutoAssign(e.ctx, args) // claims three blocks
			require.NoError(t, err)
			_, err = a.ReleaseByHandle(e.ctx, "warm")
			require.NoError(t, err)

			before, _ := storetest.CountsOf(store)
			args.Handle = "batch"
			got, err := a.AutoAssign(e.ctx, args)
			require.NoError(t, err)
			require.Len(t, blocksOf(got.IPv4), 3)
			assigned, _ := storetest.CountsOf(store)
			released, err := release(a, e, got.IPv4)
			require.NoError(t, err)
			require.ElementsMatch(t, addrs(got.IPv4), released)
			after, _ := storetest.CountsOf(store)

			handleWrites := func(c storetest.Counts) int64 {
				return c.Of(storetest.OpCreate, ipam.KindHandle) + c.Of(storetest.OpUpdate, ipam.KindHandle) + c.Of(storetest.OpDelete, ipam.KindHandle)
			}
			require.EqualValues(t, 1, handleWrites(assigned.Sub(before)), "assign: %v", assigned.Sub(before))
			require.EqualValues(t, 3, assigned.Sub(before).Of(storetest.OpUpdate, ipam.KindBlock))
			require.EqualValues(t, 1, handleWrites(after.Sub(assigned)), "release: %v", after.Sub(assigned))
			require.EqualValues(t, 3, after.Sub(assigned).Of(storetest.OpUpdate, ipam.KindBlock))
			r, err := e.a.Check(e.ctx)
			require.NoError(t, err)
			require.True(t, r.Clean(), "%v", r.Problems)
		})
	}
}

// TestFirstBatchWritesHandleOnce: a node's first batch, which claims the
// blocks it fills, raises its handle's counts for the blocks it claims in
// one write too, not one per claimed block; the counts come out exact, and
// a batch that also fills the node's own blocks first adds the claimed
// blocks to what it raised for those.
func TestFirstBatchWritesHandleOnce(t *testing.T) {
	handleWrites := func(c storetest.Counts) int64 {
		return c.Of(storetest.OpCreate, ipam.KindHandle) + c.Of(storetest.OpUpdate, ipam.KindHandle) + c.Of(storetest.OpDelete, ipam.KindHandle)
	}
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28)) // blocks of 16
	store := storetest.NewCountingStore(e.store)
	a, err := ipam.New(store, ipam.Options{})
	require.NoError(t, err)

	before, _ := storetest.CountsOf(store)
	got, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 100, Handle: "first", Node: "node-1"})
	require.NoError(t, err)
	require.Len(t, got.IPv4, 100)
	require.Len(t, blocksOf(got.IPv4), 7, "100 addresses claim seven blocks of 16")
	after, _ := storetest.CountsOf(store)
	require.EqualValues(t, 1, handleWrites(after.Sub(before)), "%v", after.Sub(before))
	counts, err := a.IPsByHandle(e.ctx, "first")
	require.NoError(t, err)
	require.Len(t, counts, 100)

	// The node's seventh block has 12 free; 40 more take them and claim
	// two more blocks (the second half full).
	before = after
	got, err = a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 40, Handle: "second", Node: "node-1"})
	require.NoError(t, err)
	require.Len(t, blocksOf(got.IPv4), 3)
	after, _ = storetest.CountsOf(store)
	require.LessOrEqual(t, handleWrites(after.Sub(before)), int64(2), "%v", after.Sub(before))
	e.requireConsistent()

	for _, h := range []string{"first", "second"} {
		_, err := a.ReleaseByHandle(e.ctx, h)
		require.NoError(t, err)
	}
	e.requireConsistent()
}

// TestBatchPlanGoesStaleThenClaims: a batch raises its handle's counts
// for the node's blocks by what its cached copies say is free, one of them
// gives fewer (another allocator took some), and the batch then claims
// blocks and raises their counts too: what the first raise did not use is
// still lowered at the end, so the counts come out exact.
func TestBatchPlanGoesStaleThenClaims(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28)) // blocks of 16
	got := e.mustAssign4("node-1", "fill", 32)     // blocks A and B, full
	blocks := blocksOf(got)
	require.Len(t, blocks, 2)
	// Four addresses free in each, as e.a knows.
	var rels []ipam.Release
	freed := map[netip.Prefix]int{}
	for _, x := range got {
		if freed[x.Block] < 4 {
			freed[x.Block]++
			rels = append(rels, ipam.Release{Addr: x.Addr})
		}
	}
	_, err := e.a.ReleaseIPs(e.ctx, rels...)
	require.NoError(t, err)
	// Another allocator takes two of A's behind e.a's back.
	other := e.allocator()
	for _, r := range rels[:2] {
		_, err := other.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: r.Addr, Handle: "other", Node: "node-1"})
		require.NoError(t, err)
	}

	// 30: 6 from A and B (8 planned), 24 from two claimed blocks.
	res, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 30, Handle: "batch", Node: "node-1"})
	require.NoError(t, err)
	require.Len(t, res.IPv4, 30)
	require.Len(t, blocksOf(res.IPv4), 4)
	e.requireConsistent()
	held, err := e.a.IPsByHandle(e.ctx, "batch")
	require.NoError(t, err)
	require.Len(t, held, 30)
}

// TestBatchPlanGoesStale: a request spanning several blocks raises the
// handle's counts ahead, by what its cached copies say is free. When
// another allocator has taken some of those addresses since, the request
// takes fewer from that block and more from the next, and lowers what it
// raised too much: the record counts exactly what the handle holds.
func TestBatchPlanGoesStale(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/26", 29)) // 8 blocks of 8
	taken := e.stalePlan(e.a)

	got := e.mustAssign4("node-1", "h", 19)
	for blk, n := range blocksOf(got) {
		if _, ok := blocksOf(taken)[blk]; ok {
			require.Equal(t, 3, n, "the rest of the first block")
		}
	}
	e.requireHolds("h", got)
}

// stalePlan makes a's cache of node-1's blocks stale for a planned request:
// a sees node-1's three blocks empty, then another allocator takes 5
// addresses of the first, which it returns. The next request of 19 plans
// on 8 there, gets 3, and raises the third block's count by 5 beyond plan.
func (e *env) stalePlan(a *ipam.Allocator) []ipam.Assigned {
	e.t.Helper()
	_, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 24, Handle: "warm", Node: "node-1"})
	require.NoError(e.t, err)
	_, err = a.ReleaseByHandle(e.ctx, "warm")
	require.NoError(e.t, err)
	res, err := e.allocator().AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 5, Handle: "other", Node: "node-1"})
	require.NoError(e.t, err)
	require.Len(e.t, blocksOf(res.IPv4), 1)
	return res.IPv4
}

// requireHolds checks that handle holds exactly got, and that the store is
// consistent: the handle's record counts exactly what it holds.
func (e *env) requireHolds(handle string, got []ipam.Assigned) {
	e.t.Helper()
	held, err := e.a.IPsByHandle(e.ctx, handle)
	require.NoError(e.t, err)
	require.ElementsMatch(e.t, addrs(got), held)
	r, err := e.a.Check(e.ctx)
	require.NoError(e.t, err)
	require.True(e.t, r.Clean(), "%v", r.Problems)
}

// TestBatchRaiseConflicts: in a planned request, the raise of a block's
// count beyond its share of the plan loses its compare-and-swap races
// until the write gives up; the block is tried again. What the failed
// attempt drew from the plan must be drawn again, not lost: the request
// then ends with counts that are exact.
func TestBatchRaiseConflicts(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/26", 29)) // 8 blocks of 8
	bumps := 0
	hooked := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if op == "update" && kind == ipam.KindHandle && key == "h" && bumps < 2 {
			// Another writer changes the record just before each of the
			// first two updates of it.
			bumps++
			rec, err := e.store.Get(e.ctx, kind, key)
			require.NoError(t, err)
			_, err = e.store.Update(e.ctx, kind, key, rec.Value, rec.Revision)
			require.NoError(t, err)
		}
	}}
	a, err := ipam.New(hooked, ipam.Options{MaxRetries: 2})
	require.NoError(t, err)
	e.stalePlan(a)

	got, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 19, Handle: "h", Node: "node-1"})
	require.NoError(t, err)
	require.Equal(t, 2, bumps, "the raise lost two races")
	e.requireHolds("h", got.IPv4)
}

// TestBatchSettleFails: the last write of a planned request, lowering the
// counts it raised but did not use, fails. The request got its addresses
// and succeeds; the counts stay too high, as a crash would leave them,
// until Repair.
func TestBatchSettleFails(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/26", 29)) // 8 blocks of 8
	updates := 0
	failing := &failStore{Store: e.store, fail: func(op string, kind ipam.Kind, key string) bool {
		if op == "update" && kind == ipam.KindHandle && key == "h" {
			updates++
			return updates == 2 // the raise beyond plan, then the settle
		}
		return false
	}}
	a, err := ipam.New(failing, ipam.Options{})
	require.NoError(t, err)
	e.stalePlan(a)

	got, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 19, Handle: "h", Node: "node-1"})
	require.NoError(t, err)
	require.Len(t, got.IPv4, 19)
	require.Equal(t, 2, updates)
	e.requireExcessRepaired()
	e.requireHolds("h", got.IPv4)
}

// failStore fails an operation, before it reaches the store, when fail
// says so.
type failStore struct {
	ipam.Store
	fail func(op string, kind ipam.Kind, key string) bool
}

var errInjected = errors.New("injected failure")

func (s *failStore) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	if s.fail("update", kind, key) {
		return 0, errInjected
	}
	return s.Store.Update(ctx, kind, key, value, rev)
}

// TestBatchAcrossPoolsOutOfAddressOrder: a planned request takes the
// node's blocks in pool order, here the reverse of address order; the
// handle record still lists its blocks in address order, as it must to
// decode.
func TestBatchAcrossPoolsOutOfAddressOrder(t *testing.T) {
	e := newEnv(t, v4pool("a", "10.1.0.0/28", 29), v4pool("b", "10.0.0.0/28", 29))
	args := ipam.AutoAssignArgs{Num4: 32, Handle: "warm", Node: "node-1", IPv4Pools: []string{"a", "b"}}
	_, err := e.a.AutoAssign(e.ctx, args) // all four blocks, a's first
	require.NoError(t, err)
	_, err = e.a.ReleaseByHandle(e.ctx, "warm")
	require.NoError(t, err)

	args.Num4, args.Handle = 30, "h"
	got, err := e.a.AutoAssign(e.ctx, args)
	require.NoError(t, err)
	require.Len(t, blocksOf(got.IPv4), 4)
	e.requireHolds("h", got.IPv4)
}

// TestAddressArguments: a missing or zoned address is refused by every
// call that takes one, with a message that says which.
func TestAddressArguments(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	calls := map[string]func(netip.Addr) error{
		"assign": func(a netip.Addr) error {
			_, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: a, Handle: "h", Node: "n"})
			return err
		},
		"release": func(a netip.Addr) error {
			_, err := e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: a})
			return err
		},
		"owner": func(a netip.Addr) error {
			_, err := e.a.Owner(e.ctx, a)
			return err
		},
	}
	for op, call := range calls {
		err := call(netip.Addr{})
		require.ErrorIs(t, err, ipam.ErrInvalid, op)
		require.EqualError(t, err, "ipam: "+op+": invalid argument: no address given (the zero netip.Addr)")
		err = call(mustAddr("fe80::1%eth0"))
		require.ErrorIs(t, err, ipam.ErrInvalid, op)
		require.EqualError(t, err, "ipam: "+op+": invalid argument: address fe80::1%eth0 has a zone; give it without one")
	}
	e.requireConsistent()
}

func TestEmptyPoolName(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n", IPv4Pools: []string{"p", ""}})
	require.ErrorIs(t, err, ipam.ErrInvalid)
	require.ErrorContains(t, err, `an empty pool name in ["p" ""]`)
	e.requireConsistent()
}

// TestShortfallLimitsFullPool: in a pool with no room left anywhere, the
// limits are not blamed: the shortfall is ErrNoSpace alone.
func TestShortfallLimitsFullPool(t *testing.T) {
	for _, cfg := range []ipam.Config{
		{StrictAffinity: true, AutoAllocateBlocks: true},
		{AutoAllocateBlocks: true, MaxBlocksPerHost: 2},
		{StrictAffinity: true, AutoAllocateBlocks: true, MaxBlocksPerHost: 2},
	} {
		e := newEnv(t, v4pool("p", "10.0.0.0/28", 29))
		e.config(cfg)
		e.mustAssign4("n1", "all", 16) // n1 holds both blocks, full
		_, err := e.assign4("n1", "more", 1)
		require.ErrorIs(t, err, ipam.ErrNoSpace)
		require.NotErrorIs(t, err, ipam.ErrStrictAffinity, "%+v", cfg)
		require.NotErrorIs(t, err, ipam.ErrBlockLimit, "%+v", cfg)
	}
	// The virtual owner too, holding every block of its pool.
	e := newEnv(t, lbPool("lb", "192.168.0.0/28"))
	e.config(ipam.Config{StrictAffinity: true, AutoAllocateBlocks: true})
	_, err := e.assignLB("all", 16)
	require.NoError(t, err)
	_, err = e.assignLB("more", 1)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.NotErrorIs(t, err, ipam.ErrStrictAffinity)
}
