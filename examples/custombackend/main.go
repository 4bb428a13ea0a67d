// Command custombackend runs carve on a storage backend of its own: Store in
// store.go, a complete ipam.Store over a plain Go map kept in a JSON file,
// in under 200 lines. It is what a platform team writes to put carve on their
// own datastore: five methods with compare-and-swap on revisions that never
// repeat, key ranges listed in order, context checks, errors matching
// ipam.ErrNotFound, ipam.ErrExists and ipam.ErrConflict, safe for concurrent
// use, plus the optional ipam.Generations so that allocators can cache pools.
// (A datastore with multi-key transactions can offer ipam.Committer too,
// which makes an assignment one round trip instead of two: memstore's
// Commit, one lock over checks then writes, is the pattern.)
// main_test.go proves it with the conformance suite in three lines:
//
//	storetest.RunConformanceTests(t, func(t *testing.T) ipam.Store { return New() })
//
// The program runs two allocators at once on one store, as two nodes' CNI
// plugins would, shows the records carve keeps there, then "restarts": it
// opens the file again, and a new allocator finds every address, block and
// affinity where it left them.
//
// Run it with
//
//	go run ./examples/custombackend
package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "custombackend:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, w io.Writer) error {
	dir, err := os.MkdirTemp("", "carve-custombackend-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "carve.json")

	store, err := Open(path)
	if err != nil {
		return err
	}
	admin, err := ipam.New(store, ipam.Options{})
	if err != nil {
		return err
	}
	if err := admin.CreatePool(ctx, pool.Pool{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/18")}); err != nil {
		return err
	}

	// Two allocators on one store, at once, as on two nodes.
	nodes := []string{"node-1", "node-2"}
	const pods = 20
	got := make([][]netip.Prefix, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, node := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := ipam.New(store, ipam.Options{})
			if err != nil {
				errs[i] = err
				return
			}
			for p := range pods {
				res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Node: node, Handle: fmt.Sprintf("%s/pod-%d", node, p)})
				if err != nil {
					errs[i] = err
					return
				}
				got[i] = append(got[i], res.IPv4[0].Prefix())
			}
		}()
	}
	wg.Wait()
	fmt.Fprintf(w, "Two allocators, one per node, %d pods each, at the same time\n", pods)
	for i, node := range nodes {
		if errs[i] != nil {
			return errs[i]
		}
		fmt.Fprintf(w, "  %s  %s .. %s\n", node, got[i][0], got[i][pods-1])
	}

	fmt.Fprintln(w, "\nWhat carve keeps in the store (values are opaque bytes)")
	for _, kind := range ipam.Kinds {
		recs, err := store.List(ctx, kind, ipam.KeyRange{})
		if err != nil {
			return err
		}
		var keys []string
		for _, r := range recs {
			keys = append(keys, r.Key)
		}
		if len(keys) > 3 {
			keys = append(keys[:3], "...")
		}
		line := fmt.Sprintf("  %-11s %2d  %s", kind, len(recs), strings.Join(keys, "  "))
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}

	// A restart: the file is all that is left.
	store, err = Open(path)
	if err != nil {
		return err
	}
	a, err := ipam.New(store, ipam.Options{})
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "\nAfter a restart, from the file")
	addrs, err := a.IPsByHandle(ctx, "node-1/pod-0")
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "  node-1/pod-0 still holds %v\n", addrs)
	res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Node: "node-1", Handle: "node-1/pod-new"})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "  a new pod on node-1 gets %s, next in node-1's block\n", res.IPv4[0].Prefix())
	released, err := a.ReleaseByHandle(ctx, "node-2/pod-0")
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "  node-2/pod-0 releases %v\n", released)
	u, err := a.Utilization(ctx)
	if err != nil {
		return err
	}
	for _, p := range u {
		fmt.Fprintf(w, "  %s: %d in use\n", p.Name, p.InUse)
		for _, b := range p.Blocks {
			fmt.Fprintf(w, "    %-16s %-12s %d/%d\n", b.Prefix, b.Affinity, b.InUse, b.Capacity)
		}
	}
	return nil
}
