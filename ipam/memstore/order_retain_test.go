package memstore

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"weak"

	"github.com/carve-ipam/carve/ipam"
)

// TestLoadedOrderKeepsNoDeletedEntries: a store loaded from a
// snapshot, in which a key is then created in every other chunk of a
// kind's order and half the loaded keys of those chunks deleted (nodes
// replaced over time), keeps no deleted record alive beyond the free list
// of entries: the order's chunks, cut from one array at the load, must not
// hold the entries of records deleted since.
func TestLoadedOrderKeepsNoDeletedEntries(t *testing.T) {
	ctx := t.Context()
	const n = 24 * maxChunk
	keyOf := func(i int) string { return fmt.Sprintf("node-%06d/10.0.0.0-26", i) }
	s := New()
	for i := range n {
		if _, err := s.Create(ctx, ipam.KindAffinity, keyOf(2*i), nil); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if _, err := s.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	s, err := Load(&buf)
	if err != nil {
		t.Fatal(err)
	}
	recs := &s.kinds[ipam.KindAffinity]
	chunks := recs.order.chunks
	if len(chunks) < 3 {
		t.Fatalf("%d chunks: too few for the test", len(chunks))
	}
	touched := (len(chunks) + 1) / 2
	// Half the loaded keys of every other chunk, and a key created in
	// each of those chunks.
	var loaded []string
	for c := 0; c < len(chunks); c += 2 {
		for _, k := range chunks[c][:maxChunk/4] {
			loaded = append(loaded, k.key)
		}
		if _, err := s.Create(ctx, ipam.KindAffinity, chunks[c][0].key+"!", nil); err != nil {
			t.Fatal(err)
		}
	}
	if len(loaded) < 2*maxFree {
		t.Fatalf("%d keys to delete: too few for the test", len(loaded))
	}
	var gone []weak.Pointer[entry]
	for _, k := range loaded {
		rec, err := s.Get(ctx, ipam.KindAffinity, k)
		if err != nil {
			t.Fatal(err)
		}
		gone = append(gone, weak.Make(recs.byKey[k]))
		if err := s.Delete(ctx, ipam.KindAffinity, k, rec.Revision); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.GC()
	alive := 0
	for _, w := range gone {
		if w.Value() != nil {
			alive++
		}
	}
	// The free list keeps up to maxFree deleted entries for reuse; no
	// more may stay.
	if alive > maxFree {
		t.Fatalf("%d of %d deleted records' entries still reachable, want at most %d (the free list)", alive, len(gone), maxFree)
	}
	got, err := s.List(ctx, ipam.KindAffinity, ipam.KeyRange{})
	if err != nil {
		t.Fatal(err)
	}
	if want := n - len(loaded) + touched; len(got) != want {
		t.Fatalf("List: %d records, want %d", len(got), want)
	}
	runtime.KeepAlive(s)
}
