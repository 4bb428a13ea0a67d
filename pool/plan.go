package pool

import (
	"fmt"
	"math/big"
	"math/bits"
	"net/netip"
)

// BlockSizeOption is what one block size gives a pool, for a number of nodes
// running a number of pods each.
type BlockSizeOption struct {
	BlockSize         int
	Blocks            *big.Int // blocks in the pool, 2^(BlockSize - prefix length): also how many nodes can get a block
	AddressesPerBlock int      // 2^(address bits - BlockSize)
	BlocksPerNode     int      // blocks a node needs for its pods: ceil(pods / AddressesPerBlock)
	NodesServed       *big.Int // nodes that can get BlocksPerNode blocks each: Blocks / BlocksPerNode
	Fits              bool     // NodesServed >= the number of nodes
}

// Capacity is a capacity plan for a pool: see [Plan].
type Capacity struct {
	CIDR        netip.Prefix
	Nodes       int
	PodsPerNode int

	// BlockSizeOption is the plan for the pool's own block size.
	BlockSizeOption

	// Warnings say, in sentences, when some nodes cannot get a block or
	// cannot get enough blocks for their pods. Empty when the pool fits.
	Warnings []string

	// Options has every allowed block size that fits inside the CIDR, from
	// the largest blocks (smallest BlockSize) to the smallest.
	Options []BlockSizeOption

	// Suggested is the block size to use, 0 when none serves every node: the
	// smallest block that still holds PodsPerNode addresses (one block, so
	// one route, per node, and the most blocks left for new nodes), or when
	// that does not fit, the next smaller block size that does.
	Suggested int

	// NeededPrefixLen is the longest prefix length (smallest CIDR) that
	// would serve every node with blocks of NeededBlockSize, the smallest
	// block that holds a node's pods (the block size Suggested prefers).
	// Negative when no CIDR of the family is large enough.
	NeededPrefixLen int
	NeededBlockSize int
}

// Plan works out how p's CIDR serves nodes nodes running podsPerNode pods
// each, as the block-size planning rule of Calico's documentation has it:
// every node needs at least one block, so 2^(blockSize - prefix length) must
// be at least the number of nodes, and a node whose pods outnumber a block's
// addresses needs several blocks. A zero BlockSize counts as the default.
// Plan fails when nodes or podsPerNode is below 1, or p's cidr or blockSize
// breaks a validation rule (p's Disabled flag is not taken into account).
func Plan(p Pool, nodes, podsPerNode int) (Capacity, error) {
	if nodes < 1 || podsPerNode < 1 {
		return Capacity{}, fmt.Errorf("pool %q: plan for %d nodes with %d pods each: both must be at least 1", p.Name, nodes, podsPerNode)
	}
	ps := problems{pool: p.Name}
	q := p
	q.Disabled = false
	fam := validateCIDR(&ps, &q)
	validateBlockSize(&ps, &q, fam)
	if err := ps.err(); err != nil {
		return Capacity{}, err
	}
	width := q.CIDR.Addr().BitLen()
	prefix := q.CIDR.Bits()
	lo, hi := MinBlockSize4, MaxBlockSize4
	if fam == IPv6 {
		lo, hi = MinBlockSize6, MaxBlockSize6
	}

	c := Capacity{CIDR: q.CIDR.Masked(), Nodes: nodes, PodsPerNode: podsPerNode}
	c.BlockSizeOption = option(width, prefix, q.blockSize(), nodes, podsPerNode)
	for bs := max(lo, prefix); bs <= hi; bs++ {
		c.Options = append(c.Options, option(width, prefix, bs, nodes, podsPerNode))
	}

	// The smallest block that holds a node's pods, within the allowed range.
	one := min(hi, max(lo, width-ceilLog2(podsPerNode)))
	for _, o := range c.Options {
		if o.BlockSize >= one && o.Fits {
			c.Suggested = o.BlockSize
			break
		}
	}
	perBlock := 1 << (width - one)
	bpn := (podsPerNode-1)/perBlock + 1
	need := new(big.Int).Mul(big.NewInt(int64(nodes)), big.NewInt(int64(bpn)))
	c.NeededPrefixLen = one - need.Sub(need, big.NewInt(1)).BitLen() // one - ceil(log2(nodes*bpn))
	c.NeededBlockSize = one

	nodesBig := big.NewInt(int64(nodes))
	// Both shortfalls can hold at once (fewer blocks than nodes, and
	// several blocks per node): say each.
	if c.Blocks.Cmp(nodesBig) < 0 {
		c.Warnings = append(c.Warnings, fmt.Sprintf(
			"only %s of %d nodes can get a block: %s has 2^(%d-%d) = %s blocks",
			c.Blocks, nodes, c.CIDR, c.BlockSize, prefix, c.Blocks))
	}
	if !c.Fits && c.BlocksPerNode > 1 {
		c.Warnings = append(c.Warnings, fmt.Sprintf(
			"each node needs %d blocks of %d addresses for %d pods: only %s of %d nodes can get them",
			c.BlocksPerNode, c.AddressesPerBlock, podsPerNode, c.NodesServed, nodes))
	}
	if !c.Fits {
		if c.Suggested != 0 {
			c.Warnings = append(c.Warnings, fmt.Sprintf("blockSize %d would serve every node", c.Suggested))
		} else if c.NeededPrefixLen >= 0 {
			c.Warnings = append(c.Warnings, fmt.Sprintf(
				"no block size serves every node: a /%d pool with blockSize %d would", c.NeededPrefixLen, one))
		} else {
			c.Warnings = append(c.Warnings, "no block size serves every node, and no "+fam.String()+" pool would")
		}
	}
	return c, nil
}

// option computes one BlockSizeOption; bs must lie in prefix..width.
func option(width, prefix, bs, nodes, pods int) BlockSizeOption {
	hostBits := width - bs
	o := BlockSizeOption{BlockSize: bs, Blocks: new(big.Int).Lsh(big.NewInt(1), uint(bs-prefix))}
	o.AddressesPerBlock = 1 << hostBits                // at most 2^12: block sizes are at least width-12
	o.BlocksPerNode = (pods-1)/o.AddressesPerBlock + 1 // ceil, without overflow
	o.NodesServed = new(big.Int).Quo(o.Blocks, big.NewInt(int64(o.BlocksPerNode)))
	o.Fits = o.NodesServed.Cmp(big.NewInt(int64(nodes))) >= 0
	return o
}

// ceilLog2 returns the smallest k with 2^k >= n, for n >= 1.
func ceilLog2(n int) int { return bits.Len(uint(n - 1)) }
