package ipam_test

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

func TestReservationsExcludedFromAutoAssign(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/28", 30)) // four /30 blocks
	// Reserve all of the first two blocks and one address of the third.
	r := ipam.Reservation{Name: "gateways", CIDRs: []netip.Prefix{mustPrefix("10.0.0.0/29"), mustPrefix("10.0.0.9/32")}}
	require.NoError(t, e.a.CreateReservation(e.ctx, r))

	got := e.mustAssign4("node-1", "h", 7)
	for _, x := range got {
		require.False(t, mustPrefix("10.0.0.0/29").Contains(x.Addr), "%s is reserved", x.Addr)
		require.NotEqual(t, mustAddr("10.0.0.9"), x.Addr)
	}
	_, err := e.assign4("node-1", "more", 1)
	require.ErrorIs(t, err, ipam.ErrNoSpace, "the rest is reserved")
	require.ErrorContains(t, err, "addresses in reservations are never assigned automatically")
	require.NotContains(t, err.Error(), "releaseCooldown")
	require.Len(t, e.affine("node-1"), 2, "fully reserved blocks are never claimed")

	u := e.utilization()
	require.EqualValues(t, 7, u[0].InUse)
	require.EqualValues(t, 9, u[0].Reserved.Int64(), "8 addresses of untouched blocks and one inside a block")
	require.Zero(t, u[0].Free.Sign())

	// AssignIP may take a reserved address on purpose.
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.0.9"), Handle: "gw", Node: "node-1"})
	require.NoError(t, err)

	// Deleting the reservation frees its addresses for AutoAssign.
	require.NoError(t, e.a.DeleteReservation(e.ctx, "gateways"))
	e.mustAssign4("node-2", "after", 8)
	u = e.utilization()
	require.Zero(t, u[0].Reserved.Sign())
	require.Zero(t, u[0].Free.Sign())
}

func TestReservationAPI(t *testing.T) {
	e := newEnv(t)
	r := ipam.Reservation{Name: "r1", CIDRs: []netip.Prefix{mustPrefix("10.0.0.0/30")}}
	require.NoError(t, e.a.CreateReservation(e.ctx, r))
	require.ErrorIs(t, e.a.CreateReservation(e.ctx, r), ipam.ErrReservationExists)
	r.CIDRs = append(r.CIDRs, mustPrefix("fd00::/64"))
	require.NoError(t, e.a.UpdateReservation(e.ctx, r))
	all, err := e.a.Reservations(e.ctx)
	require.NoError(t, err)
	require.Equal(t, []ipam.Reservation{r}, all)
	require.ErrorIs(t, e.a.UpdateReservation(e.ctx, ipam.Reservation{Name: "nope", CIDRs: r.CIDRs}), ipam.ErrReservationNotFound)
	require.ErrorIs(t, e.a.DeleteReservation(e.ctx, "nope"), ipam.ErrReservationNotFound)
	for _, bad := range []ipam.Reservation{
		{Name: "", CIDRs: r.CIDRs},
		{Name: "x"},
		{Name: "x", CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/24")}},
		{Name: "x", CIDRs: []netip.Prefix{{}}},
		{Name: "a/b", CIDRs: r.CIDRs},
	} {
		require.ErrorIs(t, e.a.CreateReservation(e.ctx, bad), ipam.ErrInvalid, "%+v", bad)
	}
	err = e.a.CreateReservation(e.ctx, ipam.Reservation{Name: "m", CIDRs: []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}})
	require.ErrorIs(t, err, ipam.ErrInvalid)
	require.ErrorContains(t, err, `reservation "m": ::ffff:10.0.0.0/104 is an IPv4-mapped IPv6 prefix; write IPv4 ranges in IPv4 form`)
	require.NoError(t, e.a.DeleteReservation(e.ctx, "r1"))
	all, err = e.a.Reservations(e.ctx)
	require.NoError(t, err)
	require.Empty(t, all)
}

func TestReleaseCooldown(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/30", 30)) // one block of 4
	e.cooldown(time.Minute)
	got := e.mustAssign4("node-1", "a", 4)
	_, err := e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: got[2].Addr})
	require.NoError(t, err)

	// Within the cooldown the address is not handed out again.
	_, err = e.assign4("node-1", "b", 1)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.ErrorContains(t, err, "addresses released in the last 1m0s are held back by releaseCooldown")
	require.NotContains(t, err.Error(), "reservations")
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: got[2].Addr, Handle: "b", Node: "node-1"})
	require.ErrorIs(t, err, ipam.ErrCoolingDown)
	u := e.utilization()
	require.EqualValues(t, 1, u[0].Cooling)
	require.EqualValues(t, 1, u[0].Blocks[0].Cooling)
	require.Zero(t, u[0].Free.Sign())

	e.clock.Advance(time.Minute + time.Second)
	x := e.mustAssign4("node-1", "b", 1)
	require.Equal(t, got[2].Addr, x[0].Addr)
	require.Zero(t, e.utilization()[0].Cooling)

	// A workload that gets its fixed address back skips the cooldown when
	// its caller says so.
	_, err = e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: got[3].Addr})
	require.NoError(t, err)
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: got[3].Addr, Handle: "sts-0", Node: "node-1"})
	require.ErrorIs(t, err, ipam.ErrCoolingDown)
	require.ErrorContains(t, err, "IgnoreCooldown")
	back, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: got[3].Addr, Handle: "sts-0", Node: "node-1", IgnoreCooldown: true})
	require.NoError(t, err)
	require.Equal(t, got[3].Addr, back.Addr)
	require.Zero(t, e.utilization()[0].Cooling, "assigned: cooling no more")

	// ReleaseByHandle stamps too; a later change prunes old stamps.
	_, err = e.a.ReleaseByHandle(e.ctx, "b")
	require.NoError(t, err)
	_, err = e.assign4("node-1", "c", 1)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	blk, err := e.a.Block(e.ctx, got[0].Block)
	require.NoError(t, err)
	_, cooling := blk.ReleasedAt(got[2].Addr)
	require.True(t, cooling)

	// Turning the cooldown off makes everything free again.
	e.config(ipam.DefaultConfig())
	e.mustAssign4("node-1", "c", 1)
}

func TestConfigJSONRoundTrip(t *testing.T) {
	e := newEnv(t)
	c := ipam.Config{StrictAffinity: true, MaxBlocksPerHost: 3, ReleaseCooldown: 90 * time.Second}
	require.NoError(t, e.a.SetConfig(e.ctx, c))
	rec, err := e.store.Get(e.ctx, ipam.KindConfig, "default")
	require.NoError(t, err)
	require.JSONEq(t, `{"strictAffinity":true,"autoAllocateBlocks":false,"maxBlocksPerHost":3,"releaseCooldown":"1m30s"}`, string(rec.Value))
	got, err := e.allocator().Config(e.ctx)
	require.NoError(t, err)
	require.Equal(t, c, got)
	for _, bad := range []ipam.Config{{StrictAffinity: true, ReleaseCooldown: -1}, {StrictAffinity: true, ReleaseCooldown: 48 * time.Hour}, {MaxBlocksPerHost: -1, AutoAllocateBlocks: true}} {
		err := e.a.SetConfig(e.ctx, bad)
		require.ErrorIs(t, err, ipam.ErrInvalidConfig, "%+v", bad)
		require.ErrorIs(t, err, ipam.ErrInvalid, "a malformed argument, as in every other call: %+v", bad)
	}
}

func TestFailedAssignLeavesNoClaim(t *testing.T) {
	v6 := v4pool("v6", "fd00::/126", 126)
	e := newEnv(t, v4pool("v4", "10.0.0.0/24", 26), v6)
	e.config(ipam.Config{StrictAffinity: true, AutoAllocateBlocks: true})
	_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num6: 4, Handle: "x", Node: "node-0"})
	require.NoError(t, err)
	// node-1's request claims an IPv4 block, then finds no IPv6 space.
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "y", Node: "node-1"})
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.Empty(t, e.affine("node-1"), "the IPv4 block claimed on the way was given back")
	require.Zero(t, e.store.Len(ipam.KindHandle)-1)
}

// Windows nodes reserve the first three and the last address of every
// block they claim (Calico's HostReservedAttr).
func TestHostReservedAddresses(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28), v4pool("tiny", "10.1.0.0/24", 30))
	args := ipam.AutoAssignArgs{Num4: 12, Handle: "win", Node: "win-1", ReserveFirst: 3, ReserveLast: 1, IPv4Pools: []string{"p"}}
	res, err := e.a.AutoAssign(e.ctx, args)
	require.NoError(t, err)
	blk := res.IPv4[0].Block
	require.Len(t, blocksOf(res.IPv4), 1, "12 of the 16 addresses fit")
	for _, x := range res.IPv4 {
		off := int(x.Addr.As4()[3] - blk.Addr().As4()[3])
		require.True(t, off >= 3 && off <= 14, "%s is reserved", x.Addr)
	}
	u := e.utilization()
	require.EqualValues(t, 4, u[0].Reserved.Int64())
	require.Equal(t, 4, u[0].Blocks[0].Reserved)

	// A block of 4 addresses keeps none after 3+1: the pool is not used.
	args.Handle, args.Num4, args.IPv4Pools = "win2", 1, []string{"tiny"}
	_, err = e.a.AutoAssign(e.ctx, args)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.Contains(t, err.Error(), "too small to reserve 3+1")

	// A full block with only reserved addresses left counts as empty.
	_, err = e.a.ReleaseByHandle(e.ctx, "win")
	require.NoError(t, err)
	b, err := e.a.Block(e.ctx, blk)
	require.NoError(t, err)
	require.True(t, b.Empty())

	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "x", Node: "n", ReserveFirst: -1})
	require.ErrorIs(t, err, ipam.ErrInvalid)
}

// TestShortReasonsAreTrue: an AutoAssign that comes up short gives only
// reasons that hold: the cooldown only when a released address was held
// back, reservations only when they kept addresses or blocks back, and
// "no unclaimed block left" only for pools whose walk found none.
func TestShortReasonsAreTrue(t *testing.T) {
	cooldown := func(e *env) { e.cooldown(time.Minute) }
	for _, c := range []struct {
		name    string
		setup   func(e *env)
		args    ipam.AutoAssignArgs
		want    []string
		notWant []string
	}{
		{
			name:    "blocks too small for the reservation, cooldown on, nothing released",
			setup:   cooldown,
			args:    ipam.AutoAssignArgs{Num4: 1, ReserveFirst: 3, ReserveLast: 1},
			want:    []string{`pool "p"'s blocks are too small to reserve 3+1 addresses`},
			notWant: []string{"no unclaimed block", "releaseCooldown", "reservations"},
		},
		{
			name:    "more than the pool holds, cooldown on, nothing released",
			setup:   cooldown,
			args:    ipam.AutoAssignArgs{Num4: 17},
			want:    []string{`no unclaimed block left in pools ["p"]`, "no free address to borrow"},
			notWant: []string{"releaseCooldown", "reservations"},
		},
		{
			name: "an address released within the cooldown",
			setup: func(e *env) {
				cooldown(e)
				got := e.mustAssign4("node-2", "x", 16)
				_, err := e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: got[5].Addr})
				require.NoError(e.t, err)
			},
			args:    ipam.AutoAssignArgs{Num4: 1},
			want:    []string{"addresses released in the last 1m0s are held back by releaseCooldown"},
			notWant: []string{"reservations"},
		},
		{
			name: "a reservation over whole blocks",
			setup: func(e *env) {
				require.NoError(e.t, e.a.CreateReservation(e.ctx, ipam.Reservation{Name: "r", CIDRs: []netip.Prefix{mustPrefix("10.0.0.8/29")}}))
				e.mustAssign4("node-2", "x", 8)
			},
			args:    ipam.AutoAssignArgs{Num4: 1},
			want:    []string{"addresses in reservations are never assigned automatically"},
			notWant: []string{"releaseCooldown"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/28", 30)) // four blocks of 4
			c.setup(e)
			args := c.args
			args.Handle, args.Node = "h", "node-1"
			_, err := e.a.AutoAssign(e.ctx, args)
			require.ErrorIs(t, err, ipam.ErrNoSpace)
			for _, s := range c.want {
				require.ErrorContains(t, err, s)
			}
			for _, s := range c.notWant {
				require.NotContains(t, err.Error(), s)
			}
			e.requireConsistent()
		})
	}
}

// TestCooldownSurvivesAllocatorsWithoutCurrentConfig: a node-removal
// controller whose allocator has read no configuration yet, or read it
// before the cooldown was set, rewrites a block with an address still
// cooling. It must keep the release time, so that a node borrowing from
// the block does not get the address.
func TestCooldownSurvivesAllocatorsWithoutCurrentConfig(t *testing.T) {
	for _, stale := range []bool{false, true} {
		t.Run(fmt.Sprintf("stale=%v", stale), func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/29", 29)) // one block of 8
			controller := e.allocator()
			if stale {
				_, err := controller.Config(e.ctx) // reads the view before the cooldown
				require.NoError(t, err)
			}
			e.cooldown(time.Hour)
			got := e.mustAssign4("node-1", "a", 8)
			_, err := e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: got[3].Addr})
			require.NoError(t, err)

			_, err = controller.ReleaseHostAffinities(e.ctx, "node-1", false)
			require.NoError(t, err)
			e.clock.Advance(time.Minute)
			_, err = e.assign4("node-2", "b", 1)
			require.ErrorIs(t, err, ipam.ErrNoSpace, "the only free address is cooling")
			require.ErrorContains(t, err, "held back by releaseCooldown")
		})
	}
}

// TestReservationDuringAutoAssign: a reservation is created (or widened)
// while an AutoAssign is in flight, after the request read the
// reservations and just before it writes its block. The request must not
// return an address inside it: it gives the address back and assigns
// another, or fails if the pool has no other. With and without the
// store's generations (without them, the reservations are read again).
func TestReservationDuringAutoAssign(t *testing.T) {
	for _, c := range []struct {
		name    string
		gens    bool
		update  bool // widen an existing reservation rather than create one
		reserve string
		num     int
		partial bool
		wantErr bool
	}{
		{name: "create, generations", gens: true, reserve: "10.0.0.0/30", num: 2},
		{name: "create, no generations", reserve: "10.0.0.0/30", num: 2},
		{name: "update, generations", gens: true, update: true, reserve: "10.0.0.0/30", num: 2},
		{name: "the whole pool, all or nothing", gens: true, reserve: "10.0.0.0/28", num: 2, wantErr: true},
		{name: "the whole pool, partial", gens: true, reserve: "10.0.0.0/28", num: 2, partial: true, wantErr: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/28", 28)) // one block of 16
			r := ipam.Reservation{Name: "late", CIDRs: []netip.Prefix{mustPrefix("10.0.0.15/32")}}
			if c.update {
				require.NoError(t, e.a.CreateReservation(e.ctx, r))
			}
			var once sync.Once
			hs := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
				if kind != ipam.KindBlock {
					return
				}
				once.Do(func() {
					r.CIDRs = []netip.Prefix{mustPrefix(c.reserve)}
					if c.update {
						require.NoError(t, e.a.UpdateReservation(e.ctx, r))
					} else {
						require.NoError(t, e.a.CreateReservation(e.ctx, r))
					}
				})
			}}
			var s ipam.Store = hs
			if c.gens {
				s = struct {
					*hookStore
					ipam.Generations
				}{hs, e.store}
			}
			a, err := ipam.New(s, ipam.Options{Now: e.clock.Now})
			require.NoError(t, err)
			res, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: c.num, Handle: "h", Node: "node-1", Partial: c.partial})
			late := mustPrefix(c.reserve)
			for _, x := range res.IPv4 {
				require.False(t, late.Contains(x.Addr), "%s is in the reservation made during the request", x.Addr)
			}
			if c.wantErr {
				require.ErrorIs(t, err, ipam.ErrNoSpace)
				require.ErrorContains(t, err, "addresses in reservations are never assigned automatically")
				require.Empty(t, res.IPv4)
			} else {
				require.NoError(t, err)
				require.Len(t, res.IPv4, c.num)
			}
			allocs, err := e.a.Allocations(e.ctx, mustPrefix("10.0.0.0/28"))
			require.NoError(t, err)
			require.Len(t, allocs, len(res.IPv4), "the addresses given back are free again")
			e.requireConsistent()
		})
	}
}
