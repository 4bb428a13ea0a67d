package memstore

import (
	"slices"
	"sort"
	"strings"
)

// keyed is a key with its entry, in a keyOrder.
type keyed struct {
	key string
	e   *entry
}

// maxChunk is the most keys a chunk of a keyOrder holds: an insert or a
// delete moves at most this many, plus a slice header per chunk when a
// chunk splits or goes.
const maxChunk = 512

// keyOrder holds keys in order, each with its entry, so that a List walks
// them without map lookups. The keys are kept in chunks of at most maxChunk
// in a row, rather than in one slice, so that a key created or deleted in
// the middle of a large kind (100,000 affinities, created in the order of
// node names) costs a move within its chunk instead of one of the whole
// order. The zero value is empty.
type keyOrder struct {
	chunks [][]keyed
}

// chunkFor returns the index of the chunk that holds key or would: the
// first whose last key is at or after key, or the last chunk when key
// comes after every key. There is at least one chunk.
func (o *keyOrder) chunkFor(key string) int {
	c := sort.Search(len(o.chunks), func(c int) bool {
		ch := o.chunks[c]
		return ch[len(ch)-1].key >= key
	})
	return min(c, len(o.chunks)-1)
}

// search returns the index in ch of the first key at or after key, and
// whether it is key.
func search(ch []keyed, key string) (int, bool) {
	return slices.BinarySearchFunc(ch, key, func(o keyed, k string) int { return strings.Compare(o.key, k) })
}

// insert adds key, with its entry p; key is not in o.
func (o *keyOrder) insert(key string, p *entry) {
	if len(o.chunks) == 0 {
		o.chunks = append(o.chunks, []keyed{{key, p}})
		return
	}
	c := o.chunkFor(key)
	old := o.chunks[c]
	i, _ := search(old, key)
	ch := slices.Insert(old, i, keyed{key, p})
	if cap(ch) != cap(old) {
		// Moved: the old room, which may be part of the array a reset
		// took over and so live on, keeps no entries alive.
		clear(old)
	}
	if len(ch) <= maxChunk {
		o.chunks[c] = ch
		return
	}
	// Split in halves; the second half gets room of its own.
	half := len(ch) / 2
	second := make([]keyed, len(ch)-half, maxChunk)
	copy(second, ch[half:])
	clear(ch[half:]) // no stale entries kept alive
	o.chunks[c] = ch[:half:half]
	o.chunks = slices.Insert(o.chunks, c+1, second)
}

// remove deletes key, if o holds it.
func (o *keyOrder) remove(key string) {
	if len(o.chunks) == 0 {
		return
	}
	c := o.chunkFor(key)
	i, ok := search(o.chunks[c], key)
	if !ok {
		return
	}
	ch := slices.Delete(o.chunks[c], i, i+1) // clears the freed element
	o.chunks[c] = ch
	switch {
	case len(ch) == 0:
		o.chunks = slices.Delete(o.chunks, c, c+1)
	case len(ch) < maxChunk/4:
		// A chunk this small joins a neighbour with room for it, so that
		// deletes do not leave the order a chain of tiny chunks.
		if c+1 < len(o.chunks) && len(ch)+len(o.chunks[c+1]) <= maxChunk {
			o.join(c)
		} else if c > 0 && len(ch)+len(o.chunks[c-1]) <= maxChunk {
			o.join(c - 1)
		}
	}
}

// join moves chunk c+1's keys to the end of chunk c and drops chunk c+1.
// The room either chunk leaves keeps no entries alive: it may be part of
// the array a reset took over, which the other chunks cut from it keep.
func (o *keyOrder) join(c int) {
	a, b := o.chunks[c], o.chunks[c+1]
	ch := append(a, b...)
	if cap(ch) != cap(a) {
		clear(a)
	}
	clear(b)
	o.chunks[c] = ch
	o.chunks = slices.Delete(o.chunks, c+1, c+2)
}

// reset replaces o's keys with sorted, whose backing array o takes over.
func (o *keyOrder) reset(sorted []keyed) {
	clear(o.chunks)
	o.chunks = o.chunks[:0]
	for len(sorted) > 0 {
		n := min(len(sorted), maxChunk/2) // room to grow before a split
		// A full slice expression: an insert into one chunk must not write
		// over the next one's keys in the shared array.
		o.chunks = append(o.chunks, sorted[:n:n])
		sorted = sorted[n:]
	}
}

// cursor walks a keyOrder's keys in order: see seek.
type cursor struct {
	o    *keyOrder
	c, i int
}

// seek returns a cursor at the first key at or after start.
func (o *keyOrder) seek(start string) cursor {
	if len(o.chunks) == 0 {
		return cursor{o: o}
	}
	c := o.chunkFor(start)
	i, _ := search(o.chunks[c], start)
	return cursor{o, c, i}
}

// rest returns the keys from the cursor to the end of its chunk, and moves
// the cursor to the next chunk; it returns none past the last key. A loop
// over the keys goes a chunk at a time with it, without a call per key.
// The order must not change meanwhile.
func (cu *cursor) rest() []keyed {
	for cu.c < len(cu.o.chunks) {
		ch := cu.o.chunks[cu.c][cu.i:]
		cu.c, cu.i = cu.c+1, 0
		if len(ch) > 0 {
			return ch
		}
	}
	return nil
}

// sortKeyed sorts ks by key.
func sortKeyed(ks []keyed) {
	slices.SortFunc(ks, func(a, b keyed) int { return strings.Compare(a.key, b.key) })
}
