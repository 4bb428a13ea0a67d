package pool_test

import (
	"fmt"
	"math/big"
	"net/netip"
	"testing"

	"github.com/carve-ipam/carve/pool"
)

// BenchmarkSelect selects pools for a node among rack pools that each
// select one rack, plus one shared pool: the allocator's per-assignment
// call. reuse=true passes a slice to AppendSelect.
func BenchmarkSelect(b *testing.B) {
	for _, n := range []int{10, 100} {
		var s pool.Set
		for i := range n {
			p := v4(fmt.Sprintf("rack-%d", i), fmt.Sprintf("10.%d.0.0/16", i))
			p.NodeSelector = fmt.Sprintf("rack == %q", fmt.Sprint(i))
			if err := s.Add(p); err != nil {
				b.Fatal(err)
			}
		}
		if err := s.Add(v4("shared", "172.16.0.0/12")); err != nil {
			b.Fatal(err)
		}
		r := pool.Request{Family: pool.IPv4, Node: "node-7", NodeLabels: labels("rack", "7", "zone", "a")}
		b.Run(fmt.Sprintf("pools=%d/reuse=false", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if got, err := s.Select(r); err != nil || len(got) != 2 {
					b.Fatal(got, err)
				}
			}
		})
		b.Run(fmt.Sprintf("pools=%d/reuse=true", n), func(b *testing.B) {
			b.ReportAllocs()
			dst := make([]*pool.Pool, 0, 4)
			for b.Loop() {
				got, err := s.AppendSelect(dst[:0], r)
				if err != nil || len(got) != 2 {
					b.Fatal(got, err)
				}
			}
		})
	}
}

// BenchmarkBlockFor finds the block holding an address, and the pool
// holding it among 100.
func BenchmarkBlockFor(b *testing.B) {
	for _, tc := range []struct{ family, cidr, addr string }{
		{"ipv4", "10.244.0.0/16", "10.244.123.45"},
		{"ipv6", "fd00::/48", "fd00::1234:5678:9abc:def0"},
	} {
		p := pool.Pool{Name: "p", CIDR: netip.MustParsePrefix(tc.cidr)}.WithDefaults()
		a := netip.MustParseAddr(tc.addr)
		b.Run("family="+tc.family, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := p.BlockFor(a); !ok {
					b.Fatal("not in pool")
				}
			}
		})
	}
	s := hundredPools(b)
	a := netip.MustParseAddr("10.42.3.4")
	b.Run("op=ByAddr/pools=100", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := s.ByAddr(a); !ok {
				b.Fatal("no pool")
			}
		}
	})
}

// BenchmarkWalkFirst takes the first block of a node's walk: a /24 of /26
// blocks (4 blocks) against a /48 of /122 blocks (2^74), and the /48 again
// with 1000 existing blocks to skip (sorted on every walk).
func BenchmarkWalkFirst(b *testing.B) {
	small := pool.Pool{Name: "small", CIDR: netip.MustParsePrefix("10.0.0.0/24"), BlockSize: 26}
	huge := pool.Pool{Name: "huge", CIDR: netip.MustParsePrefix("fd00::/48"), BlockSize: 122}
	var existing []netip.Prefix
	for i := range 1000 {
		blk, _ := huge.BlockAt(big.NewInt(int64(i) * 7919))
		existing = append(existing, blk)
	}
	for _, tc := range []struct {
		name string
		p    *pool.Pool
		skip []netip.Prefix
	}{
		{"prefix=24/skip=0", &small, nil},
		{"prefix=48/skip=0", &huge, nil},
		{"prefix=48/skip=1000", &huge, existing},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				for range tc.p.Walk("node-1", tc.skip) {
					break
				}
			}
		})
	}
}
