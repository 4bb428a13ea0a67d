package block_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/block"
)

// TestMirrorAmongMany keeps three blocks of the same prefix and, at
// random, changes any of them with any operation or mirrors any one into
// any other (forward, backward, to a third copy, after both sides changed).
// After every Mirror the destination must be an exact copy of the source
// and both must be consistent; a Mirror must never change its source.
// Long handles and many distinct owners drive arena compaction, index
// growth, spare and free slots.
func TestMirrorAmongMany(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := rapid.SampledFrom([]string{"10.0.0.0/32", "10.0.0.0/30", "10.0.0.0/27", "10.0.0.0/26", "10.0.0.0/24", "fd00::/128", "fd00::/121"}).Draw(t, "prefix")
		first, err := block.NewWithSeq(netip.MustParsePrefix(p), 1<<40)
		if err != nil {
			t.Fatal(err)
		}
		bs := []*block.Block{first, new(block.Block), first.Clone()}
		first.CopyTo(bs[1])
		size := first.Size()
		base := first.Prefix().Addr()
		addrAt := func(i int) netip.Addr {
			a := base
			for range i {
				a = a.Next()
			}
			return a
		}
		long := strings.Repeat("x", 40)
		owner := func(t *rapid.T) block.Owner {
			h := rapid.IntRange(0, 12).Draw(t, "h")
			o := block.Owner{Handle: fmt.Sprint(long, h%7)}
			switch h % 3 {
			case 1:
				o.Attrs = map[string]string{"a": fmt.Sprint(h)}
			case 2:
				o.Attrs = map[string]string{"a": long, "b": fmt.Sprint(h)}
			}
			return o
		}
		when := func(t *rapid.T) time.Time {
			return time.Unix(1_800_000_000+int64(rapid.IntRange(0, 4).Draw(t, "at")), 0)
		}
		for step := range rapid.IntRange(1, 120).Draw(t, "steps") {
			k := rapid.IntRange(0, len(bs)-1).Draw(t, "block")
			b := bs[k]
			switch op := rapid.IntRange(0, 15).Draw(t, "op"); op {
			case 0, 1:
				var dst []netip.Addr
				if rapid.Bool().Draw(t, "room") {
					dst = make([]netip.Addr, 0, 1)
				}
				b.Allocate(dst, rapid.IntRange(1, 3).Draw(t, "n"), owner(t))
			case 2:
				b.AllocateWith(nil, rapid.IntRange(1, 3).Draw(t, "n"), owner(t), block.AllocOptions{ReleasedBefore: when(t)})
			case 3:
				_, _ = b.Assign(addrAt(rapid.IntRange(0, size-1).Draw(t, "i")), owner(t))
			case 4, 5:
				_ = b.Release(addrAt(rapid.IntRange(0, size-1).Draw(t, "i")), block.Check{})
			case 6:
				_ = b.ReleaseAt(addrAt(rapid.IntRange(0, size-1).Draw(t, "i")), block.Check{}, when(t))
			case 7:
				b.ReleaseHandle(owner(t).Handle, nil)
			case 8:
				_, _ = b.ReleaseHandleAt(owner(t).Handle, nil, when(t))
			case 9:
				_ = b.Reserve(addrAt(rapid.IntRange(0, size-1).Draw(t, "i")))
			case 10:
				_ = b.UnreserveAt(addrAt(rapid.IntRange(0, size-1).Draw(t, "i")), when(t))
			case 11:
				b.PruneReleased(when(t))
			case 12:
				b.SetAffinity(block.Host(fmt.Sprint("n", step)), when(t))
			case 13:
				j := rapid.IntRange(0, len(bs)-1).Draw(t, "dst")
				if j == k {
					continue
				}
				before, err := b.MarshalBinary()
				if err != nil {
					t.Fatal(err)
				}
				b.Mirror(bs[j])
				if d := block.CopyDiff(b, bs[j]); d != "" {
					t.Fatalf("step %d: mirror %d into %d differs in %s", step, k, j, d)
				}
				if after, _ := b.MarshalBinary(); string(after) != string(before) {
					t.Fatalf("step %d: Mirror changed its source", step)
				}
				checkEncodingsAgree(t, b)
			case 14:
				if j := rapid.IntRange(0, len(bs)-1).Draw(t, "dst"); j != k {
					b.CopyTo(bs[j])
				}
			case 15:
				j := rapid.IntRange(0, len(bs)-1).Draw(t, "from")
				data, err := bs[j].MarshalBinary()
				if err != nil {
					t.Fatal(err)
				}
				if err := b.UnmarshalBinary(data); err != nil {
					t.Fatal(err)
				}
			}
			for i, x := range bs {
				if err := x.Verify(); err != nil {
					t.Fatalf("step %d: block %d: %v", step, i, err)
				}
			}
		}
	})
}

// TestMirrorWhileRead: Mirror writes only its source's bookkeeping,
// so other goroutines may encode, clone and copy the source meanwhile, as
// the Mirror documentation promises. Run with -race.
func TestMirrorWhileRead(t *testing.T) {
	b := mustNew(t, "10.0.0.0/26", 0)
	b.Allocate(nil, 40, podA)
	b.Allocate(nil, 10, block.Owner{Handle: "pod-b", Attrs: map[string]string{"k": "v"}})
	if err := b.ReleaseAt(addr("10.0.0.3"), noChk, time.Unix(1_800_000_000, 0)); err != nil {
		t.Fatal(err)
	}
	want, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan string, 3)
	for range 2 {
		go func() {
			bad := ""
			for range 100 {
				data, _ := b.MarshalBinary()
				var d block.Block
				b.CopyTo(&d)
				if string(data) != string(want) || !b.Clone().Equal(b) || !d.Equal(b) {
					bad = "a reader saw a different block"
				}
			}
			done <- bad
		}()
	}
	go func() {
		// The writer mirrors b into scratch copies it changes, as an
		// allocator stages attempts that fail.
		x := new(block.Block)
		for i := range 100 {
			b.Mirror(x)
			x.Allocate(nil, 1, block.Owner{Handle: fmt.Sprint("tmp-", i%3)})
			x.ReleaseHandle("pod-b", nil)
		}
		done <- ""
	}()
	for range 3 {
		if msg := <-done; msg != "" {
			t.Fatal(msg)
		}
	}
}

// checkEncodingsAgree checks that b's binary and JSON encodings decode to
// blocks that encode to the same bytes again, in both encodings.
func checkEncodingsAgree(t *rapid.T, b *block.Block) {
	bin, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	js, err := b.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var fromBin, fromJSON block.Block
	if err := fromBin.UnmarshalBinary(bin); err != nil {
		t.Fatal(err)
	}
	if err := fromJSON.UnmarshalJSON(js); err != nil {
		t.Fatal(err)
	}
	for _, x := range []*block.Block{&fromBin, &fromJSON} {
		bin2, err1 := x.MarshalBinary()
		js2, err2 := x.MarshalJSON()
		if err1 != nil || err2 != nil || string(bin2) != string(bin) || string(js2) != string(js) {
			t.Fatalf("encodings differ after decoding:\n%s\n%s\n%v %v", js, js2, err1, err2)
		}
	}
}
