package peers

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/carve-ipam/carve/benchmarks/internal/workload"
)

// BenchmarkAllocRelease times allocating one address and releasing it, in
// an IPv4 /16 and an IPv6 /48 filled to 0, 50 and 99 percent of the
// working set (see package workload). carve assigns from the node's own
// block to a new handle each time, as to a new pod, and releases by
// handle; go-ipam acquires the lowest free address of the prefix; cilium
// picks a random free bit.
func BenchmarkAllocRelease(b *testing.B) {
	for _, lib := range libraries {
		for _, p := range workload.Pools {
			for _, fill := range workload.Fills {
				b.Run(fmt.Sprintf("lib=%s/pool=%s/fill=%d", lib.name, p.Name, fill), func(b *testing.B) {
					op := lib.allocRelease(b, p, fill)
					b.ReportAllocs()
					for b.Loop() {
						if err := op(0); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}

// BenchmarkBatch times allocating 10,000 addresses and releasing them: one
// AutoAssign and one ReleaseByHandle in carve, 10,000 calls each way in the
// others, which have no batch operation.
func BenchmarkBatch(b *testing.B) {
	const n = 10000
	p := workload.V4
	for _, lib := range libraries {
		b.Run(fmt.Sprintf("lib=%s/pool=%s/n=%d", lib.name, p.Name, n), func(b *testing.B) {
			op := lib.batch(b, p, n)
			b.ReportAllocs()
			for b.Loop() {
				if err := op(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/addr")
		})
	}
}

// goroutines is how many goroutines BenchmarkParallel runs, whatever
// GOMAXPROCS is.
const goroutines = 8

// BenchmarkParallel times allocate+release from 8 goroutines sharing one
// allocator and one empty /16. For carve they are 8 pods of one node (its
// one block is the contended record); the peers have no nodes. ns/op is
// wall time per pair. An operation that fails is counted in failures/op
// rather than stopping the benchmark, since go-ipam gives up on conflicts.
//
// It uses b.N rather than b.Loop because b.Loop cannot hand out iterations
// to several goroutines, and b.RunParallel ties the goroutine count to
// GOMAXPROCS.
func BenchmarkParallel(b *testing.B) {
	p := workload.V4
	for _, lib := range libraries {
		b.Run(fmt.Sprintf("lib=%s/pool=%s/goroutines=%d", lib.name, p.Name, goroutines), func(b *testing.B) {
			op := lib.allocRelease(b, p, 0)
			for g := range goroutines { // warm up each worker
				if err := op(g); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			var next, failed atomic.Int64
			var firstErr error
			var once sync.Once
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if err := op(g); err != nil {
							failed.Add(1)
							once.Do(func() { firstErr = err })
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			if firstErr != nil {
				b.Logf("%d of %d operations failed; the first: %v", failed.Load(), b.N, firstErr)
			}
			b.ReportMetric(float64(failed.Load())/float64(b.N), "failures/op")
		})
	}
}

// BenchmarkClaim times giving a new owner a block of its own and taking it
// back, in a pool with fill percent of its working set in other owners'
// blocks: in carve a new node's first AutoAssign, release and node removal
// (workload.NodeLifecycle); in go-ipam AcquireChildPrefix and
// ReleaseChildPrefix of a block-sized child. cilium has no blocks.
func BenchmarkClaim(b *testing.B) {
	for _, lib := range libraries {
		if lib.claim == nil {
			continue
		}
		for _, p := range workload.Pools {
			for _, fill := range workload.Fills {
				b.Run(fmt.Sprintf("lib=%s/pool=%s/fill=%d", lib.name, p.Name, fill), func(b *testing.B) {
					op := lib.claim(b, p, fill)
					b.ReportAllocs()
					i := 0
					for b.Loop() {
						if err := op(i); err != nil {
							b.Fatal(err)
						}
						i++
					}
				})
			}
		}
	}
}

// BenchmarkHeapPerAddr reports the live heap per address after 65,536
// allocations from an IPv4 /15 (every library can hold that many there),
// with carve's two ways of naming owners; the peers keep no owners
// (handles=none). Each iteration starts afresh; only B/addr is reported.
// Run it with -benchtime=1x.
func BenchmarkHeapPerAddr(b *testing.B) {
	p := workload.V4Large
	for _, lib := range libraries {
		for _, h := range lib.handles {
			b.Run(fmt.Sprintf("lib=%s/pool=%s/handles=%s", lib.name, p.Name, h), func(b *testing.B) {
				var sum float64
				for b.Loop() {
					sum += lib.heapPerAddr(b, p, h)
				}
				b.ReportMetric(sum/float64(b.N), "B/addr")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}
