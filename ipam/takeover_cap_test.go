package ipam_test

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestConcurrentTakeoversKeepTheCap: a pool of four /28 blocks,
// node-n holds one (full), node-m the other three (empty, claimed long
// ago, so reclaimable). MaxBlocksPerHost is 2. Two requests of node-n run
// at once, each for one address: each finds the node's block full and
// no unclaimed block left, so it takes over one of node-m's. The one
// that lists the pool second must take the block the other took over as
// found, as a claim's walk does a block the node's other request just
// claimed, and assign there: the node ends with two blocks, the cap.
// (Found by a review: the take-over passed over a block that was the
// node's already and took the next one, three blocks.)
func TestConcurrentTakeoversKeepTheCap(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/26", 28))
	cfg := ipam.DefaultConfig()
	cfg.MaxBlocksPerHost = 2
	cfg.StrictAffinity = true
	e.config(cfg)
	x := e.mustAssign4("node-n", "fill", 16)
	require.Len(t, blocksOf(x), 1)
	for _, p := range []string{"10.0.0.0/28", "10.0.0.16/28", "10.0.0.32/28", "10.0.0.48/28"} {
		if _, mine := blocksOf(x)[mustPrefix(p)]; mine {
			continue
		}
		_, err := e.a.ClaimAffinity(e.ctx, "node-m", mustPrefix(p))
		require.NoError(t, err)
	}
	e.clock.Advance(2 * time.Minute) // past the default ReclaimAge

	other := e.allocator()
	var once sync.Once
	var otherErr error
	hs := &opHookStore{Store: e.store, before: func(op string, kind ipam.Kind, key string) error {
		if op == "list" && kind == ipam.KindBlock {
			// The other request of node-n runs whole while this one is
			// about to list the pool for a block to take over.
			once.Do(func() {
				_, otherErr = other.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "b", Node: "node-n"})
			})
		}
		return nil
	}}
	a, err := ipam.New(hs, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)
	_, err = a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "a", Node: "node-n"})
	require.NoError(t, otherErr)
	require.NoError(t, err)
	require.LessOrEqual(t, len(e.affine("node-n")), cfg.MaxBlocksPerHost,
		"node-n holds %v with maxBlocksPerHost %d", e.affine("node-n"), cfg.MaxBlocksPerHost)
}
