// Package benchmarks measures carve's allocator engine on memstore. The
// side-by-side comparison with other Go IPAM libraries lives in the
// benchmarks/peers module; README.md describes every benchmark and the
// results.
package benchmarks

import (
	"context"
	"fmt"
	"testing"

	"github.com/carve-ipam/carve/benchmarks/internal/workload"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// BenchmarkAllocRelease times the steady-state pair: AutoAssign of one
// address for a node whose block has room, then ReleaseByHandle, in a pool
// filled to fill percent (see package workload for what fill means in a /48).
func BenchmarkAllocRelease(b *testing.B) {
	for _, p := range workload.Pools {
		for _, fill := range workload.Fills {
			b.Run(fmt.Sprintf("pool=%s/fill=%d", p.Name, fill), func(b *testing.B) {
				a := workload.Filled(b, memstore.New(), p, fill)
				ctx := context.Background()
				args := p.Args(1, "pod", workload.Node)
				b.ReportAllocs()
				for b.Loop() {
					if err := workload.AllocRelease(ctx, a, args); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkAllocReleasePods is the steady-state pair as a CNI plugin makes
// it: every pod has its own handle and attributes (namespace, pod name), and
// the node's block is half full of such pods, each an owner record of its
// own that every write of the block encodes. (BenchmarkAllocRelease's block
// has one owner.)
func BenchmarkAllocReleasePods(b *testing.B) {
	for _, p := range workload.Pools {
		b.Run(fmt.Sprintf("pool=%s/fill=50", p.Name), func(b *testing.B) {
			a := workload.Filled(b, memstore.New(), p, 50)
			ctx := context.Background()
			const node = "pod-node"
			for i := range 32 {
				args := p.Args(1, fmt.Sprintf("default/web-%d", i), node)
				args.Attrs = map[string]string{"namespace": "default", "pod": fmt.Sprintf("web-%d", i)}
				if _, err := a.AutoAssign(ctx, args); err != nil {
					b.Fatal(err)
				}
			}
			args := p.Args(1, "default/bench", node)
			args.Attrs = map[string]string{"namespace": "default", "pod": "bench"}
			b.ReportAllocs()
			for b.Loop() {
				if err := workload.AllocRelease(ctx, a, args); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBatch times one AutoAssign of 10,000 addresses under one handle
// and its ReleaseByHandle, and of 50,000, to show that the cost per
// address does not grow with the batch. The first round claims the node's
// blocks (157 and 782); later rounds reuse them, as a node does.
func BenchmarkBatch(b *testing.B) {
	for _, n := range []int{10000, 50000} {
		for _, p := range workload.Pools {
			b.Run(fmt.Sprintf("pool=%s/n=%d", p.Name, n), func(b *testing.B) {
				a := workload.Filled(b, memstore.New(), p, 0)
				ctx := context.Background()
				args := p.Args(n, "batch", workload.Node)
				b.ReportAllocs()
				for b.Loop() {
					if err := workload.AllocRelease(ctx, a, args); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/addr")
			})
		}
	}
}

// BenchmarkFirstBatch times a node's first AutoAssign of n addresses on a
// fresh store: it claims every block it fills (500 /26 blocks for 32,000
// addresses), so it shows what claiming block after block costs as the
// node's holding grows. The store's set-up is not timed.
func BenchmarkFirstBatch(b *testing.B) {
	for _, n := range []int{8000, 32000} {
		for _, p := range workload.Pools {
			b.Run(fmt.Sprintf("pool=%s/n=%d", p.Name, n), func(b *testing.B) {
				ctx := context.Background()
				args := p.Args(n, "batch", workload.Node)
				b.ReportAllocs()
				for b.Loop() {
					b.StopTimer()
					a := workload.Filled(b, memstore.New(), p, 0)
					b.StartTimer()
					if _, err := a.AutoAssign(ctx, args); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/addr")
			})
		}
	}
}

// allocBudget is the most heap allocations the steady-state
// AutoAssign+ReleaseByHandle pair may make on memstore: the result and the
// released addresses. (Issue 5 allows 4; a store without ipam.BlockKeeper
// adds one encoding of the block per write.)
const allocBudget = 2

// TestAllocBudget keeps the steady-state pair within its allocation budget,
// in both families.
func TestAllocBudget(t *testing.T) {
	for _, p := range workload.Pools {
		t.Run(p.Name, func(t *testing.T) {
			a := workload.Filled(t, memstore.New(), p, 0)
			ctx := context.Background()
			args := p.Args(1, "pod", workload.Node)
			allocs := testing.AllocsPerRun(200, func() {
				if err := workload.AllocRelease(ctx, a, args); err != nil {
					t.Fatal(err)
				}
			})
			t.Logf("%s: %.0f allocations per AutoAssign+ReleaseByHandle (budget %d)", p.Name, allocs, allocBudget)
			if allocs > allocBudget {
				t.Errorf("%s: %.1f allocations per AutoAssign+ReleaseByHandle, budget %d", p.Name, allocs, allocBudget)
			}
		})
	}
}
