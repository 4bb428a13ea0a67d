package benchmarks

import (
	"context"
	"fmt"
	"testing"

	"github.com/carve-ipam/carve/benchmarks/internal/workload"
	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// TestFilled checks that the benchmarks measure the state they claim to:
// the pool holds FillCount addresses plus the node under test's half block,
// in full blocks of one node each, and the node under test has one block.
func TestFilled(t *testing.T) {
	for _, p := range workload.Pools {
		for _, fill := range workload.Fills {
			t.Run(fmt.Sprintf("pool=%s/fill=%d", p.Name, fill), func(t *testing.T) {
				a := workload.Filled(t, memstore.New(), p, fill)
				use, err := a.Utilization(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if len(use) != 1 {
					t.Fatalf("%d pools, want 1", len(use))
				}
				per := p.BlockAddrs()
				want := workload.FillCount(fill) + per/2
				if got := use[0].InUse; got != uint64(want) {
					t.Errorf("in use %d, want %d", got, want)
				}
				blocks := (workload.FillCount(fill)+per-1)/per + 1
				if got := len(use[0].Blocks); got != blocks {
					t.Errorf("%d blocks, want %d", got, blocks)
				}
				mine := 0
				for _, blk := range use[0].Blocks {
					if blk.Borrowed != 0 {
						t.Errorf("block %s: %d borrowed addresses", blk.Prefix, blk.Borrowed)
					}
					if blk.Affinity == block.Host(workload.Node) {
						mine++
					}
				}
				if mine != 1 {
					t.Errorf("node under test holds %d blocks, want 1", mine)
				}
			})
		}
	}
}
