package ipam

import (
	"context"
	"net/netip"
	"slices"

	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

// The lane is AutoAssign for the request a node makes nearly every time:
// one address of one family (or one of each, for a dual-stack pod), for a
// workload, with no pools named, from the node's own block, while nothing
// it depends on has changed. Such a request would choose the same pools
// and find the same blocks as the last one, so the lane keeps what the
// last one chose (a laneMemo per node and family), checks with the
// store's generations that it still stands, and goes to the node's first
// block at once, with the request's attempt there (assignOnce, retried as
// assignFrom retries it); for a dual-stack pod, IPv4 first, then IPv6.
//
// It changes no decision. Before the first attempt it writes nothing, and
// leaves to AutoAssign, which starts over, any request it cannot serve
// (another shape, an argument AutoAssign refuses, a view or an index
// entry out of date, a family without a pool or a block). After it, a
// request that got its addresses, with the reservations unchanged,
// returns what AutoAssign would; any other outcome (an error, a full
// block, one no longer the node's, a reservation made meanwhile, the
// node's index entries changed before the second family's attempt) goes
// on in autoAssign from the attempts made (laneTry, per family), exactly
// as if AutoAssign had made them. TestLaneMatchesAutoAssign checks that
// the two write the same records and return the same results and errors.

// laneMemo is what AutoAssign chose for a node and a family under one
// view and one listing of the node's index entries: the eligible pools
// for a workload request without pools named, and the node's blocks in
// them. Never modified once made.
type laneMemo struct {
	v  *view
	nb *nodeBlocks
	// pools are the eligible pools, as chosen for the request that made
	// the memo. node and ns are the label keys that the nodeSelectors and
	// namespaceSelectors of the pools of the family that could be
	// eligible read, with the labels the pools were chosen for there: a
	// request whose labels agree on those keys would choose the same
	// pools, and uses the memo at once (with no key, whatever its labels).
	// Any other chooses its pools again (a selector match per pool) and
	// uses the memo if they are these.
	pools    []*pool.Pool
	node, ns keyedLabels
	// held and unselected are as assignFamily finds them: the node's
	// blocks in pools, in pool order, and its blocks of the family that no
	// pool of pools holds.
	held       []heldBlock
	unselected []netip.Prefix
}

// laneTry is the lane's attempt on the node's first block of a family,
// for autoAssign to go on from.
type laneTry struct {
	held []heldBlock
	out  []Assigned
	r    fromResult
	err  error
}

// autoAssignLane serves args if it has the lane's shape and the node's
// memo stands (see above); ok is false, with nothing written, when it
// leaves the request to AutoAssign. A dual-stack request (an address of
// each family) is two such attempts, IPv4 first, as AutoAssign makes them.
func (a *Allocator) autoAssignLane(ctx context.Context, args *AutoAssignArgs) (res AutoAssignResult, ok bool, err error) {
	var fams [2]bool // which families the request asks one address of
	switch {
	case args.Num4 == 1 && args.Num6 == 0:
		fams[0] = true
	case args.Num4 == 0 && args.Num6 == 1:
		fams[1] = true
	case args.Num4 == 1 && args.Num6 == 1:
		fams = [2]bool{true, true}
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
	given := args.NodeLabels
	if v.labelsMatter && !labelsGiven(given) {
		// The node's stored labels, if the allocator has them.
		set, ok := a.cachedLabels(nc)
		if !ok {
			return res, false, nil
		}
		args.NodeLabels = set
	}
	var ms [2]*laneMemo
	for fi, fam := range [2]pool.Family{pool.IPv4, pool.IPv6} {
		if !fams[fi] {
			continue
		}
		m := nc.lane[fi].Load()
		if m == nil || m.v != v || m.nb != nb || !m.fits(args) {
			m = laneMemoAgain(nc, fi, fam, v, nb, args)
		}
		if ms[fi] = m; m == nil || len(m.held) == 0 {
			args.NodeLabels = given // AutoAssign says why, and where the labels came from
			return res, false, nil
		}
	}

	// What AutoAssign would make, for the attempts and for autoAssign.
	var op assignOp
	o := &op
	a.startAssign(o, v, nc, args, attrs)
	var outs [2][]Assigned
	var rs [2]fromResult
	var errs [2]error
	var tried [2]bool
	done := true
	for fi, m := range ms {
		if m == nil {
			continue
		}
		if tried[0] && nb.gen != a.gens.Generation(KindAffinity) {
			// AutoAssign looks at the node's blocks again for each
			// family: after a change, the IPv6 memo's are not the ones it
			// would find, so that family goes the way AutoAssign goes.
			done = false
			break
		}
		// As assignFamily gathers them, family by family.
		if o.unselected == nil {
			o.unselected = m.unselected[:len(m.unselected):len(m.unselected)]
		} else {
			o.unselected = append(o.unselected, m.unselected...)
		}
		out := make([]Assigned, 0, 1)
		h := m.held[0]
		rs[fi], errs[fi] = a.assignFrom(ctx, o, &out, m.pools[h.pool].Name, h.blk, 1, true, false)
		outs[fi], tried[fi] = out, true
		if errs[fi] != nil || rs[fi] != fromTook || len(out) != 1 {
			done = false
			break
		}
	}
	if done && a.gens.Generation(KindReservation) == v.resvGen && a.gens.Generation(KindPool) == v.poolsGen && !o.uncarved {
		if a.laneTrace != nil {
			a.laneTrace(false)
		}
		a.dropUnselected(ctx, o)
		return AutoAssignResult{IPv4: outs[0], IPv6: outs[1]}, true, nil
	}
	if a.laneTrace != nil {
		a.laneTrace(true)
	}
	var pools [2][]*pool.Pool
	var selErr [2]error
	var first [2]*laneTry
	for fi, m := range ms {
		if m == nil {
			continue
		}
		pools[fi] = m.pools
		if tried[fi] {
			first[fi] = &laneTry{held: m.held, out: outs[fi], r: rs[fi], err: errs[fi]}
		}
	}
	res, err = a.autoAssign(ctx, args, o, &pools, &selErr, &first)
	return res, true, err
}

// laneMemoAgain returns the node's memo of family fam (index fi) for args
// under v and nb when the one it has does not fit them (see remakeMemo),
// and nil when no pool qualifies.
func laneMemoAgain(nc *nodeCache, fi int, fam pool.Family, v *view, nb *nodeBlocks, args *AutoAssignArgs) *laneMemo {
	m := nc.lane[fi].Load()
	if m != nil && (m.v != v || m.nb != nb) {
		m = nil
	}
	m0 := m
	if m = remakeMemo(v, nb, fam, args, m); m != nil && m != m0 {
		nc.lane[fi].Store(m)
	}
	return m
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
	m := &laneMemo{v: v, nb: nb, pools: slices.Clone(pools)}
	m.held, m.unselected = heldIn(nil, nb.blocks, fam, m.pools)
	var node, ns []string
	for _, p := range v.pools.All() {
		if p.Family() != fam || p.Disabled || p.Manual() {
			continue // passed over before its selectors are asked
		}
		node = append(node, selectorKeys(p.NodeSelector)...)
		ns = append(ns, selectorKeys(p.NamespaceSelector)...)
	}
	slices.Sort(node)
	slices.Sort(ns)
	m.node.keys, m.ns.keys = slices.Compact(node), slices.Compact(ns)
	return m
}

// keepLabels records, in m, which must be new, the labels of args on the
// keys the selectors read.
func (m *laneMemo) keepLabels(args *AutoAssignArgs) {
	m.node.keep(args.NodeLabels)
	m.ns.keep(args.NamespaceLabels)
}

// fits reports whether args would choose m's pools without matching
// selectors: its labels agree, on each side, with those m's pools were
// chosen for on the keys the selectors read.
func (m *laneMemo) fits(args *AutoAssignArgs) bool {
	return m.node.same(args.NodeLabels) && m.ns.same(args.NamespaceLabels)
}

// keyedLabels are some labels on some keys: for each key, its value and
// whether it is present.
type keyedLabels struct {
	keys []string
	vals []labelValue
}

type labelValue struct {
	v  string
	ok bool
}

// keep records l's values on k's keys; k must be new.
func (k *keyedLabels) keep(l selector.Labels) {
	if len(k.keys) == 0 {
		return
	}
	k.vals = make([]labelValue, len(k.keys))
	for i, key := range k.keys {
		k.vals[i].v, k.vals[i].ok = getLabel(l, key)
	}
}

// same reports whether l has the values k keeps on k's keys.
func (k *keyedLabels) same(l selector.Labels) bool {
	for i, key := range k.keys {
		if v, ok := getLabel(l, key); v != k.vals[i].v || ok != k.vals[i].ok {
			return false
		}
	}
	return true
}

// getLabel is l.Get(key), with nil l holding no labels, as for selectors.
func getLabel(l selector.Labels, key string) (string, bool) {
	if l == nil {
		return "", false
	}
	return l.Get(key)
}

// selectorKeys returns the label keys the selector text reads: none if it
// does not parse, as it then matches nothing.
func selectorKeys(text string) []string {
	s, err := selector.Parse(text)
	if err != nil {
		return nil
	}
	return s.Keys()
}
