package ipmath

import (
	"encoding/binary"
	"net/netip"
)

// FromAddr returns the address as an integer: an IPv4 address in the low 32
// bits, an IPv6 address (IPv4-mapped ones included) in all 128. The zero Addr
// gives 0.
func FromAddr(a netip.Addr) Uint128 {
	if a.Is4() {
		b := a.As4()
		return U64(uint64(binary.BigEndian.Uint32(b[:])))
	}
	b := a.As16()
	return Uint128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// ToAddr returns the IPv6 address u or, when is4 is true, the IPv4 address in
// the low 32 bits of u (higher bits are ignored).
func ToAddr(u Uint128, is4 bool) netip.Addr {
	if is4 {
		return ToAddr4(u.Lo)
	}
	return ToAddr6(u)
}

// ToAddr4 is ToAddr for an IPv4 address. It and ToAddr6 are small enough to
// be inlined into hot paths, which ToAddr is not.
func ToAddr4(lo uint64) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(lo))
	return netip.AddrFrom4(b)
}

// ToAddr6 is ToAddr for an IPv6 address.
func ToAddr6(u Uint128) netip.Addr {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.Hi)
	binary.BigEndian.PutUint64(b[8:], u.Lo)
	return netip.AddrFrom16(b)
}

// HostBits returns the number of host bits of p (32 or 128 minus the prefix
// length), or -1 for an invalid prefix.
func HostBits(p netip.Prefix) int {
	if !p.IsValid() {
		return -1
	}
	return p.Addr().BitLen() - p.Bits()
}

// Nth returns the i-th address of p, counting from 0 at p's first (masked)
// address, and whether p is valid and i lies inside it.
func Nth(p netip.Prefix, i Uint128) (netip.Addr, bool) {
	hb := HostBits(p)
	if hb < 0 || (hb < 128 && i.Cmp(Pow2(uint(hb))) >= 0) {
		return netip.Addr{}, false
	}
	base := FromAddr(p.Masked().Addr())
	return ToAddr(base.Or(i), p.Addr().Is4()), true
}

// Index returns the offset of a inside p, counting from 0 at p's first
// (masked) address, and whether p is valid and contains a.
func Index(p netip.Prefix, a netip.Addr) (Uint128, bool) {
	if !p.IsValid() || !p.Contains(a) {
		return Uint128{}, false
	}
	return FromAddr(a).And(Mask(uint(HostBits(p)))), true
}

// PrefixAt returns the i-th subprefix of length bits inside p: p divided into
// 2^(bits-p.Bits()) equal prefixes, counted from p's first address. It
// reports false when p is invalid, bits is shorter than p or longer than the
// address, or i is out of range.
func PrefixAt(p netip.Prefix, bits int, i Uint128) (netip.Prefix, bool) {
	if !p.IsValid() || bits < p.Bits() || bits > p.Addr().BitLen() {
		return netip.Prefix{}, false
	}
	sub := uint(bits - p.Bits())
	if sub < 128 && i.Cmp(Pow2(sub)) >= 0 {
		return netip.Prefix{}, false
	}
	a, ok := Nth(p, i.Lsh(uint(p.Addr().BitLen()-bits)))
	if !ok {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, bits), true
}

// PrefixIndex returns which subprefix of length bits inside p holds a, the
// inverse of PrefixAt, and whether p is valid, bits is in range and p
// contains a.
func PrefixIndex(p netip.Prefix, bits int, a netip.Addr) (Uint128, bool) {
	if !p.IsValid() || bits < p.Bits() || bits > p.Addr().BitLen() {
		return Uint128{}, false
	}
	off, ok := Index(p, a)
	if !ok {
		return Uint128{}, false
	}
	return off.Rsh(uint(p.Addr().BitLen() - bits)), true
}
