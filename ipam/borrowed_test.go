package ipam_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
)

// TestAllocationBorrowed: Allocations and Owner say whose block each
// address is in, Borrowed picks out the addresses Utilization counts as
// borrowed, and both survive JSON.
func TestAllocationBorrowed(t *testing.T) {
	e := newEnv(t, v4pool("small", "10.0.0.0/26", 28))
	cfg := ipam.DefaultConfig()
	cfg.MaxBlocksPerHost = 1
	e.config(cfg)
	e.mustAssign4("node-1", "own-1", 16)                                   // fills node-1's block
	e.mustAssign4("node-2", "own-2", 10)                                   // claims another
	borrowed := e.mustAssign4("node-1", "borrow-1", 2)                     // at its cap, node-1 borrows from node-2
	loose := e.mustAssign4("node-3", "own-3", 3)[0].Block                  // a third block...
	require.NoError(t, e.a.ReleaseAffinity(e.ctx, "node-3", loose, false)) // ...loses its affinity
	require.NotEqual(t, loose, borrowed[0].Block)
	allocs, err := e.a.Allocations(e.ctx, mustPrefix("10.0.0.0/26"))
	require.NoError(t, err)
	var n int
	for _, x := range allocs {
		owner, err := e.a.Owner(e.ctx, x.Addr)
		require.NoError(t, err)
		require.Equal(t, x, owner)

		want := block.Host(x.Attrs[ipam.AttrNode])
		if x.Handle == "borrow-1" {
			want = block.Host("node-2")
		}
		switch {
		case x.Block == loose:
			require.True(t, x.BlockAffinity.IsZero(), "%s", x.Addr)
			require.True(t, x.Borrowed(), "%s: every address of a block without affinity is borrowed", x.Addr)
		default:
			require.Equal(t, want, x.BlockAffinity, "%s", x.Addr)
			require.Equal(t, x.Handle == "borrow-1", x.Borrowed(), "%s", x.Addr)
		}
		if x.Borrowed() {
			n++
		}

		data, err := json.Marshal(x)
		require.NoError(t, err)
		var back ipam.Allocation
		require.NoError(t, json.Unmarshal(data, &back))
		require.Equal(t, x, back, "%s", data)
	}
	var counted uint64
	for _, pu := range e.utilization() {
		counted += pu.Borrowed
	}
	require.EqualValues(t, n, counted, "Utilization and Borrowed disagree")
}
