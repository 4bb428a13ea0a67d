package memstore

import (
	"fmt"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/ipam"
)

// TestKeyOrderModel applies random creates and deletes, enough to split
// and join chunks, to a keyOrder and to a sorted slice, and checks after
// each batch that the two hold the same keys and entries in the same order,
// that seek finds what a search of the slice finds, and that no chunk is
// empty or over maxChunk.
func TestKeyOrderModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var o keyOrder
		var model []keyed
		entries := map[string]*entry{}
		keyOf := func(i int) string { return fmt.Sprintf("k%05d", i) }
		space := rapid.IntRange(1, 4*maxChunk).Draw(t, "space")
		if rapid.Bool().Draw(t, "reset") {
			// Start from a sorted load, as a snapshot or a rebuilt handle
			// order does.
			for i := 0; i < space; i += 2 {
				k := keyOf(i)
				entries[k] = &entry{}
				model = append(model, keyed{k, entries[k]})
			}
			o.reset(slices.Clone(model))
		}
		batches := rapid.IntRange(1, 8).Draw(t, "batches")
		for range batches {
			n := rapid.IntRange(0, 3*maxChunk).Draw(t, "ops")
			del := rapid.Float64Range(0, 1).Draw(t, "delete share")
			for range n {
				k := keyOf(rapid.IntRange(0, space-1).Draw(t, "key"))
				i, held := slices.BinarySearchFunc(model, k, func(e keyed, k string) int {
					return cmpString(e.key, k)
				})
				if held && rapid.Float64Range(0, 1).Draw(t, "roll") < del {
					o.remove(k)
					model = slices.Delete(model, i, i+1)
					continue
				}
				if !held {
					e := &entry{}
					entries[k] = e
					o.insert(k, e)
					model = slices.Insert(model, i, keyed{k, e})
				}
			}
			checkOrder(t, &o, model)
			for range 4 {
				start := keyOf(rapid.IntRange(0, space).Draw(t, "seek"))
				i, _ := slices.BinarySearchFunc(model, start, func(e keyed, k string) int { return cmpString(e.key, k) })
				// The keys a chunk at a time, as List takes them.
				var got []keyed
				cu := o.seek(start)
				for ch := cu.rest(); len(ch) > 0; ch = cu.rest() {
					got = append(got, ch...)
				}
				if !slices.Equal(got, model[i:]) {
					t.Fatalf("seek(%q): %d keys from there, want %d", start, len(got), len(model)-i)
				}
			}
		}
	})
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// checkOrder fails t unless o holds exactly model, in its order, in chunks
// of 1 to maxChunk keys.
func checkOrder(t *rapid.T, o *keyOrder, model []keyed) {
	for c, ch := range o.chunks {
		if len(ch) == 0 || len(ch) > maxChunk {
			t.Fatalf("chunk %d of %d holds %d keys", c, len(o.chunks), len(ch))
		}
	}
	if got := o.all(); !slices.Equal(got, model) {
		t.Fatalf("order holds %d keys, the model %d; they differ", len(got), len(model))
	}
	if o.len() != len(model) {
		t.Fatalf("len = %d, want %d", o.len(), len(model))
	}
}

// TestKeyOrderChunksStayLarge: deleting nearly every key, in rounds,
// leaves the keys that are left in few chunks (at most four per maxChunk
// keys, plus one), so a walk is not a chain of tiny chunks.
func TestKeyOrderChunksStayLarge(t *testing.T) {
	var o keyOrder
	const n = 20 * maxChunk
	for i := range n {
		o.insert(fmt.Sprintf("k%06d", i), &entry{})
	}
	for round, keep := range []int{2, 10, 50} {
		for i := range n {
			if i%keep != 0 {
				o.remove(fmt.Sprintf("k%06d", i))
			}
		}
		held := o.len()
		if held != (n+keep-1)/keep {
			t.Fatalf("round %d: %d keys held, want %d", round, held, (n+keep-1)/keep)
		}
		if limit := 4*held/maxChunk + 1; len(o.chunks) > limit {
			t.Fatalf("round %d: %d keys in %d chunks, want at most %d", round, held, len(o.chunks), limit)
		}
	}
}

// BenchmarkCreateDelete is a create and a delete of a key in the middle of
// a kind that holds `records` keys already (affinities, say, whose keys
// start with node names and so are created in no order): the cost must
// not grow with the records.
func BenchmarkCreateDelete(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
			s := New()
			ctx := b.Context()
			for i := range n {
				if _, err := s.Create(ctx, ipam.KindAffinity, fmt.Sprintf("node-%07d/10.0.0.0-26", 2*i), nil); err != nil {
					b.Fatal(err)
				}
			}
			key := fmt.Sprintf("node-%07d/10.0.0.0-26", n+1) // in the middle
			b.ReportAllocs()
			for b.Loop() {
				rev, err := s.Create(ctx, ipam.KindAffinity, key, nil)
				if err != nil {
					b.Fatal(err)
				}
				if err := s.Delete(ctx, ipam.KindAffinity, key, rev); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// all returns every key in order, with its entry, in a new slice.
func (o *keyOrder) all() []keyed {
	out := make([]keyed, 0, o.len())
	for _, ch := range o.chunks {
		out = append(out, ch...)
	}
	return out
}

// len returns the number of keys.
func (o *keyOrder) len() int {
	n := 0
	for _, ch := range o.chunks {
		n += len(ch)
	}
	return n
}
