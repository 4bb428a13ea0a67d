package ipam

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// handleRecord is the value of a handle: how many addresses the handle holds
// in each block. It lets ReleaseByHandle and IPsByHandle go straight to the
// blocks concerned instead of searching.
type handleRecord struct {
	blocks []handleCount // sorted by block, counts > 0
}

type handleCount struct {
	block netip.Prefix
	count int
}

// count returns how many addresses the handle holds in blk.
func (h *handleRecord) count(blk netip.Prefix) int {
	if i, ok := h.find(blk); ok {
		return h.blocks[i].count
	}
	return 0
}

func (h *handleRecord) find(blk netip.Prefix) (int, bool) {
	return slices.BinarySearchFunc(h.blocks, blk, func(c handleCount, p netip.Prefix) int {
		return c.block.Addr().Compare(p.Addr())
	})
}

// add moves the count of blk by delta, dropping blocks that reach 0. It
// reports an error, and changes nothing, if the count would go negative.
func (h *handleRecord) add(blk netip.Prefix, delta int) error {
	i, ok := h.find(blk)
	switch {
	case ok:
		n := h.blocks[i].count + delta
		if n < 0 {
			return &countError{blk, h.blocks[i].count, delta}
		}
		if n == 0 {
			h.blocks = slices.Delete(h.blocks, i, i+1)
		} else {
			h.blocks[i].count = n
		}
	case delta < 0:
		return &countError{blk, 0, delta}
	case delta > 0:
		h.blocks = slices.Insert(h.blocks, i, handleCount{blk, delta})
	}
	return nil
}

// countError reports a handle count that would go negative: the handle
// record counts fewer addresses in a block than are being released.
type countError struct {
	block netip.Prefix
	have  int
	delta int
}

func (e *countError) Error() string {
	return fmt.Sprintf("handle counts %d addresses in block %s, cannot take %d", e.have, e.block, -e.delta)
}

const handleVersion = 1

// appendBinary encodes the record: a version byte, the number of blocks,
// then per block its family (4 or 6), address, prefix length and count.
func (h *handleRecord) appendBinary(dst []byte) []byte {
	dst = append(dst, handleVersion)
	dst = binary.AppendUvarint(dst, uint64(len(h.blocks)))
	for _, c := range h.blocks {
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

// unmarshal decodes a handle record, rejecting anything appendBinary would
// not produce.
func (h *handleRecord) unmarshal(data []byte) error {
	if len(data) == 0 || data[0] != handleVersion {
		return fmt.Errorf("handle record: unknown version")
	}
	data = data[1:]
	n, k := binary.Uvarint(data)
	if k <= 0 || n > uint64(len(data)) {
		return fmt.Errorf("handle record: bad block count")
	}
	data = data[k:]
	blocks := make([]handleCount, 0, n)
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
		count, k := binary.Uvarint(data)
		if k <= 0 || count == 0 || count > 1<<32 {
			return fmt.Errorf("handle record: bad count for block %s", blk)
		}
		data = data[k:]
		if len(blocks) > 0 && blocks[len(blocks)-1].block.Addr().Compare(addr) >= 0 {
			return fmt.Errorf("handle record: blocks out of order at %s", blk)
		}
		blocks = append(blocks, handleCount{blk, int(count)})
	}
	if len(data) != 0 {
		return fmt.Errorf("handle record: %d trailing bytes", len(data))
	}
	h.blocks = blocks
	return nil
}
