package ipam_test

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

// pauseStore pauses the first operation that matches, before it runs,
// until the test lets it go: an operation caught between two writes.
type pauseStore struct {
	hookStore
	paused, resume chan struct{}
}

func newPauseStore(e *env, match func(op string, kind ipam.Kind, key string) bool) *pauseStore {
	p := &pauseStore{paused: make(chan struct{}), resume: make(chan struct{})}
	var once sync.Once
	p.hookStore = hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if match(op, kind, key) {
			once.Do(func() {
				close(p.paused)
				<-p.resume
			})
		}
	}}
	return p
}

// handleCounts reads a handle record's counts.
func handleCounts(t *testing.T, e *env, handle string) map[netip.Prefix]int {
	t.Helper()
	rec, err := e.store.Get(e.ctx, ipam.KindHandle, handle)
	if errors.Is(err, ipam.ErrNotFound) {
		return map[netip.Prefix]int{}
	}
	require.NoError(t, err)
	counts, err := ipam.DecodeHandle(rec.Value)
	require.NoError(t, err)
	return counts
}

// TestRepairWhileAssigning: an assignment has raised its handle's count
// and not yet written its block when Repair checks. With a settle time the
// assignment finishes during the wait, and Repair leaves the count alone;
// without one, Repair lowers it at once, as documented for a quiet store,
// and the address then lands in the block with no count for it.
func TestRepairWhileAssigning(t *testing.T) {
	for _, settle := range []time.Duration{time.Hour, 0} {
		t.Run("settle="+settle.String(), func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
			e.mustAssign4("node-1", "other", 1) // the block exists: the next assignment updates it
			ps := newPauseStore(e, func(op string, kind ipam.Kind, key string) bool {
				return op == "update" && kind == ipam.KindBlock
			})
			assigner, err := ipam.New(ps, ipam.Options{})
			require.NoError(t, err)
			var got ipam.AutoAssignResult
			done := make(chan error)
			go func() {
				var err error
				got, err = assigner.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-1"})
				done <- err
			}()
			<-ps.paused // the count is raised, the block write is next
			var (
				once      sync.Once
				assignErr error
			)
			finish := func() error {
				once.Do(func() {
					close(ps.resume)
					assignErr = <-done
				})
				return assignErr
			}
			t.Cleanup(func() { _ = finish() })
			waited := time.Duration(0)
			ipam.SetSleep(e.a, func(ctx context.Context, d time.Duration) error {
				waited = d
				return finish()
			})

			actions, _, err := e.a.Repair(e.ctx, ipam.RepairOptions{Settle: settle})
			require.NoError(t, err)
			require.Len(t, actions, 1)
			require.Equal(t, ipam.ProblemHandleExcess, actions[0].Problem.Kind, "the check saw the raised count")
			require.True(t, actions[0].Done, actions[0].Note)
			if settle == 0 {
				require.Zero(t, waited, "no settle time, no wait")
				require.NoError(t, finish())
				r, err := e.a.Check(e.ctx)
				require.NoError(t, err)
				require.Equal(t, []ipam.ProblemKind{ipam.ProblemHandleMissing}, kinds(r), "why a store in use needs a settle time")
				return
			}
			require.Equal(t, settle, waited)
			require.Contains(t, actions[0].Note, "no longer found")
			requireClean(t, e)
			held, err := e.a.IPsByHandle(e.ctx, "h")
			require.NoError(t, err)
			require.Equal(t, addrs(got.IPv4), held)
		})
	}
}

// TestRepairWhileReleasing: a handle's count is one too high (a crash's
// leftover) when a release of one of its addresses writes the block after
// the check and lowers the count only after Repair has rewritten it.
// Repair must lower the count by the one both its reads agree on, not to
// what the block holds at its second read, or the release takes the same
// address off twice.
func TestRepairWhileReleasing(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	held := e.mustAssign4("node-1", "h", 2)
	blk := held[0].Block
	setHandle(t, e, "h", ipam.EncodeHandle(map[netip.Prefix]int{blk: 3}))

	ps := newPauseStore(e, func(op string, kind ipam.Kind, key string) bool {
		return op == "update" && kind == ipam.KindHandle
	})
	releaser, err := ipam.New(ps, ipam.Options{})
	require.NoError(t, err)
	done := make(chan error, 1)
	var once sync.Once
	resume := func() { once.Do(func() { close(ps.resume) }) }
	t.Cleanup(resume)
	waited := false
	ipam.SetSleep(e.a, func(ctx context.Context, d time.Duration) error {
		waited = true
		go func() {
			_, err := releaser.ReleaseIPs(e.ctx, ipam.Release{Addr: held[0].Addr})
			done <- err
		}()
		<-ps.paused // the block is written, the count not yet lowered
		return nil
	})
	actions, _, err := e.a.Repair(e.ctx, ipam.RepairOptions{Settle: time.Minute})
	require.NoError(t, err)
	require.True(t, waited, "Repair waited for the settle time")
	require.Len(t, actions, 1)
	require.True(t, actions[0].Done, actions[0].Note)
	require.Equal(t, map[netip.Prefix]int{blk: 2}, handleCounts(t, e, "h"), "lowered by the one phantom address only")
	resume()
	require.NoError(t, <-done)

	requireClean(t, e)
	got, err := e.a.IPsByHandle(e.ctx, "h")
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{held[1].Addr}, got)
}

// TestRepairIndexOfReleasedBlock: between the check and the repair of a
// missing index entry, the node gives the block up. The entry Repair adds
// must not outlive the affinity.
func TestRepairIndexOfReleasedBlock(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	held := e.mustAssign4("node-1", "h", 1)[0]
	key := "host:node-1/" + storeKey(t, e, held.Block)
	rec, err := e.store.Get(e.ctx, ipam.KindAffinity, key)
	require.NoError(t, err)
	require.NoError(t, e.store.Delete(e.ctx, ipam.KindAffinity, key, rec.Revision))

	other := e.allocator()
	var once sync.Once
	hs := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, k string) {
		if op == "create" && kind == ipam.KindAffinity && k == key {
			once.Do(func() {
				_, err := other.ReleaseByHandle(e.ctx, "h")
				require.NoError(t, err)
				require.NoError(t, other.ReleaseAffinity(e.ctx, "node-1", held.Block, true))
			})
		}
	}}
	repairer, err := ipam.New(hs, ipam.Options{})
	require.NoError(t, err)
	actions, after, err := repairer.Repair(e.ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	require.Len(t, actions, 1)
	require.Equal(t, ipam.ProblemAffinityUnindexed, actions[0].Problem.Kind)
	require.True(t, actions[0].Done, actions[0].Note)
	require.True(t, after.Clean(), "%v", after.Problems)
	_, err = e.store.Get(e.ctx, ipam.KindAffinity, key)
	require.ErrorIs(t, err, ipam.ErrNotFound, "no index entry for a block that is gone")
}

func TestRepairSettle(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	held := e.mustAssign4("node-1", "a", 1)[0]
	slept := 0
	ipam.SetSleep(e.a, func(ctx context.Context, d time.Duration) error {
		slept++
		return context.Canceled
	})

	_, _, err := e.a.Repair(e.ctx, ipam.RepairOptions{Settle: -time.Second})
	require.ErrorIs(t, err, ipam.ErrInvalid)
	require.ErrorContains(t, err, "-1s")

	_, _, err = e.a.Repair(e.ctx, ipam.RepairOptions{Settle: time.Minute})
	require.NoError(t, err)
	require.Zero(t, slept, "nothing to repair, nothing to wait for")

	_, err = e.store.Create(e.ctx, ipam.KindHandle, "ghost", ipam.EncodeHandle(map[netip.Prefix]int{held.Block: 1}))
	require.NoError(t, err)
	_, _, err = e.a.Repair(e.ctx, ipam.RepairOptions{Settle: time.Minute})
	require.ErrorIs(t, err, context.Canceled, "the wait ends with its context")
	require.Equal(t, 1, slept)
	require.Equal(t, map[netip.Prefix]int{held.Block: 1}, handleCounts(t, e, "ghost"), "nothing written")

	// The real wait honours the context.
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Millisecond)
	defer cancel()
	_, _, err = e.allocator().Repair(ctx, ipam.RepairOptions{Settle: time.Hour})
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

// readHookStore is hookStore that also runs hook before Get and after List.
type readHookStore struct {
	hookStore
}

func (h *readHookStore) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	h.hook("get", kind, key)
	return h.Store.Get(ctx, kind, key)
}

func (h *readHookStore) List(ctx context.Context, kind ipam.Kind, r ipam.KeyRange) ([]ipam.Record, error) {
	recs, err := h.Store.List(ctx, kind, r)
	h.hook("listed", kind, "")
	return recs, err
}

// releaseDuringRepair runs Repair with a settle time during which rels are
// released by another allocator, paused after its block write and before
// it reads the handle record; the release goes on once Repair is done.
func releaseDuringRepair(t *testing.T, e *env, rels ...ipam.Release) {
	t.Helper()
	releaser, blockWritten, resume := pausedReleaser(t, e)
	done := make(chan error, 1)
	ipam.SetSleep(e.a, func(ctx context.Context, d time.Duration) error {
		go func() {
			_, err := releaser.ReleaseIPs(e.ctx, rels...)
			done <- err
		}()
		<-blockWritten // the block is written; the handle not yet read
		return nil
	})
	actions, _, err := e.a.Repair(e.ctx, ipam.RepairOptions{Settle: time.Minute})
	require.NoError(t, err)
	require.NotEmpty(t, actions)
	resume()
	require.NoError(t, <-done)
}

// pausedReleaser returns an allocator on e's store whose first release
// stops after its block write, before it reads the handle record, until
// resume is called (once or more; the test's cleanup calls it too);
// blockWritten is closed when the release has stopped there.
func pausedReleaser(t *testing.T, e *env) (releaser *ipam.Allocator, blockWritten <-chan struct{}, resume func()) {
	t.Helper()
	written, gate := make(chan struct{}), make(chan struct{})
	var stop, open sync.Once
	resume = func() { open.Do(func() { close(gate) }) }
	t.Cleanup(resume)
	seenBlockWrite := false
	rs := &readHookStore{hookStore{Store: e.store}}
	rs.hook = func(op string, kind ipam.Kind, key string) {
		if kind == ipam.KindBlock && op == "update" {
			seenBlockWrite = true
		}
		if seenBlockWrite && op == "get" && kind == ipam.KindHandle {
			stop.Do(func() { close(written); <-gate })
		}
	}
	releaser, err := ipam.New(rs, ipam.Options{})
	require.NoError(t, err)
	return releaser, written, resume
}

// TestRepairCorruptHandleWhileReleasing: a handle record is corrupt, and a
// release of one of its two addresses writes its block before Repair's
// fresh read and reads the handle after Repair's rewrite. Rebuilt from the
// fresh read alone (1), the count would lose the released address twice,
// and the other address would have no count: Repair counts what either
// of its two reads shows (2).
func TestRepairCorruptHandleWhileReleasing(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	held := e.mustAssign4("node-1", "h", 2)
	setHandle(t, e, "h", []byte{0xff, 0xff})

	releaseDuringRepair(t, e, ipam.Release{Addr: held[0].Addr})
	requireClean(t, e)
	got, err := e.a.ReleaseByHandle(e.ctx, "h")
	require.NoError(t, err, "address %s is still held by h", held[1].Addr)
	require.Equal(t, []netip.Addr{held[1].Addr}, got)
}

// TestRepairUndercountWhileReleasing: the same with a record that counts
// fewer than the block holds ({B:1}, the block gives h 4) and a release of
// two of them (TestUndercountReleaseWithoutRepair shows that the release
// alone loses nothing).
func TestRepairUndercountWhileReleasing(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	held := e.mustAssign4("node-1", "h", 4)
	blk := held[0].Block
	setHandle(t, e, "h", ipam.EncodeHandle(map[netip.Prefix]int{blk: 1}))

	releaseDuringRepair(t, e, ipam.Release{Addr: held[0].Addr}, ipam.Release{Addr: held[1].Addr})
	require.Equal(t, map[netip.Prefix]int{blk: 2}, handleCounts(t, e, "h"), "raised to what the check saw (4), then lowered by the release")
	requireClean(t, e)
	got, err := e.a.ReleaseByHandle(e.ctx, "h")
	require.NoError(t, err, "addresses %s %s are still held by h", held[2].Addr, held[3].Addr)
	require.ElementsMatch(t, []netip.Addr{held[2].Addr, held[3].Addr}, got)
}

// TestUndercountReleaseWithoutRepair: a release below a count that is too
// low leaves the count alone (a lowering below zero is left out), so
// ReleaseByHandle still finds the rest.
func TestUndercountReleaseWithoutRepair(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	held := e.mustAssign4("node-1", "h", 4)
	blk := held[0].Block
	setHandle(t, e, "h", ipam.EncodeHandle(map[netip.Prefix]int{blk: 1}))
	_, err := e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: held[0].Addr}, ipam.Release{Addr: held[1].Addr})
	require.NoError(t, err)
	got, err := e.a.ReleaseByHandle(e.ctx, "h")
	require.NoError(t, err)
	require.ElementsMatch(t, []netip.Addr{held[2].Addr, held[3].Addr}, got)
}

// TestRepairBlockCarvedAgain: an empty block affine to a node lies outside
// every pool (its pool record lost it), and during Repair's settle time a
// pool that carves it is created again. Repair must leave the block to its
// node rather than delete it on the strength of the check.
func TestRepairBlockCarvedAgain(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	held := e.mustAssign4("node-a", "h", 1)[0]
	_, err := e.a.ReleaseByHandle(e.ctx, "h")
	require.NoError(t, err)
	other := newEnv(t, v4pool("other", "10.9.0.0/24", 26))
	rec, err := other.store.Get(other.ctx, ipam.KindPool, "default")
	require.NoError(t, err)
	cur, err := e.store.Get(e.ctx, ipam.KindPool, "default")
	require.NoError(t, err)
	_, err = e.store.Update(e.ctx, ipam.KindPool, "default", rec.Value, cur.Revision) // pool "p" lost
	require.NoError(t, err)
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Equal(t, []ipam.ProblemKind{ipam.ProblemBlockOutsidePools}, kinds(r))

	ghost := e.allocator()
	_, err = ghost.Store().Create(e.ctx, ipam.KindHandle, "ghost", ipam.EncodeHandle(map[netip.Prefix]int{held.Block: 1}))
	require.NoError(t, err) // a handle problem, so that Repair waits
	ipam.SetSleep(e.a, func(ctx context.Context, d time.Duration) error {
		return e.allocator().CreatePool(ctx, v4pool("p2", "10.0.0.0/24", 26))
	})
	actions, after, err := e.a.Repair(e.ctx, ipam.RepairOptions{Settle: time.Minute})
	require.NoError(t, err)
	var note string
	for _, act := range actions {
		if act.Problem.Kind == ipam.ProblemBlockOutsidePools {
			require.True(t, act.Done)
			note = act.Note
		}
	}
	require.Equal(t, "no longer found: a pool carves the block again", note)
	require.True(t, after.Clean(), "%v", after.Problems)
	require.Equal(t, []netip.Prefix{held.Block}, e.affine("node-a"), "the block is still node-a's")
}
