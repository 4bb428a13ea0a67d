package pool

import (
	"encoding/binary"
	"math/big"
	"net/netip"

	"github.com/carve-ipam/carve/internal/ipmath"
)

// geom is the carving of a pool: its masked CIDR divided into 2^n blocks of
// prefix length bs.
type geom struct {
	cidr netip.Prefix
	bs   int
	n    uint // log2 of the number of blocks: bs - cidr.Bits()
}

// geometry returns p's carving, and false when p's CIDR is invalid (or
// IPv4-mapped) or its block size does not fit inside it. A zero BlockSize
// counts as the default. The block size range rule is not checked here: a
// pool that fails only that rule still carves consistently.
func (p *Pool) geometry() (geom, bool) {
	c := p.CIDR
	if !c.IsValid() || c.Addr().Is4In6() {
		return geom{}, false
	}
	bs := p.blockSize()
	if bs < c.Bits() || bs > c.Addr().BitLen() {
		return geom{}, false
	}
	return geom{cidr: c.Masked(), bs: bs, n: uint(bs - c.Bits())}, true
}

// last returns the index of the last block.
func (g geom) last() ipmath.Uint128 { return ipmath.Mask(g.n) }

// at returns block i, which must be in range.
func (g geom) at(i ipmath.Uint128) netip.Prefix {
	b, _ := ipmath.PrefixAt(g.cidr, g.bs, i)
	return b
}

// NumBlocks returns how many blocks p is carved into, 2^(blockSize - prefix
// length), or 0 when p's CIDR is invalid or smaller than one block.
func (p *Pool) NumBlocks() *big.Int {
	g, ok := p.geometry()
	if !ok {
		return new(big.Int)
	}
	return new(big.Int).Lsh(big.NewInt(1), g.n)
}

// BlockFor returns the block of p that holds a, and whether p holds a at
// all. It does not allocate.
func (p *Pool) BlockFor(a netip.Addr) (netip.Prefix, bool) {
	g, ok := p.geometry()
	if !ok || !g.cidr.Contains(a) {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, g.bs).Masked(), true
}

// BlockIndex returns the index of the block of p that holds a, counting from
// 0 at the start of the CIDR, and whether p holds a. It is the inverse of
// [Pool.BlockAt].
func (p *Pool) BlockIndex(a netip.Addr) (*big.Int, bool) {
	g, ok := p.geometry()
	if !ok {
		return nil, false
	}
	i, ok := ipmath.PrefixIndex(g.cidr, g.bs, a)
	if !ok {
		return nil, false
	}
	return bigFrom(i), true
}

// BlockAt returns the i-th block of p, counting from 0 at the start of the
// CIDR, and whether 0 <= i < NumBlocks.
func (p *Pool) BlockAt(i *big.Int) (netip.Prefix, bool) {
	g, ok := p.geometry()
	if !ok || i == nil {
		return netip.Prefix{}, false
	}
	u, ok := u128From(i)
	if !ok || u.Cmp(g.last()) > 0 {
		return netip.Prefix{}, false
	}
	return g.at(u), true
}

func bigFrom(u ipmath.Uint128) *big.Int {
	var buf [16]byte
	binary.BigEndian.PutUint64(buf[:8], u.Hi)
	binary.BigEndian.PutUint64(buf[8:], u.Lo)
	return new(big.Int).SetBytes(buf[:])
}

// u128From converts b, reporting false when it is negative or needs more
// than 128 bits.
func u128From(b *big.Int) (ipmath.Uint128, bool) {
	if b.Sign() < 0 || b.BitLen() > 128 {
		return ipmath.Uint128{}, false
	}
	var buf [16]byte
	b.FillBytes(buf[:])
	return ipmath.Uint128{Hi: binary.BigEndian.Uint64(buf[:8]), Lo: binary.BigEndian.Uint64(buf[8:])}, true
}
