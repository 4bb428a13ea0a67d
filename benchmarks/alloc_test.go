// Package benchmarks measures carve's allocator engine on memstore. The
// side-by-side comparison with other Go IPAM libraries lives in the
// benchmarks/peers module; README.md describes every benchmark and the
// results.
package benchmarks

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/carve-ipam/carve/benchmarks/internal/workload"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
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

// BenchmarkAllocReleaseFresh is BenchmarkAllocRelease with a handle of
// its own for every pair (workload.FreshArgs), as every pod has.
// BenchmarkAllocRelease reuses one handle, so its block serves the pair
// from the owner record it cached at the pair before; here each pair
// records a new owner in the block and forgets it at the release.
func BenchmarkAllocReleaseFresh(b *testing.B) {
	for _, p := range workload.Pools {
		for _, fill := range workload.Fills {
			b.Run(fmt.Sprintf("pool=%s/fill=%d", p.Name, fill), func(b *testing.B) {
				a := workload.Filled(b, memstore.New(), p, fill)
				timePairs(b, a, workload.FreshArgs(p, "pod", workload.Node))
			})
		}
	}
}

// BenchmarkAllocReleaseBlockSize is BenchmarkAllocReleaseFresh in blocks
// of 64 to 4,096 addresses (Calico allows /20 to /32 blocks in IPv4, /116
// to /128 in IPv6): the node's block is half full, an owner per address,
// as a node's pods fill it. A new owner's pair must not cost more in a
// bigger block.
func BenchmarkAllocReleaseBlockSize(b *testing.B) {
	for _, bits := range []int{26, 24, 22, 20} {
		b.Run(fmt.Sprintf("block=%d", bits), func(b *testing.B) {
			p := workload.Pool{Name: "v4-16", CIDR: workload.V4.CIDR, BlockSize: bits}
			a := workload.New(b, memstore.New(), p)
			ctx := context.Background()
			for i := range (1 << (32 - bits)) / 2 {
				if _, err := a.AutoAssign(ctx, p.Args(1, fmt.Sprint("pod-", i), workload.Node)); err != nil {
					b.Fatal(err)
				}
			}
			timePairs(b, a, workload.FreshArgs(p, "fresh", workload.Node))
		})
	}
}

// timePairs times the pair of workload.AllocRelease with each request of
// reqs in turn.
func timePairs(b *testing.B, a *ipam.Allocator, reqs []ipam.AutoAssignArgs) {
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := workload.AllocRelease(ctx, a, reqs[i%len(reqs)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkAllocReleaseDual is the steady-state pair of a dual-stack pod:
// AutoAssign of an address of each family (the node holds a block of each)
// and ReleaseByHandle of both. AutoAssign's lane serves one family only,
// so this is the general path: a commit per family, and one commit for the
// release of both.
func BenchmarkAllocReleaseDual(b *testing.B) {
	ctx := context.Background()
	a, args := dualCluster(b)
	b.ReportAllocs()
	for b.Loop() {
		if err := workload.AllocRelease(ctx, a, args); err != nil {
			b.Fatal(err)
		}
	}
}

// dualCluster returns an allocator on a memstore with the workload's
// IPv4 and IPv6 pools, where the node under test holds a block of each,
// and a dual-stack request of that node.
func dualCluster(tb testing.TB) (*ipam.Allocator, ipam.AutoAssignArgs) {
	tb.Helper()
	ctx := context.Background()
	a, err := ipam.New(memstore.New(), ipam.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	for _, p := range workload.Pools {
		if err := a.CreatePool(ctx, pool.Pool{Name: p.Name, CIDR: p.CIDR, BlockSize: p.BlockSize}); err != nil {
			tb.Fatal(err)
		}
	}
	args := ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "pod", Node: workload.Node}
	for range 2 { // claim the blocks, fill the caches
		if err := workload.AllocRelease(ctx, a, args); err != nil {
			tb.Fatal(err)
		}
	}
	return a, args
}

// BenchmarkAllocReleasePods is the steady-state pair as a CNI plugin makes
// it: every pod has its own handle and attributes (namespace, pod name), and
// the node's block is half full of such pods, each an owner record of its
// own that every write of the block encodes. (BenchmarkAllocRelease's block
// has one owner.) Each timed pair is a new pod, cycling through
// workload.Fresh names, so that no pair finds its owner cached in the
// block by the pair before.
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
			reqs := workload.FreshArgs(p, "default/bench", node)
			for i := range reqs {
				reqs[i].Attrs = map[string]string{"namespace": "default", "pod": fmt.Sprintf("bench-%d", i)}
			}
			timePairs(b, a, reqs)
		})
	}
}

// BenchmarkAllocReleaseRacks is the steady-state pair in a cluster with a
// pool per rack, chosen by nodeSelector (rack == "r<i>"), as in
// examples/multipool, so the pools are chosen by their selectors each
// time. With labels=given the node's labels come with every request, as a
// node agent that knows them passes them; with labels=stored they were
// stored once (SetNodeLabels) and requests give none.
//
// With namespaces=8 the requests also carry their namespace's labels,
// from 8 namespaces in turn, as pods of several namespaces on one node
// do; no pool's namespaceSelector reads them.
func BenchmarkAllocReleaseRacks(b *testing.B) {
	for _, racks := range []int{4, 32} {
		for _, namespaces := range []int{0, 8} {
			for _, labels := range []string{"given", "stored"} {
				b.Run(fmt.Sprintf("racks=%d/namespaces=%d/labels=%s", racks, namespaces, labels), func(b *testing.B) {
					benchRacks(b, racks, namespaces, labels == "stored")
				})
			}
		}
	}
}

func benchRacks(b *testing.B, racks, namespaces int, stored bool) {
	a, args := rackCluster(b, racks, stored)
	reqs := []ipam.AutoAssignArgs{args}
	if namespaces > 0 {
		reqs = reqs[:0]
		for i := range namespaces {
			r := args
			r.NamespaceLabels = selector.Set{"kubernetes.io/metadata.name": fmt.Sprintf("ns-%d", i)}
			reqs = append(reqs, r)
		}
	}
	timePairs(b, a, reqs)
}

// rackCluster returns an allocator with a /16 pool per rack, each with a
// nodeSelector for its rack, and a request for one address by a node in
// rack 1, with the labels a Kubernetes node has, whose block is half full.
// With stored, the node's labels are stored (SetNodeLabels) and the
// request gives none.
func rackCluster(tb testing.TB, racks int, stored bool) (*ipam.Allocator, ipam.AutoAssignArgs) {
	tb.Helper()
	ctx := context.Background()
	a, err := ipam.New(memstore.New(), ipam.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	for i := range racks {
		p := pool.Pool{Name: fmt.Sprintf("rack-%d", i), CIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16),
			NodeSelector: fmt.Sprintf("rack == %q", fmt.Sprintf("r%d", i))}
		if err := a.CreatePool(ctx, p); err != nil {
			tb.Fatal(err)
		}
	}
	labels := selector.Set{"rack": "r1", "topology.kubernetes.io/zone": "zone-a", "kubernetes.io/hostname": workload.Node,
		"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/worker": ""}
	req := ipam.AutoAssignArgs{Num4: 1, Handle: "pod", Node: workload.Node, NodeLabels: labels}
	if stored {
		if err := a.SetNodeLabels(ctx, workload.Node, labels); err != nil {
			tb.Fatal(err)
		}
		req.NodeLabels = nil
	}
	half := req
	half.Num4, half.Handle = 32, "half"
	if _, err := a.AutoAssign(ctx, half); err != nil {
		tb.Fatal(err)
	}
	return a, req
}

// BenchmarkBatch times one AutoAssign of 10,000 addresses under one handle
// and its ReleaseByHandle, and of 50,000, to show that the cost per
// address does not grow with the batch. The node has claimed its blocks
// (157 and 782) in an untimed first round (workload.Batched); the timed
// rounds reuse them, as a node does. BenchmarkFirstBatch times the claims.
func BenchmarkBatch(b *testing.B) {
	for _, n := range []int{10000, 50000} {
		for _, p := range workload.Pools {
			b.Run(fmt.Sprintf("pool=%s/n=%d", p.Name, n), func(b *testing.B) {
				a := workload.Batched(b, memstore.New(), p, n)
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
	// The same with a new handle for every pair, as pods have.
	for _, p := range workload.Pools {
		t.Run("fresh/"+p.Name, func(t *testing.T) {
			a := workload.Filled(t, memstore.New(), p, 0)
			ctx := context.Background()
			reqs := workload.FreshArgs(p, "pod", workload.Node)
			i := 0
			allocs := testing.AllocsPerRun(200, func() {
				if err := workload.AllocRelease(ctx, a, reqs[i%len(reqs)]); err != nil {
					t.Fatal(err)
				}
				i++
			})
			t.Logf("%s, fresh handles: %.0f allocations per AutoAssign+ReleaseByHandle (budget %d)", p.Name, allocs, allocBudget)
			if allocs > allocBudget {
				t.Errorf("%s, fresh handles: %.1f allocations per AutoAssign+ReleaseByHandle, budget %d", p.Name, allocs, allocBudget)
			}
		})
	}
	// The same with pools chosen by nodeSelector and the node's labels
	// given with the request, or stored.
	for _, stored := range []bool{false, true} {
		t.Run(fmt.Sprintf("racks/stored=%v", stored), func(t *testing.T) {
			a, args := rackCluster(t, 4, stored)
			ctx := context.Background()
			allocs := testing.AllocsPerRun(200, func() {
				if err := workload.AllocRelease(ctx, a, args); err != nil {
					t.Fatal(err)
				}
			})
			t.Logf("racks: %.0f allocations per AutoAssign+ReleaseByHandle (budget %d)", allocs, allocBudget)
			if allocs > allocBudget {
				t.Errorf("racks: %.1f allocations per AutoAssign+ReleaseByHandle, budget %d", allocs, allocBudget)
			}
		})
	}
	// A dual-stack pod's pair: a result slice per family and the
	// released addresses; the handle record of two blocks is shared, as
	// one of a single block is.
	t.Run("dual-stack", func(t *testing.T) {
		a, args := dualCluster(t)
		ctx := context.Background()
		allocs := testing.AllocsPerRun(200, func() {
			if err := workload.AllocRelease(ctx, a, args); err != nil {
				t.Fatal(err)
			}
		})
		const budget = 3
		t.Logf("dual-stack: %.0f allocations per AutoAssign+ReleaseByHandle (budget %d)", allocs, budget)
		if allocs > budget {
			t.Errorf("dual-stack: %.1f allocations per AutoAssign+ReleaseByHandle, budget %d", allocs, budget)
		}
	})
}
