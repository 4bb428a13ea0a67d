package ipam

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"unicode"
	"unicode/utf8"
	"unsafe"

	"github.com/carve-ipam/carve/block"
)

// Limits on names and attributes, so that every name is a valid store key
// and a block's encoding stays small.
const (
	// MaxNameLen is the longest node name or handle ID carve accepts (in
	// bytes): room for two DNS names, such as a namespace and a pod. Node
	// names and handle IDs are 1 to MaxNameLen bytes of UTF-8, without
	// control characters, and neither begin nor end with white space; node
	// names (and reservation names) may not contain "/" either.
	MaxNameLen = 253 * 2
	// MaxAttrs is the most attributes a request may give one allocation;
	// the allocation also carries AttrNode, which the allocator adds
	// (unless it is a LoadBalancer address).
	MaxAttrs = 16
	// MaxAttrLen is the longest attribute key or value.
	MaxAttrLen = 512
	// MaxAssign is the most addresses of one family one call may assign.
	MaxAssign = 1 << 16
)

// AttrNode is the attribute under which carve records, with every
// allocation but LoadBalancer addresses (which are no node's), the node it
// was assigned for; Calico does the same, and utilization counts an
// address as borrowed when this differs from its block's node.
const AttrNode = "node"

// VirtualLoadBalancer is the owner of the blocks that hold LoadBalancer
// addresses (AutoAssignArgs.Use and AssignIPArgs.Use pool.UseLoadBalancer):
// their affinity is block.Virtual(VirtualLoadBalancer), which Calico writes
// "virtual:load-balancer". Such addresses belong to no node: requests for
// them name none, and they carry no AttrNode. The owner claims and fills
// blocks as a node does, but MaxBlocksPerHost does not cap it, no node
// reclaims its empty blocks, and neither ReleaseHostAffinities nor a
// Collector's node oracle touches them; ClaimLoadBalancerAffinity and
// ReleaseLoadBalancerAffinity do, and DeletePool releases them with their
// pool.
const VirtualLoadBalancer = "load-balancer"

// loadBalancerOwner is VirtualLoadBalancer's affinity.
var loadBalancerOwner = block.Virtual(VirtualLoadBalancer)

// checkName checks a node name or handle ID: it becomes part of a store key.
// Node names may not contain "/", which separates the parts of index keys.
// No name begins or ends with white space: "node-1 " would be another node
// than "node-1", found by no one who means it.
//
// It is small enough to inline: the common case, a printable ASCII name
// of 1 to MaxNameLen bytes that neither begins nor ends with a space,
// costs one call (plainASCII), and every other case is decided by
// nameError.
func checkName(op, what, s string, slash bool) error {
	if uint(len(s))-1 < MaxNameLen && s[0] != ' ' && s[len(s)-1] != ' ' && plainASCII(s, slash) {
		return nil
	}
	return nameError(op, what, s, slash)
}

// nameError is checkName for a name that is not plain: the error, or nil
// for a valid name outside printable ASCII.
func nameError(op, what, s string, slash bool) error {
	first, _ := utf8.DecodeRuneInString(s)
	last, _ := utf8.DecodeLastRuneInString(s)
	switch {
	case s == "":
		return invalid(op, "empty %s", what)
	case len(s) > MaxNameLen:
		return invalid(op, "%s of %d bytes is longer than %d", what, len(s), MaxNameLen)
	case !utf8.ValidString(s):
		return invalid(op, "%s %q is not valid UTF-8", what, s)
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return invalid(op, "%s %q contains a control character", what, s)
	case !slash && strings.Contains(s, "/"):
		return invalid(op, "%s %q contains \"/\"", what, s)
	case unicode.IsSpace(first) || unicode.IsSpace(last):
		return invalid(op, "%s %q begins or ends with white space", what, s)
	}
	return nil
}

// plainASCII reports whether s is printable ASCII, without "/" unless
// slash, eight bytes at a time.
func plainASCII(s string, slash bool) bool {
	if len(s) < 8 {
		for i := 0; i < len(s); i++ {
			if c := s[i]; c < 0x20 || c >= 0x7f || (c == '/' && !slash) {
				return false
			}
		}
		return true
	}
	// Whole words, then the last eight bytes (which may overlap).
	for i := 0; ; i += 8 {
		if i > len(s)-8 {
			i = len(s) - 8
		}
		if !plainWord(word(s, i), slash) {
			return false
		}
		if i == len(s)-8 {
			return true
		}
	}
}

const ones, highs = 0x0101010101010101, 0x8080808080808080

// word returns the eight bytes of s from i on.
func word(s string, i int) uint64 {
	return binary.LittleEndian.Uint64(unsafe.Slice(unsafe.StringData(s[i:]), 8))
}

// plainWord reports whether each byte of v is printable ASCII, and not "/"
// unless slash.
func plainWord(v uint64, slash bool) bool {
	// With no byte of v at 0x80 or above, (x - ones*n) &^ x & highs is
	// non-zero exactly when a byte of x is below n.
	below := func(x uint64, n uint8) uint64 { return (x - ones*uint64(n)) &^ x & highs }
	bad := below(v, 0x20) | below(v^(ones*0x7f), 1)
	if !slash {
		bad |= below(v^(ones*'/'), 1)
	}
	return v&highs == 0 && bad == 0
}

// validUTF8 is utf8.ValidString, which it calls from the first byte that is
// not ASCII on: attributes are nearly always ASCII, checked eight bytes at
// a time.
func validUTF8(s string) bool {
	i := 0
	for ; i+8 <= len(s); i += 8 {
		if word(s, i)&highs != 0 {
			return utf8.ValidString(s[i:])
		}
	}
	for ; i < len(s); i++ {
		if s[i] >= 0x80 {
			return utf8.ValidString(s[i:])
		}
	}
	return true
}

func checkNode(op, node string) error     { return checkName(op, "node name", node, false) }
func checkHandle(op, handle string) error { return checkName(op, "handle", handle, true) }

// checkAddr checks an address given to op: set, and without a zone.
func checkAddr(op string, addr netip.Addr) error {
	switch {
	case !addr.IsValid():
		return invalid(op, "no address given (the zero netip.Addr)")
	case addr.Zone() != "":
		return invalid(op, "address %s has a zone; give it without one", addr)
	}
	return nil
}

// checkPrefix checks a prefix given to op: set, masked, and not
// IPv4-mapped.
func checkPrefix(op string, p netip.Prefix) error {
	switch {
	case p == netip.Prefix{}:
		return invalid(op, "no prefix given (the zero netip.Prefix)")
	case !p.IsValid():
		return invalid(op, "invalid prefix of %s: its length does not fit the address", p.Addr())
	case p.Masked() != p:
		return invalid(op, "%s is not a masked prefix (%s is)", p, p.Masked())
	case p.Addr().Is4In6():
		// Pools and reservations refuse this form too: no block lies in it.
		return invalid(op, "%s is an IPv4-mapped IPv6 prefix; write IPv4 ranges in IPv4 form (%s)",
			p, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96))
	}
	return nil
}

// ownerAttrs checks the caller's attributes and returns those stored with
// an allocation: the caller's plus the node, copied and checked in one pass
// over the map. With no attributes of the caller's own it returns shared
// instead: every allocation of the node then shares the node cache's map,
// which blocks keep without copying, so the hot path allocates nothing.
//
// node is "" for a LoadBalancer address, which carries no AttrNode. The
// caller may give AttrNode only with node's value: carve sets it, and a
// Collector and utilization go by it.
func ownerAttrs(op, node string, attrs map[string]string) (m map[string]string, shared bool, err error) {
	switch {
	case len(attrs) == 0 || (len(attrs) == 1 && node != "" && attrs[AttrNode] == node):
		return nil, true, nil // node is a checked name: a valid value
	case len(attrs) > MaxAttrs:
		return nil, false, invalid(op, "%d attributes, more than %d", len(attrs), MaxAttrs)
	}
	m = make(map[string]string, len(attrs)+1)
	for k, v := range attrs {
		switch {
		case k == "" || len(k) > MaxAttrLen || len(v) > MaxAttrLen:
			return nil, false, invalid(op, "attribute %.40q=%.40q: keys must have 1 to %d bytes and values at most %d", k, v, MaxAttrLen, MaxAttrLen)
		case !validUTF8(k) || !validUTF8(v):
			return nil, false, invalid(op, "attribute %q=%q is not valid UTF-8", k, v)
		case k == AttrNode && node == "":
			return nil, false, invalid(op, "attribute %s=%q given for use LoadBalancer: LoadBalancer addresses belong to no node", AttrNode, v)
		case k == AttrNode && v != node:
			return nil, false, invalid(op, "attribute %s=%q differs from the node %q: carve records the node there itself", AttrNode, v, node)
		}
		m[k] = v
	}
	if node != "" {
		m[AttrNode] = node
	}
	return m, false, nil
}

// nodeCache is what the allocator keeps per node.
type nodeCache struct {
	// attrs is {AttrNode: node}, the attributes of every allocation for the
	// node without attributes of its own. Never modified.
	attrs map[string]string
	// blocks is the node's entries in the affinity index as last listed.
	blocks atomic.Pointer[nodeBlocks]
	// lastHandleVal is the handle value last written for an assignment to
	// the node: its next assignment usually goes to the same block, so the
	// value is usually the same, without a lookup in the shared cache.
	// (Per node, so that allocations for different nodes do not write to
	// one shared word.)
	lastHandleVal atomic.Pointer[handleVal]
	// lane is, per family (IPv4, IPv6), what a recent request of the
	// node, of the lane's shape, chose (see autoAssignLane).
	lane [2]atomic.Pointer[laneMemo]
	// labels is the node's stored labels as last read (see nodeLabels).
	labels atomic.Pointer[storedLabels]
}

// nodeBlocks is a node's blocks per the affinity index, with the index
// generation it was read at.
type nodeBlocks struct {
	gen    uint64
	blocks []netip.Prefix // never modified once cached
}

// node returns the cache of the node named name, which must have passed
// checkNode: AutoAssign skips the check for a name the cache holds.
func (a *Allocator) node(name string) *nodeCache {
	return a.nodes.getOrMake(name, func() *nodeCache {
		return &nodeCache{attrs: map[string]string{AttrNode: name}}
	})
}

// affineBlocks returns the blocks the index lists for owner (an affinity's
// String form), from nc, the owner's cache (nil for none), if the
// index has not changed since. The index is a superset: every block affine
// to owner is in it, and callers check the block's own affinity before
// relying on it.
func (a *Allocator) affineBlocks(ctx context.Context, owner block.Affinity, nc *nodeCache) ([]netip.Prefix, error) {
	var gen uint64
	if a.gens == nil {
		nc = nil
	}
	if nc != nil {
		gen = a.gens.Generation(KindAffinity)
		if nb := nc.blocks.Load(); nb != nil && nb.gen == gen {
			return nb.blocks, nil
		}
	}
	recs, err := a.store.List(ctx, KindAffinity, affinityRange(owner.String()))
	if err != nil {
		return nil, fmt.Errorf("ipam: list blocks of %s: %w", owner, err)
	}
	blocks := make([]netip.Prefix, 0, len(recs))
	for _, r := range recs {
		_, blk, err := parseAffinityKey(r.Key)
		if err != nil {
			return nil, fmt.Errorf("ipam: %w: %w", ErrCorrupt, err)
		}
		blocks = append(blocks, blk)
	}
	if nc != nil {
		nc.blocks.Store(&nodeBlocks{gen: gen, blocks: blocks})
	}
	return blocks, nil
}
