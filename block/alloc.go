package block

import (
	"encoding/binary"
	"iter"
	"math/bits"
	"net/netip"
	"strconv"
	"unsafe"
)

// Owner is who holds an address: a handle (Calico's handle ID, such as one
// per pod) and free-form attributes. Two owners are the same when their
// handles are equal and their attributes are equal (nil and empty being
// equal); the block keeps one record per distinct owner, shared by all its
// addresses.
//
// A block keeps the Attrs map of the owner that creates a record, without
// copying it, and never modifies it: the caller must not modify the map
// afterwards. Maps returned by the block (in Allocation and Owners) are the
// stored ones and must not be modified either.
type Owner struct {
	Handle string
	Attrs  map[string]string
}

// Allocation is what an allocated address is held by: its owner and the
// sequence number recorded when it was allocated.
type Allocation struct {
	Owner Owner
	Seq   uint64
}

// Check is a precondition for Release. The zero Check checks nothing. A
// non-empty Handle must equal the owner's handle; with CheckSeq, Seq must
// equal the sequence number recorded at allocation.
type Check struct {
	Handle   string
	Seq      uint64
	CheckSeq bool
}

// blockError is the error every operation returns: the block, the
// operation with its input, a detail, and the sentinels it wraps.
type blockError struct {
	block  netip.Prefix
	op     string
	detail string
	errs   []error
}

func (e *blockError) Error() string {
	s := "block"
	if e.block.IsValid() {
		s += " " + e.block.String()
	}
	if e.op != "" {
		s += ": " + e.op
	}
	return s + ": " + e.detail
}

func (e *blockError) Unwrap() []error { return e.errs }

func (b *Block) errorf(op string, a netip.Addr, detail string, errs ...error) error {
	return &blockError{block: b.prefix, op: op + " " + a.String(), detail: detail, errs: errs}
}

// Allocate appends to dst up to n free addresses, fewer when the block has
// fewer free, none when n <= 0, and gives them to o. It returns dst and the
// sequence number recorded for the new allocations, which is the counter's
// new value; when nothing is allocated the block does not change and the
// current counter is returned.
//
// Addresses are chosen next-fit: the search starts at the cursor, just past
// the last address Allocate handed out, and wraps around the end of the
// block, so a released address is handed out again only once the cursor has
// come round to it.
//
// Allocate does not allocate memory when dst has room and o's record exists
// or can reuse a free slot (the block keeps o.Attrs, see Owner).
func (b *Block) Allocate(dst []netip.Addr, n int, o Owner) ([]netip.Addr, uint64) {
	// The hot path, written without calls so that the compiler spills
	// nothing: one address for the owner of the last allocation, into room
	// dst already has. Anything else takes the general path, which does
	// the same.
	if n == 1 && len(dst) < cap(dst) && b.used+b.nres < b.size {
		if s := b.recs.cached(o.Handle, o.Attrs, true); s >= 0 {
			r := &b.recs.recs[s]
			b.recs.grant(r, 1)
			seq := b.seq + 1
			b.seq = seq
			// allocate's loop for one address, written out.
			words := b.taken.Words()
			i := nextFree(words, b.cursor)
			words[i>>6] |= 1 << (i & 63)
			b.owner[i] = uint16(s)
			b.aseq[i] = seq
			b.mir.touch(i)
			b.forget(i)
			if b.cursor = i + 1; b.cursor == b.size {
				b.cursor = 0
			}
			r.at = uint16(i + 1)
			b.used++
			dst = dst[:len(dst)+1]
			if b.is4 {
				dst[len(dst)-1] = b.addr4(i)
			} else {
				dst[len(dst)-1] = b.addr6(i)
			}
			return dst, seq
		}
	}
	return b.allocate(dst, n, o)
}

// allocate is Allocate's general path.
func (b *Block) allocate(dst []netip.Addr, n int, o Owner) ([]netip.Addr, uint64) {
	n = min(n, b.size-b.used-b.nres)
	if n <= 0 {
		return dst, b.seq
	}
	s := uint16(b.recs.acquire(o.Handle, o.Attrs, n))
	b.seq++
	seq := b.seq
	words := b.taken.Words()
	c, last := b.cursor, 0
	for range n {
		i := nextFree(words, c)
		words[i>>6] |= 1 << (i & 63)
		b.owner[i] = s
		b.aseq[i] = seq
		b.mir.touch(i)
		b.forget(i)
		if b.is4 {
			dst = append(dst, b.addr4(i))
		} else {
			dst = append(dst, b.addr6(i))
		}
		if c = i + 1; c == b.size {
			c = 0
		}
		last = i
	}
	b.cursor = c
	// at is 1 + the last index given.
	b.recs.recs[s].at = uint16(last + 1)
	b.used += n
	return dst, seq
}

// nextFree returns the first ordinal at or after c whose bit in words (a
// block's taken bits) is clear, wrapping around the end of the block, which
// must have one. The ordinal is below size: the padding bits are set.
func nextFree(words []uint64, c int) int {
	k := c >> 6
	w := ^words[k] >> (c & 63) << (c & 63) // free at or after c
	for w == 0 {
		if k++; k == len(words) {
			k = 0
		}
		w = ^words[k]
	}
	return k<<6 | bits.TrailingZeros64(w)
}

// Assign gives the address a to o and returns the sequence number recorded
// for it. The cursor does not move. The error wraps ErrOutOfBlock,
// ErrReserved or ErrInUse, and then nothing changes.
func (b *Block) Assign(a netip.Addr, o Owner) (uint64, error) {
	i, ok := b.ordinal(a)
	switch {
	case !ok:
		return 0, b.errorf("assign", a, "address not in block", ErrOutOfBlock)
	case b.resv.Test(uint(i)):
		return 0, b.errorf("assign", a, "address reserved", ErrReserved)
	case b.taken.Test(uint(i)):
		return 0, b.errorf("assign", a, "address in use by handle "+strconv.Quote(b.recs.recs[b.owner[i]].handle), ErrInUse)
	}
	s := b.recs.acquire(o.Handle, o.Attrs, 1)
	b.seq++
	b.taken.Set(uint(i))
	b.owner[i] = uint16(s)
	b.recs.recs[s].at = uint16(i + 1)
	b.aseq[i] = b.seq
	b.mir.touch(i)
	b.forget(i)
	b.used++
	return b.seq, nil
}

// Release frees the allocated address a if c holds. The error wraps
// ErrOutOfBlock, ErrNotAllocated (with ErrReserved for a reserved address),
// ErrHandleMismatch or ErrSeqMismatch, and then nothing changes.
func (b *Block) Release(a netip.Addr, c Check) error {
	_, err := b.release(a, c)
	return err
}

// release is Release, returning the ordinal it freed.
func (b *Block) release(a netip.Addr, c Check) (int, error) {
	// The hot path, written without calls so that the compiler spills
	// nothing: an allocated address of an IPv4 block whose checks pass
	// with a handle that is the stored string itself. Anything else takes
	// the general path, which decides the same way. (IPv6 addresses take
	// it too: netip's As16 is compiled to a 16-byte load of two 8-byte
	// stores, a stall that costs more than the call that ordinal6 makes.)
	if b.is4 && a.Is4() {
		// ordinal4, written out: i is below size, and both bitmaps hold
		// size bits.
		x := a.As4()
		u := uint64(binary.BigEndian.Uint32(x[:]))
		mask := uint64(b.size - 1)
		i := int(u & mask)
		tw := b.taken.Words()
		if u&^mask == b.base.Lo && (tw[i>>6]&^b.resv.Words()[i>>6])&(1<<(i&63)) != 0 {
			t := &b.recs
			s := int(b.owner[i])
			r := &t.recs[s]
			if (c.Handle == "" || (len(c.Handle) == len(r.handle) && unsafe.StringData(c.Handle) == unsafe.StringData(r.handle))) &&
				(!c.CheckSeq || c.Seq == b.aseq[i]) {
				// releaseAny's last steps and t.drop(s, 1), written
				// out.
				tw[i>>6] &^= 1 << (i & 63)
				t.touchOther(s)
				if r.refs--; r.refs == 0 {
					t.retire(s)
				}
				b.used--
				b.seq++
				return i, nil
			}
		}
	}
	return b.releaseAny(a, c)
}

// releaseAny is release's general path.
func (b *Block) releaseAny(a netip.Addr, c Check) (int, error) {
	i, ok := b.ordinal(a)
	if !ok || !b.taken.Test(uint(i)) || b.resv.Test(uint(i)) {
		return 0, b.releaseError(a, i, ok)
	}
	s := int(b.owner[i])
	if (c.Handle != "" && c.Handle != b.recs.recs[s].handle) || (c.CheckSeq && c.Seq != b.aseq[i]) {
		return 0, b.checkError(a, i, c)
	}
	b.taken.Words()[i>>6] &^= 1 << (i & 63)
	b.recs.drop(s, 1)
	b.used--
	b.seq++
	return i, nil
}

// releaseError explains why a, at offset i if in, is not allocated.
func (b *Block) releaseError(a netip.Addr, i int, in bool) error {
	switch {
	case !in:
		return b.errorf("release", a, "address not in block", ErrOutOfBlock)
	case b.resv.Test(uint(i)):
		return b.errorf("release", a, "address reserved, not allocated", ErrNotAllocated, ErrReserved)
	}
	return b.errorf("release", a, "address not allocated", ErrNotAllocated)
}

// checkError explains why c does not hold for the allocated address a at
// offset i.
func (b *Block) checkError(a netip.Addr, i int, c Check) error {
	if h := b.recs.recs[b.owner[i]].handle; c.Handle != "" && c.Handle != h {
		return b.errorf("release", a, "handle "+strconv.Quote(c.Handle)+" does not match "+strconv.Quote(h), ErrHandleMismatch)
	}
	return b.errorf("release", a, "sequence number "+strconv.FormatUint(c.Seq, 10)+" does not match "+strconv.FormatUint(b.aseq[i], 10), ErrSeqMismatch)
}

// ReleaseHandle frees every address held by handle (whatever the
// attributes) and appends them to dst in address order. Releasing nothing is
// no change; releasing something moves the counter once.
func (b *Block) ReleaseHandle(handle string, dst []netip.Addr) []netip.Addr {
	return b.releaseHandle(handle, dst, 0)
}

// releaseHandle is ReleaseHandle, recording ns as the release time of each
// address unless it is 0.
func (b *Block) releaseHandle(handle string, dst []netip.Addr, ns int64) []netip.Addr {
	var buf [4]uint16
	slots := b.recs.slotsOf(handle, buf[:0])
	if len(slots) == 0 {
		return dst
	}
	left := 0
	for _, s := range slots {
		left += b.recs.recs[s].refs
	}
	b.used -= left
	tw, rw := b.taken.Words(), b.resv.Words()
	if left == 1 {
		// One address: where the record was last given one, usually.
		s := slots[0]
		if i := int(b.recs.recs[s].at) - 1; i >= 0 && b.owner[i] == s && (tw[i>>6]&^rw[i>>6])&(1<<(i&63)) != 0 {
			tw[i>>6] &^= 1 << (i & 63)
			dst = append(dst, b.addr(i))
			if ns != 0 {
				b.remember(i, ns)
			}
			left = 0
		}
	}
	for k := 0; left > 0; k++ {
		for w := tw[k] &^ rw[k]; w != 0; w &= w - 1 {
			i := k<<6 | bits.TrailingZeros64(w)
			if holds(slots, b.owner[i]) {
				tw[k] &^= 1 << (i & 63)
				dst = append(dst, b.addr(i))
				if ns != 0 {
					b.remember(i, ns)
				}
				left--
			}
		}
	}
	for _, s := range slots {
		b.recs.drop(int(s), b.recs.recs[s].refs)
	}
	b.seq++
	return dst
}

// holds reports whether slots contains s.
func holds(slots []uint16, s uint16) bool {
	for _, x := range slots {
		if x == s {
			return true
		}
	}
	return false
}

// AddrsOf appends to dst the addresses held by handle (whatever the
// attributes), in address order.
func (b *Block) AddrsOf(handle string, dst []netip.Addr) []netip.Addr {
	var buf [4]uint16
	slots := b.recs.slotsOf(handle, buf[:0])
	left := 0
	for _, s := range slots {
		left += b.recs.recs[s].refs
	}
	tw, rw := b.taken.Words(), b.resv.Words()
	for k := 0; left > 0; k++ {
		for w := tw[k] &^ rw[k]; w != 0; w &= w - 1 {
			if i := k<<6 | bits.TrailingZeros64(w); holds(slots, b.owner[i]) {
				dst = append(dst, b.addr(i))
				left--
			}
		}
	}
	return dst
}

// Owner returns what the address a is held by, and false if a is not
// allocated in this block.
func (b *Block) Owner(a netip.Addr) (Allocation, bool) {
	i, ok := b.ordinal(a)
	if !ok || !b.taken.Test(uint(i)) || b.resv.Test(uint(i)) {
		return Allocation{}, false
	}
	r := &b.recs.recs[b.owner[i]]
	return Allocation{Owner: Owner{Handle: r.handle, Attrs: r.attrs}, Seq: b.aseq[i]}, true
}

// Reserve makes the free address a unusable: Allocate skips it and Assign
// refuses it. Reserving a reserved address does nothing. The error wraps
// ErrOutOfBlock, or ErrInUse for an allocated address, and then nothing
// changes.
func (b *Block) Reserve(a netip.Addr) error {
	i, ok := b.ordinal(a)
	switch {
	case !ok:
		return b.errorf("reserve", a, "address not in block", ErrOutOfBlock)
	case b.resv.Test(uint(i)):
		return nil
	case b.taken.Test(uint(i)):
		return b.errorf("reserve", a, "address in use by handle "+strconv.Quote(b.recs.recs[b.owner[i]].handle), ErrInUse)
	}
	b.taken.Set(uint(i))
	b.resv.Set(uint(i))
	b.forget(i)
	b.nres++
	b.seq++
	return nil
}

// Unreserve makes the reserved address a free again. Unreserving an address
// that is not reserved does nothing. The error wraps ErrOutOfBlock.
func (b *Block) Unreserve(a netip.Addr) error {
	_, err := b.unreserve(a)
	return err
}

// unreserve is Unreserve, returning the ordinal it freed (-1: none).
func (b *Block) unreserve(a netip.Addr) (int, error) {
	i, ok := b.ordinal(a)
	switch {
	case !ok:
		return -1, b.errorf("unreserve", a, "address not in block", ErrOutOfBlock)
	case !b.resv.Test(uint(i)):
		return -1, nil
	}
	b.taken.Clear(uint(i))
	b.resv.Clear(uint(i))
	b.nres--
	b.seq++
	return i, nil
}

// IsReserved reports whether a is a reserved address of the block.
func (b *Block) IsReserved(a netip.Addr) bool {
	i, ok := b.ordinal(a)
	return ok && b.resv.Test(uint(i))
}

// All returns the allocated addresses and what holds them, in address
// order. The block must not change during the iteration.
func (b *Block) All() iter.Seq2[netip.Addr, Allocation] {
	return func(yield func(netip.Addr, Allocation) bool) {
		tw, rw := b.taken.Words(), b.resv.Words()
		for k := range tw {
			for w := tw[k] &^ rw[k]; w != 0; w &= w - 1 {
				i := k<<6 | bits.TrailingZeros64(w)
				r := &b.recs.recs[b.owner[i]]
				if !yield(b.addr(i), Allocation{Owner: Owner{Handle: r.handle, Attrs: r.attrs}, Seq: b.aseq[i]}) {
					return
				}
			}
		}
	}
}

// Owners returns each owner record and how many addresses it holds, in no
// particular order. The block must not change during the iteration.
func (b *Block) Owners() iter.Seq2[Owner, int] {
	return func(yield func(Owner, int) bool) {
		for i := range b.recs.recs {
			if r := &b.recs.recs[i]; r.refs > 0 && !yield(Owner{Handle: r.handle, Attrs: r.attrs}, r.refs) {
				return
			}
		}
	}
}
