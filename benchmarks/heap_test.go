package benchmarks

import (
	"fmt"
	"testing"

	"github.com/carve-ipam/carve/benchmarks/internal/workload"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// BenchmarkHeapPerAddr reports the live heap (memstore records and the
// allocator's caches together) per address after 65,536 AutoAssigns of one
// address each, spread over 1,024 nodes, with a handle per address or one
// handle for all. Each iteration builds a fresh allocator; only B/addr is
// reported, since the time is that of 65,536 AutoAssigns and claims.
// Run it with -benchtime=1x: the figure hardly varies.
func BenchmarkHeapPerAddr(b *testing.B) {
	newStore := func() ipam.Store { return memstore.New() }
	for _, p := range []workload.Pool{workload.V4Large, workload.V6} {
		for _, h := range []workload.Handles{workload.UniqueHandles, workload.SharedHandle} {
			b.Run(fmt.Sprintf("pool=%s/handles=%s", p.Name, h), func(b *testing.B) {
				var sum float64
				for b.Loop() {
					sum += workload.HeapPerAddr(b, newStore, p, h)
				}
				b.ReportMetric(sum/float64(b.N), "B/addr")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}
