package etcdstore_test

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
)

// storeState is everything carve keeps in a store, decoded independently
// of the allocator, to check the invariants of docs/ARCHITECTURE.md.
type storeState struct {
	blocks map[netip.Prefix]*block.Block
	// owner is the handle holding each allocated address.
	owner map[netip.Addr]string
	// inBlocks counts, per handle and block, the addresses the blocks say
	// the handle holds; counted the same from the handle records.
	inBlocks, inHandles map[string]map[netip.Prefix]int
	// index holds the affinity index keys.
	index map[string]bool
}

// readState lists every block, handle and affinity record of s. It fails
// the test if a block does not decode, two blocks overlap, or a block lies
// outside every pool in pools.
func readState(t *testing.T, s ipam.Store, pools []netip.Prefix) *storeState {
	t.Helper()
	ctx := t.Context()
	st := &storeState{
		blocks:    map[netip.Prefix]*block.Block{},
		owner:     map[netip.Addr]string{},
		inBlocks:  map[string]map[netip.Prefix]int{},
		inHandles: map[string]map[netip.Prefix]int{},
		index:     map[string]bool{},
	}
	recs, err := s.List(ctx, ipam.KindBlock, ipam.KeyRange{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		b := new(block.Block)
		if err := b.UnmarshalBinary(r.Value); err != nil {
			t.Fatalf("block %q does not decode: %v", r.Key, err)
		}
		p := b.Prefix()
		if blockKey(p) != r.Key {
			t.Fatalf("block %s stored under key %q", p, r.Key)
		}
		if !slices.ContainsFunc(pools, func(pool netip.Prefix) bool { return pool.Overlaps(p) && pool.Bits() <= p.Bits() }) {
			t.Fatalf("block %s lies outside every pool", p)
		}
		for q := range st.blocks {
			if q.Overlaps(p) {
				t.Fatalf("blocks %s and %s overlap: their addresses could be owned twice", q, p)
			}
		}
		st.blocks[p] = b
		for addr, alloc := range b.All() {
			if !p.Contains(addr) {
				t.Fatalf("block %s holds address %s outside it", p, addr)
			}
			if h, dup := st.owner[addr]; dup {
				t.Fatalf("address %s owned twice: by %q and %q", addr, h, alloc.Owner.Handle)
			}
			st.owner[addr] = alloc.Owner.Handle
			add(st.inBlocks, alloc.Owner.Handle, p, 1)
		}
	}
	recs, err = s.List(ctx, ipam.KindHandle, ipam.KeyRange{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		counts, err := decodeHandle(r.Value)
		if err != nil {
			t.Fatalf("handle %q does not decode: %v", r.Key, err)
		}
		for blk, n := range counts {
			add(st.inHandles, r.Key, blk, n)
		}
	}
	recs, err = s.List(ctx, ipam.KindAffinity, ipam.KeyRange{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		st.index[r.Key] = true
	}
	return st
}

func add(m map[string]map[netip.Prefix]int, h string, p netip.Prefix, n int) {
	if m[h] == nil {
		m[h] = map[netip.Prefix]int{}
	}
	m[h][p] += n
}

// checkMode says which repairable leftovers a check accepts.
type checkMode struct {
	// highCounts accepts handle records counting more addresses than the
	// blocks hold (a crash between the two writes of an assign or release).
	highCounts bool
	// staleIndex accepts affinity index entries whose block is gone or
	// affine to someone else (a crash during a claim or a release of
	// affinity).
	staleIndex bool
}

// leftovers counts the repairable damage a check found.
type leftovers struct {
	highCounts, staleIndex int
}

// check verifies the invariants that hold after any crash (every address a
// block holds is counted by its handle; every affine block is in the
// index) and, unless mode accepts them, that there are no leftovers.
func (st *storeState) check(t *testing.T, mode checkMode) leftovers {
	t.Helper()
	var left leftovers
	for h, byBlock := range st.inBlocks {
		for blk, n := range byBlock {
			if c := st.inHandles[h][blk]; c < n {
				t.Errorf("handle %q counts %d addresses in block %s, which holds %d of them: too low is never repairable", h, c, blk, n)
			}
		}
	}
	for h, byBlock := range st.inHandles {
		for blk, c := range byBlock {
			if n := st.inBlocks[h][blk]; c > n {
				left.highCounts++
				if !mode.highCounts {
					t.Errorf("handle %q counts %d addresses in block %s, which holds %d of them", h, c, blk, n)
				}
			}
		}
	}
	for p, b := range st.blocks {
		if a := b.Affinity(); !a.IsZero() && !st.index[affinityKey(a.String(), p)] {
			t.Errorf("block %s is affine to %s but the index has no entry %q", p, a, affinityKey(a.String(), p))
		}
	}
	for key := range st.index {
		owner, blkKey, _ := strings.Cut(key, "/")
		b := st.blockByKey(blkKey)
		if b == nil || b.Affinity().String() != owner {
			left.staleIndex++
			if !mode.staleIndex {
				t.Errorf("affinity index entry %q is stale", key)
			}
		}
	}
	return left
}

func (st *storeState) blockByKey(key string) *block.Block {
	for p, b := range st.blocks {
		if blockKey(p) == key {
			return b
		}
	}
	return nil
}

// addrsOf returns the addresses the blocks say handle holds, sorted.
func (st *storeState) addrsOf(handle string) []netip.Addr {
	var out []netip.Addr
	for a, h := range st.owner {
		if h == handle {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// blockKey spells a block's store key as docs/ARCHITECTURE.md documents it:
// "v4:" or "v6:", the first address in fixed-width hex, "/" and the length.
func blockKey(p netip.Prefix) string {
	fam := "v6:"
	if p.Addr().Is4() {
		fam = "v4:"
	}
	return fam + hex.EncodeToString(p.Addr().AsSlice()) + "/" + strconv.Itoa(p.Bits())
}

// affinityKey spells an affinity index key: "host:node/<block key>".
func affinityKey(owner string, p netip.Prefix) string { return owner + "/" + blockKey(p) }

// decodeHandle decodes a handle record as ipam writes it: a version byte
// (1), a uvarint count of blocks, then per block its family (4 or 6), its
// address, its prefix length and a uvarint count of addresses.
func decodeHandle(data []byte) (map[netip.Prefix]int, error) {
	if len(data) == 0 || data[0] != 1 {
		return nil, errors.New("unknown version")
	}
	data = data[1:]
	n, k := binary.Uvarint(data)
	if k <= 0 {
		return nil, errors.New("bad block count")
	}
	data = data[k:]
	out := map[netip.Prefix]int{}
	for range n {
		if len(data) < 1 {
			return nil, errors.New("truncated")
		}
		size := 4
		if data[0] == 6 {
			size = 16
		} else if data[0] != 4 {
			return nil, fmt.Errorf("bad family %d", data[0])
		}
		if len(data) < 2+size {
			return nil, errors.New("truncated")
		}
		addr, _ := netip.AddrFromSlice(data[1 : 1+size])
		p := netip.PrefixFrom(addr, int(data[1+size]))
		data = data[2+size:]
		c, k := binary.Uvarint(data)
		if k <= 0 || c == 0 || !p.IsValid() {
			return nil, fmt.Errorf("bad entry for %s", p)
		}
		data = data[k:]
		out[p] = int(c)
	}
	if len(data) != 0 {
		return nil, errors.New("trailing bytes")
	}
	return out, nil
}
