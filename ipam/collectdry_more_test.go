package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

// TestCollectorDryRunMatchesProperty: over random histories, a dry-run
// collector's every pass writes nothing and reports what a real
// collector's pass, run right after it on the same store, does. The
// histories hold assignments of both families, LoadBalancer addresses,
// addresses asked for by AssignIP, releases of handles and of single
// addresses, claims, affinity releases and removed nodes, reservations,
// disabled, deleted and created pools (blocks outside any pool),
// host-reserved addresses, handle records counting more than the blocks
// hold (in the records of handles that hold addresses too), owners and
// nodes dying and coming back, cooldown changes, and time passing; with
// and without a node oracle. Its histories need a few grace periods to
// reach the interesting cases: an adversarial review ran it with
// -rapid.checks=1000 -rapid.steps=150, which found the divergences the
// three tests below pin down within a few dozen checks.
func TestCollectorDryRunMatchesProperty(t *testing.T) {
	nodeNames := []string{"n0", "n1", "n2"}
	handleNames := []string{"h0", "h1", "h2", "h3", "h4", "h5"}
	p4 := pool.Pool{Name: "p4", CIDR: netip.MustParsePrefix("10.0.0.0/27"), BlockSize: 29}
	p4b := pool.Pool{Name: "p4b", CIDR: netip.MustParsePrefix("10.0.0.32/27"), BlockSize: 30}
	p6 := pool.Pool{Name: "p6", CIDR: netip.MustParsePrefix("fd00::/123"), BlockSize: 125}
	lb := pool.Pool{Name: "lb", CIDR: netip.MustParsePrefix("10.0.1.0/28"), BlockSize: 30, AllowedUses: []pool.Use{pool.UseLoadBalancer}}
	pools := []pool.Pool{p4, p4b, p6, lb}
	var blocks, addrs []netip.Prefix
	for _, p := range pools {
		for b := range prefixesOf(p.CIDR, p.BlockSize) {
			blocks = append(blocks, b)
		}
		for b := range prefixesOf(p.CIDR, p.CIDR.Addr().BitLen()) {
			addrs = append(addrs, b)
		}
	}
	rapid.Check(t, func(rt *rapid.T) {
		ctx := t.Context()
		store := memstore.New()
		clk := newClock()
		a, err := ipam.New(store, ipam.Options{Now: clk.Now})
		require.NoError(rt, err)
		setCooldown := func(d time.Duration) {
			cfg := ipam.DefaultConfig()
			cfg.ReleaseCooldown = d
			require.NoError(rt, a.SetConfig(ctx, cfg))
		}
		setCooldown(rapid.SampledFrom([]time.Duration{0, 90 * time.Second}).Draw(rt, "cooldown"))
		for _, p := range pools {
			require.NoError(rt, a.CreatePool(ctx, p))
		}

		o := &owners{alive: map[string]bool{}}
		nodes := newNodeSet(nodeNames...)
		opts := ipam.CollectorOptions{Grace: 2 * time.Minute, Nodes: nodes.live, KeepEmptyBlocks: rapid.Bool().Draw(rt, "keep")}
		if rapid.Bool().Draw(rt, "noNodeOracle") {
			opts.Nodes = nil
		}
		other, err := ipam.New(store, ipam.Options{Now: clk.Now})
		require.NoError(rt, err)
		dry, real := dryAndReal(rt, a, other, o.live, opts)

		actions := map[string]func(*rapid.T){
			"assign": func(rt *rapid.T) {
				args := ipam.AutoAssignArgs{
					Num4:   rapid.IntRange(0, 5).Draw(rt, "n4"),
					Num6:   rapid.IntRange(0, 3).Draw(rt, "n6"),
					Handle: rapid.SampledFrom(handleNames).Draw(rt, "handle"),
					Node:   rapid.SampledFrom(nodeNames).Draw(rt, "node"),
				}
				if args.Num4+args.Num6 == 0 {
					args.Num4 = 1
				}
				if rapid.Bool().Draw(rt, "reserve") {
					args.ReserveFirst, args.ReserveLast = 1, 1
				}
				_, _ = a.AutoAssign(ctx, args)
			},
			"assignLB": func(rt *rapid.T) {
				_, _ = a.AutoAssign(ctx, ipam.AutoAssignArgs{
					Num4:   rapid.IntRange(1, 3).Draw(rt, "n"),
					Handle: rapid.SampledFrom(handleNames).Draw(rt, "handle"),
					Use:    pool.UseLoadBalancer,
				})
			},
			"assignIP": func(rt *rapid.T) {
				args := ipam.AssignIPArgs{
					Addr:           rapid.SampledFrom(addrs).Draw(rt, "addr").Addr(),
					Handle:         rapid.SampledFrom(handleNames).Draw(rt, "handle"),
					Node:           rapid.SampledFrom(nodeNames).Draw(rt, "node"),
					IgnoreCooldown: rapid.Bool().Draw(rt, "ignoreCooldown"),
				}
				if lb.CIDR.Contains(args.Addr) {
					args.Use, args.Node = pool.UseLoadBalancer, ""
				}
				_, _ = a.AssignIP(ctx, args)
			},
			"release": func(rt *rapid.T) {
				_, _ = a.ReleaseByHandle(ctx, rapid.SampledFrom(handleNames).Draw(rt, "handle"))
			},
			"releaseOne": func(rt *rapid.T) {
				_, _ = a.ReleaseIPs(ctx, ipam.Release{Addr: rapid.SampledFrom(addrs).Draw(rt, "addr").Addr()})
			},
			"claim": func(rt *rapid.T) {
				_, _ = a.ClaimAffinity(ctx, rapid.SampledFrom(nodeNames).Draw(rt, "node"), rapid.SampledFrom(blocks).Draw(rt, "block"))
			},
			"releaseAffinity": func(rt *rapid.T) {
				_ = a.ReleaseAffinity(ctx, rapid.SampledFrom(nodeNames).Draw(rt, "node"), rapid.SampledFrom(blocks).Draw(rt, "block"), false)
			},
			"releaseLBAffinity": func(rt *rapid.T) {
				_ = a.ReleaseLoadBalancerAffinity(ctx, rapid.SampledFrom(blocks).Draw(rt, "block"), false)
			},
			"removeNode": func(rt *rapid.T) {
				_, _ = a.ReleaseHostAffinities(ctx, rapid.SampledFrom(nodeNames).Draw(rt, "node"), false)
			},
			"disable": func(rt *rapid.T) {
				name := rapid.SampledFrom([]string{"p4", "p4b", "p6", "lb"}).Draw(rt, "pool")
				if rapid.Bool().Draw(rt, "off") {
					_ = a.DisablePool(ctx, name)
				} else {
					_ = a.EnablePool(ctx, name)
				}
			},
			"deletePool": func(rt *rapid.T) {
				_ = a.DeletePool(ctx, rapid.SampledFrom([]string{"p4", "p4b", "p6"}).Draw(rt, "pool"))
			},
			"createPool": func(rt *rapid.T) {
				_ = a.CreatePool(ctx, rapid.SampledFrom([]pool.Pool{p4, p4b, p6}).Draw(rt, "pool"))
			},
			"reserve": func(rt *rapid.T) {
				r := ipam.Reservation{Name: "r", CIDRs: []netip.Prefix{rapid.SampledFrom(blocks).Draw(rt, "cidr")}}
				if a.CreateReservation(ctx, r) != nil {
					_ = a.DeleteReservation(ctx, "r")
				}
			},
			"setCooldown": func(rt *rapid.T) {
				setCooldown(rapid.SampledFrom([]time.Duration{0, 90 * time.Second, 10 * time.Minute}).Draw(rt, "cooldown"))
			},
			"ghost": func(rt *rapid.T) {
				counts := map[netip.Prefix]int{}
				for range rapid.IntRange(1, 3).Draw(rt, "blocks") {
					counts[rapid.SampledFrom(blocks).Draw(rt, "block")] = rapid.IntRange(1, 2).Draw(rt, "count")
				}
				_, _ = store.Create(ctx, ipam.KindHandle, rapid.SampledFrom(append([]string{"g0", "g1"}, handleNames...)).Draw(rt, "ghost"), ipam.EncodeHandle(counts))
			},
			"owner": func(rt *rapid.T) {
				o.set(rapid.SampledFrom(handleNames).Draw(rt, "handle"), rapid.Bool().Draw(rt, "alive"))
			},
			"node": func(rt *rapid.T) {
				nodes.set(rapid.SampledFrom(nodeNames).Draw(rt, "node"), rapid.Bool().Draw(rt, "exists"))
			},
			"labels": func(rt *rapid.T) {
				labels := rapid.SampledFrom([]map[string]string{nil, {"rack": "a"}, {"rack": "b"}}).Draw(rt, "labels")
				require.NoError(rt, a.SetNodeLabels(ctx, rapid.SampledFrom(append([]string{"n3"}, nodeNames...)).Draw(rt, "node"), labels))
			},
			"wait": func(rt *rapid.T) {
				clk.Advance(time.Duration(rapid.IntRange(0, 150).Draw(rt, "seconds")) * time.Second)
			},
			"collect": func(rt *rapid.T) {
				requireDryMatches(rt, ctx, store, dry, real)
			},
		}
		// Time and passes matter most: weigh them up.
		for _, k := range []string{"collect", "wait", "owner", "ghost"} {
			actions[k+"2"], actions[k+"3"] = actions[k], actions[k]
		}
		rt.Repeat(actions)
	})
}

// prefixesOf yields the prefixes of length bits that cidr holds.
func prefixesOf(cidr netip.Prefix, bits int) func(func(netip.Prefix) bool) {
	return func(yield func(netip.Prefix) bool) {
		n := 1 << (bits - cidr.Bits())
		a := cidr.Addr()
		for range n {
			p := netip.PrefixFrom(a, bits)
			if !yield(p) {
				return
			}
			for range 1 << (a.BitLen() - bits) {
				a = a.Next()
			}
		}
	}
}

// ghostCount adds to handle's record a count of one for blk, a block that
// gives the handle nothing, as a crash between a count and its block
// write leaves.
func (e *env) ghostCount(handle string, blk netip.Prefix) {
	e.t.Helper()
	rec, err := e.store.Get(e.ctx, ipam.KindHandle, handle)
	require.NoError(e.t, err)
	counts, err := ipam.DecodeHandle(rec.Value)
	require.NoError(e.t, err)
	counts[blk]++
	_, err = e.store.Update(e.ctx, ipam.KindHandle, handle, ipam.EncodeHandle(counts), rec.Revision)
	require.NoError(e.t, err)
}

// TestCollectorDryRunLeavesReleasedHandleCount: handle h's record counts
// an address no block holds (a ghost), and h's one real address has an
// owner that dies a minute after the record is first seen stale. The
// record is ripe for its rebuild on the same pass as the address is ripe
// for release. A real pass releases the address, which lowers the record
// and so changes its revision: the rebuild waits. A dry pass, which
// lowers nothing, must not report the rebuild either (it once did).
func TestCollectorDryRunLeavesReleasedHandleCount(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	e.mustAssign4("node-1", "h", 1)
	e.ghostCount("h", mustPrefix("10.0.0.128/28"))
	o := &owners{alive: map[string]bool{"h": true}}
	dry, real := dryAndReal(t, e.a, e.allocator(), o.live, ipam.CollectorOptions{Grace: 2 * time.Minute})

	for i, step := range []time.Duration{0, time.Minute, time.Minute, time.Minute} {
		e.clock.Advance(step)
		if i == 1 {
			o.set("h", false)
		}
		requireDryMatches(t, e.ctx, e.store, dry, real, "pass %d", i+1)
	}
}

// TestCollectorDryRunClockOfReleasedHandle: h holds one address, with a
// dead owner, and its record also counts a ghost. The pass that releases
// the address lowers the record, at a revision a dry run cannot know; a
// real and a dry collector both leave the record to the next pass, so
// their clocks for it agree, and the dry one reports the rebuild on the
// pass the real one makes it (they were once a pass apart).
func TestCollectorDryRunClockOfReleasedHandle(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	e.mustAssign4("node-1", "h", 1)
	e.ghostCount("h", mustPrefix("10.0.0.128/28"))
	o := &owners{alive: map[string]bool{}}
	dry, real := dryAndReal(t, e.a, e.allocator(), o.live, ipam.CollectorOptions{Grace: 2 * time.Minute})

	var repaired []string
	for i, step := range []time.Duration{0, 2 * time.Minute, 150 * time.Second, 0, time.Minute, time.Minute, time.Minute} {
		e.clock.Advance(step)
		res := requireDryMatches(t, e.ctx, e.store, dry, real, "pass %d", i+1)
		repaired = append(repaired, res.RepairedHandles...)
	}
	require.Equal(t, []string{"h"}, repaired, "the real collector rebuilt h")
}

// flakyHandleStore fails reads of one handle's record while armed, as a
// store timing out.
type flakyHandleStore struct {
	ipam.Store
	handle string
	mu     sync.Mutex
	armed  bool
}

func (f *flakyHandleStore) arm(on bool) {
	f.mu.Lock()
	f.armed = on
	f.mu.Unlock()
}

func (f *flakyHandleStore) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	f.mu.Lock()
	armed := f.armed
	f.mu.Unlock()
	if armed && kind == ipam.KindHandle && key == f.handle {
		return ipam.Record{}, errors.New("transient: etcdserver: request timed out")
	}
	return f.Store.Get(ctx, kind, key)
}

// TestCollectorDryRunAfterFailedRebuild: a record counting a ghost is
// ripe, and the pass that should rebuild it cannot read it (a transient
// store error), in the dry pass and the real one alike. The real
// collector forgets the record and starts its clock again on the next
// pass; the dry one must too, rather than report a rebuild on the next
// pass that the real one does not make (as it once did).
func TestCollectorDryRunAfterFailedRebuild(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	_, err := e.store.Create(e.ctx, ipam.KindHandle, "ghost", ipam.EncodeHandle(map[netip.Prefix]int{mustPrefix("10.0.0.128/28"): 1}))
	require.NoError(t, err)
	fs := &flakyHandleStore{Store: e.store, handle: "ghost"}
	newA := func() *ipam.Allocator {
		a, err := ipam.New(fs, ipam.Options{Now: e.clock.Now})
		require.NoError(t, err)
		return a
	}
	o := &owners{alive: map[string]bool{}}
	dry, real := dryAndReal(t, newA(), newA(), o.live, ipam.CollectorOptions{Grace: 2 * time.Minute})

	requireDryMatches(t, e.ctx, e.store, dry, real)
	e.clock.Advance(2 * time.Minute)
	requireDryMatches(t, e.ctx, e.store, dry, real) // ripe: the read is kept

	e.clock.Advance(time.Minute)
	fs.arm(true)
	_, errDry := dry.Collect(e.ctx)
	require.Error(t, errDry)
	_, errReal := real.Collect(e.ctx)
	require.Error(t, errReal)
	fs.arm(false)

	e.clock.Advance(time.Minute)
	requireDryMatches(t, e.ctx, e.store, dry, real, "after a failed rebuild")
}
