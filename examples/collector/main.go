// Command collector shows carve's leak collector (Calico's kube-controllers
// IPAM garbage collector, as a library) with the two liveness oracles a
// Kubernetes cluster would give it:
//
//   - an allocation oracle that asks whether the owner of an address still
//     exists. Pods' addresses carry the pod's namespace and name as
//     attributes, set by the CNI plugin; LoadBalancer addresses carry the
//     Service's, set by the Service controller, and no node attribute at
//     all (they belong to the virtual owner "virtual:load-balancer"), so
//     an oracle that only knew pods would call every Service dead. A pod
//     name alone is not enough either: a StatefulSet pod deleted while its
//     node was down comes back under the same name on another node, with
//     another address, and the old one must go. So the oracle also
//     checks the pod's node and addresses, as Calico's does;
//   - a node oracle that asks whether a node still exists, so that the
//     blocks of a removed node are released, its last one too.
//
// An address whose owner is gone (a pod deleted while its node was down,
// so that CNI DEL never ran; a Service deleted while its controller was
// not running) becomes a suspect, and is released once it has stayed one
// for the grace period. Each pass lists its suspects and when they are
// due; a second collector in dry-run mode reports what a pass would
// release before it does. The example drives the clock by hand.
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
	"slices"
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
	pods     map[string]podInfo // by "namespace/name"
	services map[string]bool    // "namespace/name"
	nodes    map[string]bool
}

// podInfo is what the oracle needs of a pod: spec.nodeName and
// status.podIPs.
type podInfo struct {
	node string
	ips  []netip.Addr
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
		p, ok := c.pods[ns+"/"+al.Attrs[attrPod]]
		// The pod of that name must be the one the address was assigned
		// for: on its node and, once it reports addresses, holding this one.
		return ok && p.node == al.Attrs[ipam.AttrNode] && (len(p.ips) == 0 || slices.Contains(p.ips, al.Addr)), nil
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

func (c *cluster) removePod(name string) {
	c.mu.Lock()
	delete(c.pods, name)
	c.mu.Unlock()
}

func (c *cluster) removeService(name string) {
	c.mu.Lock()
	delete(c.services, name)
	c.mu.Unlock()
}

func (c *cluster) removeNode(name string) {
	c.mu.Lock()
	delete(c.nodes, name)
	c.mu.Unlock()
}

// owner names an allocation's owner from its attributes.
func owner(al ipam.Allocation) string {
	if svc := al.Attrs[attrService]; svc != "" {
		return "Service " + al.Attrs[attrNamespace] + "/" + svc
	}
	return "pod " + al.Attrs[attrNamespace] + "/" + al.Attrs[attrPod] + " on " + al.Attrs[ipam.AttrNode]
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

	k8s := &cluster{pods: map[string]podInfo{}, services: map[string]bool{}, nodes: map[string]bool{}}
	// startPod runs a pod as the kubelet and the CNI plugin would: the
	// handle is the container's (here a counter), the pod's IPs are
	// reported once assigned.
	containers := 0
	startPod := func(ns, name, node string) error {
		containers++
		k8s.mu.Lock()
		k8s.nodes[node] = true
		k8s.mu.Unlock()
		res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{
			Num4: 1, Handle: fmt.Sprintf("k8s-pod-network.c%02d", containers), Node: node,
			Attrs: map[string]string{attrNamespace: ns, attrPod: name},
		})
		if err != nil {
			return err
		}
		k8s.mu.Lock()
		k8s.pods[ns+"/"+name] = podInfo{node: node, ips: []netip.Addr{res.IPv4[0].Addr}}
		k8s.mu.Unlock()
		fmt.Fprintf(w, "  pod     %-20s %-8s %-14s %s\n", ns+"/"+name, node, res.IPv4[0].Addr, fmt.Sprintf("k8s-pod-network.c%02d", containers))
		return nil
	}
	fmt.Fprintln(w, "Assign")
	for _, p := range [][3]string{
		{"default", "web-0", "node-1"},
		{"default", "web-1", "node-2"},
		{"batch", "report-7", "node-2"},
		{"default", "cache-0", "node-3"},
	} {
		if err := startPod(p[0], p[1], p[2]); err != nil {
			return err
		}
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
		fmt.Fprintf(w, "  service %-20s %-8s %-14s %s\n", "default/"+svc, "-", res.IPv4[0].Addr, "svc.default."+svc)
	}

	// What happens while nobody cleans up: node-2 is unreachable, so the
	// CNI DELs of its pods never run: batch/report-7 is deleted, and the
	// StatefulSet pod default/web-1 is force-deleted and started again on
	// node-1. default/legacy-api is deleted while the Service controller
	// is down. node-3 is removed from the cluster, its pod with it.
	fmt.Fprintln(w, "\nThe cluster changes while node-2 is unreachable")
	fmt.Fprintln(w, "  pod batch/report-7 deleted; pod default/web-1 force-deleted and started on node-1:")
	k8s.removePod("batch/report-7")
	k8s.removePod("default/web-1")
	if err := startPod("default", "web-1", "node-1"); err != nil {
		return err
	}
	fmt.Fprintln(w, "  Service default/legacy-api deleted; node-3 removed")
	k8s.removeService("default/legacy-api")
	k8s.removePod("default/cache-0")
	k8s.removeNode("node-3")

	// Beside the collector that releases, a dry-run one, which asks the
	// same questions and writes nothing, says what a pass would do: an
	// operator reads that report before letting a collector release.
	const grace = 15 * time.Minute // Calico's default
	opts := ipam.CollectorOptions{Grace: grace, Nodes: k8s.nodeExists}
	c, err := ipam.NewCollector(a, k8s.alive, opts)
	if err != nil {
		return err
	}
	opts.DryRun = true
	report, err := ipam.NewCollector(a, k8s.alive, opts)
	if err != nil {
		return err
	}
	for _, after := range []time.Duration{0, 10 * time.Minute, 6 * time.Minute} {
		clk.advance(after)
		r, err := report.Collect(ctx)
		if err != nil {
			return err
		}
		if len(r.Released)+len(r.GoneNodeBlocks) > 0 {
			fmt.Fprintf(w, "\nDry run at %s\n", clk.Now().Format("15:04"))
			printResult(w, r, grace)
		}
		r, err = c.Collect(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "\nCollect at %s\n", clk.Now().Format("15:04"))
		printResult(w, r, grace)
	}

	fmt.Fprintln(w, "\nStill assigned")
	for _, within := range []string{"10.244.0.0/18", "192.0.2.0/28"} {
		all, err := a.Allocations(ctx, netip.MustParsePrefix(within))
		if err != nil {
			return err
		}
		for _, al := range all {
			fmt.Fprintf(w, "  %-14s %-24s %s\n", al.Addr, al.Handle, owner(al))
		}
	}
	return nil
}

// printResult prints what a collector pass did, or would have done.
func printResult(w io.Writer, r ipam.CollectResult, grace time.Duration) {
	verb := "released"
	if r.DryRun {
		verb = "would release"
	}
	fmt.Fprintf(w, "  allocations %d, suspects %d, nodes gone %d\n", r.Allocations, len(r.Suspects), len(r.GoneNodes))
	for _, s := range r.Suspects {
		fmt.Fprintf(w, "  suspect  %-14s %-24s %-30s due %s\n", s.Addr, s.Handle, owner(s.Allocation), s.Since.Add(grace).Format("15:04"))
	}
	for _, n := range r.GoneNodes {
		fmt.Fprintf(w, "  gone     %-14s %d block(s) due %s\n", n.Name, len(n.Blocks), n.Since.Add(grace).Format("15:04"))
	}
	for _, al := range r.Released {
		fmt.Fprintf(w, "  %s %s %s (%s)\n", verb, al.Addr, al.Handle, owner(al))
	}
	for _, blk := range r.GoneNodeBlocks {
		fmt.Fprintf(w, "  %s block %s of a removed node\n", verb, blk)
	}
}
