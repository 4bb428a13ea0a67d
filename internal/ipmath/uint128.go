// Package ipmath is carve's address arithmetic: a 128-bit unsigned integer
// and conversions between addresses, prefixes and offsets for IPv4 and IPv6
// alike.
//
// It is internal: the public packages expose netip types only. Everything
// here is total (no panics on any input) and allocation free.
package ipmath

import (
	"math/bits"
	"strconv"
)

// Uint128 is an unsigned 128-bit integer. The zero value is 0.
type Uint128 struct {
	Hi, Lo uint64
}

// U64 returns v as a Uint128.
func U64(v uint64) Uint128 { return Uint128{Lo: v} }

// Max is the largest Uint128, 2^128-1.
var Max = Uint128{Hi: ^uint64(0), Lo: ^uint64(0)}

// IsZero reports whether u is 0.
func (u Uint128) IsZero() bool { return u.Hi == 0 && u.Lo == 0 }

// Cmp returns -1, 0 or +1 as u is less than, equal to or greater than v.
func (u Uint128) Cmp(v Uint128) int {
	switch {
	case u.Hi < v.Hi:
		return -1
	case u.Hi > v.Hi:
		return 1
	case u.Lo < v.Lo:
		return -1
	case u.Lo > v.Lo:
		return 1
	}
	return 0
}

// Add returns u+v modulo 2^128.
func (u Uint128) Add(v Uint128) Uint128 {
	lo, carry := bits.Add64(u.Lo, v.Lo, 0)
	hi, _ := bits.Add64(u.Hi, v.Hi, carry)
	return Uint128{hi, lo}
}

// AddOverflow returns u+v and whether the sum overflowed 128 bits.
func (u Uint128) AddOverflow(v Uint128) (Uint128, bool) {
	lo, carry := bits.Add64(u.Lo, v.Lo, 0)
	hi, carry := bits.Add64(u.Hi, v.Hi, carry)
	return Uint128{hi, lo}, carry != 0
}

// Sub returns u-v modulo 2^128.
func (u Uint128) Sub(v Uint128) Uint128 {
	lo, borrow := bits.Sub64(u.Lo, v.Lo, 0)
	hi, _ := bits.Sub64(u.Hi, v.Hi, borrow)
	return Uint128{hi, lo}
}

// And returns the bitwise AND of u and v.
func (u Uint128) And(v Uint128) Uint128 { return Uint128{u.Hi & v.Hi, u.Lo & v.Lo} }

// Or returns the bitwise OR of u and v.
func (u Uint128) Or(v Uint128) Uint128 { return Uint128{u.Hi | v.Hi, u.Lo | v.Lo} }

// Not returns the bitwise complement of u.
func (u Uint128) Not() Uint128 { return Uint128{^u.Hi, ^u.Lo} }

// Lsh returns u shifted left by n bits; n >= 128 gives 0.
func (u Uint128) Lsh(n uint) Uint128 {
	switch {
	case n >= 128:
		return Uint128{}
	case n >= 64:
		return Uint128{Hi: u.Lo << (n - 64)}
	case n == 0:
		return u
	}
	return Uint128{Hi: u.Hi<<n | u.Lo>>(64-n), Lo: u.Lo << n}
}

// Rsh returns u shifted right by n bits; n >= 128 gives 0.
func (u Uint128) Rsh(n uint) Uint128 {
	switch {
	case n >= 128:
		return Uint128{}
	case n >= 64:
		return Uint128{Lo: u.Hi >> (n - 64)}
	case n == 0:
		return u
	}
	return Uint128{Hi: u.Hi >> n, Lo: u.Lo>>n | u.Hi<<(64-n)}
}

// Pow2 returns 2^n; n >= 128 gives 0 (it does not fit).
func Pow2(n uint) Uint128 { return U64(1).Lsh(n) }

// Mask returns 2^n - 1, the value with the low n bits set; n >= 128 gives Max.
func Mask(n uint) Uint128 {
	if n >= 128 {
		return Max
	}
	return Pow2(n).Sub(U64(1))
}

// Uint64 returns u as a uint64 and whether it fits.
func (u Uint128) Uint64() (uint64, bool) { return u.Lo, u.Hi == 0 }

// String returns u in decimal.
func (u Uint128) String() string {
	if u.Hi == 0 {
		return strconv.FormatUint(u.Lo, 10)
	}
	// Peel off 19 decimal digits at a time (10^19 < 2^64).
	const chunk = 10_000_000_000_000_000_000
	var buf [40]byte
	i := len(buf)
	for !u.IsZero() {
		var r uint64
		u, r = u.divmod64(chunk)
		digits := 19
		for digits > 0 && (r != 0 || !u.IsZero()) {
			i--
			buf[i] = byte('0' + r%10)
			r /= 10
			digits--
		}
	}
	return string(buf[i:])
}

// divmod64 returns u/d and u%d for a non-zero d.
func (u Uint128) divmod64(d uint64) (Uint128, uint64) {
	hi, r := bits.Div64(0, u.Hi, d)
	lo, r := bits.Div64(r, u.Lo, d)
	return Uint128{hi, lo}, r
}
