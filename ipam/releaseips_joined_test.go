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
