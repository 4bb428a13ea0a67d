package ipam_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestRepairDeletesBadKeyHandleNamingCorruptBlock: Check reports a
// handle record whose key is no handle ID carve accepts as corrupt and
// repairable ("No block can give it an address: Repair deletes it"). When
// that record counts addresses in a block whose record is itself corrupt,
// Repair rebuilds it instead of deleting it, reads the corrupt block, and
// fails: the record stays, against the report that called it repairable.
func TestRepairDeletesBadKeyHandleNamingCorruptBlock(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	e.mustAssign4("n", "h", 1)
	hrec, err := e.store.Get(e.ctx, ipam.KindHandle, "h")
	require.NoError(t, err)
	// The same record under a key carve never writes, and the block it
	// counts made unreadable.
	_, err = e.store.Create(e.ctx, ipam.KindHandle, " h", hrec.Value)
	require.NoError(t, err)
	blocks, err := e.store.List(e.ctx, ipam.KindBlock, ipam.KeyRange{})
	require.NoError(t, err)
	require.Len(t, blocks, 1)
	_, err = e.store.Update(e.ctx, ipam.KindBlock, blocks[0].Key, []byte("garbage"), blocks[0].Revision)
	require.NoError(t, err)

	rep, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	found := false
	for _, p := range rep.Problems {
		if p.Handle == " h" {
			found = true
			require.Equal(t, ipam.ProblemCorrupt, p.Kind)
			require.True(t, p.Repairable, "%v", p)
		}
	}
	require.True(t, found, "Check reports the record: %v", rep.Problems)

	actions, _, err := e.a.Repair(e.ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	for _, act := range actions {
		if act.Problem.Handle == " h" && !act.Done {
			t.Errorf("Repair of %v: not done: %s", act.Problem, act.Note)
		}
	}
	_, err = e.store.Get(e.ctx, ipam.KindHandle, " h")
	require.ErrorIs(t, err, ipam.ErrNotFound, "the record under a key that is no handle ID is deleted")
}
