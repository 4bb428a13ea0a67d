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
	// Every pair is a new owner, as every pod is (core benchmark
	// AllocReleaseFresh): a pair that reused the handle of the pair before
	// would find its owner cached in the block and skip recording it,
	// work a pod's pair always does. The peers keep no owners.
	allocRelease: func(tb testing.TB, p workload.Pool, fill int) func(int) error {
		a := workload.Filled(tb, memstore.New(), p, fill)
		ctx := context.Background()
		reqs := make([][]ipam.AutoAssignArgs, maxWorkers)
		for w := range reqs {
			reqs[w] = workload.FreshArgs(p, fmt.Sprintf("pod-%d", w), workload.Node)
		}
		next := make([]struct {
			n int
			_ [56]byte // one cache line per worker
		}, maxWorkers)
		return func(worker int) error {
			w := worker % maxWorkers
			i := next[w].n
			next[w].n++
			return workload.AllocRelease(ctx, a, reqs[w][i%len(reqs[w])])
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

// maxWorkers is how many concurrent workers carve's allocRelease serves
// with handles of their own: BenchmarkParallel's goroutines.
const maxWorkers = goroutines
