package etcdstore_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
	"github.com/carve-ipam/carve/pool"
)

// cachedKind reports whether an allocator caches records of kind under
// their generation, so that the store watches them: every kind but blocks
// and handles.
func cachedKind(k ipam.Kind) bool { return k != ipam.KindBlock && k != ipam.KindHandle }

// TestGenerationsSeeOtherStores checks that a store's generations of the
// kinds an allocator caches follow writes made through another store
// (another process, as far as the watch can tell), kind by kind, and that
// those of blocks and handles, which it does not watch, change on every
// call.
func TestGenerationsSeeOtherStores(t *testing.T) {
	prefix := freshPrefix()
	mine := newStore(t, newClient(t), etcdstore.Options{Prefix: prefix})
	theirs := newStore(t, newClient(t), etcdstore.Options{Prefix: prefix})
	ctx := t.Context()
	var worst time.Duration
	for _, k := range ipam.Kinds {
		if !cachedKind(k) {
			if g := mine.Generation(k); mine.Generation(k) == g {
				t.Errorf("Generation(%s) held still, though the store does not watch the kind", k)
			}
			continue
		}
		before := map[ipam.Kind]uint64{}
		for _, o := range ipam.Kinds {
			before[o] = mine.Generation(o)
		}
		start := time.Now()
		if _, err := theirs.Create(ctx, k, "x", []byte("v")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "Generation("+k.String()+") moves after another store's write", func() bool {
			return mine.Generation(k) != before[k]
		})
		worst = max(worst, time.Since(start))
		for _, o := range ipam.Kinds {
			if o != k && cachedKind(o) && mine.Generation(o) != before[o] {
				t.Errorf("a write of a %s record moved Generation(%s)", k, o)
			}
		}
	}
	t.Logf("the slowest watch delivery took %v (write included)", worst)
}

// TestGenerationsIgnoreOtherPrefixes checks that writes under another
// prefix, even one that starts with the store's, do not move generations.
func TestGenerationsIgnoreOtherPrefixes(t *testing.T) {
	c := newClient(t)
	prefix := freshPrefix()
	s := newStore(t, c, etcdstore.Options{Prefix: prefix})
	ctx := t.Context()
	// A write the watch must see, to know when it has caught up.
	marker := newStore(t, c, etcdstore.Options{Prefix: prefix})
	for _, key := range []string{prefix[:len(prefix)-1] + "x/pool/x", prefix + "unknownkind/x", prefix + "pool"} {
		if _, err := c.Put(ctx, key, "foreign"); err != nil {
			t.Fatal(err)
		}
	}
	before := s.Generation(ipam.KindPool)
	// Read before the write: the watch may deliver it before Create returns.
	h := s.Generation(ipam.KindNode)
	if _, err := marker.Create(ctx, ipam.KindNode, "marker", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the watch delivers the marker", func() bool { return s.Generation(ipam.KindNode) != h })
	if s.Generation(ipam.KindPool) != before {
		t.Fatal("foreign keys moved Generation(pool)")
	}
}

// TestGenerationsAfterCompaction starts a watch behind a compaction: the
// store must count every kind as changed, restart, and follow new writes.
func TestGenerationsAfterCompaction(t *testing.T) {
	c := newClient(t)
	prefix := freshPrefix()
	ctx := t.Context()
	resp, err := c.Put(ctx, prefix+"pool/old", "v")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	nctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := etcdstore.NewFromRevision(nctx, c, etcdstore.Options{Prefix: prefix}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, k := range ipam.Kinds {
		waitFor(t, "Generation("+k.String()+") moves after the compaction", func() bool { return s.Generation(k) != 0 })
	}
	// Back on track: the numbers hold still...
	waitFor(t, "generations hold still after the watch restarts", func() bool {
		g := s.Generation(ipam.KindConfig)
		time.Sleep(20 * time.Millisecond)
		return s.Generation(ipam.KindConfig) == g
	})
	// ...and move on another store's write.
	other := newStore(t, c, etcdstore.Options{Prefix: prefix})
	g := s.Generation(ipam.KindConfig)
	if _, err := other.Create(ctx, ipam.KindConfig, "default", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Generation(config) follows writes after the restart", func() bool { return s.Generation(ipam.KindConfig) != g })
}

// TestGenerationsWithoutWatch checks that after Close, or when the client
// is closed under the store, every call gives a new number, so that no
// allocator trusts a cache that nobody keeps up to date.
func TestGenerationsWithoutWatch(t *testing.T) {
	s := newStore(t, newClient(t), etcdstore.Options{})
	g := s.Generation(ipam.KindPool)
	if s.Generation(ipam.KindPool) != g {
		t.Fatal("Generation moves while nothing changes and the watch runs")
	}
	s.Close()
	if a, b := s.Generation(ipam.KindPool), s.Generation(ipam.KindPool); a == b || a == g {
		t.Fatalf("after Close, Generation returned %d, %d after %d; want a new number on every call", a, b, g)
	}
	s.Close() // a second Close is harmless

	c, err := dial(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	s2 := newStore(t, c, etcdstore.Options{})
	c.Close()
	waitFor(t, "Generation moves on every call once the client is closed", func() bool {
		first := s2.Generation(ipam.KindAffinity)
		return s2.Generation(ipam.KindAffinity) != first
	})
	done := make(chan struct{})
	go func() { s2.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs after the client was closed")
	}
}

// TestAllocatorsInTwoProcesses shows the lag the package documents: an
// allocator on one store sees a pool another store's allocator created
// once the watch delivers it, and assigns from it.
func TestAllocatorsInTwoProcesses(t *testing.T) {
	prefix := freshPrefix()
	s1 := newStore(t, newClient(t), etcdstore.Options{Prefix: prefix})
	s2 := newStore(t, newClient(t), etcdstore.Options{Prefix: prefix})
	a1, err := ipam.New(s1, ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	a2, err := ipam.New(s2, ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if ps, err := a1.Pools(ctx); err != nil || len(ps) != 0 {
		t.Fatalf("Pools = %v, %v; want none", ps, err)
	}
	if err := a2.CreatePool(ctx, pool.Pool{Name: "p", CIDR: netip.MustParsePrefix("10.1.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first allocator sees the second one's pool", func() bool {
		ps, err := a1.Pools(ctx)
		return err == nil && len(ps) == 1
	})
	res, err := a1.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h1", Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if own, err := a2.Owner(ctx, res.IPv4[0].Addr); err != nil || own.Handle != "h1" {
		t.Fatalf("the second allocator sees %s owned by %+v, %v", res.IPv4[0].Addr, own, err)
	}
	// Disabling the pool in one process stops assignments in the other
	// once the watch delivers the change.
	if err := a2.DisablePool(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first allocator sees the pool disabled", func() bool {
		p, err := a1.Pool(ctx, "p")
		return err == nil && p.Disabled
	})
	if _, err := a1.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h2", Node: "n1"}); err == nil {
		t.Fatal("assigned from a pool another process disabled")
	}
	got, err := a2.ReleaseByHandle(ctx, "h1")
	if err != nil || !slices.Equal(got, []netip.Addr{res.IPv4[0].Addr}) {
		t.Fatalf("release from the other process = %v, %v", got, err)
	}
}
