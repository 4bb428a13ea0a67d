package ipam

import (
	"context"
	"maps"
	"net/netip"
	"slices"

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
	// pools are the eligible pools, as chosen for the request that made
	// the memo. nodeFree (nsFree) says that no nodeSelector
	// (namespaceSelector) of a pool of the family that could be eligible
	// depends on the labels, so the node's (namespace's) labels do not
	// matter. Otherwise a request with the labels the memo was made for
	// uses it at once, and any other chooses its pools again (a selector
	// match per pool) and uses the memo if they are these.
	pools            []*pool.Pool
	nodeFree, nsFree bool
	// nodeLabels and nsLabels are the labels pools were chosen for, each
	// kept when it was a selector.Set or nil (nodeKept, nsKept): a request
	// with the same labels would choose the same pools, and need not
	// match selectors.
	nodeLabels, nsLabels selector.Set
	nodeKept, nsKept     bool
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
	if v.labelsMatter && !labelsGiven(args.NodeLabels) {
		// The node's stored labels, if the allocator has them.
		set, ok := a.cachedLabels(nc)
		if !ok {
			return res, false, nil
		}
		args.NodeLabels = set
	}
	m := nc.lane[fi].Load()
	if m != nil && (m.v != v || m.nb != nb) {
		m = nil
	}
	if m == nil || !m.fits(args) {
		m0 := m
		if m = remakeMemo(v, nb, fam, args, m); m == nil {
			return res, false, nil // no pool: AutoAssign says why
		}
		if m != m0 {
			nc.lane[fi].Store(m)
		}
	}
	if len(m.held) == 0 {
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

// remakeMemo chooses the pools for args, as AutoAssign does (without an
// allocation when some qualify and there are at most four), and returns a
// memo for them: m itself, which may be nil, if they are its pools (it
// keeps the labels it was made for: a node whose requests alternate
// between labels, pods of different namespaces say, makes no memo per
// request), or a new one, made for args' labels. It returns nil when no
// pool qualifies.
func remakeMemo(v *view, nb *nodeBlocks, fam pool.Family, args *AutoAssignArgs, m *laneMemo) *laneMemo {
	var buf [4]*pool.Pool
	pools, err := v.pools.AppendSelect(buf[:0], pool.Request{
		Family: fam, Node: args.Node, NodeLabels: args.NodeLabels, NamespaceLabels: args.NamespaceLabels, Use: pool.UseWorkload,
	})
	if err != nil {
		return nil
	}
	if m != nil && slices.Equal(pools, m.pools) {
		return m
	}
	m = laneMemoFor(v, nb, fam, pools)
	m.keepLabels(args)
	return m
}

// laneMemoFor makes the memo of family fam under v for pools, the
// eligible pools as AutoAssign chose them for a request, finding the
// node's blocks in them from nb, the node's index entries.
func laneMemoFor(v *view, nb *nodeBlocks, fam pool.Family, pools []*pool.Pool) *laneMemo {
	m := &laneMemo{v: v, nb: nb, pools: slices.Clone(pools), nodeFree: true, nsFree: true}
	m.held, m.unselected = heldIn(nil, nb.blocks, fam, m.pools)
	for _, p := range v.pools.All() {
		if p.Family() != fam || p.Disabled || p.Manual() {
			continue // passed over before its selectors are asked
		}
		m.nodeFree = m.nodeFree && labelFree(p.NodeSelector)
		m.nsFree = m.nsFree && labelFree(p.NamespaceSelector)
	}
	return m
}

// keepLabels records, in m, which must be new, the labels of args that
// are selector.Sets or nil.
func (m *laneMemo) keepLabels(args *AutoAssignArgs) {
	m.nodeLabels, m.nodeKept = setOf(args.NodeLabels)
	m.nsLabels, m.nsKept = setOf(args.NamespaceLabels)
}

// fits reports whether args would choose m's pools without matching
// selectors: each side's labels do not matter, or are those m's pools
// were chosen for.
func (m *laneMemo) fits(args *AutoAssignArgs) bool {
	return (m.nodeFree || m.nodeKept && sameSet(args.NodeLabels, m.nodeLabels)) &&
		(m.nsFree || m.nsKept && sameSet(args.NamespaceLabels, m.nsLabels))
}

// setOf returns a copy of l if it is a selector.Set or nil, and false for
// other Labels, which cannot be compared.
func setOf(l selector.Labels) (selector.Set, bool) {
	switch l := l.(type) {
	case nil:
		return nil, true
	case selector.Set:
		return maps.Clone(l), true
	}
	return nil, false
}

// sameSet reports whether l is a selector.Set (or nil) with exactly the
// labels of s.
func sameSet(l selector.Labels, s selector.Set) bool {
	var ls selector.Set
	switch l := l.(type) {
	case nil:
	case selector.Set:
		ls = l
	default:
		return false
	}
	if len(ls) != len(s) {
		return false
	}
	for k, v := range ls {
		if w, ok := s[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// labelFree reports whether a selector's answer does not depend on the
// labels: all() (or empty) matches any, and one that does not parse none.
func labelFree(text string) bool {
	s, err := selector.Parse(text)
	return err != nil || s == selector.All()
}
