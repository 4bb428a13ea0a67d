package etcdstore_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
)

// oddKeys are keys carve may pass (valid UTF-8, no control
// characters) that a key-value store could mangle or confuse.
var oddKeys = []string{
	"with space", "trailing ", "ünïcödé", "emoji 😀", "ÿ", "slash/inside", "p//q", "p/q", "p/",
	"a%2Fb", "..", ".", "UPPER", "upper", "~", "block/x", "0", strings.Repeat("k", ipam.MaxKeyLen),
}

// TestSiblingPrefixesAndOddKeys runs stores under prefixes of which
// one is a prefix of the other's bytes ("…/a/" and "…/ab/", and "…/a0/",
// which sorts right after the ends of "…/a/"'s ranges), each holding the
// same odd keys with its own values: every store sees exactly its own
// records, byte for byte and in byte order, ranges select what they
// should, and one store's writes never move another's generations.
func TestSiblingPrefixesAndOddKeys(t *testing.T) {
	c := newClient(t)
	ctx := t.Context()
	base := freshPrefix()
	names := []string{"a", "ab", "a0"}
	stores := map[string]*etcdstore.Store{}
	for _, n := range names {
		stores[n] = newStore(t, c, etcdstore.Options{Prefix: base + n + "/"})
	}
	// Generations of the first store before anything is written.
	first := stores["a"]
	gens := map[ipam.Kind]uint64{}
	for _, k := range ipam.Kinds {
		gens[k] = first.Generation(k)
	}
	// The other stores write first, so that the first store's watch has
	// had every chance to see their writes by the time it sees its own.
	for _, n := range []string{"ab", "a0", "a"} {
		for _, k := range []ipam.Kind{ipam.KindBlock, ipam.KindHandle} {
			for _, key := range oddKeys {
				if _, err := stores[n].Create(ctx, k, key, []byte(n+":"+key)); err != nil {
					t.Fatalf("store %s: Create(%s %q): %v", n, k, key, err)
				}
			}
		}
		if n != "a" {
			continue
		}
		// A marker, written through another store under the first one's
		// prefix, so that only the watch moves the first store's
		// generation: once it delivers the marker, it has delivered
		// everything before it.
		marker := newStore(t, c, etcdstore.Options{Prefix: first.Prefix()})
		g := first.Generation(ipam.KindReservation)
		if _, err := marker.Create(ctx, ipam.KindReservation, "marker", nil); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the first store's watch delivers the marker", func() bool { return first.Generation(ipam.KindReservation) != g })
	}
	for _, k := range []ipam.Kind{ipam.KindPool, ipam.KindAffinity, ipam.KindConfig, ipam.KindNode} {
		if first.Generation(k) != gens[k] {
			t.Errorf("Generation(%s) of store %q moved, though nobody wrote a %s record", k, first.Prefix(), k)
		}
	}

	sorted := slices.Clone(oddKeys)
	slices.Sort(sorted)
	for _, n := range names {
		s := stores[n]
		for _, k := range []ipam.Kind{ipam.KindBlock, ipam.KindHandle} {
			recs, err := s.List(ctx, k, ipam.KeyRange{})
			if err != nil {
				t.Fatal(err)
			}
			var keys []string
			for _, r := range recs {
				keys = append(keys, r.Key)
				if want := n + ":" + r.Key; string(r.Value) != want {
					t.Errorf("store %s: List(%s) gives %q the value %q, want %q", n, k, r.Key, r.Value, want)
				}
			}
			if !slices.Equal(keys, sorted) {
				t.Errorf("store %s: List(%s) keys\n%q\nwant\n%q", n, k, keys, sorted)
			}
			for _, key := range oddKeys {
				rec, err := s.Get(ctx, k, key)
				if err != nil || rec.Key != key || string(rec.Value) != n+":"+key {
					t.Errorf("store %s: Get(%s %q) = %q %q, %v", n, k, key, rec.Key, rec.Value, err)
				}
				// A range of the keys starting with key.
				got, err := s.List(ctx, k, ipam.PrefixRange(key))
				if err != nil {
					t.Fatal(err)
				}
				var want, gotKeys []string
				for _, o := range sorted {
					if strings.HasPrefix(o, key) {
						want = append(want, o)
					}
				}
				for _, r := range got {
					gotKeys = append(gotKeys, r.Key)
				}
				if !slices.Equal(gotKeys, want) {
					t.Errorf("store %s: List(%s, PrefixRange(%.20q)) = %q, want %q", n, k, key, gotKeys, want)
				}
			}
		}
	}
}

// TestListLarge lists a kind of several thousand records, with
// values large enough for the response to run to megabytes, whole and in
// ranges: every record comes back, in order, once.
func TestListLarge(t *testing.T) {
	c := newClient(t)
	prefix := freshPrefix()
	s := newStore(t, c, etcdstore.Options{Prefix: prefix})
	ctx := t.Context()
	const n = 4000
	value := strings.Repeat("v", 1500)
	for i := 0; i < n; i += 100 {
		var ops []clientv3.Op
		for j := i; j < i+100; j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("%shandle/h%05d", prefix, j), value))
		}
		if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := s.List(ctx, ipam.KindHandle, ipam.KeyRange{})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != n {
		t.Fatalf("List of %d records gave %d", n, len(recs))
	}
	for i, r := range recs {
		if want := fmt.Sprintf("h%05d", i); r.Key != want || len(r.Value) != len(value) || r.Revision == 0 {
			t.Fatalf("record %d: %q (%d bytes, revision %d), want %q", i, r.Key, len(r.Value), r.Revision, want)
		}
	}
	recs, err = s.List(ctx, ipam.KindHandle, ipam.KeyRange{Start: "h01000", End: "h03000"})
	if err != nil || len(recs) != 2000 || recs[0].Key != "h01000" || recs[1999].Key != "h02999" {
		t.Fatalf("List of a range of 2000 records: %d records, %v", len(recs), err)
	}
}
