package block

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"strings"
	"time"

	"github.com/carve-ipam/carve/internal/ipmath"
)

// version is the first byte of the binary encoding. Version 2 is version 1
// plus a final section of release times; a block without release times is
// always written as version 1, so each block has exactly one encoding.
const (
	version         = 1
	versionReleased = 2
)

// minYear and maxYear bound claim times: the range both encodings (and RFC
// 3339) can write.
const (
	minYear = 1
	maxYear = 9999
)

// MarshalBinary returns the binary encoding of b described in the package
// documentation. Blocks that are Equal encode to the same bytes.
func (b *Block) MarshalBinary() ([]byte, error) {
	return b.AppendBinary(make([]byte, 0, b.encodedSizeHint()))
}

// encodedSizeHint guesses the encoded size so MarshalBinary usually
// allocates once: a few bytes per address, plus the owners, guessing 32
// bytes per attribute rather than walking the maps.
func (b *Block) encodedSizeHint() int {
	n := 48 + len(b.aff.Name) + 2*b.nres + 4*b.used
	for i := range b.recs.recs {
		if r := &b.recs.recs[i]; r.refs > 0 {
			n += 4 + len(r.handle) + 32*len(r.attrs)
		}
	}
	return n
}

// AppendBinary appends the binary encoding of b to dst. It does not allocate
// when dst has room and the block is a /24 (or /120) or smaller; larger
// blocks with more than 256 owners take one scratch slice.
func (b *Block) AppendBinary(dst []byte) ([]byte, error) {
	if err := b.checkEncodable("encode"); err != nil {
		return dst, err
	}
	a := b.prefix.Addr()
	v := byte(version)
	if b.nrel > 0 {
		v = versionReleased
	}
	if b.is4 {
		dst = append(dst, v, 4, byte(b.prefix.Bits()))
		a4 := a.As4()
		dst = append(dst, a4[:]...)
	} else {
		dst = append(dst, v, 6, byte(b.prefix.Bits()))
		a16 := a.As16()
		dst = append(dst, a16[:]...)
	}
	dst = binary.BigEndian.AppendUint64(dst, b.seq)
	dst = binary.AppendUvarint(dst, uint64(b.cursor))
	dst = append(dst, byte(b.aff.Kind))
	if b.aff.Kind != NoAffinity {
		dst = appendString(dst, b.aff.Name)
	}
	if b.claim.IsZero() {
		dst = append(dst, 0)
	} else {
		dst = append(dst, 1)
		sec := b.claim.Unix()
		dst = binary.AppendUvarint(dst, uint64(sec<<1)^uint64(sec>>63)) // zigzag
		dst = binary.AppendUvarint(dst, uint64(b.claim.Nanosecond()))
	}

	tw, rw := b.taken.Words(), b.resv.Words()
	dst = binary.AppendUvarint(dst, uint64(b.nres))
	prev := -1
	for k := range rw {
		for w := rw[k]; w != 0; w &= w - 1 {
			i := k<<6 | bits.TrailingZeros64(w)
			if i >= b.size {
				break // padding
			}
			dst = binary.AppendUvarint(dst, uint64(i-prev-1))
			prev = i
		}
	}

	// Owners get indexes in order of first use; remap holds index+1 per
	// slot, 0 for not yet written.
	var small [256 + 1]uint16 // a /24: 256 owners and the spare
	var remap []uint16
	if len(b.recs.recs) <= len(small) {
		remap = small[:len(b.recs.recs)]
	} else {
		remap = make([]uint16, len(b.recs.recs))
	}
	written := 0
	dst = binary.AppendUvarint(dst, uint64(b.used))
	prev = -1
	for k := range tw {
		for w := tw[k] &^ rw[k]; w != 0; w &= w - 1 {
			i := k<<6 | bits.TrailingZeros64(w)
			dst = binary.AppendUvarint(dst, uint64(i-prev-1))
			prev = i
			dst = binary.AppendUvarint(dst, b.seq-b.aseq[i])
			s := b.owner[i]
			if remap[s] != 0 {
				dst = binary.AppendUvarint(dst, uint64(remap[s]-1))
				continue
			}
			dst = binary.AppendUvarint(dst, uint64(written))
			written++
			remap[s] = uint16(written)
			dst = append(dst, b.recs.encoding(int(s))...)
		}
	}
	if b.nrel > 0 {
		// Release times in address order: the gap, then the time as a
		// zigzag difference from the previous one (the first from 0).
		dst = binary.AppendUvarint(dst, uint64(b.nrel))
		prev, last := -1, int64(0)
		for i, ns := range b.rel {
			if ns == 0 {
				continue
			}
			dst = binary.AppendUvarint(dst, uint64(i-prev-1))
			d := ns - last
			dst = binary.AppendUvarint(dst, uint64(d<<1)^uint64(d>>63))
			prev, last = i, ns
		}
	}
	return dst, nil
}

// checkEncodable reports why b cannot be encoded, if it cannot.
func (b *Block) checkEncodable(op string) error {
	if b.size == 0 {
		return &blockError{block: b.prefix, op: op, detail: "the zero Block has no prefix", errs: []error{ErrInvalidPrefix}}
	}
	if y := b.claim.Year(); !b.claim.IsZero() && (y < minYear || y > maxYear) {
		return &blockError{block: b.prefix, op: op, detail: fmt.Sprintf("claim time %v outside years %d to %d", b.claim, minYear, maxYear), errs: []error{ErrCorrupt}}
	}
	return nil
}

// appendOwner appends an owner record's encoding: the handle, the number
// of attributes and the pairs in ascending key order.
func appendOwner(dst []byte, handle string, attrs map[string]string) []byte {
	dst = appendString(dst, handle)
	dst = binary.AppendUvarint(dst, uint64(len(attrs)))
	if len(attrs) > 0 {
		dst = appendAttrs(dst, attrs)
	}
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// appendAttrs appends the pairs of m in ascending key order, without
// allocating for up to 8 keys.
func appendAttrs(dst []byte, m map[string]string) []byte {
	if len(m) == 1 {
		for k, v := range m {
			dst = appendString(dst, k)
			dst = appendString(dst, v)
		}
		return dst
	}
	type pair struct{ k, v string }
	var small [8]pair
	pairs := small[:0]
	if len(m) > len(small) {
		pairs = make([]pair, 0, len(m))
	}
	for k, v := range m {
		pairs = append(pairs, pair{k, v})
	}
	// Insertion sort: attribute sets are small.
	for i := 1; i < len(pairs); i++ {
		for j := i; j > 0 && pairs[j].k < pairs[j-1].k; j-- {
			pairs[j], pairs[j-1] = pairs[j-1], pairs[j]
		}
	}
	for _, p := range pairs {
		dst = appendString(dst, p.k)
		dst = appendString(dst, p.v)
	}
	return dst
}

// UnmarshalBinary replaces b with the block data encodes, reusing b's
// memory. It accepts exactly what AppendBinary writes: any other input,
// malformed or describing an inconsistent block, is refused with an error
// wrapping ErrCorrupt (or ErrInvalidPrefix for a bad prefix), and b is left
// as the zero Block.
func (b *Block) UnmarshalBinary(data []byte) error {
	d := decoder{data: data}
	if err := d.block(b); err != nil {
		b.reset()
		return err
	}
	return nil
}

// Summary is what the start of a block's encoding says, read without
// decoding the block: see Peek.
type Summary struct {
	Prefix   netip.Prefix
	Affinity Affinity
	Seq      uint64
	// Size, Used and Reserved are as the Block methods of those names;
	// Free is Size - Used - Reserved.
	Size, Used, Reserved int
}

// Free returns the number of addresses neither allocated nor reserved.
func (s Summary) Free() int { return s.Size - s.Used - s.Reserved }

// Peek reads the prefix, affinity, counter and counts of an encoded block
// without decoding its allocations, to pick blocks worth decoding. It checks
// only what it reads: a block Peek accepts may still fail UnmarshalBinary.
func Peek(data []byte) (Summary, error) {
	d := decoder{data: data}
	var b Block
	if _, err := d.header(&b, true); err != nil {
		return Summary{}, err
	}
	nres, err := d.count("reserved count", b.size, 1)
	if err != nil {
		return Summary{}, err
	}
	for range nres {
		if _, err := d.uvarint("reserved address"); err != nil {
			return Summary{}, err
		}
	}
	used, err := d.count("allocation count", b.size-nres, 3)
	if err != nil {
		return Summary{}, err
	}
	return Summary{Prefix: b.prefix, Affinity: b.aff, Seq: b.seq, Size: b.size, Used: used, Reserved: nres}, nil
}

// decoder reads the binary encoding. Errors carry the byte offset.
type decoder struct {
	data   []byte
	str    string // string(data), made on the first string read
	off    int
	prefix netip.Prefix // once read
}

func (d *decoder) fail(format string, args ...any) error {
	return &blockError{block: d.prefix, op: "decode binary", detail: fmt.Sprintf("offset %d: ", d.off) + fmt.Sprintf(format, args...), errs: []error{ErrCorrupt}}
}

// failPrefix reports a prefix that cannot be a block, at offset at.
func (d *decoder) failPrefix(at int, p netip.Prefix, detail string) error {
	return &blockError{block: p, op: "decode binary", detail: fmt.Sprintf("offset %d: %s", at, detail), errs: []error{ErrCorrupt, ErrInvalidPrefix}}
}

func (d *decoder) bytes(n int, what string) ([]byte, error) {
	if n < 0 || n > len(d.data)-d.off {
		return nil, d.fail("%s: want %d bytes, have %d", what, n, len(d.data)-d.off)
	}
	p := d.data[d.off : d.off+n]
	d.off += n
	return p, nil
}

func (d *decoder) byte(what string) (byte, error) {
	p, err := d.bytes(1, what)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

// uvarint reads a minimally encoded unsigned varint.
func (d *decoder) uvarint(what string) (uint64, error) {
	v, n := binary.Uvarint(d.data[d.off:])
	if n <= 0 {
		return 0, d.fail("%s: bad varint", what)
	}
	if n != (bits.Len64(v|1)+6)/7 {
		return 0, d.fail("%s: varint not minimal", what)
	}
	d.off += n
	return v, nil
}

// count reads a count of at most limit items, each taking at least per bytes.
func (d *decoder) count(what string, limit, per int) (int, error) {
	v, err := d.uvarint(what)
	if err != nil {
		return 0, err
	}
	if v > uint64(limit) || v*uint64(per) > uint64(len(d.data)-d.off) {
		return 0, d.fail("%s %d: more than %d or than the data holds", what, v, limit)
	}
	return int(v), nil
}

func (d *decoder) string(what string) (string, error) {
	n, err := d.strLen(what)
	if err != nil {
		return "", err
	}
	if d.str == "" {
		// One copy of the input backs every string decoded: one allocation
		// instead of one per handle, key and value.
		d.str = string(d.data)
	}
	str := d.str[d.off : d.off+n]
	d.off += n
	return str, nil
}

// ownString reads a string as string does, into a string of its own.
func (d *decoder) ownString(what string) (string, error) {
	n, err := d.strLen(what)
	if err != nil {
		return "", err
	}
	str := string(d.data[d.off : d.off+n])
	d.off += n
	return str, nil
}

// strLen reads a string's length, which the data must hold.
func (d *decoder) strLen(what string) (int, error) {
	n, err := d.uvarint(what)
	if err != nil {
		return 0, err
	}
	if n > uint64(len(d.data)-d.off) {
		return 0, d.fail("%s: length %d, %d bytes left", what, n, len(d.data)-d.off)
	}
	return int(n), nil
}

// header reads the encoding up to the reserved addresses (version, prefix,
// counter, cursor, affinity) into b and returns the version. With peek set
// it fills only the fields Peek reports, allocating only the affinity's
// name.
func (d *decoder) header(b *Block, peek bool) (byte, error) {
	v, err := d.byte("version")
	if err != nil {
		return 0, err
	}
	if v != version && v != versionReleased {
		d.off--
		return 0, d.fail("unsupported version %d (want %d or %d)", v, version, versionReleased)
	}
	fam, err := d.byte("family")
	if err != nil {
		return 0, err
	}
	if fam != 4 && fam != 6 {
		d.off--
		return 0, d.fail("family %d, want 4 or 6", fam)
	}
	nbits, err := d.byte("prefix length")
	if err != nil {
		return 0, err
	}
	alen := 4
	if fam == 6 {
		alen = 16
	}
	raw, err := d.bytes(alen, "address")
	if err != nil {
		return 0, err
	}
	a, _ := netip.AddrFromSlice(raw)
	at := d.off - alen - 1 // the prefix length byte
	if int(nbits) > a.BitLen() {
		return 0, d.failPrefix(at, netip.Prefix{}, fmt.Sprintf("prefix length %d longer than %d bits", nbits, a.BitLen()))
	}
	p := netip.PrefixFrom(a, int(nbits))
	if problem := prefixProblem(p); problem != "" {
		return 0, d.failPrefix(at, p, problem)
	}
	if peek {
		b.prefix, b.size = p, 1<<ipmath.HostBits(p)
	} else {
		_ = b.init(p, 0) // cannot fail now
	}
	d.prefix = p
	seq, err := d.bytes(8, "sequence number")
	if err != nil {
		return 0, err
	}
	b.seq = binary.BigEndian.Uint64(seq)
	cur, err := d.uvarint("cursor")
	if err != nil {
		return 0, err
	}
	if cur >= uint64(b.size) {
		return 0, d.fail("cursor %d outside the block's %d addresses", cur, b.size)
	}
	b.cursor = int(cur)
	if err := d.affinity(b, peek); err != nil {
		return 0, err
	}
	return v, nil
}

func (d *decoder) block(b *Block) error {
	v, err := d.header(b, false)
	if err != nil {
		return err
	}
	nres, err := d.count("reserved count", b.size, 1)
	if err != nil {
		return err
	}
	prev := -1
	for range nres {
		i, err := d.ordinal(b, prev, "reserved address")
		if err != nil {
			return err
		}
		b.taken.Set(uint(i))
		b.resv.Set(uint(i))
		prev = i
	}
	b.nres = nres

	used, err := d.count("allocation count", b.size-nres, 3)
	if err != nil {
		return err
	}
	prev = -1
	for range used {
		i, err := d.ordinal(b, prev, "allocated address")
		if err != nil {
			return err
		}
		if b.resv.Test(uint(i)) {
			return d.fail("address %d both reserved and allocated", i)
		}
		prev = i
		delta, err := d.uvarint("sequence delta")
		if err != nil {
			return err
		}
		ref, err := d.uvarint("owner index")
		if err != nil {
			return err
		}
		n := len(b.recs.recs) // slots are indexes: the decoder only appends
		switch {
		case ref > uint64(n):
			return d.fail("owner index %d out of range (%d owners so far)", ref, n)
		case ref == uint64(n):
			if err := d.owner(b); err != nil {
				return err
			}
		}
		b.taken.Set(uint(i))
		b.owner[i] = uint16(ref)
		b.aseq[i] = b.seq - delta
		b.recs.recs[ref].refs++
	}
	b.used = used
	b.recs.live = len(b.recs.recs)
	if v == versionReleased {
		if err := d.released(b); err != nil {
			return err
		}
	}
	if d.off != len(d.data) {
		return d.fail("%d bytes after the block", len(d.data)-d.off)
	}
	return nil
}

// released reads the release times of version 2: at least one, each on a
// free address, after 1970 and before 2262.
func (d *decoder) released(b *Block) error {
	n, err := d.count("release time count", b.size-b.used-b.nres, 2)
	if err != nil {
		return err
	}
	if n == 0 {
		return d.fail("version %d without release times", versionReleased)
	}
	b.rel = resize(b.rel, b.size)
	prev, last := -1, int64(0)
	for range n {
		i, err := d.ordinal(b, prev, "released address")
		if err != nil {
			return err
		}
		if b.taken.Test(uint(i)) {
			return d.fail("released address %d is allocated or reserved", i)
		}
		zz, err := d.uvarint("release time")
		if err != nil {
			return err
		}
		ns := last + (int64(zz>>1) ^ -int64(zz&1))
		switch {
		case ns <= 0:
			return d.fail("release time %d not after 1970", ns)
		case !validReleaseNanos(ns):
			return d.fail("release time %d not before 2262", ns)
		}
		b.rel[i] = ns
		prev, last = i, ns
	}
	b.nrel = n
	return nil
}

// ordinal reads an address gap and returns the address after prev.
func (d *decoder) ordinal(b *Block, prev int, what string) (int, error) {
	gap, err := d.uvarint(what)
	if err != nil {
		return 0, err
	}
	if gap >= uint64(b.size-prev-1) {
		return 0, d.fail("%s %d past the block's %d addresses", what, uint64(prev)+1+gap, b.size)
	}
	return prev + 1 + int(gap), nil
}

func (d *decoder) affinity(b *Block, peek bool) error {
	kind, err := d.byte("affinity kind")
	if err != nil {
		return err
	}
	if kind > byte(VirtualAffinity) {
		d.off--
		return d.fail("affinity kind %d unknown", kind)
	}
	if kind != byte(NoAffinity) {
		var name string
		var err error
		if peek {
			// A string of its own, not a piece of a copy of the whole
			// input (see string): a Summary kept does not keep that.
			name, err = d.ownString("affinity name")
		} else {
			name, err = d.string("affinity name")
		}
		if err != nil {
			return err
		}
		b.aff = Affinity{Kind: AffinityKind(kind), Name: name}
	}
	flag, err := d.byte("claim time flag")
	if err != nil {
		return err
	}
	switch flag {
	case 0:
		return nil
	case 1:
	default:
		d.off--
		return d.fail("claim time flag %d, want 0 or 1", flag)
	}
	zz, err := d.uvarint("claim time seconds")
	if err != nil {
		return err
	}
	nsec, err := d.uvarint("claim time nanoseconds")
	if err != nil {
		return err
	}
	sec := int64(zz>>1) ^ -int64(zz&1)
	// Bound seconds before time.Unix, which would overflow far outside
	// years 1 to 9999.
	const span = 10000 * 366 * 86400
	if nsec >= 1e9 || sec < -span || sec > span {
		return d.fail("claim time %d.%09d s out of range", sec, nsec)
	}
	t := time.Unix(sec, int64(nsec)).UTC()
	if y := t.Year(); t.IsZero() || y < minYear || y > maxYear {
		return d.fail("claim time %v zero or outside years %d to %d", t, minYear, maxYear)
	}
	b.claim = t
	return nil
}

// owner reads an owner record and appends it to b's records, keeping the
// bytes it read as the record's encoding.
func (d *decoder) owner(b *Block) error {
	start := d.off
	handle, err := d.string("handle")
	if err != nil {
		return err
	}
	nattrs, err := d.count("attribute count", len(d.data), 2)
	if err != nil {
		return err
	}
	var attrs map[string]string
	if nattrs > 0 {
		// The count is only as good as the input: size the map for the
		// usual few attributes and let it grow as they are read, rather
		// than allocate for a count the data may not back.
		attrs = make(map[string]string, min(nattrs, 16))
		prev := ""
		for j := range nattrs {
			k, err := d.string("attribute key")
			if err != nil {
				return err
			}
			if j > 0 && strings.Compare(k, prev) <= 0 {
				return d.fail("attribute key %q not after %q", k, prev)
			}
			v, err := d.string("attribute value")
			if err != nil {
				return err
			}
			attrs[k] = v
			prev = k
		}
	}
	// The record's encoding is the piece of input just read.
	if _, err := b.recs.addUnique(handle, attrs, d.data[start:d.off]); err != nil {
		return d.fail("%v", err)
	}
	return nil
}
