package ipmath

import (
	"math/big"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"
)

// The reference implementation: the same arithmetic on math/big, slow and
// obviously right.

var two128 = new(big.Int).Lsh(big.NewInt(1), 128)

func toBig(u Uint128) *big.Int {
	b := new(big.Int).SetUint64(u.Hi)
	b.Lsh(b, 64)
	return b.Or(b, new(big.Int).SetUint64(u.Lo))
}

func fromBig(b *big.Int) Uint128 {
	m := new(big.Int).Mod(b, two128)
	lo := new(big.Int).And(m, new(big.Int).SetUint64(^uint64(0)))
	hi := new(big.Int).Rsh(m, 64)
	return Uint128{hi.Uint64(), lo.Uint64()}
}

func addrBig(a netip.Addr) *big.Int { return new(big.Int).SetBytes(a.AsSlice()) }

func drawU128(t *rapid.T, label string) Uint128 {
	// Mix full-range values with small ones and powers of two, where carries
	// and boundaries live.
	return rapid.OneOf(
		rapid.Custom(func(t *rapid.T) Uint128 {
			return Uint128{rapid.Uint64().Draw(t, "hi"), rapid.Uint64().Draw(t, "lo")}
		}),
		rapid.Custom(func(t *rapid.T) Uint128 { return U64(rapid.Uint64Range(0, 300).Draw(t, "small")) }),
		rapid.Custom(func(t *rapid.T) Uint128 {
			return Pow2(uint(rapid.IntRange(0, 127).Draw(t, "exp"))).Sub(U64(rapid.Uint64Range(0, 2).Draw(t, "d")))
		}),
	).Draw(t, label)
}

func TestUint128AgainstBig(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		u, v := drawU128(t, "u"), drawU128(t, "v")
		n := uint(rapid.IntRange(0, 130).Draw(t, "n"))
		bu, bv := toBig(u), toBig(v)

		require.Equal(t, fromBig(new(big.Int).Add(bu, bv)), u.Add(v), "Add")
		sum, over := u.AddOverflow(v)
		require.Equal(t, fromBig(new(big.Int).Add(bu, bv)), sum, "AddOverflow")
		require.Equal(t, new(big.Int).Add(bu, bv).Cmp(two128) >= 0, over, "AddOverflow carry")
		require.Equal(t, fromBig(new(big.Int).Sub(bu, bv)), u.Sub(v), "Sub")
		require.Equal(t, bu.Cmp(bv), u.Cmp(v), "Cmp")
		require.Equal(t, fromBig(new(big.Int).Lsh(bu, n)), u.Lsh(n), "Lsh %d", n)
		require.Equal(t, fromBig(new(big.Int).Rsh(bu, n)), u.Rsh(n), "Rsh %d", n)
		require.Equal(t, fromBig(new(big.Int).And(bu, bv)), u.And(v), "And")
		require.Equal(t, fromBig(new(big.Int).Or(bu, bv)), u.Or(v), "Or")
		require.Equal(t, bu.String(), u.String(), "String")
		require.Equal(t, u.IsZero(), bu.Sign() == 0, "IsZero")
		lo, fits := u.Uint64()
		require.Equal(t, bu.IsUint64(), fits)
		if fits {
			require.Equal(t, bu.Uint64(), lo)
		}
	})
}

func TestMaskAndPow2(t *testing.T) {
	tests := []struct {
		n    uint
		pow2 Uint128
		mask Uint128
	}{
		{0, U64(1), U64(0)},
		{1, U64(2), U64(1)},
		{63, U64(1 << 63), U64(1<<63 - 1)},
		{64, Uint128{Hi: 1}, Uint128{Lo: ^uint64(0)}},
		{127, Uint128{Hi: 1 << 63}, Uint128{Hi: 1<<63 - 1, Lo: ^uint64(0)}},
		{128, Uint128{}, Max},
		{200, Uint128{}, Max},
	}
	for _, tt := range tests {
		require.Equal(t, tt.pow2, Pow2(tt.n), "Pow2(%d)", tt.n)
		require.Equal(t, tt.mask, Mask(tt.n), "Mask(%d)", tt.n)
	}
}

func TestStringBoundaries(t *testing.T) {
	require.Equal(t, "0", Uint128{}.String())
	require.Equal(t, "18446744073709551616", Pow2(64).String())
	require.Equal(t, "340282366920938463463374607431768211455", Max.String())
	require.Equal(t, "10000000000000000000", U64(10_000_000_000_000_000_000).String())
	require.Equal(t, "100000000000000000000", Uint128{Hi: 5, Lo: 7766279631452241920}.String())
}

func TestAddrRoundTrip(t *testing.T) {
	for _, s := range []string{"0.0.0.0", "10.244.0.1", "255.255.255.255", "::", "fd00::1", "::ffff:10.0.0.1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"} {
		a := netip.MustParseAddr(s)
		u := FromAddr(a)
		require.Equal(t, addrBig(a).String(), u.String(), s)
		require.Equal(t, a, ToAddr(u, a.Is4()), s)
	}
	require.Equal(t, Uint128{}, FromAddr(netip.Addr{}), "zero Addr")
}

func TestNthAndIndexTable(t *testing.T) {
	tests := []struct {
		prefix string
		i      Uint128
		want   string // "" means out of range
	}{
		{"10.244.0.0/26", U64(0), "10.244.0.0"},
		{"10.244.0.0/26", U64(63), "10.244.0.63"},
		{"10.244.0.0/26", U64(64), ""},
		{"10.244.0.7/26", U64(1), "10.244.0.1"}, // unmasked input is masked
		{"0.0.0.0/0", U64(1<<32 - 1), "255.255.255.255"},
		{"0.0.0.0/0", U64(1 << 32), ""},
		{"10.0.0.1/32", U64(0), "10.0.0.1"},
		{"10.0.0.1/32", U64(1), ""},
		{"fd00::/122", U64(63), "fd00::3f"},
		{"fd00::/48", Pow2(80).Sub(U64(1)), "fd00::ffff:ffff:ffff:ffff:ffff"},
		{"fd00::/48", Pow2(80), ""},
		{"::/0", Max, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
		{"::/0", Pow2(64), "0:0:0:1::"},
	}
	for _, tt := range tests {
		p := netip.MustParsePrefix(tt.prefix)
		got, ok := Nth(p, tt.i)
		if tt.want == "" {
			require.False(t, ok, "Nth(%s, %s) = %s", tt.prefix, tt.i, got)
			continue
		}
		require.True(t, ok, "Nth(%s, %s)", tt.prefix, tt.i)
		require.Equal(t, tt.want, got.String())
		idx, ok := Index(p, got)
		require.True(t, ok)
		require.Equal(t, tt.i, idx)
	}
	_, ok := Nth(netip.Prefix{}, U64(0))
	require.False(t, ok, "invalid prefix")
	_, ok = Index(netip.MustParsePrefix("10.0.0.0/24"), netip.MustParseAddr("10.0.1.0"))
	require.False(t, ok, "outside")
	_, ok = Index(netip.MustParsePrefix("10.0.0.0/24"), netip.MustParseAddr("::ffff:10.0.0.1"))
	require.False(t, ok, "other family")
	_, ok = Index(netip.Prefix{}, netip.MustParseAddr("10.0.0.1"))
	require.False(t, ok, "invalid prefix")
}

func TestPrefixAtTable(t *testing.T) {
	tests := []struct {
		prefix string
		bits   int
		i      Uint128
		want   string
	}{
		{"10.244.0.0/18", 26, U64(0), "10.244.0.0/26"},
		{"10.244.0.0/18", 26, U64(1), "10.244.0.64/26"},
		{"10.244.0.0/18", 26, U64(255), "10.244.63.192/26"},
		{"10.244.0.0/18", 26, U64(256), ""},
		{"10.244.0.0/18", 18, U64(0), "10.244.0.0/18"},
		{"10.244.0.0/18", 17, U64(0), ""},
		{"10.244.0.0/18", 33, U64(0), ""},
		{"fd00::/48", 122, Pow2(74).Sub(U64(1)), "fd00::ffff:ffff:ffff:ffff:ffc0/122"},
		{"fd00::/48", 122, Pow2(74), ""},
		{"::/0", 128, Max, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"},
	}
	for _, tt := range tests {
		p := netip.MustParsePrefix(tt.prefix)
		got, ok := PrefixAt(p, tt.bits, tt.i)
		if tt.want == "" {
			require.False(t, ok, "PrefixAt(%s, %d, %s) = %s", tt.prefix, tt.bits, tt.i, got)
			continue
		}
		require.True(t, ok, "PrefixAt(%s, %d, %s)", tt.prefix, tt.bits, tt.i)
		require.Equal(t, tt.want, got.String())
		idx, ok := PrefixIndex(p, tt.bits, got.Addr())
		require.True(t, ok)
		require.Equal(t, tt.i, idx)
	}
}

// drawPrefix draws a valid prefix of either family.
func drawPrefix(t *rapid.T) netip.Prefix {
	if rapid.Bool().Draw(t, "v4") {
		a := netip.AddrFrom4([4]byte(rapid.SliceOfN(rapid.Byte(), 4, 4).Draw(t, "a4")))
		return netip.PrefixFrom(a, rapid.IntRange(0, 32).Draw(t, "bits4"))
	}
	a := netip.AddrFrom16([16]byte(rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, "a6")))
	return netip.PrefixFrom(a, rapid.IntRange(0, 128).Draw(t, "bits6"))
}

func TestNthIndexAgainstBig(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := drawPrefix(t)
		i := drawU128(t, "i")
		hb := HostBits(p)
		size := new(big.Int).Lsh(big.NewInt(1), uint(hb))
		base := addrBig(p.Masked().Addr())

		got, ok := Nth(p, i)
		inRange := toBig(i).Cmp(size) < 0
		require.Equal(t, inRange, ok, "Nth(%s, %s) ok", p, i)
		if !ok {
			return
		}
		want := new(big.Int).Add(base, toBig(i))
		require.Zero(t, want.Cmp(addrBig(got)), "Nth(%s, %s) = %s", p, i, got)
		require.True(t, p.Contains(got))

		idx, ok := Index(p, got)
		require.True(t, ok)
		require.Equal(t, i, idx)
	})
}

func TestPrefixAtAgainstBig(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := drawPrefix(t).Masked()
		bits := rapid.IntRange(p.Bits(), p.Addr().BitLen()).Draw(t, "bits")
		i := drawU128(t, "i")
		count := new(big.Int).Lsh(big.NewInt(1), uint(bits-p.Bits()))

		got, ok := PrefixAt(p, bits, i)
		require.Equal(t, toBig(i).Cmp(count) < 0, ok)
		if !ok {
			return
		}
		step := new(big.Int).Lsh(big.NewInt(1), uint(p.Addr().BitLen()-bits))
		want := new(big.Int).Add(addrBig(p.Addr()), new(big.Int).Mul(toBig(i), step))
		require.Zero(t, want.Cmp(addrBig(got.Addr())), "PrefixAt(%s, %d, %s) = %s", p, bits, i, got)
		require.Equal(t, bits, got.Bits())
		require.Equal(t, got, got.Masked(), "sub-prefix is masked")
	})
}

func TestNoAllocs(t *testing.T) {
	p := netip.MustParsePrefix("fd00::/48")
	a := netip.MustParseAddr("fd00::1234")
	allocs := testing.AllocsPerRun(100, func() {
		i, _ := Index(p, a)
		_, _ = Nth(p, i)
		_, _ = PrefixAt(p, 122, i)
		_, _ = PrefixIndex(p, 122, a)
	})
	require.Zero(t, allocs)
}

// FuzzAddrMath checks the conversions on arbitrary bytes: no panics, round
// trips, and agreement with math/big.
func FuzzAddrMath(f *testing.F) {
	f.Add([]byte{10, 244, 0, 0}, uint8(18), uint8(26), uint64(0), uint64(5))
	f.Add([]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, uint8(48), uint8(122), uint64(1), uint64(1<<63))
	f.Add([]byte{}, uint8(0), uint8(0), uint64(0), uint64(0))
	f.Fuzz(func(t *testing.T, raw []byte, pbits, sbits uint8, hi, lo uint64) {
		a, ok := netip.AddrFromSlice(raw)
		var p netip.Prefix
		if ok {
			p = netip.PrefixFrom(a, int(pbits))
		}
		i := Uint128{hi, lo}
		got, ok := Nth(p, i)
		if ok {
			idx, ok2 := Index(p, got)
			if !ok2 || idx != i {
				t.Fatalf("Index(%s, Nth(%s, %s)=%s) = %s, %v", p, p, i, got, idx, ok2)
			}
			want := new(big.Int).Add(addrBig(p.Masked().Addr()), toBig(i))
			if addrBig(got).Cmp(want) != 0 {
				t.Fatalf("Nth(%s, %s) = %s, want %s", p, i, got, want)
			}
		}
		if sub, ok := PrefixAt(p, int(sbits), i); ok {
			idx, ok2 := PrefixIndex(p, int(sbits), sub.Addr())
			if !ok2 || idx != i || !p.Contains(sub.Addr()) || sub.Bits() != int(sbits) {
				t.Fatalf("PrefixAt(%s, %d, %s) = %s, index back %s %v", p, sbits, i, sub, idx, ok2)
			}
		}
		if ok && a.IsValid() {
			if u := FromAddr(a); ToAddr(u, a.Is4()) != a.Unmap() && ToAddr(u, a.Is4()) != a {
				t.Fatalf("round trip of %s", a)
			}
		}
	})
}
