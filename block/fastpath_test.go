package block_test

import (
	"net/netip"
	"strings"
	"testing"

	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/block"
)

// TestFastPathsMatchGeneral drives two copies of a block through the same
// allocations and releases: one so that Allocate and Release take their
// call-free hot paths (room in dst, the cached owner's own strings), one so
// that they cannot (no room in dst, equal but distinct handle strings). The
// copies must stay identical in every internal field, and a third block,
// mirrored from the first after every step, must be an exact copy of it.
func TestFastPathsMatchGeneral(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := rapid.SampledFrom([]string{"10.0.0.0/32", "10.0.0.0/30", "10.0.0.0/26", "10.0.0.0/25", "10.0.0.0/20", "fd00::/128", "fd00::/122"}).Draw(t, "prefix")
		fast, err := block.NewWithSeq(netip.MustParsePrefix(p), 1<<40)
		if err != nil {
			t.Fatal(err)
		}
		slow := fast.Clone()
		twin := fast.Clone()
		handles := []string{"a", "b", ""}
		attrs := []map[string]string{nil, {"k": "v"}}
		var held []netip.Addr
		for step := range rapid.IntRange(1, 80).Draw(t, "steps") {
			if len(held) > 0 && rapid.IntRange(0, 2).Draw(t, "release") == 0 {
				k := rapid.IntRange(0, len(held)-1).Draw(t, "which")
				a := held[k]
				al, ok := fast.Owner(a)
				if !ok {
					t.Fatalf("step %d: %v not allocated", step, a)
				}
				c := block.Check{Seq: al.Seq, CheckSeq: rapid.Bool().Draw(t, "checkSeq")}
				if rapid.Bool().Draw(t, "checkHandle") {
					c.Handle = al.Owner.Handle
				}
				errFast := fast.Release(a, c)
				c.Handle = strings.Clone(c.Handle) // not the stored string: the general path
				errSlow := slow.Release(a, c)
				if (errFast == nil) != (errSlow == nil) {
					t.Fatalf("step %d: release %v: fast %v, general %v", step, a, errFast, errSlow)
				}
				if errFast == nil {
					held = append(held[:k], held[k+1:]...)
				}
			} else {
				i := rapid.IntRange(0, len(handles)-1).Draw(t, "owner")
				o := block.Owner{Handle: handles[i], Attrs: attrs[i%len(attrs)]}
				gotFast, seqFast := fast.Allocate(make([]netip.Addr, 0, 1), 1, o)
				gotSlow, seqSlow := slow.Allocate(nil, 1, block.Owner{Handle: strings.Clone(o.Handle), Attrs: o.Attrs})
				if len(gotFast) != len(gotSlow) || seqFast != seqSlow || (len(gotFast) == 1 && gotFast[0] != gotSlow[0]) {
					t.Fatalf("step %d: allocate: fast %v %d, general %v %d", step, gotFast, seqFast, gotSlow, seqSlow)
				}
				held = append(held, gotFast...)
			}
			if !fast.Equal(slow) {
				t.Fatalf("step %d: the copies differ", step)
			}
			if err := fast.Verify(); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			fast.Mirror(twin)
			if d := block.CopyDiff(fast, twin); d != "" {
				t.Fatalf("step %d: mirror differs in %s", step, d)
			}
			// The twin takes over, as an allocator's staged copy does.
			fast, twin = twin, fast
		}
	})
}
