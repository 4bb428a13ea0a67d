package memstore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
)

func TestConformance(t *testing.T) {
	storetest.RunConformanceTests(t, func(*testing.T) ipam.Store { return memstore.New() })
}

func TestZeroValueIsUsable(t *testing.T) {
	var s memstore.Store
	rev, err := s.Create(t.Context(), ipam.KindPool, "default", []byte("x"))
	if err != nil || rev == 0 {
		t.Fatalf("Create on a zero Store = %d, %v", rev, err)
	}
	if s.Len(ipam.KindPool) != 1 || s.Len(ipam.KindBlock) != 0 {
		t.Fatalf("Len = %d pools, %d blocks; want 1, 0", s.Len(ipam.KindPool), s.Len(ipam.KindBlock))
	}
}

func TestInvalidKind(t *testing.T) {
	s := memstore.New()
	for _, k := range []ipam.Kind{0, 200} {
		if _, err := s.Create(t.Context(), k, "x", nil); err == nil {
			t.Errorf("Create with kind %d succeeded", k)
		}
		if _, err := s.Get(t.Context(), k, "x"); err == nil || errors.Is(err, ipam.ErrNotFound) {
			t.Errorf("Get with kind %d = %v, want an invalid-kind error", k, err)
		}
		if s.Generation(k) != 0 || s.Len(k) != 0 {
			t.Errorf("kind %d has a generation or records", k)
		}
	}
}

// TestListAfterInterleavedWrites checks the lazily rebuilt key order against
// creates and deletes that land between lists.
func TestListAfterInterleavedWrites(t *testing.T) {
	s := memstore.New()
	ctx := t.Context()
	want := map[string]bool{}
	for i := range 200 {
		k := fmt.Sprintf("k%03d", (i*37)%200)
		if _, err := s.Create(ctx, ipam.KindHandle, k, nil); err != nil {
			t.Fatal(err)
		}
		want[k] = true
		if i%3 == 0 {
			rec, err := s.Get(ctx, ipam.KindHandle, k)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(ctx, ipam.KindHandle, k, rec.Revision); err != nil {
				t.Fatal(err)
			}
			delete(want, k)
		}
		if i%7 == 0 {
			recs, err := s.List(ctx, ipam.KindHandle, ipam.KeyRange{})
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != len(want) {
				t.Fatalf("after %d writes List has %d records, want %d", i, len(recs), len(want))
			}
			for j, r := range recs {
				if !want[r.Key] || (j > 0 && recs[j-1].Key >= r.Key) {
					t.Fatalf("List out of order or stale at %d: %q", j, r.Key)
				}
			}
		}
	}
}

func BenchmarkStore(b *testing.B) {
	ctx := context.Background()
	b.Run("op=get", func(b *testing.B) {
		s := memstore.New()
		s.Create(ctx, ipam.KindBlock, "b", []byte("v"))
		b.ReportAllocs()
		for b.Loop() {
			s.Get(ctx, ipam.KindBlock, "b")
		}
	})
	b.Run("op=update", func(b *testing.B) {
		s := memstore.New()
		rev, _ := s.Create(ctx, ipam.KindBlock, "b", []byte("v"))
		v := []byte("w")
		b.ReportAllocs()
		for b.Loop() {
			rev, _ = s.Update(ctx, ipam.KindBlock, "b", v, rev)
		}
	})
	b.Run("op=create-delete", func(b *testing.B) {
		s := memstore.New()
		v := []byte("h")
		b.ReportAllocs()
		for b.Loop() {
			rev, _ := s.Create(ctx, ipam.KindHandle, "h", v)
			s.Delete(ctx, ipam.KindHandle, "h", rev)
		}
	})
}

func ExampleStore() {
	ctx := context.Background()
	s := memstore.New()
	rev, _ := s.Create(ctx, ipam.KindConfig, "default", []byte(`{"strictAffinity":false}`))

	// A writer holding an old revision loses: compare-and-swap.
	_, err := s.Update(ctx, ipam.KindConfig, "default", []byte(`{"strictAffinity":true}`), rev)
	fmt.Println("first update:", err)
	_, err = s.Update(ctx, ipam.KindConfig, "default", []byte(`{}`), rev)
	fmt.Println("stale update conflicts:", errors.Is(err, ipam.ErrConflict))
	// Output:
	// first update: <nil>
	// stale update conflicts: true
}
