package block

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math/bits"

	"github.com/carve-ipam/carve/internal/ipmath"
)

// verify checks every internal invariant of b and returns the first one
// broken. It is slow (it walks every address and record) and exists for
// tests and fuzzing; a block built by this package's methods always passes.
func (b *Block) verify() error {
	if b.size == 0 {
		if b.prefix.IsValid() || b.used != 0 || b.nres != 0 || b.cursor != 0 || b.seq != 0 ||
			!b.aff.IsZero() || !b.claim.IsZero() || b.recs.live != 0 {
			return errors.New("zero block with state")
		}
		return nil
	}
	if err := checkPrefix(b.prefix); err != nil {
		return err
	}
	if b.size != 1<<ipmath.HostBits(b.prefix) || b.base != ipmath.FromAddr(b.prefix.Addr()) || b.is4 != b.prefix.Addr().Is4() {
		return fmt.Errorf("size %d, base or family disagree with prefix %s", b.size, b.prefix)
	}
	if b.cursor < 0 || b.cursor >= b.size {
		return fmt.Errorf("cursor %d outside [0, %d)", b.cursor, b.size)
	}
	if !b.aff.IsValid() {
		return fmt.Errorf("invalid affinity %v", b.aff)
	}
	if b.claim.Location().String() != "UTC" {
		return fmt.Errorf("claim time %v not in UTC", b.claim)
	}
	words := (b.size + 63) / 64
	tw, rw := b.taken.Words(), b.resv.Words()
	if len(tw) != words || len(rw) != words || b.taken.Len() != uint(64*words) || b.resv.Len() != uint(64*words) {
		return fmt.Errorf("bitsets of %d and %d words, want %d", len(tw), len(rw), words)
	}
	if len(b.owner) != b.size || len(b.aseq) != b.size {
		return fmt.Errorf("per-address arrays of %d and %d, want %d", len(b.owner), len(b.aseq), b.size)
	}
	var pad uint64
	if r := b.size % 64; r != 0 {
		pad = ^uint64(0) << r
	}
	nres, used := 0, 0
	for k := range words {
		t, r := tw[k], rw[k]
		if k == words-1 && (t&pad != pad || r&pad != pad) {
			return errors.New("padding bits not set")
		}
		if k == words-1 {
			t, r = t&^pad, r&^pad
		}
		if r&^t != 0 {
			return fmt.Errorf("word %d: reserved bits not taken", k)
		}
		nres += bits.OnesCount64(r)
		used += bits.OnesCount64(t &^ r)
	}
	if nres != b.nres || used != b.used {
		return fmt.Errorf("counted %d used and %d reserved, fields say %d and %d", used, nres, b.used, b.nres)
	}
	if len(b.rel) != 0 && len(b.rel) != b.size {
		return fmt.Errorf("%d release times for %d addresses", len(b.rel), b.size)
	}
	nrel := 0
	for i, ns := range b.rel {
		switch {
		case ns == 0:
		case ns < 0:
			return fmt.Errorf("address %d: negative release time", i)
		case b.taken.Test(uint(i)):
			return fmt.Errorf("address %d: release time on a taken address", i)
		default:
			nrel++
		}
	}
	if nrel != b.nrel {
		return fmt.Errorf("counted %d release times, field says %d", nrel, b.nrel)
	}
	refs := make([]int, len(b.recs.recs))
	for k := range words {
		for w := tw[k] &^ rw[k]; w != 0; w &= w - 1 {
			i := k<<6 | bits.TrailingZeros64(w)
			if i >= b.size {
				continue // padding
			}
			s := int(b.owner[i])
			if s >= len(refs) {
				return fmt.Errorf("address %d: owner slot %d out of range", i, s)
			}
			refs[s]++
		}
	}
	return b.recs.verify(refs)
}

// verify checks the record set against refs, the number of addresses that
// point at each slot.
func (t *owners) verify(refs []int) error {
	if len(t.recs) > maxSlots {
		return fmt.Errorf("%d record slots", len(t.recs))
	}
	live, indexed, arenaLive := 0, 0, 0
	free := make([]bool, len(t.recs))
	for _, s := range t.free {
		if int(s) >= len(t.recs) || free[s] {
			return fmt.Errorf("free slot %d out of range or listed twice", s)
		}
		free[s] = true
	}
	if t.spare != 0 && (int(t.spare) > len(t.recs) || free[t.spare-1] || t.recs[t.spare-1].refs != 0) {
		return fmt.Errorf("spare %d is not an empty record", t.spare-1)
	}
	if int(t.last) > len(t.recs) {
		return fmt.Errorf("last %d out of range", t.last-1)
	}
	for s := range t.recs {
		r := &t.recs[s]
		if r.refs != refs[s] {
			return fmt.Errorf("slot %d: %d refs, %d addresses", s, r.refs, refs[s])
		}
		isSpare := int(t.spare)-1 == s
		switch {
		case free[s]:
			if r.refs != 0 || r.handle != "" || r.attrs != nil || r.hash != 0 {
				return fmt.Errorf("free slot %d not cleared", s)
			}
			continue
		case r.refs > 0:
			live++
		case !isSpare:
			return fmt.Errorf("slot %d neither live, spare nor free", s)
		}
		indexed++
		if int(r.encOff)+int(r.encLen) > len(t.arena) || string(t.encoding(s)) != string(appendOwner(nil, r.handle, r.attrs)) {
			return fmt.Errorf("slot %d (handle %q): stale encoding", s, r.handle)
		}
		arenaLive += int(r.encLen)
		if r.hash != maphash.String(hashSeed, r.handle) {
			return fmt.Errorf("slot %d: stale hash", s)
		}
		if r.ahash != encHash(t.encoding(s)) {
			return fmt.Errorf("slot %d: stale encoding hash", s)
		}
		if f := t.find(r.hash, r.handle, r.attrs, 0, false); f != s {
			return fmt.Errorf("slot %d (handle %q): index finds %d", s, r.handle, f)
		}
	}
	if arenaLive != t.arenaLive {
		return fmt.Errorf("encodings of %d bytes in use, field says %d", arenaLive, t.arenaLive)
	}
	if live != t.live || indexed != t.indexed {
		return fmt.Errorf("counted %d live and %d indexed records, fields say %d and %d", live, indexed, t.live, t.indexed)
	}
	if n := len(t.index); n != 0 && (n&(n-1) != 0 || 2*indexed > n) {
		return fmt.Errorf("index of %d buckets for %d records", n, indexed)
	}
	inIndex := 0
	for _, e := range t.index {
		if e != 0 {
			inIndex++
			if int(e) > len(t.recs) || free[e-1] {
				return fmt.Errorf("index points at slot %d, free or out of range", e-1)
			}
		}
	}
	if inIndex != indexed {
		return fmt.Errorf("index holds %d entries, want %d", inIndex, indexed)
	}
	return nil
}
