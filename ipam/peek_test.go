package ipam_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestPeekFollowsRevisions: the allocator's summaries of listed block
// records are those of the records as listed, revision by revision, never
// of an earlier version, whoever wrote the record.
func TestPeekFollowsRevisions(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	other := e.allocator()
	list := func() ipam.Record {
		recs, err := e.store.List(e.ctx, ipam.KindBlock, ipam.KeyRange{})
		require.NoError(t, err)
		require.Len(t, recs, 1)
		return recs[0]
	}
	e.mustAssign4("n1", "first", 1)
	for used := 1; used <= 4; used++ {
		r := list()
		sum, err := ipam.PeekRecord(e.a, r)
		require.NoError(t, err)
		require.Equal(t, used, sum.Used, "at revision %d", r.Revision)
		again, err := ipam.PeekRecord(e.a, r)
		require.NoError(t, err)
		require.Equal(t, sum, again, "the same record again")
		// Another allocator assigns in the block: a new revision, which
		// this allocator has not seen written.
		_, err = other.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "more", Node: "n1"})
		require.NoError(t, err)
	}
	stale := list()
	_, err := other.ReleaseByHandle(e.ctx, "more")
	require.NoError(t, err)
	sum, err := ipam.PeekRecord(e.a, list())
	require.NoError(t, err)
	require.Equal(t, 1, sum.Used, "after the release")
	sum, err = ipam.PeekRecord(e.a, stale)
	require.NoError(t, err)
	require.Equal(t, 5, sum.Used, "a record listed earlier is summarized as it was")
}
