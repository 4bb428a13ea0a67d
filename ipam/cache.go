package ipam

import "sync"

// maxCached bounds each of the allocator's caches; a full cache starts
// over. The caches only save reads (every write is checked by
// compare-and-swap), so forgetting is always safe.
const maxCached = 1 << 14

// cache is a bounded map safe for concurrent use, read-mostly.
type cache[K comparable, V any] struct {
	mu sync.RWMutex
	m  map[K]V
}

func (c *cache[K, V]) get(k K) (V, bool) {
	c.mu.RLock()
	v, ok := c.m[k]
	c.mu.RUnlock()
	return v, ok
}

func (c *cache[K, V]) put(k K, v V) {
	c.mu.Lock()
	c.putLocked(k, v)
	c.mu.Unlock()
}

func (c *cache[K, V]) putLocked(k K, v V) {
	if c.m == nil || len(c.m) >= maxCached {
		c.m = make(map[K]V)
	}
	c.m[k] = v
}

// getOrMake returns the value of k, made with newV and kept if there is
// none: every caller asking for k at once gets the same value.
func (c *cache[K, V]) getOrMake(k K, newV func() V) V {
	if v, ok := c.get(k); ok {
		return v
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.m[k]; ok {
		return v
	}
	v := newV()
	c.putLocked(k, v)
	return v
}
