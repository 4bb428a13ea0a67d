package memstore_test

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
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
// mix blocks kept decoded (CreateBlock, UpdateBlock) with bytes, and
// write several records at once (Commit).
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

// Commit commits 1 to 4 writes to different records: creates, updates at
// the current revision or a stale one, and deletes, of bytes and of
// blocks kept decoded. The model makes the writes only when every check
// passes; otherwise the store must name the first write whose check
// fails, with the error the single write would give, and change nothing.
// Generations count the writes of each kind exactly, as memstore
// documents, and each write gets a revision of its own.
func (sm *storeModel) Commit(t *rapid.T) {
	type record struct {
		kind ipam.Kind
		key  string
	}
	var all []record
	for _, k := range modelKinds {
		for _, key := range modelKeys {
			all = append(all, record{k, key})
		}
	}
	targets := rapid.SliceOfNDistinct(rapid.SampledFrom(all), 1, 4, func(r record) record { return r }).Draw(t, "records")
	writes := make([]ipam.Write, len(targets))
	values := make([][]byte, len(targets)) // what a read of each record must return after
	for i, r := range targets {
		w := ipam.Write{Kind: r.kind, Key: r.key}
		cur, ok := sm.m[r.kind][r.key]
		switch op := rapid.SampledFrom([]string{"create", "update", "delete"}).Draw(t, "op"); {
		case rapid.IntRange(0, 3).Draw(t, "checked") > 0:
			// Mostly a write whose check passes, so that commits of
			// several writes succeed often enough.
			if ok {
				w.Rev, w.Delete = cur.rev, op == "delete"
			}
		case op == "update":
			w.Rev = sm.revOf(t, r.kind, r.key) // zero now and then: a create
		case op == "delete":
			w.Delete = true
			w.Rev = sm.revOf(t, r.kind, r.key)
		}
		if !w.Delete {
			values[i], w.Block = sm.value(t, r.kind)
			if w.Block == nil {
				w.Value = values[i]
			}
		}
		writes[i] = w
	}

	// Now and then a done context, which refuses the commit before any
	// check. Else the first write whose check fails, and its error.
	ctx := t.Context()
	cancelled := rapid.IntRange(0, 9).Draw(t, "cancelled") == 0
	if cancelled {
		c, cancel := context.WithCancel(ctx)
		cancel()
		ctx = c
	}
	failAt, wantErr := -1, error(nil)
	for i, w := range writes {
		cur, ok := sm.m[w.Kind][w.Key]
		switch {
		case !w.Delete && w.Rev == 0:
			if ok {
				wantErr = ipam.ErrExists
			}
		case !ok:
			wantErr = ipam.ErrNotFound
		case cur.rev != w.Rev:
			wantErr = ipam.ErrConflict
		}
		if wantErr != nil {
			failAt = i
			break
		}
	}

	gens := map[ipam.Kind]uint64{}
	for _, k := range ipam.Kinds {
		gens[k] = sm.s.Generation(k)
	}
	const unset = ipam.Revision(1 << 62)
	revs := slices.Repeat([]ipam.Revision{unset}, len(writes)+rapid.IntRange(0, 2).Draw(t, "room"))
	err := sm.s.Commit(ctx, writes, revs)
	desc := describe(writes)

	moves := map[ipam.Kind]uint64{}
	switch {
	case cancelled:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("commit %s with a cancelled context: %v", desc, err)
		}
	case failAt >= 0:
		var ce *ipam.CommitError
		if !errors.As(err, &ce) || ce.Index != failAt || !errors.Is(err, wantErr) {
			t.Fatalf("commit %s: %v; want a CommitError at write %d matching %v", desc, err, failAt, wantErr)
		}
	default:
		if err != nil {
			t.Fatalf("commit %s: %v", desc, err)
		}
		for i, w := range writes {
			moves[w.Kind]++
			if w.Delete {
				if revs[i] != 0 {
					t.Fatalf("commit %s: revision %d for write %d, a delete", desc, revs[i], i)
				}
				sm.stale = w.Rev
				delete(sm.m[w.Kind], w.Key)
				continue
			}
			sm.wrote(t, w.Kind, w.Key, values[i], revs[i])
		}
		for i := len(writes); i < len(revs); i++ {
			if revs[i] != unset {
				t.Fatalf("commit of %d writes wrote revs[%d]", len(writes), i)
			}
		}
	}
	for _, k := range ipam.Kinds {
		if got := sm.s.Generation(k); got != gens[k]+moves[k] {
			t.Fatalf("commit %s (error %v): generation of %s went from %d to %d, want %d more", desc, err, k, gens[k], got, moves[k])
		}
	}

	// Read the records back, one by one and by List, in either order: a
	// block the commit kept is encoded by whichever read comes first.
	getFirst := rapid.Bool().Draw(t, "get first")
	if !getFirst {
		sm.Check(t)
	}
	for _, r := range targets {
		rec, err := sm.s.Get(t.Context(), r.kind, r.key)
		want, ok := sm.m[r.kind][r.key]
		switch {
		case !ok:
			if !errors.Is(err, ipam.ErrNotFound) {
				t.Fatalf("after commit %s: get of missing %s %q: %q at %d, %v", desc, r.kind, r.key, rec.Value, rec.Revision, err)
			}
		case err != nil || rec.Revision != want.rev || !bytes.Equal(rec.Value, want.value):
			t.Fatalf("after commit %s: get %s %q = %q at %d, %v; want %q at %d", desc, r.kind, r.key, rec.Value, rec.Revision, err, want.value, want.rev)
		}
	}
	if getFirst {
		sm.Check(t)
	}
}

// describe names the writes of a commit, for failure messages.
func describe(writes []ipam.Write) string {
	var b strings.Builder
	for i, w := range writes {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(w.String())
	}
	return b.String()
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
