package ipam_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
)

// storedBlocks reads every block record of the store, by key.
func storedBlocks(t *testing.T, e *env) map[string]*block.Block {
	t.Helper()
	recs, err := e.store.List(e.ctx, ipam.KindBlock, ipam.KeyRange{})
	require.NoError(t, err)
	out := map[string]*block.Block{}
	for _, r := range recs {
		b := new(block.Block)
		require.NoError(t, b.UnmarshalBinary(r.Value))
		out[r.Key] = b
	}
	return out
}

// storeKey spells a block's store key, as the store shows it.
func storeKey(t *testing.T, e *env, blk netip.Prefix) string {
	t.Helper()
	for key, b := range storedBlocks(t, e) {
		if b.Prefix() == blk {
			return key
		}
	}
	t.Fatalf("no block %s", blk)
	return ""
}

// setHandle overwrites a handle record's value, as a crash or another tool
// could leave it.
func setHandle(t *testing.T, e *env, handle string, value []byte) {
	t.Helper()
	rec, err := e.store.Get(e.ctx, ipam.KindHandle, handle)
	require.NoError(t, err)
	_, err = e.store.Update(e.ctx, ipam.KindHandle, handle, value, rec.Revision)
	require.NoError(t, err)
}

func kinds(r *ipam.Report) []ipam.ProblemKind {
	var out []ipam.ProblemKind
	for _, p := range r.Problems {
		out = append(out, p.Kind)
	}
	return out
}

func TestCheckCleanStore(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	e.mustAssign4("node-1", "a", 3)
	e.mustAssign4("node-2", "b", 2)
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.True(t, r.Clean(), "%v", r.Problems)
	require.Equal(t, 1, r.Pools)
	require.Equal(t, 2, r.Blocks)
	require.Equal(t, 5, r.Allocations)
	require.Equal(t, 2, r.Handles)
	require.Equal(t, 2, r.Affinities)
}

// Each case breaks the store the way a crash (or another tool) could and
// checks that Check names it and Repair fixes it.
func TestCheckAndRepair(t *testing.T) {
	tests := []struct {
		name   string
		break_ func(t *testing.T, e *env, held ipam.Assigned)
		want   ipam.ProblemKind
	}{
		{"handle raised, block never written", func(t *testing.T, e *env, held ipam.Assigned) {
			// A crash between the two writes of an assignment.
			_, err := e.store.Create(e.ctx, ipam.KindHandle, "ghost", handleBytes(t, held.Block, 1))
			require.NoError(t, err)
		}, ipam.ProblemHandleExcess},
		{"handle record lost", func(t *testing.T, e *env, held ipam.Assigned) {
			rec, err := e.store.Get(e.ctx, ipam.KindHandle, "a")
			require.NoError(t, err)
			require.NoError(t, e.store.Delete(e.ctx, ipam.KindHandle, "a", rec.Revision))
		}, ipam.ProblemHandleMissing},
		{"handle record corrupt", func(t *testing.T, e *env, held ipam.Assigned) {
			setHandle(t, e, "a", []byte{9, 9})
		}, ipam.ProblemCorrupt},
		{"index entry without block", func(t *testing.T, e *env, held ipam.Assigned) {
			// A crash after the index entry of a claim, before its block.
			_, err := e.store.Create(e.ctx, ipam.KindAffinity, "host:node-9/v4:0a0000c0/26", nil)
			require.NoError(t, err)
		}, ipam.ProblemAffinityStale},
		{"affine block missing from the index", func(t *testing.T, e *env, held ipam.Assigned) {
			key := "host:node-1/" + storeKey(t, e, held.Block)
			rec, err := e.store.Get(e.ctx, ipam.KindAffinity, key)
			require.NoError(t, err)
			require.NoError(t, e.store.Delete(e.ctx, ipam.KindAffinity, key, rec.Revision))
		}, ipam.ProblemAffinityUnindexed},
		{"empty block without affinity", func(t *testing.T, e *env, held ipam.Assigned) {
			e.leftoverBlock("10.0.0.128/26", "v4:0a000080/26")
		}, ipam.ProblemBlockEmptyUnaffine},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
			held := e.mustAssign4("node-1", "a", 2)[0]
			tt.break_(t, e, held)

			r, err := e.a.Check(e.ctx)
			require.NoError(t, err)
			require.Contains(t, kinds(r), tt.want)
			require.True(t, r.Repairable(), "%v", r.Problems)

			actions, after, err := e.a.Repair(e.ctx, ipam.RepairOptions{})
			require.NoError(t, err)
			require.NotEmpty(t, actions)
			for _, act := range actions {
				require.True(t, act.Done, "%v: %s", act.Problem, act.Note)
			}
			require.True(t, after.Clean(), "%v", after.Problems)

			// The store works as before: the held addresses are intact and
			// releasable by handle.
			got, err := e.a.IPsByHandle(e.ctx, "a")
			require.NoError(t, err)
			require.Len(t, got, 2)
			e.mustAssign4("node-1", "more", 1)
			_, err = e.a.ReleaseByHandle(e.ctx, "a")
			require.NoError(t, err)
		})
	}
}

func handleBytes(t *testing.T, blk netip.Prefix, n int) []byte {
	t.Helper()
	// Written through a real allocator on a scratch store, so the bytes
	// are exactly what carve writes.
	e := newEnv(t, v4pool("scratch", blk.String(), blk.Bits()))
	_, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: blk.Addr(), Handle: "h", Node: "n"})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	rec, err := e.store.Get(e.ctx, ipam.KindHandle, "h")
	require.NoError(t, err)
	return rec.Value
}

func TestCheckUnrepairable(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	held := e.mustAssign4("node-1", "a", 1)[0]

	// A block of another size overlapping node-1's, holding an address.
	b, err := block.New(netip.PrefixFrom(held.Block.Addr(), 28))
	require.NoError(t, err)
	_, err = b.Assign(held.Block.Addr().Next(), block.Owner{Handle: "x"})
	require.NoError(t, err)
	data, _ := b.MarshalBinary()
	_, err = e.store.Create(e.ctx, ipam.KindBlock, storeKey(t, e, held.Block)[:len("v4:0a000000")]+"/28", data)
	require.NoError(t, err)
	// And a block record that does not decode.
	garbage := "v4:0a000040/26"
	if held.Block == mustPrefix("10.0.0.64/26") {
		garbage = "v4:0a000080/26"
	}
	_, err = e.store.Create(e.ctx, ipam.KindBlock, garbage, []byte("garbage"))
	require.NoError(t, err)

	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Contains(t, kinds(r), ipam.ProblemBlockOverlap)
	require.Contains(t, kinds(r), ipam.ProblemCorrupt)
	require.Contains(t, kinds(r), ipam.ProblemBlockOutsidePools, "a /28 is not how the pool carves")
	require.False(t, r.Repairable())

	js, err := json.Marshal(r)
	require.NoError(t, err)
	require.Contains(t, string(js), `"kind":"block-overlap"`)
	require.Contains(t, string(js), `"repairable":false`)

	actions, after, err := e.a.Repair(e.ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	require.NotEmpty(t, actions)
	require.Contains(t, kinds(after), ipam.ProblemBlockOverlap, "left for a person")
}

func TestCheckAfterPoolDeletion(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	held := e.mustAssign4("node-1", "a", 2)
	require.NoError(t, e.a.DeletePool(e.ctx, "p"))
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.True(t, r.Clean(), "addresses staying until released is no problem: %v", r.Problems)
	require.Equal(t, []ipam.Leftover{{Block: held[0].Block, InUse: 2}}, r.Leftovers)
	js, err := json.Marshal(r)
	require.NoError(t, err)
	require.Contains(t, string(js), fmt.Sprintf(`"leftovers":[{"block":"%s","inUse":2}]`, held[0].Block))

	// Affine to a node, it is a problem: DeletePool releases affinities.
	b := storedBlocks(t, e)[storeKey(t, e, held[0].Block)]
	b.SetAffinity(block.Host("node-1"), e.clock.Now())
	rec, err := e.store.Get(e.ctx, ipam.KindBlock, storeKey(t, e, held[0].Block))
	require.NoError(t, err)
	data, err := b.MarshalBinary()
	require.NoError(t, err)
	_, err = e.store.Update(e.ctx, ipam.KindBlock, rec.Key, data, rec.Revision)
	require.NoError(t, err)
	r, err = e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Contains(t, kinds(r), ipam.ProblemBlockOutsidePools)
	require.Empty(t, r.Leftovers)

	_, err = e.a.ReleaseByHandle(e.ctx, "a")
	require.NoError(t, err)
	r, err = e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Empty(t, r.Leftovers)
}
