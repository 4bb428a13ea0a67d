package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

func Example() {
	ctx := context.Background()
	a, err := ipam.New(memstore.New(), ipam.Options{})
	if err != nil {
		panic(err)
	}
	err = a.CreatePool(ctx, pool.Pool{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/18")})
	if err != nil {
		panic(err)
	}

	res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 2, Handle: "pod-a", Node: "node-1"})
	if err != nil {
		panic(err)
	}
	for _, x := range res.IPv4 {
		fmt.Println(x.Prefix(), "from block", x.Block)
	}

	released, _ := a.ReleaseByHandle(ctx, "pod-a")
	fmt.Println("released", len(released))
	// Output:
	// 10.244.4.64/26 from block 10.244.4.64/26
	// 10.244.4.65/26 from block 10.244.4.64/26
	// released 2
}

// A release carrying the sequence number of an earlier assignment of the
// same address is refused: it cannot free the address's new owner.
func ExampleAllocator_ReleaseIPs() {
	ctx := context.Background()
	a, _ := ipam.New(memstore.New(), ipam.Options{})
	_ = a.CreatePool(ctx, pool.Pool{Name: "tiny", CIDR: netip.MustParsePrefix("10.0.0.0/32"), BlockSize: 32})

	first, _ := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "old-pod", Node: "n"})
	old := first.IPv4[0]
	_, _ = a.ReleaseIPs(ctx, ipam.Release{Addr: old.Addr, Seq: old.Seq})
	_, _ = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "new-pod", Node: "n"})

	// A duplicate of the first release arrives late.
	_, err := a.ReleaseIPs(ctx, ipam.Release{Addr: old.Addr, Seq: old.Seq})
	fmt.Println(errors.Is(err, ipam.ErrSeqMismatch))
	owner, _ := a.Owner(ctx, old.Addr)
	fmt.Println(owner.Handle)
	// Output:
	// true
	// new-pod
}

// With StrictAffinity a node cannot borrow, and the error says why.
func ExampleAssignError() {
	ctx := context.Background()
	a, _ := ipam.New(memstore.New(), ipam.Options{})
	_ = a.SetConfig(ctx, ipam.Config{StrictAffinity: true, AutoAllocateBlocks: true})
	_ = a.CreatePool(ctx, pool.Pool{Name: "small", CIDR: netip.MustParsePrefix("10.0.0.0/28"), BlockSize: 28})
	_, _ = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "a", Node: "node-1"})

	_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "b", Node: "node-2"})
	var ae *ipam.AssignError
	if errors.As(err, &ae) {
		fmt.Println("short:", ae.Short4)
	}
	fmt.Println(err)
	// Output:
	// short: 1
	// ipam: assign for node "node-2" handle "b": short of 1 of 1 IPv4, nothing kept; IPv4: no unclaimed block left in pools ["small"], strictAffinity forbids borrowing
}

func ExampleAllocator_Utilization() {
	ctx := context.Background()
	a, _ := ipam.New(memstore.New(), ipam.Options{})
	_ = a.CreatePool(ctx, pool.Pool{Name: "small", CIDR: netip.MustParsePrefix("10.0.0.0/28"), BlockSize: 28})
	_, _ = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 3, Handle: "a", Node: "node-1"})
	_, _ = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 2, Handle: "b", Node: "node-2"}) // borrows

	u, _ := a.Utilization(ctx)
	for _, p := range u {
		fmt.Printf("%s %s: %d in use (%d borrowed), %s free of %s\n", p.Name, p.CIDR, p.InUse, p.Borrowed, p.Free, p.Capacity)
		for _, b := range p.Blocks {
			fmt.Printf("  %s %s: %d/%d\n", b.Prefix, b.Affinity, b.InUse, b.Capacity)
		}
	}
	// Output:
	// small 10.0.0.0/28: 5 in use (2 borrowed), 11 free of 16
	//   10.0.0.0/28 host:node-1: 5/16
}

// Addresses assigned from another node's block, as calicoctl ipam show
// --show-borrowed lists them.
func ExampleAllocation_Borrowed() {
	ctx := context.Background()
	a, _ := ipam.New(memstore.New(), ipam.Options{})
	_ = a.CreatePool(ctx, pool.Pool{Name: "small", CIDR: netip.MustParsePrefix("10.0.0.0/28"), BlockSize: 28})
	_, _ = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 3, Handle: "a", Node: "node-1"})
	_, _ = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 2, Handle: "b", Node: "node-2"}) // borrows

	allocs, _ := a.Allocations(ctx, netip.MustParsePrefix("10.0.0.0/28"))
	for _, x := range allocs {
		if x.Borrowed() {
			fmt.Println(x.Addr, "for", x.Attrs[ipam.AttrNode], "handle", x.Handle, "in block", x.Block, "of", x.BlockAffinity)
		}
	}
	// Output:
	// 10.0.0.3 for node-2 handle b in block 10.0.0.0/28 of host:node-1
	// 10.0.0.4 for node-2 handle b in block 10.0.0.0/28 of host:node-1
}

// A pool in use is split in two; every block stays where it was, with its
// node and addresses, and each half gets its own nodeSelector.
func ExampleAllocator_SplitPool() {
	ctx := context.Background()
	a, _ := ipam.New(memstore.New(), ipam.Options{})
	_ = a.CreatePool(ctx, pool.Pool{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/18")})
	res, _ := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod-a", Node: "node-1"})
	fmt.Println("before:", res.IPv4[0].Prefix(), "from", res.IPv4[0].Pool)

	parts, err := a.SplitPool(ctx, "default-ipv4-ippool", "default-ipv4-ippool", "rack-2")
	if err != nil {
		panic(err)
	}
	for _, p := range parts {
		fmt.Println(p.Name, p.CIDR, "blockSize", p.BlockSize)
	}
	parts[0].NodeSelector = `rack != "2"`
	parts[1].NodeSelector = `rack == "2"`
	for _, p := range parts {
		if err := a.UpdatePool(ctx, p); err != nil {
			panic(err)
		}
	}

	res, _ = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod-b", Node: "node-1"})
	fmt.Println("node-1:", res.IPv4[0].Prefix(), "from", res.IPv4[0].Pool)
	res, _ = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod-c", Node: "node-9", NodeLabels: selector.Set{"rack": "2"}})
	fmt.Println("node-9:", res.IPv4[0].Prefix(), "from", res.IPv4[0].Pool)
	// Output:
	// before: 10.244.4.64/26 from default-ipv4-ippool
	// default-ipv4-ippool 10.244.0.0/19 blockSize 26
	// rack-2 10.244.32.0/19 blockSize 26
	// node-1: 10.244.4.65/26 from default-ipv4-ippool
	// node-9: 10.244.32.64/26 from rack-2
}

// A change to a pool is made on a fresh read of it: an update from a read
// that another change overtook fails with ErrPoolChanged, and is made again
// on a new read, so neither change is lost.
func ExampleAllocator_UpdatePool() {
	ctx := context.Background()
	store := memstore.New()
	a, _ := ipam.New(store, ipam.Options{})
	_ = a.CreatePool(ctx, pool.Pool{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/18")})

	p, _ := a.Pool(ctx, "default-ipv4-ippool")
	other, _ := ipam.New(store, ipam.Options{})
	_ = other.DisablePool(ctx, "default-ipv4-ippool") // meanwhile, elsewhere

	for {
		p.NodeSelector = `zone == "a"`
		err := a.UpdatePool(ctx, p)
		if errors.Is(err, ipam.ErrPoolChanged) {
			fmt.Println("changed since read: reading it again")
			p, _ = a.Pool(ctx, "default-ipv4-ippool")
			continue
		}
		if err != nil {
			panic(err)
		}
		break
	}
	p, _ = a.Pool(ctx, "default-ipv4-ippool")
	fmt.Printf("nodeSelector %s, disabled %t\n", p.NodeSelector, p.Disabled)
	// Output:
	// changed since read: reading it again
	// nodeSelector zone == "a", disabled true
}

// A node gets its blocks when it joins, before its first pod (for routes
// set up ahead, or a Windows node's network); its pods' addresses then
// come from them.
func ExampleAllocator_EnsureBlock() {
	ctx := context.Background()
	a, _ := ipam.New(memstore.New(), ipam.Options{})
	_ = a.CreatePool(ctx, pool.Pool{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/18")})
	_ = a.CreatePool(ctx, pool.Pool{Name: "default-ipv6-ippool", CIDR: netip.MustParsePrefix("fd00:10:244::/48")})

	v4, v6, err := a.EnsureBlock(ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, IPv6: true})
	if err != nil {
		panic(err)
	}
	fmt.Println("node-1 blocks:", v4, v6)
	again, _, _ := a.EnsureBlock(ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true})
	fmt.Println("again:", again)

	res, _ := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "pod-a", Node: "node-1"})
	fmt.Println("pod-a:", res.IPv4[0].Addr, "in", res.IPv4[0].Block)
	fmt.Println("pod-a:", res.IPv6[0].Addr, "in", res.IPv6[0].Block)
	// Output:
	// node-1 blocks: 10.244.4.64/26 fd00:10:244:8f43:560c:5020:fa3e:4440/122
	// again: 10.244.4.64/26
	// pod-a: 10.244.4.64 in 10.244.4.64/26
	// pod-a: fd00:10:244:8f43:560c:5020:fa3e:4440 in fd00:10:244:8f43:560c:5020:fa3e:4440/122
}

// A node's labels, stored once, choose its pools for every request that
// gives none; when they change, its next request follows them and gives
// up its empty block in the pool that no longer selects it.
func ExampleAllocator_SetNodeLabels() {
	ctx := context.Background()
	a, _ := ipam.New(memstore.New(), ipam.Options{})
	_ = a.CreatePool(ctx, pool.Pool{Name: "rack-0", CIDR: netip.MustParsePrefix("10.10.0.0/22"), NodeSelector: `rack == "0"`})
	_ = a.CreatePool(ctx, pool.Pool{Name: "rack-1", CIDR: netip.MustParsePrefix("10.10.4.0/22"), NodeSelector: `rack == "1"`})

	if err := a.SetNodeLabels(ctx, "node-1", map[string]string{"rack": "0"}); err != nil {
		panic(err)
	}
	res, _ := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod-a", Node: "node-1"})
	fmt.Println("pod-a:", res.IPv4[0].Addr, "from", res.IPv4[0].Pool)
	_, _ = a.ReleaseByHandle(ctx, "pod-a")

	_ = a.SetNodeLabels(ctx, "node-1", map[string]string{"rack": "1"}) // moved to rack 1
	res, _ = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod-b", Node: "node-1"})
	fmt.Println("pod-b:", res.IPv4[0].Addr, "from", res.IPv4[0].Pool)
	labels, _ := a.NodeLabels(ctx, "node-1")
	fmt.Println("node-1 labels:", labels)
	u, _ := a.Utilization(ctx)
	for _, p := range u {
		fmt.Println(p.Name, "blocks:", len(p.Blocks))
	}
	// Output:
	// pod-a: 10.10.0.64 from rack-0
	// pod-b: 10.10.4.64 from rack-1
	// node-1 labels: map[rack:1]
	// rack-0 blocks: 0
	// rack-1 blocks: 1
}

// LoadBalancer addresses come from LoadBalancer pools, into blocks of the
// virtual owner "load-balancer" rather than of a node: the request names
// no node.
func ExampleVirtualLoadBalancer() {
	ctx := context.Background()
	a, _ := ipam.New(memstore.New(), ipam.Options{})
	_ = a.CreatePool(ctx, pool.Pool{Name: "services", CIDR: netip.MustParsePrefix("192.168.100.0/24"),
		BlockSize: 28, AllowedUses: []pool.Use{pool.UseLoadBalancer}})

	res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "lb-web", Use: pool.UseLoadBalancer,
		Attrs: map[string]string{"service": "web", "namespace": "shop"}})
	if err != nil {
		panic(err)
	}
	b, _ := a.Block(ctx, res.IPv4[0].Block)
	fmt.Println(res.IPv4[0].Addr, "in a block of", b.Affinity())

	_, err = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "lb-api", Node: "node-1", Use: pool.UseLoadBalancer})
	fmt.Println(errors.Is(err, ipam.ErrInvalid))
	// Output:
	// 192.168.100.176 in a block of virtual:load-balancer
	// true
}

// A request that may be sent again sets NewHandle. The repeat assigns
// nothing; AssignedByHandle gives it the first request's answer.
func ExampleAllocator_AssignedByHandle() {
	ctx := context.Background()
	a, _ := ipam.New(memstore.New(), ipam.Options{})
	_ = a.CreatePool(ctx, pool.Pool{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/18")})

	args := ipam.AutoAssignArgs{Num4: 1, Handle: "k8s-pod-network.4f9a", Node: "node-1", NewHandle: true}
	assign := func() (ipam.AutoAssignResult, error) {
		res, err := a.AutoAssign(ctx, args)
		if errors.Is(err, ipam.ErrHandleExists) {
			return a.AssignedByHandle(ctx, args.Handle)
		}
		return res, err
	}
	first, _ := assign()
	again, _ := assign() // the caller timed out and asks again
	fmt.Println(first.IPv4[0].Addr, again.IPv4[0].Addr, first.IPv4[0] == again.IPv4[0])
	addrs, _ := a.IPsByHandle(ctx, args.Handle)
	fmt.Println(len(addrs), "address under the handle")
	// Output:
	// 10.244.4.64 10.244.4.64 true
	// 1 address under the handle
}

// A pod that asks for one IPv4 and one IPv6 address (Calico's ipAddrs
// annotation) gets both or neither.
func ExampleAllocator_AssignIPs() {
	ctx := context.Background()
	a, _ := ipam.New(memstore.New(), ipam.Options{})
	_ = a.CreatePool(ctx, pool.Pool{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/18")})
	_ = a.CreatePool(ctx, pool.Pool{Name: "default-ipv6-ippool", CIDR: netip.MustParsePrefix("fd00:10:244::/48")})

	res, err := a.AssignIPs(ctx, ipam.AssignIPsArgs{
		Addrs:  []netip.Addr{netip.MustParseAddr("10.244.0.10"), netip.MustParseAddr("fd00:10:244::10")},
		Handle: "default/cache-0", Node: "node-1",
	})
	fmt.Println(res.IPv4[0].Addr, res.IPv6[0].Addr, err)

	// The IPv6 address is taken, so the free IPv4 one is not kept either.
	_, err = a.AssignIPs(ctx, ipam.AssignIPsArgs{
		Addrs:  []netip.Addr{netip.MustParseAddr("10.244.0.11"), netip.MustParseAddr("fd00:10:244::10")},
		Handle: "default/cache-1", Node: "node-2",
	})
	var ae *ipam.AddrError
	fmt.Println(errors.As(err, &ae), ae.Addr, errors.Is(err, ipam.ErrInUse))
	_, err = a.Owner(ctx, netip.MustParseAddr("10.244.0.11"))
	fmt.Println(errors.Is(err, ipam.ErrNotAllocated))
	// Output:
	// 10.244.0.10 fd00:10:244::10 <nil>
	// true fd00:10:244::10 true
	// true
}

// A collector in dry-run mode says what it waits on and what it would
// release, and writes nothing; what it lists is then released by hand,
// each address only if it is still the same assignment.
func ExampleCollector_dryRun() {
	ctx := context.Background()
	now := time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)
	a, _ := ipam.New(memstore.New(), ipam.Options{Now: func() time.Time { return now }})
	_ = a.CreatePool(ctx, pool.Pool{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/18")})
	_, _ = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "web-0", Node: "node-1"})
	_, _ = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "report-7", Node: "node-1"})

	pods := map[string]bool{"web-0": true} // report-7 was deleted; its DEL never ran
	alive := func(_ context.Context, x ipam.Allocation) (bool, error) { return pods[x.Handle], nil }
	const grace = 15 * time.Minute
	c, _ := ipam.NewCollector(a, alive, ipam.CollectorOptions{Grace: grace, DryRun: true})

	res, _ := c.Collect(ctx)
	for _, s := range res.Suspects {
		fmt.Println("suspect", s.Addr, s.Handle, "due", s.Since.Add(grace).Format("15:04"))
	}
	now = now.Add(grace)
	res, _ = c.Collect(ctx)
	var rels []ipam.Release
	for _, x := range res.Released {
		fmt.Println("would release", x.Addr, x.Handle)
		rels = append(rels, x.Release())
	}
	done, _ := a.ReleaseIPs(ctx, rels...)
	fmt.Println("released by hand", done.Released)
	// Output:
	// suspect 10.244.4.65 report-7 due 09:15
	// would release 10.244.4.65 report-7
	// released by hand [10.244.4.65]
}

// ModifyPool changes some fields of a pool as stored, whatever changed
// meanwhile: no Version to carry, no retry loop.
func ExampleAllocator_ModifyPool() {
	ctx := context.Background()
	store := memstore.New()
	a, _ := ipam.New(store, ipam.Options{})
	_ = a.CreatePool(ctx, pool.Pool{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/18")})
	other, _ := ipam.New(store, ipam.Options{})
	_ = other.DisablePool(ctx, "default-ipv4-ippool") // meanwhile, elsewhere

	p, err := a.ModifyPool(ctx, "default-ipv4-ippool", func(p *pool.Pool) error {
		p.NodeSelector = `zone == "a"`
		return nil
	})
	if err != nil {
		panic(err)
	}
	fmt.Printf("nodeSelector %s, disabled %t\n", p.NodeSelector, p.Disabled)
	// Output:
	// nodeSelector zone == "a", disabled true
}

// A VM moves to another fixed address without the risk of ending up with
// none: the new address is assigned first, under the same handle, and the
// old one released only once that succeeded, by its Seq, so that a late
// retry of the move never frees a later owner of the old address.
func ExampleAllocator_AssignIP_move() {
	ctx := context.Background()
	a, _ := ipam.New(memstore.New(), ipam.Options{})
	_ = a.CreatePool(ctx, pool.Pool{Name: "vms", CIDR: netip.MustParsePrefix("192.168.10.0/24"), BlockSize: 28})

	old, _ := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: netip.MustParseAddr("192.168.10.5"), Handle: "vm-7", Node: "host-a"})

	moved, err := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: netip.MustParseAddr("192.168.10.40"), Handle: "vm-7", Node: "host-a"})
	if err != nil {
		panic(err) // vm-7 keeps its old address
	}
	res, _ := a.ReleaseIPs(ctx, ipam.Release{Addr: old.Addr, Handle: "vm-7", Seq: old.Seq})
	fmt.Println(moved.Addr, res.Released)
	held, _ := a.IPsByHandle(ctx, "vm-7")
	fmt.Println(held)
	// Output:
	// 192.168.10.40 [192.168.10.5]
	// [192.168.10.40]
}
