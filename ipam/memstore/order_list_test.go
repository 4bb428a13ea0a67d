package memstore_test

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"testing"

	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// TestListAcrossChunks: kinds of a few thousand records (several
// chunks of the key order, for the eager affinity kind and the lazily
// ordered handle kind), created and deleted in random order and in runs,
// with the store sometimes saved and loaded again, list exactly the
// records of any range: ranges that start and end on existing keys, on
// keys just before and after them, on nothing, and empty ranges.
func TestListAcrossChunks(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		ctx := t.Context()
		s := memstore.New()
		kinds := []ipam.Kind{ipam.KindAffinity, ipam.KindHandle}
		model := map[ipam.Kind]map[string]ipam.Revision{}
		for _, k := range kinds {
			model[k] = map[string]ipam.Revision{}
		}
		space := rapid.SampledFrom([]int{3000, 1500, 700, 100}).Draw(t, "space")
		keyOf := func(i int) string { return fmt.Sprintf("k%05d", i) }
		steps := rapid.IntRange(1, 12).Draw(t, "steps")
		for range steps {
			kind := rapid.SampledFrom(kinds).Draw(t, "kind")
			m := model[kind]
			switch rapid.IntRange(0, 4).Draw(t, "op") {
			case 0, 1:
				// A run of creates, in order or scattered.
				n := rapid.SampledFrom([]int{1500, 600, 50, 1}).Draw(t, "creates")
				from := rapid.IntRange(0, space-1).Draw(t, "from")
				step := rapid.SampledFrom([]int{7, 1, 2, 613}).Draw(t, "step")
				for j := range n {
					k := keyOf((from + j*step) % space)
					if _, ok := m[k]; ok {
						continue
					}
					rev, err := s.Create(ctx, kind, k, []byte(k))
					if err != nil {
						t.Fatal(err)
					}
					m[k] = rev
				}
			case 2:
				// Deletes: a share of the keys, or a run.
				keep := rapid.IntRange(0, 9).Draw(t, "keep in 10")
				lo := rapid.IntRange(0, space).Draw(t, "lo")
				hi := rapid.IntRange(lo, space).Draw(t, "hi")
				for k, rev := range m {
					var i int
					fmt.Sscanf(k, "k%d", &i)
					if i < lo || i >= hi || i%10 < keep {
						continue
					}
					if err := s.Delete(ctx, kind, k, rev); err != nil {
						t.Fatal(err)
					}
					delete(m, k)
				}
			case 3:
				var buf bytes.Buffer
				if _, err := s.WriteTo(&buf); err != nil {
					t.Fatal(err)
				}
				var err error
				if s, err = memstore.Load(&buf); err != nil {
					t.Fatal(err)
				}
			default:
			}
			for range 6 {
				kind := rapid.SampledFrom(kinds).Draw(t, "list kind")
				r := drawRange(t, model[kind], space, keyOf)
				got, err := s.List(ctx, kind, r)
				if err != nil {
					t.Fatal(err)
				}
				var want []string
				for k := range model[kind] {
					if r.Contains(k) {
						want = append(want, k)
					}
				}
				slices.Sort(want)
				keys := make([]string, len(got))
				for i, rec := range got {
					keys[i] = rec.Key
					if rec.Revision != model[kind][rec.Key] || string(rec.Value) != rec.Key {
						t.Fatalf("List %s %+v: record %q at %d with %q, model %d", kind, r, rec.Key, rec.Revision, rec.Value, model[kind][rec.Key])
					}
				}
				if !slices.Equal(keys, want) {
					t.Fatalf("List %s %+v: %d keys, want %d (first %v, want %v)", kind, r, len(keys), len(want), keys[:min(3, len(keys))], want[:min(3, len(want))])
				}
			}
		}
	})
}

// drawRange draws a key range: bounds at held keys, just before or after
// them, at any key of the space, or open.
func drawRange(t *rapid.T, m map[string]ipam.Revision, space int, keyOf func(int) string) ipam.KeyRange {
	held := make([]string, 0, len(m))
	for k := range m {
		held = append(held, k)
	}
	slices.Sort(held)
	bound := func(label string) string {
		switch rapid.IntRange(0, 4).Draw(t, label+" kind") {
		case 0:
			return ""
		case 1, 2:
			if len(held) == 0 {
				return ""
			}
			k := held[rapid.IntRange(0, len(held)-1).Draw(t, label)]
			switch rapid.IntRange(0, 2).Draw(t, label+" shift") {
			case 1:
				return k + "\x00" // just after k
			case 2:
				return k[:len(k)-1] // just before k and its neighbours
			}
			return k
		default:
			return keyOf(rapid.IntRange(0, space).Draw(t, label))
		}
	}
	return ipam.KeyRange{Start: bound("start"), End: bound("end")}
}

// TestConcurrentListWhileWriting: Lists under the read lock while
// other goroutines create and delete keys all over a kind of several
// chunks never see a key twice, out of order or out of range, and always
// see the keys no one touches.
func TestConcurrentListWhileWriting(t *testing.T) {
	ctx := t.Context()
	s := memstore.New()
	const n = 4000
	keyOf := func(i int) string { return fmt.Sprintf("k%05d", i) }
	for _, kind := range []ipam.Kind{ipam.KindAffinity, ipam.KindHandle} {
		for i := 0; i < n; i += 4 { // every fourth key stays
			if _, err := s.Create(ctx, kind, keyOf(i), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				for i := 1 + w; i < n; i += 4 {
					select {
					case <-stop:
						return
					default:
					}
					for _, kind := range []ipam.Kind{ipam.KindAffinity, ipam.KindHandle} {
						rev, err := s.Create(ctx, kind, keyOf(i), nil)
						if err != nil {
							t.Error(err)
							return
						}
						if i%3 == 0 {
							if err := s.Delete(ctx, kind, keyOf(i), rev); err != nil {
								t.Error(err)
								return
							}
						}
					}
				}
				for i := 1 + w; i < n; i += 4 {
					for _, kind := range []ipam.Kind{ipam.KindAffinity, ipam.KindHandle} {
						if rec, err := s.Get(ctx, kind, keyOf(i)); err == nil {
							if err := s.Delete(ctx, kind, rec.Key, rec.Revision); err != nil {
								t.Error(err)
								return
							}
						}
					}
				}
			}
		}()
	}
	for j := range 200 {
		kind := []ipam.Kind{ipam.KindAffinity, ipam.KindHandle}[j%2]
		start := keyOf((j * 97) % n)
		r := ipam.KeyRange{Start: start, End: keyOf((j*97)%n + 1500)}
		got, err := s.List(ctx, kind, r)
		if err != nil {
			t.Fatal(err)
		}
		stay := 0
		for i, rec := range got {
			if !r.Contains(rec.Key) || (i > 0 && got[i-1].Key >= rec.Key) {
				t.Fatalf("List %+v: %q at %d out of range or order", r, rec.Key, i)
			}
			var k int
			fmt.Sscanf(rec.Key, "k%d", &k)
			if k%4 == 0 {
				stay++
			}
		}
		want := 0
		for i := 0; i < n; i += 4 {
			if r.Contains(keyOf(i)) {
				want++
			}
		}
		if stay != want {
			t.Fatalf("List %+v: %d of the untouched keys, want %d", r, stay, want)
		}
	}
	close(stop)
	wg.Wait()
}
