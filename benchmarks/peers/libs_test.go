// Package peers runs carve's benchmark workloads side by side with other Go
// IPAM libraries, in one go test invocation, so that every ratio comes from
// one run on one machine. Sub-benchmarks are named lib=<name>/... so that
// benchstat -col /lib puts the libraries in columns. The module is separate
// so that the peers' dependencies never enter carve's.
package peers

import (
	"testing"

	"github.com/carve-ipam/carve/benchmarks/internal/workload"
)

// library is one IPAM library behind the operations the workloads need. A
// nil field means the library has no such operation; the README says why.
type library struct {
	name string

	// allocRelease sets up pool p filled to fill percent (see package
	// workload) and returns an operation that allocates one address and
	// releases it. Concurrent callers pass distinct workers.
	allocRelease func(tb testing.TB, p workload.Pool, fill int) func(worker int) error

	// batch sets up the empty pool p and returns an operation that
	// allocates n addresses and releases them.
	batch func(tb testing.TB, p workload.Pool, n int) func() error

	// claim sets up pool p with fill percent of its working set in
	// blocks held by others, and returns an operation that gives a new
	// owner i a block of its own and takes it back.
	claim func(tb testing.TB, p workload.Pool, fill int) func(i int) error

	// heapPerAddr returns the live heap per address after
	// workload.HeapAddrs allocations from p, under handles h, one of
	// handles.
	heapPerAddr func(tb testing.TB, p workload.Pool, h workload.Handles) float64
	handles     []workload.Handles
}

// noHandles is the heap benchmark's key for libraries without owners.
const noHandles workload.Handles = "none"

// libraries are the libraries compared, carve first.
var libraries = []library{carveLib, goipamLib, ciliumLib}
