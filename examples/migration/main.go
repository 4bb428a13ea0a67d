// Command migration moves a cluster's pods from one IP pool to another, by
// the procedure of the seed documents (and Calico's own) for changing a pool's
// block size or CIDR, which can never be edited in place:
//
//  1. create the new pool (here: the next free /18, carved into /27 blocks
//     instead of /26, for a cluster that outgrows 256 nodes);
//  2. disable the old pool: new pods stop getting its addresses, running
//     pods keep theirs;
//  3. recreate every pod still on the old pool: its old address is released
//     and its new one comes from the new pool;
//  4. verify with a new pod;
//  5. delete the old pool.
//
// It checks after every step, and after every single pod recreated, that
// nothing is lost: every pod holds exactly one address, no address is held
// twice, and the pools hold no address that no pod has. At the end every
// address is in the new pool and the old pool's blocks are gone from the
// store.
//
// Run it with
//
//	go run ./examples/migration
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "migration:", err)
		os.Exit(1)
	}
}

const (
	oldPool = "default-ipv4-ippool"
	newPool = "new-ipv4-ippool"
)

// cluster is the pods as the orchestrator knows them: pod name -> the
// handle of its current incarnation (Calico uses one handle per container,
// so a recreated pod has a new handle).
type cluster struct {
	a    *ipam.Allocator
	pods map[string]string
	node map[string]string
	gen  map[string]int
}

func run(ctx context.Context, w io.Writer) error {
	a, err := ipam.New(memstore.New(), ipam.Options{})
	if err != nil {
		return err
	}
	c := &cluster{a: a, pods: map[string]string{}, node: map[string]string{}, gen: map[string]int{}}

	old := pool.Pool{Name: oldPool, CIDR: netip.MustParsePrefix("10.244.0.0/18"), BlockSize: 26}
	if err := a.CreatePool(ctx, old); err != nil {
		return err
	}
	for _, n := range []struct {
		node string
		pods int
	}{{"node-1", 5}, {"node-2", 3}, {"node-3", 4}} {
		for i := range n.pods {
			if _, err := c.start(ctx, fmt.Sprintf("%s-pod-%d", n.node, i), n.node); err != nil {
				return err
			}
		}
	}
	fmt.Fprintln(w, "Before")
	if err := c.report(ctx, w); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nA pool's blockSize cannot be changed in place:")
	bigger := old
	bigger.BlockSize = 27
	err = a.UpdatePool(ctx, bigger)
	if !errors.Is(err, pool.ErrImmutable) {
		return fmt.Errorf("UpdatePool changing blockSize: %v, want pool.ErrImmutable", err)
	}
	fmt.Fprintf(w, "  UpdatePool: %v\n", err)

	// 1. The new pool goes where no pool is, inside the cluster's range.
	pools, err := a.Pools(ctx)
	if err != nil {
		return err
	}
	set, err := pool.NewSet(pools...)
	if err != nil {
		return err
	}
	cidr, ok := set.FindFree(netip.MustParsePrefix("10.0.0.0/8"), 18)
	if !ok {
		return errors.New("no free /18 in 10.0.0.0/8")
	}
	fmt.Fprintln(w, "\n1. Create", newPool, "in the first free /18 of 10.0.0.0/8, with /27 blocks")
	if err := a.CreatePool(ctx, pool.Pool{Name: newPool, CIDR: cidr, BlockSize: 27}); err != nil {
		return err
	}
	if err := c.check(ctx); err != nil {
		return err
	}
	if err := c.pools(ctx, w); err != nil {
		return err
	}

	fmt.Fprintln(w, "\n2. Disable", oldPool)
	if err := a.DisablePool(ctx, oldPool); err != nil {
		return err
	}
	if err := c.pools(ctx, w); err != nil {
		return err
	}
	if err := c.check(ctx); err != nil {
		return err
	}
	running, err := c.podsIn(ctx, oldPool)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "  %d running pods keep their addresses in %s\n", len(running), oldPool)

	fmt.Fprintln(w, "\n3. Recreate every pod still on", oldPool)
	onOld, err := c.podsIn(ctx, oldPool)
	if err != nil {
		return err
	}
	for _, name := range onOld {
		from, to, err := c.recreate(ctx, name)
		if err != nil {
			return err
		}
		if err := c.check(ctx); err != nil {
			return fmt.Errorf("after recreating %s: %w", name, err)
		}
		oldBlock, _ := old.BlockFor(from)
		fmt.Fprintf(w, "  %-14s %-16s -> %s\n", name, netip.PrefixFrom(from, oldBlock.Bits()), to)
	}
	fmt.Fprintf(w, "  checked after each of the %d pods: every pod holds exactly one address\n", len(onOld))

	fmt.Fprintln(w, "\n4. Verify: a new pod gets an address of", newPool)
	addr, err := c.start(ctx, "node-2-pod-new", "node-2")
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "  %-14s %s\n", "node-2-pod-new", addr)

	u, err := a.Utilization(ctx)
	if err != nil {
		return err
	}
	var oldBlocks []netip.Prefix
	for _, p := range u {
		if p.Name == oldPool {
			for _, b := range p.Blocks {
				oldBlocks = append(oldBlocks, b.Prefix)
			}
		}
	}
	fmt.Fprintln(w, "\nBefore deleting", oldPool)
	if err := c.report(ctx, w); err != nil {
		return err
	}
	fmt.Fprintln(w, "  (the old pool's blocks are empty but stay with their nodes until the pool goes)")

	fmt.Fprintln(w, "\n5. Delete", oldPool)
	if err := a.DeletePool(ctx, oldPool); err != nil {
		return err
	}
	if err := c.check(ctx); err != nil {
		return err
	}
	for _, b := range oldBlocks {
		if _, err := a.Block(ctx, b); !errors.Is(err, ipam.ErrNotFound) {
			return fmt.Errorf("block %s of the deleted pool: %v, want ipam.ErrNotFound", b, err)
		}
	}
	fmt.Fprintf(w, "  its %d blocks are gone from the store (Block: ErrNotFound)\n", len(oldBlocks))

	fmt.Fprintln(w, "\nAfter")
	if err := c.report(ctx, w); err != nil {
		return err
	}
	if left, err := c.podsIn(ctx, newPool); err != nil {
		return err
	} else if len(left) != len(c.pods) {
		return fmt.Errorf("%d of %d pods are in %s", len(left), len(c.pods), newPool)
	}
	fmt.Fprintf(w, "  every one of them in %s\n", newPool)
	return nil
}

// start starts a pod on a node: one IPv4 address under a new handle.
func (c *cluster) start(ctx context.Context, name, node string) (netip.Prefix, error) {
	c.gen[name]++
	handle := fmt.Sprintf("%s.%d", name, c.gen[name])
	res, err := c.a.AutoAssign(ctx, ipam.AutoAssignArgs{
		Num4: 1, Handle: handle, Node: node,
		Attrs: map[string]string{"namespace": "default", "pod": name},
	})
	if err != nil {
		return netip.Prefix{}, err
	}
	c.pods[name], c.node[name] = handle, node
	return res.IPv4[0].Prefix(), nil
}

// recreate deletes a pod, releasing its address, and starts it again on the
// same node, as kubectl delete pod does under a Deployment.
func (c *cluster) recreate(ctx context.Context, name string) (from netip.Addr, to netip.Prefix, err error) {
	released, err := c.a.ReleaseByHandle(ctx, c.pods[name])
	if err != nil {
		return from, to, err
	}
	delete(c.pods, name)
	if len(released) != 1 {
		return from, to, fmt.Errorf("pod %s released %v, want one address", name, released)
	}
	to, err = c.start(ctx, name, c.node[name])
	return released[0], to, err
}

// check verifies that nothing is lost: every pod holds exactly one address,
// no address is held twice, and the pools hold no address that no pod holds.
func (c *cluster) check(ctx context.Context) error {
	seen := map[netip.Addr]string{}
	for name, handle := range c.pods {
		addrs, err := c.a.IPsByHandle(ctx, handle)
		if err != nil {
			return fmt.Errorf("pod %s: %w", name, err)
		}
		if len(addrs) != 1 {
			return fmt.Errorf("pod %s holds %v, want one address", name, addrs)
		}
		if other, dup := seen[addrs[0]]; dup {
			return fmt.Errorf("pods %s and %s both hold %s", other, name, addrs[0])
		}
		seen[addrs[0]] = name
	}
	u, err := c.a.Utilization(ctx)
	if err != nil {
		return err
	}
	var inUse uint64
	for _, p := range u {
		inUse += p.InUse
	}
	if inUse != uint64(len(c.pods)) {
		return fmt.Errorf("pools hold %d addresses for %d pods", inUse, len(c.pods))
	}
	return nil
}

// podsIn returns the pods holding an address of the named pool, in name
// order.
func (c *cluster) podsIn(ctx context.Context, name string) ([]string, error) {
	p, err := c.a.Pool(ctx, name)
	if err != nil {
		return nil, err
	}
	allocs, err := c.a.Allocations(ctx, p.CIDR)
	if err != nil {
		return nil, err
	}
	var pods []string
	for _, al := range allocs {
		pods = append(pods, al.Attrs["pod"])
	}
	slices.Sort(pods)
	return pods, nil
}

// pools prints the pools as calicoctl get ippool -o wide does.
func (c *cluster) pools(ctx context.Context, w io.Writer) error {
	pools, err := c.a.Pools(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "  %-20s %-14s %-9s %s\n", "NAME", "CIDR", "BLOCKSIZE", "DISABLED")
	for _, p := range pools {
		fmt.Fprintf(w, "  %-20s %-14s %-9d %t\n", p.Name, p.CIDR, p.BlockSize, p.Disabled)
	}
	return nil
}

// report prints each pool's utilization and blocks, and checks that nothing
// is lost.
func (c *cluster) report(ctx context.Context, w io.Writer) error {
	if err := c.check(ctx); err != nil {
		return err
	}
	u, err := c.a.Utilization(ctx)
	if err != nil {
		return err
	}
	for _, p := range u {
		state := "enabled"
		if p.Disabled {
			state = "disabled"
		}
		fmt.Fprintf(w, "  %-20s %-14s %-8s  %2d of %s addresses in use, %d blocks\n", p.Name, p.CIDR, state, p.InUse, p.Capacity, len(p.Blocks))
		for _, b := range p.Blocks {
			fmt.Fprintf(w, "    %-18s %-12s %2d/%d in use\n", b.Prefix, b.Affinity, b.InUse, b.Capacity)
		}
	}
	fmt.Fprintf(w, "  %d pods, each holding exactly one address\n", len(c.pods))
	return nil
}
