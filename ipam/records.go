package ipam

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
)

// handleRecord is the value of a handle: how many addresses the handle holds
// in each block. It lets ReleaseByHandle and IPsByHandle go straight to the
// blocks concerned instead of searching.
//
// Nearly every handle holds addresses of one or two blocks; those entries
// live in small, so a record on the stack costs no allocation.
type handleRecord struct {
	small [2]handleCount
	n     int           // entries in small, when big is nil
	big   []handleCount // the entries, when there are more than fit in small
}

type handleCount struct {
	block netip.Prefix
	count int
}

// entries returns the entries, sorted by block, counts > 0. The slice is
// the record's own: it is valid until the next change.
func (h *handleRecord) entries() []handleCount {
	if h.big != nil {
		return h.big
	}
	return h.small[:h.n]
}

// setEntries makes a copy of es the record's entries.
func (h *handleRecord) setEntries(es []handleCount) {
	if len(es) <= len(h.small) {
		h.n = copy(h.small[:], es)
		h.big = nil
		return
	}
	h.big = slices.Clone(es)
}

func findBlock(es []handleCount, blk netip.Prefix) (int, bool) {
	switch {
	case len(es) == 0:
		return 0, false // a new handle
	case len(es) == 1 && es[0].block == blk:
		return 0, true // the common case: a handle in one block
	}
	return slices.BinarySearchFunc(es, blk, func(c handleCount, p netip.Prefix) int {
		return comparePrefix(c.block, p)
	})
}

// comparePrefix orders prefixes by address, then length.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// count returns how many addresses the handle holds in blk.
func (h *handleRecord) count(blk netip.Prefix) int {
	es := h.entries()
	if i, ok := findBlock(es, blk); ok {
		return es[i].count
	}
	return 0
}

// put sets the count of blk to n, dropping the block when n is 0.
func (h *handleRecord) put(blk netip.Prefix, n int) {
	es := h.entries()
	i, ok := findBlock(es, blk)
	if h.big == nil && (ok || n == 0 || h.n < len(h.small)) {
		// In small, changed in place: no slices to shift and copy back.
		switch {
		case ok && n != 0:
			h.small[i].count = n
		case ok:
			for ; i < h.n-1; i++ {
				h.small[i] = h.small[i+1]
			}
			h.n--
			h.small[h.n] = handleCount{}
		case n != 0:
			for j := h.n; j > i; j-- {
				h.small[j] = h.small[j-1]
			}
			h.small[i] = handleCount{blk, n}
			h.n++
		}
		return
	}
	if h.big == nil {
		// small is full and gains an entry: the entries move to big.
		big := make([]handleCount, 0, 2*len(h.small))
		big = append(big, h.small[:i]...)
		big = append(big, handleCount{blk, n})
		h.big = append(big, h.small[i:]...)
		h.small, h.n = [2]handleCount{}, 0
		return
	}
	// big is the record's own: changed in place, never copied whole.
	switch {
	case ok && n != 0:
		h.big[i].count = n
		return
	case ok:
		h.big = slices.Delete(h.big, i, i+1)
	case n == 0:
		return
	default:
		h.big = slices.Insert(h.big, i, handleCount{blk, n})
	}
	h.own(h.big)
}

// own makes es the record's entries, inline when they fit; the record
// takes es over. es must not be the record's inline array (setEntries
// copies from anywhere).
func (h *handleRecord) own(es []handleCount) {
	if len(es) <= len(h.small) {
		h.n = copy(h.small[:], es)
		h.big = nil
		return
	}
	h.big = es
}

// merge moves the count of each block of deltas by the entry's count, as
// put would one block at a time, in one pass over the record: deltas are
// sorted by block, one entry per block. A delta that would take a count
// below zero is left out. It reports whether any count changed.
func (h *handleRecord) merge(deltas []handleCount) bool {
	es := h.entries()
	out := make([]handleCount, 0, len(es)+len(deltas))
	changed := false
	i, j := 0, 0
	for i < len(es) || j < len(deltas) {
		c := 0
		switch {
		case j == len(deltas):
			c = -1
		case i == len(es):
			c = 1
		default:
			c = comparePrefix(es[i].block, deltas[j].block)
		}
		switch {
		case c < 0: // no change for this block
			out = append(out, es[i])
			i++
		case c > 0: // a block the record did not have
			if d := deltas[j]; d.count > 0 {
				out = append(out, d)
				changed = true
			}
			j++
		default:
			n := es[i].count + deltas[j].count
			switch {
			case deltas[j].count == 0 || n < 0:
				out = append(out, es[i])
			case n > 0:
				out = append(out, handleCount{es[i].block, n})
				changed = true
			default:
				changed = true
			}
			i++
			j++
		}
	}
	if changed {
		h.own(out)
	}
	return changed
}

const handleVersion = 1

// appendBinary encodes the record: a version byte, the number of blocks,
// then per block its family (4 or 6), address, prefix length and count.
func (h *handleRecord) appendBinary(dst []byte) []byte {
	es := h.entries()
	dst = append(dst, handleVersion)
	dst = binary.AppendUvarint(dst, uint64(len(es)))
	for _, c := range es {
		a := c.block.Addr()
		if a.Is4() {
			b := a.As4()
			dst = append(dst, 4)
			dst = append(dst, b[:]...)
		} else {
			b := a.As16()
			dst = append(dst, 6)
			dst = append(dst, b[:]...)
		}
		dst = append(dst, byte(c.block.Bits()))
		dst = binary.AppendUvarint(dst, uint64(c.count))
	}
	return dst
}

var errShortRecord = errors.New("truncated")

// uvarint reads a minimally encoded uvarint, so each record has one
// encoding; k <= 0 means malformed.
func uvarint(data []byte) (v uint64, k int) {
	v, k = binary.Uvarint(data)
	if k > 0 && k != (bits.Len64(v|1)+6)/7 {
		return 0, -1
	}
	return v, k
}

// unmarshal decodes a handle record, rejecting anything appendBinary would
// not produce.
func (h *handleRecord) unmarshal(data []byte) error {
	// The record of nearly every handle, read on every release: one IPv4
	// block and a count below 128, in 9 bytes.
	if len(data) == 9 && data[0] == handleVersion && data[1] == 1 && data[2] == 4 &&
		data[7] <= 32 && data[8]-1 < 0x7f {
		blk := netip.PrefixFrom(netip.AddrFrom4([4]byte(data[3:7])), int(data[7]))
		if blk.Masked() == blk {
			h.small[0] = handleCount{blk, int(data[8])}
			h.n, h.big = 1, nil
			return nil
		}
	}
	return h.unmarshalAny(data)
}

// unmarshalAny is unmarshal for any record.
func (h *handleRecord) unmarshalAny(data []byte) error {
	if len(data) == 0 || data[0] != handleVersion {
		return fmt.Errorf("handle record: unknown version")
	}
	data = data[1:]
	n, k := uvarint(data)
	if k <= 0 || n > uint64(len(data)) {
		return fmt.Errorf("handle record: bad block count")
	}
	if n == 0 {
		// carve deletes a record once it counts nothing: one that counts
		// no block would hold its handle (NewHandle) with nothing to
		// release, and no count for Check to find too high.
		return fmt.Errorf("handle record: counts no block")
	}
	data = data[k:]
	var blocks []handleCount
	if n <= uint64(len(h.small)) {
		blocks = h.small[:0:n]
	}
	for range n {
		if len(data) < 1 {
			return fmt.Errorf("handle record: %w", errShortRecord)
		}
		var size int
		switch data[0] {
		case 4:
			size = 4
		case 6:
			size = 16
		default:
			return fmt.Errorf("handle record: bad family %d", data[0])
		}
		if len(data) < 1+size+1 {
			return fmt.Errorf("handle record: %w", errShortRecord)
		}
		addr, _ := netip.AddrFromSlice(data[1 : 1+size])
		bits := int(data[1+size])
		blk := netip.PrefixFrom(addr, bits)
		if !blk.IsValid() || blk.Masked() != blk {
			return fmt.Errorf("handle record: bad block %s/%d", addr, bits)
		}
		data = data[2+size:]
		count, k := uvarint(data)
		if k <= 0 || count == 0 || count > 1<<32 {
			return fmt.Errorf("handle record: bad count for block %s", blk)
		}
		data = data[k:]
		if len(blocks) > 0 && comparePrefix(blocks[len(blocks)-1].block, blk) >= 0 {
			return fmt.Errorf("handle record: blocks out of order at %s", blk)
		}
		blocks = append(blocks, handleCount{blk, int(count)})
	}
	if len(data) != 0 {
		return fmt.Errorf("handle record: %d trailing bytes", len(data))
	}
	h.setEntries(blocks)
	return nil
}
