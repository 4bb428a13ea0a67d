package ipam_test

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
)

func assignIPsEnv(t *testing.T) *env {
	return newEnv(t, v4pool("v4", "10.0.0.0/24", 28),
		pool.Pool{Name: "v6", CIDR: mustPrefix("fd00::/120"), BlockSize: 124},
		pool.Pool{Name: "lb", CIDR: mustPrefix("10.1.0.0/24"), BlockSize: 28, AllowedUses: []pool.Use{pool.UseLoadBalancer}})
}

// requireEmptyStore fails unless the store holds no block, affinity or
// handle: nothing was written.
func (e *env) requireEmptyStore() {
	e.t.Helper()
	for _, k := range []ipam.Kind{ipam.KindBlock, ipam.KindAffinity, ipam.KindHandle} {
		recs, err := e.store.List(e.ctx, k, ipam.KeyRange{})
		require.NoError(e.t, err)
		require.Empty(e.t, recs, "%s records", k)
	}
}

// TestAssignIPsInvalid: a malformed request fails with ErrInvalid naming
// what is wrong, and writes nothing.
func TestAssignIPsInvalid(t *testing.T) {
	a4, b4, a6 := mustAddr("10.0.0.1"), mustAddr("10.0.0.2"), mustAddr("fd00::1")
	many := make([]netip.Addr, ipam.MaxAssign+1)
	for i := range many {
		many[i] = netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
	}
	for _, tc := range []struct {
		name string
		args ipam.AssignIPsArgs
		want string
	}{
		{"none", ipam.AssignIPsArgs{Handle: "h", Node: "n"}, "no addresses given"},
		{"too many", ipam.AssignIPsArgs{Addrs: many, Handle: "h", Node: "n"}, "65537 addresses, more than 65536"},
		{"twice", ipam.AssignIPsArgs{Addrs: []netip.Addr{a4, a6, b4, a6}, Handle: "h", Node: "n"}, "address fd00::1 given twice (at 1 and 3)"},
		{"twice mapped", ipam.AssignIPsArgs{Addrs: []netip.Addr{netip.AddrFrom16(a4.As16()), a4}, Handle: "h", Node: "n"}, "address 10.0.0.1 given twice (as ::ffff:10.0.0.1 at 0 and 10.0.0.1 at 1)"},
		{"zero address", ipam.AssignIPsArgs{Addrs: []netip.Addr{a4, {}}, Handle: "h", Node: "n"}, "no address given"},
		{"zone", ipam.AssignIPsArgs{Addrs: []netip.Addr{a6.WithZone("eth0")}, Handle: "h", Node: "n"}, "fd00::1%eth0 has a zone"},
		{"no handle", ipam.AssignIPsArgs{Addrs: []netip.Addr{a4, b4}, Node: "n"}, "handle"},
		{"no node", ipam.AssignIPsArgs{Addrs: []netip.Addr{a4, b4}, Handle: "h"}, "empty node name"},
		{"node for LoadBalancer", ipam.AssignIPsArgs{Addrs: []netip.Addr{a4}, Handle: "h", Node: "n", Use: pool.UseLoadBalancer}, `node "n" given for use LoadBalancer`},
		{"use", ipam.AssignIPsArgs{Addrs: []netip.Addr{a4}, Handle: "h", Node: "n", Use: "storage"}, `unknown use "storage"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := assignIPsEnv(t)
			res, err := e.a.AssignIPs(e.ctx, tc.args)
			require.ErrorIs(t, err, ipam.ErrInvalid)
			require.ErrorContains(t, err, tc.want)
			require.Zero(t, res.Len())
			e.requireEmptyStore()
		})
	}
}

// TestAssignIPs: both families and two addresses of one block under one
// handle, each family in the order given; the handle's record counts them
// all, and ReleaseByHandle frees them all.
func TestAssignIPs(t *testing.T) {
	e := assignIPsEnv(t)
	want := []netip.Addr{mustAddr("10.0.0.9"), mustAddr("fd00::5"), mustAddr("10.0.0.3"), mustAddr("10.0.0.40")}
	res, err := e.a.AssignIPs(e.ctx, ipam.AssignIPsArgs{Addrs: want, Handle: "vm-1/eth0", Node: "node-1",
		Attrs: map[string]string{"vm": "vm-1"}})
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{want[0], want[2], want[3]}, addrs(res.IPv4))
	require.Equal(t, []netip.Addr{want[1]}, addrs(res.IPv6))
	require.Equal(t, map[netip.Prefix]int{mustPrefix("10.0.0.0/28"): 2, mustPrefix("10.0.0.32/28"): 1}, blocksOf(res.IPv4))
	for _, x := range res.IPv4 {
		require.Equal(t, "v4", x.Pool)
	}
	require.Equal(t, "v6", res.IPv6[0].Pool)
	al, err := e.a.Owner(e.ctx, want[3])
	require.NoError(t, err)
	require.Equal(t, "vm-1/eth0", al.Handle)
	require.Equal(t, map[string]string{"vm": "vm-1", ipam.AttrNode: "node-1"}, al.Attrs)
	require.ElementsMatch(t, []netip.Prefix{mustPrefix("10.0.0.0/28"), mustPrefix("10.0.0.32/28"), mustPrefix("fd00::/124")}, e.affine("node-1"))

	held, err := e.a.AssignedByHandle(e.ctx, "vm-1/eth0")
	require.NoError(t, err)
	require.ElementsMatch(t, res.IPv4, held.IPv4)
	require.Equal(t, res.IPv6, held.IPv6)
	e.requireConsistent()

	got, err := e.a.ReleaseByHandle(e.ctx, "vm-1/eth0")
	require.NoError(t, err)
	require.ElementsMatch(t, want, got)
	e.requireConsistent()
}

// TestAssignIPsAllOrNothing: when a later address cannot be had, the
// ones assigned before it are released again, without a release time
// (the cooldown does not hold them back), the blocks claimed for them are
// given up, the handle holds nothing, and the error names the address.
func TestAssignIPsAllOrNothing(t *testing.T) {
	first := []netip.Addr{mustAddr("10.0.0.1"), mustAddr("fd00::1")} // each claims a block
	for _, tc := range []struct {
		name  string
		setup func(e *env) netip.Addr // returns the address that fails
		want  error
	}{
		{"in use", func(e *env) netip.Addr {
			x := e.mustAssign4("node-2", "other", 1)[0]
			return x.Addr
		}, ipam.ErrInUse},
		{"cooling", func(e *env) netip.Addr {
			e.cooldown(time.Hour)
			x := e.mustAssign4("node-2", "other", 1)[0]
			_, err := e.a.ReleaseByHandle(e.ctx, "other")
			require.NoError(t, err)
			return x.Addr
		}, ipam.ErrCoolingDown},
		{"reserved in its block", func(e *env) netip.Addr {
			res, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "win", Node: "node-2", ReserveFirst: 3})
			require.NoError(t, err)
			return res.IPv4[0].Block.Addr() // reserved for node-2's Windows host
		}, ipam.ErrReserved},
		{"strict affinity", func(e *env) netip.Addr {
			cfg := ipam.DefaultConfig()
			cfg.StrictAffinity = true
			e.config(cfg)
			x := e.mustAssign4("node-2", "other", 1)[0]
			return x.Addr.Next()
		}, ipam.ErrStrictAffinity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := assignIPsEnv(t)
			bad := tc.setup(e)
			before := e.utilization()
			res, err := e.a.AssignIPs(e.ctx, ipam.AssignIPsArgs{Addrs: append(first, bad), Handle: "h", Node: "node-1"})
			require.ErrorIs(t, err, tc.want)
			require.ErrorContains(t, err, `assign 3 addresses under "h": nothing assigned`)
			var ae *ipam.AddrError
			require.ErrorAs(t, err, &ae)
			require.Equal(t, bad, ae.Addr)
			require.Zero(t, res.Len())

			_, err = e.a.AssignedByHandle(e.ctx, "h")
			require.ErrorIs(t, err, ipam.ErrHandleNotFound)
			require.Empty(t, e.affine("node-1"), "the blocks claimed for the request are given up")
			require.Equal(t, before, e.utilization())
			e.requireConsistent()
			// Never used, so never cooling: another owner gets them at once.
			for _, addr := range first {
				_, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: addr, Handle: "next", Node: "node-3"})
				require.NoError(t, err)
			}
		})
	}
}

// TestAssignIPsNotInPoolWritesNothing: an address outside a usable pool
// is found before anything is written, wherever it is in the request.
func TestAssignIPsNotInPoolWritesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		bad  netip.Addr
		use  pool.Use
		want string
	}{
		{"no pool", mustAddr("192.168.0.1"), "", "no pool holds it"},
		{"wrong use", mustAddr("10.1.0.1"), "", `pool "lb" does not allow use Workload`},
		{"disabled", mustAddr("fd00::9"), "", `pool "v6" is disabled`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := assignIPsEnv(t)
			require.NoError(t, e.a.DisablePool(e.ctx, "v6"))
			_, err := e.a.AssignIPs(e.ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.1"), tc.bad}, Handle: "h", Node: "node-1", Use: tc.use})
			require.ErrorIs(t, err, ipam.ErrNotInPool)
			require.ErrorContains(t, err, tc.bad.String())
			require.ErrorContains(t, err, tc.want)
			e.requireEmptyStore()
		})
	}
}

// TestAssignIPsNewHandle: a repeated request is refused whatever else
// would refuse it, and of racing requests under one handle, on several
// allocators, exactly one assigns, all its addresses.
func TestAssignIPsNewHandle(t *testing.T) {
	e := assignIPsEnv(t)
	args := ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.5"), mustAddr("fd00::5")}, Handle: "default/db-0", Node: "node-1", NewHandle: true}
	first, err := e.a.AssignIPs(e.ctx, args)
	require.NoError(t, err)
	for _, a := range []*ipam.Allocator{e.a, e.allocator()} {
		_, err := a.AssignIPs(e.ctx, args) // its addresses are in use: the handle is the answer
		require.ErrorIs(t, err, ipam.ErrHandleExists)
		got, err := a.AssignedByHandle(e.ctx, args.Handle)
		require.NoError(t, err)
		require.Equal(t, first, got)
	}

	// Racing requests, each for its own pair of addresses.
	const n = 8
	allocs := []*ipam.Allocator{e.a, e.allocator(), e.allocator(), e.allocator()}
	results := make([]ipam.AutoAssignResult, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = allocs[i%len(allocs)].AssignIPs(e.ctx, ipam.AssignIPsArgs{
				Addrs:  []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(100 + i)}), mustAddr(fmt.Sprintf("fd00::%x", 0x80+i))},
				Handle: "default/db-1", Node: fmt.Sprintf("node-%d", i%3), NewHandle: true,
			})
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		if err == nil {
			require.Equal(t, -1, winner, "two requests assigned: %d and %d", winner, i)
			winner = i
			continue
		}
		require.ErrorIs(t, err, ipam.ErrHandleExists)
		require.Zero(t, results[i].Len())
	}
	require.NotEqual(t, -1, winner, "nobody assigned, though nothing failed")
	got, err := e.a.AssignedByHandle(e.ctx, "default/db-1")
	require.NoError(t, err)
	require.Equal(t, results[winner], got)
	e.requireConsistent()
}

// TestAssignIPsFaults fails, or crashes, each store operation of a
// request for three addresses (two families, a block claimed for each,
// one block twice). The process that goes on after a failure finds the
// request whole or gone, unless the error says that addresses stayed
// under the handle; after a crash Repair on the quiet store leaves it
// clean, and ReleaseByHandle frees what the handle holds.
func TestAssignIPsFaults(t *testing.T) {
	for _, keeper := range keepers {
		t.Run(fmt.Sprintf("keeper=%t", keeper), func(t *testing.T) { assignIPsFaults(t, keeper) })
	}
}

func assignIPsFaults(t *testing.T, keeper bool) {
	// The FaultyStore itself, without Generations or Committer.
	view := func(f *storetest.FaultyStore) ipam.Store {
		if keeper {
			return f
		}
		return storetest.WithoutBlockKeeper(f)
	}
	args := ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.17"), mustAddr("fd00::3"), mustAddr("10.0.0.18")}, Handle: "h", Node: "node-1"}
	clean := storetest.NewFaultyStore(assignIPsEnv(t).store, storetest.Fault{})
	a0, err := ipam.New(view(clean), ipam.Options{})
	require.NoError(t, err)
	_, err = a0.AssignIPs(t.Context(), args)
	require.NoError(t, err)
	n := clean.Ops()
	require.Greater(t, n, int64(6))
	kept := 0
	for _, mode := range []storetest.FaultMode{storetest.FailOnce, storetest.LostReply, storetest.Crash, storetest.CrashAfter} {
		for at := int64(1); at <= n; at++ {
			name := fmt.Sprintf("%s at %d", mode, at)
			e := assignIPsEnv(t)
			f := storetest.NewFaultyStore(e.store, storetest.Fault{At: at, Mode: mode})
			a, err := ipam.New(view(f), ipam.Options{})
			require.NoError(t, err)
			res, err := a.AssignIPs(e.ctx, args)
			held, herr := e.a.AssignedByHandle(e.ctx, args.Handle)
			switch {
			case err == nil:
				require.Equal(t, 3, res.Len(), name)
				require.NoError(t, herr, name)
				require.Equal(t, 3, held.Len(), name)
			case mode == storetest.FailOnce || mode == storetest.LostReply:
				require.Zero(t, res.Len(), name)
				if herr == nil && held.Len() > 0 {
					require.ErrorContains(t, err, "stay under the handle", name)
					kept++
				}
			}
			// Whatever happened, Repair on the quiet store leaves a store
			// Check finds clean, and the handle can be released and used.
			_, _, err = e.a.Repair(e.ctx, ipam.RepairOptions{})
			require.NoError(t, err, name)
			e.requireConsistent()
			if _, err := e.a.ReleaseByHandle(e.ctx, args.Handle); err != nil {
				require.ErrorIs(t, err, ipam.ErrHandleNotFound, name)
			}
			res, err = e.a.AssignIPs(e.ctx, args)
			require.NoError(t, err, name)
			require.Equal(t, 3, res.Len(), name)
			e.requireConsistent()
		}
	}
	t.Logf("%d operations; %d failures left addresses under the handle, and said so", n, kept)
}

// TestAssignIPSameAsAssignIPs: AssignIP is AssignIPs of one address, with
// the error of that address (an *AddrError) as it is.
func TestAssignIPSameAsAssignIPs(t *testing.T) {
	e := assignIPsEnv(t)
	x := e.mustAssign4("node-1", "a", 1)[0]
	_, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: x.Addr, Handle: "b", Node: "node-1"})
	require.ErrorIs(t, err, ipam.ErrInUse)
	require.False(t, strings.Contains(err.Error(), "nothing assigned"), "%v", err)
	require.True(t, strings.HasPrefix(err.Error(), "ipam: "), "the address not named again before the message: %v", err)
	var ae *ipam.AddrError
	require.True(t, errors.As(err, &ae))
	require.Equal(t, x.Addr, ae.Addr)
	got, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("::ffff:10.1.0.7"), Handle: "svc", Use: pool.UseLoadBalancer})
	require.NoError(t, err)
	require.Equal(t, ipam.Assigned{Addr: mustAddr("10.1.0.7"), Block: mustPrefix("10.1.0.0/28"), Pool: "lb", Seq: got.Seq}, got)
}

// TestAssignIPClaimsWhateverTheConfig: a fixed address's block is claimed
// for the node with AutoAllocateBlocks off and past MaxBlocksPerHost, as
// Config documents; AutoAssign is held to both.
func TestAssignIPClaimsWhateverTheConfig(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	e.config(ipam.Config{StrictAffinity: true, MaxBlocksPerHost: 1})
	_, err := e.a.ClaimAffinity(e.ctx, "node-1", mustPrefix("10.0.0.0/28"))
	require.NoError(t, err)

	x, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.200"), Handle: "fixed", Node: "node-1"})
	require.NoError(t, err)
	require.Equal(t, mustPrefix("10.0.0.192/28"), x.Block)
	require.ElementsMatch(t, []netip.Prefix{mustPrefix("10.0.0.0/28"), mustPrefix("10.0.0.192/28")}, e.affine("node-1"))

	// AutoAssign fills node-1's two blocks and claims no third.
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 31, Handle: "auto", Node: "node-1"})
	require.NoError(t, err)
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "more", Node: "node-1"})
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.Len(t, e.affine("node-1"), 2)
}
