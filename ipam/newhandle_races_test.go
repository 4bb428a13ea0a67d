package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
)

// TestNewHandleDeleteRecreate: request A (NewHandle, dual-stack) creates
// the handle's record and writes its IPv4 block. Before A raises the count
// for its IPv6 block, a ReleaseByHandle (a CNI DEL after the ADD timed
// out) deletes the record and request B (NewHandle, the retried ADD)
// creates it again and assigns. A then reads a record at a revision it did
// not write, and must not take it for its own: only one request succeeds.
func TestNewHandleDeleteRecreate(t *testing.T) {
	e := newEnv(t, v4pool("v4", "10.0.0.0/24", 28),
		pool.Pool{Name: "v6", CIDR: mustPrefix("fd00::/120"), BlockSize: 124})
	other := e.allocator()
	const handle = "pod"
	args := ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: handle, Node: "node-1", NewHandle: true}

	var once sync.Once
	var resB ipam.AutoAssignResult
	var errB, errRel error
	hs := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if kind == ipam.KindHandle && key == handle && op == "update" {
			once.Do(func() {
				_, errRel = other.ReleaseByHandle(e.ctx, handle)
				resB, errB = other.AutoAssign(e.ctx, args)
			})
		}
	}}
	a, err := ipam.New(hs, ipam.Options{})
	require.NoError(t, err)
	resA, errA := a.AutoAssign(e.ctx, args)
	require.NoError(t, errRel, "the DEL")
	require.NoError(t, errB, "B ran once the handle held nothing")
	held, err := e.a.AssignedByHandle(e.ctx, handle)
	require.NoError(t, err)
	t.Logf("A: %v %v\nB: %v\nheld: %v", resA, errA, resB, held)
	require.ErrorIs(t, errA, ipam.ErrHandleExists,
		"A assigned under a handle that held B's addresses; the handle now holds %d addresses", held.Len())
}

// afterStore runs hook after each write it passes on, with the write's error.
type afterStore struct {
	ipam.Store
	hook func(op string, kind ipam.Kind, key string, err error)
}

func (h *afterStore) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (ipam.Revision, error) {
	rev, err := h.Store.Create(ctx, kind, key, value)
	h.hook("create", kind, key, err)
	return rev, err
}

func (h *afterStore) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	rev, err := h.Store.Update(ctx, kind, key, value, rev)
	h.hook("update", kind, key, err)
	return rev, err
}

func (h *afterStore) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	err := h.Store.Delete(ctx, kind, key, rev)
	h.hook("delete", kind, key, err)
	return err
}

// TestNewHandleUnreserveRecreate: the same race without any other caller
// touching A's handle. A (NewHandle) assigns an address that a
// reservation made during the request covers; A's unreserve releases it,
// which deletes the record. Request B (NewHandle, same handle) then finds
// the handle new, creates the record and assigns. A, assigning again for
// the reserved address, must find B's record not its own.
func TestNewHandleUnreserveRecreate(t *testing.T) {
	e := newEnv(t, v4pool("v4", "10.0.0.0/24", 28))
	warm := e.mustAssign4("node-1", "warm-up", 1)[0].Block // node-1's block
	other := e.allocator()
	const handle = "pod"
	args := ipam.AutoAssignArgs{Num4: 1, Handle: handle, Node: "node-1", NewHandle: true}

	var created, deleted sync.Once
	var resB ipam.AutoAssignResult
	var errB, errR error
	as := &afterStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string, err error) {
		if kind != ipam.KindHandle || key != handle || err != nil {
			return
		}
		switch op {
		case "create": // A's count is raised: a reservation arrives
			created.Do(func() {
				errR = other.CreateReservation(e.ctx, ipam.Reservation{Name: "r", CIDRs: []netip.Prefix{warm}})
			})
		case "delete": // A's unreserve gave its address back: B comes
			deleted.Do(func() { resB, errB = other.AutoAssign(e.ctx, args) })
		}
	}}
	a, err := ipam.New(as, ipam.Options{})
	require.NoError(t, err)
	resA, errA := a.AutoAssign(e.ctx, args)
	require.NoError(t, errR)
	held, err := e.a.AssignedByHandle(e.ctx, handle)
	require.NoError(t, err)
	t.Logf("A: %v %v\nB: %v %v\nheld: %v", resA, errA, resB, errB, held)
	require.False(t, errA == nil && errB == nil, "both NewHandle requests assigned; the handle holds %d addresses", held.Len())
}

// TestAssignedByHandleAddressOrder: AutoAssign returns a batch in the
// order it filled blocks; AssignedByHandle returns the same allocations in
// address order.
func TestAssignedByHandleAddressOrder(t *testing.T) {
	e := newEnv(t, v4pool("v4", "10.0.0.0/27", 28))
	args := ipam.AutoAssignArgs{Num4: 20, Handle: "h", Node: "node-1", NewHandle: true}
	first, err := e.a.AutoAssign(e.ctx, args)
	require.NoError(t, err)
	_, err = e.a.AutoAssign(e.ctx, args)
	require.ErrorIs(t, err, ipam.ErrHandleExists)
	again, err := e.a.AssignedByHandle(e.ctx, "h")
	require.NoError(t, err)
	require.ElementsMatch(t, first.IPv4, again.IPv4)
	require.True(t, slices.IsSortedFunc(again.IPv4, func(x, y ipam.Assigned) int { return x.Addr.Compare(y.Addr) }))
	require.NotEqual(t, first.IPv4[0], again.IPv4[0], "the claim order differs here, or the test shows nothing")
}

// TestNewHandleRecoveryAfterCrash: a crash at any operation of a
// dual-stack request with NewHandle may leave the handle holding part of
// what was asked (IPv4 and not IPv6), or counts without addresses. The
// documented recovery (ReleaseByHandle, Repair on the quiet store, ask
// again) always ends with a complete answer and a clean store.
func TestNewHandleRecoveryAfterCrash(t *testing.T) {
	args := ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "node-1", NewHandle: true}
	// Count the operations of a clean run, then crash at each in turn.
	e2 := faultEnv(t)
	e2.mustAssign4("node-1", "warm", 1)
	f2 := storetest.NewFaultyStore(e2.store, storetest.Fault{})
	a2, _ := ipam.New(f2, ipam.Options{})
	_, err := a2.AutoAssign(e2.ctx, args)
	require.NoError(t, err)
	short := 0
	for k := int64(1); k <= f2.Ops(); k++ {
		e := faultEnv(t)
		e.mustAssign4("node-1", "warm", 1)
		f := storetest.NewFaultyStore(e.store, storetest.Fault{At: k, Mode: storetest.Crash})
		a, _ := ipam.New(f, ipam.Options{})
		if _, err := a.AutoAssign(e.ctx, args); err == nil {
			continue
		}
		restarted := e.allocator()
		res, err := restarted.AutoAssign(e.ctx, args)
		if err == nil {
			require.Equal(t, 2, res.Len(), "crash at %d", k)
			continue
		}
		require.ErrorIs(t, err, ipam.ErrHandleExists, "crash at %d", k)
		if held, err := restarted.AssignedByHandle(e.ctx, args.Handle); err != nil || len(held.IPv4) != 1 || len(held.IPv6) != 1 {
			short++
			_, err := restarted.ReleaseByHandle(e.ctx, args.Handle)
			if err != nil {
				require.ErrorIs(t, err, ipam.ErrHandleNotFound)
			}
			_, _, err = restarted.Repair(e.ctx, ipam.RepairOptions{})
			require.NoError(t, err)
			res, err := restarted.AutoAssign(e.ctx, args)
			require.NoError(t, err, "crash at %d", k)
			require.Equal(t, 2, res.Len())
		}
		e.requireConsistent()
	}
	require.Positive(t, short, "some crash points leave a partial answer, or the test shows nothing")
}

// TestRetryDuringFirstRequestSeesHalf: a retried dual-stack request that
// arrives while the first is between its two families gets
// ErrHandleExists, and AssignedByHandle shows the IPv4 address only, as
// documented; once the first request is done it shows both.
func TestRetryDuringFirstRequestSeesHalf(t *testing.T) {
	e := faultEnv(t)
	e.mustAssign4("node-1", "warm", 1)
	other := e.allocator()
	args := ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "node-1", NewHandle: true}
	var once sync.Once
	var retried ipam.AutoAssignResult
	var rerr, aerr error
	hs := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if kind == ipam.KindHandle && op == "update" {
			once.Do(func() {
				_, aerr = other.AutoAssign(e.ctx, args)
				retried, rerr = other.AssignedByHandle(e.ctx, args.Handle)
			})
		}
	}}
	a, err := ipam.New(hs, ipam.Options{})
	require.NoError(t, err)
	first, err := a.AutoAssign(e.ctx, args)
	require.NoError(t, err)
	require.ErrorIs(t, aerr, ipam.ErrHandleExists)
	require.NoError(t, rerr)
	require.Equal(t, first.IPv4, retried.IPv4)
	require.Empty(t, retried.IPv6, "the first request has not written its IPv6 block yet")
	done, err := other.AssignedByHandle(e.ctx, args.Handle)
	require.NoError(t, err)
	require.Equal(t, first, done)
}

// flakyStore fails the first block update after arm with a transient
// error, without applying it.
type flakyStore struct {
	*afterStore
	armed, failed bool
	mu            sync.Mutex
}

func (f *flakyStore) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	f.mu.Lock()
	fail := kind == ipam.KindBlock && f.armed && !f.failed
	if fail {
		f.failed = true
	}
	f.mu.Unlock()
	if fail {
		return 0, errors.New("transient: connection reset")
	}
	return f.afterStore.Update(ctx, kind, key, value, rev)
}

// TestNewHandleAtMostOne: of two racing requests, B is refused while A
// is in flight, then A's block write fails and A rolls back: neither
// assigned (at most one does, as documented), the handle is new again,
// and B's retry assigns.
func TestNewHandleAtMostOne(t *testing.T) {
	e := faultEnv(t)
	e.mustAssign4("node-1", "warm", 1)
	other := e.allocator()
	args := ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-1", NewHandle: true}
	var errB error
	var once sync.Once
	fs := &flakyStore{}
	fs.afterStore = &afterStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string, err error) {
		if kind == ipam.KindHandle && op == "create" && err == nil {
			once.Do(func() {
				_, errB = other.AutoAssign(e.ctx, args)
				fs.mu.Lock()
				fs.armed = true
				fs.mu.Unlock()
			})
		}
	}}
	a, err := ipam.New(fs, ipam.Options{})
	require.NoError(t, err)
	_, errA := a.AutoAssign(e.ctx, args)
	require.Error(t, errA)
	require.ErrorIs(t, errB, ipam.ErrHandleExists)
	_, err = other.AssignedByHandle(e.ctx, "h")
	require.ErrorIs(t, err, ipam.ErrHandleNotFound)
	res, err := other.AutoAssign(e.ctx, args)
	require.NoError(t, err)
	require.Equal(t, 1, res.Len())
	e.requireConsistent()
}

// scriptStore runs before/after hooks around reads and writes, either
// of which may be nil: before may fail the operation, after may replace
// the error returned.
type scriptStore struct {
	ipam.Store
	before func(op string, kind ipam.Kind, key string) error
	after  func(op string, kind ipam.Kind, key string, err error) error
}

func (s *scriptStore) hooks(op string, kind ipam.Kind, key string, do func() error) error {
	if s.before != nil {
		if err := s.before(op, kind, key); err != nil {
			return err
		}
	}
	err := do()
	if s.after != nil {
		err = s.after(op, kind, key, err)
	}
	return err
}

func (s *scriptStore) Get(ctx context.Context, kind ipam.Kind, key string) (rec ipam.Record, err error) {
	err = s.hooks("get", kind, key, func() (err error) {
		rec, err = s.Store.Get(ctx, kind, key)
		return err
	})
	return rec, err
}

func (s *scriptStore) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (rev ipam.Revision, err error) {
	err = s.hooks("create", kind, key, func() (err error) {
		rev, err = s.Store.Create(ctx, kind, key, value)
		return err
	})
	return rev, err
}

func (s *scriptStore) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (next ipam.Revision, err error) {
	err = s.hooks("update", kind, key, func() (err error) {
		next, err = s.Store.Update(ctx, kind, key, value, rev)
		return err
	})
	return next, err
}

func (s *scriptStore) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	return s.hooks("delete", kind, key, func() error { return s.Store.Delete(ctx, kind, key, rev) })
}

// TestNewHandleLostDeleteReply: A (NewHandle) raises its count
// (creating the record) and its block write loses a compare-and-swap to
// another allocator's ordinary AssignIP. A lowers the count again: the
// record's delete is applied but its reply is lost. B, the retried
// request, now finds the handle new and assigns. A, retrying after the
// conflict, must find B's record not its own.
func TestNewHandleLostDeleteReply(t *testing.T) {
	e := newEnv(t, v4pool("v4", "10.0.0.0/24", 28))
	warm := e.mustAssign4("node-1", "warm", 1)[0]
	other := e.allocator()
	args := ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-1", NewHandle: true}
	var blockOnce, delOnce sync.Once
	var resB ipam.AutoAssignResult
	errB := errors.New("B never ran")
	s := &scriptStore{Store: e.store,
		before: func(op string, kind ipam.Kind, key string) error {
			if kind == ipam.KindBlock && op == "update" {
				blockOnce.Do(func() { // someone else writes A's block first
					_, err := other.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: warm.Block.Addr().Next().Next().Next().Next().Next(), Handle: "x", Node: "node-1"})
					require.NoError(t, err)
				})
			}
			return nil
		},
		after: func(op string, kind ipam.Kind, key string, err error) error {
			if kind == ipam.KindHandle && key == "h" && op == "delete" && err == nil {
				lost := false
				delOnce.Do(func() {
					lost = true
					resB, errB = other.AutoAssign(e.ctx, args)
				})
				if lost {
					return errors.New("delete handle: reply lost (timeout)")
				}
			}
			return err
		},
	}
	a, err := ipam.New(s, ipam.Options{})
	require.NoError(t, err)
	resA, errA := a.AutoAssign(e.ctx, args)
	held, _ := e.a.AssignedByHandle(e.ctx, "h")
	t.Logf("A: %v %v\nB: %v %v\nheld: %v", resA, errA, resB, errB, held)
	require.False(t, errA == nil && errB == nil, "both NewHandle requests assigned")
}

// TestAutoAssignNewHandleReleasedMeanwhile: AutoAssign's counterpart of
// TestAssignIPsNewHandleReleasedMeanwhile. A dual-stack NewHandle request
// assigns its IPv4 address, the pod's DEL releases the handle just then,
// and the IPv6 pool is full: the request fails for want of space, not
// with ErrHandleExists, leaves nothing, and the retried ADD assigns.
func TestAutoAssignNewHandleReleasedMeanwhile(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28), pool.Pool{Name: "p6", CIDR: mustPrefix("fd00::/126"), BlockSize: 126})
	_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num6: 4, Handle: "other", Node: "node-2"})
	require.NoError(t, err)
	del := e.allocator()
	released := false
	s := &afterHookStore{Store: e.store, after: func(op string, kind ipam.Kind, key string) {
		if !released && kind == ipam.KindBlock && op == "update" { // the IPv4 address's assignment
			got, err := del.ReleaseByHandle(e.ctx, "pod")
			require.NoError(t, err)
			require.Len(t, got, 1)
			released = true
		}
	}}
	add, err := ipam.New(s, ipam.Options{})
	require.NoError(t, err)
	_, err = add.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "pod", Node: "node-1", NewHandle: true})
	require.True(t, released)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.NotErrorIs(t, err, ipam.ErrHandleExists)
	e.requireConsistent()
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod", Node: "node-1", NewHandle: true})
	require.NoError(t, err, "the retried ADD finds the handle new")
}
