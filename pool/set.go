package pool

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go4.org/netipx"
)

// Set is a collection of pools with unique names and non-overlapping CIDRs.
// The zero value is an empty set ready to use.
//
// A Set is not safe for concurrent writes, but its read methods (Get,
// ByAddr, All, Len, Select, AppendSelect, IPSet, Free, FindFree) never modify
// it, so any number of goroutines may read a Set that nobody writes: build
// one per pool revision and share it. Pools in a set are never modified in
// place: Update installs a new *Pool, so a pointer obtained earlier keeps
// describing the pool as it was.
type Set struct {
	byName []*Pool // sorted by Name: Calico's order (byte-wise, as the datastore lists them)
	byAddr []*Pool // sorted by the CIDR's first address, IPv4 before IPv6; CIDRs are disjoint
}

// Len returns the number of pools in s.
func (s *Set) Len() int { return len(s.byName) }

// All returns the pools of s in Calico's order, by name (byte-wise). The
// slice is new; the pools are read-only pointers into s.
func (s *Set) All() []*Pool { return slices.Clone(s.byName) }

// Get returns the pool called name, read-only.
func (s *Set) Get(name string) (*Pool, bool) {
	i, ok := s.nameIndex(name)
	if !ok {
		return nil, false
	}
	return s.byName[i], true
}

// ByAddr returns the pool whose CIDR holds a, read-only. Disabled pools are
// found too. It does not allocate.
func (s *Set) ByAddr(a netip.Addr) (*Pool, bool) {
	// The last pool starting at or before a is the only one that can hold it.
	i, found := s.addrIndex(a)
	if !found {
		i--
	}
	if i < 0 || !s.byAddr[i].CIDR.Contains(a) {
		return nil, false
	}
	return s.byAddr[i], true
}

// Add puts a copy of p, with defaults applied ([Pool.WithDefaults]) and
// selectors parsed, into s. It fails with a *ValidationError holding every
// problem: those of [Pool.Validate], a name already in s ([ErrExists]), and
// a CIDR that overlaps any pool of s, disabled ones included ([ErrOverlap];
// one problem per pool overlapped, in address order).
func (s *Set) Add(p Pool) error {
	q := p.WithDefaults()
	ps := problems{pool: q.Name}
	validate(&ps, &q)
	if _, ok := s.nameIndex(q.Name); ok {
		ps.add(ErrExists, "name", strconv.Quote(q.Name), "is already in the set")
	}
	if q.CIDR.IsValid() {
		for _, o := range s.overlapping(q.CIDR.Masked()) {
			ps.add(ErrOverlap, "cidr", q.CIDR.String(), "overlaps pool "+strconv.Quote(o.Name)+" ("+o.CIDR.String()+")")
		}
	}
	if err := ps.err(); err != nil {
		return err
	}
	np := &q
	i, _ := s.nameIndex(np.Name)
	s.byName = slices.Insert(s.byName, i, np)
	j, _ := s.addrIndex(np.CIDR.Addr())
	s.byAddr = slices.Insert(s.byAddr, j, np)
	return nil
}

// Update replaces the pool of the same name with a copy of p, with defaults
// applied. It fails with a *ValidationError when s has no such pool
// ([ErrNotFound]) or [ValidateUpdate] finds problems (a changed cidr or
// blockSize, a LoadBalancer pool turned into another kind, any rule of
// [Pool.Validate]). Since the CIDR cannot change, no overlap can appear.
func (s *Set) Update(p Pool) error {
	q := p.WithDefaults()
	ps := problems{pool: q.Name, update: true}
	i, ok := s.nameIndex(q.Name)
	if !ok {
		ps.add(ErrNotFound, "name", strconv.Quote(q.Name), "is not in the set")
		return ps.err()
	}
	old := s.byName[i]
	validateUpdate(&ps, old, &q)
	validate(&ps, &q)
	if err := ps.err(); err != nil {
		return err
	}
	np := &q
	s.byName[i] = np
	j, _ := s.addrIndex(np.CIDR.Addr())
	s.byAddr[j] = np
	return nil
}

// Remove deletes the pool called name and reports whether it was there.
func (s *Set) Remove(name string) bool {
	i, ok := s.nameIndex(name)
	if !ok {
		return false
	}
	p := s.byName[i]
	s.byName = slices.Delete(s.byName, i, i+1)
	j, _ := s.addrIndex(p.CIDR.Addr())
	s.byAddr = slices.Delete(s.byAddr, j, j+1)
	return true
}

func (s *Set) nameIndex(name string) (int, bool) {
	return slices.BinarySearchFunc(s.byName, name, func(p *Pool, name string) int { return strings.Compare(p.Name, name) })
}

func (s *Set) addrIndex(a netip.Addr) (int, bool) {
	return slices.BinarySearchFunc(s.byAddr, a, func(p *Pool, a netip.Addr) int { return p.CIDR.Addr().Compare(a) })
}

// overlapping returns the pools of s whose CIDR overlaps c (masked), in
// address order.
func (s *Set) overlapping(c netip.Prefix) []*Pool {
	// Pools are disjoint and sorted by start. The one starting last at or
	// before c may contain c; every later one overlaps c exactly when c
	// holds its start.
	i, found := s.addrIndex(c.Addr())
	if !found && i > 0 && s.byAddr[i-1].CIDR.Overlaps(c) {
		i--
	}
	var out []*Pool
	for ; i < len(s.byAddr) && s.byAddr[i].CIDR.Overlaps(c); i++ {
		out = append(out, s.byAddr[i])
	}
	return out
}

// IPSet returns the union of the CIDRs of every pool in s, disabled ones
// included.
func (s *Set) IPSet() *netipx.IPSet {
	var b netipx.IPSetBuilder
	for _, p := range s.byAddr {
		b.AddPrefix(p.CIDR)
	}
	set, _ := b.IPSet() // cannot fail: every CIDR in s is valid
	return set
}

// Free returns the addresses of within that no pool of s covers, less the
// ranges no pool may use: the link-local ones and the IPv4-mapped IPv6
// range ::ffff:0:0/96. An invalid within gives an empty set.
func (s *Set) Free(within netip.Prefix) *netipx.IPSet {
	if !within.IsValid() {
		return new(netipx.IPSet)
	}
	var b netipx.IPSetBuilder
	b.AddPrefix(within.Masked())
	b.RemoveSet(s.IPSet())
	b.RemovePrefix(linkLocal4)
	b.RemovePrefix(linkLocal6)
	b.RemovePrefix(mapped6)
	set, _ := b.IPSet() // cannot fail: every prefix added is valid
	return set
}

// FindFree returns the first (lowest) prefix of length bits inside within
// that overlaps no pool of s and no range Free leaves out: a CIDR a new pool can
// take, for example when migrating away from a pool or adding one when
// addresses run out. It reports false when there is none.
func (s *Set) FindFree(within netip.Prefix, bits int) (netip.Prefix, bool) {
	if !within.IsValid() || bits < within.Bits() || bits > within.Addr().BitLen() {
		return netip.Prefix{}, false
	}
	free := s.Free(within)
	// RemoveFreePrefix picks the smallest free range that fits, to limit
	// fragmentation; the lowest fitting prefix is easier to predict and
	// document, so scan the ranges in order instead.
	for _, r := range free.Ranges() {
		for _, p := range r.Prefixes() {
			if p.Bits() <= bits {
				return netip.PrefixFrom(p.Addr(), bits), true
			}
		}
	}
	return netip.Prefix{}, false
}

// NewSet returns a set holding pools, added in order with Add: the first
// pool that fails validation or overlaps an earlier one is reported.
func NewSet(pools ...Pool) (*Set, error) {
	s := new(Set)
	for _, p := range pools {
		if err := s.Add(p); err != nil {
			return nil, err
		}
	}
	return s, nil
}
