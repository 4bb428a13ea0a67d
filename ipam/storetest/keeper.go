package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
)

func hasBlockKeeper(s ipam.Store) bool {
	_, ok := s.(ipam.BlockKeeper)
	return ok
}

// testBlock returns a /26 block holding n addresses of handle h.
func testBlock(t *testing.T, h string, n int) *block.Block {
	t.Helper()
	b, err := block.New(netip.MustParsePrefix("10.0.0.0/26"))
	if err != nil {
		t.Fatal(err)
	}
	b.Allocate(nil, n, block.Owner{Handle: h, Attrs: map[string]string{"node": "n1"}})
	return b
}

func encoding(t *testing.T, b *block.Block) []byte {
	t.Helper()
	v, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// testBlockKeeper checks that CreateBlock and UpdateBlock are Create and
// Update of the block's encoding, mixed freely with the byte operations,
// and that the store does not modify the blocks it keeps.
func testBlockKeeper(t *testing.T, s ipam.Store) {
	k := s.(ipam.BlockKeeper)
	c := ctx(t)
	b1 := testBlock(t, "h1", 3)
	want1 := encoding(t, b1)
	rev, err := k.CreateBlock(c, "b", b1)
	if err != nil || rev == 0 {
		t.Fatalf("CreateBlock = %d, %v; want a non-zero revision", rev, err)
	}
	wantRecord(t, s, ipam.KindBlock, "b", want1, rev)
	if _, err := k.CreateBlock(c, "b", testBlock(t, "h2", 1)); !errors.Is(err, ipam.ErrExists) {
		t.Fatalf("CreateBlock over a record: %v, want ErrExists", err)
	}
	if _, err := s.Create(c, ipam.KindBlock, "b", []byte("bytes")); !errors.Is(err, ipam.ErrExists) {
		t.Fatalf("Create over a kept block: %v, want ErrExists", err)
	}

	b2 := testBlock(t, "h2", 5)
	want2 := encoding(t, b2)
	if _, err := k.UpdateBlock(c, "b", b2, rev+1000); !errors.Is(err, ipam.ErrConflict) {
		t.Fatalf("UpdateBlock at a stale revision: %v, want ErrConflict", err)
	}
	if _, err := k.UpdateBlock(c, "missing", b2, rev); !errors.Is(err, ipam.ErrNotFound) {
		t.Fatalf("UpdateBlock of a missing record: %v, want ErrNotFound", err)
	}
	wantMissing(t, s, ipam.KindBlock, "missing")
	// The refused writes changed nothing.
	wantRecord(t, s, ipam.KindBlock, "b", want1, rev)
	rev2, err := k.UpdateBlock(c, "b", b2, rev)
	if err != nil || rev2 == 0 || rev2 == rev {
		t.Fatalf("UpdateBlock = %d, %v; want a new revision (was %d)", rev2, err, rev)
	}
	wantRecord(t, s, ipam.KindBlock, "b", want2, rev2)

	// Bytes over a kept block, and a kept block over bytes.
	rev3, err := s.Update(c, ipam.KindBlock, "b", []byte("bytes"), rev2)
	if err != nil {
		t.Fatal(err)
	}
	wantRecord(t, s, ipam.KindBlock, "b", []byte("bytes"), rev3)
	rev4, err := k.UpdateBlock(c, "b", b1, rev3)
	if err != nil {
		t.Fatal(err)
	}

	// List returns encodings, in key order, among byte records.
	mustCreate(t, s, ipam.KindBlock, "a", []byte("a"))
	rc, err := k.CreateBlock(c, "c", b2)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := s.List(c, ipam.KindBlock, ipam.KeyRange{})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 || recs[0].Key != "a" || recs[1].Key != "b" || recs[2].Key != "c" {
		t.Fatalf("List = %v, want records a, b, c", keysOf(recs))
	}
	if !bytes.Equal(recs[1].Value, want1) || recs[1].Revision != rev4 || !bytes.Equal(recs[2].Value, want2) || recs[2].Revision != rc {
		t.Fatal("List does not return the kept blocks' encodings and revisions")
	}

	// Reading encoded the blocks without changing them.
	if !bytes.Equal(encoding(t, b1), want1) || !bytes.Equal(encoding(t, b2), want2) {
		t.Fatal("the store modified a block it keeps")
	}

	// A done context writes nothing, as for Create and Update.
	for _, done := range doneContexts(t) {
		if _, err := k.CreateBlock(done, "d", b2); !errors.Is(err, done.Err()) {
			t.Fatalf("CreateBlock with a done context: %v, want one matching %v", err, done.Err())
		}
		if _, err := k.UpdateBlock(done, "b", b2, rev4); !errors.Is(err, done.Err()) {
			t.Fatalf("UpdateBlock with a done context: %v, want one matching %v", err, done.Err())
		}
		wantMissing(t, s, ipam.KindBlock, "d")
		wantRecord(t, s, ipam.KindBlock, "b", want1, rev4)
	}

	if err := s.Delete(c, ipam.KindBlock, "b", rev4); err != nil {
		t.Fatalf("Delete at UpdateBlock's revision: %v", err)
	}
	wantMissing(t, s, ipam.KindBlock, "b")
}

// doneContexts returns a cancelled context and an expired one.
func doneContexts(t *testing.T) []context.Context {
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	expired, cancel := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	t.Cleanup(cancel)
	return []context.Context{cancelled, expired}
}

func keysOf(recs []ipam.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Key
	}
	return out
}

// testRaceBlockKeeper: racing UpdateBlocks at one revision, exactly one
// wins; and a writer that reuses each block once its next write has
// returned (as carve does) never has it read under its feet, while readers
// Get and List all the time. Run it with the race detector.
func testRaceBlockKeeper(t *testing.T, s ipam.Store) {
	k := s.(ipam.BlockKeeper)
	c := ctx(t)
	rev, err := k.CreateBlock(c, "b", testBlock(t, "start", 1))
	if err != nil {
		t.Fatal(err)
	}
	blocks := make([]*block.Block, racers)
	for i := range blocks {
		blocks[i] = testBlock(t, fmt.Sprintf("writer-%d", i), i+1)
	}
	revs := make([]ipam.Revision, racers)
	errs := race(func(i int) error {
		var err error
		revs[i], err = k.UpdateBlock(c, "b", blocks[i], rev)
		return err
	})
	w := exactlyOne(t, "racing UpdateBlock", errs, ipam.ErrConflict)
	wantRecord(t, s, ipam.KindBlock, "b", encoding(t, blocks[w]), revs[w])
	rev = revs[w]

	// One writer alternates between two blocks, changing each only after
	// the write that replaced it returned; readers check every value they
	// see decodes to a block the writer wrote whole.
	const writes = 300
	// A block of another owner, with addresses the writer never uses.
	junk := testBlock(t, "junk", 40)
	pair := [2]*block.Block{testBlock(t, "w", 0), testBlock(t, "w", 0)}
	if rev, err = k.UpdateBlock(c, "b", pair[1], rev); err != nil {
		t.Fatal(err)
	}
	// The encoding written at each revision, and what readers read at
	// each, compared once the writer is done: a read of a block the store
	// encodes while the writer changes it returns bytes the writer never
	// wrote, even when they decode.
	written := map[ipam.Revision][]byte{rev: encoding(t, pair[1])}
	var readMu sync.Mutex
	read := map[ipam.Revision]map[string]bool{} // the values read at each
	saw := func(rec ipam.Record) {
		readMu.Lock()
		defer readMu.Unlock()
		if read[rec.Revision] == nil {
			read[rec.Revision] = map[string]bool{}
		}
		if len(read[rec.Revision]) < 8 {
			read[rec.Revision][string(rec.Value)] = true
		}
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	readErr := make(chan error, 2)
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				var vals [][]byte
				if r == 0 {
					rec, err := s.Get(c, ipam.KindBlock, "b")
					if err != nil {
						readErr <- err
						return
					}
					vals = append(vals, rec.Value)
					saw(rec)
				} else {
					recs, err := s.List(c, ipam.KindBlock, ipam.KeyRange{})
					if err != nil {
						readErr <- err
						return
					}
					for _, rec := range recs {
						vals = append(vals, rec.Value)
						saw(rec)
					}
				}
				for _, v := range vals {
					var b block.Block
					if err := b.UnmarshalBinary(v); err != nil {
						readErr <- fmt.Errorf("a reader got a value that does not decode: %w", err)
						return
					}
					if used := b.Used(); used != 0 && len(b.AddrsOf("w", nil)) != used {
						readErr <- fmt.Errorf("a reader got a block half written: %d used, %d of the writer's", used, len(b.AddrsOf("w", nil)))
						return
					}
				}
			}
		}()
	}
	for i := range writes {
		// pair[i%2] is not the record's value (never written, or replaced
		// by a write that returned): change it and write it.
		b := pair[i%2]
		b.Allocate(nil, 1, block.Owner{Handle: "w"})
		enc := encoding(t, b)
		if rev, err = k.UpdateBlock(c, "b", b, rev); err != nil {
			t.Fatal(err)
		}
		written[rev] = enc
		// The other one was replaced just now: the writer may do what it
		// likes with it (scribble over it for a while), and then make it
		// the scratch copy of the next version, as carve does.
		for end := time.Now().Add(20 * time.Microsecond); time.Now().Before(end); {
			junk.CopyTo(pair[(i+1)%2])
			b.CopyTo(pair[(i+1)%2])
		}
		b.CopyTo(pair[(i+1)%2])
	}
	stop.Store(true)
	wg.Wait()
	close(readErr)
	for err := range readErr {
		t.Fatal(err)
	}
	for r, vals := range read {
		for v := range vals {
			if v != string(written[r]) {
				t.Fatalf("a reader read revision %d of the block as %x, and the writer wrote %x: the store encoded the block while the writer changed it, after the write that replaced it had returned", r, clip([]byte(v)), clip(written[r]))
			}
		}
	}
	rec := mustGet(t, s, ipam.KindBlock, "b")
	if !bytes.Equal(rec.Value, encoding(t, pair[(writes-1)%2])) {
		t.Fatal("the record does not hold the last block written")
	}
}

// putBlock writes a block record through s's BlockKeeper, or as the
// block's encoding when s has none: a create when rev is 0, an update at
// rev otherwise. The wrappers in this package use it to offer BlockKeeper
// over any store.
func putBlock(ctx context.Context, s ipam.Store, key string, b *block.Block, rev ipam.Revision) (ipam.Revision, error) {
	k, ok := s.(ipam.BlockKeeper)
	switch {
	case ok && rev == 0:
		return k.CreateBlock(ctx, key, b)
	case ok:
		return k.UpdateBlock(ctx, key, b, rev)
	}
	v, err := b.MarshalBinary()
	if err != nil {
		return 0, err
	}
	if rev == 0 {
		return s.Create(ctx, ipam.KindBlock, key, v)
	}
	return s.Update(ctx, ipam.KindBlock, key, v, rev)
}
