package ipam_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// failIndexDelete is a memstore whose deletes of index records fail,
// without effect, while fail is set.
type failIndexDelete struct {
	*memstore.Store
	fail atomic.Bool
}

var errIndexDelete = errors.New("index delete failed")

func (s *failIndexDelete) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	if kind == ipam.KindAffinity && s.fail.Load() {
		return errIndexDelete
	}
	return s.Store.Delete(ctx, kind, key, rev)
}

// TestClaimOverCorruptBlockKeepsIndexFailure: a claim walk comes to
// a corrupt block record, having made its index entry first (nothing
// cached: the first probe writes before it looks), and the delete of that
// entry fails. The index entry stays: the node now "holds" the corrupt
// block, and every later request of the node fails on it with ErrCorrupt.
// The claim must not pass over the block as if nothing were left behind:
// the request fails and says why, as it did before claims passed over
// corrupt blocks.
func TestClaimOverCorruptBlockKeepsIndexFailure(t *testing.T) {
	e, first := corruptWalkStart(t)

	s := &failIndexDelete{Store: e.store}
	s.fail.Store(true)
	a, err := ipam.New(s, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)
	_, err = a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h2", Node: "node-1"})
	s.fail.Store(false)

	idx, lerr := e.store.List(e.ctx, ipam.KindAffinity, ipam.KeyRange{})
	require.NoError(t, lerr)
	left := false
	for _, r := range idx {
		if strings.HasSuffix(r.Key, blockKeyOf(first)) {
			left = true
		}
	}
	require.True(t, left, "the index entry of the corrupt block was deleted after all: %v", idx)
	require.ErrorIs(t, err, errIndexDelete, "the request passed over the corrupt block and left its index entry behind without a word")
}

// TestEnsureBlockNamesCorruptBlocks: EnsureBlock claims as AutoAssign
// does, and its claim passes over corrupt block records too. When it falls
// short, its reasons must name them, as AutoAssign's do (the documented
// rule: "a request that falls short names the blocks passed over"): a
// pool three quarters corrupt otherwise reads as merely full, where
// before claims passed over corrupt blocks the request failed with
// ErrCorrupt naming one.
func TestEnsureBlockNamesCorruptBlocks(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	bad := []string{"10.0.0.0/26", "10.0.0.64/26", "10.0.0.128/26"}
	for _, blk := range bad {
		putRaw(t, e.store, ipam.KindBlock, blockKeyOf(mustPrefix(blk)), []byte("junk"))
	}
	v4, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true})
	require.NoError(t, err)
	require.Equal(t, mustPrefix("10.0.0.192/26"), v4)

	_, _, err = e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-2", IPv4: true})
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.ErrorContains(t, err, "corrupt")
	for _, blk := range bad {
		require.ErrorContains(t, err, blk)
	}
}

// TestShortfallNamesCorruptBlocksOfItsFamily: a dual-stack request
// whose IPv4 claim passes over a corrupt IPv4 block, and gets its address
// from the next block, falls short in IPv6 (the IPv6 pool is full). The
// reasons, "IPv6: ...", name the IPv4 block as one passed over: a
// family's reasons must name only blocks of that family.
func TestShortfallNamesCorruptBlocksOfItsFamily(t *testing.T) {
	e := newEnv(t, v4pool("p4", "10.0.0.0/24", 26), v6pool("p6", "fd00::/122", 122))
	first := e.mustAssign4("node-1", "h", 1)[0].Block
	_, err := e.a.ReleaseHostAffinities(e.ctx, "node-1", false)
	require.NoError(t, err)
	_, err = e.a.ReleaseByHandle(e.ctx, "h")
	require.NoError(t, err)
	putRaw(t, e.store, ipam.KindBlock, blockKeyOf(first), []byte("junk"))
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num6: 64, Handle: "full", Node: "node-x"})
	require.NoError(t, err)

	_, err = e.allocator().AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h2", Node: "node-1"})
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.ErrorContains(t, err, "IPv6: no unclaimed block left")
	require.NotContains(t, err.Error(), first.String(), "the IPv6 shortfall names an IPv4 block")
}
