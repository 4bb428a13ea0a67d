// Command capacity plans the block size of an IP pool for a cluster with
// pool.Plan, following the rule of the Calico documentation: every node needs
// at least one block, so a pool of prefix length p with blocks of size b
// serves at most 2^(b-p) nodes, fewer when a node's pods need several blocks.
//
// It walks through a cluster that fits the default 10.244.0.0/18 pool of /26
// blocks, grows past 256 nodes (the warning, the table of every block size,
// the suggested one, and the seeds' two ways out: a new block size or an
// extra pool), then one whose nodes run too many pods for any block size of
// the /18, and the IPv6 default pool, which no cluster outgrows.
//
//	go run ./examples/capacity
package main

import (
	"context"
	"fmt"
	"io"
	"math/big"
	"net/netip"
	"os"
	"strings"

	"github.com/carve-ipam/carve/pool"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "capacity:", err)
		os.Exit(1)
	}
}

func run(_ context.Context, w io.Writer) error {
	def := pool.Pool{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/18")} // blockSize 26 by default
	extra := pool.Pool{Name: "extra-ippool", CIDR: netip.MustParsePrefix("192.168.0.0/20"), BlockSize: 26}
	v6 := pool.Pool{Name: "default-ipv6-ippool", CIDR: netip.MustParsePrefix("fd00:10:244::/48")} // blockSize 122

	fmt.Fprintln(w, "A pool of prefix length p carved into blocks of size b has 2^(b-p) blocks, and")
	fmt.Fprintln(w, "every node needs at least one. The suggested block size is the smallest block")
	fmt.Fprintln(w, "that holds a node's pods, if the pool has enough of them.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "1. 100 nodes, 30 pods each, on the default pool")
	if _, err := plan(w, def, 100, 30); err != nil {
		return err
	}

	fmt.Fprintln(w, "\n2. The cluster grows to 300 nodes")
	c, err := plan(w, def, 300, 30)
	if err != nil {
		return err
	}
	fmt.Fprintln(w)
	table(w, c)

	fmt.Fprintln(w, "\n   Way out A: a pool with the suggested block size (see examples/migration)")
	bigger := def
	bigger.BlockSize = c.Suggested
	if _, err := plan(w, bigger, 300, 30); err != nil {
		return err
	}
	fmt.Fprintln(w, "\n   Way out B: keep the pool and add an extra pool for the nodes left without a block")
	if _, err := plan(w, extra, 300-int(c.Blocks.Int64()), 30); err != nil {
		return err
	}

	fmt.Fprintln(w, "\n3. 300 nodes running 110 pods each (the kubelet's default maximum)")
	if c, err = plan(w, def, 300, 110); err != nil {
		return err
	}
	// NeededPrefixLen and NeededBlockSize describe the pool that would do.
	wider := def
	wider.CIDR = netip.PrefixFrom(def.CIDR.Addr(), c.NeededPrefixLen).Masked()
	wider.BlockSize = c.NeededBlockSize
	fmt.Fprintln(w, "\n   The pool the warning asks for:")
	if _, err := plan(w, wider, 300, 110); err != nil {
		return err
	}

	fmt.Fprintln(w, "\n4. 5000 nodes running 110 pods each, on the IPv6 default pool")
	_, err = plan(w, v6, 5000, 110)
	return err
}

// plan prints the plan for p and returns it.
func plan(w io.Writer, p pool.Pool, nodes, pods int) (pool.Capacity, error) {
	c, err := pool.Plan(p, nodes, pods)
	if err != nil {
		return c, err
	}
	verdict := "fits"
	if !c.Fits {
		verdict = "does NOT fit"
	}
	fmt.Fprintf(w, "   %s %s, blockSize %d, %d nodes x %d pods: %s\n", p.Name, c.CIDR, c.BlockSize, nodes, pods, verdict)
	fmt.Fprintf(w, "     2^(%d-%d) = %s blocks of %d addresses, %d per node, enough for %s nodes\n",
		c.BlockSize, c.CIDR.Bits(), num(c.Blocks), c.AddressesPerBlock, c.BlocksPerNode, num(c.NodesServed))
	for _, warning := range c.Warnings {
		fmt.Fprintf(w, "     warning: %s\n", warning)
	}
	if c.Suggested != 0 {
		fmt.Fprintf(w, "     suggested blockSize: %d\n", c.Suggested)
	} else {
		fmt.Fprintf(w, "     suggested blockSize: none in %s\n", c.CIDR)
	}
	return c, nil
}

// table prints every block size the pool's CIDR allows.
func table(w io.Writer, c pool.Capacity) {
	fmt.Fprintf(w, "   Every block size for %s, %d nodes x %d pods:\n", c.CIDR, c.Nodes, c.PodsPerNode)
	fmt.Fprintln(w, "     blockSize  addresses/block  blocks  blocks/node  nodes served  fits")
	for _, o := range c.Options {
		fits := "no"
		if o.Fits {
			fits = "yes"
		}
		var note string
		switch o.BlockSize {
		case c.BlockSize:
			note = "  <- the pool's"
		case c.Suggested:
			note = "  <- suggested"
		}
		line := fmt.Sprintf("     /%-8d  %15d  %6s  %11d  %12s  %-4s%s",
			o.BlockSize, o.AddressesPerBlock, num(o.Blocks), o.BlocksPerNode, num(o.NodesServed), fits, note)
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
}

// num writes a count; the big ones of IPv6 pools as a power of two or in
// scientific notation.
func num(n *big.Int) string {
	if n.BitLen() <= 20 {
		return n.String()
	}
	if k := n.BitLen() - 1; new(big.Int).Lsh(big.NewInt(1), uint(k)).Cmp(n) == 0 {
		return fmt.Sprintf("2^%d", k)
	}
	return new(big.Float).SetInt(n).Text('g', 3)
}
