// Command multipool shows how carve chooses among several IP pools, as the
// seed documents configure Calico:
//
//   - one pool per rack, chosen by nodeSelector (rack == "0"), so that each
//     rack's pod addresses aggregate into the rack's own range; the nodes'
//     labels are stored once (Allocator.SetNodeLabels, as a controller
//     that follows Kubernetes node labels would), and requests leave
//     NodeLabels out;
//   - a Manual pool (extra-ippool) that matches every node but is used only
//     when a request names it;
//   - pools asked for by name, as Calico's cni.projectcalico.org/ipv4pools
//     annotation does on a namespace or a pod (the pod's wins): the names go
//     into AutoAssignArgs.IPv4Pools and override selectors and Manual mode;
//   - what the error says when no pool qualifies for a node (a
//     *pool.NoPoolError, found with errors.As, explaining each pool), and the
//     fix: a pool for the new rack;
//   - a pool split in two for another rack (Allocator.SplitPool, Calico's
//     calicoctl ipam split) while its first half is in use: the blocks
//     stay where they are, and each half gets its own nodeSelector.
//
// Run it with
//
//	go run ./examples/multipool
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"slices"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "multipool:", err)
		os.Exit(1)
	}
}

// The annotation Calico's CNI plugin reads on namespaces and pods: a JSON
// list of pool names, in order of preference.
const ipv4PoolsAnnotation = "cni.projectcalico.org/ipv4pools"

// nodes and their labels (kubectl label nodes node-a1 rack=0).
var nodes = map[string]map[string]string{
	"node-a1": {"rack": "0"},
	"node-a2": {"rack": "0"},
	"node-b1": {"rack": "1"},
	"node-c1": {"rack": "2"}, // a new rack, without a pool yet
	"node-d1": {"rack": "3"}, // another, which gets half of rack 2's pool
}

// namespaceAnnotations are the namespaces' annotations
// (kubectl annotate namespace test-ns cni.projectcalico.org/ipv4pools='["extra-ippool"]').
var namespaceAnnotations = map[string]map[string]string{
	"default": nil,
	"test-ns": {ipv4PoolsAnnotation: `["extra-ippool"]`},
}

type pod struct {
	namespace, name, node string
	annotations           map[string]string
}

func run(ctx context.Context, w io.Writer) error {
	a, err := ipam.New(memstore.New(), ipam.Options{})
	if err != nil {
		return err
	}

	fmt.Fprintln(w, "Nodes (their labels stored with SetNodeLabels)")
	for _, node := range slices.Sorted(maps.Keys(nodes)) {
		if err := a.SetNodeLabels(ctx, node, nodes[node]); err != nil {
			return err
		}
		fmt.Fprintf(w, "  %s  rack=%s\n", node, nodes[node]["rack"])
	}

	fmt.Fprintln(w, "\nPools")
	for _, p := range []pool.Pool{
		{Name: "rack-0", CIDR: netip.MustParsePrefix("10.10.0.0/22"), NodeSelector: `rack == "0"`},
		{Name: "rack-1", CIDR: netip.MustParsePrefix("10.10.4.0/22"), NodeSelector: `rack == "1"`},
		{Name: "extra-ippool", CIDR: netip.MustParsePrefix("192.168.0.0/20"), AssignmentMode: pool.Manual},
	} {
		if err := createPool(ctx, w, a, p); err != nil {
			return err
		}
	}

	fmt.Fprintln(w, "\n1. Pods get addresses from their rack's pool (nodeSelector); extra-ippool")
	fmt.Fprintln(w, "   matches every node but is Manual, so nobody gets it without asking")
	if err := assign(ctx, w, a, []pod{
		{namespace: "default", name: "web-0", node: "node-a1"},
		{namespace: "default", name: "web-1", node: "node-a2"},
		{namespace: "default", name: "web-2", node: "node-b1"},
		{namespace: "default", name: "db-0", node: "node-b1"},
	}); err != nil {
		return err
	}

	fmt.Fprintln(w, "\n2. Pools asked for by name: test-ns is annotated", namespaceAnnotations["test-ns"][ipv4PoolsAnnotation]+";")
	fmt.Fprintln(w, "   a pod's own annotation wins over its namespace's and bypasses nodeSelector")
	if err := assign(ctx, w, a, []pod{
		{namespace: "test-ns", name: "app-0", node: "node-a1"},
		{namespace: "test-ns", name: "app-1", node: "node-b1"},
		{namespace: "test-ns", name: "special", node: "node-a2", annotations: map[string]string{ipv4PoolsAnnotation: `["rack-1"]`}},
	}); err != nil {
		return err
	}

	fmt.Fprintln(w, "\n3. A name that is not a pool fails instead of falling back to the selectors")
	err = assign(ctx, w, a, []pod{{namespace: "default", name: "typo", node: "node-a1",
		annotations: map[string]string{ipv4PoolsAnnotation: `["extra-pool"]`}}})
	if err := explain(w, err); err != nil {
		return err
	}

	fmt.Fprintln(w, "\n4. No pool qualifies for node-c1 (rack=2)")
	newRack := []pod{{namespace: "default", name: "web-3", node: "node-c1"}}
	if err := explain(w, assign(ctx, w, a, newRack)); err != nil {
		return err
	}
	fmt.Fprintln(w, "   The fix: a pool for rack 2")
	if err := createPool(ctx, w, a, pool.Pool{Name: "rack-2", CIDR: netip.MustParsePrefix("10.10.8.0/22"), NodeSelector: `rack == "2"`}); err != nil {
		return err
	}
	if err := assign(ctx, w, a, newRack); err != nil {
		return err
	}

	fmt.Fprintln(w, "\n5. Rack 3 arrives and rack 2 needs only half its /22: split rack-2 in two")
	fmt.Fprintln(w, "   (one write; node-c1's block stays where it is, in the upper half)")
	parts, err := a.SplitPool(ctx, "rack-2", "rack-3", "rack-2")
	if err != nil {
		return err
	}
	parts[0].NodeSelector = `rack == "3"`
	if err := a.UpdatePool(ctx, parts[0]); err != nil {
		return err
	}
	for _, p := range parts {
		fmt.Fprintf(w, "  %-12s  %-15s  nodeSelector %-11s  %s\n", p.Name, p.CIDR, p.NodeSelector, p.AssignmentMode)
	}
	if err := assign(ctx, w, a, []pod{
		{namespace: "default", name: "web-4", node: "node-c1"},
		{namespace: "default", name: "web-5", node: "node-d1"},
	}); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nBlocks (node-a2, in rack 0, holds a block of rack-1: a pool named in a request")
	fmt.Fprintln(w, "is used whatever its nodeSelector says, as in Calico)")
	u, err := a.Utilization(ctx)
	if err != nil {
		return err
	}
	for _, p := range u {
		for _, b := range p.Blocks {
			fmt.Fprintf(w, "  %-12s  %-17s  %-12s  %d in use\n", p.Name, b.Prefix, b.Affinity, b.InUse)
		}
	}
	return nil
}

// createPool creates p and prints it.
func createPool(ctx context.Context, w io.Writer, a *ipam.Allocator, p pool.Pool) error {
	if err := a.CreatePool(ctx, p); err != nil {
		return err
	}
	p = p.WithDefaults()
	fmt.Fprintf(w, "  %-12s  %-15s  nodeSelector %-11s  %s\n", p.Name, p.CIDR, p.NodeSelector, p.AssignmentMode)
	return nil
}

// assign gives each pod one IPv4 address, from the pools its annotations
// name, or else from the pools whose selectors match its node, and prints
// what it got. It stops at the first error.
func assign(ctx context.Context, w io.Writer, a *ipam.Allocator, pods []pod) error {
	for _, p := range pods {
		named, err := requestedPools(p)
		if err != nil {
			return err
		}
		// No NodeLabels: the request is served with the node's stored ones.
		res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{
			Num4:      1,
			Handle:    p.namespace + "/" + p.name,
			Node:      p.node,
			IPv4Pools: named,
			Attrs:     map[string]string{"namespace": p.namespace, "pod": p.name},
		})
		if err != nil {
			return err
		}
		addr := res.IPv4[0]
		how := "by nodeSelector"
		if len(named) > 0 {
			how = fmt.Sprintf("IPv4Pools: %q", named)
		}
		fmt.Fprintf(w, "  %-15s on %s (rack=%s)  %-17s from %-12s  %s\n",
			p.namespace+"/"+p.name, p.node, nodes[p.node]["rack"], addr.Prefix(), addr.Pool, how)
	}
	return nil
}

// requestedPools returns the pools a pod asks for by annotation, its own or
// else its namespace's, as Calico's CNI plugin reads them; nil when neither
// is annotated.
func requestedPools(p pod) ([]string, error) {
	v, ok := p.annotations[ipv4PoolsAnnotation]
	if !ok {
		v, ok = namespaceAnnotations[p.namespace][ipv4PoolsAnnotation]
	}
	if !ok {
		return nil, nil
	}
	var names []string
	if err := json.Unmarshal([]byte(v), &names); err != nil {
		return nil, fmt.Errorf("pod %s/%s: annotation %s: %w", p.namespace, p.name, ipv4PoolsAnnotation, err)
	}
	return names, nil
}

// explain prints why no pool qualified, pool by pool, and returns any other
// error (or a nil one, which is unexpected here).
func explain(w io.Writer, err error) error {
	var noPool *pool.NoPoolError
	if !errors.As(err, &noPool) {
		return fmt.Errorf("expected a *pool.NoPoolError, got %v", err)
	}
	fmt.Fprintf(w, "  error: %v\n", err)
	fmt.Fprintln(w, "  errors.As(err, &noPool), noPool.Rejections:")
	for _, r := range noPool.Rejections {
		fmt.Fprintf(w, "    %-17s %s\n", r.Reason, r)
	}
	return nil
}
