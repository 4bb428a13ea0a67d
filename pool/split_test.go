package pool_test

import (
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
	"go4.org/netipx"
	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/pool"
)

func TestSplitRefuses(t *testing.T) {
	base := pool.Pool{Name: "default", CIDR: netip.MustParsePrefix("10.0.0.0/24")} // /26 blocks: 4 of them
	for _, tc := range []struct {
		name  string
		p     pool.Pool
		names []string
		kinds []error
		text  string
	}{
		{"no names", base, nil, []error{pool.ErrSplit},
			`pool "default": cidr 10.0.0.0/24 cannot be split into 0 pools: the number of parts must be a power of two, at least 2`},
		{"one part", base, []string{"a"}, []error{pool.ErrSplit}, "cannot be split into 1 pool:"},
		{"three parts", base, []string{"a", "b", "c"}, []error{pool.ErrSplit}, "cannot be split into 3 pools: the number of parts must be a power of two"},
		{"parts smaller than a block", base, []string{"a", "b", "c", "d", "e", "f", "g", "h"}, []error{pool.ErrSplit},
			`pool "default": cidr 10.0.0.0/24 cannot be split into 8 pools: each part would be a /27, smaller than a block (blockSize 26)`},
		{"a name twice", base, []string{"a", "b", "c", "a"}, []error{pool.ErrSplit},
			`pool "default": name "a" is given to parts 0 and 3`},
		{"an invalid name", base, []string{"a", "Rack_B"}, []error{pool.ErrName}, `pool "default": name "Rack_B" is not a DNS subdomain`},
		{"an empty name", base, []string{"", "b"}, []error{pool.ErrName}, `pool "default": name is required`},
		{"every problem at once", base, []string{"x", "x", "Y", "z", "w", "v", "u", "t"}, []error{pool.ErrSplit, pool.ErrName},
			`smaller than a block (blockSize 26); name "x" is given to parts 0 and 1; name "Y" is not a DNS subdomain`},
		{"an invalid pool", pool.Pool{Name: "bad", CIDR: netip.MustParsePrefix("10.0.0.1/24")}, []string{"a", "b"}, []error{pool.ErrCIDR},
			`pool "bad": cidr 10.0.0.1/24 is not masked`},
		{"a pool of one block", pool.Pool{Name: "one", CIDR: netip.MustParsePrefix("fd00::/122")}, []string{"a", "b"}, []error{pool.ErrSplit},
			"each part would be a /123, smaller than a block (blockSize 122)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parts, err := tc.p.Split(tc.names...)
			require.Nil(t, parts)
			var ve *pool.ValidationError
			require.ErrorAs(t, err, &ve)
			require.Equal(t, tc.p.Name, ve.Pool)
			for _, k := range tc.kinds {
				require.ErrorIs(t, err, k)
			}
			require.Contains(t, err.Error(), tc.text)
		})
	}
}

func TestSplitKeepsSettings(t *testing.T) {
	p := pool.Pool{
		Name: "lb", CIDR: netip.MustParsePrefix("fd00:10::/112"), BlockSize: 120,
		AllowedUses: []pool.Use{pool.UseLoadBalancer}, AssignmentMode: pool.Manual,
		Disabled: true, NATOutgoing: true, NamespaceSelector: `team == "edge"`,
	}
	parts, err := p.Split("lb", "lb-2", "lb-3", "lb-4")
	require.NoError(t, err)
	require.Len(t, parts, 4)
	want := []string{"fd00:10::/114", "fd00:10::4000/114", "fd00:10::8000/114", "fd00:10::c000/114"}
	for i, part := range parts {
		require.Equal(t, want[i], part.CIDR.String())
		require.NoError(t, part.Validate())
		// Everything but the name and the CIDR is p's, with defaults.
		same := p.WithDefaults()
		same.Name, same.CIDR = part.Name, part.CIDR
		require.Equal(t, same, part)
	}
	require.Equal(t, "lb", parts[0].Name)
	// The parts do not share p's slices.
	parts[0].AllowedUses[0] = pool.UseWorkload
	require.Equal(t, pool.UseLoadBalancer, p.AllowedUses[0])
	require.Equal(t, pool.UseLoadBalancer, parts[1].AllowedUses[0])
}

// TestSplitCarvesTheSameBlocks: the parts of any valid pool are disjoint,
// cover it exactly in address order, and every address lies in the same
// block in its part as in the pool.
func TestSplitCarvesTheSameBlocks(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var p pool.Pool
		if rapid.Bool().Draw(t, "v4") {
			bits := rapid.IntRange(8, 31).Draw(t, "bits")
			bs := rapid.IntRange(max(bits, 20), 32).Draw(t, "blockSize")
			a := netip.AddrFrom4([4]byte{10, byte(rapid.IntRange(0, 255).Draw(t, "b1")), byte(rapid.IntRange(0, 255).Draw(t, "b2")), byte(rapid.IntRange(0, 255).Draw(t, "b3"))})
			p = pool.Pool{Name: "p", CIDR: netip.PrefixFrom(a, bits).Masked(), BlockSize: bs}
		} else {
			bits := rapid.IntRange(16, 127).Draw(t, "bits")
			bs := rapid.IntRange(max(bits, 116), 128).Draw(t, "blockSize")
			a := netip.AddrFrom16([16]byte(append([]byte{0xfd}, rapid.SliceOfN(rapid.Byte(), 15, 15).Draw(t, "a6")...)))
			p = pool.Pool{Name: "p", CIDR: netip.PrefixFrom(a, bits).Masked(), BlockSize: bs}
		}
		if p.BlockSize == p.CIDR.Bits() {
			// One block: no split is possible.
			_, err := p.Split("a", "b")
			require.ErrorIs(t, err, pool.ErrSplit)
			return
		}
		k := rapid.IntRange(1, min(p.BlockSize-p.CIDR.Bits(), 6)).Draw(t, "log2parts")
		names := make([]string, 1<<k)
		for i := range names {
			names[i] = fmt.Sprintf("part-%d", i)
		}
		parts, err := p.Split(names...)
		require.NoError(t, err)
		_, err = pool.NewSet(parts...)
		require.NoError(t, err, "parts overlap or are invalid")

		total := new(big.Int)
		next := p.CIDR.Addr()
		for i, part := range parts {
			require.Equal(t, names[i], part.Name)
			require.Equal(t, p.CIDR.Bits()+k, part.CIDR.Bits())
			require.Equal(t, next, part.CIDR.Addr(), "part %d does not follow part %d", i, i-1)
			total.Add(total, part.NumBlocks())
			last := netipx.PrefixLastIP(part.CIDR)
			next = last.Next()
		}
		require.Equal(t, p.NumBlocks(), total)
		require.Equal(t, netipx.PrefixLastIP(p.CIDR), netipx.PrefixLastIP(parts[len(parts)-1].CIDR))

		// A random address of p is in the same block in its part.
		size := new(big.Int).Lsh(big.NewInt(1), uint(p.CIDR.Addr().BitLen()-p.CIDR.Bits()))
		off := new(big.Int).SetBytes(rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, "off"))
		a := addAddr(p.CIDR.Addr(), off.Mod(off, size))
		want, ok := p.BlockFor(a)
		require.True(t, ok)
		n := 0
		for _, part := range parts {
			if got, ok := part.BlockFor(a); ok {
				n++
				require.Equal(t, want, got)
			}
		}
		require.Equal(t, 1, n, "%s lies in %d parts", a, n)
	})
}

func ExamplePool_Split() {
	p := pool.Pool{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/16")}
	parts, err := p.Split("rack-0", "rack-1", "rack-2", "rack-3")
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, part := range parts {
		fmt.Println(part.Name, part.CIDR, "blockSize", part.BlockSize, "blocks", part.NumBlocks())
	}

	_, err = p.Split("a", "b", "c")
	fmt.Println(errors.Is(err, pool.ErrSplit), err)
	// Output:
	// rack-0 10.244.0.0/18 blockSize 26 blocks 256
	// rack-1 10.244.64.0/18 blockSize 26 blocks 256
	// rack-2 10.244.128.0/18 blockSize 26 blocks 256
	// rack-3 10.244.192.0/18 blockSize 26 blocks 256
	// true pool "default-ipv4-ippool": cidr 10.244.0.0/16 cannot be split into 3 pools: the number of parts must be a power of two, at least 2
}
