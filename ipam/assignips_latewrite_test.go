package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// lateStore holds back one block update: it returns a timeout without
// applying it, and applies it when land is called, as a write that
// reached the store only after its sender gave up on it. The read of the
// block right after the lost write fails too, so the writer cannot
// settle it.
type lateStore struct {
	ipam.Store
	key string

	mu       sync.Mutex
	armed    bool
	held     func() (ipam.Revision, error)
	failRead bool
}

func (s *lateStore) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	s.mu.Lock()
	if s.armed && kind == ipam.KindBlock && key == s.key {
		s.armed = false
		v := append([]byte(nil), value...)
		s.held = func() (ipam.Revision, error) {
			return s.Store.Update(context.Background(), kind, key, v, rev)
		}
		s.failRead = true
		s.mu.Unlock()
		return 0, errors.New("update: reply lost (timeout)")
	}
	s.mu.Unlock()
	return s.Store.Update(ctx, kind, key, value, rev)
}

func (s *lateStore) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	s.mu.Lock()
	if s.failRead && kind == ipam.KindBlock && key == s.key {
		s.failRead = false
		s.mu.Unlock()
		return ipam.Record{}, errors.New("get: timeout")
	}
	s.mu.Unlock()
	return s.Store.Get(ctx, kind, key)
}

// land applies the held write, as the store gets it late.
func (s *lateStore) land() (ipam.Revision, error) {
	s.mu.Lock()
	f := s.held
	s.held = nil
	s.mu.Unlock()
	if f == nil {
		return 0, errors.New("no write held")
	}
	return f()
}

// TestAssignIPsLateWriteAfterRollback: AssignIPs of one
// address; its block write times out without having reached the store
// yet, and the read that would settle it fails, so the outcome is
// unknown (handleTx.unsettled). The rollback reads the block, finds the
// address free and takes it as never assigned, without fencing the
// block at the revision the lost write expected (settleWrite does that
// fence): the error says "nothing assigned", and then the write reaches
// the store and assigns the address under the handle after all.
// settleWrite's own doc says a lost write may land after a read unless
// fenced.
func TestAssignIPsLateWriteAfterRollback(t *testing.T) {
	e := newEnv(t)
	require.NoError(t, e.a.CreatePool(e.ctx, v4pool("v4", "10.0.0.0/24", 28)))
	warm := e.mustAssign4("node-1", "warm", 1)[0]
	addr := warm.Block.Addr().Next().Next().Next()
	s := &lateStore{Store: e.store, key: "v4:" + hex4(warm.Block.Addr()) + "/28", armed: true}
	a, err := ipam.New(s, ipam.Options{})
	require.NoError(t, err)
	res, err := a.AssignIPs(e.ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{addr}, Handle: "h", Node: "node-1"})
	require.Error(t, err)
	require.Zero(t, res.Len())
	t.Logf("AssignIPs: %v", err)
	said := strings.Contains(err.Error(), "nothing assigned")

	_, lerr := s.land()
	t.Logf("late write: %v", lerr)
	held, herr := e.a.AssignedByHandle(e.ctx, "h")
	if said {
		require.ErrorIs(t, herr, ipam.ErrHandleNotFound, "AssignIPs said nothing was assigned, and then %v is assigned under the handle", held)
	}
	e.requireConsistent()
}
