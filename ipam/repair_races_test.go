package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestRepairAssignAndReleaseDuringSettle: handle h holds A. An
// AutoAssign of one more address to h has raised h's count (2) and not yet
// written its block when Repair checks, so the check sees one too many
// (the block gives h 1). During the settle time the assignment finishes
// (C lands in the block: the fresh read would agree with the count) and a
// release of A writes its block, reading the handle record only after
// Repair's rewrite, as in TestRepairWhileReleasing. Both operations are
// far shorter than the settle time.
//
// The check's excess (the assignment in flight) and the fresh read's
// excess (the release in flight) are different addresses. Repair once
// took them for the same one and lowered the count by 1; the release then
// lowered it by 1 again, and the record was deleted while the block still
// gave h the address C that AutoAssign returned ("never an address
// without its count"). Told apart by sequence number, the count stays.
func TestRepairAssignAndReleaseDuringSettle(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	a := e.mustAssign4("node-1", "h", 1)[0]

	// The assigner stops between its handle write and its block write.
	ps := newPauseStore(e, func(op string, kind ipam.Kind, key string) bool {
		return op == "update" && kind == ipam.KindBlock
	})
	assigner, err := ipam.New(ps, ipam.Options{})
	require.NoError(t, err)
	var got ipam.AutoAssignResult
	assigned := make(chan error, 1)
	go func() {
		var err error
		got, err = assigner.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-1"})
		assigned <- err
	}()
	<-ps.paused
	var resumeAssign sync.Once
	t.Cleanup(func() { resumeAssign.Do(func() { close(ps.resume) }) })

	// The releaser stops after its block write, before it reads the handle.
	releaser, blockWritten, resumeRelease := pausedReleaser(t, e)
	released := make(chan error, 1)

	ipam.SetSleep(e.a, func(ctx context.Context, d time.Duration) error {
		resumeAssign.Do(func() { close(ps.resume) })
		if err := <-assigned; err != nil {
			return err
		}
		go func() {
			_, err := releaser.ReleaseIPs(e.ctx, ipam.Release{Addr: a.Addr})
			released <- err
		}()
		<-blockWritten
		return nil
	})
	actions, _, err := e.a.Repair(e.ctx, ipam.RepairOptions{Settle: time.Minute})
	require.NoError(t, err)
	require.NotEmpty(t, actions)
	resumeRelease()
	require.NoError(t, <-released)

	require.Len(t, got.IPv4, 1)
	c := got.IPv4[0].Addr
	own, err := e.a.Owner(e.ctx, c)
	require.NoError(t, err)
	require.Equal(t, "h", own.Handle, "the block gives h the address AutoAssign returned")
	held, err := e.a.IPsByHandle(e.ctx, "h")
	require.NoError(t, err, "address %s, held by h in its block, is lost to its handle", c)
	require.Equal(t, []netip.Addr{c}, held)
	requireClean(t, e)
}

// TestIndexKeyOfUnknownOwner: an affinity index key whose owner
// part is not an affinity carve writes ("bogus/<block key>": no "host:" or
// "virtual:") is a key carve never writes, which ProblemCorrupt is for,
// and a repairable one (Repair deletes malformed index keys). It was once
// reported as affinity-stale, which Repair then failed to fix every time.
func TestIndexKeyOfUnknownOwner(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	held := e.mustAssign4("node-1", "h", 1)[0]
	_, err := e.store.Create(e.ctx, ipam.KindAffinity, "bogus/"+storeKey(t, e, held.Block), nil)
	require.NoError(t, err)

	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Len(t, r.Problems, 1)
	require.True(t, r.Repairable())
	require.Equal(t, ipam.ProblemCorrupt, r.Problems[0].Kind)
	actions, after, err := e.a.Repair(e.ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	require.Len(t, actions, 1)
	require.True(t, actions[0].Done, "%s: %s", actions[0].Problem, actions[0].Note)
	require.True(t, after.Clean(), "%v", after.Problems)
	actions, _, err = e.a.Repair(e.ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	require.Empty(t, actions, "a second Repair has nothing to do")
}

// TestRepairInventsNoHandleRecord: Repair on a store in use (with a
// settle time, as documented for that case). A ReleaseByHandle of h runs
// to completion between the check's read of the blocks and its read of
// the handle records: the check sees h's address in its block and no
// record, a passing problem Check's documentation warns of. Repair's
// fresh read of the block after the settle time shows the address free.
// With no record, no release in flight can lower a count, so the fresh
// read alone decides: Repair once created a record counting the address,
// leaving a consistent store inconsistent.
func TestRepairInventsNoHandleRecord(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	e.mustAssign4("node-1", "keep", 1)
	e.mustAssign4("node-1", "h", 1)

	other := e.allocator()
	var once sync.Once
	rs := &readHookStore{hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if op == "listed" && kind == ipam.KindBlock {
			once.Do(func() {
				_, err := other.ReleaseByHandle(e.ctx, "h") // quick, and over before the settle time starts
				require.NoError(t, err)
			})
		}
	}}}
	repairer, err := ipam.New(rs, ipam.Options{})
	require.NoError(t, err)
	ipam.SetSleep(repairer, func(ctx context.Context, d time.Duration) error { return nil })
	_, after, err := repairer.Repair(e.ctx, ipam.RepairOptions{Settle: time.Minute})
	require.NoError(t, err)

	_, err = e.store.Get(e.ctx, ipam.KindHandle, "h")
	require.ErrorIs(t, err, ipam.ErrNotFound, "h was released before Repair's fresh read: it needs no record; it has %v", handleCounts(t, e, "h"))
	require.True(t, after.Clean(), "%v", after.Problems)
	actions, _, err := e.a.Repair(e.ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	require.Empty(t, actions, "a second Repair of a quiet store has nothing to do")
}

// TestReleaseHostAffinitiesSkipsMissingBlock: a crash between the
// two writes of a claim leaves an index entry without its block (the
// write order's documented leftover). ReleaseHostAffinities returns "the
// blocks released", and treats an entry whose block is another node's as
// a stale entry it does not report; an entry whose block does not exist
// at all is not reported either (it once was, as a released block).
func TestReleaseHostAffinitiesSkipsMissingBlock(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	held := e.mustAssign4("node-1", "h", 1)[0]
	_, err := e.store.Create(e.ctx, ipam.KindAffinity, "host:node-1/v4:0a000000/26", nil) // 10.0.0.0/26: no such block
	require.NoError(t, err)
	require.NotEqual(t, mustPrefix("10.0.0.0/26"), held.Block)

	released, err := e.a.ReleaseHostAffinities(e.ctx, "node-1", false)
	require.NoError(t, err)
	require.Equal(t, fmt.Sprint([]netip.Prefix{held.Block}), fmt.Sprint(released), "only the block node-1 held")
}
