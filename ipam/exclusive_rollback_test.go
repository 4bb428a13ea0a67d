package ipam_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

// reviewCommitHook is memstore with a hook after the first commit that
// writes a handle record (an assignment's joined commit).
type reviewCommitHook struct {
	*memstore.Store
	after func()
}

func (s *reviewCommitHook) Commit(ctx context.Context, ws []ipam.Write, revs []ipam.Revision) error {
	err := s.Store.Commit(ctx, ws, revs)
	if err == nil && s.after != nil {
		for _, w := range ws {
			if w.Kind == ipam.KindHandle {
				f := s.after
				s.after = nil
				f()
				break
			}
		}
	}
	return err
}

// TestAutoAssignNewHandleRollbackAfterOthersAssign: a dual-stack
// NewHandle AutoAssign assigns its IPv4 address; then another request
// assigns under the same handle (without NewHandle) in the same block;
// the IPv6 pool is full, so the first request rolls back. Its rollback
// must lower the count by the address it gave back, whoever wrote the
// record meanwhile (as AssignIPs' rollback does, see assignFixed), and
// leave the other request's address counted: Check clean.
func TestAutoAssignNewHandleRollbackAfterOthersAssign(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28), pool.Pool{Name: "p6", CIDR: mustPrefix("fd00::/126"), BlockSize: 126})
	_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num6: 4, Handle: "other", Node: "node-2"})
	require.NoError(t, err)
	o := e.allocator()
	ran := false
	s := &reviewCommitHook{Store: e.store, after: func() {
		held, err := o.AssignedByHandle(e.ctx, "pod")
		require.NoError(t, err)
		require.Len(t, held.IPv4, 1)
		_, err = o.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: held.IPv4[0].Addr.Next(), Handle: "pod", Node: "node-1"})
		require.NoError(t, err)
		ran = true
	}}
	add, err := ipam.New(s, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)
	_, err = add.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "pod", Node: "node-1", NewHandle: true})
	require.True(t, ran)
	require.Error(t, err) // out of space, or the handle is held now
	t.Log(err)
	held, err := e.a.AssignedByHandle(e.ctx, "pod")
	require.NoError(t, err)
	require.Len(t, held.IPv4, 1, "the other request's address stays")
	e.requireConsistent()
}

// TestUnreserveNewHandleAfterOthersAssign: a NewHandle AutoAssign
// assigns its address; then a reservation comes to cover it, and another
// request assigns under the same handle (without NewHandle) in the same
// block. The first request gives its address back (unreserve): the count
// must go down by it, whoever wrote the record meanwhile, and the other
// request's address stay counted: Check clean, however the request ends.
func TestUnreserveNewHandleAfterOthersAssign(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	o := e.allocator()
	ran := false
	s := &reviewCommitHook{Store: e.store, after: func() {
		held, err := o.AssignedByHandle(e.ctx, "pod")
		require.NoError(t, err)
		require.Len(t, held.IPv4, 1)
		x := held.IPv4[0].Addr
		require.NoError(t, o.CreateReservation(e.ctx, ipam.Reservation{Name: "r", CIDRs: []netip.Prefix{netip.PrefixFrom(x, 32)}}))
		_, err = o.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: x.Next(), Handle: "pod", Node: "node-1"})
		require.NoError(t, err)
		ran = true
	}}
	add, err := ipam.New(s, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)
	res, err := add.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod", Node: "node-1", NewHandle: true})
	require.True(t, ran)
	t.Log(res, err)
	e.requireConsistent()
}
