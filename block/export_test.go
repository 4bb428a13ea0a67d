package block

import (
	"fmt"
	"slices"
)

// Verify exposes the internal consistency check to the external tests.
func (b *Block) Verify() error { return b.verify() }

// CopyDiff names the first field in which b's internals differ from a's,
// or returns "" when b is an exact copy: every slice entry, free or not.
func CopyDiff(a, b *Block) string {
	switch {
	case a.prefix != b.prefix || a.base != b.base || a.is4 != b.is4 || a.size != b.size:
		return "identity"
	case a.used != b.used || a.nres != b.nres || a.cursor != b.cursor || a.seq != b.seq:
		return "counters"
	case a.aff != b.aff || !a.claim.Equal(b.claim):
		return "affinity"
	case !slices.Equal(a.taken.Words(), b.taken.Words()) || !slices.Equal(a.resv.Words(), b.resv.Words()):
		return "bitmaps"
	case !slices.Equal(a.owner, b.owner):
		return "owner slots"
	case !slices.Equal(a.aseq, b.aseq):
		return "sequence numbers"
	case !slices.Equal(a.rel, b.rel) || a.nrel != b.nrel:
		return "release times"
	}
	t, u := &a.recs, &b.recs
	switch {
	case len(t.recs) != len(u.recs):
		return "record count"
	case !slices.Equal(t.free, u.free):
		return "free slots"
	case !slices.Equal(t.index, u.index):
		return "index"
	case t.indexed != u.indexed || t.live != u.live || t.spare != u.spare || t.last != u.last:
		return "record counters"
	case !slices.Equal(t.arena, u.arena) || t.arenaLive != u.arenaLive:
		return "arena"
	}
	for s := range t.recs {
		r, q := &t.recs[s], &u.recs[s]
		if r.handle != q.handle || mapPtr(r.attrs) != mapPtr(q.attrs) || r.hash != q.hash || r.ahash != q.ahash || r.refs != q.refs ||
			r.at != q.at || r.encOff != q.encOff || r.encLen != q.encLen {
			return fmt.Sprintf("record slot %d", s)
		}
	}
	return ""
}
