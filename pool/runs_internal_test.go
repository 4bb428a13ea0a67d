package pool

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/internal/ipmath"
)

// runOfMasked is runOf as it was before its fast path: every prefix
// masked, checked with Overlaps, then placed. The reference for
// TestRunOfMatchesMasked.
func runOfMasked(g geom, q netip.Prefix) (run, bool) {
	if !q.IsValid() || q.Addr().Is4() != g.cidr.Addr().Is4() {
		return run{}, false
	}
	q = q.Masked()
	if !q.Overlaps(g.cidr) {
		return run{}, false
	}
	if q.Bits() <= g.cidr.Bits() {
		return run{ipmath.Uint128{}, g.last()}, true
	}
	lo, _ := ipmath.PrefixIndex(g.cidr, g.bs, q.Addr())
	hi := lo
	if q.Bits() < g.bs {
		hi = lo.Add(ipmath.Mask(uint(g.bs - q.Bits())))
	}
	return run{lo, hi}, true
}

// drawGeom draws a pool as drawAnyPool does, with its geometry.
func drawGeom(t *rapid.T) (*Pool, geom) {
	p := drawAnyPool(t)
	g, ok := p.geometry()
	require.True(t, ok)
	return p, g
}

// drawAnyPool draws a pool of either family of any size and block size,
// its CIDR masked or not, down to ::/0 in /128 blocks.
func drawAnyPool(t *rapid.T) *Pool {
	var a netip.Addr
	if rapid.Bool().Draw(t, "v4") {
		a = netip.AddrFrom4([4]byte(rapid.SliceOfN(rapid.Byte(), 4, 4).Draw(t, "a4")))
	} else {
		a = netip.AddrFrom16([16]byte(rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, "a6")))
		if a.Is4In6() || rapid.IntRange(0, 3).Draw(t, "low") == 0 {
			// Low in the space, where IPv4-mapped addresses are (a
			// mapped pool itself is refused by geometry).
			a = netip.AddrFrom16([16]byte{15: 1})
		}
	}
	w := a.BitLen()
	bits := rapid.IntRange(0, w).Draw(t, "bits")
	bs := rapid.IntRange(bits, w).Draw(t, "blockSize")
	cidr := netip.PrefixFrom(a, bits)
	if rapid.Bool().Draw(t, "masked") {
		cidr = cidr.Masked()
	}
	return &Pool{Name: "p", CIDR: cidr, BlockSize: bs}
}

// drawNear draws a prefix around g's pool: an address inside the pool,
// just outside it, anywhere, or IPv4-mapped; of any length; masked or
// not; now and then invalid or of the other family.
func drawNear(t *rapid.T, g geom, label string) netip.Prefix {
	base := ipmath.FromAddr(g.cidr.Addr())
	w := g.cidr.Addr().BitLen()
	is4 := g.cidr.Addr().Is4()
	var u ipmath.Uint128
	switch rapid.IntRange(0, 6).Draw(t, label+"where") {
	case 0: // anywhere
		u = ipmath.Uint128{Hi: rapid.Uint64().Draw(t, label+"hi"), Lo: rapid.Uint64().Draw(t, label+"lo")}
	case 1: // just below the pool
		u = base.Sub(ipmath.U64(rapid.Uint64Range(1, 4).Draw(t, label+"below")))
	case 2: // just above the pool
		end := base.Or(ipmath.Mask(uint(w - g.cidr.Bits())))
		u = end.Add(ipmath.U64(rapid.Uint64Range(1, 4).Draw(t, label+"above")))
	default: // inside: a block index and an offset in the block
		idx := ipmath.Uint128{Hi: rapid.Uint64().Draw(t, label+"ihi"), Lo: rapid.Uint64().Draw(t, label+"ilo")}.And(g.last())
		if rapid.Bool().Draw(t, label+"edge") {
			idx = rapid.SampledFrom([]ipmath.Uint128{{}, g.last(), g.last().Sub(ipmath.U64(1))}).Draw(t, label+"edgeIdx").And(g.last())
		}
		off := ipmath.Uint128{Hi: rapid.Uint64().Draw(t, label+"ohi"), Lo: rapid.Uint64().Draw(t, label+"olo")}.And(ipmath.Mask(uint(w - g.bs)))
		u = base.Or(idx.Lsh(uint(w - g.bs))).Or(off)
	}
	if is4 {
		u = u.And(ipmath.Mask(32))
	}
	a := ipmath.ToAddr(u, is4)
	switch rapid.IntRange(0, 12).Draw(t, label+"odd") {
	case 0:
		return netip.Prefix{}
	case 1: // the other family
		if is4 {
			a = netip.AddrFrom16(a.As16()) // IPv4-mapped
		} else {
			a = ipmath.ToAddr4(u.Lo)
		}
	case 2: // with a zone, which a Prefix drops
		if !is4 {
			a = a.WithZone("eth0")
		}
	case 3: // IPv4-mapped, of the pool's family when it is IPv6
		a = netip.AddrFrom16(ipmath.ToAddr4(u.Lo).As16())
	}
	bits := rapid.IntRange(0, a.BitLen()).Draw(t, label+"bits")
	if rapid.IntRange(0, 2).Draw(t, label+"long") == 0 {
		bits = rapid.IntRange(min(g.bs, a.BitLen()), a.BitLen()).Draw(t, label+"longBits")
	}
	q := netip.PrefixFrom(a, bits)
	if rapid.IntRange(0, 3).Draw(t, label+"mask") == 0 {
		q = q.Masked()
	}
	return q
}

// TestRunOfMatchesMasked: runOf, with its fast path for prefixes no
// shorter than a block, gives what masking every prefix first gives, for
// any pool (masked or not) and any prefix (unmasked, outside the pool,
// IPv4-mapped, zoned, of the other family).
func TestRunOfMatchesMasked(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		_, g := drawGeom(t)
		for i := range 8 {
			q := drawNear(t, g, fmt.Sprint(i))
			got, gok := g.runOf(q)
			want, wok := runOfMasked(g, q)
			require.Equal(t, wok, gok, "%s in %s/%d", q, g.cidr, g.bs)
			if wok {
				require.Equal(t, want, got, "%s in %s/%d", q, g.cidr, g.bs)
			}
		}
	})
}

// covered reports whether one of runs covers i.
func covered(runs []run, i ipmath.Uint128) bool {
	return slices.ContainsFunc(runs, func(r run) bool { return r.lo.Cmp(i) <= 0 && i.Cmp(r.hi) <= 0 })
}

// requireCanonical checks that runs are sorted, disjoint and do not touch.
func requireCanonical(t require.TestingT, runs []run, g geom) {
	for i, r := range runs {
		require.True(t, r.lo.Cmp(r.hi) <= 0, "run %d: %v", i, r)
		require.True(t, r.hi.Cmp(g.last()) <= 0, "run %d past the last block: %v", i, r)
		if i > 0 {
			next, over := runs[i-1].hi.AddOverflow(ipmath.U64(1))
			require.False(t, over, "run %d after one that ends at the top", i)
			require.True(t, next.Cmp(r.lo) < 0, "runs %d and %d touch or overlap: %v %v", i-1, i, runs[i-1], r)
		}
	}
}

// requireSameCover checks that runs cover exactly the indices that one of
// the prefixes covers: they agree at every edge of either, and on both
// sides of it, which pins two unions of intervals down.
func requireSameCover(t require.TestingT, runs []run, g geom, qs []netip.Prefix) {
	var singles []run
	for _, q := range qs {
		if r, ok := runOfMasked(g, q); ok {
			singles = append(singles, r)
		}
	}
	points := []ipmath.Uint128{{}, g.last()}
	for _, r := range slices.Concat(runs, singles) {
		for _, e := range []ipmath.Uint128{r.lo, r.hi} {
			points = append(points, e)
			if !e.IsZero() {
				points = append(points, e.Sub(ipmath.U64(1)))
			}
			if e.Cmp(g.last()) < 0 {
				points = append(points, e.Add(ipmath.U64(1)))
			}
		}
	}
	for _, i := range points {
		require.Equal(t, covered(singles, i), covered(runs, i), "block index %s; runs %v; prefixes %v", i, runs, qs)
	}
}

// drawSkipList draws prefixes around g's pool and puts them in one of the
// orders a caller may give: as drawn, in address order (as a listing of
// blocks gives them), in address order with a few swapped, or reversed;
// with duplicates now and then.
func drawSkipList(t *rapid.T, g geom) []netip.Prefix {
	n := rapid.IntRange(0, 16).Draw(t, "n")
	qs := make([]netip.Prefix, 0, n)
	for i := range n {
		qs = append(qs, drawNear(t, g, fmt.Sprint(i)))
		if rapid.IntRange(0, 5).Draw(t, fmt.Sprint("dup", i)) == 0 {
			qs = append(qs, qs[rapid.IntRange(0, len(qs)-1).Draw(t, fmt.Sprint("dupOf", i))])
		}
	}
	byAddr := func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	}
	switch rapid.IntRange(0, 3).Draw(t, "order") {
	case 1:
		slices.SortFunc(qs, byAddr)
	case 2:
		slices.SortFunc(qs, byAddr)
		for i := range rapid.IntRange(0, 3).Draw(t, "swaps") {
			if len(qs) > 1 {
				j := rapid.IntRange(0, len(qs)-2).Draw(t, fmt.Sprint("swap", i))
				qs[j], qs[j+1] = qs[j+1], qs[j]
			}
		}
	case 3:
		slices.SortFunc(qs, byAddr)
		slices.Reverse(qs)
	}
	return qs
}

// TestRunsOfCoversEachPrefix: runsOf gives sorted runs that neither
// overlap nor touch and that cover exactly the blocks of its prefixes,
// whatever their order, duplicates, nesting and overlaps, in pools up to
// ::/0 in /128 blocks, whose last index is the largest 128-bit number.
func TestRunsOfCoversEachPrefix(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		_, g := drawGeom(t)
		qs := drawSkipList(t, g)
		runs := runsOf(g, slices.Values(qs))
		requireCanonical(t, runs, g)
		requireSameCover(t, runs, g, qs)
	})
}

// TestSkipAllIsSkipEach: a walker given prefixes with SkipAll, in batches,
// holds exactly the runs of one given them one at a time with Skip, and
// of one made with them all.
func TestSkipAllIsSkipEach(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p, g := drawGeom(t)
		qs := drawSkipList(t, g)
		k := rapid.IntRange(0, len(qs)).Draw(t, "initial")
		batched, single := p.NewWalker(qs[:k]), p.NewWalker(qs[:k])
		for rest := qs[k:]; len(rest) > 0; {
			n := rapid.IntRange(1, len(rest)).Draw(t, "batch")
			batched.SkipAll(slices.Values(rest[:n]))
			for _, q := range rest[:n] {
				single.Skip(q)
			}
			rest = rest[n:]
			requireCanonical(t, batched.runs, g)
			require.Equal(t, single.runs, batched.runs)
		}
		require.Equal(t, p.NewWalker(qs).runs, batched.runs)
		requireSameCover(t, batched.runs, g, qs)
	})
}
