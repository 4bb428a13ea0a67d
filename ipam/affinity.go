package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/internal/ipmath"
	"github.com/carve-ipam/carve/pool"
)

// maxAffinityBlocks (2^maxAffinityBits) bounds how many blocks one
// ClaimAffinity call may cover.
const (
	maxAffinityBits   = 12
	maxAffinityBlocks = 1 << maxAffinityBits
)

// releaseAffinity removes aff's affinity from blk: an empty block is
// deleted (unless an address in it is cooling: see keepCooling), a
// non-empty one keeps its allocations without affinity (unless
// requireEmpty, which refuses with ErrBlockNotEmpty). The block goes first,
// then the index record, so a crash leaves at worst a stale index entry.
func (a *Allocator) releaseAffinity(ctx context.Context, aff block.Affinity, blk netip.Prefix, requireEmpty bool) error {
	_, err := a.releaseHeld(ctx, aff, blk, requireEmpty)
	return err
}

// releaseHeld is releaseAffinity, and also reports whether there was a
// block to release: false for an index entry whose block does not exist
// (what a crash in a claim leaves), which it removes all the same.
func (a *Allocator) releaseHeld(ctx context.Context, aff block.Affinity, blk netip.Prefix, requireEmpty bool) (held bool, err error) {
	e := a.entry(blk)
	e.lock()
	err = a.retry(ctx, "release affinity of block", e.name, func() error {
		held = false
		if err := a.load(ctx, e); err != nil {
			return err
		}
		switch {
		case e.blk == nil:
			return nil
		case e.blk.Affinity() != aff:
			return conflictError("release block %s from %s", blk, aff, e.blk)
		case requireEmpty && !e.blk.Empty():
			return fmt.Errorf("ipam: release block %s from %s: %w (%d in use)", blk, aff, ErrBlockNotEmpty, e.blk.Used())
		}
		held = true
		next := e.stage()
		next.SetAffinity(block.Affinity{}, time.Time{})
		return a.commit(ctx, e)
	})
	e.unlock()
	if err != nil && !errors.Is(err, ErrAffinityConflict) {
		return held, err
	}
	// The index record is stale either way now, and goes even if the
	// caller gives up meanwhile (see detach).
	ctx, cancel := detach(ctx)
	defer cancel()
	if derr := a.dropIndex(ctx, aff, blk, 0); derr != nil {
		return held, errors.Join(err, derr)
	}
	return held, err
}

// blocksOf returns the blocks of pool p that lie in cidr, checking that cidr
// is a masked prefix inside the pool, at least one block large, and not
// larger than maxAffinityBlocks blocks.
func blocksOf(op string, p *pool.Pool, cidr netip.Prefix) ([]netip.Prefix, error) {
	if cidr.Bits() > p.BlockSize {
		return nil, invalid(op, "%s is smaller than a block of pool %q (/%d)", cidr, p.Name, p.BlockSize)
	}
	n := p.BlockSize - cidr.Bits()
	if n > maxAffinityBits {
		return nil, invalid(op, "%s covers 2^%d blocks, more than %d", cidr, n, maxAffinityBlocks)
	}
	out := make([]netip.Prefix, 0, 1<<n)
	for i := range uint64(1) << n {
		blk, _ := ipmath.PrefixAt(cidr, p.BlockSize, ipmath.U64(i))
		out = append(out, blk)
	}
	return out, nil
}

// poolFor returns the enabled pool containing cidr.
func (a *Allocator) poolFor(ctx context.Context, op string, cidr netip.Prefix) (*pool.Pool, error) {
	if err := checkPrefix(op, cidr); err != nil {
		return nil, err
	}
	v, err := a.loadView(ctx)
	if err != nil {
		return nil, err
	}
	p, ok := v.pools.ByAddr(cidr.Addr())
	if !ok {
		return nil, fmt.Errorf("ipam: %s %s: %w: no pool holds it", op, cidr, ErrNotInPool)
	}
	if p.CIDR.Bits() > cidr.Bits() {
		return nil, fmt.Errorf("ipam: %s %s: %w: it is larger than pool %q (%s); name a prefix of one pool", op, cidr, ErrNotInPool, p.Name, p.CIDR)
	}
	if p.Disabled {
		return nil, fmt.Errorf("ipam: %s %s: %w: pool %q is disabled", op, cidr, ErrNotInPool, p.Name)
	}
	return p, nil
}

// ClaimAffinity claims for node every block of cidr, which must lie in an
// enabled pool and span at most 4096 blocks. Blocks the node holds already
// count as claimed. It returns the blocks claimed; the error joins an
// *AddrError matching ErrAffinityConflict for each block held by someone
// else. The blocks of a LoadBalancer pool belong to no node:
// ClaimLoadBalancerAffinity claims them.
func (a *Allocator) ClaimAffinity(ctx context.Context, node string, cidr netip.Prefix) ([]netip.Prefix, error) {
	const op = "claim affinity"
	if err := checkNode(op, node); err != nil {
		return nil, err
	}
	return a.claimAffinity(ctx, op, block.Host(node), cidr)
}

// ClaimLoadBalancerAffinity is ClaimAffinity for VirtualLoadBalancer, the
// owner of the blocks of LoadBalancer addresses: cidr must lie in an
// enabled LoadBalancer pool. Automatic assignment claims such blocks as it
// needs them; this is for Config.AutoAllocateBlocks off, or to set blocks
// aside ahead of time.
func (a *Allocator) ClaimLoadBalancerAffinity(ctx context.Context, cidr netip.Prefix) ([]netip.Prefix, error) {
	return a.claimAffinity(ctx, "claim load-balancer affinity", loadBalancerOwner, cidr)
}

func (a *Allocator) claimAffinity(ctx context.Context, op string, aff block.Affinity, cidr netip.Prefix) ([]netip.Prefix, error) {
	p, err := a.poolFor(ctx, op, cidr)
	if err != nil {
		return nil, err
	}
	switch lb := p.Allows(pool.UseLoadBalancer); {
	case lb && aff.Kind == block.HostAffinity:
		return nil, invalid(op, "%s lies in LoadBalancer pool %q, whose blocks belong to no node (ClaimLoadBalancerAffinity claims them for %s)",
			cidr, p.Name, loadBalancerOwner)
	case !lb && aff.Kind != block.HostAffinity:
		return nil, invalid(op, "%s lies in pool %q, which is not a LoadBalancer pool (ClaimAffinity claims its blocks for a node)", cidr, p.Name)
	}
	blocks, err := blocksOf(op, p, cidr)
	if err != nil {
		return nil, err
	}
	var claimed []netip.Prefix
	var errs []error
	for _, blk := range blocks {
		_, _, err := a.claimBlock(ctx, blk, aff, true, hostReserved{})
		switch {
		case err == nil:
			claimed = append(claimed, blk)
		case errors.Is(err, ErrAffinityConflict):
			errs = append(errs, &AddrError{Addr: blk.Addr(), Err: err}) // names the block and whose it is
		default:
			return claimed, err
		}
	}
	switch len(errs) {
	case 0:
		return claimed, nil
	case 1:
		return claimed, errs[0]
	}
	// One line per block, each saying what it is about.
	return claimed, fmt.Errorf("ipam: %s %s for %s: %d blocks not claimed:\n%w", op, cidr, aff, len(errs), errors.Join(errs...))
}

// ReleaseAffinity releases node's affinity to the blocks in cidr: a block,
// a part of a pool, or any larger prefix (such as 0.0.0.0/0), in which case
// the blocks are those the node holds inside it, in any pool or in none.
// Empty blocks are deleted (or, while an address in one is cooling under
// Config.ReleaseCooldown, kept without affinity); non-empty ones keep their
// addresses without affinity, unless requireEmpty, which leaves them and
// reports ErrBlockNotEmpty, in an *AddrError naming each such block.
// Blocks not affine to node are skipped.
func (a *Allocator) ReleaseAffinity(ctx context.Context, node string, cidr netip.Prefix, requireEmpty bool) error {
	const op = "release affinity"
	if err := checkNode(op, node); err != nil {
		return err
	}
	return a.releaseAffinityIn(ctx, op, block.Host(node), cidr, requireEmpty)
}

// ReleaseLoadBalancerAffinity is ReleaseAffinity for VirtualLoadBalancer,
// the owner of the blocks of LoadBalancer addresses.
func (a *Allocator) ReleaseLoadBalancerAffinity(ctx context.Context, cidr netip.Prefix, requireEmpty bool) error {
	return a.releaseAffinityIn(ctx, "release load-balancer affinity", loadBalancerOwner, cidr, requireEmpty)
}

func (a *Allocator) releaseAffinityIn(ctx context.Context, op string, aff block.Affinity, cidr netip.Prefix, requireEmpty bool) error {
	if err := checkPrefix(op, cidr); err != nil {
		return err
	}
	v, err := a.loadView(ctx)
	if err != nil {
		return err
	}
	// The node's blocks inside cidr, in any pool or in none (a block kept
	// by a deleted pool, or one of another block size than its pool's).
	held, err := a.affineBlocks(ctx, aff, nil)
	if err != nil {
		return err
	}
	var blocks []netip.Prefix
	seen := map[netip.Prefix]bool{}
	for _, blk := range held {
		if blk.Bits() >= cidr.Bits() && cidr.Contains(blk.Addr()) {
			blocks = append(blocks, blk)
			seen[blk] = true
		}
	}
	// And, read from the blocks themselves in case the index lost one:
	// cidr, when it is one block of its pool; the blocks of cidr's pool
	// inside cidr that say they are aff's, when it spans several (one
	// listing of those that exist: reading every block the range could
	// hold one by one cost three round trips each, 12,288 for a /14 of
	// /26 blocks); or cidr itself if it may be a block.
	var more []netip.Prefix
	if p, ok := v.pools.ByAddr(cidr.Addr()); ok && p.CIDR.Bits() <= cidr.Bits() {
		if cidr.Bits() < p.BlockSize {
			more, err = a.listAffine(ctx, op, aff, cidr)
		} else {
			more, err = blocksOf(op, p, cidr) // the block, or ErrInvalid for less
		}
		if err != nil {
			return err
		}
	} else if minBits := minBlockBits(cidr.Addr()); cidr.Bits() >= minBits {
		more = []netip.Prefix{cidr}
	}
	for _, blk := range more {
		if !seen[blk] {
			blocks = append(blocks, blk)
		}
	}
	var errs []error
	for _, blk := range blocks {
		err := a.releaseAffinity(ctx, aff, blk, requireEmpty)
		if errors.Is(err, ErrAffinityConflict) {
			continue
		}
		if errors.Is(err, ErrBlockNotEmpty) {
			errs = append(errs, &AddrError{Addr: blk.Addr(), Err: err}) // names the block
			continue
		}
		if err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

// listAffine returns the existing blocks inside cidr whose header says
// they are aff's. A record that does not hold the block its key names is
// passed over (Check reports it).
func (a *Allocator) listAffine(ctx context.Context, op string, aff block.Affinity, cidr netip.Prefix) ([]netip.Prefix, error) {
	recs, err := a.store.List(ctx, KindBlock, blockRange(cidr))
	if err != nil {
		return nil, fmt.Errorf("ipam: %s %s for %s: list blocks: %w", op, cidr, aff, err)
	}
	var out []netip.Prefix
	for _, r := range recs {
		if sum, err := peekRecord(r); err == nil && sum.Affinity == aff && cidr.Contains(sum.Prefix.Addr()) {
			out = append(out, sum.Prefix)
		}
	}
	return out, nil
}

// minBlockBits is the length of the largest block a pool of addr's family
// can have.
func minBlockBits(addr netip.Addr) int {
	if addr.Is4() {
		return pool.MinBlockSize4
	}
	return pool.MinBlockSize6
}

// ReleaseHostAffinities releases every block affinity of node, as when the
// node leaves the cluster, and returns the blocks released. Empty blocks are
// deleted (or, while an address in one is cooling under
// Config.ReleaseCooldown, kept without affinity); non-empty ones keep their
// addresses without affinity, unless requireEmpty, which leaves them and
// reports ErrBlockNotEmpty, in an *AddrError naming each such block.
//
// It finds the node's blocks through the affinity index, not by listing
// every block: a block whose index entry a crash left unwritten
// (ProblemAffinityUnindexed) stays the node's. Repair, run first, writes
// the entry; a Collector with a node oracle finds such blocks anyway.
//
// Removing a node by hand takes three steps: release what its workloads
// hold (ReleaseByHandle per workload; Allocations of 0.0.0.0/0 and ::/0
// with the Attrs' AttrNode show what is left on the node), then
// ReleaseHostAffinities, then SetNodeLabels with nil labels. A block kept
// for its cooling addresses is deleted by a Collector pass once they have
// cooled (Repair leaves it). A Collector with a node oracle
// (CollectorOptions.Nodes) does all of this for the nodes that are gone.
func (a *Allocator) ReleaseHostAffinities(ctx context.Context, node string, requireEmpty bool) ([]netip.Prefix, error) {
	const op = "release host affinities"
	if err := checkNode(op, node); err != nil {
		return nil, err
	}
	aff := block.Host(node)
	recs, err := a.store.List(ctx, KindAffinity, affinityRange(aff.String()))
	if err != nil {
		return nil, fmt.Errorf("ipam: %s %q: %w", op, node, err)
	}
	var released []netip.Prefix
	var errs []error
	for _, r := range recs {
		_, blk, err := parseAffinityKey(r.Key)
		if err != nil {
			errs = append(errs, fmt.Errorf("ipam: %w: %w", ErrCorrupt, err))
			continue
		}
		held, err := a.releaseHeld(ctx, aff, blk, requireEmpty)
		switch {
		case err == nil:
			if held {
				released = append(released, blk)
			}
		case errors.Is(err, ErrAffinityConflict):
			// A stale index entry: dropped by releaseHeld.
		case errors.Is(err, ErrBlockNotEmpty):
			errs = append(errs, &AddrError{Addr: blk.Addr(), Err: err}) // names the block
		default:
			return released, err
		}
	}
	return released, errors.Join(errs...)
}
