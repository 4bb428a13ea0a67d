package ipam_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

// Block lifecycle: deletion of empty unaffine blocks, affinity given up
// when a pool stops selecting the node, reclaiming after the grace period.

func TestEmptyBlockWithoutAffinityIsDeleted(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	got := e.mustAssign4("node-1", "h", 2)
	blk := got[0].Block
	// The node leaves while the block is in use: it keeps its addresses
	// without affinity.
	released, err := e.a.ReleaseHostAffinities(e.ctx, "node-1", false)
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{blk}, released)
	require.Equal(t, 1, e.store.Len(ipam.KindBlock))
	require.Zero(t, e.store.Len(ipam.KindAffinity))

	// Releasing the last address deletes the block.
	_, err = e.a.ReleaseByHandle(e.ctx, "h")
	require.NoError(t, err)
	require.Zero(t, e.store.Len(ipam.KindBlock))
	require.Zero(t, e.store.Len(ipam.KindHandle))
}

func TestReleaseHostAffinitiesRequireEmpty(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	e.mustAssign4("node-1", "a", 1)
	require.NoError(t, e.a.SetConfig(e.ctx, ipam.DefaultConfig()))
	claimed, err := e.a.ClaimAffinity(e.ctx, "node-1", mustPrefix("10.0.0.192/26"))
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{mustPrefix("10.0.0.192/26")}, claimed)

	released, err := e.a.ReleaseHostAffinities(e.ctx, "node-1", true)
	require.ErrorIs(t, err, ipam.ErrBlockNotEmpty)
	require.Equal(t, []netip.Prefix{mustPrefix("10.0.0.192/26")}, released, "the empty block goes")
	require.Len(t, e.affine("node-1"), 1, "the block in use stays")
}

func TestAffinityDroppedWhenPoolStopsSelectingNode(t *testing.T) {
	rack := v4pool("rack-0", "10.0.0.0/24", 26)
	rack.NodeSelector = `rack == "0"`
	e := newEnv(t, rack, v4pool("z-fallback", "10.9.0.0/24", 26))
	args := ipam.AutoAssignArgs{Num4: 1, Handle: "a", Node: "node-1", NodeLabels: labels("rack", "0")}
	res, err := e.a.AutoAssign(e.ctx, args)
	require.NoError(t, err)
	rackBlock := res.IPv4[0].Block
	_, err = e.a.ReleaseByHandle(e.ctx, "a")
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{rackBlock}, e.affine("node-1"), "empty affine blocks stay")

	// The node moves to another rack: its empty rack-0 block is given up as
	// it next assigns.
	args.Handle, args.NodeLabels = "b", labels("rack", "1")
	res, err = e.a.AutoAssign(e.ctx, args)
	require.NoError(t, err)
	require.True(t, mustPrefix("10.9.0.0/24").Contains(res.IPv4[0].Addr))
	require.Equal(t, []netip.Prefix{res.IPv4[0].Block}, e.affine("node-1"))
}

func TestReclaimAfterGracePeriod(t *testing.T) {
	e := newEnv(t, v4pool("one", "10.0.0.0/28", 28))
	e.config(ipam.Config{StrictAffinity: true, AutoAllocateBlocks: true})
	e.mustAssign4("node-1", "a", 1)
	_, err := e.a.ReleaseByHandle(e.ctx, "a")
	require.NoError(t, err)

	// Within the grace period the empty block stays node-1's.
	_, err = e.assign4("node-2", "b", 1)
	require.ErrorIs(t, err, ipam.ErrNoSpace)

	e.clock.Advance(time.Minute)
	got := e.mustAssign4("node-2", "b", 1)
	require.Equal(t, mustPrefix("10.0.0.0/28"), got[0].Block)
	require.Equal(t, []netip.Prefix{got[0].Block}, e.affine("node-2"))
	require.Empty(t, e.affine("node-1"))
	recs, err := e.store.List(e.ctx, ipam.KindAffinity, ipam.KeyRange{})
	require.NoError(t, err)
	require.Len(t, recs, 1, "node-1's index record is gone")

	// A block in use is never taken over, however old.
	e.clock.Advance(time.Hour)
	_, err = e.assign4("node-3", "c", 1)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
}

func TestReclaimDisabled(t *testing.T) {
	e := newEnv(t, v4pool("one", "10.0.0.0/28", 28))
	a, err := ipam.New(e.store, ipam.Options{Now: e.clock.Now, ReclaimAge: -1})
	require.NoError(t, err)
	e.config(ipam.Config{StrictAffinity: true, AutoAllocateBlocks: true})
	e.mustAssign4("node-1", "a", 1)
	_, err = e.a.ReleaseByHandle(e.ctx, "a")
	require.NoError(t, err)
	e.clock.Advance(24 * time.Hour)
	_, err = a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "b", Node: "node-2"})
	require.ErrorIs(t, err, ipam.ErrNoSpace)
}

func TestClaimAndReleaseAffinity(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	claimed, err := e.a.ClaimAffinity(e.ctx, "node-1", mustPrefix("10.0.0.0/25"))
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{mustPrefix("10.0.0.0/26"), mustPrefix("10.0.0.64/26")}, claimed)

	// Claiming again is fine; another node is refused block by block.
	_, err = e.a.ClaimAffinity(e.ctx, "node-1", mustPrefix("10.0.0.0/26"))
	require.NoError(t, err)
	claimed, err = e.a.ClaimAffinity(e.ctx, "node-2", mustPrefix("10.0.0.0/24"))
	require.ErrorIs(t, err, ipam.ErrAffinityConflict)
	require.Equal(t, []netip.Prefix{mustPrefix("10.0.0.128/26"), mustPrefix("10.0.0.192/26")}, claimed)
	var ae *ipam.AddrError
	require.ErrorAs(t, err, &ae, "one per block (TestClaimRefusalSaysWhy)")
	require.Equal(t, mustAddr("10.0.0.0"), ae.Addr)

	// With AutoAllocateBlocks off, nodes live on the blocks they were given.
	e.config(ipam.Config{StrictAffinity: true})
	got := e.mustAssign4("node-1", "h", 100)
	require.Len(t, blocksOf(got), 2)
	_, err = e.assign4("node-1", "more", 50)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.Contains(t, err.Error(), "autoAllocateBlocks is off and the blocks of the node are full")
	_, err = e.assign4("node-3", "new", 1)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.Contains(t, err.Error(), `autoAllocateBlocks is off and the node holds no block of pools ["p"]`)

	// Releasing a block in use with requireEmpty is refused.
	err = e.a.ReleaseAffinity(e.ctx, "node-1", mustPrefix("10.0.0.0/26"), true)
	require.ErrorIs(t, err, ipam.ErrBlockNotEmpty)
	require.NoError(t, e.a.ReleaseAffinity(e.ctx, "node-2", mustPrefix("10.0.0.128/26"), true))
	require.Len(t, e.affine("node-2"), 1)

	for _, tt := range []struct {
		cidr string
		err  error
		msg  string
	}{
		{"10.0.0.1/26", ipam.ErrInvalid, "10.0.0.1/26 is not a masked prefix (10.0.0.0/26 is)"},
		{"", ipam.ErrInvalid, "no prefix given (the zero netip.Prefix)"},
		{"10.0.0.0 with 33 bits", ipam.ErrInvalid, "invalid prefix of 10.0.0.0: its length does not fit the address"},
		{"10.0.0.0/27", ipam.ErrInvalid, `10.0.0.0/27 is smaller than a block of pool "p" (/26)`},
		{"10.1.0.0/26", ipam.ErrNotInPool, "claim affinity 10.1.0.0/26: address is not in a usable pool: no pool holds it"},
		{"10.0.0.0/16", ipam.ErrNotInPool, `it is larger than pool "p" (10.0.0.0/24)`},
		{"fd00::/122", ipam.ErrNotInPool, "no pool holds it"},
	} {
		var cidr netip.Prefix
		switch tt.cidr {
		case "":
		case "10.0.0.0 with 33 bits":
			cidr = netip.PrefixFrom(netip.MustParseAddr("10.0.0.0"), 33)
		default:
			cidr = netip.MustParsePrefix(tt.cidr)
		}
		_, err := e.a.ClaimAffinity(e.ctx, "node-3", cidr)
		require.ErrorIs(t, err, tt.err, tt.cidr)
		require.ErrorContains(t, err, tt.msg)
	}
}

// TestReleaseAffinityOfLargerPrefix: a prefix larger than a pool releases
// the node's blocks inside it, in every pool it holds, and nothing outside.
func TestReleaseAffinityOfLargerPrefix(t *testing.T) {
	for _, cidr := range []string{"10.0.0.0/16", "10.0.0.0/8", "0.0.0.0/0"} {
		t.Run(cidr, func(t *testing.T) {
			e := newEnv(t, v4pool("a", "10.0.0.0/24", 26), v4pool("b", "10.0.1.0/24", 26), v4pool("c", "192.168.0.0/24", 26))
			for _, p := range []string{"a", "b", "c"} {
				_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h-" + p, Node: "node-1", IPv4Pools: []string{p}})
				require.NoError(t, err)
			}
			e.mustAssign4("node-2", "other", 1)
			// Pool b is deleted, and its empty block with it.
			_, err := e.a.ReleaseByHandle(e.ctx, "h-b")
			require.NoError(t, err)
			require.NoError(t, e.a.DeletePool(e.ctx, "b"))
			_, err = e.a.ClaimAffinity(e.ctx, "node-1", mustPrefix("10.0.0.128/26"))
			require.NoError(t, err)
			before := e.affine("node-1")
			require.Len(t, before, 3)

			require.NoError(t, e.a.ReleaseAffinity(e.ctx, "node-1", mustPrefix(cidr), false))
			var left []netip.Prefix
			for _, blk := range before {
				if !mustPrefix(cidr).Contains(blk.Addr()) {
					left = append(left, blk)
				}
			}
			require.Equal(t, orEmpty(left), orEmpty(e.affine("node-1")))
			require.Len(t, e.affine("node-2"), 1, "another node's blocks stay")
			e.requireConsistent()
		})
	}
}

func TestAssignIPv6LargePool(t *testing.T) {
	// A /48 with /122 blocks: 2^74 blocks. Claiming is as cheap as in a /24.
	e := newEnv(t, pool.Pool{Name: "v6", CIDR: mustPrefix("fd00:10::/48")})
	res, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num6: 3, Handle: "h", Node: "node-1"})
	require.NoError(t, err)
	require.Len(t, res.IPv6, 3)
	require.Equal(t, 122, res.IPv6[0].Block.Bits())
	require.Equal(t, 122, res.IPv6[0].Prefix().Bits())
	u := e.utilization()
	require.Equal(t, "1208925819614629174706176", u[0].Capacity.String(), "2^80 addresses")
}

// A claim killed between its index entry and its block leaves a stale
// entry. It must not count toward MaxBlocksPerHost, and the next
// assignment for the node removes it.
func TestStaleIndexEntryNeitherCountsNorStays(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.10.0.0/26", 29))
	e.config(ipam.Config{AutoAllocateBlocks: true, StrictAffinity: true, MaxBlocksPerHost: 2})
	_, err := e.store.Create(e.ctx, ipam.KindAffinity, "host:node-a/v4:0a0a0010/29", nil)
	require.NoError(t, err)

	got := e.mustAssign4("node-a", "h", 9) // more than one block holds
	require.Len(t, blocksOf(got), 2)
	recs, err := e.store.List(e.ctx, ipam.KindAffinity, ipam.KeyRange{})
	require.NoError(t, err)
	require.Len(t, recs, 2, "the stale entry is gone, the two real ones stay")
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.True(t, r.Clean(), "%v", r.Problems)
}

// TestUpdatePoolPartial: a pool given with only the fields to change is
// refused with a hint that UpdatePool replaces the whole pool.
func TestUpdatePoolPartial(t *testing.T) {
	e := newEnv(t, v4pool("small", "10.0.0.0/25", 26))
	err := e.a.UpdatePool(e.ctx, pool.Pool{Name: "small", Disabled: true})
	require.ErrorIs(t, err, pool.ErrImmutable)
	require.ErrorContains(t, err, `start from Pool(ctx, "small")`)
	p, err := e.a.Pool(e.ctx, "small")
	require.NoError(t, err)
	require.False(t, p.Disabled, "nothing changed")
}

// TestReleaseIPsReportsDeletedBlocks: a block without affinity (its node
// removed while it held addresses) is deleted with its last address, and
// ReleaseIPs says so; an affine block, or one in which an address cools,
// stays and is not listed.
func TestReleaseIPsReportsDeletedBlocks(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	gone := e.mustAssign4("node-gone", "gone", 2)
	kept := e.mustAssign4("node-1", "kept", 1)
	_, err := e.a.ReleaseHostAffinities(e.ctx, "node-gone", false)
	require.NoError(t, err)

	res, err := e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: gone[0].Addr}, ipam.Release{Addr: kept[0].Addr})
	require.NoError(t, err)
	require.Len(t, res.Released, 2)
	require.Empty(t, res.DeletedBlocks, "one address is left in the block without affinity, and node-1 keeps its block")

	res, err = e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: gone[1].Addr})
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{gone[1].Block}, res.DeletedBlocks)
	_, err = e.a.Block(e.ctx, gone[1].Block)
	require.ErrorIs(t, err, ipam.ErrNotFound)
	require.Equal(t, kept[0].Block, e.affine("node-1")[0])

	// With a cooldown the emptied block is kept, so it is not listed.
	e.cooldown(time.Hour)
	cool := e.mustAssign4("node-2", "cool", 1)
	_, err = e.a.ReleaseHostAffinities(e.ctx, "node-2", false)
	require.NoError(t, err)
	res, err = e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: cool[0].Addr})
	require.NoError(t, err)
	require.Empty(t, res.DeletedBlocks)
	_, err = e.a.Block(e.ctx, cool[0].Block)
	require.NoError(t, err)
	e.requireConsistent()
}
