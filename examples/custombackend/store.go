package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/carve-ipam/carve/ipam"
)

// Store is a complete ipam.Store over a plain Go map, optionally kept in a
// file. Every method checks its context, takes one lock and works on the
// map, so operations on a record are linearizable and the store is safe for
// concurrent use by any number of allocators.
//
// Revisions come from one store-wide counter, so a key's revisions never
// repeat, even after it is deleted and created again; the file keeps the
// counter, so they do not repeat after a restart either.
type Store struct {
	path string // "" keeps the records in memory only

	mu   sync.RWMutex
	data snapshot

	gens [256]atomic.Uint64 // per Kind, for ipam.Generations
}

// snapshot is everything the store holds, and the file's JSON.
type snapshot struct {
	Revision ipam.Revision                        `json:"revision"` // the last one handed out
	Records  map[ipam.Kind]map[string]storedValue `json:"records"`
}

type storedValue struct {
	Value    []byte        `json:"value"`
	Revision ipam.Revision `json:"revision"`
}

var _ ipam.Generations = (*Store)(nil)

// New returns an empty store in memory.
func New() *Store {
	return &Store{data: snapshot{Records: map[ipam.Kind]map[string]storedValue{}}}
}

// Open returns a store kept in the file at path, loading what it holds if
// it exists. Every write rewrites the file: a temporary file renamed over
// it, so a crashed process leaves the old or the new version, never half of
// one (there is no fsync: a power failure may lose the latest writes). Only
// one process may open a file at a time.
func Open(path string) (*Store, error) {
	s := New()
	s.path = path
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return s, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &s.data); err != nil {
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	if s.data.Records == nil {
		s.data.Records = map[ipam.Kind]map[string]storedValue{}
	}
	return s, nil
}

// Get implements ipam.Store.
func (s *Store) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	if err := ctx.Err(); err != nil {
		return ipam.Record{}, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.data.Records[kind][key]
	if !ok {
		return ipam.Record{}, fmt.Errorf("get %s %q: %w", kind, key, ipam.ErrNotFound)
	}
	return ipam.Record{Key: key, Value: v.Value, Revision: v.Revision}, nil
}

// List implements ipam.Store. It sorts the keys of the kind on every call,
// which is fine for an example; a real backend keeps them in order (a B-tree)
// or lets its datastore do it.
func (s *Store) List(ctx context.Context, kind ipam.Kind, r ipam.KeyRange) ([]ipam.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	var recs []ipam.Record
	for key, v := range s.data.Records[kind] {
		if r.Contains(key) {
			recs = append(recs, ipam.Record{Key: key, Value: v.Value, Revision: v.Revision})
		}
	}
	slices.SortFunc(recs, func(a, b ipam.Record) int { return strings.Compare(a.Key, b.Key) })
	return recs, nil
}

// Create implements ipam.Store.
func (s *Store) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (ipam.Revision, error) {
	return s.write(ctx, "create", kind, key, value, 0)
}

// Update implements ipam.Store.
func (s *Store) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	return s.write(ctx, "update", kind, key, value, rev)
}

// Delete implements ipam.Store.
func (s *Store) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	_, err := s.write(ctx, "delete", kind, key, nil, rev)
	return err
}

// Generation implements ipam.Generations: it moves on every write of kind.
func (s *Store) Generation(kind ipam.Kind) uint64 { return s.gens[kind].Load() }

// write does op under the lock: it checks that the record is absent
// (create) or present at revision rev (update, delete), then stores value
// under a new revision or deletes the record, and saves the file. If saving
// fails the change is undone.
func (s *Store) write(ctx context.Context, op string, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	recs := s.data.Records[kind]
	old, exists := recs[key]
	switch {
	case op == "create" && exists:
		return 0, fmt.Errorf("create %s %q: %w", kind, key, ipam.ErrExists)
	case op != "create" && !exists:
		return 0, fmt.Errorf("%s %s %q: %w", op, kind, key, ipam.ErrNotFound)
	case op != "create" && old.Revision != rev:
		return 0, fmt.Errorf("%s %s %q at revision %d (now %d): %w", op, kind, key, rev, old.Revision, ipam.ErrConflict)
	}
	if recs == nil {
		recs = map[string]storedValue{}
		s.data.Records[kind] = recs
	}
	rev = 0
	if op == "delete" {
		delete(recs, key)
	} else {
		s.data.Revision++ // never rolled back, so no revision is handed out twice
		rev = s.data.Revision
		recs[key] = storedValue{Value: value, Revision: rev}
	}
	if err := s.save(); err != nil {
		if exists {
			recs[key] = old
		} else {
			delete(recs, key)
		}
		return 0, fmt.Errorf("%s %s %q: %w", op, kind, key, err)
	}
	s.gens[kind].Add(1)
	return rev, nil
}

// save writes the snapshot to the file, if the store has one. The caller
// holds s.mu.
func (s *Store) save() error {
	if s.path == "" {
		return nil
	}
	data, err := json.Marshal(&s.data)
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.path)
}
