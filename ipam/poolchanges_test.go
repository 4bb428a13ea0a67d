package ipam_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

// TestDeletePoolLeavesPartsSplitBeforeItsDisable: a pool is split after
// DeletePool read it and before its disable is written. The deletion
// keeps the part that took the name, as it does for a split later on,
// and must not release the affinities of the other part, an enabled pool
// nobody asked to delete: its nodes keep their blocks.
func TestDeletePoolLeavesPartsSplitBeforeItsDisable(t *testing.T) {
	e := newEnv(t, v4pool("old", "10.0.0.0/24", 28))
	for _, node := range []string{"node-a", "node-b", "node-c", "node-d"} {
		e.mustAssign4(node, node, 1)
	}
	err := e.deleteWhileSplit(ipam.KindPool, "update")
	require.ErrorIs(t, err, ipam.ErrPoolNotFound)

	upper, err := e.a.Pool(e.ctx, "new")
	require.NoError(t, err)
	require.False(t, upper.Disabled)
	var lost []netip.Prefix
	for _, pu := range e.utilization() {
		if pu.Name != "new" {
			continue
		}
		for _, b := range pu.Blocks {
			if b.Affinity.IsZero() {
				lost = append(lost, b.Prefix)
			}
		}
	}
	require.Empty(t, lost, "DeletePool of %q released blocks of the enabled pool %q", "old", "new")
	e.requireConsistent()
}

// TestAllocationsInsideOneBlockListsEachAddressOnce: Allocations of a
// prefix smaller than a block, starting where the block starts, lists each
// address of it once (the block is both in the prefix's key range and the
// block that holds the prefix's first address), so that counting
// Allocation.Borrowed over it agrees with Utilization.
func TestAllocationsInsideOneBlockListsEachAddressOnce(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	got := e.mustAssign4("node-a", "h", 3)
	blk := got[0].Block
	within := netip.PrefixFrom(blk.Addr(), 28)
	allocs, err := e.a.Allocations(e.ctx, within)
	require.NoError(t, err)
	seen := map[netip.Addr]int{}
	for _, x := range allocs {
		seen[x.Addr]++
	}
	for addr, n := range seen {
		require.Equal(t, 1, n, "%s listed %d times", addr, n)
	}
	require.Len(t, allocs, 3)
}

// TestCorruptPoolRecordIsErrCorrupt: a pool record that does not decode
// fails every pool call with an error matching ErrCorrupt ("a stored record
// could not be decoded"), as a corrupt configuration record does, and
// not with one that looks like the caller's pool was invalid.
func TestCorruptPoolRecordIsErrCorrupt(t *testing.T) {
	for name, value := range map[string]string{
		"not JSON":        `{"pools": [`,
		"an invalid pool": `{"pools": [{"name": "p", "spec": {"cidr": "10.0.0.1/24"}}]}`,
		// A later version than the record has given: the next change would
		// give it again.
		"a pool's version after the record's": `{"version": 1, "pools": [{"name": "p", "version": 2, "spec": {"cidr": "10.0.0.0/24"}}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
			rec, err := e.store.Get(e.ctx, ipam.KindPool, "default")
			require.NoError(t, err)
			_, err = e.store.Update(e.ctx, ipam.KindPool, "default", []byte(value), rec.Revision)
			require.NoError(t, err)
			a := e.allocator()
			_, err = a.Pools(e.ctx)
			require.ErrorIs(t, err, ipam.ErrCorrupt)
			err = a.CreatePool(e.ctx, v4pool("q", "10.1.0.0/24", 26))
			require.ErrorIs(t, err, ipam.ErrCorrupt)
			var ve *pool.ValidationError
			require.False(t, errors.As(err, &ve), "a corrupt record reads as the caller's invalid pool: %v", err)
		})
	}
}
