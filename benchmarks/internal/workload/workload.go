// Package workload builds the carve states the benchmarks measure. The core
// benchmarks (package benchmarks) and the side-by-side ones (module
// benchmarks/peers) both use it, so carve's numbers in the two tables come
// from the same setup.
//
// # Fill
//
// A fill percentage counts addresses of a working set of [WorkingSet]
// (65,536) addresses: all of an IPv4 /16, and the same number in an IPv6
// /48. Filling 2^80 addresses is impossible, and what could make a /48 slower
// than a /16 is the number of blocks and records to look through, not the
// unused space. So fill=50 in either pool means 32,768 addresses in use, in
// full blocks claimed by as many nodes as it takes (one block each); in the
// /48 those blocks lie wherever each node's walk puts them, spread over the
// 2^74 blocks as carve places them in a real cluster. On top of the fill, the
// node under test ([Node]) holds one half-full block: the steady state, where
// a node assigns from its own block.
package workload

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

// Pool is a pool the benchmarks use; Name is its sub-benchmark key.
type Pool struct {
	Name string
	CIDR netip.Prefix
	// BlockSize is the block prefix length; 0 means carve's default (/26,
	// /122: 64 addresses).
	BlockSize int
}

// The pools of the benchmarks.
var (
	V4 = Pool{Name: "v4-16", CIDR: netip.MustParsePrefix("10.0.0.0/16")}
	V6 = Pool{Name: "v6-48", CIDR: netip.MustParsePrefix("fd00::/48")}
	// V4Large holds twice the working set, so that every library (some
	// keep a network and broadcast address back) can hold 65,536
	// allocations at once.
	V4Large = Pool{Name: "v4-15", CIDR: netip.MustParsePrefix("10.0.0.0/15")}
	// V4Small is a pool of four /26 blocks, for borrowing.
	V4Small = Pool{Name: "v4-24", CIDR: netip.MustParsePrefix("10.1.0.0/24")}
)

// Pools are the pools allocate+release is measured on.
var Pools = []Pool{V4, V6}

// Fills are the fill percentages allocate+release is measured at.
var Fills = []int{0, 50, 99}

// WorkingSet is the number of addresses a fill percentage counts.
const WorkingSet = 1 << 16

// FillCount returns the addresses in use at fill percent, beside the node
// under test's half block.
func FillCount(fill int) int { return WorkingSet * fill / 100 }

// Node is the node under test.
const Node = "node-under-test"

// Is4 reports whether p is an IPv4 pool.
func (p Pool) Is4() bool { return p.CIDR.Addr().Is4() }

// BlockAddrs returns the number of addresses in one of p's blocks.
func (p Pool) BlockAddrs() int {
	pp := p.spec().WithDefaults()
	return 1 << (p.CIDR.Addr().BitLen() - pp.BlockSize)
}

func (p Pool) spec() pool.Pool {
	return pool.Pool{Name: "bench", CIDR: p.CIDR, BlockSize: p.BlockSize}
}

// Args returns a request for n addresses of p's family.
func (p Pool) Args(n int, handle, node string) ipam.AutoAssignArgs {
	args := ipam.AutoAssignArgs{Handle: handle, Node: node}
	if p.Is4() {
		args.Num4 = n
	} else {
		args.Num6 = n
	}
	return args
}

// New returns an allocator on store with the single pool p.
func New(tb testing.TB, store ipam.Store, p Pool) *ipam.Allocator {
	tb.Helper()
	a, err := ipam.New(store, ipam.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	if err := a.CreatePool(context.Background(), p.spec()); err != nil {
		tb.Fatal(err)
	}
	return a
}

// Fill assigns FillCount(fill) addresses of p, in full blocks, one node and
// one handle per block ("fill-node-<i>", "fill-<i>"), and returns the
// number of nodes it used.
func Fill(tb testing.TB, a *ipam.Allocator, p Pool, fill int) int {
	tb.Helper()
	ctx := context.Background()
	per := p.BlockAddrs()
	i := 0
	for want := FillCount(fill); want > 0; i++ {
		n := min(want, per)
		args := p.Args(n, fmt.Sprintf("fill-%d", i), fmt.Sprintf("fill-node-%d", i))
		if _, err := a.AutoAssign(ctx, args); err != nil {
			tb.Fatalf("fill %s to %d%%: %v", p.Name, fill, err)
		}
		want -= n
	}
	return i
}

// Filled returns an allocator on store with p filled to fill percent (see
// [Fill]) and [Node] holding one half-full block.
func Filled(tb testing.TB, store ipam.Store, p Pool, fill int) *ipam.Allocator {
	tb.Helper()
	a := New(tb, store, p)
	Fill(tb, a, p, fill)
	if _, err := a.AutoAssign(context.Background(), p.Args(p.BlockAddrs()/2, "half", Node)); err != nil {
		tb.Fatal(err)
	}
	return a
}

// Batched returns an allocator on store with the empty pool p, where [Node]
// has assigned a batch of n addresses under one handle and released it
// again, so that it holds every block a batch of n needs: the state a node
// is in for its second and later batches. A node's first batch claims its
// blocks as it goes (BenchmarkFirstBatch times that); leaving it inside a
// timed loop would charge the claims to whichever round came first, more
// so the fewer rounds the loop runs.
func Batched(tb testing.TB, store ipam.Store, p Pool, n int) *ipam.Allocator {
	tb.Helper()
	a := Filled(tb, store, p, 0)
	if err := AllocRelease(context.Background(), a, p.Args(n, "batch", Node)); err != nil {
		tb.Fatalf("batch of %d in %s: %v", n, p.Name, err)
	}
	return a
}

// Fresh is how many handles [FreshArgs] cycles through.
const Fresh = 1024

// FreshArgs returns Fresh requests for one address of p by node, each
// under a handle of its own (prefix-0, prefix-1, ...), to be made in
// turn, so that every pair is a new owner, as every pod is. A pair that
// reuses the handle of the pair before it takes a path a pod never takes:
// its block still caches the owner of its last allocation, and
// Block.Allocate serves that owner without looking it up or recording it.
// The requests are made before the timed loop, so naming costs nothing in
// it.
func FreshArgs(p Pool, prefix, node string) []ipam.AutoAssignArgs {
	reqs := make([]ipam.AutoAssignArgs, Fresh)
	for i := range reqs {
		reqs[i] = p.Args(1, fmt.Sprintf("%s-%d", prefix, i), node)
	}
	return reqs
}

// AllocRelease assigns one address with args and releases it by handle: the
// steady-state pair the allocate+release benchmarks time.
func AllocRelease(ctx context.Context, a *ipam.Allocator, args ipam.AutoAssignArgs) error {
	if _, err := a.AutoAssign(ctx, args); err != nil {
		return err
	}
	_, err := a.ReleaseByHandle(ctx, args.Handle)
	return err
}

// NodeLifecycle is a node's whole life in p: its first AutoAssign (which
// claims a block), the release of that address, and the node's removal
// (ReleaseHostAffinities, which deletes the now empty block). It leaves the
// pool as it found it, so it can be repeated for ever in a /16.
func NodeLifecycle(ctx context.Context, a *ipam.Allocator, p Pool, node string) error {
	args := p.Args(1, node, node)
	if _, err := a.AutoAssign(ctx, args); err != nil {
		return err
	}
	if _, err := a.ReleaseByHandle(ctx, args.Handle); err != nil {
		return err
	}
	blocks, err := a.ReleaseHostAffinities(ctx, node, false)
	if err == nil && len(blocks) != 1 {
		err = fmt.Errorf("node %s held %d blocks, want 1", node, len(blocks))
	}
	return err
}

// Handles says how the heap benchmark names owners.
type Handles string

const (
	// UniqueHandles gives every address its own handle, as one per pod.
	UniqueHandles Handles = "unique"
	// SharedHandle records every address under one handle.
	SharedHandle Handles = "shared"
)

// HeapAddrs is how many addresses the heap benchmark allocates.
const HeapAddrs = 1 << 16

// HeapNodes is how many nodes share the heap benchmark's addresses: 64
// each, a block each with the default block size.
const HeapNodes = HeapAddrs / 64

// HeapPerAddr returns the live heap, in bytes per address, that a fresh
// allocator on store (made by newStore) grows by when HeapAddrs addresses
// of p are assigned one AutoAssign at a time, spread over HeapNodes nodes.
// Each request's handle and node names are made inside the measure and
// dropped by the caller after the call, as a server drops a request's
// strings once it has answered: what carve keeps of them (it keeps a
// handle's string itself, not a copy) is counted, the rest is garbage.
func HeapPerAddr(tb testing.TB, newStore func() ipam.Store, p Pool, h Handles) float64 {
	tb.Helper()
	ctx := context.Background()
	a := New(tb, newStore(), p)
	grew := HeapGrowth(func() any {
		for i := range HeapAddrs {
			handle := "pod"
			if h == UniqueHandles {
				handle = fmt.Sprintf("pod-%d", i)
			}
			args := p.Args(1, handle, fmt.Sprintf("node-%d", i%HeapNodes))
			if _, err := a.AutoAssign(ctx, args); err != nil {
				tb.Fatal(err)
			}
		}
		return a
	})
	return float64(grew) / HeapAddrs
}

// HeapGrowth returns by how much the live heap grows while build runs,
// measured after full collections, with what build returns still reachable.
// It is 0 if the heap shrank.
func HeapGrowth(build func() any) uint64 {
	var before, after runtime.MemStats
	settle()
	runtime.ReadMemStats(&before)
	kept := build()
	settle()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(kept)
	if after.HeapAlloc < before.HeapAlloc {
		return 0
	}
	return after.HeapAlloc - before.HeapAlloc
}

// settle collects twice: what sync.Pools hold (encoding/json's buffers, for
// one) survives one collection, and would otherwise be freed, and
// subtracted, in the middle of a measurement.
func settle() {
	runtime.GC()
	runtime.GC()
}
