package pool_test

import (
	"math/big"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/pool"
)

func mkPool(cidr string, blockSize int) *pool.Pool {
	return &pool.Pool{Name: "p", CIDR: netip.MustParsePrefix(cidr), BlockSize: blockSize}
}

func TestNumBlocks(t *testing.T) {
	tests := []struct {
		cidr      string
		blockSize int
		want      string
	}{
		{"10.244.0.0/18", 26, "256"},
		{"10.244.0.0/18", 0, "256"}, // default 26
		{"192.168.0.0/20", 26, "64"},
		{"10.42.0.0/16", 26, "1024"}, // the operations guide: 2^10 nodes
		{"192.0.0.0/16", 24, "256"},
		{"10.21.0.0/31", 31, "1"},
		{"10.0.0.0/26", 26, "1"},
		{"10.0.0.0/28", 26, "0"},                      // smaller than a block
		{"fd00::/48", 122, "18889465931478580854784"}, // 2^74
		{"fd00::/48", 0, "18889465931478580854784"},
		{"::/0", 128, "340282366920938463463374607431768211456"}, // 2^128
		{"::ffff:10.0.0.0/104", 122, "0"},                        // IPv4-mapped: not carved
	}
	for _, tt := range tests {
		p := mkPool(tt.cidr, tt.blockSize)
		require.Equal(t, tt.want, p.NumBlocks().String(), "%s /%d", tt.cidr, tt.blockSize)
	}
	require.Equal(t, "0", (&pool.Pool{}).NumBlocks().String(), "zero pool")
}

func TestBlockForAndAt(t *testing.T) {
	p := mkPool("10.244.0.0/18", 26)
	tests := []struct {
		addr string
		want string // "" means not in the pool
	}{
		{"10.244.0.0", "10.244.0.0/26"},
		{"10.244.1.77", "10.244.1.64/26"},
		{"10.244.63.255", "10.244.63.192/26"},
		{"10.244.64.0", ""},
		{"10.243.255.255", ""},
		{"::ffff:10.244.1.77", ""}, // IPv4-mapped is another family
		{"fd00::1", ""},
	}
	for _, tt := range tests {
		got, ok := p.BlockFor(netip.MustParseAddr(tt.addr))
		if tt.want == "" {
			require.False(t, ok, tt.addr)
			continue
		}
		require.True(t, ok, tt.addr)
		require.Equal(t, tt.want, got.String())
	}
	_, ok := p.BlockFor(netip.Addr{})
	require.False(t, ok, "zero Addr")

	at := func(i *big.Int) string {
		b, ok := p.BlockAt(i)
		if !ok {
			return ""
		}
		return b.String()
	}
	require.Equal(t, "10.244.0.0/26", at(big.NewInt(0)))
	require.Equal(t, "10.244.0.64/26", at(big.NewInt(1)))
	require.Equal(t, "10.244.63.192/26", at(big.NewInt(255)))
	require.Equal(t, "", at(big.NewInt(256)))
	require.Equal(t, "", at(big.NewInt(-1)))
	require.Equal(t, "", at(nil))
	require.Equal(t, "", at(new(big.Int).Lsh(big.NewInt(1), 200)))

	six := mkPool("fd00::/48", 122)
	last := new(big.Int).Sub(six.NumBlocks(), big.NewInt(1))
	b, ok := six.BlockAt(last)
	require.True(t, ok)
	require.Equal(t, "fd00::ffff:ffff:ffff:ffff:ffc0/122", b.String())
	_, ok = six.BlockAt(six.NumBlocks())
	require.False(t, ok)
	i, ok := six.BlockIndex(netip.MustParseAddr("fd00::ffff:ffff:ffff:ffff:ffff"))
	require.True(t, ok)
	require.Equal(t, last, i)
}

// drawPool draws a pool of either family whose block size fits its CIDR;
// the block size may be outside Calico's range: carving does not care.
func drawPool(t *rapid.T) *pool.Pool {
	var a netip.Addr
	if rapid.Bool().Draw(t, "v4") {
		a = netip.AddrFrom4([4]byte(rapid.SliceOfN(rapid.Byte(), 4, 4).Draw(t, "a4")))
	} else {
		a = netip.AddrFrom16([16]byte(rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, "a6")))
	}
	bits := rapid.IntRange(0, a.BitLen()).Draw(t, "bits")
	bs := rapid.IntRange(max(bits, 1), a.BitLen()).Draw(t, "blockSize") // 0 would mean the default
	return &pool.Pool{Name: "p", CIDR: netip.PrefixFrom(a, bits).Masked(), BlockSize: bs}
}

// TestBlockForAtAgree: for any address of any pool, BlockFor holds it, has
// the block size, and is the block BlockAt gives for its index; and BlockAt
// of any index is a block whose index is that index.
func TestBlockForAtAgree(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := drawPool(t)
		bs := p.BlockSize
		n := p.NumBlocks()
		require.Equal(t, new(big.Int).Lsh(big.NewInt(1), uint(bs-p.CIDR.Bits())), n)

		// An address of the pool: the first one plus a random offset.
		size := new(big.Int).Lsh(big.NewInt(1), uint(p.CIDR.Addr().BitLen()-p.CIDR.Bits()))
		off := new(big.Int).SetBytes(rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, "off"))
		off.Mod(off, size)
		a := addAddr(p.CIDR.Addr(), off)

		b, ok := p.BlockFor(a)
		require.True(t, ok)
		require.True(t, b.Contains(a))
		require.Equal(t, bs, b.Bits())
		require.Equal(t, b, b.Masked())
		i, ok := p.BlockIndex(a)
		require.True(t, ok)
		back, ok := p.BlockAt(i)
		require.True(t, ok)
		require.Equal(t, b, back)

		j := new(big.Int).SetBytes(rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, "j"))
		j.Mod(j, n)
		bj, ok := p.BlockAt(j)
		require.True(t, ok)
		require.True(t, p.CIDR.Contains(bj.Addr()))
		ij, ok := p.BlockIndex(bj.Addr())
		require.True(t, ok)
		require.Zero(t, ij.Cmp(j))
		_, ok = p.BlockAt(n)
		require.False(t, ok, "NumBlocks is out of range")
	})
}

// addAddr returns a + off, computed on math/big: the slow, obvious oracle.
func addAddr(a netip.Addr, off *big.Int) netip.Addr {
	v := new(big.Int).SetBytes(a.AsSlice())
	v.Add(v, off)
	buf := make([]byte, len(a.AsSlice()))
	v.FillBytes(buf)
	r, _ := netip.AddrFromSlice(buf)
	return r
}

func TestBlockForNoAllocs(t *testing.T) {
	p := mkPool("fd00::/48", 122)
	a := netip.MustParseAddr("fd00::1:2:3:4")
	allocs := testing.AllocsPerRun(100, func() {
		if _, ok := p.BlockFor(a); !ok {
			t.Fatal("not found")
		}
	})
	require.Zero(t, allocs)
}
