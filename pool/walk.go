package pool

import (
	"iter"
	"net/netip"
	"slices"

	"github.com/carve-ipam/carve/internal/ipmath"
)

// Walk returns every block of p once, in node's order, leaving out the
// blocks that overlap a prefix in skip.
//
// node's order starts at a block chosen by a hash of the node name and runs
// upwards through the pool, wrapping from the last block to the first, so
// different nodes start in different places and one node always tries the
// same blocks in the same order (Calico does the same, with a random start
// seeded by the node name). The hash is FNV-1a spread to 128 bits; it is
// stable across processes and runs.
//
// Walk never lists the pool. Taking the first block costs one hash plus
// sorting skip; each further block costs O(1), and a run of consecutive
// skipped blocks, however long, is jumped over in one step. A /48 IPv6 pool
// with /122 blocks (2^74 of them) is as quick to walk as a /24.
//
// skip is typically the blocks that already exist in the pool. A skip prefix
// larger than a block skips every block inside it; one smaller than a block
// skips the block holding it; prefixes of the other family or outside p are
// ignored. skip is read each time the sequence is iterated, not kept.
//
// When p's CIDR is invalid or smaller than one block, the sequence is empty.
func (p *Pool) Walk(node string, skip []netip.Prefix) iter.Seq[netip.Prefix] {
	g, ok := p.geometry()
	if !ok {
		return func(func(netip.Prefix) bool) {}
	}
	return func(yield func(netip.Prefix) bool) {
		walkIndices(g.last(), nodeStart(node, g.n), skipRuns(g, skip), func(i ipmath.Uint128) bool {
			return yield(g.at(i))
		})
	}
}

// run is an inclusive range of block indices.
type run struct{ lo, hi ipmath.Uint128 }

// runOf returns the run of block indices of g that q covers, by Walk's
// rules for skip prefixes, or false when q covers none.
func (g geom) runOf(q netip.Prefix) (run, bool) {
	if !q.IsValid() || q.Addr().Is4() != g.cidr.Addr().Is4() {
		return run{}, false
	}
	if q.Bits() >= g.bs {
		// Inside one block, the one holding its address, which masking
		// would not move: the common case (a block), without Masked and
		// Overlaps.
		if !g.cidr.Contains(q.Addr()) {
			return run{}, false
		}
		lo, _ := ipmath.PrefixIndex(g.cidr, g.bs, q.Addr())
		return run{lo, lo}, true
	}
	q = q.Masked()
	if !q.Overlaps(g.cidr) {
		return run{}, false
	}
	if q.Bits() <= g.cidr.Bits() {
		return run{ipmath.Uint128{}, g.last()}, true // q covers the whole pool
	}
	lo, _ := ipmath.PrefixIndex(g.cidr, g.bs, q.Addr())
	hi := lo
	if q.Bits() < g.bs {
		hi = lo.Add(ipmath.Mask(uint(g.bs - q.Bits())))
	}
	return run{lo, hi}, true
}

// skipRuns turns skip into sorted, merged runs of block indices of g. Runs
// that touch are merged too, so that a walk jumping past one run never lands
// in the next.
func skipRuns(g geom, skip []netip.Prefix) []run {
	if len(skip) == 0 {
		return nil
	}
	return runsOf(g, slices.Values(skip))
}

// runsOf is skipRuns for a sequence. Prefixes in address order, as a
// listing of a pool's blocks gives them, are merged as they come, so the
// runs take room for the gaps between them, not for every prefix; others
// are sorted once at the end.
func runsOf(g geom, skip iter.Seq[netip.Prefix]) []run {
	var runs []run
	sorted := true
	for q := range skip {
		r, ok := g.runOf(q)
		if !ok {
			continue
		}
		if n := len(runs); n > 0 {
			if r.lo.Cmp(runs[n-1].lo) < 0 {
				sorted = false
			} else if sorted && touches(runs[n-1], r) {
				runs[n-1].hi = maxIndex(runs[n-1].hi, r.hi)
				continue
			}
		}
		runs = append(runs, r)
	}
	if sorted {
		return runs
	}
	slices.SortFunc(runs, func(a, b run) int { return a.lo.Cmp(b.lo) })
	merged := runs[:0]
	for _, r := range runs {
		if n := len(merged); n > 0 && touches(merged[n-1], r) {
			merged[n-1].hi = maxIndex(merged[n-1].hi, r.hi)
			continue
		}
		merged = append(merged, r)
	}
	return merged
}

// touches reports whether run b, which starts at or after a, overlaps a or
// starts right after it.
func touches(a, b run) bool {
	next, over := a.hi.AddOverflow(ipmath.U64(1))
	return over || b.lo.Cmp(next) <= 0
}

func maxIndex(a, b ipmath.Uint128) ipmath.Uint128 {
	if a.Cmp(b) >= 0 {
		return a
	}
	return b
}

// Walker walks one pool's blocks as [Pool.Walk] does, passing over a set
// of blocks that it keeps and that grows a prefix at a time. A node
// claiming block after block adds each one it claims, and the next walk
// jumps over all of them at once, without the cost of sorting them all
// again for every claim. Make one with [Pool.NewWalker].
type Walker struct {
	g    geom
	ok   bool
	runs []run
}

// NewWalker returns a walker of p that passes over the blocks overlapping
// a prefix of skip, with Walk's rules for skip prefixes. It does not keep
// skip.
func (p *Pool) NewWalker(skip []netip.Prefix) *Walker {
	g, ok := p.geometry()
	w := &Walker{g: g, ok: ok}
	if ok {
		w.runs = skipRuns(g, skip)
	}
	return w
}

// Skip adds q to the prefixes the walker passes over, with Walk's rules
// for skip prefixes. It costs a binary search and, when q does not touch
// blocks skipped already, a slice insertion. It must not be called while a
// sequence from Walk is being iterated.
func (w *Walker) Skip(q netip.Prefix) {
	if !w.ok {
		return
	}
	r, ok := w.g.runOf(q)
	if !ok {
		return
	}
	// i is the first run that ends at or after r's start less one: the
	// first that r can touch.
	i, _ := slices.BinarySearchFunc(w.runs, r.lo, func(x run, lo ipmath.Uint128) int {
		if touches(x, run{lo, lo}) {
			return 0
		}
		return x.hi.Cmp(lo)
	})
	// Merge every run from i on that r touches.
	j := i
	for j < len(w.runs) && (touches(r, w.runs[j]) || w.runs[j].lo.Cmp(r.lo) <= 0) {
		if w.runs[j].lo.Cmp(r.lo) < 0 {
			r.lo = w.runs[j].lo
		}
		r.hi = maxIndex(r.hi, w.runs[j].hi)
		j++
	}
	w.runs = slices.Replace(w.runs, i, j, r)
}

// SkipAll adds every prefix of qs to those the walker passes over, as
// Skip does each, but at once: the new prefixes are merged (in address
// order as they come, else sorted first), and then merged with the
// walker's in one pass. For many prefixes, such as every block a pool
// listing returns, it is much cheaper than a Skip per prefix. It must not
// be called while a sequence from Walk is being iterated.
func (w *Walker) SkipAll(qs iter.Seq[netip.Prefix]) {
	if !w.ok {
		return
	}
	add := runsOf(w.g, qs)
	if len(add) == 0 {
		return
	}
	if len(w.runs) == 0 {
		w.runs = add
		return
	}
	out := make([]run, 0, len(w.runs)+len(add))
	i, j := 0, 0
	for i < len(w.runs) || j < len(add) {
		var r run
		if j == len(add) || i < len(w.runs) && w.runs[i].lo.Cmp(add[j].lo) <= 0 {
			r, i = w.runs[i], i+1
		} else {
			r, j = add[j], j+1
		}
		if n := len(out); n > 0 && touches(out[n-1], r) {
			out[n-1].hi = maxIndex(out[n-1].hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	w.runs = out
}

// Walk returns every block of the pool once, in node's order (see
// [Pool.Walk]), leaving out the blocks the walker skips. The set is read
// as the sequence is iterated.
func (w *Walker) Walk(node string) iter.Seq[netip.Prefix] {
	if !w.ok {
		return func(func(netip.Prefix) bool) {}
	}
	return func(yield func(netip.Prefix) bool) {
		walkIndices(w.g.last(), nodeStart(node, w.g.n), w.runs, func(i ipmath.Uint128) bool {
			return yield(w.g.at(i))
		})
	}
}

// walkIndices calls visit with every index in 0..last that no run covers,
// from start upwards, wrapping to 0, until visit returns false. It returns
// the number of loop steps taken (each step visits one index or jumps one
// run), which the tests use to check that long runs cost one step.
func walkIndices(last, start ipmath.Uint128, runs []run, visit func(ipmath.Uint128) bool) (steps int) {
	type segment struct{ lo, hi ipmath.Uint128 }
	segs := [2]segment{{start, last}, {ipmath.Uint128{}, start.Sub(ipmath.U64(1))}}
	nsegs := 2
	if start.IsZero() {
		nsegs = 1
	}
	for _, s := range segs[:nsegs] {
		// j is the first run that ends at or after cur: the only one that
		// can cover cur. Runs are disjoint and sorted, so j only moves up.
		j, _ := slices.BinarySearchFunc(runs, s.lo, func(r run, t ipmath.Uint128) int { return r.hi.Cmp(t) })
		cur := s.lo
		for {
			steps++
			if j < len(runs) && runs[j].lo.Cmp(cur) <= 0 {
				if runs[j].hi.Cmp(s.hi) >= 0 {
					break // the rest of the segment is skipped
				}
				cur = runs[j].hi.Add(ipmath.U64(1))
				j++
				continue
			}
			if !visit(cur) {
				return steps
			}
			if cur == s.hi {
				break
			}
			cur = cur.Add(ipmath.U64(1))
		}
	}
	return steps
}

// nodeStart returns the index of node's first block among 2^n: a 64-bit
// FNV-1a hash of the name, spread to 128 bits with splitmix64 so that every
// bit of the index depends on every byte of the name.
func nodeStart(node string, n uint) ipmath.Uint128 {
	const (
		offset64 = 14695981039346656037
		prime64  = 1099511628211
	)
	h := uint64(offset64)
	for i := 0; i < len(node); i++ {
		h ^= uint64(node[i])
		h *= prime64
	}
	return ipmath.Uint128{Hi: splitmix64(h), Lo: splitmix64(^h)}.And(ipmath.Mask(n))
}

func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}
