package etcdstore_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
)

// benchPool is big enough that no benchmark runs out of blocks.
var benchPool = pool.Pool{Name: "bench", CIDR: netip.MustParsePrefix("10.0.0.0/16"), BlockSize: 26}

// benchNode is one node of a benchmark: its own etcd client, store (with
// its own watch) and allocator, as in a process of its own, with its
// store's calls counted.
type benchNode struct {
	name  string
	a     *ipam.Allocator
	store ipam.Store // the counting store
}

func newBenchNode(b *testing.B, prefix, name string) *benchNode {
	b.Helper()
	s := storetest.NewCountingStore(newStore(b, newClient(b), etcdstore.Options{Prefix: prefix}))
	// The counting store offers BlockKeeper, which etcdstore does not: the
	// allocator sees the store as etcdstore is (see asEtcd).
	a, err := ipam.New(asEtcd{s, s.(ipam.Generations), s.(ipam.Committer)}, ipam.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return &benchNode{name: name, a: a, store: s}
}

// asEtcd shows a counting store's capabilities as etcdstore has them:
// Generations and Committer, not BlockKeeper (a store that keeps blocks is
// in the allocator's process, and gets no memo of handle records).
type asEtcd struct {
	ipam.Store
	ipam.Generations
	ipam.Committer
}

// cycle assigns one IPv4 address to a new handle and releases it.
func (n *benchNode) cycle(ctx context.Context, i int) error {
	h := fmt.Sprintf("%s-pod-%d", n.name, i)
	if _, err := n.a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: h, Node: n.name}); err != nil {
		return err
	}
	_, err := n.a.ReleaseByHandle(ctx, h)
	return err
}

func (n *benchNode) counts() storetest.Counts {
	c, _ := storetest.CountsOf(n.store)
	return c
}

// benchScene creates the pool under a fresh prefix and returns nodes on
// it, each warmed up: it has claimed its block and filled its caches.
func benchScene(b *testing.B, nodes int) []*benchNode {
	b.Helper()
	prefix := freshPrefix()
	var out []*benchNode
	for i := range nodes {
		out = append(out, newBenchNode(b, prefix, fmt.Sprintf("node-%d", i)))
	}
	if err := out[0].a.CreatePool(b.Context(), benchPool); err != nil {
		b.Fatal(err)
	}
	for _, n := range out {
		if err := n.cycle(b.Context(), -1); err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// BenchmarkAutoAssignRelease measures one AutoAssign of an IPv4 address
// and the ReleaseByHandle of its handle, on one node in the steady state
// (its block claimed), against etcd on loopback: latency percentiles and
// store round trips per cycle.
func BenchmarkAutoAssignRelease(b *testing.B) {
	n := benchScene(b, 1)[0]
	ctx := b.Context()
	before := n.counts()
	var lat []time.Duration
	i := 0
	for b.Loop() {
		start := time.Now()
		if err := n.cycle(ctx, i); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		i++
	}
	c := n.counts().Sub(before)
	b.ReportMetric(float64(c.Total())/float64(i), "roundtrips/op")
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// BenchmarkThroughput runs assign-and-release cycles on 1 and 8 nodes at
// once, each with its own client, store and allocator; ns/op is wall time
// per cycle across all nodes, and cycles/s the cluster-wide throughput.
func BenchmarkThroughput(b *testing.B) {
	for _, nodes := range []int{1, 8} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			ns := benchScene(b, nodes)
			ctx := b.Context()
			var before storetest.Counts
			for _, n := range ns {
				before = before.Add(n.counts())
			}
			// b.N cycles shared out among the nodes: b.Loop times one
			// goroutine, and here the work is spread over several.
			var next atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, nodes)
			b.ResetTimer()
			start := time.Now()
			for _, n := range ns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						if err := n.cycle(ctx, int(i)); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			var after storetest.Counts
			for _, n := range ns {
				after = after.Add(n.counts())
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "cycles/s")
			b.ReportMetric(float64(after.Sub(before).Total())/float64(b.N), "roundtrips/op")
		})
	}
}
