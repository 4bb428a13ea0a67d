package ipam_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// oneBlockConflicts loses every update of one block record, as if other
// writers always got there first. It offers neither BlockKeeper nor
// Committer, so every block write goes through Update.
type oneBlockConflicts struct {
	ipam.Store
	key string
}

func (s oneBlockConflicts) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	if kind == ipam.KindBlock && key == s.key {
		return 0, ipam.ErrConflict
	}
	return s.Store.Update(ctx, kind, key, value, rev)
}

// TestReleaseIPsTooManyConflictsKeepsEarlierReleases pins what the
// ErrTooManyConflicts doc says of an operation of several writes: a
// ReleaseIPs whose second block runs out of attempts has still released
// the address of its first block, and lists it in Released ("what is
// certain by then"), so the error does not mean that nothing happened.
func TestReleaseIPsTooManyConflictsKeepsEarlierReleases(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	first, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: netip.MustParseAddr("10.0.0.1"), Handle: "h", Node: "node-1"})
	require.NoError(t, err)
	second, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: netip.MustParseAddr("10.0.0.65"), Handle: "h", Node: "node-1"})
	require.NoError(t, err)
	require.NotEqual(t, first.Block, second.Block)

	a, err := ipam.New(oneBlockConflicts{Store: e.store, key: "v4:0a000040/26"}, ipam.Options{MaxRetries: 3})
	require.NoError(t, err)
	res, err := a.ReleaseIPs(e.ctx, ipam.Release{Addr: first.Addr}, ipam.Release{Addr: second.Addr})
	require.ErrorIs(t, err, ipam.ErrTooManyConflicts)
	require.Equal(t, []netip.Addr{first.Addr}, res.Released)

	_, err = e.a.Owner(e.ctx, first.Addr)
	require.ErrorIs(t, err, ipam.ErrNotAllocated, "the first block's release stands")
	_, err = e.a.Owner(e.ctx, second.Addr)
	require.NoError(t, err, "the second block was never written")
}
