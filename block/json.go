package block

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// jsonBlock is the JSON form of a block, version 1. Owners are listed in
// order of first use and referred to by index; allocations and reserved
// addresses are in address order when encoded and in any order when decoded.
type jsonBlock struct {
	Version     int          `json:"version"`
	CIDR        netip.Prefix `json:"cidr"`
	Seq         uint64       `json:"seq"`
	Cursor      int          `json:"cursor"`
	Affinity    string       `json:"affinity,omitempty"`
	ClaimTime   *time.Time   `json:"claimTime,omitempty"`
	Reserved    []netip.Addr `json:"reserved,omitempty"`
	Owners      []jsonOwner  `json:"owners,omitempty"`
	Allocations []jsonAlloc  `json:"allocations,omitempty"`
	Released    []jsonRel    `json:"released,omitempty"`
}

// jsonRel is the release time of a free address.
type jsonRel struct {
	Addr netip.Addr `json:"addr"`
	At   time.Time  `json:"at"`
}

type jsonOwner struct {
	Handle string            `json:"handle"`
	Attrs  map[string]string `json:"attrs,omitempty"`
}

type jsonAlloc struct {
	Addr  netip.Addr `json:"addr"`
	Owner int        `json:"owner"`
	Seq   uint64     `json:"seq"`
}

// MarshalJSON returns the JSON form of b (see the package documentation). It
// fails with ErrCorrupt if a handle, attribute or affinity name is not valid
// UTF-8, which JSON cannot carry; the binary encoding can.
func (b *Block) MarshalJSON() ([]byte, error) {
	const op = "encode json"
	if err := b.checkEncodable(op); err != nil {
		return nil, err
	}
	bad := func(what, s string) error {
		return &blockError{block: b.prefix, op: op, detail: fmt.Sprintf("%s %q is not valid UTF-8", what, s), errs: []error{ErrCorrupt}}
	}
	if !utf8.ValidString(b.aff.Name) {
		return nil, bad("affinity name", b.aff.Name)
	}
	j := jsonBlock{
		Version:  version,
		CIDR:     b.prefix,
		Seq:      b.seq,
		Cursor:   b.cursor,
		Affinity: b.aff.String(),
	}
	if !b.claim.IsZero() {
		j.ClaimTime = &b.claim
	}
	tw, rw := b.taken.Words(), b.resv.Words()
	if b.nres > 0 {
		j.Reserved = make([]netip.Addr, 0, b.nres)
		for k := range rw {
			for w := rw[k]; w != 0; w &= w - 1 {
				if i := k<<6 | bits.TrailingZeros64(w); i < b.size {
					j.Reserved = append(j.Reserved, b.addr(i))
				}
			}
		}
	}
	if b.used > 0 {
		j.Allocations = make([]jsonAlloc, 0, b.used)
		j.Owners = make([]jsonOwner, 0, b.recs.live)
		remap := make([]int, len(b.recs.recs)) // index+1 per slot
		for k := range tw {
			for w := tw[k] &^ rw[k]; w != 0; w &= w - 1 {
				i := k<<6 | bits.TrailingZeros64(w)
				s := b.owner[i]
				if remap[s] == 0 {
					r := &b.recs.recs[s]
					if !utf8.ValidString(r.handle) {
						return nil, bad("handle", r.handle)
					}
					for k, v := range r.attrs {
						if !utf8.ValidString(k) || !utf8.ValidString(v) {
							return nil, bad("attribute", k+"="+v)
						}
					}
					j.Owners = append(j.Owners, jsonOwner{Handle: r.handle, Attrs: r.attrs})
					remap[s] = len(j.Owners)
				}
				j.Allocations = append(j.Allocations, jsonAlloc{Addr: b.addr(i), Owner: remap[s] - 1, Seq: b.aseq[i]})
			}
		}
	}
	for i, ns := range b.rel {
		if ns != 0 {
			j.Released = append(j.Released, jsonRel{Addr: b.addr(i), At: time.Unix(0, ns).UTC()})
		}
	}
	return json.Marshal(&j)
}

// UnmarshalJSON replaces b with the block data describes. Unknown fields,
// field names in another letter case, a field or attribute key given twice,
// trailing data and any inconsistency (an address outside the block or
// listed twice, reserved and allocated at once, an owner index out of range,
// an owner listed twice or holding no address, ...) are refused with an
// error wrapping ErrCorrupt, and b is left as the zero Block.
func (b *Block) UnmarshalJSON(data []byte) error {
	if err := b.decodeJSON(data); err != nil {
		b.reset()
		return err
	}
	return nil
}

func (b *Block) decodeJSON(data []byte) error {
	var j jsonBlock
	fail := func(format string, args ...any) error {
		return &blockError{block: j.CIDR, op: "decode json", detail: fmt.Sprintf(format, args...), errs: []error{ErrCorrupt}}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return fail("%v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fail("data after the block")
	}
	// encoding/json lets the last of a repeated key win and matches field
	// names in any letter case; the JSON MarshalJSON writes has neither.
	c := keyChecker{data: data}
	if err := c.value(blockShape); err != nil {
		return fail("%v", err)
	}
	if j.Version != version {
		return fail("unsupported version %d (want %d)", j.Version, version)
	}
	if problem := prefixProblem(j.CIDR); problem != "" {
		return &blockError{block: j.CIDR, op: "decode json", detail: problem, errs: []error{ErrCorrupt, ErrInvalidPrefix}}
	}
	_ = b.init(j.CIDR, j.Seq) // cannot fail now
	if j.Cursor < 0 || j.Cursor >= b.size {
		return fail("cursor %d outside the block's %d addresses", j.Cursor, b.size)
	}
	b.cursor = j.Cursor
	aff, err := ParseAffinity(j.Affinity)
	if err != nil {
		return fail("%v", err)
	}
	b.aff = aff
	if t := j.ClaimTime; t != nil && !t.IsZero() {
		// The block keeps the time in UTC, where the encoders check the
		// years: an offset can move a time across a year's end.
		u := t.UTC()
		if y := u.Year(); y < minYear || y > maxYear {
			return fail("claim time %v outside years %d to %d", t, minYear, maxYear)
		}
		b.claim = u
	}
	for _, a := range j.Reserved {
		i, ok := b.ordinal(a)
		switch {
		case !ok:
			return fail("reserved address %s not in block", a)
		case b.resv.Test(uint(i)):
			return fail("reserved address %s listed twice", a)
		}
		b.taken.Set(uint(i))
		b.resv.Set(uint(i))
	}
	b.nres = len(j.Reserved)
	slots := make([]int, len(j.Owners)) // slot+1 per owner index
	// enc holds each new owner's encoding in turn (addUnique copies it into
	// the arena), so that records cost no allocation of their own.
	var scratch [256]byte
	enc := scratch[:0]
	for _, al := range j.Allocations {
		i, ok := b.ordinal(al.Addr)
		switch {
		case !ok:
			return fail("allocated address %s not in block", al.Addr)
		case b.resv.Test(uint(i)):
			return fail("address %s both reserved and allocated", al.Addr)
		case b.taken.Test(uint(i)):
			return fail("allocated address %s listed twice", al.Addr)
		case al.Owner < 0 || al.Owner >= len(j.Owners):
			return fail("address %s: owner index %d out of range (%d owners)", al.Addr, al.Owner, len(j.Owners))
		}
		if slots[al.Owner] == 0 {
			o := j.Owners[al.Owner]
			if len(o.Attrs) == 0 {
				o.Attrs = nil
			}
			enc = appendOwner(enc[:0], o.Handle, o.Attrs)
			s, err := b.recs.addUnique(o.Handle, o.Attrs, enc)
			if err != nil {
				return fail("owner %d: %v", al.Owner, err)
			}
			slots[al.Owner] = s + 1
		}
		s := slots[al.Owner] - 1
		b.taken.Set(uint(i))
		b.owner[i] = uint16(s)
		b.aseq[i] = al.Seq
		b.recs.recs[s].refs++
	}
	for k, s := range slots {
		if s == 0 {
			return fail("owner %d (handle %q) holds no address", k, j.Owners[k].Handle)
		}
	}
	b.used = len(j.Allocations)
	b.recs.live = len(b.recs.recs)
	for _, r := range j.Released {
		i, ok := b.ordinal(r.Addr)
		switch {
		case !ok:
			return fail("released address %s not in block", r.Addr)
		case b.taken.Test(uint(i)):
			return fail("released address %s is allocated or reserved", r.Addr)
		case len(b.rel) > 0 && b.rel[i] != 0:
			return fail("released address %s listed twice", r.Addr)
		}
		ns, ok := releaseNanos(r.At)
		if !ok {
			return fail("release time %v of %s outside 1970 to 2262", r.At, r.Addr)
		}
		b.remember(i, ns)
	}
	return nil
}

// jsonShape is what keyChecker expects of a JSON value: an object with the
// named fields, each value of the shape given (nil for any); an object of
// any keys (attributes), when names is nil; the elements of an array.
type jsonShape struct {
	names []string
	subs  []*jsonShape
	elem  *jsonShape
}

// The shapes of jsonBlock and its parts, as MarshalJSON writes them.
var (
	ownerShape = &jsonShape{names: []string{"handle", "attrs"}, subs: []*jsonShape{nil, {}}}
	allocShape = &jsonShape{names: []string{"addr", "owner", "seq"}, subs: make([]*jsonShape, 3)}
	relShape   = &jsonShape{names: []string{"addr", "at"}, subs: make([]*jsonShape, 2)}
	blockShape = &jsonShape{
		names: []string{"version", "cidr", "seq", "cursor", "affinity", "claimTime", "reserved", "owners", "allocations", "released"},
		subs:  []*jsonShape{nil, nil, nil, nil, nil, nil, nil, {elem: ownerShape}, {elem: allocShape}, {elem: relShape}},
	}
)

// keyChecker walks data, one JSON value that encoding/json has accepted as
// well formed, and refuses an object with a key given twice or, where its
// shape names the fields, a key that is not exactly one of them.
type keyChecker struct {
	data []byte
	off  int
}

func (c *keyChecker) space() {
	for c.off < len(c.data) {
		switch c.data[c.off] {
		case ' ', '\t', '\n', '\r':
			c.off++
		default:
			return
		}
	}
}

// str reads the string at off and returns its value as encoding/json
// decodes it: a slice of data when it has no escapes and is valid UTF-8
// (encoding/json turns each byte that is not into U+FFFD, so that keys
// differing only in such bytes decode to one).
func (c *keyChecker) str() ([]byte, error) {
	start, esc, ascii := c.off, false, true
	for c.off++; c.data[c.off] != '"'; c.off++ {
		switch b := c.data[c.off]; {
		case b == '\\':
			esc = true
			c.off++
		case b >= utf8.RuneSelf:
			ascii = false
		}
	}
	c.off++
	if raw := c.data[start+1 : c.off-1]; !esc && (ascii || utf8.Valid(raw)) {
		return raw, nil
	}
	var s string
	err := json.Unmarshal(c.data[start:c.off], &s)
	return []byte(s), err
}

// value checks the value at off, which should have shape s (nil: any).
func (c *keyChecker) value(s *jsonShape) error {
	c.space()
	switch c.data[c.off] {
	case '{':
		c.off++
		var seen uint64          // fields of s, by index
		var keys [8][]byte       // keys of an object of any keys, then
		var more map[string]bool // beyond 8
		n := 0
		for {
			c.space()
			switch c.data[c.off] {
			case '}':
				c.off++
				return nil
			case ',':
				c.off++
				c.space()
			}
			k, err := c.str()
			if err != nil {
				return err
			}
			var sub *jsonShape
			switch {
			case s != nil && s.names != nil:
				i := slices.Index(s.names, string(k))
				if i < 0 {
					return fmt.Errorf("unknown field %q", k)
				}
				if seen&(1<<i) != 0 {
					return fmt.Errorf("field %q given twice", k)
				}
				seen |= 1 << i
				sub = s.subs[i]
			case n < len(keys):
				for _, x := range keys[:n] {
					if bytes.Equal(x, k) {
						return fmt.Errorf("key %q given twice", k)
					}
				}
				keys[n] = k
				n++
			default:
				if more == nil {
					more = make(map[string]bool)
					for _, x := range keys {
						more[string(x)] = true
					}
				}
				if more[string(k)] {
					return fmt.Errorf("key %q given twice", k)
				}
				more[string(k)] = true
			}
			c.space()
			c.off++ // the colon
			if err := c.value(sub); err != nil {
				return err
			}
		}
	case '[':
		c.off++
		var elem *jsonShape
		if s != nil {
			elem = s.elem
		}
		for {
			c.space()
			switch c.data[c.off] {
			case ']':
				c.off++
				return nil
			case ',':
				c.off++
			}
			if err := c.value(elem); err != nil {
				return err
			}
		}
	case '"':
		_, err := c.str()
		return err
	}
	// A number, true, false or null.
	for c.off < len(c.data) && !strings.ContainsRune(" \t\n\r,]}", rune(c.data[c.off])) {
		c.off++
	}
	return nil
}
