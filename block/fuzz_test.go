package block_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/carve-ipam/carve/block"
)

// seedBlocks returns blocks of many shapes for fuzz seeds.
func seedBlocks(tb testing.TB) []*block.Block {
	var out []*block.Block
	out = append(out, goldenBlock(tb))

	empty6 := mustNew(tb, "fd00::/122", 1<<62)
	out = append(out, empty6)

	full := mustNew(tb, "10.1.0.0/28", ^uint64(0)-3) // the counter wraps
	_ = full.Reserve(addr("10.1.0.0"))
	_ = full.Reserve(addr("10.1.0.15"))
	full.Allocate(nil, 20, block.Owner{Handle: "a", Attrs: map[string]string{"k1": "v1", "k2": ""}})
	_ = full.Release(addr("10.1.0.7"), block.Check{})
	full.SetAffinity(block.Virtual("lb:1"), time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC))
	out = append(out, full)

	many := mustNew(tb, "fd00::/120", 7)
	for i := range 40 {
		many.Allocate(nil, 1+i%3, block.Owner{Handle: fmt.Sprint("pod-", i%17), Attrs: map[string]string{"i": fmt.Sprint(i % 2)}})
	}
	many.SetAffinity(block.Host("node-ü"), time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC))
	out = append(out, many)

	one := mustNew(tb, "10.0.0.9/32", 0)
	one.Allocate(nil, 1, block.Owner{})
	out = append(out, one)
	return out
}

func FuzzUnmarshalBinary(f *testing.F) {
	for _, b := range seedBlocks(f) {
		data, err := b.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
		f.Add(data[:len(data)/2])
	}
	f.Add([]byte{})
	f.Add([]byte{1, 6, 116})
	f.Add(mustHex("01042000000000ffffffffffffffff0000000100000101"))
	f.Add(mustHex(goldenV2))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		var b block.Block
		err := b.UnmarshalBinary(data)
		// Peek never panics, and agrees with the decoder on what both accept.
		if sum, perr := block.Peek(data); perr == nil && err == nil {
			if sum.Prefix != b.Prefix() || sum.Affinity != b.Affinity() || sum.Seq != b.Seq() ||
				sum.Size != b.Size() || sum.Used != b.Used() || sum.Reserved != b.Reserved() || sum.Free() != b.Free() {
				t.Fatalf("Peek = %+v, the block says %v", sum, &b)
			}
		} else if err == nil {
			t.Fatalf("Peek refused a block UnmarshalBinary accepts: %v", perr)
		}
		// Decoding into a used block gives the same answer.
		reused := goldenBlock(t)
		if err2 := reused.UnmarshalBinary(data); (err == nil) != (err2 == nil) || !reused.Equal(&b) {
			t.Fatalf("decoding into a used block differs: %v, %v", err, err2)
		}
		if err != nil {
			if !errors.Is(err, block.ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			if !b.Equal(new(block.Block)) {
				t.Fatal("failed decode did not leave the zero Block")
			}
			return
		}
		checkAccepted(t, &b)
		again, err := b.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("accepted input is not canonical:\n in  %x\n out %x", data, again)
		}
	})
}

func FuzzUnmarshalJSON(f *testing.F) {
	for _, b := range seedBlocks(f) {
		js, err := b.MarshalJSON()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(js)
	}
	f.Add([]byte(`{"version":1,"cidr":"10.0.0.0/30"}`))
	f.Add([]byte(`{"version":1,"cidr":"fd00::/128","seq":18446744073709551615,"owners":[{"handle":"h","attrs":{"a":"b"}}],"allocations":[{"addr":"fd00::","owner":0,"seq":3}]}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"version":1,"cidr":"10.0.0.0/30","seq":5,"cursor":1,"released":[{"addr":"10.0.0.2","at":"2026-01-01T00:00:00Z"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		var b block.Block
		if err := b.UnmarshalJSON(data); err != nil {
			if !errors.Is(err, block.ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			if !b.Equal(new(block.Block)) {
				t.Fatal("failed decode did not leave the zero Block")
			}
			return
		}
		checkAccepted(t, &b)
	})
}

// checkAccepted checks a block a decoder accepted: it is consistent, both
// encodings give it back, and it keeps working.
func checkAccepted(t *testing.T, b *block.Block) {
	t.Helper()
	if err := b.Verify(); err != nil {
		t.Fatalf("accepted an inconsistent block: %v", err)
	}
	if b.Used()+b.Free()+b.Reserved() != b.Size() {
		t.Fatal("counts do not add up")
	}
	data, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var bin block.Block
	if err := bin.UnmarshalBinary(data); err != nil || !bin.Equal(b) {
		t.Fatalf("binary round trip: %v", err)
	}
	js, err := b.MarshalJSON()
	switch {
	case err == nil:
		var jb block.Block
		if err := jb.UnmarshalJSON(js); err != nil || !jb.Equal(b) {
			t.Fatalf("JSON round trip of %s: %v", js, err)
		}
	case !errors.Is(err, block.ErrCorrupt):
		t.Fatalf("MarshalJSON: %v", err)
	}
	c := b.Clone()
	if !c.Equal(b) {
		t.Fatal("clone not Equal")
	}
	// The block works after decoding: allocate, release, and stay sound.
	got, seq := c.Allocate(nil, 3, block.Owner{Handle: "fuzz"})
	for _, a := range got {
		if err := c.Release(a, block.Check{Handle: "fuzz", Seq: seq, CheckSeq: true}); err != nil {
			t.Fatal(err)
		}
	}
	var first netip.Addr
	for a := range c.All() {
		first = a
		break
	}
	if first.IsValid() {
		if err := c.Release(first, block.Check{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Verify(); err != nil {
		t.Fatalf("block broken after use: %v", err)
	}
}
