package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

// EnsureBlockArgs asks EnsureBlock for a block of each family set.
type EnsureBlockArgs struct {
	// Node is the node the blocks are for. Required.
	Node string

	// NodeLabels are matched against pools' nodeSelector, as for
	// AutoAssign: nil (or a nil selector.Set) means the labels stored by
	// SetNodeLabels.
	NodeLabels selector.Labels

	// IPv4 and IPv6 say which families to ensure a block of; at least one
	// must be set.
	IPv4, IPv6 bool

	// IPv4Pools and IPv6Pools name the pools to use, in order, as for
	// AutoAssign: each by its name or its CIDR, bypassing selectors and
	// Manual assignment mode.
	IPv4Pools, IPv6Pools []string

	// ReserveFirst and ReserveLast reserve that many addresses at the
	// start and the end of a block this call claims, as for AutoAssign
	// (Calico's Windows nodes: 3 and 1). A block the node holds already
	// is returned as it is.
	ReserveFirst, ReserveLast int
}

// EnsureBlock returns a block affine to the node in each family asked for,
// claiming one only when the node holds none in the pools that qualify:
// Calico's EnsureBlock, for a node that needs its block before its first
// address (a Windows node's network, routes set up when the node joins).
// A family not asked for gives the zero Prefix.
//
// The pools are chosen as AutoAssign chooses them for a workload: enabled
// Automatic pools allowing Workload whose nodeSelector selects the node
// and whose namespaceSelector matches a namespace without labels (there is
// no namespace: a pool that selects namespaces by label, such as
// `team == "a"`, qualifies only when named), or those named, in that
// order. The block returned is the node's first in that order, full or
// not (but for one that reservations cover whole, which has no address to
// give, as in Calico). Otherwise it claims the node's next block in the
// first pool that has one, as AutoAssign would; it never borrows. It
// claims only with Config.AutoAllocateBlocks on, and fails otherwise with
// an error matching ErrNoSpace, as it does when no pool has a block left
// to claim; a family with no pool that qualifies fails with an error
// matching pool.ErrNoPool (and ErrPoolNotFound for a name no pool has).
// A node holding Config.MaxBlocksPerHost blocks there, all of them
// reserved whole, gets no other: an error matching ErrNoSpace and
// ErrBlockLimit. Bad arguments fail with ErrInvalid.
//
// It is all or nothing: when one family fails, a block it claimed for the
// other is given up again (if the store fails that, the error is the
// store's, not ErrNoSpace, as for AutoAssign). As for AutoAssign, the
// node's empty blocks in enabled pools that no longer select it are given
// up once it succeeds. Two calls at once for one node may each claim a
// block, as two AutoAssigns may; the node then holds both.
//
// A block returned is the node's when the call returns. Like any block it
// can be given up later: by ReleaseAffinity, by the node's removal, by the
// Collector when it is not the node's last of its family, by a later
// request of the node that succeeds while the block is empty and its pool
// no longer selects the node (a changed nodeSelector, or labels, given or
// stored, that do not match it), and by a request of the same node,
// running at the same time, that claimed it and then failed for its other
// family (a failed request gives up what it claimed while that is still
// empty).
func (a *Allocator) EnsureBlock(ctx context.Context, args EnsureBlockArgs) (v4, v6 netip.Prefix, err error) {
	const op = "ensure block"
	if err := checkEnsureBlock(op, args); err != nil {
		return netip.Prefix{}, netip.Prefix{}, err
	}
	v, err := a.loadView(ctx)
	if err != nil {
		return netip.Prefix{}, netip.Prefix{}, err
	}
	nc := a.node(args.Node)
	var unstored bool
	if args.NodeLabels, unstored, err = a.requestLabels(ctx, v, args.Node, nc, args.NodeLabels); err != nil {
		return netip.Prefix{}, netip.Prefix{}, err
	}
	// Choose the pools of both families before claiming anything.
	var pools [2][]*pool.Pool
	for i, fam := range []pool.Family{pool.IPv4, pool.IPv6} {
		want, names := args.IPv4, args.IPv4Pools
		if fam == pool.IPv6 {
			want, names = args.IPv6, args.IPv6Pools
		}
		if !want {
			continue
		}
		pools[i], err = v.pools.Select(pool.Request{
			Family: fam, Node: args.Node, NodeLabels: args.NodeLabels, Use: pool.UseWorkload, Pools: names,
		})
		if err != nil {
			err = ownLabels(err)
			if unstored {
				err = noStoredLabels(err, args.Node)
			}
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("ipam: %s for node %q: %s: %w", op, args.Node, fam, err)
		}
	}

	o := assignOp{
		v: v, node: args.Node, nc: nc, aff: block.Host(args.Node),
		labels: args.NodeLabels, rsv: hostReserved{args.ReserveFirst, args.ReserveLast},
	}
	var got [2]netip.Prefix
	for i, fam := range []pool.Family{pool.IPv4, pool.IPv6} {
		if pools[i] == nil {
			continue
		}
		if got[i], err = a.ensureBlock(ctx, &o, fam, pools[i]); err != nil {
			// Give up what it claimed. After a store error, best effort; after
			// a clean failure (no space), a rollback that fails is the error,
			// as for AutoAssign: a block claimed may still be the node's, and
			// ErrNoSpace alone would say that nothing changed.
			if rerr := a.rollback(ctx, &o, AutoAssignResult{}); rerr != nil && errors.Is(err, ErrNoSpace) {
				err = fmt.Errorf("%v; giving up the blocks claimed: %w", err, rerr)
			}
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("ipam: %s for node %q: %s: %w", op, args.Node, fam, err)
		}
	}
	a.dropUnselected(ctx, &o)
	return got[0], got[1], nil
}

// checkEnsureBlock checks EnsureBlock's args.
func checkEnsureBlock(op string, args EnsureBlockArgs) error {
	if !args.IPv4 && !args.IPv6 {
		return invalid(op, "no family asked for (set IPv4, IPv6 or both)")
	}
	if err := checkClaimArgs(op, args.ReserveFirst, args.ReserveLast, args.IPv4Pools, args.IPv6Pools); err != nil {
		return err
	}
	return checkNode(op, args.Node) // not checkRequestNode: no Use to point to
}

// ensureBlock is EnsureBlock for one family and its pools, in order: the
// node's first block there, or one claimed for it, recorded in o.claimed.
func (a *Allocator) ensureBlock(ctx context.Context, o *assignOp, fam pool.Family, pools []*pool.Pool) (netip.Prefix, error) {
	affine, err := a.affineBlocks(ctx, o.aff, o.nc)
	if err != nil {
		return netip.Prefix{}, err
	}
	held, unselected := heldIn(nil, affine, fam, pools)
	o.unselected = append(o.unselected, unselected...)
	var kept []netip.Prefix // the node's blocks that reservations cover whole
	for _, h := range held {
		mine, err := a.stillAffine(ctx, h.blk, o.aff)
		switch {
		case err != nil:
			return netip.Prefix{}, err
		case !mine:
			// An index entry whose block is gone or another's (what a
			// crash in a claim or a release leaves): no block of the
			// node's.
			_ = a.dropIndex(ctx, o.aff, h.blk, 0) // best effort: Repair finds what is left
		case o.v.hasReserved && o.v.reserved.ContainsPrefix(h.blk):
			kept = append(kept, h.blk) // no address to assign, as Calico skips it
		default:
			return h.blk, nil
		}
	}

	cfg := o.v.config
	switch {
	case !cfg.AutoAllocateBlocks:
		return netip.Prefix{}, fmt.Errorf("%w: autoAllocateBlocks is off and the node holds no block of %s it can use", ErrNoSpace, poolNames(pools))
	case cfg.MaxBlocksPerHost > 0 && len(kept) >= cfg.MaxBlocksPerHost:
		return netip.Prefix{}, fmt.Errorf("%w: %w (%d), all of them reserved whole", ErrNoSpace, ErrBlockLimit, cfg.MaxBlocksPerHost)
	}
	var why []string
	for _, p := range pools {
		if !o.rsv.fits(1 << (p.CIDR.Addr().BitLen() - p.BlockSize)) {
			why = append(why, o.rsv.tooSmall(p))
			continue
		}
		blk, _, got, err := a.claimFor(ctx, o, p, newWalker(o.v, p, kept), kept)
		switch {
		case err != nil:
			return netip.Prefix{}, err
		case got == poolChanged:
			why = append(why, changedReason(p))
		case got == poolFull:
			why = append(why, fmt.Sprintf("no unclaimed block left in pool %q", p.Name))
		default:
			return blk, nil
		}
	}
	if r := o.corruptReason(fam); r != "" {
		why = append(why, r)
	}
	return netip.Prefix{}, fmt.Errorf("%w: %s", ErrNoSpace, joinReasons(why))
}

// stillAffine reads block blk afresh and reports whether it exists and is
// affine to aff.
func (a *Allocator) stillAffine(ctx context.Context, blk netip.Prefix, aff block.Affinity) (bool, error) {
	e := a.entry(blk)
	e.lock()
	defer e.unlock()
	if err := a.load(ctx, e); err != nil {
		return false, err
	}
	return e.blk != nil && e.blk.Affinity() == aff, nil
}
