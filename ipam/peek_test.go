package ipam_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
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

// TestPeekConcurrent: allocators on one store keep changing a pool's
// blocks while several goroutines list them and peek through one
// allocator's cache, racing on the same keys at different revisions:
// every summary is block.Peek of the value listed with it.
func TestPeekConcurrent(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/23", 28))
	const writers, readers, rounds = 3, 4, 60
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := e.allocator()
			for i := range rounds {
				handle := fmt.Sprintf("w%d-%d", w, i)
				_, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1 + i%3, Handle: handle, Node: fmt.Sprintf("n%d", i%4)})
				require.NoError(t, err)
				if i%2 == 0 {
					_, err = a.ReleaseByHandle(e.ctx, handle)
					require.NoError(t, err)
				}
			}
		}()
	}
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				recs, err := e.store.List(e.ctx, ipam.KindBlock, ipam.KeyRange{})
				require.NoError(t, err)
				for _, r := range recs {
					got, gerr := ipam.PeekRecord(e.a, r)
					want, werr := block.Peek(r.Value)
					require.Equal(t, werr, gerr, r.Key)
					require.Equal(t, want, got, "%s at revision %d", r.Key, r.Revision)
				}
			}
		}()
	}
	wg.Wait()
}
