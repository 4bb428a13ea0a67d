package benchmarks

import (
	"context"
	"fmt"
	"testing"

	"github.com/carve-ipam/carve/benchmarks/internal/workload"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// BenchmarkClaim times a new node's whole life: its first AutoAssign, which
// claims a block, then ReleaseByHandle and ReleaseHostAffinities, which
// delete the block again (see workload.NodeLifecycle), in an IPv4 /16 (1,024
// blocks) and an IPv6 /48 (2^74 blocks) filled to fill percent. The claim
// walks the pool from a start derived from the node name; in a crowded /16
// the walk misses and falls back to listing the pool's blocks once, which is
// what fill=99 shows.
func BenchmarkClaim(b *testing.B) {
	for _, p := range workload.Pools {
		for _, fill := range workload.Fills {
			b.Run(fmt.Sprintf("pool=%s/fill=%d", p.Name, fill), func(b *testing.B) {
				a := workload.Filled(b, memstore.New(), p, fill)
				ctx := context.Background()
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if err := workload.NodeLifecycle(ctx, a, p, fmt.Sprintf("new-node-%d", i)); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		}
	}
}
