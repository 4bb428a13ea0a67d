package etcdstore_test

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
	"github.com/carve-ipam/carve/pool"
)

// TestNewHandleAcrossClients races requests with NewHandle under one handle
// from allocators on separate etcd clients, as separate CNI plugin
// processes would be: in every round exactly one assigns, on a node's
// existing block and on a node that must claim its first, with AutoAssign
// and, every third round, with AssignIPs of two addresses of each
// client's own (a pod's ipAddrs), all of which the winner gets.
func TestNewHandleAcrossClients(t *testing.T) {
	const clients, rounds = 4, 12
	prefix := freshPrefix()
	ctx := t.Context()
	var allocs []*ipam.Allocator
	for i := range clients {
		a, err := ipam.New(newStore(t, newClient(t), etcdstore.Options{Prefix: prefix}), ipam.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := a.CreatePool(ctx, pool.Pool{Name: "p", CIDR: netip.MustParsePrefix("10.2.0.0/16")}); err != nil {
				t.Fatal(err)
			}
		}
		allocs = append(allocs, a)
	}
	for round := range rounds {
		handle := fmt.Sprintf("k8s-pod-network.%d", round)
		node := "warm"
		if round%2 == 1 {
			node = fmt.Sprintf("cold-%d", round)
		}
		var wg sync.WaitGroup
		won := make([]bool, clients)
		errs := make([]error, clients)
		for i, a := range allocs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var err error
				if round%3 == 2 {
					fixed := []netip.Addr{netip.AddrFrom4([4]byte{10, 2, byte(100 + round), byte(2 * i)}), netip.AddrFrom4([4]byte{10, 2, 200, byte(16*round + i)})}
					_, err = a.AssignIPs(ctx, ipam.AssignIPsArgs{Addrs: fixed, Handle: handle, Node: node, NewHandle: true})
				} else {
					_, err = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: handle, Node: node, NewHandle: true})
				}
				switch {
				case err == nil:
					won[i] = true
				case !errors.Is(err, ipam.ErrHandleExists):
					errs[i] = err
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, w := range won {
			if w {
				n++
			}
		}
		want := 1
		if round%3 == 2 {
			want = 2
		}
		got, err := allocs[0].AssignedByHandle(ctx, handle)
		if n != 1 || err != nil || got.Len() != want {
			t.Fatalf("%s: %d requests assigned; the handle holds %v, %v; want one", handle, n, got, err)
		}
	}
	r, err := allocs[0].Check(ctx)
	if err != nil || !r.Clean() {
		t.Fatalf("Check: %v, %v", r, err)
	}
}
