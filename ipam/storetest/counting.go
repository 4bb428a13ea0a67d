package storetest

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
)

// Op names a Store method.
type Op int

// The Store methods, as counted by CountingStore.
const (
	OpGet Op = iota
	OpList
	OpCreate
	OpUpdate
	OpDelete
	numOps
)

var opNames = [numOps]string{"get", "list", "create", "update", "delete"}

func (o Op) String() string {
	if o >= 0 && o < numOps {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// Counts is how many times each Store method was called, by record kind,
// and how many commits ([ipam.Committer]) were made. A write made in a
// commit counts as a call of its method (a create, an update or a delete)
// too, so Of answers the same whether the records were written one by one
// or together. The zero value counts no calls.
type Counts struct {
	n [numOps][8]int64
	// commits counts the calls of Commit, and inCommits the writes they
	// made, which n counts as well.
	commits, inCommits int64
}

// Total returns the store round trips: every call of a Store method other
// than in a commit, and every commit.
func (c Counts) Total() int64 {
	var n int64
	for _, byKind := range c.n {
		for _, v := range byKind {
			n += v
		}
	}
	return n - c.inCommits + c.commits
}

// Commits returns the number of commits.
func (c Counts) Commits() int64 { return c.commits }

// Of returns the calls of one method on one kind, alone or in a commit.
// It returns 0 for an op or kind out of range.
func (c Counts) Of(op Op, kind ipam.Kind) int64 {
	if op < 0 || op >= numOps || kind >= 8 {
		return 0
	}
	return c.n[op][kind]
}

// Add returns c plus d, the calls of two stores together.
func (c Counts) Add(d Counts) Counts {
	for i := range c.n {
		for k := range c.n[i] {
			c.n[i][k] += d.n[i][k]
		}
	}
	c.commits += d.commits
	c.inCommits += d.inCommits
	return c
}

// Sub returns c minus d, the calls made between two snapshots.
func (c Counts) Sub(d Counts) Counts {
	for i := range c.n {
		for k := range c.n[i] {
			c.n[i][k] -= d.n[i][k]
		}
	}
	c.commits -= d.commits
	c.inCommits -= d.inCommits
	return c
}

// String lists the non-zero counts, such as "get block=1 update block=1".
func (c Counts) String() string {
	var parts []string
	for op, byKind := range c.n {
		for k, v := range byKind {
			if v != 0 {
				parts = append(parts, fmt.Sprintf("%s %s=%d", Op(op), ipam.Kind(k), v))
			}
		}
	}
	if c.commits != 0 {
		parts = append(parts, fmt.Sprintf("(%d in %d commits)", c.inCommits, c.commits))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// CountingStore wraps a Store and counts its calls, to measure how many
// round trips an operation costs. It passes the optional
// [ipam.Generations] and [ipam.Committer] capabilities through when the
// wrapped store has them, always offers [ipam.BlockKeeper] (writing
// encodings to a store without it, so that such a store gets a commit's
// writes in a slice of their own), and is safe for concurrent use. An
// allocator takes a store with BlockKeeper for one in its own process and
// keeps no memo of the handle records it writes there (see
// [ipam.Allocator.ReleaseByHandle]); to count a remote store's calls as
// allocators make them, hide BlockKeeper behind a struct that embeds only
// the interfaces the remote store offers, as etcdstore's benchmarks do.
type CountingStore struct {
	ipam.Store
	counts             [numOps][8]atomic.Int64
	commits, inCommits atomic.Int64
}

// NewCountingStore returns a CountingStore around s.
func NewCountingStore(s ipam.Store) ipam.Store {
	c := &CountingStore{Store: s}
	g, gens := s.(ipam.Generations)
	cm, commits := s.(ipam.Committer)
	switch {
	case gens && commits:
		return &countingGensCommit{countingGens{c, g}, cm}
	case gens:
		return &countingGens{CountingStore: c, gens: g}
	case commits:
		return &countingCommit{c, cm}
	}
	return c
}

// countingGens is a CountingStore whose store offers Generations.
type countingGens struct {
	*CountingStore
	gens ipam.Generations
}

func (c *countingGens) Generation(kind ipam.Kind) uint64 { return c.gens.Generation(kind) }

// countingCommit is a CountingStore whose store offers Committer.
type countingCommit struct {
	*CountingStore
	cm ipam.Committer
}

// Commit implements [ipam.Committer], counted as one commit and as a call
// of each write's method.
func (c *countingCommit) Commit(ctx context.Context, writes []ipam.Write, revs []ipam.Revision) error {
	return c.commit(ctx, c.cm, writes, revs)
}

// countingGensCommit is a CountingStore whose store offers Generations and
// Committer.
type countingGensCommit struct {
	countingGens
	cm ipam.Committer
}

// Commit implements [ipam.Committer], as countingCommit's does.
func (c *countingGensCommit) Commit(ctx context.Context, writes []ipam.Write, revs []ipam.Revision) error {
	return c.commit(ctx, c.cm, writes, revs)
}

func (c *CountingStore) commit(ctx context.Context, cm ipam.Committer, writes []ipam.Write, revs []ipam.Revision) error {
	c.commits.Add(1)
	c.inCommits.Add(int64(len(writes)))
	for _, w := range writes {
		switch {
		case w.Delete:
			c.count(OpDelete, w.Kind)
		case w.Rev == 0:
			c.count(OpCreate, w.Kind)
		default:
			c.count(OpUpdate, w.Kind)
		}
	}
	return commitTo(ctx, c.Store, cm, writes, revs)
}

// CountsOf returns the counts of a store made by NewCountingStore, or
// false if s is not one.
func CountsOf(s ipam.Store) (Counts, bool) {
	var c *CountingStore
	switch s := s.(type) {
	case *CountingStore:
		c = s
	case *countingGens:
		c = s.CountingStore
	case *countingCommit:
		c = s.CountingStore
	case *countingGensCommit:
		c = s.CountingStore
	default:
		return Counts{}, false
	}
	var out Counts
	for op := range c.counts {
		for k := range c.counts[op] {
			out.n[op][k] = c.counts[op][k].Load()
		}
	}
	out.commits, out.inCommits = c.commits.Load(), c.inCommits.Load()
	return out, true
}

func (c *CountingStore) count(op Op, kind ipam.Kind) {
	if kind < 8 {
		c.counts[op][kind].Add(1)
	}
}

// Get implements [ipam.Store].
func (c *CountingStore) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	c.count(OpGet, kind)
	return c.Store.Get(ctx, kind, key)
}

// List implements [ipam.Store].
func (c *CountingStore) List(ctx context.Context, kind ipam.Kind, r ipam.KeyRange) ([]ipam.Record, error) {
	c.count(OpList, kind)
	return c.Store.List(ctx, kind, r)
}

// Create implements [ipam.Store].
func (c *CountingStore) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (ipam.Revision, error) {
	c.count(OpCreate, kind)
	return c.Store.Create(ctx, kind, key, value)
}

// Update implements [ipam.Store].
func (c *CountingStore) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	c.count(OpUpdate, kind)
	return c.Store.Update(ctx, kind, key, value, rev)
}

// Delete implements [ipam.Store].
func (c *CountingStore) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	c.count(OpDelete, kind)
	return c.Store.Delete(ctx, kind, key, rev)
}

// CreateBlock implements [ipam.BlockKeeper], counted as a Create of a block.
// It passes the block to the wrapped store's BlockKeeper, or writes its
// encoding when the wrapped store has none.
func (c *CountingStore) CreateBlock(ctx context.Context, key string, b *block.Block) (ipam.Revision, error) {
	c.count(OpCreate, ipam.KindBlock)
	return putBlock(ctx, c.Store, key, b, 0)
}

// UpdateBlock implements [ipam.BlockKeeper], counted as an Update of a
// block, as CreateBlock does.
func (c *CountingStore) UpdateBlock(ctx context.Context, key string, b *block.Block, rev ipam.Revision) (ipam.Revision, error) {
	c.count(OpUpdate, ipam.KindBlock)
	return putBlock(ctx, c.Store, key, b, rev)
}
