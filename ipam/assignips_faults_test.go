package ipam_test

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestAssignIPsRollbackKeepsCooldown: an address released by its
// previous owner is cooling. A request with IgnoreCooldown (a StatefulSet
// pod getting its fixed addresses back) assigns it first and then fails on
// its second address. The rollback must leave the store as it found it:
// the address still cooling, so that AutoAssign does not hand it to a
// stranger while the old owner may still use it (a rollback that released
// it without a release time ended the cooldown).
func TestAssignIPsRollbackKeepsCooldown(t *testing.T) {
	e := assignIPsEnv(t)
	e.cooldown(time.Hour)
	old := e.mustAssign4("node-1", "old", 1)[0]
	_, err := e.a.ReleaseByHandle(e.ctx, "old") // old.Addr cools for an hour
	require.NoError(t, err)
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: old.Addr, Handle: "probe", Node: "node-1"})
	require.ErrorIs(t, err, ipam.ErrCoolingDown, "cooling before the failed request")

	taken := e.mustAssign4("node-2", "other", 1)[0]
	_, err = e.a.AssignIPs(e.ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{old.Addr, taken.Addr}, Handle: "db-0", Node: "node-1", IgnoreCooldown: true})
	require.ErrorIs(t, err, ipam.ErrInUse)

	e.clock.Advance(time.Minute) // well within the hour
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: old.Addr, Handle: "stranger", Node: "node-1"})
	require.ErrorIs(t, err, ipam.ErrCoolingDown, "a failed request (all or none) must not end the cooldown of an address it gave back")
}

// TestAssignIPsNewHandleLostSettleReply: a NewHandle request alone
// on the store, whose second address is in use. The write that lowers the
// unused reservation (settle) is applied but its reply is lost. The
// request then gives back its first address and lowers the handle's count
// for it: it reads the record it wrote itself, at a revision it does not
// know. It must not call it someone else's (ErrHandleExists): a CNI
// plugin that treats ErrHandleExists as "already assigned by an earlier
// attempt" would read AssignedByHandle and find nothing.
func TestAssignIPsNewHandleLostSettleReply(t *testing.T) {
	e := assignIPsEnv(t)
	taken := e.mustAssign4("node-2", "other", 1)[0]
	var handleWrites atomic.Int32
	s := &scriptStore{Store: e.store,
		after: func(op string, kind ipam.Kind, key string, err error) error {
			if kind == ipam.KindHandle && key == "h" && err == nil && handleWrites.Add(1) == 2 {
				return errors.New("update handle: reply lost (timeout)")
			}
			return err
		},
	}
	a, err := ipam.New(s, ipam.Options{})
	require.NoError(t, err)
	_, err = a.AssignIPs(e.ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.200"), taken.Addr}, Handle: "h", Node: "node-1", NewHandle: true})
	t.Logf("error: %v", err)
	require.ErrorIs(t, err, ipam.ErrInUse)
	held, _ := e.a.AssignedByHandle(e.ctx, "h")
	require.Zero(t, held.Len())
	require.NotErrorIs(t, err, ipam.ErrHandleExists, "no other request touched the handle: the record is the request's own")
}

// TestAssignIPsOneAddressAddrError: AssignIPs documents that a
// failing request's error wraps an *AddrError naming the address that
// failed. A caller passing a pod's ipAddrs list through as it comes (one
// address or two) gets it for either.
func TestAssignIPsOneAddressAddrError(t *testing.T) {
	e := assignIPsEnv(t)
	x := e.mustAssign4("node-2", "other", 1)[0]
	for _, list := range [][]netip.Addr{{mustAddr("fd00::1"), x.Addr}, {x.Addr}} {
		_, err := e.a.AssignIPs(e.ctx, ipam.AssignIPsArgs{Addrs: list, Handle: "h", Node: "node-1"})
		require.ErrorIs(t, err, ipam.ErrInUse)
		var ae *ipam.AddrError
		require.ErrorAs(t, err, &ae, "%d addresses: %v", len(list), err)
		require.Equal(t, x.Addr, ae.Addr)
	}
}
