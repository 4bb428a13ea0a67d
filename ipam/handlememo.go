package ipam

import (
	"net/netip"
	"sync"
)

// On a store that offers Committer and not BlockKeeper (a store in
// another process: etcd, a database), an allocator remembers each handle
// record it wrote (the record and its revision) until it deletes it, so
// that ReleaseByHandle can make its one commit at once instead of reading
// the record first: a release by handle is then one round trip, not two.
// A store that keeps blocks (memstore) is in this process, where a read
// costs about what the memo would, so no memo is kept there.
//
// The commit checks the record's revision as it checks the blocks', so a
// record that anyone changed since (another allocator, a Repair) refuses
// it, and the release starts over from a read: a memo saves a read, it
// never stands in for one. Only records of one or two blocks (a pod's, a
// dual-stack pod's) are remembered, at about 100 bytes each with the
// map's share, and no more than maxCached of them.

// handleMemo is a handle record of one or two blocks as the allocator
// last wrote it, at rev. It holds no pointers, which keeps the map's
// inserts and deletes cheap.
type handleMemo struct {
	rev Revision
	n   int
	es  [2]memoEntry
}

// memoEntry is a handleCount without pointers.
type memoEntry struct {
	addr  [16]byte
	bits  int16
	v4    bool
	count int32
}

// memoShards spreads the memos over locks, so that allocations for
// different handles seldom wait for each other.
const memoShards = 16

// handleMemos is the allocator's memo of each handle record it wrote.
type handleMemos struct {
	shards [memoShards]memoShard
}

type memoShard struct {
	mu sync.Mutex
	m  map[string]handleMemo
	_  [48]byte // a shard per cache line
}

// shard returns the shard of handle. Handles are named by IDs that
// differ at the end (a container ID) or in the middle.
func (ms *handleMemos) shard(handle string) *memoShard {
	n := len(handle)
	if n == 0 {
		return &ms.shards[0] // no such handle is ever written
	}
	return &ms.shards[(uint(handle[n-1])^uint(handle[n/2])<<1)%memoShards]
}

// remember records h's record in the allocator's memo after h wrote it,
// when the allocator keeps one (see handleMemos).
func (h *handleTx) remember() {
	if h.a.memo {
		h.a.memos.keep(h)
	}
}

// keep records h's record, just written by h at h.rev, or forgets it when
// the write deleted it or it does not fit a memo.
func (ms *handleMemos) keep(h *handleTx) {
	var m handleMemo
	es := h.rec.entries()
	fits := h.rev != 0 && len(es) > 0 && len(es) <= len(m.es)
	if fits {
		m.rev, m.n = h.rev, len(es)
		for i, hc := range es {
			m.es[i] = memoEntry{hc.block.Addr().As16(), int16(hc.block.Bits()), hc.block.Addr().Is4(), int32(hc.count)}
		}
	}
	s := ms.shard(h.id)
	s.mu.Lock()
	switch {
	case !fits:
		delete(s.m, h.id)
	case s.m == nil || len(s.m) >= maxCached/memoShards:
		// Empty or full: start over, as the other caches do.
		s.m = map[string]handleMemo{h.id: m}
	default:
		s.m[h.id] = m
	}
	s.mu.Unlock()
}

// get returns the memo of handle, if there is one.
func (ms *handleMemos) get(handle string) (handleMemo, bool) {
	s := ms.shard(handle)
	s.mu.Lock()
	m, ok := s.m[handle]
	s.mu.Unlock()
	return m, ok
}

// load makes h the handle's record as m holds it.
func (m *handleMemo) load(h *handleTx) {
	var es [len(m.es)]handleCount
	for i := range m.n {
		x := &m.es[i]
		addr := netip.AddrFrom16(x.addr)
		if x.v4 {
			addr = addr.Unmap()
		}
		es[i] = handleCount{netip.PrefixFrom(addr, int(x.bits)), int(x.count)}
	}
	h.rec.setEntries(es[:m.n])
	h.rev, h.known = m.rev, true // a joined release writes, so checks, the record
}
