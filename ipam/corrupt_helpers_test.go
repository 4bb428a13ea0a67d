package ipam_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/storetest"
)

// perKeyStore is a Store whose revisions count per record, as the Store
// contract allows: each key has its own counter, which survives the
// record's deletion, so a key's revisions never repeat, while two keys
// may well be at the same revision. (No optional capabilities.)
type perKeyStore struct {
	mu   sync.Mutex
	recs map[ipam.Kind]map[string]ipam.Record
	last map[ipam.Kind]map[string]ipam.Revision
}

func newPerKeyStore() *perKeyStore {
	return &perKeyStore{recs: map[ipam.Kind]map[string]ipam.Record{}, last: map[ipam.Kind]map[string]ipam.Revision{}}
}

func (s *perKeyStore) next(kind ipam.Kind, key string) ipam.Revision {
	if s.last[kind] == nil {
		s.last[kind] = map[string]ipam.Revision{}
	}
	s.last[kind][key]++
	return s.last[kind][key]
}

func (s *perKeyStore) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	if err := ctx.Err(); err != nil {
		return ipam.Record{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[kind][key]
	if !ok {
		return ipam.Record{}, fmt.Errorf("get %s %q: %w", kind, key, ipam.ErrNotFound)
	}
	return r, nil
}

func (s *perKeyStore) List(ctx context.Context, kind ipam.Kind, r ipam.KeyRange) ([]ipam.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ipam.Record
	for k, rec := range s.recs[kind] {
		if r.Contains(k) {
			out = append(out, rec)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (s *perKeyStore) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (ipam.Revision, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.recs[kind][key]; ok {
		return 0, fmt.Errorf("create %s %q: %w", kind, key, ipam.ErrExists)
	}
	if s.recs[kind] == nil {
		s.recs[kind] = map[string]ipam.Record{}
	}
	rev := s.next(kind, key)
	s.recs[kind][key] = ipam.Record{Key: key, Value: slices.Clone(value), Revision: rev}
	return rev, nil
}

func (s *perKeyStore) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[kind][key]
	switch {
	case !ok:
		return 0, fmt.Errorf("update %s %q: %w", kind, key, ipam.ErrNotFound)
	case r.Revision != rev:
		return 0, fmt.Errorf("update %s %q at %d (now %d): %w", kind, key, rev, r.Revision, ipam.ErrConflict)
	}
	nrev := s.next(kind, key)
	s.recs[kind][key] = ipam.Record{Key: key, Value: slices.Clone(value), Revision: nrev}
	return nrev, nil
}

func (s *perKeyStore) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[kind][key]
	switch {
	case !ok:
		return fmt.Errorf("delete %s %q: %w", kind, key, ipam.ErrNotFound)
	case r.Revision != rev:
		return fmt.Errorf("delete %s %q at %d (now %d): %w", kind, key, rev, r.Revision, ipam.ErrConflict)
	}
	delete(s.recs[kind], key)
	return nil
}

// TestPerKeyStoreConforms shows that perKeyStore keeps the Store
// contract, so what carve does on it, carve must get right.
func TestPerKeyStoreConforms(t *testing.T) {
	storetest.RunConformanceTests(t, func(t *testing.T) ipam.Store { return newPerKeyStore() })
}

// putRaw writes value under kind and key, creating or replacing the
// record, and returns its revision.
func putRaw(t testing.TB, s ipam.Store, kind ipam.Kind, key string, value []byte) ipam.Revision {
	t.Helper()
	ctx := context.Background()
	rec, err := s.Get(ctx, kind, key)
	if err != nil {
		rev, err := s.Create(ctx, kind, key, value)
		require.NoError(t, err)
		return rev
	}
	rev, err := s.Update(ctx, kind, key, value, rec.Revision)
	require.NoError(t, err)
	return rev
}

// keyChecker notes every key carve passes a store that the Store contract
// says carve never passes: empty, longer than MaxKeyLen, not valid UTF-8,
// or with a control character. Its store wraps a store to check the keys
// of its reads and writes.
type keyChecker struct {
	mu  sync.Mutex
	bad []string
}

func (c *keyChecker) note(op string, kind ipam.Kind, key string) {
	ok := key != "" && len(key) <= ipam.MaxKeyLen && utf8.ValidString(key) && strings.IndexFunc(key, unicode.IsControl) < 0
	if !ok {
		c.mu.Lock()
		c.bad = append(c.bad, fmt.Sprintf("%s %s %q", op, kind, key))
		c.mu.Unlock()
	}
}

func (c *keyChecker) badKeys() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.bad)
}

func (c *keyChecker) store(s ipam.Store) ipam.Store {
	return getHookStore{&hookStore{Store: s, hook: c.note}}
}
