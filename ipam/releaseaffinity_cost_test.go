package ipam_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/storetest"
)

// TestReleaseAffinityOfPoolCostsFewRoundTrips: releasing a node's
// affinity in a whole pool (or any part of one) costs round trips for
// the blocks the node holds, not for every block the range could hold.
// A /14 pool of /26 blocks (4096 of them) cost 12,294 round trips for a
// node holding one block (three reads per block, held or not: seconds on
// etcd), while a /13 pool, past the 4096-block limit of the one-by-one
// reads, cost 10: its existing blocks were listed once.
func TestReleaseAffinityOfPoolCostsFewRoundTrips(t *testing.T) {
	for _, cidr := range []string{"10.0.0.0/24", "10.0.0.0/14", "10.0.0.0/13"} {
		t.Run(cidr, func(t *testing.T) {
			e := newEnv(t, v4pool("p", cidr, 26))
			held := e.mustAssign4("node-1", "h", 1)[0].Block
			e.mustAssign4("node-2", "h2", 1)
			counting := storetest.NewCountingStore(e.store)
			a, err := ipam.New(counting, ipam.Options{})
			require.NoError(t, err)
			before, _ := storetest.CountsOf(counting)
			require.NoError(t, a.ReleaseAffinity(e.ctx, "node-1", mustPrefix(cidr), false))
			after, _ := storetest.CountsOf(counting)
			cost := after.Sub(before)
			require.Less(t, cost.Total(), int64(20), "ReleaseAffinity of %s for a node holding one block: %s", cidr, cost)

			require.Empty(t, e.affine("node-1"))
			b, err := e.a.Block(e.ctx, held)
			require.NoError(t, err)
			require.True(t, b.Affinity().IsZero(), "the node's block keeps its address without affinity")
			require.Len(t, e.affine("node-2"), 1)
			e.requireConsistent()
		})
	}
}
