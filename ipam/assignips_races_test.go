package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

var fixedRacePools = []pool.Pool{
	{Name: "v4", CIDR: netip.MustParsePrefix("10.0.0.0/26"), BlockSize: 29},
	{Name: "v6", CIDR: netip.MustParsePrefix("fd00::/122"), BlockSize: 125},
}

// fixedOutcome is one AssignIPs request and what it returned.
type fixedOutcome struct {
	handle string
	res    ipam.AutoAssignResult
	err    error
}

// TestAssignIPsRaces runs AssignIP(s) requests (fixed addresses,
// some sharing blocks, some NewHandle, some IgnoreCooldown) on several
// allocators serving the same nodes, against ReleaseAffinity,
// ReleaseHostAffinities, EnsureBlock, AutoAssign and Collector passes on
// the same nodes. Nobody releases the requests' addresses, so at the end
// every request that succeeded holds exactly its addresses, every request
// that failed (without saying that addresses stay) holds none, and Check
// finds the quiet store clean.
func TestAssignIPsRaces(t *testing.T) {
	for _, tc := range []struct {
		name     string
		strict   bool
		cooldown time.Duration
		pools    bool
	}{
		{"plain", false, 0, false},
		{"strict", true, 0, false},
		{"cooldown", false, time.Hour, false},
		{"pool changes", false, 0, true},
		{"pool changes with cooldown", false, time.Hour, true},
	} {
		for _, commits := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/commits=%t", tc.name, commits), func(t *testing.T) {
				for round := range 4 {
					assignIPsRaceRound(t, uint64(round), tc.strict, tc.cooldown, tc.pools, commits)
				}
			})
		}
	}
}

func assignIPsRaceRound(t *testing.T, seed uint64, strict bool, cooldown time.Duration, poolChanges, commits bool) {
	ctx := t.Context()
	s := memstore.New()
	clk := newClock()
	var st ipam.Store = s
	if !commits {
		st = withoutCommits{Store: s}
	}
	_, isCommitter := st.(ipam.Committer)
	require.Equal(t, commits, isCommitter)
	mk := func() *ipam.Allocator {
		a, err := ipam.New(st, ipam.Options{Now: clk.Now})
		require.NoError(t, err)
		return a
	}
	setup := mk()
	createPools(t, ctx, setup, fixedRacePools...)
	second := pool.Pool{Name: "v4b", CIDR: netip.MustParsePrefix("10.0.1.0/26"), BlockSize: 29}
	createPools(t, ctx, setup, second)
	cfg := ipam.DefaultConfig()
	cfg.StrictAffinity = strict
	cfg.ReleaseCooldown = cooldown
	require.NoError(t, setup.SetConfig(ctx, cfg))
	// Some addresses cool: assigned and released by a handle nobody else uses.
	if cooldown > 0 {
		_, err := setup.AssignIPs(ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.3"), mustAddr("10.0.0.20"), mustAddr("fd00::3")}, Handle: "old", Node: "node-1"})
		require.NoError(t, err)
		_, err = setup.ReleaseByHandle(ctx, "old")
		require.NoError(t, err)
	}
	allocs := []*ipam.Allocator{mk(), mk(), mk()}
	nodes := []string{"node-1", "node-1", "node-2"}

	var mu sync.Mutex
	var outcomes []fixedOutcome
	var next atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	const requests = 60
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			a := allocs[w]
			for range requests {
				n := 1 + r.IntN(3)
				var list []netip.Addr
				for len(list) < n {
					var addr netip.Addr
					if r.IntN(3) == 0 {
						addr = netip.AddrFrom16([16]byte{0: 0xfd, 15: byte(r.IntN(64))})
					} else {
						addr = netip.AddrFrom4([4]byte{10, 0, byte(r.IntN(2)), byte(r.IntN(64))})
					}
					if !slices.Contains(list, addr) {
						list = append(list, addr)
					}
				}
				h := fmt.Sprintf("h%d", next.Add(1))
				args := ipam.AssignIPsArgs{Addrs: list, Handle: h, Node: nodes[w], NewHandle: r.IntN(2) == 0, IgnoreCooldown: r.IntN(2) == 0}
				var res ipam.AutoAssignResult
				var err error
				if n == 1 && r.IntN(2) == 0 {
					var x ipam.Assigned
					x, err = a.AssignIP(ctx, ipam.AssignIPArgs{Addr: list[0], Handle: h, Node: nodes[w], NewHandle: args.NewHandle, IgnoreCooldown: args.IgnoreCooldown})
					if err == nil {
						if x.Addr.Is4() {
							res.IPv4 = []ipam.Assigned{x}
						} else {
							res.IPv6 = []ipam.Assigned{x}
						}
					}
				} else {
					res, err = a.AssignIPs(ctx, args)
				}
				mu.Lock()
				outcomes = append(outcomes, fixedOutcome{h, res, err})
				mu.Unlock()
			}
		}()
	}
	// The disturbers, until the requests are done.
	var dw sync.WaitGroup
	disturb := func(f func(r *rand.Rand)) {
		dw.Add(1)
		go func() {
			defer dw.Done()
			r := rand.New(rand.NewPCG(seed, 77))
			for {
				select {
				case <-stop:
					return
				default:
				}
				f(r)
			}
		}()
	}
	other := mk()
	var unexpected []error
	note := func(err error, allowed ...error) {
		if err == nil {
			return
		}
		for _, a := range allowed {
			if errors.Is(err, a) {
				return
			}
		}
		mu.Lock()
		unexpected = append(unexpected, err)
		mu.Unlock()
	}
	disturb(func(r *rand.Rand) {
		switch r.IntN(3) {
		case 0:
			_, err := other.ReleaseHostAffinities(ctx, "node-1", r.IntN(2) == 0)
			note(err, ipam.ErrBlockNotEmpty)
		case 1:
			blk := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(8 * r.IntN(8))}), 29)
			note(other.ReleaseAffinity(ctx, "node-1", blk, r.IntN(2) == 0), ipam.ErrBlockNotEmpty)
		case 2:
			note(other.ReleaseAffinity(ctx, "node-2", mustPrefix("10.0.0.0/26"), false), ipam.ErrBlockNotEmpty)
		}
	})
	ensurer := mk()
	disturb(func(r *rand.Rand) {
		_, _, err := ensurer.EnsureBlock(ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, IPv6: r.IntN(2) == 0})
		note(err, ipam.ErrNoSpace, pool.ErrNoPool)
	})
	var autos []fixedOutcome
	auto := mk()
	disturb(func(r *rand.Rand) {
		h := fmt.Sprintf("auto%d", next.Add(1))
		res, err := auto.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: h, Node: "node-1"})
		note(err, ipam.ErrNoSpace, pool.ErrNoPool)
		mu.Lock()
		autos = append(autos, fixedOutcome{h, res, err})
		mu.Unlock()
	})
	// The collector runs on real time, with a grace period longer than
	// any request here takes.
	col, err := ipam.New(s, ipam.Options{})
	require.NoError(t, err)
	c, err := ipam.NewCollector(col, func(ctx context.Context, al ipam.Allocation) (bool, error) { return true, nil },
		ipam.CollectorOptions{Grace: 200 * time.Millisecond})
	require.NoError(t, err)
	disturb(func(r *rand.Rand) {
		_, err := c.Collect(ctx)
		note(err)
	})
	if poolChanges {
		pc := mk()
		disturb(func(r *rand.Rand) {
			switch r.IntN(4) {
			case 0:
				note(pc.DisablePool(ctx, "v6"), ipam.ErrPoolNotFound)
			case 1:
				note(pc.EnablePool(ctx, "v6"), ipam.ErrPoolNotFound)
			case 2:
				note(pc.DeletePool(ctx, "v4b"), ipam.ErrPoolNotFound)
			case 3:
				err := pc.CreatePool(ctx, second)
				note(err, ipam.ErrPoolExists)
			}
		})
	}
	wg.Wait()
	close(stop)
	dw.Wait()
	if poolChanges {
		note(setup.EnablePool(ctx, "v6"))
		if err := setup.CreatePool(ctx, second); err != nil {
			note(err, ipam.ErrPoolExists)
		}
	}
	require.Empty(t, unexpected, "errors the disturbers should not meet")

	// Every address is held by exactly the request that says it got it.
	for _, o := range append(outcomes, autos...) {
		held, herr := setup.AssignedByHandle(ctx, o.handle)
		if o.err == nil {
			require.NoError(t, herr, "%s: %v", o.handle, o.res)
			require.ElementsMatch(t, append(o.res.IPv4, o.res.IPv6...), append(held.IPv4, held.IPv6...), "%s", o.handle)
			continue
		}
		if strings.Contains(o.err.Error(), "stays under the handle") {
			continue
		}
		require.ErrorIs(t, herr, ipam.ErrHandleNotFound, "%s failed (%v) but holds %v", o.handle, o.err, held)
		require.Zero(t, held.Len(), "%s failed (%v) but holds %v", o.handle, o.err, held)
	}
	ok := 0
	for _, o := range outcomes {
		if o.err == nil {
			ok++
		}
	}
	t.Logf("seed %d: %d of %d requests succeeded, %d automatic", seed, ok, len(outcomes), len(autos))
	r, err := setup.Check(ctx)
	require.NoError(t, err)
	require.True(t, r.Clean(), "%v", r.Problems)
}
