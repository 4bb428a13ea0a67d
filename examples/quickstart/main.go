// Command quickstart shows carve end to end on the embedded memory store:
// it creates the default IPv4 and IPv6 pools of a Calico cluster, assigns
// addresses for pods on a few nodes, releases some, and prints the pools'
// utilization and a map of the blocks.
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"fmt"
	"io"
	"math/big"
	"net/netip"
	"os"
	"strings"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, w io.Writer) error {
	// One allocator on the embedded store. Several allocators (or
	// processes, on etcd) can share one store.
	a, err := ipam.New(memstore.New(), ipam.Options{})
	if err != nil {
		return err
	}

	// The default pools Calico creates (see the seed documents): an IPv4
	// /18 carved into /26 blocks of 64 addresses, and an IPv6 /48 carved
	// into /122 blocks (both the defaults when BlockSize is left zero, as
	// it is for the IPv6 pool).
	pools := []pool.Pool{
		{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/18"), BlockSize: 26, NATOutgoing: true},
		{Name: "default-ipv6-ippool", CIDR: netip.MustParsePrefix("fd00:10:244::/48")},
	}
	fmt.Fprintln(w, "Pools")
	for _, p := range pools {
		if err := a.CreatePool(ctx, p); err != nil {
			return err
		}
		p = p.WithDefaults()
		fmt.Fprintf(w, "  %-20s %-18s /%d blocks, %s of them\n", p.Name, p.CIDR, p.BlockSize, count(p.NumBlocks().String()))
	}

	// Pods on three nodes, each with one IPv4 and one IPv6 address; node-3
	// runs a big job of 70 pods and claims a second block.
	fmt.Fprintln(w, "\nAssign (one IPv4 and one IPv6 address per pod)")
	pods := map[string]int{"node-1": 3, "node-2": 2, "node-3": 70}
	for _, node := range []string{"node-1", "node-2", "node-3"} {
		for i := range pods[node] {
			handle := fmt.Sprintf("%s/pod-%d", node, i)
			res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{
				Num4: 1, Num6: 1, Handle: handle, Node: node,
				Attrs: map[string]string{"namespace": "default", "pod": fmt.Sprintf("pod-%d", i)},
			})
			if err != nil {
				return err
			}
			if i < 2 {
				fmt.Fprintf(w, "  %-14s %-16s %s\n", handle, res.IPv4[0].Prefix(), res.IPv6[0].Prefix())
			}
		}
		if pods[node] > 2 {
			fmt.Fprintf(w, "  %-14s ... %d more\n", node, pods[node]-2)
		}
	}

	// Pods end: release everything each one holds.
	fmt.Fprintln(w, "\nRelease")
	for i := range 10 {
		handle := fmt.Sprintf("node-3/pod-%d", i*3)
		released, err := a.ReleaseByHandle(ctx, handle)
		if err != nil {
			return err
		}
		if i < 2 {
			fmt.Fprintf(w, "  %-14s %v\n", handle, released)
		}
	}
	fmt.Fprintln(w, "  ... and 8 more pods of node-3")

	// Utilization and the block map.
	u, err := a.Utilization(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "\nUtilization")
	for _, p := range u {
		fmt.Fprintf(w, "  %-20s %3d in use, %3d borrowed, %d blocks held, %s addresses free\n",
			p.Name, p.InUse, p.Borrowed, len(p.Blocks), count(p.Free.String()))
	}
	fmt.Fprintln(w, "\nBlock map of default-ipv4-ippool (# in use, . free, b borrowed, x reserved)")
	for _, p := range u {
		if p.Name != "default-ipv4-ippool" {
			continue
		}
		for _, bu := range p.Blocks {
			b, err := a.Block(ctx, bu.Prefix)
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "  %-16s %-12s %s %2d/%d\n", bu.Prefix, bu.Affinity, blockMap(b), bu.InUse, bu.Capacity)
		}
	}
	return nil
}

// blockMap draws one character per address of the block.
func blockMap(b *block.Block) string {
	var sb strings.Builder
	addr := b.Prefix().Addr()
	for range b.Size() {
		switch own, ok := b.Owner(addr); {
		case b.IsReserved(addr):
			sb.WriteByte('x')
		case !ok:
			sb.WriteByte('.')
		case own.Owner.Attrs[ipam.AttrNode] != b.Affinity().Name:
			sb.WriteByte('b')
		default:
			sb.WriteByte('#')
		}
		addr = addr.Next()
	}
	return sb.String()
}

// count writes a large decimal number in a readable way.
func count(s string) string {
	if len(s) <= 6 {
		return s
	}
	f, _ := new(big.Float).SetString(s)
	return f.Text('g', 2)
}
