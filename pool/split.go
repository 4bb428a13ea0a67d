package pool

import (
	"fmt"
	"math/bits"
	"slices"
	"strconv"

	"github.com/carve-ipam/carve/internal/ipmath"
)

// Split divides p into len(names) pools of equal size, Calico's calicoctl
// ipam split: part i covers the i-th part of p's CIDR, in address order,
// and is called names[i]. Every other field but Version (zero: each part
// is a new pool) is p's (with defaults applied), so each part carves its
// range into exactly the blocks p carved there, and every block of p lies
// in exactly one part. One of the names may be p's own.
//
// The number of parts must be a power of two, at least 2, and each part
// must still hold a whole block: its prefix length is at most blockSize.
// The names must be valid pool names, each given once. The problems come
// in one *[ValidationError] for p: [ErrSplit] for the number of parts and
// for a name given twice, [ErrName] for an invalid name, all at once; or,
// if p itself is invalid, p's own problems ([Pool.Validate]) alone.
//
// Split only computes the parts; [github.com/carve-ipam/carve/ipam.Allocator.SplitPool]
// replaces a stored pool by them in one write.
func (p Pool) Split(names ...string) ([]Pool, error) {
	q := p.WithDefaults()
	ps := problems{pool: q.Name}
	validate(&ps, &q)
	if err := ps.err(); err != nil {
		return nil, err
	}
	n := len(names)
	partBits := q.CIDR.Bits() + bits.TrailingZeros(uint(n))
	if n < 2 || n&(n-1) != 0 {
		ps.add(ErrSplit, "cidr", q.CIDR.String(),
			fmt.Sprintf("cannot be split into %d %s: the number of parts must be a power of two, at least 2", n, plural(n, "pool", "pools")))
	} else if partBits > q.BlockSize {
		ps.add(ErrSplit, "cidr", q.CIDR.String(),
			fmt.Sprintf("cannot be split into %d pools: each part would be a /%d, smaller than a block (blockSize %d)", n, partBits, q.BlockSize))
	}
	first := make(map[string]int, n)
	for i, name := range names {
		if j, dup := first[name]; dup {
			ps.add(ErrSplit, "name", strconv.Quote(name), fmt.Sprintf("is given to parts %d and %d", j, i))
			continue
		}
		first[name] = i
		validateName(&ps, name)
	}
	if err := ps.err(); err != nil {
		return nil, err
	}
	parts := make([]Pool, n)
	for i := range parts {
		part := q
		part.Name = names[i]
		part.Version = 0 // a new pool, not a version of p
		part.CIDR, _ = ipmath.PrefixAt(q.CIDR, partBits, ipmath.U64(uint64(i)))
		part.AllowedUses = slices.Clone(q.AllowedUses)
		parts[i] = part
	}
	return parts, nil
}

// plural returns one when n is 1, else many.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
