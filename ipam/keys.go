package ipam

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/carve-ipam/carve/block"
)

// Store keys. Block keys spell the block's first address in fixed-width
// hex so that key order is address order and "every block whose first
// address lies in this pool" is one key range:
//
//	block      v4:0af40040/26          (10.244.0.64/26)
//	           v6:fd000000000000000000000000000040/122
//	affinity   host:node-1/v4:0af40040/26   (an index: node -> its blocks)
//	handle     the handle ID as given
//	pool       "default" (the whole pool set, one record)
//	config     "default"

const (
	blockKeyPrefix4 = "v4:"
	blockKeyPrefix6 = "v6:"
	// singletonKey names the one record of the pool and config kinds.
	singletonKey = "default"
)

// blockKey returns the store key of the block with prefix p.
func blockKey(p netip.Prefix) string {
	var buf [3 + 32 + 4]byte
	return string(appendBlockKey(buf[:0], p))
}

func appendBlockKey(dst []byte, p netip.Prefix) []byte {
	a := p.Addr()
	if a.Is4() {
		b := a.As4()
		dst = append(dst, blockKeyPrefix4...)
		dst = hex.AppendEncode(dst, b[:])
	} else {
		b := a.As16()
		dst = append(dst, blockKeyPrefix6...)
		dst = hex.AppendEncode(dst, b[:])
	}
	dst = append(dst, '/')
	return strconv.AppendInt(dst, int64(p.Bits()), 10)
}

// addrKey returns the part of a block key that spells a, without the
// prefix length: every block key starting at a begins with it.
func addrKey(a netip.Addr) string {
	if a.Is4() {
		b := a.As4()
		return blockKeyPrefix4 + hex.EncodeToString(b[:])
	}
	b := a.As16()
	return blockKeyPrefix6 + hex.EncodeToString(b[:])
}

// blockRange returns the range of block keys whose first address lies in p.
func blockRange(p netip.Prefix) KeyRange {
	p = p.Masked()
	r := KeyRange{Start: addrKey(p.Addr())}
	last := lastAddr(p)
	if next := last.Next(); next.IsValid() && next.Is4() == last.Is4() {
		r.End = addrKey(next)
	} else {
		// p ends at the top of its family: stop at the end of the family's keys.
		fam := blockKeyPrefix6
		if last.Is4() {
			fam = blockKeyPrefix4
		}
		r.End = PrefixRange(fam).End
	}
	return r
}

// lastAddr returns the last address of the masked prefix p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr()
	if a.Is4() {
		b := a.As4()
		for i := p.Bits(); i < 32; i++ {
			b[i/8] |= 0x80 >> (i % 8)
		}
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	for i := p.Bits(); i < 128; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return netip.AddrFrom16(b)
}

// parseBlockKey is the inverse of blockKey. It does not allocate on
// success: pools list their blocks' keys on the claim path.
func parseBlockKey(key string) (netip.Prefix, error) {
	var width int
	switch {
	case strings.HasPrefix(key, blockKeyPrefix4):
		width = 8
	case strings.HasPrefix(key, blockKeyPrefix6):
		width = 32
	default:
		return netip.Prefix{}, fmt.Errorf("block key %q: does not start with v4: or v6", key)
	}
	rest := key[3:]
	if len(rest) < width+2 || rest[width] != '/' {
		return netip.Prefix{}, fmt.Errorf("block key %q: malformed", key)
	}
	var raw [16]byte
	for i := 0; i < width; i += 2 {
		hi, ok1 := lowerHex(rest[i])
		lo, ok2 := lowerHex(rest[i+1])
		if !ok1 || !ok2 {
			return netip.Prefix{}, fmt.Errorf("block key %q: malformed address", key)
		}
		raw[i/2] = hi<<4 | lo
	}
	addr, _ := netip.AddrFromSlice(raw[:width/2])
	digits := rest[width+1:]
	bits := 0
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		if c < '0' || c > '9' || (i == 0 && c == '0' && len(digits) > 1) || i > 2 {
			return netip.Prefix{}, fmt.Errorf("block key %q: malformed prefix length", key)
		}
		bits = bits*10 + int(c-'0')
	}
	if len(digits) == 0 || bits > addr.BitLen() {
		return netip.Prefix{}, fmt.Errorf("block key %q: malformed prefix length", key)
	}
	if !hostZero(raw[:width/2], bits) {
		return netip.Prefix{}, fmt.Errorf("block key %q: address is not the start of its block", key)
	}
	return netip.PrefixFrom(addr, bits), nil
}

// hostZero reports whether the bits of the address raw after the first
// bits are all zero: whether the prefix is masked. (Prefix.Masked costs
// several times as much, on a path that parses every block of a pool.)
func hostZero(raw []byte, bits int) bool {
	i := bits / 8
	if r := bits % 8; r != 0 {
		if raw[i]&(0xff>>r) != 0 {
			return false
		}
		i++
	}
	for ; i < len(raw); i++ {
		if raw[i] != 0 {
			return false
		}
	}
	return true
}

// lowerHex returns the value of a lower-case hex digit.
func lowerHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// affinityKey returns the index key that records that the block with
// prefix blk is affine to owner (an affinity's String form, "host:node-1").
func affinityKey(owner string, blk netip.Prefix) string {
	var buf [64]byte
	dst := append(buf[:0], owner...)
	dst = append(dst, '/')
	return string(appendBlockKey(dst, blk))
}

// affinityRange returns the range of index keys of one affinity owner.
func affinityRange(owner string) KeyRange { return PrefixRange(owner + "/") }

// parseAffinityKey splits an index key into its owner and block.
func parseAffinityKey(key string) (owner string, blk netip.Prefix, err error) {
	// Owners never contain "/" (names are checked before they become keys).
	i := strings.IndexByte(key, '/')
	if i <= 0 {
		return "", netip.Prefix{}, fmt.Errorf("affinity key %q: malformed", key)
	}
	if _, err := block.ParseAffinity(key[:i]); err != nil {
		return "", netip.Prefix{}, fmt.Errorf("affinity key %q: %w", key, err)
	}
	blk, err = parseBlockKey(key[i+1:])
	if err != nil {
		return "", netip.Prefix{}, fmt.Errorf("affinity key %q: %w", key, err)
	}
	return key[:i], blk, nil
}
