package ipam_test

// Interleavings of the Collector with other writers that an adversarial
// review tried against it.

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestCollectorRebuildLosesToAssign: a ripe stale record; after the
// rebuild has read the record, and before its fresh read of the block, an
// AutoAssign under the handle raises the count and writes its block. The
// rebuild counts the new address (fresh read) against the record it read,
// and writes nothing, or would lose its compare-and-swap; nothing is lost.
func TestCollectorRebuildLosesToAssign(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	z := e.mustAssign4("node-1", "h", 1)[0]
	setHandle(t, e, "h", ipam.EncodeHandle(map[netip.Prefix]int{z.Block: 2}))
	var once sync.Once
	var mu sync.Mutex
	readRecord := false
	gs := getHookStore{&hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if op != "get" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case kind == ipam.KindHandle && key == "h":
			readRecord = true // the rebuild's read of the record
		case kind == ipam.KindBlock && readRecord: // its fresh read of the block
			once.Do(func() { e.mustAssign4("node-1", "h", 1) })
		}
	}}}
	ca, err := ipam.New(gs, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)
	o := &owners{alive: map[string]bool{"h": true}}
	c, err := ipam.NewCollector(ca, o.live, ipam.CollectorOptions{Grace: time.Minute})
	require.NoError(t, err)
	_, err = c.Collect(e.ctx)
	require.NoError(t, err)
	e.clock.Advance(time.Minute)
	_, err = c.Collect(e.ctx) // ripe: settling
	require.NoError(t, err)
	e.clock.Advance(30 * time.Second)
	_, err = c.Collect(e.ctx) // the assignment lands inside the rebuild
	require.NoError(t, err, "a rebuild that loses its race waits for the next pass")
	require.True(t, readRecord, "the rebuild ran")
	t.Logf("rebuild: %v; record %v", err, handleCounts(t, e, "h"))
	held, err := e.a.AssignedByHandle(e.ctx, "h")
	require.NoError(t, err)
	require.Len(t, held.IPv4, 2)
	require.GreaterOrEqual(t, handleCounts(t, e, "h")[z.Block], 2)
}

// TestCollectorLeakReassignedSameHandle: a dead handle's address is
// ripe; while the Collector asks again before releasing it, another
// allocator releases it and assigns it again under the same handle (a
// new sequence number). The Collector must not free the new allocation.
func TestCollectorLeakReassignedSameHandle(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	e.mustAssign4("node-1", "warm", 1)
	x := e.mustAssign4("node-1", "dead", 1)[0]
	other := e.allocator()
	o := &owners{alive: map[string]bool{"warm": true}}
	c := newCollector(t, e, o, time.Minute)
	collect(t, e, c)
	e.clock.Advance(time.Minute)
	var once sync.Once
	var again ipam.Assigned
	o.flip = func(handle string, calls int) {
		if handle != "dead" || calls < 4 { // the pass's first question is call 3 or earlier
			return
		}
		once.Do(func() {
			_, err := other.ReleaseIPs(e.ctx, ipam.Release{Addr: x.Addr})
			require.NoError(t, err)
			again, err = other.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: x.Addr, Handle: "dead", Node: "node-1"})
			require.NoError(t, err)
		})
	}
	res := collect(t, e, c)
	require.NotZero(t, again.Seq, "the reassignment ran during the pass")
	require.NotEqual(t, x.Seq, again.Seq)
	require.Empty(t, res.Released)
	held, err := e.a.AssignedByHandle(e.ctx, "dead")
	require.NoError(t, err)
	require.Len(t, held.IPv4, 1)
	require.Equal(t, again.Seq, held.IPv4[0].Seq)
	e.requireConsistent()
}

// TestRepairSettleReleaseInFlight: the Collector finding's
// interleaving against Repair with a settle time: a stale record, a
// release whose block write precedes the check and whose count lowering
// comes during the settle time. Repair then finds the record changed and
// leaves it; nothing is orphaned.
func TestRepairSettleReleaseInFlight(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	got := e.mustAssign4("node-1", "h", 2)
	y := got[0]
	setHandle(t, e, "h", ipam.EncodeHandle(map[netip.Prefix]int{y.Block: 3}))
	resume := make(chan struct{})
	lowered := make(chan struct{})
	var once sync.Once
	hs := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if kind == ipam.KindHandle && key == "h" {
			once.Do(func() { <-resume }) // the block is written: wait for the check
		}
	}}
	ra, err := ipam.New(hs, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)
	go func() {
		defer close(lowered)
		_, err := ra.ReleaseIPs(e.ctx, ipam.Release{Addr: y.Addr, Handle: "h", Seq: y.Seq})
		require.NoError(t, err)
	}()
	// Wait until the release's block write is done.
	require.Eventually(t, func() bool {
		held, err := e.a.AssignedByHandle(e.ctx, "h")
		return err == nil && len(held.IPv4) == 1
	}, 5*time.Second, time.Millisecond)
	ipam.SetSleep(e.a, func(ctx context.Context, d time.Duration) error {
		close(resume)
		<-lowered
		return nil
	})
	_, _, err = e.a.Repair(e.ctx, ipam.RepairOptions{Settle: time.Second})
	require.NoError(t, err)
	held, err := e.a.AssignedByHandle(e.ctx, "h")
	require.NoError(t, err)
	require.Len(t, held.IPv4, 1)
	require.GreaterOrEqual(t, handleCounts(t, e, "h")[y.Block], 1)
}
