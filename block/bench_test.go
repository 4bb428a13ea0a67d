package block_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/carve-ipam/carve/block"
)

var benchSizes = []struct {
	bits   int
	prefix string
}{
	{26, "10.0.0.0/26"},
	{24, "10.0.0.0/24"},
	{20, "10.0.0.0/20"},
	{122, "fd00::/122"},
	{116, "fd00::/116"},
}

// BenchmarkAllocRelease is the hot path: one address handed out and given
// back, with the checks a careful caller makes, in a block at fill percent
// whose other addresses are held by one handle each.
func BenchmarkAllocRelease(b *testing.B) {
	for _, sz := range benchSizes {
		for _, fill := range []int{0, 50, 99} {
			b.Run(fmt.Sprintf("bits=%d/fill=%d", sz.bits, fill), func(b *testing.B) {
				blk := filled(b, sz.prefix, fill)
				owner := block.Owner{Handle: "pod", Attrs: map[string]string{"pod": "x"}}
				buf := make([]netip.Addr, 0, 1)
				b.ReportAllocs()
				for b.Loop() {
					got, seq := blk.Allocate(buf[:0], 1, owner)
					if err := blk.Release(got[0], block.Check{Handle: owner.Handle, Seq: seq, CheckSeq: true}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkAllocReleaseNewOwner is BenchmarkAllocRelease with a new owner
// for every pair (1,024 handles in turn, each with its own attributes), as
// every pod is: BenchmarkAllocRelease's owner is the block's last, which
// Allocate serves from its cache without looking it up or recording it.
func BenchmarkAllocReleaseNewOwner(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(fmt.Sprintf("bits=%d/fill=50", sz.bits), func(b *testing.B) {
			blk := filled(b, sz.prefix, 50)
			owners := make([]block.Owner, 1024)
			for i := range owners {
				name := fmt.Sprint("pod-", i)
				owners[i] = block.Owner{Handle: name, Attrs: map[string]string{"pod": name}}
			}
			buf := make([]netip.Addr, 0, 1)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				owner := owners[i%len(owners)]
				i++
				got, seq := blk.Allocate(buf[:0], 1, owner)
				if err := blk.Release(got[0], block.Check{Handle: owner.Handle, Seq: seq, CheckSeq: true}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAllocate hands out n addresses at once to one owner and gives
// them back by handle.
func BenchmarkAllocate(b *testing.B) {
	for _, sz := range []struct {
		bits   int
		prefix string
	}{{26, "10.0.0.0/26"}, {24, "10.0.0.0/24"}, {116, "fd00::/116"}} {
		b.Run(fmt.Sprintf("n=64/bits=%d", sz.bits), func(b *testing.B) {
			blk := mustNew(b, sz.prefix, 1)
			owner := block.Owner{Handle: "pod"}
			buf := make([]netip.Addr, 0, 64)
			rel := make([]netip.Addr, 0, 64)
			b.ReportAllocs()
			for b.Loop() {
				got, _ := blk.Allocate(buf[:0], 64, owner)
				if len(blk.ReleaseHandle(owner.Handle, rel[:0])) != len(got) {
					b.Fatal("release")
				}
			}
		})
	}
}

func BenchmarkClone(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(fmt.Sprintf("bits=%d/fill=50", sz.bits), func(b *testing.B) {
			blk := filled(b, sz.prefix, 50)
			b.ReportAllocs()
			for b.Loop() {
				_ = blk.Clone()
			}
		})
	}
}

func BenchmarkCopyTo(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(fmt.Sprintf("bits=%d/fill=50", sz.bits), func(b *testing.B) {
			blk := filled(b, sz.prefix, 50)
			dst := blk.Clone()
			b.ReportAllocs()
			for b.Loop() {
				blk.CopyTo(dst)
			}
		})
	}
}

// BenchmarkMirror is the copy the allocator makes before each write: one
// allocation or release in the current block, then Mirror into the
// previous version, and the two swap, as a successful write swaps them.
func BenchmarkMirror(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(fmt.Sprintf("bits=%d/fill=50", sz.bits), func(b *testing.B) {
			mirrorPairs(b, filled(b, sz.prefix, 50), []block.Owner{{Handle: "pod"}})
		})
	}
}

// BenchmarkMirrorNewOwner is BenchmarkMirror with a new owner at every
// allocation, as every pod is: the allocation adds an owner record (its
// encoding appended to the arena, an index bucket set) and the release
// retires it, so each Mirror copies what a new owner changes. That must
// not grow with the block's size: the blocks are filled with an owner per
// address, so a /20's arena holds 2,048 encodings.
func BenchmarkMirrorNewOwner(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(fmt.Sprintf("bits=%d/fill=50", sz.bits), func(b *testing.B) {
			owners := make([]block.Owner, 1024)
			for i := range owners {
				name := fmt.Sprint("pod-", i)
				owners[i] = block.Owner{Handle: "k8s-pod-network." + name, Attrs: map[string]string{"namespace": "default", "pod": name}}
			}
			mirrorPairs(b, filled(b, sz.prefix, 50), owners)
		})
	}
}

// mirrorPairs times, as the allocator stages its writes, a Mirror of cur
// into the previous version, an allocation to the next owner of owners in
// turn, a Mirror back, and the release of the address.
func mirrorPairs(b *testing.B, cur *block.Block, owners []block.Owner) {
	prev := new(block.Block)
	cur.Mirror(prev)
	buf := make([]netip.Addr, 0, 1)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		cur.Mirror(prev)
		cur, prev = prev, cur
		got, _ := cur.Allocate(buf[:0], 1, owners[i%len(owners)])
		i++
		cur.Mirror(prev)
		cur, prev = prev, cur
		if err := cur.Release(got[0], block.Check{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMarshalBinary(b *testing.B) {
	for _, sz := range benchSizes {
		for _, fill := range []int{0, 50, 99} {
			b.Run(fmt.Sprintf("bits=%d/fill=%d", sz.bits, fill), func(b *testing.B) {
				blk := filled(b, sz.prefix, fill)
				buf, _ := blk.MarshalBinary()
				b.ReportAllocs()
				for b.Loop() {
					var err error
					if buf, err = blk.AppendBinary(buf[:0]); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(len(buf)), "bytes")
			})
		}
	}
}

func BenchmarkUnmarshalBinary(b *testing.B) {
	for _, sz := range benchSizes {
		for _, fill := range []int{0, 50, 99} {
			b.Run(fmt.Sprintf("bits=%d/fill=%d", sz.bits, fill), func(b *testing.B) {
				data, _ := filled(b, sz.prefix, fill).MarshalBinary()
				var blk block.Block
				b.ReportAllocs()
				for b.Loop() {
					if err := blk.UnmarshalBinary(data); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkJSON(b *testing.B) {
	blk := filled(b, "10.0.0.0/26", 50)
	js, _ := blk.MarshalJSON()
	b.Run("op=marshal/bits=26/fill=50", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := blk.MarshalJSON(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("op=unmarshal/bits=26/fill=50", func(b *testing.B) {
		var back block.Block
		b.ReportAllocs()
		for b.Loop() {
			if err := back.UnmarshalJSON(js); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkUnmarshalBinaryOneHandle decodes a full block whose addresses
// all belong to one handle, each under attributes of its own (a handle for
// fixed addresses, each with its purpose): the records of the handle are
// told apart by the hashes of their encodings, not by their maps.
func BenchmarkUnmarshalBinaryOneHandle(b *testing.B) {
	for _, bits := range []int{24, 20} {
		b.Run(fmt.Sprintf("bits=%d", bits), func(b *testing.B) {
			blk, err := block.New(netip.PrefixFrom(netip.MustParseAddr("10.0.0.0"), bits))
			if err != nil {
				b.Fatal(err)
			}
			for i := range 1 << (32 - bits) {
				blk.Allocate(nil, 1, block.Owner{Handle: "static", Attrs: map[string]string{"purpose": "fixed", "i": fmt.Sprint(i)}})
			}
			data, err := blk.MarshalBinary()
			if err != nil {
				b.Fatal(err)
			}
			var c block.Block
			b.ReportAllocs()
			for b.Loop() {
				if err := c.UnmarshalBinary(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
