package block_test

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/carve-ipam/carve/block"
)

func ExampleNew() {
	b, err := block.New(netip.MustParsePrefix("10.0.0.0/26"))
	if err != nil {
		panic(err)
	}
	fmt.Println(b, b.Size(), b.Free(), b.Empty())

	_, err = block.New(netip.MustParsePrefix("10.0.0.0/16"))
	fmt.Println(err)
	fmt.Println(errors.Is(err, block.ErrInvalidPrefix))
	// Output:
	// 10.0.0.0/26 0/64 used 64 64 true
	// block 10.0.0.0/16: IPv4 block size must be /20 to /32
	// true
}

func ExampleBlock_Allocate() {
	b, _ := block.NewWithSeq(netip.MustParsePrefix("10.0.0.0/29"), 100)
	pod := block.Owner{Handle: "k8s-pod-network.abc", Attrs: map[string]string{"pod": "web-0"}}

	addrs, seq := b.Allocate(nil, 3, pod)
	fmt.Println(addrs, seq)

	// Next-fit: a released address comes back only after the rest.
	_ = b.Release(addrs[0], block.Check{})
	more, _ := b.Allocate(nil, 6, pod)
	fmt.Println(more)
	fmt.Println(b)
	// Output:
	// [10.0.0.0 10.0.0.1 10.0.0.2] 101
	// [10.0.0.3 10.0.0.4 10.0.0.5 10.0.0.6 10.0.0.7 10.0.0.0]
	// 10.0.0.0/29 8/8 used
}

func ExampleBlock_Release() {
	b, _ := block.NewWithSeq(netip.MustParsePrefix("fd00::/122"), 0)
	addrs, seq := b.Allocate(nil, 1, block.Owner{Handle: "pod-a"})
	a := addrs[0]

	// The address is released and handed out again...
	_ = b.Release(a, block.Check{Handle: "pod-a", Seq: seq, CheckSeq: true})
	_, _ = b.Assign(a, block.Owner{Handle: "pod-b"})

	// ...so a late retry of the first release is refused.
	err := b.Release(a, block.Check{Seq: seq, CheckSeq: true})
	fmt.Println(err)
	fmt.Println(errors.Is(err, block.ErrSeqMismatch))
	err = b.Release(a, block.Check{Handle: "pod-a"})
	fmt.Println(errors.Is(err, block.ErrHandleMismatch))
	al, _ := b.Owner(a)
	fmt.Println(al.Owner.Handle, al.Seq)
	// Output:
	// block fd00::/122: release fd00::: sequence number 1 does not match 3
	// true
	// true
	// pod-b 3
}

func ExampleBlock_Reserve() {
	// Windows nodes cannot use the first three and the last address of a
	// block.
	b, _ := block.New(netip.MustParsePrefix("10.0.0.0/28"))
	p := b.Prefix().Addr()
	for _, a := range []netip.Addr{p, p.Next(), p.Next().Next(), netip.MustParseAddr("10.0.0.15")} {
		if err := b.Reserve(a); err != nil {
			panic(err)
		}
	}
	addrs, _ := b.Allocate(nil, 2, block.Owner{Handle: "win-pod"})
	fmt.Println(addrs, b.Used(), b.Free(), b.Reserved())
	// Output:
	// [10.0.0.3 10.0.0.4] 2 10 4
}

func ExampleBlock_ReleaseHandle() {
	b, _ := block.New(netip.MustParsePrefix("10.0.0.0/28"))
	b.Allocate(nil, 2, block.Owner{Handle: "a"})
	b.Allocate(nil, 1, block.Owner{Handle: "b"})
	b.Allocate(nil, 1, block.Owner{Handle: "a", Attrs: map[string]string{"nic": "eth1"}})

	fmt.Println(b.AddrsOf("a", nil))
	fmt.Println(b.ReleaseHandle("a", nil))
	for o, n := range b.Owners() {
		fmt.Println(o.Handle, n)
	}
	// Output:
	// [10.0.0.0 10.0.0.1 10.0.0.3]
	// [10.0.0.0 10.0.0.1 10.0.0.3]
	// b 1
}

func ExampleBlock_All() {
	b, _ := block.NewWithSeq(netip.MustParsePrefix("10.0.0.0/30"), 10)
	b.Allocate(nil, 2, block.Owner{Handle: "a"})
	_, _ = b.Assign(netip.MustParseAddr("10.0.0.3"), block.Owner{Handle: "b"})
	for a, al := range b.All() {
		fmt.Println(a, al.Owner.Handle, al.Seq)
	}
	// Output:
	// 10.0.0.0 a 11
	// 10.0.0.1 a 11
	// 10.0.0.3 b 12
}

func ExampleBlock_SetAffinity() {
	b, _ := block.New(netip.MustParsePrefix("10.0.0.0/26"))
	b.SetAffinity(block.Host("node-1"), time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	fmt.Println(b.Affinity(), b.ClaimTime())
	fmt.Println(b)
	// Output:
	// host:node-1 2025-01-02 03:04:05 +0000 UTC
	// 10.0.0.0/26 host:node-1 0/64 used
}

func ExampleBlock_CopyTo() {
	b, _ := block.New(netip.MustParsePrefix("10.0.0.0/26"))
	b.Allocate(nil, 10, block.Owner{Handle: "a"})

	// An allocator copies a block into scratch space before each
	// compare-and-swap attempt, so a failed attempt leaves b untouched.
	scratch := new(block.Block)
	b.CopyTo(scratch)
	scratch.Allocate(nil, 1, block.Owner{Handle: "b"})
	fmt.Println(b.Used(), scratch.Used(), b.Equal(scratch))
	// Output:
	// 10 11 false
}

func ExampleBlock_MarshalBinary() {
	b, _ := block.NewWithSeq(netip.MustParsePrefix("10.0.0.0/26"), 1_700_000_000_000_000_000)
	b.Allocate(nil, 64, block.Owner{Handle: "pod-a", Attrs: map[string]string{"namespace": "default"}})
	data, _ := b.MarshalBinary()
	fmt.Println(len(data), "bytes")

	var back block.Block
	if err := back.UnmarshalBinary(data); err != nil {
		panic(err)
	}
	fmt.Println(back.Equal(b), back.String())

	err := back.UnmarshalBinary(data[:10])
	fmt.Println(errors.Is(err, block.ErrCorrupt))
	// Output:
	// 237 bytes
	// true 10.0.0.0/26 64/64 used
	// true
}

func ExampleBlock_MarshalJSON() {
	b, _ := block.NewWithSeq(netip.MustParsePrefix("10.0.0.0/30"), 7)
	b.Allocate(nil, 1, block.Owner{Handle: "pod-a"})
	js, _ := b.MarshalJSON()
	fmt.Println(string(js))
	// Output:
	// {"version":1,"cidr":"10.0.0.0/30","seq":8,"cursor":1,"owners":[{"handle":"pod-a"}],"allocations":[{"addr":"10.0.0.0","owner":0,"seq":8}]}
}

func ExampleParseAffinity() {
	a, err := block.ParseAffinity("virtual:lb-1")
	fmt.Println(a.Kind, a.Name, err)
	_, err = block.ParseAffinity("node-1")
	fmt.Println(err)
	// Output:
	// virtual lb-1 <nil>
	// block: parse affinity "node-1": want host:<node> or virtual:<name>
}
