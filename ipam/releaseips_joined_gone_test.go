package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// lostBlockDeleteStore is a memstore whose next delete of a block, once
// armed, is made and then reported failed: a lost reply.
type lostBlockDeleteStore struct {
	*memstore.Store
	armed bool
	lost  int
}

func (s *lostBlockDeleteStore) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	err := s.Store.Delete(ctx, kind, key, rev)
	if err == nil && s.armed && kind == ipam.KindBlock {
		s.armed = false
		s.lost++
		return errors.New("lost reply")
	}
	return err
}

// TestJoinedWithBlockGone: h's addresses in three blocks without
// affinity (its node's affinity released); the addresses of the first
// block were released before, so that block is gone. Releasing all of h's
// addresses by address, each naming h, is then a release of one handle in
// two blocks, which the doc promises in one commit with the lowering of
// the counts: a release repeated after a lost reply finds all of it done
// or none. But the missing block sends the call block by block: a lost
// reply of a block's delete leaves that block's count too high, which
// releasing again does not lower (Check: handle excess).
func TestJoinedWithBlockGone(t *testing.T) {
	ctx := t.Context()
	ms, setup, rels, all := joinedReleaseSetup(t)
	_, err := setup.ReleaseHostAffinities(ctx, "n1", false)
	require.NoError(t, err)
	var first []ipam.Release
	for i, x := range all {
		if x.Block == all[0].Block {
			first = append(first, rels[i])
		}
	}
	got, err := setup.ReleaseIPs(ctx, first...)
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{all[0].Block}, got.DeletedBlocks)
	checkedClean(t, ms)

	s := &lostBlockDeleteStore{Store: ms, armed: true}
	a, err := ipam.New(s, ipam.Options{})
	require.NoError(t, err)
	_, err = a.ReleaseIPs(ctx, rels...)
	if err != nil {
		require.Equal(t, 1, s.lost, "%v", err)
		again, err := a.ReleaseIPs(ctx, rels...)
		require.NoError(t, err)
		require.Len(t, append(again.Released, again.NotAllocated...), len(rels))
	}
	checker := checkedClean(t, ms)
	_, err = checker.IPsByHandle(ctx, "h")
	require.ErrorIs(t, err, ipam.ErrHandleNotFound, fmt.Sprint("lost ", s.lost))
}
