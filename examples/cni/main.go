// Command cni shows the IPAM half of a CNI plugin on carve, the calls
// Calico's calico-ipam plugin makes, and how to make them safe to repeat:
//
//   - ADD: one IPv4 and one IPv6 address for a pod, under a handle named
//     after the container (Calico's "k8s-pod-network.<container ID>"),
//     with the pod's namespace and name as attributes. The request sets
//     NewHandle, so an ADD that runs again (the runtime timed out and
//     retried, or the plugin crashed after assigning) assigns nothing more:
//     it gets ErrHandleExists and answers with what the handle holds
//     (AssignedByHandle), in the same form.
//   - ADDs racing under one handle, on separate allocators as separate
//     plugin processes would be: exactly one assigns. A loser that finds
//     the winner's addresses not all written yet waits a moment and asks
//     again.
//   - A pod with Calico's ipAddrs annotation gets exactly those addresses,
//     one IPv4 and one IPv6, with AssignIPs: all or none, so a pod whose
//     IPv6 address is taken is not left holding its IPv4 one.
//   - DEL: ReleaseByHandle, where ErrHandleNotFound means the addresses
//     are gone already, so a repeated DEL succeeds, as CNI requires.
//
// Run it with
//
//	go run ./examples/cni
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "cni:", err)
		os.Exit(1)
	}
}

// pod is what a CNI invocation knows about its workload: the runtime's
// container ID (CNI_CONTAINERID) and, from CNI_ARGS, the pod, with the
// addresses its cni.projectcalico.org/ipAddrs annotation asks for.
type pod struct {
	containerID, namespace, name, node string
	ipAddrs                            []netip.Addr
}

// handle is the handle Calico's plugin uses for a container on the
// default network.
func (p pod) handle() string { return "k8s-pod-network." + p.containerID }

// add is the IPAM part of CNI ADD: it returns the pod's addresses, assigning
// them only if this container has none yet: the ones its annotation names,
// or else one of each family.
func add(ctx context.Context, a *ipam.Allocator, p pod) (ipam.AutoAssignResult, error) {
	attrs := map[string]string{"namespace": p.namespace, "pod": p.name}
	want4, want6 := 1, 1
	assign := func() (ipam.AutoAssignResult, error) {
		return a.AutoAssign(ctx, ipam.AutoAssignArgs{
			Num4: want4, Num6: want6, Handle: p.handle(), NewHandle: true, Node: p.node, Attrs: attrs,
		})
	}
	if len(p.ipAddrs) > 0 {
		want4, want6 = 0, 0
		for _, addr := range p.ipAddrs {
			if addr.Is4() {
				want4++
			} else {
				want6++
			}
		}
		assign = func() (ipam.AutoAssignResult, error) {
			return a.AssignIPs(ctx, ipam.AssignIPsArgs{
				Addrs: p.ipAddrs, Handle: p.handle(), NewHandle: true, Node: p.node, Attrs: attrs,
			})
		}
	}
	for wait := time.Millisecond; ; wait *= 2 {
		res, err := assign()
		if !errors.Is(err, ipam.ErrHandleExists) {
			return res, err
		}
		// An earlier ADD of this container assigned: answer as it did,
		// once it is complete. An ADD still running may have written its
		// IPv4 address and not yet its IPv6 one; one that fails gives the
		// handle up, and the next round assigns.
		res, err = a.AssignedByHandle(ctx, p.handle())
		switch {
		case err == nil && len(res.IPv4) == want4 && len(res.IPv6) == want6:
			return res, nil
		case err != nil && !errors.Is(err, ipam.ErrHandleNotFound):
			return res, err
		case wait > time.Second:
			return res, fmt.Errorf("ADD %s: an earlier ADD holds the handle but has not finished: %w", p.handle(), ipam.ErrHandleExists)
		}
		time.Sleep(wait)
	}
}

// del is the IPAM part of CNI DEL. Releasing what is gone already is
// success: the runtime may call DEL more than once.
func del(ctx context.Context, a *ipam.Allocator, p pod) ([]netip.Addr, error) {
	released, err := a.ReleaseByHandle(ctx, p.handle())
	if errors.Is(err, ipam.ErrHandleNotFound) {
		return nil, nil
	}
	return released, err
}

// result formats what ADD returns to the runtime, as Calico's IPAM plugin
// reports it: each address with its block's prefix length, or a
// host-length prefix for an address the pod asked for.
func result(res ipam.AutoAssignResult, p pod) string {
	var ips []string
	for _, x := range append(res.IPv4, res.IPv6...) {
		if len(p.ipAddrs) > 0 {
			ips = append(ips, netip.PrefixFrom(x.Addr, x.Addr.BitLen()).String())
		} else {
			ips = append(ips, x.Prefix().String())
		}
	}
	return strings.Join(ips, " ")
}

func run(ctx context.Context, w io.Writer) error {
	store := memstore.New()
	a, err := ipam.New(store, ipam.Options{})
	if err != nil {
		return err
	}
	for _, p := range []pool.Pool{
		{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/18")},
		{Name: "default-ipv6-ippool", CIDR: netip.MustParsePrefix("fd00:10:244::/48")},
	} {
		if err := a.CreatePool(ctx, p); err != nil {
			return err
		}
	}

	web := pod{containerID: "4f9a3c", namespace: "default", name: "web-0", node: "node-1"}
	fmt.Fprintln(w, "ADD", web.handle())
	first, err := add(ctx, a, web)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "  result:", result(first, web))

	fmt.Fprintln(w, "\nADD again (the runtime timed out and retried)")
	again, err := add(ctx, a, web)
	if err != nil {
		return err
	}
	held, err := a.IPsByHandle(ctx, web.handle())
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "  result:", result(again, web))
	fmt.Fprintf(w, "  same answer: %v; addresses under the handle: %d\n", result(again, web) == result(first, web), len(held))

	// Four plugin processes handling the same ADD at once, each with an
	// allocator of its own on the shared store.
	db := pod{containerID: "9c1e07", namespace: "default", name: "db-0", node: "node-2"}
	fmt.Fprintln(w, "\n4 ADDs at once for", db.handle())
	var wg sync.WaitGroup
	answers := make([]string, 4)
	errs := make([]error, 4)
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			plugin, err := ipam.New(store, ipam.Options{})
			if err != nil {
				errs[i] = err
				return
			}
			res, err := add(ctx, plugin, db)
			answers[i], errs[i] = result(res, db), err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	held, err = a.IPsByHandle(ctx, db.handle())
	if err != nil {
		return err
	}
	same := true
	for _, ans := range answers[1:] {
		same = same && ans == answers[0]
	}
	fmt.Fprintf(w, "  addresses under the handle: %d; all four answered %s: %v\n", len(held), answers[0], same)

	// Pods that ask for their addresses (cni.projectcalico.org/ipAddrs).
	cache := pod{containerID: "b2d810", namespace: "default", name: "cache-0", node: "node-2",
		ipAddrs: []netip.Addr{netip.MustParseAddr("10.244.63.10"), netip.MustParseAddr("fd00:10:244::10")}}
	fmt.Fprintln(w, "\nADD", cache.handle(), "with ipAddrs", cache.ipAddrs)
	res, err := add(ctx, a, cache)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "  result:", result(res, cache))
	again, err = add(ctx, a, cache)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "  ADD again:", result(again, cache))

	// This pod's IPv4 address is free but its IPv6 one is cache-0's: it
	// gets neither, and the error says which address stood in the way.
	clash := pod{containerID: "77ab02", namespace: "default", name: "cache-1", node: "node-1",
		ipAddrs: []netip.Addr{netip.MustParseAddr("10.244.63.11"), netip.MustParseAddr("fd00:10:244::10")}}
	fmt.Fprintln(w, "ADD", clash.handle(), "with ipAddrs", clash.ipAddrs)
	_, err = add(ctx, a, clash)
	var ae *ipam.AddrError
	if !errors.As(err, &ae) || !errors.Is(err, ipam.ErrInUse) {
		return fmt.Errorf("ADD %s: want the in-use address named, got %v", clash.handle(), err)
	}
	if _, err := a.Owner(ctx, clash.ipAddrs[0]); !errors.Is(err, ipam.ErrNotAllocated) {
		return fmt.Errorf("%s kept after a failed ADD: %v", clash.ipAddrs[0], err)
	}
	fmt.Fprintf(w, "  refused: %s is in use; %s was not kept\n", ae.Addr, clash.ipAddrs[0])

	fmt.Fprintln(w, "\nDEL", web.handle())
	released, err := del(ctx, a, web)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "  released:", released)
	fmt.Fprintln(w, "DEL again")
	released, err = del(ctx, a, web)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "  released:", released, "(nothing left: success)")

	// After DEL the handle holds nothing, so an ADD under it (a runtime
	// that reuses the container ID) is a new request and assigns again.
	fmt.Fprintln(w, "\nADD after DEL: the handle holds nothing, so it assigns again")
	res, err = add(ctx, a, web)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "  result:", result(res, web))
	return nil
}
