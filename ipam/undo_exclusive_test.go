package ipam_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestNewHandleUndoAfterOthersAssign: on a store without Committer,
// an AssignIP with NewHandle raises the handle's count (creating the
// record); before its block write, another request assigns under the same
// handle (without NewHandle) in the same block, so the first block write
// is refused: it never happens, and its raise must come down, whoever
// wrote the record since. The request may fail (the handle is held now)
// or assign, but the counts must match the blocks: Check clean.
func TestNewHandleUndoAfterOthersAssign(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	o := e.allocator()
	ran := false
	s := &afterHookStore{Store: plainStore{e.store}, after: func(op string, kind ipam.Kind, key string) {
		if ran || kind != ipam.KindHandle {
			return
		}
		ran = true
		_, err := o.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.9"), Handle: "pod", Node: "n"})
		require.NoError(t, err)
	}}
	add, err := ipam.New(s, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)
	_, err = add.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.5"), Handle: "pod", Node: "n", NewHandle: true})
	require.True(t, ran)
	t.Log(err)
	e.requireConsistent()
}
