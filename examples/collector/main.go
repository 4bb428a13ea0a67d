// Command collector shows carve's leak collector (Calico's kube-controllers
// IPAM garbage collector, as a library) with the two liveness oracles a
// Kubernetes cluster would give it:
//
//   - an allocation oracle that asks whether the owner of an address still
//     exists. Pods' addresses carry the pod's namespace and name as
//     attributes, set by the CNI plugin; LoadBalancer addresses carry the
//     Service's, set by the Service controller, and no node attribute at
//     all (they belong to the virtual owner "virtual:load-balancer"), so
//     an oracle that only knew pods would call every Service dead;
//   - a node oracle that asks whether a node still exists, so that the
//     blocks of a removed node are released, its last one too.
//
// An address whose owner is gone (a pod deleted while its node was down,
// so that CNI DEL never ran; a Service deleted while its controller was
// not running) becomes a suspect, and is released once it has stayed one
// for the grace period. The example drives the clock by hand.
//
// Run it with
//
//	go run ./examples/collector
package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "collector:", err)
		os.Exit(1)
	}
}

// cluster stands in for the Kubernetes API: the objects that exist.
type cluster struct {
	mu       sync.Mutex
	pods     map[string]bool // "namespace/name"
	services map[string]bool // "namespace/name"
	nodes    map[string]bool
}

// The attributes the assigning programs store with each address.
const (
	attrNamespace = "namespace"
	attrPod       = "pod"
	attrService   = "service"
)

// alive is the allocation oracle. It answers from the attributes: a pod's
// address by its pod, a Service's by its Service. An address it cannot
// place is kept (an error means "unknown", and unknown is alive).
func (c *cluster) alive(_ context.Context, al ipam.Allocation) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ns := al.Attrs[attrNamespace]
	switch {
	case al.Attrs[attrPod] != "":
		return c.pods[ns+"/"+al.Attrs[attrPod]], nil
	case al.Attrs[attrService] != "":
		return c.services[ns+"/"+al.Attrs[attrService]], nil
	}
	return false, fmt.Errorf("%s: no pod or Service attribute", al.Addr)
}

// nodeExists is the node oracle.
func (c *cluster) nodeExists(_ context.Context, node string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[node], nil
}

func (c *cluster) remove(set map[string]bool, name string) {
	c.mu.Lock()
	delete(set, name)
	c.mu.Unlock()
}

// clock is the example's time, advanced by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func run(ctx context.Context, w io.Writer) error {
	clk := &clock{now: time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)}
	a, err := ipam.New(memstore.New(), ipam.Options{Now: clk.Now})
	if err != nil {
		return err
	}
	for _, p := range []pool.Pool{
		{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/18")},
		{Name: "loadbalancer", CIDR: netip.MustParsePrefix("192.0.2.0/28"), BlockSize: 29, AllowedUses: []pool.Use{pool.UseLoadBalancer}},
	} {
		if err := a.CreatePool(ctx, p); err != nil {
			return err
		}
	}

	k8s := &cluster{pods: map[string]bool{}, services: map[string]bool{}, nodes: map[string]bool{}}
	fmt.Fprintln(w, "Assign")
	for _, p := range []struct{ ns, name, node string }{
		{"default", "web-0", "node-1"},
		{"default", "web-1", "node-2"},
		{"batch", "report-7", "node-2"},
		{"default", "cache-0", "node-3"},
	} {
		k8s.pods[p.ns+"/"+p.name], k8s.nodes[p.node] = true, true
		res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{
			Num4: 1, Handle: "k8s-pod-network." + p.ns + "." + p.name, Node: p.node,
			Attrs: map[string]string{attrNamespace: p.ns, attrPod: p.name},
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "  pod     %-20s %-8s %s\n", p.ns+"/"+p.name, p.node, res.IPv4[0].Addr)
	}
	for _, svc := range []string{"frontend", "legacy-api"} {
		k8s.services["default/"+svc] = true
		res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{
			Num4: 1, Handle: "svc.default." + svc, Use: pool.UseLoadBalancer,
			Attrs: map[string]string{attrNamespace: "default", attrService: svc},
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "  service %-20s %-8s %s\n", "default/"+svc, "-", res.IPv4[0].Addr)
	}

	// What happens while nobody cleans up: batch/report-7 is deleted while
	// node-2 is unreachable, so its CNI DEL never runs; default/legacy-api
	// is deleted while the Service controller is down; node-3 is removed
	// from the cluster, its pod with it.
	fmt.Fprintln(w, "\nThe cluster changes: pod batch/report-7 and Service default/legacy-api deleted, node-3 removed")
	k8s.remove(k8s.pods, "batch/report-7")
	k8s.remove(k8s.services, "default/legacy-api")
	k8s.remove(k8s.pods, "default/cache-0")
	k8s.remove(k8s.nodes, "node-3")

	const grace = 15 * time.Minute // Calico's default
	c, err := ipam.NewCollector(a, k8s.alive, ipam.CollectorOptions{Grace: grace, Nodes: k8s.nodeExists})
	if err != nil {
		return err
	}
	for _, after := range []time.Duration{0, 10 * time.Minute, 6 * time.Minute} {
		clk.advance(after)
		r, err := c.Collect(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "\nCollect at %s: allocations %d, suspects %d, nodes gone %d\n",
			clk.Now().Format("15:04"), r.Allocations, r.Suspects, r.GoneNodes)
		for _, al := range r.Released {
			fmt.Fprintf(w, "  released %-14s of %s\n", al.Addr, al.Handle)
		}
		for _, blk := range r.GoneNodeBlocks {
			fmt.Fprintf(w, "  released block %s of a removed node\n", blk)
		}
	}

	fmt.Fprintln(w, "\nStill assigned")
	for _, within := range []string{"10.244.0.0/18", "192.0.2.0/28"} {
		all, err := a.Allocations(ctx, netip.MustParsePrefix(within))
		if err != nil {
			return err
		}
		for _, al := range all {
			fmt.Fprintf(w, "  %-14s %s\n", al.Addr, al.Handle)
		}
	}
	return nil
}
