package ipam_test

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

// TestNewHandleRepeat: a request repeated with NewHandle assigns nothing
// more, and AssignedByHandle gives back exactly what the first one got.
func TestNewHandleRepeat(t *testing.T) {
	e := newEnv(t, v4pool("v4", "10.0.0.0/24", 28),
		pool.Pool{Name: "v6", CIDR: mustPrefix("fd00::/120"), BlockSize: 124})
	args := ipam.AutoAssignArgs{Num4: 2, Num6: 1, Handle: "default/web-0", Node: "node-1", NewHandle: true}
	first, err := e.a.AutoAssign(e.ctx, args)
	require.NoError(t, err)
	before := e.utilization()

	for _, a := range []*ipam.Allocator{e.a, e.allocator()} {
		res, err := a.AutoAssign(e.ctx, args)
		require.ErrorIs(t, err, ipam.ErrHandleExists)
		require.ErrorContains(t, err, `under "default/web-0"`)
		require.Zero(t, res.Len())
		var ae *ipam.AssignError
		require.False(t, errors.As(err, &ae), "not a shortfall: %v", err)

		got, err := a.AssignedByHandle(e.ctx, args.Handle)
		require.NoError(t, err)
		require.Equal(t, first, got)
	}
	require.Equal(t, before, e.utilization(), "the repeats assigned nothing")

	// Once released, the handle is new again.
	_, err = e.a.ReleaseByHandle(e.ctx, args.Handle)
	require.NoError(t, err)
	_, err = e.a.AssignedByHandle(e.ctx, args.Handle)
	require.ErrorIs(t, err, ipam.ErrHandleNotFound)
	again, err := e.a.AutoAssign(e.ctx, args)
	require.NoError(t, err)
	require.Equal(t, 3, again.Len())
	e.requireConsistent()
}

// TestNewHandleRefusesHeldHandle covers the ways a handle may come to
// hold addresses (AutoAssign without NewHandle, AssignIP, a batch across
// blocks) and both calls that take NewHandle.
func TestNewHandleRefusesHeldHandle(t *testing.T) {
	e := newEnv(t, v4pool("v4", "10.0.0.0/22", 28))
	_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 40, Handle: "batch", Node: "node-1"})
	require.NoError(t, err)
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.3.7"), Handle: "fixed", Node: "node-2"})
	require.NoError(t, err)
	e.mustAssign4("node-1", "plain", 1)

	for _, handle := range []string{"batch", "fixed", "plain"} {
		held, err := e.a.AssignedByHandle(e.ctx, handle)
		require.NoError(t, err)
		before := e.utilization()
		for name, call := range map[string]func() error{
			"auto-assign one": func() error {
				_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: handle, Node: "node-1", NewHandle: true})
				return err
			},
			"auto-assign a batch on a new node": func() error {
				_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 50, Handle: handle, Node: "node-9", NewHandle: true})
				return err
			},
			"assign a free address": func() error {
				_, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.2.200"), Handle: handle, Node: "node-1", NewHandle: true})
				return err
			},
			"assign the handle's own address": func() error {
				_, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: held.IPv4[0].Addr, Handle: handle, Node: "node-1", NewHandle: true})
				return err
			},
			"assign outside every pool": func() error {
				_, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("192.168.0.1"), Handle: handle, Node: "node-1", NewHandle: true})
				return err
			},
		} {
			require.ErrorIs(t, call(), ipam.ErrHandleExists, "%s under %s", name, handle)
		}
		require.Equal(t, before, e.utilization(), "%s: the refused requests left no trace", handle)
		require.Empty(t, e.affine("node-9"), "a block claimed for a refused request is given up")
	}
	e.requireConsistent()
}

// TestNewHandleFailedRequestLeavesHandleNew: a request with NewHandle that
// fails, or is rolled back, does not make the handle held.
func TestNewHandleFailedRequestLeavesHandleNew(t *testing.T) {
	e := newEnv(t, v4pool("v4", "10.0.0.0/28", 30))
	args := ipam.AutoAssignArgs{Num4: 17, Handle: "h", Node: "node-1", NewHandle: true}
	_, err := e.a.AutoAssign(e.ctx, args)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.NotErrorIs(t, err, ipam.ErrHandleExists)
	_, err = e.a.AssignedByHandle(e.ctx, "h")
	require.ErrorIs(t, err, ipam.ErrHandleNotFound)

	// No pool for IPv6: refused before anything is written.
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "node-1", NewHandle: true})
	require.ErrorIs(t, err, pool.ErrNoPool)
	require.NotErrorIs(t, err, ipam.ErrHandleExists)

	args.Num4 = 16
	res, err := e.a.AutoAssign(e.ctx, args)
	require.NoError(t, err)
	require.Len(t, res.IPv4, 16)
	e.requireConsistent()
}

// TestNewHandleLeftoverRecord: a handle record that a crash left without
// its addresses keeps the handle held (it may as well be an assignment in
// flight) until Repair removes it.
func TestNewHandleLeftoverRecord(t *testing.T) {
	e := newEnv(t, v4pool("v4", "10.0.0.0/24", 28))
	blk := mustPrefix("10.0.0.0/28")
	_, err := e.store.Create(e.ctx, ipam.KindHandle, "h", ipam.EncodeHandle(map[netip.Prefix]int{blk: 1}))
	require.NoError(t, err)

	args := ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-1", NewHandle: true}
	_, err = e.a.AutoAssign(e.ctx, args)
	require.ErrorIs(t, err, ipam.ErrHandleExists)
	require.ErrorContains(t, err, "counts 1")
	_, err = e.a.AssignedByHandle(e.ctx, "h")
	require.ErrorIs(t, err, ipam.ErrHandleNotFound)
	require.ErrorContains(t, err, "Repair removes it")

	_, _, err = e.a.Repair(e.ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	res, err := e.a.AutoAssign(e.ctx, args)
	require.NoError(t, err)
	got, err := e.a.AssignedByHandle(e.ctx, "h")
	require.NoError(t, err)
	require.Equal(t, res, got)
	e.requireConsistent()
}

// TestNewHandleRace: requests racing under one handle, on several
// allocators, both on a node's existing block and on a node that must
// claim its first: exactly one assigns, the others get ErrHandleExists.
func TestNewHandleRace(t *testing.T) {
	const racers, rounds = 8, 40
	e := newEnv(t, v4pool("v4", "10.0.0.0/16", 26))
	allocs := []*ipam.Allocator{e.a, e.allocator(), e.allocator(), e.allocator()}
	e.mustAssign4("warm", "warm-up", 1)
	for round := range rounds {
		handle := fmt.Sprintf("pod-%d", round)
		node := "warm"
		if round%2 == 1 {
			node = fmt.Sprintf("cold-%d", round)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		var won []ipam.AutoAssignResult
		for i := range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := allocs[i%len(allocs)].AutoAssign(e.ctx, ipam.AutoAssignArgs{
					Num4: 1 + round%3, Handle: handle, Node: node, NewHandle: true,
				})
				if err != nil {
					if !errors.Is(err, ipam.ErrHandleExists) {
						t.Errorf("%s: %v", handle, err)
					}
					return
				}
				mu.Lock()
				won = append(won, res)
				mu.Unlock()
			}()
		}
		wg.Wait()
		require.Len(t, won, 1, "%s: exactly one request assigns", handle)
		got, err := e.a.AssignedByHandle(e.ctx, handle)
		require.NoError(t, err)
		require.Equal(t, won[0], got)
	}
	e.requireConsistent()
}
