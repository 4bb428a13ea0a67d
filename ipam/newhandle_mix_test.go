package ipam_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

func (e *env) keys() map[string]bool {
	e.t.Helper()
	out := map[string]bool{}
	for _, k := range ipam.Kinds {
		recs, err := e.store.List(e.ctx, k, ipam.KeyRange{})
		require.NoError(e.t, err)
		for _, r := range recs {
			out[k.String()+" "+r.Key] = true
		}
	}
	return out
}

// TestNewHandleRefusedLeavesNoKeys: refused requests of every shape
// leave no record behind.
func TestNewHandleRefusedLeavesNoKeys(t *testing.T) {
	e := faultEnv(t)
	_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-0"})
	require.NoError(t, err)
	before := e.keys()
	calls := map[string]func() error{
		"dual cold": func() error {
			_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "cold-1", NewHandle: true})
			return err
		},
		"batch cold": func() error {
			_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 40, Handle: "h", Node: "cold-2", NewHandle: true})
			return err
		},
		"lb": func() error {
			_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Use: pool.UseLoadBalancer, NewHandle: true})
			return err
		},
		"partial": func() error {
			_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "cold-3", NewHandle: true, Partial: true, IPv6Pools: []string{"nope"}})
			return err
		},
		"assignip new block": func() error {
			_, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.250"), Handle: "h", Node: "cold-4", NewHandle: true})
			return err
		},
		"assignip lb": func() error {
			_, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.1.0.250"), Handle: "h", Use: pool.UseLoadBalancer, NewHandle: true})
			return err
		},
	}
	for name, call := range calls {
		err := call()
		require.ErrorIs(t, err, ipam.ErrHandleExists, name)
		require.ErrorContains(t, err, `"h"`, name)
		require.Equal(t, before, e.keys(), name)
	}
	e.requireConsistent()
}

// TestNewHandleRaceMix: racers of every shape under one handle, on
// four allocators, with a plain request, an AssignIP and a
// ReleaseByHandle thrown in some rounds. Among the NewHandle requests that
// started before anything released, at most one assigns; the handle then
// holds exactly what the winner (and the plain request) got.
func TestNewHandleRaceMix(t *testing.T) {
	e := faultEnv(t)
	allocs := []*ipam.Allocator{e.a, e.allocator(), e.allocator(), e.allocator()}
	e.mustAssign4("warm", "warm-up", 1)
	shapes := []ipam.AutoAssignArgs{
		{Num4: 1, Node: "warm"},
		{Num4: 1, Num6: 1, Node: "warm"},
		{Num4: 20, Node: "warm"},
		{Num4: 1, Use: pool.UseLoadBalancer},
		{Num6: 2, Node: "cold"},
		{Num4: 1, Num6: 1, Node: "cold", Partial: true},
	}
	for round := range 30 {
		handle := fmt.Sprintf("pod-%d", round)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var won []ipam.AutoAssignResult
		for i := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a := allocs[i%len(allocs)]
				var res ipam.AutoAssignResult
				var err error
				if (i+round)%5 == 4 {
					var x ipam.Assigned
					addr := netip.MustParseAddr(fmt.Sprintf("10.0.0.%d", 200+round%50))
					x, err = a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: addr, Handle: handle, Node: "warm", NewHandle: true})
					res.IPv4 = []ipam.Assigned{x}
				} else {
					args := shapes[(i+round)%len(shapes)]
					if args.Node == "cold" {
						args.Node = fmt.Sprintf("cold-%d-%d", round, i)
					}
					args.Handle, args.NewHandle = handle, true
					res, err = a.AutoAssign(e.ctx, args)
				}
				if err != nil {
					if !errors.Is(err, ipam.ErrHandleExists) && !errors.Is(err, ipam.ErrInUse) {
						t.Errorf("%s racer %d: %v", handle, i, err)
					}
					return
				}
				mu.Lock()
				won = append(won, res)
				mu.Unlock()
			}()
		}
		wg.Wait()
		require.Len(t, won, 1, "%s", handle)
		got, err := e.a.AssignedByHandle(e.ctx, handle)
		require.NoError(t, err)
		w := won[0]
		sortRes(&w)
		require.Equal(t, w, got, "%s", handle)
	}
	e.requireConsistent()
}

func sortRes(r *ipam.AutoAssignResult) {
	cmp := func(a, b ipam.Assigned) int { return a.Addr.Compare(b.Addr) }
	slices.SortFunc(r.IPv4, cmp)
	slices.SortFunc(r.IPv6, cmp)
	if len(r.IPv4) == 0 {
		r.IPv4 = nil
	}
	if len(r.IPv6) == 0 {
		r.IPv6 = nil
	}
}

// TestAssignedByHandleShape: pool names, seqs and order over three
// pools and two families, with the record naming a block that does not
// exist.
func TestAssignedByHandleShape(t *testing.T) {
	e := newEnv(t, v4pool("b-high", "10.9.0.0/24", 28), v4pool("a-low", "10.1.0.0/24", 28),
		pool.Pool{Name: "v6", CIDR: mustPrefix("fd00::/120"), BlockSize: 124})
	var want []ipam.Assigned
	for _, s := range []string{"fd00::5", "10.9.0.7", "10.1.0.200", "10.9.0.3", "fd00::80", "10.1.0.1"} {
		x, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr(s), Handle: "h", Node: "n"})
		require.NoError(t, err)
		want = append(want, x)
	}
	res, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 3, Num6: 2, Handle: "h", Node: "n"})
	require.NoError(t, err)
	want = append(want, res.IPv4...)
	want = append(want, res.IPv6...)
	// A count for a block that does not exist.
	rec, err := e.store.Get(e.ctx, ipam.KindHandle, "h")
	require.NoError(t, err)
	counts, err := ipam.DecodeHandle(rec.Value)
	require.NoError(t, err)
	counts[mustPrefix("10.1.0.96/28")] = 2
	_, err = e.store.Update(e.ctx, ipam.KindHandle, "h", ipam.EncodeHandle(counts), rec.Revision)
	require.NoError(t, err)

	got, err := e.a.AssignedByHandle(e.ctx, "h")
	require.NoError(t, err)
	var w ipam.AutoAssignResult
	for _, x := range want {
		if x.Addr.Is4() {
			w.IPv4 = append(w.IPv4, x)
		} else {
			w.IPv6 = append(w.IPv6, x)
		}
	}
	sortRes(&w)
	require.Equal(t, w, got)
	ips, err := e.a.IPsByHandle(e.ctx, "h")
	require.NoError(t, err)
	require.Len(t, ips, len(want))
}
