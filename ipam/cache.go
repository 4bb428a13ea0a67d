package ipam

import (
	"sync"
	"sync/atomic"
)

// maxCached bounds each of the allocator's caches; a full cache starts
// over. The caches only save reads (every write is checked by
// compare-and-swap), so forgetting is always safe.
const maxCached = 1 << 14

// cache is a bounded map safe for concurrent use, whose keys, once added,
// keep their value until the cache starts over. Every allocation looks
// things up in it, so a lookup of a key added a while ago takes no lock:
// it reads an immutable snapshot. Keys added since the last snapshot sit in
// dirty, under mu; once lookups have missed the snapshot as many times as
// dirty has keys, dirty becomes the snapshot (as sync.Map does, with types
// and without deletion).
type cache[K comparable, V any] struct {
	read atomic.Pointer[map[K]V] // never modified once stored

	mu     sync.Mutex
	dirty  map[K]V // read's keys and those added since; nil when there are none since
	misses int     // lookups that missed read since dirty was made
}

// get returns the value of k when the snapshot has it. A miss says nothing:
// k may be in dirty.
func (c *cache[K, V]) get(k K) (V, bool) {
	if m := c.read.Load(); m != nil {
		v, ok := (*m)[k]
		return v, ok
	}
	var zero V
	return zero, false
}

// getOrMake returns the value of k, made with newV and kept if there is
// none: every caller asking for k gets the same value until the cache
// starts over.
func (c *cache[K, V]) getOrMake(k K, newV func() V) V {
	if v, ok := c.get(k); ok {
		return v
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.read.Load()
	if m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	if c.dirty != nil {
		if v, ok := c.dirty[k]; ok {
			c.missed()
			return v
		}
	}
	v := newV()
	switch {
	case m != nil && len(*m) >= maxCached || len(c.dirty) >= maxCached:
		// Full: start over with k alone.
		c.read.Store(nil)
		c.dirty = map[K]V{k: v}
		c.misses = 0
		return v
	case c.dirty == nil:
		c.dirty = make(map[K]V, len(c.snapshot())+1)
		for k, v := range c.snapshot() {
			c.dirty[k] = v
		}
	}
	c.dirty[k] = v
	c.missed()
	return v
}

// snapshot returns the current snapshot, nil when there is none.
func (c *cache[K, V]) snapshot() map[K]V {
	if m := c.read.Load(); m != nil {
		return *m
	}
	return nil
}

// missed counts a lookup that needed dirty and promotes dirty to the
// snapshot once such lookups have paid for copying it. The caller holds mu.
func (c *cache[K, V]) missed() {
	if c.misses++; c.misses < len(c.dirty) {
		return
	}
	m := c.dirty
	c.read.Store(&m)
	c.dirty, c.misses = nil, 0
}
