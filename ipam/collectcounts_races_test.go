package ipam_test

// The Collector's rebuild of stale handle counts against releases in
// flight (found by an adversarial review, which broke the first version:
// it rebuilt from the same pass's read). Each test drives one interleaving
// deterministically with a hook store and the fake clock.

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// releaseDuringPass releases rel through an allocator whose handle writes
// for handle first run one Collector pass: the release's block write is
// done, its count lowering still to come, as for any release in flight.
func releaseDuringPass(t *testing.T, e *env, c *ipam.Collector, handle string, rel ipam.Release) ipam.CollectResult {
	t.Helper()
	var once sync.Once
	var res ipam.CollectResult
	var cerr error
	hs := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if kind == ipam.KindHandle && key == handle {
			once.Do(func() { res, cerr = c.Collect(e.ctx) })
		}
	}}
	a, err := ipam.New(hs, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)
	r, err := a.ReleaseIPs(e.ctx, rel)
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{rel.Addr}, r.Released)
	require.NoError(t, cerr)
	return res
}

// TestCollectorRebuildSettles: a handle's record counts
// one address too many (a crash leftover, which the Collector exists to
// repair) and has stood so, at one revision, for the grace period. The
// handle holds y and z. A release of y (an ordinary ReleaseIPs, in flight
// for no longer than a pass) writes its block just before the repairing
// pass reads the blocks and lowers the count just after that pass rebuilt
// the record. A rebuild from that pass's read alone would leave y out
// (neither of its reads shows y), and the release would then take y off
// again, leaving z without its count: the grace period covers the
// record's revision, not the release, which began long after the record
// was first seen and does not change the revision until it ends. The
// rebuild waits one pass and uses the read of the pass before.
func TestCollectorRebuildSettles(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	got := e.mustAssign4("node-1", "h", 2)
	y, z := got[0], got[1]
	require.Equal(t, y.Block, z.Block)
	blk := y.Block
	setHandle(t, e, "h", ipam.EncodeHandle(map[netip.Prefix]int{blk: 3})) // the crash leftover: one too many

	o := &owners{alive: map[string]bool{"h": true}}
	c := newCollector(t, e, o, time.Minute)
	require.Empty(t, collect(t, e, c).RepairedHandles)
	e.clock.Advance(time.Minute)

	res := releaseDuringPass(t, e, c, "h", ipam.Release{Addr: y.Addr, Handle: "h", Seq: y.Seq})
	t.Logf("the pass repaired %v; record now %v; z=%v", res.RepairedHandles, handleCounts(t, e, "h"), z.Addr)

	held, err := e.a.AssignedByHandle(e.ctx, "h")
	require.NoError(t, err, "z is still assigned to h, so h must be found")
	require.Len(t, held.IPv4, 1)
	require.GreaterOrEqual(t, handleCounts(t, e, "h")[blk], 1, "z must stay counted")
	// Later passes bring the count down to z alone.
	for range 4 {
		e.clock.Advance(30 * time.Second)
		collect(t, e, c)
	}
	require.Equal(t, map[netip.Prefix]int{blk: 1}, handleCounts(t, e, "h"))
	e.requireConsistent()
}

// TestCollectorRebuildKeepsNewHandleAlone: the same race with no crash at
// all, against NewHandle's at-most-one promise. Request A (NewHandle, two
// addresses) raises its count; a Collector pass runs while A's block write
// is pending (which the grace period is meant to wait out). A completes
// with y and z. A grace period later, y alone is released; that release is
// in flight across the next pass, which finds the record at the revision
// first seen, counting 2 where the blocks show 1. Rebuilt to 1 there, the
// release would lower it to 0 and delete it, the handle would hold z with
// no record, and request B (NewHandle, same handle) would assign too.
func TestCollectorRebuildKeepsNewHandleAlone(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	e.mustAssign4("node-1", "warm", 1) // node-1 holds a block
	o := &owners{alive: map[string]bool{"warm": true, "h": true}}
	c := newCollector(t, e, o, time.Minute)
	args := ipam.AutoAssignArgs{Num4: 2, Handle: "h", Node: "node-1", NewHandle: true}

	// A: a pass runs between A's count and its block write.
	var once sync.Once
	hs := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if kind == ipam.KindBlock && op == "update" {
			once.Do(func() {
				_, err := c.Collect(e.ctx)
				require.NoError(t, err)
			})
		}
	}}
	a, err := ipam.New(hs, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)
	resA, err := a.AutoAssign(e.ctx, args)
	require.NoError(t, err)
	require.Len(t, resA.IPv4, 2)
	e.requireConsistent()

	e.clock.Advance(time.Minute)
	y := resA.IPv4[0]
	res := releaseDuringPass(t, e, c, "h", ipam.Release{Addr: y.Addr, Handle: "h", Seq: y.Seq})
	t.Logf("the pass repaired %v; record now %v", res.RepairedHandles, handleCounts(t, e, "h"))

	resB, errB := e.a.AutoAssign(e.ctx, args)
	held, _ := e.a.AssignedByHandle(e.ctx, "h")
	t.Logf("A: %v\nB: %v %v\nheld: %v", resA, resB, errB, held)
	require.ErrorIs(t, errB, ipam.ErrHandleExists, "A and B both assigned under h with NewHandle; h holds %d addresses", held.Len())
}

// failSettleStore fails, once armed, the third write of one handle's
// record (for a batch over two blocks whose reservation overshot: the
// create of the reservation, the raise for the extra address, and the
// settle that lowers the unused spare), as a transient store error.
type failSettleStore struct {
	ipam.Store
	handle string
	mu     sync.Mutex
	armed  bool
	writes int
}

func (f *failSettleStore) fail(kind ipam.Kind, key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.armed || kind != ipam.KindHandle || key != f.handle {
		return false
	}
	f.writes++
	return f.writes == 3
}

func (f *failSettleStore) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (ipam.Revision, error) {
	if f.fail(kind, key) {
		return 0, errors.New("transient: etcdserver: request timed out")
	}
	return f.Store.Create(ctx, kind, key, value)
}

func (f *failSettleStore) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	if f.fail(kind, key) {
		return 0, errors.New("transient: etcdserver: request timed out")
	}
	return f.Store.Update(ctx, kind, key, value, rev)
}

func (f *failSettleStore) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	if f.fail(kind, key) {
		return errors.New("transient: etcdserver: request timed out")
	}
	return f.Store.Delete(ctx, kind, key, rev)
}

// TestCollectorRebuildKeepsNewHandleAloneAtCadence: the two-assign race
// with the Collector run every Grace/2, as its doc suggests, and no crash.
// Request A (NewHandle, two addresses) on a node holding two blocks
// reserves one address in each (its cached copy of the first block shows
// one free), finds two free in the first when it writes it, raises that
// count, and takes both there; its settle write, lowering the unused
// spare of the second block, fails transiently, which does not fail A
// ("it leaves counts too high, as a crash would"). The record now counts
// 2+1 where the blocks hold 2+0, and stays so: stale at one revision, as
// every pass sees. A grace period on, a release of one of A's two
// addresses is in flight across the repairing pass, which must not
// rebuild the record to the one address it sees: the release would then
// lower that to zero, and request B (NewHandle) would assign as well.
func TestCollectorRebuildKeepsNewHandleAloneAtCadence(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	fs := &failSettleStore{Store: e.store, handle: "h"}
	a, err := ipam.New(fs, ipam.Options{Now: e.clock.Now}) // no Generations: its cache may be stale
	require.NoError(t, err)
	// node-1 holds b1 (full, then two freed: one by a, one by another
	// allocator, so that a's copy shows one free) and b2.
	warm, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 16, Handle: "warm", Node: "node-1"})
	require.NoError(t, err)
	_, err = a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "warm2", Node: "node-1"})
	require.NoError(t, err)
	b1 := warm.IPv4[0].Block
	_, err = a.ReleaseIPs(e.ctx, ipam.Release{Addr: warm.IPv4[0].Addr})
	require.NoError(t, err)
	_, err = e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: warm.IPv4[1].Addr})
	require.NoError(t, err)

	fs.mu.Lock()
	fs.armed = true
	fs.mu.Unlock()
	args := ipam.AutoAssignArgs{Num4: 2, Handle: "h", Node: "node-1", NewHandle: true}
	resA, err := a.AutoAssign(e.ctx, args)
	require.NoError(t, err, "a failed settle write does not fail the request")
	require.Len(t, resA.IPv4, 2)
	require.Equal(t, b1, resA.IPv4[0].Block)
	require.Equal(t, b1, resA.IPv4[1].Block)
	t.Logf("A got %v; record %v", resA.IPv4, handleCounts(t, e, "h"))
	require.Equal(t, 3, func() int {
		n := 0
		for _, k := range handleCounts(t, e, "h") {
			n += k
		}
		return n
	}(), "the settle write failed: one count too many is left")

	o := &owners{alive: map[string]bool{"warm": true, "warm2": true, "h": true}}
	c := newCollector(t, e, o, time.Minute)
	collect(t, e, c)
	e.clock.Advance(30 * time.Second)
	require.Empty(t, collect(t, e, c).RepairedHandles)
	e.clock.Advance(30 * time.Second)

	y := resA.IPv4[0]
	res := releaseDuringPass(t, e, c, "h", ipam.Release{Addr: y.Addr, Handle: "h", Seq: y.Seq})
	t.Logf("the pass repaired %v; record now %v", res.RepairedHandles, handleCounts(t, e, "h"))

	resB, errB := e.a.AutoAssign(e.ctx, args)
	held, _ := e.a.AssignedByHandle(e.ctx, "h")
	t.Logf("B: %v %v\nheld: %v", resB, errB, held)
	require.ErrorIs(t, errB, ipam.ErrHandleExists, "A and B both assigned under h with NewHandle; h holds %d addresses", held.Len())
}
