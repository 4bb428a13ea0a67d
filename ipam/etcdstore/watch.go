package etcdstore

import (
	"context"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/carve-ipam/carve/ipam"
)

// Generation implements [ipam.Generations]. The number of a kind moves when
// a write through this Store returns, and when the watch on the prefix
// reports a change of the kind made by anyone (this Store included, so each
// of its own writes moves it twice). It lags etcd by the watch's delivery
// time: see the package documentation.
//
// While the watch is down (after Close, or between a failure and its
// restart) every call returns a new number, so an allocator re-reads
// instead of trusting a cache nobody keeps up to date.
func (s *Store) Generation(kind ipam.Kind) uint64 {
	if !validKind(kind) {
		return 0
	}
	if s.blind.Load() {
		return s.gens[kind].Add(1)
	}
	return s.gens[kind].Load()
}

func (s *Store) bump(kind ipam.Kind) { s.gens[kind].Add(1) }

func (s *Store) bumpAll() {
	for _, k := range ipam.Kinds {
		s.gens[k].Add(1)
	}
}

// kindOf returns the kind of the record stored under the etcd key, or 0 for
// a key that is not one of the store's.
func (s *Store) kindOf(key []byte) ipam.Kind {
	rest, ok := strings.CutPrefix(string(key), s.prefix)
	if !ok {
		return 0
	}
	name, _, ok := strings.Cut(rest, "/")
	if !ok {
		return 0
	}
	for _, k := range ipam.Kinds {
		if k.String() == name {
			return k
		}
	}
	return 0
}

// Watch restarts back off from minBackoff to maxBackoff.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// watch follows every change under the prefix from revision rev on and
// moves the generation of the changed record's kind, until ctx ends or the
// client is closed.
//
// The etcd client resumes a watch by itself after a lost connection. The
// channel closes only when the watch is cancelled: by ctx, by a closed
// client, by a compaction past the revision the watch needs, or because
// the member lost its leader. Then every kind moves, since changes may
// have been missed, Generation stays blind until the watch is back, and the
// watch resumes where it stopped (or at the compaction, the oldest revision
// still known).
func (s *Store) watch(ctx context.Context, client *clientv3.Client, rev int64) {
	defer close(s.watchDone)
	defer s.blind.Store(true)
	backoff := minBackoff
	for {
		// WithRequireLeader: a member cut off from its cluster cancels the
		// watch instead of going quiet while the others move on.
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		ch := client.Watch(wctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev),
			clientv3.WithCreatedNotify(), clientv3.WithProgressNotify())
		for resp := range ch {
			if resp.Created {
				if s.blind.Swap(false) {
					// Back after a gap: whatever happened in it is covered by
					// the events from rev on, except what a compaction dropped,
					// which the CompactRevision response below covers.
					s.bumpAll()
				}
				backoff = minBackoff
			}
			if resp.CompactRevision != 0 {
				// The history from rev on is gone: assume everything changed
				// and go on from the oldest revision etcd still has.
				s.bumpAll()
				rev = resp.CompactRevision
				continue
			}
			if resp.Err() != nil {
				continue // the channel closes next
			}
			if resp.IsProgressNotify() {
				// Every change up to the header's revision has been
				// delivered: a restart need not go back further, which
				// keeps it clear of compactions on a quiet prefix.
				rev = max(rev, resp.Header.Revision+1)
				continue
			}
			for _, ev := range resp.Events {
				if k := s.kindOf(ev.Kv.Key); k != 0 {
					s.bump(k)
				}
				rev = ev.Kv.ModRevision + 1
			}
		}
		cancel()
		s.blind.Store(true)
		s.bumpAll()
		if ctx.Err() != nil || client.Ctx().Err() != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-client.Ctx().Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}
