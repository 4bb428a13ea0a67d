package benchmarks

import (
	"context"
	"fmt"
	"testing"

	"github.com/carve-ipam/carve/benchmarks/internal/workload"
	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
)

// BenchmarkStoreOps counts the store round trips of one AutoAssign of one
// address (storeops/op), and of what the iteration does after it to return
// to the same state (release-storeops/op), through storetest's counting
// store on memstore:
//
//   - op=steady: the node's block has room; then ReleaseByHandle.
//   - op=claim: a new node's first AutoAssign claims a block in a pool
//     filled to fill percent (as BenchmarkClaim's); then ReleaseByHandle
//     and ReleaseHostAffinities. In a crowded /16 the node's walk meets
//     blocks other nodes hold, and at 99% falls back to listing the
//     pool's blocks, which costs round trips of its own.
//   - op=borrow: every block of the pool is claimed by another node and
//     half full, so the node borrows; then ReleaseByHandle.
//
// The time includes the counting wrapper and the snapshots around
// AutoAssign; BenchmarkAllocRelease and BenchmarkClaim time the same work
// without them.
func BenchmarkStoreOps(b *testing.B) {
	ctx := context.Background()
	for _, p := range workload.Pools {
		b.Run(fmt.Sprintf("op=steady/pool=%s", p.Name), func(b *testing.B) {
			store := storetest.NewCountingStore(memstore.New())
			a := workload.Filled(b, store, p, 0)
			assign, release := podPair(ctx, a, p.Args(1, "pod", workload.Node))
			benchStoreOps(b, store, assign, release)
		})
	}
	for _, p := range workload.Pools {
		for _, fill := range workload.Fills {
			b.Run(fmt.Sprintf("op=claim/pool=%s/fill=%d", p.Name, fill), func(b *testing.B) {
				store := storetest.NewCountingStore(memstore.New())
				a := workload.Filled(b, store, p, fill)
				node := func(i int) string { return fmt.Sprintf("new-node-%d", i) }
				benchStoreOps(b, store, func(i int) error {
					_, err := a.AutoAssign(ctx, p.Args(1, node(i), node(i)))
					return err
				}, func(i int) error {
					if _, err := a.ReleaseByHandle(ctx, node(i)); err != nil {
						return err
					}
					_, err := a.ReleaseHostAffinities(ctx, node(i), false)
					return err
				})
			})
		}
	}
	for _, p := range []workload.Pool{workload.V4Small, workload.V4} {
		b.Run(fmt.Sprintf("op=borrow/pool=%s", p.Name), func(b *testing.B) {
			store := storetest.NewCountingStore(memstore.New())
			a := workload.New(b, store, p)
			blocks := (1 << (p.CIDR.Addr().BitLen() - p.CIDR.Bits())) / p.BlockAddrs()
			for i := range blocks {
				node := fmt.Sprintf("fill-node-%d", i)
				if _, err := a.AutoAssign(ctx, p.Args(p.BlockAddrs()/2, node, node)); err != nil {
					b.Fatal(err)
				}
			}
			args := p.Args(1, "pod", workload.Node)
			checkBorrows(b, a, args)
			assign, release := podPair(ctx, a, args)
			benchStoreOps(b, store, assign, release)
		})
	}
}

// podPair returns the AutoAssign of args and the ReleaseByHandle of its
// handle, as benchStoreOps takes them.
func podPair(ctx context.Context, a *ipam.Allocator, args ipam.AutoAssignArgs) (assign, release func(int) error) {
	assign = func(int) error {
		_, err := a.AutoAssign(ctx, args)
		return err
	}
	release = func(int) error {
		_, err := a.ReleaseByHandle(ctx, args.Handle)
		return err
	}
	return assign, release
}

// checkBorrows fails b unless an IPv4 request with args is served from
// another node's block.
func checkBorrows(b *testing.B, a *ipam.Allocator, args ipam.AutoAssignArgs) {
	b.Helper()
	ctx := context.Background()
	res, err := a.AutoAssign(ctx, args)
	if err != nil {
		b.Fatal(err)
	}
	blk, err := a.Block(ctx, res.IPv4[0].Block)
	if err != nil {
		b.Fatal(err)
	}
	if blk.Affinity() == block.Host(args.Node) {
		b.Fatalf("node %s claimed block %s instead of borrowing", args.Node, res.IPv4[0].Block)
	}
	if _, err := a.ReleaseByHandle(ctx, args.Handle); err != nil {
		b.Fatal(err)
	}
}

// benchStoreOps runs iterations i = 0, 1, ...: assign(i) is counted as
// storeops/op, release(i) as release-storeops/op.
func benchStoreOps(b *testing.B, store ipam.Store, assign, release func(i int) error) {
	b.Helper()
	var assignOps, releaseOps int64
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c0, _ := storetest.CountsOf(store)
		if err := assign(i); err != nil {
			b.Fatal(err)
		}
		c1, _ := storetest.CountsOf(store)
		if err := release(i); err != nil {
			b.Fatal(err)
		}
		c2, _ := storetest.CountsOf(store)
		assignOps += c1.Sub(c0).Total()
		releaseOps += c2.Sub(c1).Total()
		i++
	}
	b.ReportMetric(float64(assignOps)/float64(b.N), "storeops/op")
	b.ReportMetric(float64(releaseOps)/float64(b.N), "release-storeops/op")
}
