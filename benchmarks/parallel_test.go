package benchmarks

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/carve-ipam/carve/benchmarks/internal/workload"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// goroutines is how many goroutines BenchmarkParallel runs, whatever
// GOMAXPROCS is, so that the contention is the same on every machine.
const goroutines = 8

// BenchmarkParallel times the steady-state pair with 8 goroutines at once,
// each under its own handle: on 8 distinct nodes (each with its own block),
// or all on one node (one block, so their writes collide and retry). The
// allocators dimension says whether the goroutines share one Allocator, as
// one process serving many requests, or each have their own on the shared
// store, as separate processes do. ns/op is wall time per pair.
//
// It uses b.N rather than b.Loop because b.Loop cannot hand out iterations
// to several goroutines, and b.RunParallel ties the goroutine count to
// GOMAXPROCS.
func BenchmarkParallel(b *testing.B) {
	for _, nodes := range []int{goroutines, 1} {
		for _, allocators := range []int{1, goroutines} {
			name := fmt.Sprintf("goroutines=%d/nodes=%d/allocators=%d", goroutines, nodes, allocators)
			b.Run(name, func(b *testing.B) {
				benchParallel(b, nodes, allocators)
			})
		}
	}
}

func benchParallel(b *testing.B, nodes, allocators int) {
	p := workload.V4
	store := memstore.New()
	as := []*ipam.Allocator{workload.Filled(b, store, p, 0)}
	for len(as) < allocators {
		a, err := ipam.New(store, ipam.Options{})
		if err != nil {
			b.Fatal(err)
		}
		as = append(as, a)
	}
	ctx := context.Background()
	args := make([]ipam.AutoAssignArgs, goroutines)
	for g := range args {
		args[g] = p.Args(1, fmt.Sprintf("pod-%d", g), fmt.Sprintf("node-%d", g%nodes))
		// Warm up: each node claims its block, each allocator fills its caches.
		if err := workload.AllocRelease(ctx, as[g%allocators], args[g]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := as[g%allocators]
			for next.Add(1) <= int64(b.N) {
				if err := workload.AllocRelease(ctx, a, args[g]); err != nil {
					errs[g] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
}
