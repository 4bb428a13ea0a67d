package block_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/carve-ipam/carve/block"
)

// filled returns a block of prefix p with fill percent of its addresses
// assigned, scattered by a fixed pseudo-random walk, each to its own handle
// and attributes, as pods hold them.
func filled(tb testing.TB, p string, fill int) *block.Block {
	b := mustNew(tb, p, 1)
	n := b.Size() * fill / 100
	x := uint64(0x9e3779b97f4a7c15)
	first := b.Prefix().Addr()
	for b.Used() < n {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		a := first
		for range x % uint64(b.Size()) {
			a = a.Next()
		}
		if _, ok := b.Owner(a); ok {
			continue
		}
		name := fmt.Sprint("fill-", b.Used())
		o := block.Owner{Handle: "k8s-pod-network." + name, Attrs: map[string]string{"namespace": "default", "pod": name}}
		if _, err := b.Assign(a, o); err != nil {
			tb.Fatal(err)
		}
	}
	return b
}

func TestNoAllocs(t *testing.T) {
	b := filled(t, "10.0.0.0/26", 50)
	owner := block.Owner{Handle: "pod", Attrs: map[string]string{"pod": "x"}}
	buf := make([]netip.Addr, 0, 64)

	check := func(name string, want float64, f func()) {
		t.Helper()
		if got := testing.AllocsPerRun(200, f); got != want {
			t.Errorf("%s: %v allocations per run, want %v", name, got, want)
		}
	}
	check("allocate and release, same owner", 0, func() {
		got, seq := b.Allocate(buf[:0], 1, owner)
		if err := b.Release(got[0], block.Check{Handle: owner.Handle, Seq: seq, CheckSeq: true}); err != nil {
			t.Fatal(err)
		}
	})
	b6 := filled(t, "fd00::/122", 50)
	check("allocate and release, IPv6", 0, func() {
		got, seq := b6.Allocate(buf[:0], 1, owner)
		if err := b6.Release(got[0], block.Check{Handle: owner.Handle, Seq: seq, CheckSeq: true}); err != nil {
			t.Fatal(err)
		}
	})
	// A new handle every time, as each pod has one: records are recycled.
	handles := make([]string, 100)
	for i := range handles {
		handles[i] = fmt.Sprint("pod-", i)
	}
	i := 0
	check("allocate and release, new handles", 0, func() {
		i++
		o := block.Owner{Handle: handles[i%len(handles)], Attrs: owner.Attrs}
		got, _ := b.Allocate(buf[:0], 1, o)
		if err := b.Release(got[0], block.Check{Handle: o.Handle}); err != nil {
			t.Fatal(err)
		}
	})
	check("assign and release handle", 0, func() {
		a := b.Prefix().Addr()
		for {
			if _, ok := b.Owner(a); !ok {
				break
			}
			a = a.Next()
		}
		if _, err := b.Assign(a, owner); err != nil {
			t.Fatal(err)
		}
		if got := b.ReleaseHandle(owner.Handle, buf[:0]); len(got) != 1 {
			t.Fatal(got)
		}
	})

	big := filled(t, "fd00::/116", 60)
	scratch := new(block.Block)
	big.CopyTo(scratch)
	check("CopyTo a grown block", 0, func() { big.CopyTo(scratch) })
	b.CopyTo(scratch) // smaller: still no allocation
	check("CopyTo a smaller block", 0, func() { b.CopyTo(scratch) })
	twin := new(block.Block)
	big.Mirror(twin)
	check("Mirror after a change, both ways", 0, func() {
		got, _ := big.Allocate(buf[:0], 1, owner)
		big.Mirror(twin)
		if err := twin.Release(got[0], block.Check{}); err != nil {
			t.Fatal(err)
		}
		twin.Mirror(big)
	})

	enc := make([]byte, 0, 64<<10)
	check("AppendBinary /26", 0, func() {
		if _, err := b.AppendBinary(enc[:0]); err != nil {
			t.Fatal(err)
		}
	})
	check("Equal", 0, func() {
		if !b.Equal(scratch) {
			t.Fatal("not equal")
		}
	})
	a := b.Prefix().Addr()
	check("queries", 0, func() {
		b.Owner(a)
		b.IsReserved(a)
		b.AddrsOf("k8s-pod-network.fill-3", buf[:0])
		for range b.All() {
		}
		for range b.Owners() {
		}
	})
}
