package block

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/bits-and-blooms/bitset"

	"github.com/carve-ipam/carve/internal/ipmath"
)

// MaxSize is the most addresses a block holds: an IPv4 /20 or an IPv6 /116.
const MaxSize = 4096

// The allowed block prefix lengths.
const (
	MinBits4 = 20  // shortest IPv4 block prefix, 4096 addresses
	MaxBits4 = 32  // longest IPv4 block prefix, 1 address
	MinBits6 = 116 // shortest IPv6 block prefix, 4096 addresses
	MaxBits6 = 128 // longest IPv6 block prefix, 1 address
)

// Block is one fixed-size piece of a pool: a masked prefix of at most
// MaxSize addresses, its affinity, and who holds each of its addresses. See
// the package documentation.
//
// The zero Block is invalid: it has no prefix and holds no addresses. Its
// queries report nothing (Size 0, Empty true, Owner false), Assign, Release,
// Reserve and Unreserve return ErrOutOfBlock, Allocate hands out nothing,
// SetAffinity does nothing, and encoding it fails with ErrInvalidPrefix. Use
// New or a decoder to make a valid Block.
//
// A Block is not safe for concurrent use while it changes: the caller owns a
// block while it changes it. Methods that only read (the queries,
// iteration, Equal, Clone, CopyTo from it, String and the encoders) do not
// modify it, so any number of goroutines may read a block nobody changes.
type Block struct {
	prefix netip.Prefix
	base   ipmath.Uint128 // first address as an integer
	is4    bool
	size   int // addresses; 0 for the zero Block
	used   int // allocated addresses
	nres   int // reserved addresses
	cursor int // ordinal next-fit starts from, in [0, size)
	seq    uint64
	aff    Affinity
	claim  time.Time // UTC, no monotonic reading

	// taken has a bit for every allocated or reserved ordinal. Its length
	// is a whole number of words and the padding bits past size are set,
	// so a search (nextFree, NextClear) never returns an ordinal outside
	// the block. used+nres counts its clear bits below size exactly:
	// nextFree relies on that to stop.
	taken bitset.BitSet
	// resv has a bit for every reserved ordinal and the same padding bits,
	// so taken &^ resv is exactly the allocated ordinals.
	resv  bitset.BitSet
	owner []uint16 // per ordinal: slot of the owner record, meaningful when allocated
	aseq  []uint64 // per ordinal: counter value recorded at allocation, meaningful when allocated
	recs  owners
	// rel holds, per ordinal, when a free address was released with
	// ReleaseAt (Unix nanoseconds), or 0. It is empty until the first such
	// release, then has size entries; nrel counts the non-zero ones, which
	// are all free ordinals.
	rel  []int64
	nrel int

	mir mirror // see Mirror
}

// lastSeed makes seeds strictly increasing within a process even when the
// wall clock stalls or steps back.
var lastSeed atomic.Uint64

// seed returns a starting counter: the wall clock in nanoseconds, raised
// past the previous seed of this process.
func seed() uint64 {
	now := uint64(time.Now().UnixNano())
	for {
		prev := lastSeed.Load()
		s := max(now, prev+1)
		if lastSeed.CompareAndSwap(prev, s) {
			return s
		}
	}
}

// New returns an empty block for p. p must be masked, and /20 to /32 for
// IPv4 or /116 to /128 for IPv6; otherwise the error wraps ErrInvalidPrefix.
//
// The counter starts at the wall clock in nanoseconds (raised past any
// earlier seed of this process), as Calico's does: a change takes far longer
// than a nanosecond, so a block deleted and created again starts above every
// sequence number its earlier life recorded.
func New(p netip.Prefix) (*Block, error) {
	return NewWithSeq(p, seed())
}

// NewWithSeq is New with an explicit starting counter, for tests and
// decoders. The first change records seq+1.
func NewWithSeq(p netip.Prefix, seq uint64) (*Block, error) {
	b := new(Block)
	if err := b.init(p, seq); err != nil {
		return nil, err
	}
	return b, nil
}

// checkPrefix returns an error wrapping ErrInvalidPrefix unless p can be a
// block.
func checkPrefix(p netip.Prefix) error {
	if d := prefixProblem(p); d != "" {
		return &blockError{block: p, detail: d, errs: []error{ErrInvalidPrefix}}
	}
	return nil
}

// prefixProblem says why p cannot be a block, or returns "".
func prefixProblem(p netip.Prefix) string {
	switch {
	case !p.IsValid():
		return "invalid prefix"
	case p.Masked() != p:
		return "prefix is not masked (want " + p.Masked().String() + ")"
	case p.Addr().Is4() && (p.Bits() < MinBits4 || p.Bits() > MaxBits4):
		return fmt.Sprintf("IPv4 block size must be /%d to /%d", MinBits4, MaxBits4)
	case p.Addr().Is6() && (p.Bits() < MinBits6 || p.Bits() > MaxBits6):
		return fmt.Sprintf("IPv6 block size must be /%d to /%d", MinBits6, MaxBits6)
	}
	return ""
}

// init makes b an empty block for p with counter seq, reusing b's memory.
func (b *Block) init(p netip.Prefix, seq uint64) error {
	if err := checkPrefix(p); err != nil {
		b.reset()
		return err
	}
	size := 1 << ipmath.HostBits(p)
	words := (size + 63) / 64
	b.prefix = p
	b.base = ipmath.FromAddr(p.Addr())
	b.is4 = p.Addr().Is4()
	b.size = size
	b.used, b.nres, b.cursor = 0, 0, 0
	b.seq = seq
	b.aff = Affinity{}
	b.claim = time.Time{}
	initBits(&b.taken, words, size)
	initBits(&b.resv, words, size)
	b.owner = resize(b.owner, size)
	b.aseq = resize(b.aseq, size)
	b.rel, b.nrel = b.rel[:0], 0
	b.recs.reset()
	b.unmirror()
	return nil
}

// initBits makes s a set of words*64 bits, reusing its memory, with only the
// padding bits from size on set.
func initBits(s *bitset.BitSet, words, size int) {
	w := s.Words()
	if cap(w) < words {
		w = make([]uint64, words)
	} else {
		w = w[:words]
		clear(w)
	}
	if pad := size % 64; pad != 0 {
		w[words-1] = ^uint64(0) << pad
	}
	s.SetBitsetFrom(w)
}

// resize returns s with length n and zeroed contents, reusing its memory.
func resize[T uint16 | uint64 | int64](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	s = s[:n]
	clear(s)
	return s
}

// reset makes b the zero Block, keeping its memory for reuse.
func (b *Block) reset() {
	b.prefix = netip.Prefix{}
	b.base = ipmath.Uint128{}
	b.is4 = false
	b.size, b.used, b.nres, b.cursor = 0, 0, 0, 0
	b.seq = 0
	b.aff = Affinity{}
	b.claim = time.Time{}
	b.taken.SetBitsetFrom(b.taken.Words()[:0])
	b.resv.SetBitsetFrom(b.resv.Words()[:0])
	b.owner = b.owner[:0]
	b.aseq = b.aseq[:0]
	b.rel, b.nrel = b.rel[:0], 0
	b.recs.reset()
	b.unmirror()
}

// Prefix returns the block's prefix; the zero Block returns the zero Prefix.
func (b *Block) Prefix() netip.Prefix { return b.prefix }

// Size returns the number of addresses in the block.
func (b *Block) Size() int { return b.size }

// Used returns the number of allocated addresses.
func (b *Block) Used() int { return b.used }

// Reserved returns the number of reserved addresses.
func (b *Block) Reserved() int { return b.nres }

// Free returns the number of addresses that can be allocated:
// Size() - Used() - Reserved().
func (b *Block) Free() int { return b.size - b.used - b.nres }

// Empty reports whether no address is allocated; reserved addresses do not
// count.
func (b *Block) Empty() bool { return b.used == 0 }

// Seq returns the block's counter. It moves on every change; an allocation
// records the value it moved to.
func (b *Block) Seq() uint64 { return b.seq }

// Affinity returns who the block belongs to.
func (b *Block) Affinity() Affinity { return b.aff }

// ClaimTime returns the time given to the last SetAffinity, in UTC; the zero
// Time if there was none.
func (b *Block) ClaimTime() time.Time { return b.claim }

// SetAffinity records that the block belongs to a, claimed at at (stored in
// UTC without its monotonic clock reading; the encodings hold years 1 to
// 9999 and refuse to encode other times). Giving the zero Affinity clears
// the affinity; the time is stored as given. It is a change and moves the
// counter. It does nothing on the zero Block, and panics if a is not valid
// (see Affinity.IsValid): an unknown kind could not be encoded.
func (b *Block) SetAffinity(a Affinity, at time.Time) {
	if !a.IsValid() {
		panic(fmt.Sprintf("block %s: SetAffinity with invalid affinity %v:%q", b.prefix, a.Kind, a.Name))
	}
	if b.size == 0 {
		return
	}
	b.aff = a
	b.claim = at.UTC()
	b.seq++
}

// String returns a short summary such as "10.0.0.0/26 host:node-1 12/64
// used" (", 4 reserved" is added when addresses are reserved), or "invalid
// block" for the zero Block.
func (b *Block) String() string {
	if b.size == 0 {
		return "invalid block"
	}
	s := b.prefix.String()
	if !b.aff.IsZero() {
		s += " " + b.aff.String()
	}
	s += " " + strconv.Itoa(b.used) + "/" + strconv.Itoa(b.size) + " used"
	if b.nres > 0 {
		s += ", " + strconv.Itoa(b.nres) + " reserved"
	}
	return s
}

// ordinal returns the offset of a in the block and whether the block holds
// a. As with netip.Prefix.Contains, an address of the other family, an
// IPv4-mapped IPv6 address in an IPv4 block, or an address with a zone is
// not held.
func (b *Block) ordinal(a netip.Addr) (int, bool) {
	if b.is4 && a.Is4() {
		return b.ordinal4(a)
	}
	return b.ordinal6(a)
}

// ordinal4 is ordinal for an IPv4 block and address. It and ordinal6 are
// open-coded rather than b.prefix.Contains: they are on the release hot
// path, and a block's host bits all lie in the low 12.
func (b *Block) ordinal4(a netip.Addr) (int, bool) {
	x := a.As4()
	u := uint64(binary.BigEndian.Uint32(x[:]))
	mask := uint64(b.size - 1)
	return int(u & mask), u&^mask == b.base.Lo
}

// ordinal6 is ordinal for the other cases: an IPv6 block, or an address of
// the other family.
func (b *Block) ordinal6(a netip.Addr) (int, bool) {
	if b.is4 || b.size == 0 || !a.Is6() || a.Zone() != "" {
		return 0, false
	}
	// AppendBinary rather than As16, whose result is copied with a 16-byte
	// load of two 8-byte stores: a store-forwarding stall that doubled
	// the cost of a release.
	var buf [16]byte
	x, _ := a.AppendBinary(buf[:0])
	if len(x) != 16 {
		return 0, false
	}
	lo := binary.BigEndian.Uint64(x[8:])
	mask := uint64(b.size - 1)
	return int(lo & mask), lo&^mask == b.base.Lo && binary.BigEndian.Uint64(x[:8]) == b.base.Hi
}

// addr returns the address at offset i.
func (b *Block) addr(i int) netip.Addr {
	return ipmath.ToAddr(ipmath.Uint128{Hi: b.base.Hi, Lo: b.base.Lo | uint64(i)}, b.is4)
}

// addr4 is addr for an IPv4 block. It and addr6 are inlined where addr
// would be a call.
func (b *Block) addr4(i int) netip.Addr { return ipmath.ToAddr4(b.base.Lo | uint64(i)) }

// addr6 is addr for an IPv6 block.
func (b *Block) addr6(i int) netip.Addr {
	return ipmath.ToAddr6(ipmath.Uint128{Hi: b.base.Hi, Lo: b.base.Lo | uint64(i)})
}
