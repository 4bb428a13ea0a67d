package peers

import (
	"context"
	"fmt"
	"testing"

	"github.com/carve-ipam/carve/benchmarks/internal/workload"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// carveLib is carve on memstore, set up exactly as in the core benchmarks.
var carveLib = library{
	name: "carve",
	allocRelease: func(tb testing.TB, p workload.Pool, fill int) func(int) error {
		a := workload.Filled(tb, memstore.New(), p, fill)
		ctx := context.Background()
		return func(worker int) error {
			return workload.AllocRelease(ctx, a, p.Args(1, handles[worker%len(handles)], workload.Node))
		}
	},
	// The node's blocks are claimed before the timed rounds
	// (workload.Batched), as the core benchmark does; the peers' state
	// after a round is the state before it.
	batch: func(tb testing.TB, p workload.Pool, n int) func() error {
		a := workload.Batched(tb, memstore.New(), p, n)
		ctx := context.Background()
		args := p.Args(n, "batch", workload.Node)
		return func() error { return workload.AllocRelease(ctx, a, args) }
	},
	claim: func(tb testing.TB, p workload.Pool, fill int) func(int) error {
		a := workload.Filled(tb, memstore.New(), p, fill)
		ctx := context.Background()
		return func(i int) error {
			return workload.NodeLifecycle(ctx, a, p, fmt.Sprintf("new-node-%d", i))
		}
	},
	heapPerAddr: func(tb testing.TB, p workload.Pool, h workload.Handles) float64 {
		return workload.HeapPerAddr(tb, func() ipam.Store { return memstore.New() }, p, h)
	},
	handles: []workload.Handles{workload.UniqueHandles, workload.SharedHandle},
}

// handles are the handles of concurrent workers, made once so that naming
// them costs nothing in the loop.
var handles = func() []string {
	h := make([]string, 64)
	for i := range h {
		h[i] = fmt.Sprintf("pod-%d", i)
	}
	return h
}()
