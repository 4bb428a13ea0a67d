package ipam_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestCheckReportsHandleRecordWithoutBlocks: a handle record that counts
// no block at all (version byte, zero entries) is what carve never
// writes: a handle's record is deleted when its last count goes. Left
// in the store (by another tool, or a crash of one), it makes every
// request with NewHandle under that handle fail with ErrHandleExists for
// good. Check must report it (a corrupt record, repairable), Repair must
// delete it, and a Collector must not keep it forever either.
func TestCheckReportsHandleRecordWithoutBlocks(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	e.mustAssign4("node-1", "other", 1) // a store in use
	const handle = "default/web-0"
	empty := ipam.EncodeHandle(nil)
	_, err := e.store.Create(e.ctx, ipam.KindHandle, handle, empty)
	require.NoError(t, err)

	// A request that must hold the handle alone is refused, though the
	// handle holds no address.
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: handle, Node: "node-1", NewHandle: true})
	require.Error(t, err)

	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.False(t, r.Clean(), "Check calls a store clean in which NewHandle under %q fails for good", handle)
	var found bool
	for _, p := range r.Problems {
		if p.Handle == handle {
			found = true
			require.True(t, p.Repairable, "%v", p)
		}
	}
	require.True(t, found, "no problem names handle %q: %v", handle, r.Problems)

	_, after, err := e.a.Repair(e.ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	require.True(t, after.Clean(), "%v", after.Problems)
	_, err = e.store.Get(e.ctx, ipam.KindHandle, handle)
	require.ErrorIs(t, err, ipam.ErrNotFound)
	res, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: handle, Node: "node-1", NewHandle: true})
	require.NoError(t, err)
	require.Len(t, res.IPv4, 1)
}
