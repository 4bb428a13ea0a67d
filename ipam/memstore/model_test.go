package memstore_test

import (
	"bytes"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// modelRecord is what the model knows of a record.
type modelRecord struct {
	value []byte
	rev   ipam.Revision
}

// storeModel runs random operations on a few keys of two kinds against a
// map, the store's meaning: the results, the errors, every record's value
// and revision, the key order of List, and revisions that never repeat.
// Operations name the same key again and again, as the allocator does,
// and mix blocks kept decoded (CreateBlock, UpdateBlock) with bytes.
type storeModel struct {
	s     *memstore.Store
	m     map[ipam.Kind]map[string]modelRecord
	seen  map[ipam.Revision]bool
	stale ipam.Revision // a revision that was current once, now gone
}

var (
	modelKinds = []ipam.Kind{ipam.KindBlock, ipam.KindHandle}
	modelKeys  = []string{"a", "b", "c"}
)

func (sm *storeModel) draw(t *rapid.T) (ipam.Kind, string) {
	return rapid.SampledFrom(modelKinds).Draw(t, "kind"), rapid.SampledFrom(modelKeys).Draw(t, "key")
}

// revOf draws the revision a write names: the current one mostly, else a
// stale one or zero.
func (sm *storeModel) revOf(t *rapid.T, kind ipam.Kind, key string) ipam.Revision {
	switch rapid.IntRange(0, 5).Draw(t, "rev") {
	case 0:
		return sm.stale
	case 1:
		return 0
	}
	return sm.m[kind][key].rev
}

// value draws a value to write: bytes, or for blocks now and then a block
// the store keeps decoded, with its encoding as the value it must read.
func (sm *storeModel) value(t *rapid.T, kind ipam.Kind) ([]byte, *block.Block) {
	if kind == ipam.KindBlock && rapid.Bool().Draw(t, "decoded") {
		b, err := block.New(netip.MustParsePrefix("10.0.0.0/30"))
		if err != nil {
			t.Fatal(err)
		}
		b.Allocate(nil, rapid.IntRange(0, 3).Draw(t, "allocs"), block.Owner{Handle: "h"})
		v, err := b.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return v, b
	}
	return []byte(rapid.StringMatching(`[a-z]{0,4}`).Draw(t, "value")), nil
}

func (sm *storeModel) wrote(t *rapid.T, kind ipam.Kind, key string, v []byte, rev ipam.Revision) {
	if rev == 0 || sm.seen[rev] {
		t.Fatalf("%s %q written at revision %d, zero or given before", kind, key, rev)
	}
	sm.seen[rev] = true
	if old, ok := sm.m[kind][key]; ok {
		sm.stale = old.rev
	}
	sm.m[kind][key] = modelRecord{v, rev}
}

func (sm *storeModel) Create(t *rapid.T) {
	kind, key := sm.draw(t)
	v, b := sm.value(t, kind)
	var rev ipam.Revision
	var err error
	if b != nil {
		rev, err = sm.s.CreateBlock(t.Context(), key, b)
	} else {
		rev, err = sm.s.Create(t.Context(), kind, key, v)
	}
	if _, ok := sm.m[kind][key]; ok {
		if !errors.Is(err, ipam.ErrExists) {
			t.Fatalf("create of existing %s %q: %v, want ErrExists", kind, key, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("create %s %q: %v", kind, key, err)
	}
	sm.wrote(t, kind, key, v, rev)
}

// refused checks the error of a write the model says must fail.
func (sm *storeModel) refused(t *rapid.T, op string, kind ipam.Kind, key string, rev ipam.Revision, err error) bool {
	cur, ok := sm.m[kind][key]
	switch {
	case !ok:
		if !errors.Is(err, ipam.ErrNotFound) {
			t.Fatalf("%s of missing %s %q: %v, want ErrNotFound", op, kind, key, err)
		}
		return true
	case cur.rev != rev:
		if !errors.Is(err, ipam.ErrConflict) {
			t.Fatalf("%s of %s %q at revision %d (now %d): %v, want ErrConflict", op, kind, key, rev, cur.rev, err)
		}
		return true
	case err != nil:
		t.Fatalf("%s %s %q: %v", op, kind, key, err)
	}
	return false
}

func (sm *storeModel) Update(t *rapid.T) {
	kind, key := sm.draw(t)
	rev := sm.revOf(t, kind, key)
	v, b := sm.value(t, kind)
	var got ipam.Revision
	var err error
	if b != nil {
		got, err = sm.s.UpdateBlock(t.Context(), key, b, rev)
	} else {
		got, err = sm.s.Update(t.Context(), kind, key, v, rev)
	}
	if !sm.refused(t, "update", kind, key, rev, err) {
		sm.wrote(t, kind, key, v, got)
	}
}

func (sm *storeModel) Delete(t *rapid.T) {
	kind, key := sm.draw(t)
	rev := sm.revOf(t, kind, key)
	err := sm.s.Delete(t.Context(), kind, key, rev)
	if !sm.refused(t, "delete", kind, key, rev, err) {
		sm.stale = rev
		delete(sm.m[kind], key)
	}
}

func (sm *storeModel) Get(t *rapid.T) {
	kind, key := sm.draw(t)
	rec, err := sm.s.Get(t.Context(), kind, key)
	want, ok := sm.m[kind][key]
	switch {
	case !ok:
		if !errors.Is(err, ipam.ErrNotFound) {
			t.Fatalf("get of missing %s %q: %v, %v", kind, key, rec, err)
		}
	case err != nil || rec.Revision != want.rev || !bytes.Equal(rec.Value, want.value) || rec.Key != key:
		t.Fatalf("get %s %q = %q at %d, %v; want %q at %d", kind, key, rec.Value, rec.Revision, err, want.value, want.rev)
	}
}

// Check lists every kind and compares it with the model.
func (sm *storeModel) Check(t *rapid.T) {
	for _, kind := range modelKinds {
		recs, err := sm.s.List(t.Context(), kind, ipam.KeyRange{})
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, r := range recs {
			want, ok := sm.m[kind][r.Key]
			if !ok || r.Revision != want.rev || !bytes.Equal(r.Value, want.value) {
				t.Fatalf("list %s: %q = %q at %d; model %v (present %v)", kind, r.Key, r.Value, r.Revision, want, ok)
			}
			keys = append(keys, r.Key)
		}
		if !slices.IsSorted(keys) || len(keys) != len(sm.m[kind]) || sm.s.Len(kind) != len(keys) {
			t.Fatalf("list %s: keys %q, model has %d", kind, keys, len(sm.m[kind]))
		}
	}
}

// ListRange lists one kind over a range of keys (bounds on, between and
// around the keys) and compares it with the model.
func (sm *storeModel) ListRange(t *rapid.T) {
	kind := rapid.SampledFrom(modelKinds).Draw(t, "kind")
	bounds := []string{"", "a", "ab", "b", "bb", "c", "d"}
	r := ipam.KeyRange{Start: rapid.SampledFrom(bounds).Draw(t, "start"), End: rapid.SampledFrom(bounds).Draw(t, "end")}
	recs, err := sm.s.List(t.Context(), kind, r)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for key := range sm.m[kind] {
		if r.Contains(key) {
			want = append(want, key)
		}
	}
	slices.Sort(want)
	var keys []string
	for _, rec := range recs {
		m := sm.m[kind][rec.Key]
		if rec.Revision != m.rev || !bytes.Equal(rec.Value, m.value) {
			t.Fatalf("list %s %v: %q = %q at %d; model %q at %d", kind, r, rec.Key, rec.Value, rec.Revision, m.value, m.rev)
		}
		keys = append(keys, rec.Key)
	}
	if !slices.Equal(keys, want) {
		t.Fatalf("list %s %v: keys %q, model %q", kind, r, keys, want)
	}
}

// Snapshot replaces the store with one loaded from its snapshot, which
// must go on exactly as the store would have: the same records at the
// same revisions, and no revision handed out again.
func (sm *storeModel) Snapshot(t *rapid.T) {
	var buf bytes.Buffer
	if _, err := sm.s.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	s, err := memstore.Load(&buf)
	if err != nil {
		t.Fatal(err)
	}
	sm.s = s
}

func TestStoreMatchesModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		sm := &storeModel{s: memstore.New(), m: map[ipam.Kind]map[string]modelRecord{}, seen: map[ipam.Revision]bool{}}
		for _, k := range modelKinds {
			sm.m[k] = map[string]modelRecord{}
		}
		t.Repeat(rapid.StateMachineActions(sm))
	})
}
