package block_test

import (
	"encoding/binary"
	"errors"
	"runtime"
	"testing"

	"github.com/carve-ipam/carve/block"
)

// TestAttributeCountDoesNotSizeMemory: an owner's attribute count is
// a length field; the decoder must not allocate in proportion to it before
// the attributes are there. Here a 1 MB input claims half a million
// attributes whose second key already breaks the order: the decoder
// refuses it, but had first made a map for all of them, 40 times the
// input's size.
func TestAttributeCountDoesNotSizeMemory(t *testing.T) {
	const size = 1 << 20
	// An empty 10.0.0.0/30 with one allocation (10.0.0.0) to a new owner
	// with handle "" and size/2-20 attributes, all empty strings.
	data := []byte{1, 4, 30, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0}
	data = binary.AppendUvarint(data, size/2-20)
	data = append(data, make([]byte, size-len(data))...)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var b block.Block
	err := b.UnmarshalBinary(data)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, block.ErrCorrupt) {
		t.Fatalf("UnmarshalBinary: %v, want ErrCorrupt", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 4*size {
		t.Fatalf("decoding %d bytes allocated %d bytes", size, got)
	}
}
