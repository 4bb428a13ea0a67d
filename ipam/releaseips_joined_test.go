package ipam_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
)

// TestReleaseIPsInOneBlockJoined: on a store with Committer, ReleaseIPs of
// addresses in one block writes the block and the lowered handle count in
// one commit. A lost reply of that commit then leaves both done (or
// neither), so releasing again settles the count too: Check is clean and
// the handle free for a new request. Before, the count was lowered in a
// write of its own after the block's, which the lost reply skipped.
func TestReleaseIPsInOneBlockJoined(t *testing.T) {
	ctx := t.Context()
	ms := memstore.New()
	s := &lostCommitStore{Store: ms}
	counting := storetest.NewCountingStore(s)
	a, err := ipam.New(counting, ipam.Options{})
	require.NoError(t, err)
	require.NoError(t, a.CreatePool(ctx, v4pool("p", "10.0.0.0/24", 28)))
	res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 2, Handle: "h", Node: "n1"})
	require.NoError(t, err)
	var rels []ipam.Release
	for _, x := range res.IPv4 {
		rels = append(rels, ipam.Release{Addr: x.Addr, Handle: "h", Seq: x.Seq})
	}

	// One commit for block and count, no other handle write.
	before, _ := storetest.CountsOf(counting)
	got, err := a.ReleaseIPs(ctx, rels[0])
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{rels[0].Addr}, got.Released)
	after, _ := storetest.CountsOf(counting)
	d := after.Sub(before)
	require.EqualValues(t, 1, d.Commits(), "%v", d)
	require.EqualValues(t, 2, d.Total(), "a read of the record and the commit: %v", d)
	checkedClean(t, ms)

	// The last address: the commit deletes the record; its reply is lost.
	s.n = 2
	_, err = a.ReleaseIPs(ctx, rels[1])
	require.Error(t, err)
	require.Equal(t, 1, s.lost)
	again, err := a.ReleaseIPs(ctx, rels[1])
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{rels[1].Addr}, again.NotAllocated)
	checkedClean(t, ms)
	_, err = a.IPsByHandle(ctx, "h")
	require.ErrorIs(t, err, ipam.ErrHandleNotFound)
	_, err = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", NewHandle: true, Node: "n1"})
	require.NoError(t, err)
}

// TestReleaseIPsAcrossBlocksJoined: ReleaseIPs of one handle's addresses
// in a few blocks (a dual-stack pod's, and a third block) writes the
// blocks and the lowered counts in one commit. When another allocator
// changes the handle's record (an assignment under it in a new block) or
// one of the blocks (another address assigned there) just before the
// commit, the store refuses it and the release is tried again from fresh
// reads: every address given is released, the other request's stays, and
// Check is clean. A lost reply of the commit leaves all of it done, so
// releasing again leaves the store clean too.
func TestReleaseIPsAcrossBlocksJoined(t *testing.T) {
	for _, target := range []string{"none", "handle", "block", "lost"} {
		t.Run(target, func(t *testing.T) {
			ctx := t.Context()
			// h: five IPv4 addresses in two /30 blocks and one IPv6.
			ms, _, rels, all := joinedReleaseSetup(t)
			blocks := map[netip.Prefix]bool{}
			for _, x := range all {
				blocks[x.Block] = true
			}
			require.Len(t, blocks, 3)
			other, err := ipam.New(ms, ipam.Options{})
			require.NoError(t, err)

			lost := &lostCommitStore{Store: ms}
			commits := 0
			hs := &commitHookStore{Store: ms, hook: func(writes []ipam.Write) {
				commits++
				if commits != 1 {
					return
				}
				require.Len(t, writes, 4, "the record and three blocks: %v", writes)
				switch target {
				case "handle":
					_, err := other.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n2"})
					require.NoError(t, err)
				case "block":
					_, err := other.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "x", Node: "n1"})
					require.NoError(t, err)
				}
			}}
			var st ipam.Store = hs
			if target == "lost" {
				lost.n = 4
				st = lost
			}
			a, err := ipam.New(st, ipam.Options{})
			require.NoError(t, err)
			got, err := a.ReleaseIPs(ctx, rels...)
			if target == "lost" {
				require.Error(t, err)
				require.Equal(t, 1, lost.lost)
				got, err = a.ReleaseIPs(ctx, rels...)
				require.NoError(t, err)
				require.Len(t, got.NotAllocated, len(rels))
			} else {
				require.NoError(t, err)
				require.Len(t, got.Released, len(rels))
			}
			if target == "none" {
				require.Equal(t, 1, commits, "the blocks and the record in one commit")
			}
			checker := checkedClean(t, ms)
			held, err := checker.IPsByHandle(ctx, "h")
			if target == "handle" {
				require.NoError(t, err)
				require.Len(t, held, 1, "the other request's address stays")
			} else {
				require.ErrorIs(t, err, ipam.ErrHandleNotFound, "still held: %v", held)
			}
		})
	}
}
