package block

import (
	"math"
	"math/bits"
	"slices"
	"sync/atomic"

	"github.com/bits-and-blooms/bitset"
)

// Clone returns a deep copy of b: changing one never changes the other.
// Handles and attribute maps are shared, as the block never modifies them.
func (b *Block) Clone() *Block {
	c := new(Block)
	b.CopyTo(c)
	return c
}

// CopyTo makes dst a deep copy of b, reusing dst's memory: once dst has held
// a block as large as b (with as many owners), CopyTo allocates nothing.
// Handles and attribute maps are shared, as the block never modifies them.
func (b *Block) CopyTo(dst *Block) {
	if dst == b {
		return
	}
	b.copyHead(dst)
	dst.owner = append(dst.owner[:0], b.owner...)
	dst.aseq = append(dst.aseq[:0], b.aseq...)
	dst.rel = append(dst.rel[:0], b.rel...)
	b.recs.copyTo(&dst.recs)
	dst.unmirror()
}

// copyHead copies what every copy copies whole: the counters, identity,
// affinity and both bitmaps.
func (b *Block) copyHead(dst *Block) {
	b.copyScalars(dst)
	b.taken.CopyFull(&dst.taken)
	b.resv.CopyFull(&dst.resv)
}

// copyScalars copies the counters, identity, affinity and claim time.
func (b *Block) copyScalars(dst *Block) {
	dst.prefix, dst.base, dst.is4 = b.prefix, b.base, b.is4
	dst.size, dst.used, dst.nres, dst.cursor = b.size, b.used, b.nres, b.cursor
	dst.seq, dst.aff, dst.claim, dst.nrel = b.seq, b.aff, b.claim, b.nrel
}

// copyWord copies src into dst, and reports true, when both are one word
// long: a /26 or /122 block, Calico's default sizes. It inlines, without
// the calls that copying a slice makes.
func copyWord(dst, src *bitset.BitSet) bool {
	d, s := dst.Words(), src.Words()
	if len(d) != 1 || len(s) != 1 || dst.Len() != src.Len() {
		return false
	}
	d[0] = s[0]
	return true
}

// Mirror makes dst a deep copy of b, as CopyTo does, and remembers that the
// two are equal. When two blocks are mirrored back and forth (the current
// version into a scratch copy, the copy changed, and the roles swapped once
// the change is kept, as an allocator does around every write), each Mirror
// copies only the addresses and owner records that either block changed
// since the previous one, not the whole block.
//
// Unlike CopyTo, Mirror writes b's bookkeeping of what changed, though
// never what b holds: other goroutines may read b meanwhile (encode it,
// Clone it, CopyTo from it), but must not Mirror it or change it.
func (b *Block) Mirror(dst *Block) {
	if dst == b {
		return
	}
	if !b.mir.twin(&dst.mir) || len(dst.owner) != len(b.owner) || len(dst.aseq) != len(b.aseq) || len(dst.rel) != len(b.rel) ||
		!b.recs.copyChanges(&dst.recs) {
		b.CopyTo(dst)
	} else {
		b.copyScalars(dst)
		if !copyWord(&dst.taken, &b.taken) {
			b.taken.CopyFull(&dst.taken)
		}
		if !copyWord(&dst.resv, &b.resv) {
			b.resv.CopyFull(&dst.resv)
		}
		switch lo, hi := span(b.mir.lo, b.mir.hi, dst.mir.lo, dst.mir.hi); {
		case hi-lo == 1: // one address, as an allocate or a release changes
			dst.owner[lo], dst.aseq[lo] = b.owner[lo], b.aseq[lo]
			if len(b.rel) > 0 {
				dst.rel[lo] = b.rel[lo]
			}
		case lo < hi:
			copy(dst.owner[lo:hi], b.owner[lo:hi])
			copy(dst.aseq[lo:hi], b.aseq[lo:hi])
			if len(b.rel) > 0 {
				copy(dst.rel[lo:hi], b.rel[lo:hi])
			}
		}
	}
	// Equal now: a new stamp for the content they share, and nothing
	// changed since.
	st := b.mir.next()
	b.mir.stamp, dst.mir.stamp = st, st
	b.unchanged()
	dst.unchanged()
}

// mirror is a block's bookkeeping for Mirror.
//
// A stamp names the content two blocks had when one was mirrored into the
// other; stamps never repeat in a process (a per-block nonce drawn from a
// process-wide counter, and a per-block counter), so two blocks with the
// same stamp held the same content then. Each block records the ordinals
// it changed since (owner, aseq and rel entries; owners records its slots
// and indexes): two blocks with the same stamp differ at most there.
type mirror struct {
	stamp  stamp // zero: no content shared with another block
	lo, hi int   // ordinals changed since the stamp; none when lo >= hi (see touch)
	nonce  uint64
	count  uint64
}

// stamp is a mirror's name for shared content. A Block must never be
// copied by value: the copy would share its nonce and count, and could hand
// out a stamp the original also hands out for different content.
type stamp struct{ nonce, n uint64 }

// nonces hands out the blocks' nonces.
var nonces atomic.Uint64

// touch records a change at ordinal i. It is branch-free: an empty range
// is [maxInt, 0), and the zero range [0, 0) only makes the first range
// start at 0, which copies more than needed but never less.
func (m *mirror) touch(i int) { m.lo, m.hi = min(m.lo, i), max(m.hi, i+1) }

// unchanged records that b changed nothing since its stamp.
func (b *Block) unchanged() {
	b.mir.lo, b.mir.hi = math.MaxInt, 0
	b.recs.unchanged()
}

// unmirror drops b's relation to any other block: its content changed
// wholesale.
func (b *Block) unmirror() {
	b.mir.stamp = stamp{}
	b.unchanged()
}

// twin reports whether m's block and o's held the same content at their
// last Mirror.
func (m *mirror) twin(o *mirror) bool { return m.stamp.n != 0 && m.stamp == o.stamp }

// next returns a stamp never handed out before.
func (m *mirror) next() stamp {
	if m.nonce == 0 {
		m.nonce = nonces.Add(1)
	}
	m.count++
	return stamp{m.nonce, m.count}
}

// Equal reports whether b and o are the same block: prefix, counter, cursor,
// affinity and claim time, reserved addresses, release times, and for every allocated
// address the same owner (handle and equal attributes) and sequence number.
// The internal layout (which record slot an owner has) does not matter. Two
// nil blocks are equal.
func (b *Block) Equal(o *Block) bool {
	if b == nil || o == nil {
		return b == o
	}
	if b.prefix != o.prefix || b.size != o.size || b.used != o.used || b.nres != o.nres ||
		b.cursor != o.cursor || b.seq != o.seq || b.aff != o.aff || !b.claim.Equal(o.claim) ||
		!b.taken.Equal(&o.taken) || !b.resv.Equal(&o.resv) || b.nrel != o.nrel ||
		(b.nrel > 0 && !slices.Equal(b.rel, o.rel)) {
		return false
	}
	// Slots that matched last time; addresses of one owner are often
	// adjacent, so this skips most record comparisons.
	lastB, lastO := -1, -1
	tw, rw := b.taken.Words(), b.resv.Words()
	for k := range tw {
		for w := tw[k] &^ rw[k]; w != 0; w &= w - 1 {
			i := k<<6 | bits.TrailingZeros64(w)
			if b.aseq[i] != o.aseq[i] {
				return false
			}
			sb, so := int(b.owner[i]), int(o.owner[i])
			if sb == lastB && so == lastO {
				continue
			}
			rb, ro := &b.recs.recs[sb], &o.recs.recs[so]
			if rb.handle != ro.handle || !sameAttrs(rb.attrs, ro.attrs) {
				return false
			}
			lastB, lastO = sb, so
		}
	}
	return true
}
