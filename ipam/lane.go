package ipam

import (
	"context"
	"net/netip"

	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

// The lane is AutoAssign for the request a node makes nearly every time:
// one address of one family, for a workload, with no pools named, from
// the node's own block, while nothing it depends on has changed. Such a
// request would choose the same pools and find the same blocks as the
// last one, so the lane keeps what the last one chose (a laneMemo per
// node and family), checks with the store's generations that it still
// stands, and goes to the node's first block at once, with the
// request's attempt there (assignOnce, retried as assignFrom retries it).
//
// It changes no decision. Before that attempt it writes nothing, and
// leaves to AutoAssign, which starts over, any request it cannot serve
// (another shape, an argument AutoAssign refuses, a view or an index
// entry out of date, a family without a pool or a block). After it, a
// request that got its address, with the reservations unchanged, returns
// what AutoAssign would; any other outcome (an error, a full block, one
// no longer the node's, a reservation made meanwhile) goes on in
// autoAssign from that attempt (laneTry), exactly as if AutoAssign had
// made it. TestLaneMatchesAutoAssign checks that the two write the same
// records and return the same results and errors.

// laneMemo is what AutoAssign chose for a node and a family under one
// view and one listing of the node's index entries: the eligible pools
// for a workload request without pools named, and the node's blocks in
// them. Never modified once made.
type laneMemo struct {
	v  *view
	nb *nodeBlocks
	// pools are the eligible pools, chosen for a request without labels;
	// labelFree says that no selector of a pool of the family that could
	// be eligible depends on the labels, so they serve any labels.
	pools     []*pool.Pool
	labelFree bool
	// held and unselected are as assignFamily finds them: the node's
	// blocks in pools, in pool order, and its blocks of the family that no
	// pool of pools holds.
	held       []heldBlock
	unselected []netip.Prefix
}

// laneTry is the lane's attempt on the node's first block, for autoAssign
// to go on from.
type laneTry struct {
	fam  int // the family's index: 0 for IPv4, 1 for IPv6
	held []heldBlock
	out  []Assigned
	r    fromResult
	err  error
}

// autoAssignLane serves args if it has the lane's shape and the node's
// memo stands (see above); ok is false, with nothing written, when it
// leaves the request to AutoAssign.
func (a *Allocator) autoAssignLane(ctx context.Context, args *AutoAssignArgs) (res AutoAssignResult, ok bool, err error) {
	fi, fam := 0, pool.IPv4
	switch {
	case args.Num4 == 1 && args.Num6 == 0:
	case args.Num4 == 0 && args.Num6 == 1:
		fi, fam = 1, pool.IPv6
	default:
		return res, false, nil
	}
	if len(args.IPv4Pools)+len(args.IPv6Pools) > 0 || (args.Use != "" && args.Use != pool.UseWorkload) ||
		uint(args.ReserveFirst) > MaxHostReserved || uint(args.ReserveLast) > MaxHostReserved {
		return res, false, nil
	}
	nc, known := a.nodes.get(args.Node)
	if !known || checkHandle("auto-assign", args.Handle) != nil {
		return res, false, nil
	}
	attrs := nc.attrs
	if len(args.Attrs) > 0 {
		m, shared, err := ownerAttrs("auto-assign", args.Node, args.Attrs)
		if err != nil {
			return res, false, nil
		}
		if !shared {
			attrs = m
		}
	}
	// As loadView and affineBlocks would find them, without a read.
	v, nb := a.view.Load(), nc.blocks.Load()
	if v == nil || a.gens.Generation(KindPool) != v.poolsGen || a.gens.Generation(KindConfig) != v.configGen ||
		a.gens.Generation(KindReservation) != v.resvGen || nb == nil || nb.gen != a.gens.Generation(KindAffinity) {
		return res, false, nil
	}
	m := nc.lane[fi].Load()
	if m == nil || m.v != v || m.nb != nb {
		if m = laneMemoFor(v, nb, args.Node, fam); m == nil {
			return res, false, nil
		}
		nc.lane[fi].Store(m)
	}
	if len(m.held) == 0 || (args.NodeLabels != nil || args.NamespaceLabels != nil) && !m.labelFree {
		return res, false, nil
	}

	// What AutoAssign would make, for the attempt and for autoAssign.
	var op assignOp
	o := &op
	a.startAssign(o, v, nc, args, attrs)
	o.unselected = m.unselected[:len(m.unselected):len(m.unselected)]
	out := make([]Assigned, 0, 1)
	h := m.held[0]
	r, err := a.assignFrom(ctx, o, &out, m.pools[h.pool].Name, h.blk, 1, true, false)
	if err == nil && r == fromTook && len(out) == 1 && a.gens.Generation(KindReservation) == v.resvGen {
		if a.laneTrace != nil {
			a.laneTrace(false)
		}
		a.dropUnselected(ctx, o)
		if fi == 0 {
			return AutoAssignResult{IPv4: out}, true, nil
		}
		return AutoAssignResult{IPv6: out}, true, nil
	}
	if a.laneTrace != nil {
		a.laneTrace(true)
	}
	var pools [2][]*pool.Pool
	var selErr [2]error
	pools[fi] = m.pools
	res, err = a.autoAssign(ctx, args, o, &pools, &selErr, &laneTry{fam: fi, held: m.held, out: out, r: r, err: err})
	return res, true, err
}

// laneMemoFor chooses, as AutoAssign would, the pools of family fam for a
// workload request of node without labels or pools named, under v, and
// finds the node's blocks in them from nb, the node's index entries. It
// returns nil when no pool is eligible (AutoAssign reports why).
func laneMemoFor(v *view, nb *nodeBlocks, node string, fam pool.Family) *laneMemo {
	pools, err := v.pools.AppendSelect(nil, pool.Request{Family: fam, Node: node, Use: pool.UseWorkload})
	if err != nil {
		return nil
	}
	m := &laneMemo{v: v, nb: nb, pools: pools, labelFree: true}
	m.held, m.unselected = heldIn(nil, nb.blocks, fam, pools)
	for _, p := range v.pools.All() {
		if p.Family() != fam || p.Disabled || p.Manual() {
			continue // passed over before its selectors are asked
		}
		if !labelFree(p.NodeSelector) || !labelFree(p.NamespaceSelector) {
			m.labelFree = false
			break
		}
	}
	return m
}

// labelFree reports whether a selector's answer does not depend on the
// labels: all() (or empty) matches any, and one that does not parse none.
func labelFree(text string) bool {
	s, err := selector.Parse(text)
	return err != nil || s == selector.All()
}
