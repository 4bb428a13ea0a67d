package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// owners is a liveness oracle over a set of live handles.
type owners struct {
	mu    sync.Mutex
	alive map[string]bool
	calls int
	// flip, when set, is called on every question and may change the answer.
	flip func(handle string, calls int)
	err  error
}

func (o *owners) live(_ context.Context, a ipam.Allocation) (bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls++
	if o.flip != nil {
		o.flip(a.Handle, o.calls)
	}
	return o.alive[a.Handle], o.err
}

func (o *owners) set(handle string, alive bool) {
	o.mu.Lock()
	o.alive[handle] = alive
	o.mu.Unlock()
}

func newCollector(t *testing.T, e *env, o *owners, grace time.Duration) *ipam.Collector {
	t.Helper()
	c, err := ipam.NewCollector(e.a, o.live, ipam.CollectorOptions{Grace: grace})
	require.NoError(t, err)
	return c
}

func TestCollectorReleasesLeaksAfterGrace(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	o := &owners{alive: map[string]bool{"live": true}}
	e.mustAssign4("node-1", "live", 1)
	leaked := e.mustAssign4("node-1", "dead", 2)
	c := newCollector(t, e, o, 10*time.Minute)

	res, err := c.Collect(e.ctx)
	require.NoError(t, err)
	require.Equal(t, 3, res.Allocations)
	require.Len(t, res.Suspects, 2)
	require.Empty(t, res.Released, "not before the grace period")

	e.clock.Advance(9 * time.Minute)
	res, err = c.Collect(e.ctx)
	require.NoError(t, err)
	require.Empty(t, res.Released)

	e.clock.Advance(time.Minute)
	res, err = c.Collect(e.ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, addrs(leaked), allocAddrs(res.Released))
	_, err = e.a.IPsByHandle(e.ctx, "dead")
	require.ErrorIs(t, err, ipam.ErrHandleNotFound)
	got, err := e.a.IPsByHandle(e.ctx, "live")
	require.NoError(t, err)
	require.Len(t, got, 1)
}

func allocAddrs(as []ipam.Allocation) []netip.Addr {
	var out []netip.Addr
	for _, a := range as {
		out = append(out, a.Addr)
	}
	return out
}

func TestCollectorOwnerBackToLife(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	o := &owners{alive: map[string]bool{}}
	e.mustAssign4("node-1", "slow-pod", 1)
	c := newCollector(t, e, o, time.Minute)
	_, err := c.Collect(e.ctx)
	require.NoError(t, err)
	o.set("slow-pod", true) // it was only slow to register
	e.clock.Advance(time.Minute)
	_, err = c.Collect(e.ctx)
	require.NoError(t, err)
	o.set("slow-pod", false)
	e.clock.Advance(30 * time.Second)
	res, err := c.Collect(e.ctx)
	require.NoError(t, err)
	require.Empty(t, res.Released, "the grace period starts over")

	// Unknown liveness counts as alive.
	o.err = errors.New("api server down")
	e.clock.Advance(time.Hour)
	res, err = c.Collect(e.ctx)
	require.NoError(t, err)
	require.Empty(t, res.Released)
	require.Empty(t, res.Suspects)
}

func TestCollectorAllOrNonePerHandle(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	o := &owners{alive: map[string]bool{}}
	first := e.mustAssign4("node-1", "pod", 1)[0]
	c := newCollector(t, e, o, time.Minute)
	_, err := c.Collect(e.ctx)
	require.NoError(t, err)
	// The handle gets a second address late: its grace period has not run.
	e.clock.Advance(50 * time.Second)
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod", Node: "node-1"})
	require.NoError(t, err)
	_, err = c.Collect(e.ctx)
	require.NoError(t, err)
	e.clock.Advance(20 * time.Second)
	res, err := c.Collect(e.ctx)
	require.NoError(t, err)
	require.Empty(t, res.Released, "%s is ripe but its handle's other address is not", first.Addr)
	e.clock.Advance(time.Minute)
	res, err = c.Collect(e.ctx)
	require.NoError(t, err)
	require.Len(t, res.Released, 2)
}

func TestCollectorRechecksBeforeRelease(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	o := &owners{alive: map[string]bool{}}
	e.mustAssign4("node-1", "pod", 1)
	c := newCollector(t, e, o, time.Minute)
	_, err := c.Collect(e.ctx)
	require.NoError(t, err)
	e.clock.Advance(time.Minute)
	// The owner appears between the scan and the release.
	o.flip = func(handle string, calls int) {
		if calls == 3 {
			o.alive[handle] = true
		}
	}
	res, err := c.Collect(e.ctx)
	require.NoError(t, err)
	require.Empty(t, res.Released)
	got, err := e.a.IPsByHandle(e.ctx, "pod")
	require.NoError(t, err)
	require.Len(t, got, 1)
}

// TestCollectorNeverFreesAReassignedAddress: the leaked address is released
// and assigned to a live owner, between two passes or while the pass asks
// again about the old owner right before its release. The release, by
// handle and sequence number, is refused: the address stays with its new
// owner, and the refusal is the collector working, not an error.
func TestCollectorNeverFreesAReassignedAddress(t *testing.T) {
	for _, during := range []bool{false, true} {
		t.Run(fmt.Sprintf("during-recheck=%v", during), func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/30", 30))
			o := &owners{alive: map[string]bool{"new": true}}
			old := e.mustAssign4("node-1", "old", 1)[0]
			c := newCollector(t, e, o, time.Minute)
			_, err := c.Collect(e.ctx)
			require.NoError(t, err)
			reassign := func() {
				_, err := e.a.ReleaseByHandle(e.ctx, "old")
				require.NoError(t, err)
				_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: old.Addr, Handle: "new", Node: "node-1"})
				require.NoError(t, err)
			}
			if during {
				o.flip = func(handle string, calls int) {
					if calls == 3 { // the question right before the release
						reassign()
					}
				}
			} else {
				reassign()
			}
			e.clock.Advance(time.Hour)
			res, err := c.Collect(e.ctx)
			require.NoError(t, err)
			require.Empty(t, res.Released)
			own, err := e.a.Owner(e.ctx, old.Addr)
			require.NoError(t, err)
			require.Equal(t, "new", own.Handle)
		})
	}
}

func TestCollectorEmptyBlocks(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	o := &owners{alive: map[string]bool{"big": true}}
	// node-1 fills one block and spills into a second, then the spill ends.
	e.mustAssign4("node-1", "big", 16)
	e.mustAssign4("node-1", "spill", 1)
	_, err := e.a.ReleaseByHandle(e.ctx, "spill")
	require.NoError(t, err)
	// node-2 has a single empty block.
	e.mustAssign4("node-2", "gone", 1)
	_, err = e.a.ReleaseByHandle(e.ctx, "gone")
	require.NoError(t, err)
	require.Len(t, e.affine("node-1"), 2)

	c := newCollector(t, e, o, time.Minute)
	res, err := c.Collect(e.ctx)
	require.NoError(t, err)
	require.Empty(t, res.ReleasedBlocks, "seen empty once")
	e.clock.Advance(time.Minute)
	res, err = c.Collect(e.ctx)
	require.NoError(t, err)
	require.Len(t, res.ReleasedBlocks, 1, "node-1's empty second block; never node-2's last")
	require.Len(t, e.affine("node-1"), 1)
	require.Len(t, e.affine("node-2"), 1)
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.True(t, r.Clean(), "%v", r.Problems)

	// A block used in between starts over.
	e.mustAssign4("node-3", "x", 16)
	e.mustAssign4("node-3", "y", 1)
	_, err = e.a.ReleaseByHandle(e.ctx, "y")
	require.NoError(t, err)
	_, err = c.Collect(e.ctx)
	require.NoError(t, err)
	e.clock.Advance(50 * time.Second)
	e.mustAssign4("node-3", "z", 1)
	_, err = e.a.ReleaseByHandle(e.ctx, "z")
	require.NoError(t, err)
	_, err = c.Collect(e.ctx)
	require.NoError(t, err)
	e.clock.Advance(20 * time.Second)
	res, err = c.Collect(e.ctx)
	require.NoError(t, err)
	require.Empty(t, res.ReleasedBlocks)
}

func TestNewCollectorErrors(t *testing.T) {
	e := newEnv(t)
	_, err := ipam.NewCollector(nil, (&owners{}).live, ipam.CollectorOptions{})
	require.ErrorIs(t, err, ipam.ErrInvalid)
	_, err = ipam.NewCollector(e.a, nil, ipam.CollectorOptions{})
	require.ErrorIs(t, err, ipam.ErrInvalid)
	_, err = ipam.NewCollector(e.a, (&owners{}).live, ipam.CollectorOptions{Grace: -1})
	require.ErrorIs(t, err, ipam.ErrInvalid)
}

// A handle with one live allocation keeps all of them, even the ones whose
// owner looks dead (the reviewer's case: a dual-stack pod whose IPv4 side the
// oracle calls dead).
func TestCollectorKeepsHandleWithALiveAddress(t *testing.T) {
	e := newEnv(t, v4pool("v4", "10.0.0.0/24", 26), v4pool("v6", "fd00::/120", 122))
	_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "dual", Node: "n1"})
	require.NoError(t, err)
	live := func(_ context.Context, a ipam.Allocation) (bool, error) { return a.Addr.Is6(), nil }
	c, err := ipam.NewCollector(e.a, live, ipam.CollectorOptions{Grace: time.Minute})
	require.NoError(t, err)
	for range 3 {
		res, err := c.Collect(e.ctx)
		require.NoError(t, err)
		require.Empty(t, res.Released)
		e.clock.Advance(time.Minute)
	}
	got, err := e.a.IPsByHandle(e.ctx, "dual")
	require.NoError(t, err)
	require.Len(t, got, 2)
}

// TestCollectorCoolingBlocks: an empty block in which an address is still
// cooling is released like any other, but kept, without affinity, until the
// cooldown is over: deleting it would forget the release times, and a node
// claiming the block again would hand the addresses out at once. A later
// pass deletes it.
func TestCollectorCoolingBlocks(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/28", 30)) // four blocks of 4
	e.cooldown(time.Hour)
	got := e.mustAssign4("node-1", "a", 8) // two blocks
	_, err := e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: got[0].Addr}, ipam.Release{Addr: got[1].Addr}, ipam.Release{Addr: got[2].Addr}, ipam.Release{Addr: got[3].Addr})
	require.NoError(t, err)
	require.Len(t, e.affine("node-1"), 2)

	c := newCollector(t, e, &owners{alive: map[string]bool{"a": true}}, time.Minute)
	res, err := c.Collect(e.ctx)
	require.NoError(t, err)
	require.Empty(t, res.ReleasedBlocks)
	e.clock.Advance(2 * time.Minute)
	res, err = c.Collect(e.ctx)
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{got[0].Block}, res.ReleasedBlocks)
	require.Empty(t, res.DeletedBlocks, "an address in it is cooling")
	require.Equal(t, []netip.Prefix{got[4].Block}, e.affine("node-1"))
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{got[0].Block}, r.Cooling, "kept without affinity")
	require.True(t, r.Clean(), "%v", r.Problems)

	e.clock.Advance(30 * time.Minute)
	res, err = c.Collect(e.ctx)
	require.NoError(t, err)
	require.Empty(t, res.DeletedBlocks, "still cooling")

	e.clock.Advance(time.Hour)
	res, err = c.Collect(e.ctx)
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{got[0].Block}, res.DeletedBlocks, "cooled down, it goes")
	_, err = e.a.Block(e.ctx, got[0].Block)
	require.ErrorIs(t, err, ipam.ErrNotFound)
	e.requireConsistent()
}
