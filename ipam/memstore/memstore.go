// Package memstore is carve's embedded default [ipam.Store]: every record in
// the memory of one process.
//
// It is safe for concurrent use by any number of allocators at once, which
// is how one process (or a test) stands in for many nodes sharing a
// datastore. Revisions come from one store-wide counter, so a key's
// revisions never repeat. It implements [ipam.Generations] exactly: a
// change is visible to every allocator sharing the store as soon as the
// write returns, so allocators can cache pools and configuration safely.
//
// Values are kept as given, without copying, as the Store contract allows.
// It implements [ipam.BlockKeeper] too: a block an allocator writes is kept
// as it is and encoded only when someone reads the record, so the
// allocation path never encodes a block.
//
// A Store lives as long as its process. To keep the addresses across
// restarts, save a snapshot (Store.SaveFile, or Store.WriteTo to any
// writer) on shutdown or after changes, and start from it (LoadFile,
// Load): the loaded store holds every record at the revision it had. A
// snapshot taken while allocators work is what a crash would leave: run
// ipam's Repair on the loaded store before allocators start (or let a
// Collector rebuild the handle counts in flight).
//
// Whatever changed after the last snapshot is lost with the process: an
// address assigned since is free again in the restarted store, and will be
// assigned again while its first owner may still use it. A program that
// hands addresses to workloads it cannot reach after a crash saves a
// snapshot before it reports an address (SaveFile writes a new file and
// renames it, so a crash leaves the old or the new one), or uses a store
// that writes through to disk (see examples/custombackend) or a datastore.
package memstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
)

// maxKinds bounds the Kind values the store keeps; it is larger than every
// kind carve defines.
const maxKinds = 16

// Store is an in-memory [ipam.Store]. The zero value is an empty store ready
// to use; a Store must not be copied after first use.
type Store struct {
	mu    sync.RWMutex
	rev   uint64 // last revision handed out, store-wide
	kinds [maxKinds]records
	gens  [maxKinds]atomic.Uint64
	free  []*entry // deleted entries, for reuse by create; under mu
	// saving is held through a SaveFile, so that saves copy the store in
	// the order in which they rename their files.
	saving sync.Mutex
}

type records struct {
	// byKey holds each record's entry. Entries are changed in place under
	// the write lock, so an update looks its key up once; deleted entries
	// go to the store's free list for the next create.
	byKey map[string]*entry
	// order is byKey's keys in order, each with its entry, so that a List
	// needs no map lookups. Handles are created and deleted on every
	// assignment but listed only by Check and the collector, so their
	// order is rebuilt lazily on the next List (dirty); every other kind is
	// listed on the allocation path (a node's blocks, a pool's blocks) and
	// changes rarely, so its order is kept up to date on each create and
	// delete.
	order keyOrder
	lazy  bool
	dirty bool
	// lastKey and last are the record last created or written, whose key
	// the next operation on the kind usually names again (a block written
	// again and again, a handle created, read and deleted): a comparison
	// of keys instead of a map lookup. Set and cleared under the write
	// lock; last is nil when no such record exists.
	lastKey string
	last    *entry
}

// lookup returns the entry of key, as byKey[key]. The caller holds s.mu.
func (r *records) lookup(key string) (*entry, bool) {
	if r.last != nil && r.lastKey == key {
		return r.last, true
	}
	p, ok := r.byKey[key]
	return p, ok
}

// remember makes p, the entry of key, the one lookup tries first. The
// caller holds the write lock.
func (r *records) remember(key string, p *entry) {
	r.lastKey, r.last = key, p
}

// added records the creation of key, whose entry is p, in order.
func (r *records) added(key string, p *entry) {
	if r.lazy {
		r.dirty = true
		return
	}
	r.order.insert(key, p)
}

// removed records the deletion of key in order.
func (r *records) removed(key string) {
	if r.lazy {
		r.dirty = true
		return
	}
	r.order.remove(key)
}

type entry struct {
	value []byte
	// blk, when not nil, is the value, not yet encoded: value is nil until
	// a read encodes it, under the write lock, and drops blk.
	blk *block.Block
	rev ipam.Revision
}

// pending reports whether the entry's value still has to be encoded.
func (e *entry) pending() bool { return e.blk != nil }

// New returns an empty store. It is the same as new(Store).
func New() *Store { return new(Store) }

var _ ipam.Store = (*Store)(nil)
var _ ipam.Generations = (*Store)(nil)
var _ ipam.BlockKeeper = (*Store)(nil)
var _ ipam.Committer = (*Store)(nil)

// checkKind is small enough to inline into every operation; the error is
// made out of line.
func checkKind(kind ipam.Kind) error {
	if kind.Valid() && int(kind) < maxKinds {
		return nil
	}
	return kindError(kind)
}

//go:noinline
func kindError(kind ipam.Kind) error {
	return fmt.Errorf("memstore: invalid record kind %d", uint8(kind))
}

// Get implements [ipam.Store].
func (s *Store) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	if err := ctx.Err(); err != nil {
		return ipam.Record{}, err
	}
	if err := checkKind(kind); err != nil {
		return ipam.Record{}, err
	}
	s.mu.RLock()
	var e entry
	p, ok := s.kinds[kind].lookup(key)
	if ok {
		e = *p
	}
	s.mu.RUnlock()
	if !ok {
		return ipam.Record{}, fmt.Errorf("memstore: get %s %q: %w", kind, key, ipam.ErrNotFound)
	}
	if e.pending() {
		s.mu.Lock()
		var err error
		if p, ok = s.kinds[kind].byKey[key]; ok {
			err = s.encode(kind, key, p)
			e = *p
		}
		s.mu.Unlock()
		switch {
		case !ok:
			return ipam.Record{}, fmt.Errorf("memstore: get %s %q: %w", kind, key, ipam.ErrNotFound)
		case err != nil:
			return ipam.Record{}, err
		}
	}
	return ipam.Record{Key: key, Value: e.value, Revision: e.rev}, nil
}

// List implements [ipam.Store].
func (s *Store) List(ctx context.Context, kind ipam.Kind, r ipam.KeyRange) ([]ipam.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkKind(kind); err != nil {
		return nil, err
	}
	s.mu.RLock()
	out, ok := s.list(kind, r)
	s.mu.RUnlock()
	if ok {
		return out, nil
	}
	// The key order needs rebuilding, or blocks in the range need encoding:
	// both take the write lock.
	s.mu.Lock()
	defer s.mu.Unlock()
	recs := &s.kinds[kind]
	if recs.dirty {
		ks := make([]keyed, 0, len(recs.byKey))
		for k, p := range recs.byKey {
			ks = append(ks, keyed{k, p})
		}
		sortKeyed(ks)
		recs.order.reset(ks)
		recs.dirty = false
	}
keys:
	for cu := recs.order.seek(r.Start); ; {
		ch := cu.rest()
		if len(ch) == 0 {
			break
		}
		for _, o := range ch {
			if !r.Contains(o.key) {
				break keys
			}
			if err := s.encode(kind, o.key, o.e); err != nil {
				return nil, err
			}
		}
	}
	out, _ = s.list(kind, r)
	return out, nil
}

// list returns the records of the kind in r, or false when it cannot under
// the read lock: the key order is stale, or a block in the range is not
// encoded yet. The caller holds s.mu.
func (s *Store) list(kind ipam.Kind, r ipam.KeyRange) ([]ipam.Record, bool) {
	recs := &s.kinds[kind]
	if recs.dirty {
		return nil, false
	}
	var out []ipam.Record
	for cu := recs.order.seek(r.Start); ; {
		ch := cu.rest()
		if len(ch) == 0 {
			return out, true
		}
		for _, o := range ch {
			if !r.Contains(o.key) {
				return out, true
			}
			if o.e.pending() {
				return nil, false
			}
			out = append(out, ipam.Record{Key: o.key, Value: o.e.value, Revision: o.e.rev})
		}
	}
}

// encode encodes a pending entry's block and keeps the encoding in e, the
// entry of key. The caller holds the write lock.
func (s *Store) encode(kind ipam.Kind, key string, e *entry) error {
	if !e.pending() {
		return nil
	}
	v, err := e.blk.AppendBinary(nil)
	if err != nil {
		return fmt.Errorf("memstore: encode %s %q: %w", kind, key, err)
	}
	e.value, e.blk = v, nil // the store is done with the block
	return nil
}

// Create implements [ipam.Store].
func (s *Store) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (ipam.Revision, error) {
	return s.create(ctx, kind, key, entry{value: value})
}

// Update implements [ipam.Store].
func (s *Store) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	return s.update(ctx, kind, key, entry{value: value}, rev)
}

// CreateBlock implements [ipam.BlockKeeper]: it keeps b and encodes it when
// the record is first read.
func (s *Store) CreateBlock(ctx context.Context, key string, b *block.Block) (ipam.Revision, error) {
	if b == nil {
		return 0, fmt.Errorf("memstore: create block %q: nil block", key)
	}
	return s.create(ctx, ipam.KindBlock, key, entry{blk: b})
}

// UpdateBlock implements [ipam.BlockKeeper]: it keeps b and encodes it when
// the record is first read.
func (s *Store) UpdateBlock(ctx context.Context, key string, b *block.Block, rev ipam.Revision) (ipam.Revision, error) {
	if b == nil {
		return 0, fmt.Errorf("memstore: update block %q: nil block", key)
	}
	return s.update(ctx, ipam.KindBlock, key, entry{blk: b}, rev)
}

// lockWrite checks ctx and kind and takes the write lock, returning the
// kind's records; the caller unlocks s.mu when it gets no error.
func (s *Store) lockWrite(ctx context.Context, kind ipam.Kind) (*records, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkKind(kind); err != nil {
		return nil, err
	}
	s.mu.Lock()
	return &s.kinds[kind], nil
}

// The write paths unlock s.mu themselves rather than by defer: they run on
// every allocation, and nothing between Lock and Unlock can panic.

func (s *Store) create(ctx context.Context, kind ipam.Kind, key string, e entry) (ipam.Revision, error) {
	recs, err := s.lockWrite(ctx, kind)
	if err != nil {
		return 0, err
	}
	if _, ok := recs.lookup(key); ok {
		s.mu.Unlock()
		return 0, existsError(kind, key)
	}
	rev := s.created(kind, recs, key, e)
	s.mu.Unlock()
	return rev, nil
}

//go:noinline
func existsError(kind ipam.Kind, key string) error {
	return fmt.Errorf("memstore: create %s %q: %w", kind, key, ipam.ErrExists)
}

// created adds the record key, which does not exist, with e's value and
// returns its revision. The caller holds the write lock.
func (s *Store) created(kind ipam.Kind, recs *records, key string, e entry) ipam.Revision {
	if recs.byKey == nil {
		recs.byKey = make(map[string]*entry)
		recs.lazy = kind == ipam.KindHandle
	}
	s.rev++
	e.rev = ipam.Revision(s.rev)
	var p *entry
	if n := len(s.free); n > 0 {
		p = s.free[n-1]
		s.free = s.free[:n-1]
	} else {
		p = new(entry)
	}
	*p = e
	recs.byKey[key] = p
	recs.remember(key, p)
	recs.added(key, p)
	s.gens[kind].Add(1)
	return e.rev
}

func (s *Store) update(ctx context.Context, kind ipam.Kind, key string, e entry, rev ipam.Revision) (ipam.Revision, error) {
	recs, err := s.lockWrite(ctx, kind)
	if err != nil {
		return 0, err
	}
	p, err := recs.check("update", kind, key, rev)
	if err != nil {
		s.mu.Unlock()
		return 0, err
	}
	rev = s.updated(kind, recs, key, p, e)
	s.mu.Unlock()
	return rev, nil
}

// updated gives p, the entry of key, e's value and a new revision, which
// it returns. The caller holds the write lock.
func (s *Store) updated(kind ipam.Kind, recs *records, key string, p *entry, e entry) ipam.Revision {
	s.rev++
	e.rev = ipam.Revision(s.rev)
	*p = e
	recs.remember(key, p)
	s.gens[kind].Add(1)
	return e.rev
}

// Delete implements [ipam.Store].
func (s *Store) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	recs, err := s.lockWrite(ctx, kind)
	if err != nil {
		return err
	}
	p, err := recs.check("delete", kind, key, rev)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	s.deleted(kind, recs, key, p)
	s.mu.Unlock()
	return nil
}

// deleted removes the record key, whose entry is p. The caller holds the
// write lock.
func (s *Store) deleted(kind ipam.Kind, recs *records, key string, p *entry) {
	delete(recs.byKey, key)
	if recs.last == p {
		recs.remember("", nil)
	}
	recs.removed(key)
	s.gens[kind].Add(1)
	// Readers copy an entry under the lock and never keep the pointer, so
	// it can serve the next create.
	*p = entry{}
	if len(s.free) < maxFree {
		s.free = append(s.free, p)
	}
}

// maxFree bounds the free list: enough to absorb a burst of releases.
const maxFree = 1 << 10

// check returns the entry of key if it is at revision rev, for a
// compare-and-swap write. The caller holds the store's lock.
func (r *records) check(op string, kind ipam.Kind, key string, rev ipam.Revision) (*entry, error) {
	p, ok := r.lookup(key)
	switch {
	case !ok:
		return nil, fmt.Errorf("memstore: %s %s %q: %w", op, kind, key, ipam.ErrNotFound)
	case p.rev != rev:
		return nil, fmt.Errorf("memstore: %s %s %q at revision %d (now %d): %w", op, kind, key, rev, p.rev, ipam.ErrConflict)
	}
	return p, nil
}

// Generation implements [ipam.Generations]: it counts the writes to records
// of the kind, and is exact.
func (s *Store) Generation(kind ipam.Kind) uint64 {
	// Not through checkKind: without a call, this needs no stack frame.
	if int(kind) >= maxKinds || !kind.Valid() {
		return 0
	}
	return s.gens[kind].Load()
}

// Len returns the number of records of the kind.
func (s *Store) Len(kind ipam.Kind) int {
	if checkKind(kind) != nil {
		return 0
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.kinds[kind].byKey)
}

// Commit implements [ipam.Committer]: it checks every write and then makes
// them all, under one hold of the write lock, so no reader sees some of
// them without the others. Each write gets a revision of its own.
func (s *Store) Commit(ctx context.Context, writes []ipam.Write, revs []ipam.Revision) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(writes) == 0 || len(writes) > ipam.MaxCommitWrites || len(revs) < len(writes) {
		return commitSizeError(len(writes), len(revs))
	}
	// The entries the checks found, for the writes that change one.
	var found [ipam.MaxCommitWrites]*entry
	s.mu.Lock()
	for i := range writes {
		w := &writes[i]
		if !w.Kind.Valid() || int(w.Kind) >= maxKinds || (w.Block != nil && (w.Kind != ipam.KindBlock || w.Delete)) || writesBefore(writes, i) {
			s.mu.Unlock()
			return badWrite(writes, i)
		}
		recs := &s.kinds[w.Kind&(maxKinds-1)]
		var err error
		switch {
		case w.Delete:
			found[i], err = recs.check("delete", w.Kind, w.Key, w.Rev)
		case w.Rev == 0:
			if _, ok := recs.lookup(w.Key); ok {
				err = existsError(w.Kind, w.Key)
			}
		default:
			found[i], err = recs.check("update", w.Kind, w.Key, w.Rev)
		}
		if err != nil {
			s.mu.Unlock()
			return &ipam.CommitError{Index: i, Err: err}
		}
	}
	for i := range writes {
		w := &writes[i]
		recs := &s.kinds[w.Kind&(maxKinds-1)]
		switch {
		case w.Delete:
			s.deleted(w.Kind, recs, w.Key, found[i])
			revs[i] = 0
		case w.Rev == 0:
			revs[i] = s.created(w.Kind, recs, w.Key, entry{value: w.Value, blk: w.Block})
		default:
			revs[i] = s.updated(w.Kind, recs, w.Key, found[i], entry{value: w.Value, blk: w.Block})
		}
	}
	s.mu.Unlock()
	return nil
}

//go:noinline
func commitSizeError(writes, revs int) error {
	if revs < writes {
		return fmt.Errorf("memstore: commit of %d writes with room for %d revisions", writes, revs)
	}
	return fmt.Errorf("memstore: commit of %d writes: want 1 to %d", writes, ipam.MaxCommitWrites)
}

// writesBefore reports whether a write before writes[i] names its record.
func writesBefore(writes []ipam.Write, i int) bool {
	w := &writes[i]
	for j := range i {
		if writes[j].Kind == w.Kind && writes[j].Key == w.Key {
			return true
		}
	}
	return false
}

// badWrite is the error of a commit whose writes[i] is not one a store
// can make: an invalid kind, a block on a write that cannot carry one, or
// a record an earlier write names.
//
//go:noinline
func badWrite(writes []ipam.Write, i int) error {
	w := &writes[i]
	if err := checkKind(w.Kind); err != nil {
		return err
	}
	for j := range i {
		if writes[j].Kind == w.Kind && writes[j].Key == w.Key {
			return fmt.Errorf("memstore: commit: writes %d and %d both write %s %q", j, i, w.Kind, w.Key)
		}
	}
	return fmt.Errorf("memstore: commit: write %d (%s %q) carries a block", i, w.Kind, w.Key)
}
