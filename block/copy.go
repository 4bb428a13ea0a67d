package block

import (
	"math/bits"
	"slices"
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
	dst.prefix, dst.base, dst.is4 = b.prefix, b.base, b.is4
	dst.size, dst.used, dst.nres, dst.cursor = b.size, b.used, b.nres, b.cursor
	dst.seq, dst.aff, dst.claim = b.seq, b.aff, b.claim
	b.taken.CopyFull(&dst.taken)
	b.resv.CopyFull(&dst.resv)
	dst.owner = append(dst.owner[:0], b.owner...)
	dst.aseq = append(dst.aseq[:0], b.aseq...)
	dst.rel, dst.nrel = append(dst.rel[:0], b.rel...), b.nrel
	b.recs.copyTo(&dst.recs)
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
