package etcdstore

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/carve-ipam/carve/ipam"
)

// Generation implements [ipam.Generations]. The number of a kind an
// allocator caches (pools, configuration, reservations, affinities, node
// labels) moves when a write through this Store returns, and when the
// kind's watch reports a change made by anyone (this Store included, so
// each of its own writes moves it twice). It lags etcd by the watch's
// delivery time: see the package documentation.
//
// Blocks and handles are not watched (see the package documentation): their numbers change
// on every call, as they do for every kind while its watch is down (after
// Close, or between a failure and its restart), so that an allocator
// re-reads instead of trusting a cache nobody keeps up to date.
func (s *Store) Generation(kind ipam.Kind) uint64 {
	if !validKind(kind) {
		return 0
	}
	if s.blind[kind].Load() {
		return s.gens[kind].Add(1)
	}
	return s.gens[kind].Load()
}

func (s *Store) bump(kind ipam.Kind) { s.gens[kind].Add(1) }

// watched reports whether the store watches the records of kind: the
// kinds an allocator caches under their generations. Blocks and handles
// are written on every assignment and release, and no allocator keeps
// them by generation; watching them would send every process every block
// written in the cluster.
func watched(kind ipam.Kind) bool { return kind != ipam.KindBlock && kind != ipam.KindHandle }

// Watch restarts back off from minBackoff to maxBackoff.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// watch follows every change of kind's records from revision rev on and
// moves the kind's generation, until ctx ends or the client is closed.
//
// The etcd client resumes a watch by itself after a lost connection. The
// channel closes only when the watch is cancelled: by ctx, by a closed
// client, by a compaction past the revision the watch needs, or because
// the member lost its leader. Then the kind's generation moves, since
// changes may have been missed, Generation stays blind for it until the
// watch is back, and the watch resumes where it stopped (or at the
// compaction, the oldest revision still known).
func (s *Store) watch(ctx context.Context, client *clientv3.Client, kind ipam.Kind, rev int64) {
	defer s.watchers.Done()
	defer s.blind[kind].Store(true)
	backoff := minBackoff
	for {
		// WithRequireLeader: a member cut off from its cluster cancels the
		// watch instead of going quiet while the others move on.
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		ch := client.Watch(wctx, s.kindPrefix[kind], clientv3.WithPrefix(), clientv3.WithRev(rev),
			clientv3.WithCreatedNotify(), clientv3.WithProgressNotify())
		for resp := range ch {
			if resp.Created {
				if s.blind[kind].Swap(false) {
					// Back after a gap: whatever happened in it is covered by
					// the events from rev on, except what a compaction dropped,
					// which the CompactRevision response below covers.
					s.bump(kind)
				}
				backoff = minBackoff
			}
			if resp.CompactRevision != 0 {
				// The history from rev on is gone: assume everything changed
				// and go on from the oldest revision etcd still has.
				s.bump(kind)
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
			if n := len(resp.Events); n > 0 {
				s.bump(kind)
				rev = resp.Events[n-1].Kv.ModRevision + 1
			}
		}
		cancel()
		s.blind[kind].Store(true)
		s.bump(kind)
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
