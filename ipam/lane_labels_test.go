package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

// A review of the lane's memo for labeled requests (lane.go: remakeMemo,
// fits): label shapes the memo must tell apart or take as equal,
// labels changed by the caller after a request, requests of one node with
// different labels at once, and what other labels cost.

// labelPools are pools whose selectors read node and namespace labels:
// a4 for rack a, b4 for any node but not namespaces of team x, c4 for
// team x only.
var labelPools = []pool.Pool{
	{Name: "a4", CIDR: netip.MustParsePrefix("10.0.0.0/28"), BlockSize: 30, NodeSelector: `rack == "a"`},
	{Name: "b4", CIDR: netip.MustParsePrefix("10.0.1.0/28"), BlockSize: 30, NamespaceSelector: `team != "x"`},
	{Name: "c4", CIDR: netip.MustParsePrefix("10.0.2.0/28"), BlockSize: 30, NamespaceSelector: `team == "x"`},
}

// TestLaneLabelShapes gives, with the lane on and off, one node requests
// whose labels take every shape the memo distinguishes (nil, a nil or
// empty Set, labels no selector reads, other Labels types, the same map
// changed between requests), and requires the same answers and records.
func TestLaneLabelShapes(t *testing.T) {
	cfg := ipam.Config{AutoAllocateBlocks: true, MaxBlocksPerHost: 4}
	d := newLaneDiff(t, cfg, labelPools, true)
	n := 0
	req := func(node, ns selector.Labels) {
		n++
		handle := fmt.Sprintf("h%d", n%5)
		d.assign(t, 0, ipam.AutoAssignArgs{Num4: 1, Handle: handle, Node: "n0", NodeLabels: node, NamespaceLabels: ns})
		if n%2 == 0 {
			d.release(t, 0, handle)
		}
	}
	rackA := selector.Set{"rack": "a"}
	shared := selector.Set{"rack": "a", "zone": "z1"}
	shapes := []struct {
		name     string
		node, ns selector.Labels
	}{
		{"none", nil, nil},
		{"nil Set", selector.Set(nil), selector.Set(nil)},
		{"empty Set", selector.Set{}, selector.Set{}},
		{"nil otherLabels", otherLabels(nil), nil},
		{"rack a", rackA, nil},
		{"rack a, another key", selector.Set{"rack": "a", "zone": "z9"}, nil},
		{"rack a, empty value", selector.Set{"rack": "a", "zone": ""}, nil},
		{"rack a as otherLabels", otherLabels{"rack": "a"}, nil},
		{"rack a as *Set", &rackA, nil},
		{"rack a, team x", rackA, selector.Set{"team": "x"}},
		{"rack a, team y", rackA, selector.Set{"team": "y"}},
		{"rack a, team x as otherLabels", rackA, otherLabels{"team": "x"}},
		{"rack b, team x", selector.Set{"rack": "b"}, selector.Set{"team": "x"}},
		{"rack b", selector.Set{"rack": "b"}, nil},
		{"shared map", shared, nil},
	}
	for round := range 3 {
		for _, s := range shapes {
			// Each shape twice: the second finds the memo made for it.
			req(s.node, s.ns)
			req(s.node, s.ns)
		}
		// The caller changes its map after a request: the memo must not
		// see the change, nor miss it.
		shared["rack"] = "b"
		req(shared, nil)
		delete(shared, "rack")
		req(shared, nil)
		shared["rack"] = "a"
		req(shared, nil)
		if round == 1 {
			// Selectors changed: the view check must catch it.
			d.change(t, 0, "a4 selects rack b", nodeSelector("a4", `rack == "b"`))
		}
	}
	require.Positive(t, d.trace.served)
	t.Logf("the lane served %d requests, and went on in autoAssign for %d", d.trace.served, d.trace.resumed)
}

// TestLaneLabelsConcurrent has two goroutines ask one allocator for
// addresses of one node at once, one with labels that choose pool a4 and
// one with labels that choose b4, so that the node's memo is replaced
// under both: each address must come from the pool its request's labels
// choose. Run it with -race.
func TestLaneLabelsConcurrent(t *testing.T) {
	ctx := context.Background()
	a, err := ipam.New(memstore.New(), ipam.Options{})
	require.NoError(t, err)
	require.NoError(t, a.SetConfig(ctx, ipam.Config{AutoAllocateBlocks: true}))
	for _, p := range []pool.Pool{
		{Name: "a4", CIDR: netip.MustParsePrefix("10.0.0.0/24"), BlockSize: 28, NodeSelector: `rack == "a"`},
		{Name: "b4", CIDR: netip.MustParsePrefix("10.0.1.0/24"), BlockSize: 28, NodeSelector: `rack == "b"`},
	} {
		require.NoError(t, a.CreatePool(ctx, p))
	}
	// The node holds an address in a block of each pool, so that neither
	// block is given up as unselected and the lane serves the requests.
	for _, rack := range []string{"a", "b"} {
		_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pin-" + rack, Node: "n0", NodeLabels: selector.Set{"rack": rack}})
		require.NoError(t, err)
	}
	var served atomic.Int64
	ipam.SetLaneTrace(a, func(bool) { served.Add(1) })
	var wg sync.WaitGroup
	for w, rack := range []string{"a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := rack + "4"
			for i := range 300 {
				h := fmt.Sprintf("w%d-%d", w, i)
				// A map of its own each time, or the same one changed.
				labels := selector.Set{"rack": rack, "n": fmt.Sprint(i % 3)}
				res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: h, Node: "n0", NodeLabels: labels})
				labels["rack"] = "changed"
				if err != nil {
					t.Error(err)
					return
				}
				for _, x := range res.IPv4 {
					if x.Pool != want {
						t.Errorf("rack %s got %v from pool %s", rack, x.Addr, x.Pool)
					}
				}
				if _, err := a.ReleaseByHandle(ctx, h); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("the lane served %d of 600 requests", served.Load())
	require.Greater(t, served.Load(), int64(300), "requests the lane served")
	rep, err := a.Check(ctx)
	require.NoError(t, err)
	require.True(t, rep.Clean(), "%+v", rep.Problems)
}

// TestLaneOtherLabelsCostNoMore measures the steady-state pair on one
// node whose consecutive requests carry different labels that choose the
// same pools: pods of different namespaces (NamespaceLabels) in a cluster
// with a pool chosen by namespace, node labels that differ in a key no
// selector reads, and Labels of a type other than selector.Set. The lane
// must not cost more allocations than AutoAssign without it: choosing the
// pools again needs none, and the memo stands for the same pools.
func TestLaneOtherLabelsCostNoMore(t *testing.T) {
	ctx := context.Background()
	node := selector.Set{"kubernetes.io/hostname": "n0", "rack": "a", "zone": "z1"}
	other := selector.Set{"kubernetes.io/hostname": "n0", "rack": "a", "zone": "z2"}
	nsA := selector.Set{"kubernetes.io/metadata.name": "a"}
	nsB := selector.Set{"kubernetes.io/metadata.name": "b"}
	for _, tc := range []struct {
		name   string
		labels func(i int) (node, ns selector.Labels)
	}{
		{"namespaces", func(i int) (selector.Labels, selector.Labels) {
			if i%2 == 0 {
				return node, nsA
			}
			return node, nsB
		}},
		{"node labels no selector reads", func(i int) (selector.Labels, selector.Labels) {
			if i%2 == 0 {
				return node, nil
			}
			return other, nil
		}},
		{"other Labels type", func(int) (selector.Labels, selector.Labels) {
			return otherLabels(node), otherLabels(nsA)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var allocs [2]float64
			for k, lane := range []bool{true, false} {
				a, err := ipam.New(memstore.New(), ipam.Options{})
				require.NoError(t, err)
				ipam.SetLane(a, lane)
				require.NoError(t, a.SetConfig(ctx, ipam.Config{AutoAllocateBlocks: true}))
				for _, p := range []pool.Pool{
					{Name: "rack-a", CIDR: netip.MustParsePrefix("10.0.0.0/16"), NodeSelector: `rack == "a"`},
					{Name: "rack-b", CIDR: netip.MustParsePrefix("10.1.0.0/16"), NodeSelector: `rack == "b"`},
					{Name: "team-x", CIDR: netip.MustParsePrefix("10.2.0.0/16"), NamespaceSelector: `team == "x"`},
				} {
					require.NoError(t, a.CreatePool(ctx, p))
				}
				_, err = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 3, Handle: "half", Node: "n0", NodeLabels: node})
				require.NoError(t, err)
				i := 0
				allocs[k] = testing.AllocsPerRun(200, func() {
					i++
					args := ipam.AutoAssignArgs{Num4: 1, Handle: "pod", Node: "n0"}
					args.NodeLabels, args.NamespaceLabels = tc.labels(i)
					res, err := a.AutoAssign(ctx, args)
					if err != nil || res.IPv4[0].Pool != "rack-a" {
						t.Fatal(res, err)
					}
					if _, err := a.ReleaseByHandle(ctx, "pod"); err != nil {
						t.Fatal(err)
					}
				})
			}
			t.Logf("allocations per pair: %.1f with the lane, %.1f without", allocs[0], allocs[1])
			require.LessOrEqual(t, allocs[0], allocs[1], "the lane allocates more than AutoAssign without it")
		})
	}
}
