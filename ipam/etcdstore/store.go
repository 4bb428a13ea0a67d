package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/carve-ipam/carve/ipam"
)

// DefaultPrefix is the key prefix used when Options.Prefix is empty.
const DefaultPrefix = "/carve/"

// Options configure a Store. The zero value is usable.
type Options struct {
	// Prefix is put before every key: a record of kind k under key x is
	// stored at Prefix + k.String() + "/" + x. It must end with "/", so
	// that one installation's keys are never a prefix of another's. Empty
	// means DefaultPrefix. Stores that share a prefix share their records;
	// separate installations need prefixes neither of which starts with
	// the other.
	Prefix string

	// RequestTimeout bounds each request to etcd, on top of the caller's
	// context; 0 means no bound beyond the context. A request that runs
	// out of time fails with an error matching context.DeadlineExceeded,
	// and a write may or may not have happened (see [ipam.Store]). The
	// etcd client waits for a reachable member rather than failing at once,
	// so without a deadline somewhere a call blocks while etcd is down.
	RequestTimeout time.Duration
}

// Store is an [ipam.Store] on etcd. It also implements [ipam.Generations],
// fed by watches of the kinds an allocator caches, and [ipam.Committer],
// with one etcd transaction per Commit. It is safe for concurrent use;
// Close stops the watches.
type Store struct {
	kv      clientv3.KV
	prefix  string
	timeout time.Duration
	// kindPrefix[k] is prefix + k.String() + "/", the start of kind k's keys.
	kindPrefix [maxKinds]string

	gens      [maxKinds]atomic.Uint64
	blind     [maxKinds]atomic.Bool // the kind's watch is down, or none: see Generation
	stopWatch context.CancelFunc
	watchers  sync.WaitGroup
	closeOnce sync.Once
}

// maxKinds bounds the Kind values the store keeps; it is larger than every
// kind carve defines.
const maxKinds = 16

var (
	_ ipam.Store       = (*Store)(nil)
	_ ipam.Generations = (*Store)(nil)
)

// New returns a Store that keeps its records in etcd through client, and
// starts the watches behind [Store.Generation]. ctx bounds the one request
// New makes, which reads etcd's current revision: the watches start right
// after it, so no change made after New returns can be missed. New fails if
// etcd cannot be reached before ctx is done.
//
// The client stays the caller's. Close the Store when done with it; closing
// the client stops the watches too.
func New(ctx context.Context, client *clientv3.Client, opts Options) (*Store, error) {
	return newStore(ctx, client, opts, 0)
}

// newStore is New with the watches starting at startRev instead of after the
// current revision when startRev > 0 (tests use it to start behind a
// compaction).
func newStore(ctx context.Context, client *clientv3.Client, opts Options, startRev int64) (*Store, error) {
	if client == nil {
		return nil, errors.New("etcdstore: new store: nil client")
	}
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		return nil, fmt.Errorf("etcdstore: new store: prefix %q does not end with /", prefix)
	}
	if opts.RequestTimeout < 0 {
		return nil, fmt.Errorf("etcdstore: new store: negative request timeout %v", opts.RequestTimeout)
	}
	s := &Store{
		kv:      client.KV,
		prefix:  prefix,
		timeout: opts.RequestTimeout,
	}
	for _, k := range ipam.Kinds {
		s.kindPrefix[k] = prefix + k.String() + "/"
	}
	if startRev <= 0 {
		// Every response header carries etcd's revision: a read of one key
		// gives it. (A count of the prefix's keys would walk etcd's whole
		// key index under its lock, a cost that grows with the
		// installation, on every New.)
		rctx, cancel := s.request(ctx)
		resp, err := client.Get(rctx, prefix, clientv3.WithKeysOnly())
		cancel()
		if err != nil {
			return nil, s.failure(ctx, rctx, "new store: read revision at", prefix, err)
		}
		startRev = resp.Header.Revision + 1
	}
	wctx, stop := context.WithCancel(context.Background())
	s.stopWatch = stop
	for _, k := range ipam.Kinds {
		if !watched(k) {
			s.blind[k].Store(true)
			continue
		}
		// One watch per kind; the etcd client carries them all on one
		// stream.
		s.watchers.Add(1)
		go s.watch(wctx, client, k, startRev)
	}
	return s, nil
}

// Prefix returns the prefix of the store's keys.
func (s *Store) Prefix() string { return s.prefix }

// Close stops the watches and waits for them to end. The store stays usable,
// but Generation then changes on every call, so allocators re-read pools,
// configuration and affinities every time. Close does not close the client.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.stopWatch()
		s.watchers.Wait()
	})
	return nil
}

func validKind(kind ipam.Kind) bool { return kind.Valid() && int(kind) < maxKinds }

// checkKind refuses an invalid kind for the operation op on key.
func checkKind(op string, kind ipam.Kind, key string) error {
	if !validKind(kind) {
		return fmt.Errorf("etcdstore: %s %s %q: invalid record kind %d", op, kind, key, uint8(kind))
	}
	return nil
}

// etcdKey returns the etcd key of a record.
func (s *Store) etcdKey(kind ipam.Kind, key string) string { return s.kindPrefix[kind] + key }

// request returns the context for one request: ctx, bounded by the
// request timeout if there is one.
func (s *Store) request(ctx context.Context) (context.Context, context.CancelFunc) {
	if s.timeout > 0 {
		return context.WithTimeout(ctx, s.timeout)
	}
	return ctx, func() {}
}

// failure wraps an error of the etcd client for the operation on key. When
// the caller's context or the request's deadline ended the call, the error
// matches that context's error, whatever form the client gave it.
func (s *Store) failure(ctx, rctx context.Context, op, key string, err error) error {
	switch {
	case ctx.Err() != nil && !errors.Is(err, ctx.Err()):
		return fmt.Errorf("etcdstore: %s %q: %w (%w)", op, key, ctx.Err(), err)
	case ctx.Err() == nil && rctx.Err() != nil:
		if errors.Is(err, rctx.Err()) {
			return fmt.Errorf("etcdstore: %s %q: request timeout %v: %w", op, key, s.timeout, err)
		}
		return fmt.Errorf("etcdstore: %s %q: request timeout %v: %w (%w)", op, key, s.timeout, rctx.Err(), err)
	}
	return fmt.Errorf("etcdstore: %s %q: %w", op, key, err)
}

// Get implements [ipam.Store].
func (s *Store) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	if err := checkKind("get", kind, key); err != nil {
		return ipam.Record{}, err
	}
	if err := ctx.Err(); err != nil {
		return ipam.Record{}, fmt.Errorf("etcdstore: get %s %q: %w", kind, key, err)
	}
	rctx, cancel := s.request(ctx)
	defer cancel()
	resp, err := s.kv.Get(rctx, s.etcdKey(kind, key))
	if err != nil {
		return ipam.Record{}, s.failure(ctx, rctx, "get "+kind.String(), key, err)
	}
	if len(resp.Kvs) == 0 {
		return ipam.Record{}, fmt.Errorf("etcdstore: get %s %q: %w", kind, key, ipam.ErrNotFound)
	}
	kv := resp.Kvs[0]
	return ipam.Record{Key: key, Value: kv.Value, Revision: ipam.Revision(kv.ModRevision)}, nil
}

// List implements [ipam.Store]. The range is one etcd range request, so the
// records come from one consistent snapshot.
func (s *Store) List(ctx context.Context, kind ipam.Kind, r ipam.KeyRange) ([]ipam.Record, error) {
	if !validKind(kind) {
		return nil, fmt.Errorf("etcdstore: list %s from %q: invalid record kind %d", kind, r.Start, uint8(kind))
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("etcdstore: list %s from %q: %w", kind, r.Start, err)
	}
	if r.End != "" && r.End <= r.Start {
		return nil, nil
	}
	kp := s.kindPrefix[kind]
	start := kp + r.Start
	end := kp + r.End
	if r.End == "" {
		// To the end of the kind: the first key after every key with the
		// kind's prefix.
		end = clientv3.GetPrefixRangeEnd(kp)
	}
	rctx, cancel := s.request(ctx)
	defer cancel()
	resp, err := s.kv.Get(rctx, start, clientv3.WithRange(end))
	if err != nil {
		return nil, s.failure(ctx, rctx, "list "+kind.String()+" from", r.Start, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	out := make([]ipam.Record, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		// etcd returns ranges in byte order of the whole key, which is the
		// byte order of the keys after the common prefix.
		out[i] = ipam.Record{Key: string(kv.Key[len(kp):]), Value: kv.Value, Revision: ipam.Revision(kv.ModRevision)}
	}
	return out, nil
}

// Create implements [ipam.Store] with a transaction that puts the key only
// if it does not exist (its create revision is 0).
func (s *Store) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (ipam.Revision, error) {
	resp, err := s.write(ctx, "create", kind, key, func(t clientv3.Txn, k string) clientv3.Txn {
		return t.If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
			Then(clientv3.OpPut(k, string(value)))
	})
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		return 0, existsError(kind, key)
	}
	// The put is the transaction's only write, so it happened at the
	// revision the transaction moved the store to.
	return ipam.Revision(resp.Header.Revision), nil
}

// Update implements [ipam.Store] with a transaction that puts the key only
// if its mod revision is rev.
func (s *Store) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	resp, err := s.write(ctx, "update", kind, key, func(t clientv3.Txn, k string) clientv3.Txn {
		return t.If(revisionIs(k, rev)...).
			Then(clientv3.OpPut(k, string(value))).
			Else(clientv3.OpGet(k, clientv3.WithKeysOnly()))
	})
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		return 0, s.refused("update", kind, key, rev, resp)
	}
	return ipam.Revision(resp.Header.Revision), nil
}

// Delete implements [ipam.Store] with a transaction that deletes the key
// only if its mod revision is rev.
func (s *Store) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	resp, err := s.write(ctx, "delete", kind, key, func(t clientv3.Txn, k string) clientv3.Txn {
		return t.If(revisionIs(k, rev)...).
			Then(clientv3.OpDelete(k)).
			Else(clientv3.OpGet(k, clientv3.WithKeysOnly()))
	})
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return s.refused("delete", kind, key, rev, resp)
	}
	return nil
}

// write commits the transaction txn builds for the etcd key of (kind, key),
// after checking the kind and the context, and wraps a failure of the
// client for op. Whatever the outcome, kind's generation moves on, since
// the kind may have changed.
func (s *Store) write(ctx context.Context, op string, kind ipam.Kind, key string, txn func(t clientv3.Txn, k string) clientv3.Txn) (*clientv3.TxnResponse, error) {
	if err := checkKind(op, kind, key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("etcdstore: %s %s %q: %w", op, kind, key, err)
	}
	rctx, cancel := s.request(ctx)
	defer cancel()
	defer s.bump(kind)
	resp, err := txn(s.kv.Txn(rctx), s.etcdKey(kind, key)).Commit()
	if err != nil {
		return nil, s.failure(ctx, rctx, op+" "+kind.String(), key, err)
	}
	return resp, nil
}

// revisionIs returns the comparisons that hold when key exists at mod
// revision rev. The version check makes revision 0, which a missing key
// has, never match.
func revisionIs(key string, rev ipam.Revision) []clientv3.Cmp {
	want := int64(-1) // etcd revisions are int64; a larger one never matches
	if rev <= math.MaxInt64 {
		want = int64(rev)
	}
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(key), "=", want),
		clientv3.Compare(clientv3.Version(key), ">", 0),
	}
}

// refused explains a failed compare of Update or Delete from the key-only
// read in the transaction's else branch: the key is gone, or it moved on.
func (s *Store) refused(op string, kind ipam.Kind, key string, rev ipam.Revision, resp *clientv3.TxnResponse) error {
	if len(resp.Responses) == 1 {
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 {
			return conflictError(op, kind, key, rev, kvs[0].ModRevision)
		}
	}
	return notFoundError(op, kind, key)
}

// conflictError is the error of an Update or Delete (op) of a record at
// revision rev that is now at revision now.
func conflictError(op string, kind ipam.Kind, key string, rev ipam.Revision, now int64) error {
	return fmt.Errorf("etcdstore: %s %s %q at revision %d (now %d): %w", op, kind, key, rev, now, ipam.ErrConflict)
}

// notFoundError is the error of an Update or Delete (op) of a missing
// record.
func notFoundError(op string, kind ipam.Kind, key string) error {
	return fmt.Errorf("etcdstore: %s %s %q: %w", op, kind, key, ipam.ErrNotFound)
}

// existsError is the error of a Create of a record that exists.
func existsError(kind ipam.Kind, key string) error {
	return fmt.Errorf("etcdstore: create %s %q: %w", kind, key, ipam.ErrExists)
}
