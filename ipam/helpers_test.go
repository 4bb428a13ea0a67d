package ipam_test

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

// clock is a settable clock for tests.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// env is one store with an allocator on it.
type env struct {
	t     testing.TB
	ctx   context.Context
	store *memstore.Store
	clock *clock
	a     *ipam.Allocator
}

func newEnv(t testing.TB, pools ...pool.Pool) *env {
	t.Helper()
	e := &env{t: t, ctx: t.Context(), store: memstore.New(), clock: newClock()}
	e.a = e.allocator()
	for _, p := range pools {
		require.NoError(t, e.a.CreatePool(e.ctx, p), "create pool %s", p.Name)
	}
	return e
}

// allocator returns another allocator on the same store, as another
// process would have.
func (e *env) allocator() *ipam.Allocator {
	a, err := ipam.New(e.store, ipam.Options{Now: e.clock.Now})
	require.NoError(e.t, err)
	return a
}

func (e *env) config(c ipam.Config) {
	e.t.Helper()
	require.NoError(e.t, e.a.SetConfig(e.ctx, c))
}

// cooldown stores DefaultConfig with a release cooldown of d.
func (e *env) cooldown(d time.Duration) {
	cfg := ipam.DefaultConfig()
	cfg.ReleaseCooldown = d
	e.config(cfg)
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func mustAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }

// leftoverBlock stores an empty block without affinity or release times
// under key (its store key), as a crash during an affinity release leaves
// one.
func (e *env) leftoverBlock(cidr, key string) netip.Prefix {
	e.t.Helper()
	b, err := block.New(mustPrefix(cidr))
	require.NoError(e.t, err)
	data, err := b.MarshalBinary()
	require.NoError(e.t, err)
	_, err = e.store.Create(e.ctx, ipam.KindBlock, key, data)
	require.NoError(e.t, err)
	return b.Prefix()
}

func v4pool(name, cidr string, blockSize int) pool.Pool {
	return pool.Pool{Name: name, CIDR: mustPrefix(cidr), BlockSize: blockSize}
}

// assign4 asks for n IPv4 addresses for node under handle.
func (e *env) assign4(node, handle string, n int) (ipam.AutoAssignResult, error) {
	return e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: n, Handle: handle, Node: node})
}

func (e *env) mustAssign4(node, handle string, n int) []ipam.Assigned {
	e.t.Helper()
	res, err := e.assign4(node, handle, n)
	require.NoError(e.t, err)
	require.Len(e.t, res.IPv4, n)
	return res.IPv4
}

func addrs(as []ipam.Assigned) []netip.Addr {
	out := make([]netip.Addr, len(as))
	for i, a := range as {
		out[i] = a.Addr
	}
	return out
}

func blocksOf(as []ipam.Assigned) map[netip.Prefix]int {
	m := map[netip.Prefix]int{}
	for _, a := range as {
		m[a.Block]++
	}
	return m
}

// affine returns the blocks the store says node holds.
func (e *env) affine(node string) []netip.Prefix {
	e.t.Helper()
	var out []netip.Prefix
	for _, pu := range e.utilization() {
		for _, b := range pu.Blocks {
			if b.Affinity.Name == node {
				out = append(out, b.Prefix)
			}
		}
	}
	return out
}

func (e *env) utilization() []ipam.PoolUtilization {
	e.t.Helper()
	u, err := e.a.Utilization(e.ctx)
	require.NoError(e.t, err)
	return u
}

func labels(kv ...string) selector.Set {
	s := selector.Set{}
	for i := 0; i+1 < len(kv); i += 2 {
		s[kv[i]] = kv[i+1]
	}
	return s
}

// requireConsistent fails the test unless Check finds the store clean.
func (e *env) requireConsistent() {
	e.t.Helper()
	r, err := e.a.Check(e.ctx)
	require.NoError(e.t, err)
	require.True(e.t, r.Clean(), "%v", r.Problems)
}

// keepers are the two ways an allocator writes blocks in the fault
// sweeps: handed to the store to keep (ipam.BlockKeeper, as memstore
// offers), or as bytes, as over a store in another process (etcdstore).
var keepers = []bool{true, false}

// faultyView returns the view of f an allocator takes in a fault sweep:
// with Committer or with Generations only, with BlockKeeper or without.
func faultyView(f *storetest.FaultyStore, commits, keeper bool) ipam.Store {
	s := f.WithGenerations()
	if commits {
		s = f.WithCommits()
	}
	if !keeper {
		s = storetest.WithoutBlockKeeper(s)
	}
	return s
}
