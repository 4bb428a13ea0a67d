package block

import (
	"fmt"
	"hash/maphash"
	"maps"
	"math"
	"unsafe"
)

// Owner records.
//
// Every allocated address points, by slot number, at an owner record in
// owners.recs. An open-addressing hash index (linear probing on the handle's
// hash) finds the record of an owner. It is a []uint16 rather than a Go map so
// that copying a block is a few memmoves and allocates nothing. The records
// of one handle share a home bucket, which lets ReleaseHandle find them all
// in one probe; each record also keeps a hash of its encoding, so that a
// handle with many attribute sets (up to one per address) costs a lookup a
// comparison of hashes per record of that handle rather than of maps.
//
// Shortcuts keep the hot path (allocate one address, release it) cheap:
//   - last caches the slot of the most recent acquire, which needs no
//     hashing;
//   - the record emptied most recently (spare) stays indexed, so an owner
//     that releases its only address and allocates again revives it instead
//     of being unindexed and indexed again;
//   - attribute maps are compared by identity before by content;
//   - changes to last's slot are not recorded for Mirror, which copies
//     that slot whatever changed (see dlo).

// hashSeed is per process; indexes are copied only within a process and
// rebuilt by the decoders.
var hashSeed = maphash.MakeSeed()

// record is one owner: a handle and its attributes, shared by all the
// addresses of that owner.
type record struct {
	handle string
	attrs  map[string]string // never modified by the package; nil or empty means none
	hash   uint64            // maphash of handle
	refs   int               // addresses held; 0 for the spare and for free slots
	ahash  uint32            // encHash of the record's encoding
	// at is 1 + the index of an address the record was last given, 0 if
	// unknown: a hint that lets a release of a one-address owner skip the
	// scan. The address may have been released since, so it is checked.
	at uint16
	// enc locates the record's binary encoding (handle, attribute count,
	// sorted pairs) in owners.arena, made once when the record is created:
	// encoding a block then copies those bytes instead of walking and
	// sorting every owner's attributes on every write.
	encOff, encLen uint32
}

// owners is the set of owner records of a block. Its zero value is empty.
//
// Every slot of recs is in exactly one state:
//   - live: refs > 0, indexed;
//   - spare: refs == 0, indexed, slot+1 == spare (at most one);
//   - free: refs == 0, not indexed, fields zero, listed in free.
type owners struct {
	recs []record
	// arena holds the encodings of the indexed records (live and spare) and
	// of records purged since the last compaction; arenaLive counts the
	// bytes still in use. Appending keeps adding owners free of allocation
	// once the arena has grown; it is compacted into spareArena when dead
	// bytes outnumber live ones.
	arena, spareArena []byte
	arenaLive         int
	free              []uint16 // free slots
	index             []uint16 // slot+1 per bucket, 0 empty; length 0 or a power of two, at most half full
	indexed           int      // records in index: live ones and the spare
	live              int      // records with refs > 0
	spare             uint16   // slot+1 of the spare record, 0 for none
	// last is slot+1 of the record the last acquire returned, 0 for none.
	// Changes to its slot are not recorded in [dlo, dhi) (see there): code
	// that moves last must touch the slot it leaves, as acquireSlow does.
	last uint16

	// Changes since the block's last Mirror: the slots of recs in
	// [dlo, dhi) (none when dlo >= dhi), and the buckets of index in
	// [ilo, ihi). The slot last names counts as changed whatever the range
	// says, so that the hot path need not record the changes it makes
	// to it; when last moves on, the slot it named is touched. The arena
	// only grows between compactions, so arena[:amark], its length at the
	// last Mirror (0 after a compaction), is unchanged.
	dlo, dhi int
	ilo, ihi int
	amark    int
}

// touch records a change to slot s for Mirror, as mirror.touch does.
func (t *owners) touch(s int) { t.dlo, t.dhi = min(t.dlo, s), max(t.dhi, s+1) }

// touchIndex records a change to bucket p of the index for Mirror.
func (t *owners) touchIndex(p int) { t.ilo, t.ihi = min(t.ilo, p), max(t.ihi, p+1) }

// touchOther is touch for a slot that may be the one last names, which
// needs no record.
func (t *owners) touchOther(s int) {
	if s != int(t.last)-1 {
		t.touch(s)
	}
}

// maxSlots bounds the slots: at most MaxSize live records and one spare,
// and slot+1 must fit a uint16.
const maxSlots = MaxSize + 1

// sameAttrs reports whether two attribute maps are equal, nil and empty
// being equal. Identity is checked first: callers that reuse one map for an
// owner skip the content comparison.
func sameAttrs(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || mapPtr(a) == mapPtr(b) {
		return true
	}
	return maps.Equal(a, b)
}

// encHash returns the hash of an owner record's encoding (appendOwner),
// which holds its attributes in key order: records with different hashes
// differ.
func encHash(enc []byte) uint32 {
	h := maphash.Bytes(hashSeed, enc)
	return uint32(h ^ h>>32)
}

// mapPtr returns the pointer a map value is made of, its identity. It is
// only a shortcut: maps with different pointers are compared by content.
// reflect.Value.UnsafePointer gives the same answer at several times the
// cost on the allocation hot path.
func mapPtr(m map[string]string) unsafe.Pointer {
	return *(*unsafe.Pointer)(unsafe.Pointer(&m))
}

// acquire returns the slot of the record of (handle, attrs), creating it if
// needed, and adds n addresses to it. A new record keeps attrs.
func (t *owners) acquire(handle string, attrs map[string]string, n int) int {
	if s := t.cached(handle, attrs, false); s >= 0 {
		t.grant(&t.recs[s], n)
		return s
	}
	return t.acquireSlow(handle, attrs, n)
}

// cached returns the slot of the last acquire when it holds (handle, attrs)
// and is live or the spare, otherwise -1. Attributes are matched by
// identity only (not even len, which reads the map); so is the handle when
// same is set, which keeps the comparison free of calls. It and grant are
// small enough to be inlined into the allocation hot path.
func (t *owners) cached(handle string, attrs map[string]string, same bool) int {
	s := int(t.last) - 1
	if s < 0 {
		return -1
	}
	r := &t.recs[s]
	if mapPtr(r.attrs) != mapPtr(attrs) || len(r.handle) != len(handle) ||
		(unsafe.StringData(r.handle) != unsafe.StringData(handle) && (same || r.handle != handle)) ||
		(r.refs == 0 && t.spare != t.last) {
		return -1
	}
	return s
}

// grant adds n addresses to r, the record of the slot cached found: a
// spare comes to life.
func (t *owners) grant(r *record, n int) {
	if r.refs == 0 {
		t.spare = 0
		t.live++
	}
	r.refs += n // r is last's slot, which Mirror copies anyway: no touch
}

func (t *owners) acquireSlow(handle string, attrs map[string]string, n int) int {
	h := maphash.String(hashSeed, handle)
	s := t.find(h, handle, attrs, 0, false)
	if s < 0 {
		s = t.add(h, handle, attrs, nil, 0)
	}
	if l := int(t.last) - 1; l >= 0 && l != s {
		t.touch(l) // no longer covered by last
	}
	t.last = uint16(s + 1)
	r := &t.recs[s]
	if r.refs == 0 {
		// A new record or the spare comes to life.
		t.live++
		if int(t.spare)-1 == s {
			t.spare = 0
		}
	}
	r.refs += n
	t.touch(s)
	return s
}

// find returns the indexed slot holding (handle, attrs), or -1; h is the
// hash of handle, and byHash says that ah is the hash of the record's
// encoding (encHash). Records of handle with other attributes are told
// apart by their maps for the first few, the usual case, and by the hash
// of their encodings after that, or at once given it.
func (t *owners) find(h uint64, handle string, attrs map[string]string, ah uint32, byHash bool) int {
	if len(t.index) == 0 {
		return -1
	}
	same := 0 // records of handle passed over
	mask := len(t.index) - 1
	for p := int(h) & mask; ; p = (p + 1) & mask {
		e := int(t.index[p])
		if e == 0 {
			return -1
		}
		r := &t.recs[e-1]
		if r.hash != h || (byHash && r.ahash != ah) || r.handle != handle {
			continue
		}
		if !byHash && same == maxSameByMap {
			ah, byHash = encHash(appendOwner(nil, handle, attrs)), true
			if r.ahash != ah {
				continue
			}
		}
		if sameAttrs(r.attrs, attrs) {
			return e - 1
		}
		same++
	}
}

// maxSameByMap is how many records of one handle find compares by their
// attribute maps before it hashes the encoding of the attributes sought.
const maxSameByMap = 4

// add stores a new record with no addresses, indexes it and returns its
// slot; h is the hash of handle. enc is the record's encoding and ah its
// hash, or nil (and ah unused) to have them made.
func (t *owners) add(h uint64, handle string, attrs map[string]string, enc []byte, ah uint32) int {
	if 2*(t.indexed+1) > len(t.index) {
		t.grow()
	}
	var s int
	if n := len(t.free); n > 0 {
		s = int(t.free[n-1])
		t.free = t.free[:n-1]
	} else {
		s = len(t.recs)
		t.recs = append(t.recs, record{})
	}
	if len(t.arena) > 256 && len(t.arena) > 2*t.arenaLive {
		t.compact()
	}
	off := len(t.arena)
	if enc != nil {
		t.arena = append(t.arena, enc...)
	} else {
		t.arena = appendOwner(t.arena, handle, attrs)
		ah = encHash(t.arena[off:])
	}
	n := len(t.arena) - off
	t.arenaLive += n
	t.recs[s] = record{handle: handle, attrs: attrs, hash: h, ahash: ah, encOff: uint32(off), encLen: uint32(n)}
	t.insert(s)
	t.touch(s)
	return s
}

// encoding returns the encoding of slot s, which is indexed.
func (t *owners) encoding(s int) []byte {
	r := &t.recs[s]
	return t.arena[r.encOff : r.encOff+r.encLen]
}

// compact copies the encodings of the indexed records into the spare
// arena, drops the dead bytes, and swaps the arenas.
func (t *owners) compact() {
	next := t.spareArena[:0]
	for s := range t.recs {
		r := &t.recs[s]
		if r.refs == 0 && int(t.spare)-1 != s {
			continue // free
		}
		off := len(next)
		next = append(next, t.arena[r.encOff:r.encOff+r.encLen]...)
		r.encOff = uint32(off)
	}
	t.spareArena, t.arena = t.arena[:0], next
	t.arenaLive = len(next)
	t.dlo, t.dhi = 0, len(t.recs) // every encOff may have moved
	t.amark = 0                   // and every byte of the arena
}

// grow doubles the index (at least 8 buckets) and re-inserts the indexed
// records.
func (t *owners) grow() {
	n := max(8, 2*len(t.index))
	for 2*(t.indexed+1) > n {
		n *= 2
	}
	t.index = make([]uint16, n)
	t.indexed = 0
	t.ilo, t.ihi = 0, n
	for s := range t.recs {
		if t.recs[s].refs > 0 || int(t.spare)-1 == s {
			t.insert(s)
		}
	}
}

// insert puts slot s into the index, which has room.
func (t *owners) insert(s int) {
	mask := len(t.index) - 1
	p := int(t.recs[s].hash) & mask
	for t.index[p] != 0 {
		p = (p + 1) & mask
	}
	t.index[p] = uint16(s + 1)
	t.indexed++
	t.touchIndex(p)
}

// unindex removes slot s from the index by backward-shift deletion, which
// keeps every remaining record reachable from its home bucket without
// tombstones.
func (t *owners) unindex(s int) {
	mask := len(t.index) - 1
	p := int(t.recs[s].hash) & mask
	for int(t.index[p]) != s+1 {
		p = (p + 1) & mask
	}
	t.index[p] = 0
	t.touchIndex(p)
	for j := (p + 1) & mask; t.index[j] != 0; j = (j + 1) & mask {
		home := int(t.recs[t.index[j]-1].hash) & mask
		// The entry at j may move back to p when p lies on its probe path,
		// that is when its home is no nearer to j than p is.
		if (j-home)&mask >= (j-p)&mask {
			t.index[p] = t.index[j]
			t.index[j] = 0
			t.touchIndex(j)
			p = j
		}
	}
	t.indexed--
}

// drop removes n addresses from slot s; a record left with none becomes the
// spare (retire). Block.release writes the same steps out for one address
// on its hot path.
func (t *owners) drop(s, n int) {
	r := &t.recs[s]
	t.touchOther(s)
	if r.refs -= n; r.refs == 0 {
		t.retire(s)
	}
}

// retire makes slot s, just emptied, the spare, and frees the previous
// spare.
func (t *owners) retire(s int) {
	t.live--
	if t.spare != 0 {
		t.purge(int(t.spare) - 1)
	}
	t.spare = uint16(s + 1)
}

// purge frees slot s, which is indexed and holds no addresses.
func (t *owners) purge(s int) {
	t.unindex(s)
	t.arenaLive -= int(t.recs[s].encLen)
	t.recs[s] = record{}
	t.touch(s)
	t.free = append(t.free, uint16(s))
}

// slotsOf appends the slots of the live records of handle to dst.
func (t *owners) slotsOf(handle string, dst []uint16) []uint16 {
	if t.live == 0 {
		return dst
	}
	h := maphash.String(hashSeed, handle)
	mask := len(t.index) - 1
	for p := int(h) & mask; t.index[p] != 0; p = (p + 1) & mask {
		s := t.index[p] - 1
		if r := &t.recs[s]; r.refs > 0 && r.hash == h && r.handle == handle {
			dst = append(dst, s)
		}
	}
	return dst
}

// reset empties t, keeping its memory.
func (t *owners) reset() {
	clear(t.recs) // drop the strings and maps for the collector
	t.recs = t.recs[:0]
	t.free = t.free[:0]
	clear(t.index)
	t.indexed, t.live, t.spare, t.last = 0, 0, 0, 0
	t.arena, t.arenaLive = t.arena[:0], 0
	t.ilo, t.ihi, t.amark = 0, len(t.index), 0
}

// unchanged records that t changed nothing since its block's last Mirror.
func (t *owners) unchanged() {
	t.dlo, t.dhi = math.MaxInt, 0
	t.ilo, t.ihi = math.MaxInt, 0
	t.amark = len(t.arena)
}

// copyTo makes dst a copy of t, reusing dst's memory. Strings and attribute
// maps are shared: the package never modifies them.
func (t *owners) copyTo(dst *owners) {
	old := len(dst.recs)
	dst.recs = append(dst.recs[:0], t.recs...)
	if old > len(t.recs) {
		clear(dst.recs[len(t.recs):old])
	}
	dst.free = append(dst.free[:0], t.free...)
	dst.index = append(dst.index[:0], t.index...)
	dst.indexed, dst.live, dst.spare, dst.last = t.indexed, t.live, t.spare, t.last
	dst.arena, dst.arenaLive = append(dst.arena[:0], t.arena...), t.arenaLive
}

// copyChanges makes dst, which was equal to t at their last Mirror, a copy
// of t again: it copies the slots and indexes either of them changed since.
// It returns false, copying nothing, when the records were added to (a
// different length), for copyTo to do.
func (t *owners) copyChanges(dst *owners) bool {
	if len(dst.recs) != len(t.recs) || len(dst.index) != len(t.index) {
		return false
	}
	lo, hi := span(t.dlo, t.dhi, dst.dlo, dst.dhi)
	if lo < hi {
		copy(dst.recs[lo:hi], t.recs[lo:hi])
	}
	// The slot last named at the last Mirror, whose changes no range
	// records: if either block's last has moved since, that block touched
	// the slot, and otherwise t.last still names it.
	if l := int(t.last) - 1; l >= 0 && (l < lo || l >= hi) {
		dst.recs[l] = t.recs[l]
	}
	// The index buckets either changed, and the arena past what both
	// held at the last Mirror: a new owner's encoding, not the whole arena.
	if lo, hi := span(t.ilo, t.ihi, dst.ilo, dst.ihi); lo < hi {
		copy(dst.index[lo:hi], t.index[lo:hi])
	}
	if m := min(t.amark, dst.amark); m < len(t.arena) || m < len(dst.arena) {
		dst.arena = append(dst.arena[:m], t.arena[m:]...)
	}
	if len(dst.free) != 0 || len(t.free) != 0 {
		dst.free = append(dst.free[:0], t.free...)
	}
	dst.indexed, dst.live, dst.spare, dst.last = t.indexed, t.live, t.spare, t.last
	dst.arenaLive = t.arenaLive
	return true
}

// span returns the smallest range holding [lo1, hi1) and [lo2, hi2), where
// lo >= hi means empty.
func span(lo1, hi1, lo2, hi2 int) (int, int) {
	switch {
	case lo1 >= hi1:
		return lo2, hi2
	case lo2 >= hi2:
		return lo1, hi1
	}
	return min(lo1, lo2), max(hi1, hi2)
}

// addUnique appends a record for a decoder and returns its slot, or an error
// if an equal record exists. The record holds no addresses yet: the caller
// must give it some before the next addUnique, and set live at the end. enc
// is the record's encoding, or nil to have it made.
func (t *owners) addUnique(handle string, attrs map[string]string, enc []byte) (int, error) {
	if len(t.recs) >= maxSlots {
		return 0, fmt.Errorf("more than %d owners", maxSlots)
	}
	h := maphash.String(hashSeed, handle)
	if enc == nil {
		enc = appendOwner(nil, handle, attrs)
	}
	ah := encHash(enc)
	if s := t.find(h, handle, attrs, ah, true); s >= 0 {
		return 0, fmt.Errorf("handle %q with these attributes is already an owner", handle)
	}
	return t.add(h, handle, attrs, enc, ah), nil
}
