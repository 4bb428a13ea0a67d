package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
)

// TestClaimRunReclaimsPlannedBlock: a batch plans on the node's two
// blocks as its cache sees them, but the second is gone from the store
// (another allocator released it and stopped before dropping its index
// record, as a crash leaves it). The batch then claims that very block
// again, in a run of several blocks, so the block has two entries in the
// reservation: the one for the node's blocks, and the one for the run.
// What is left of both must be lowered at the end: the counts come out
// exact.
func TestClaimRunReclaimsPlannedBlock(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28)) // blocks of 16
	warm := e.mustAssign4("node-1", "warm", 32)    // the node's first two blocks
	blocks := blocksOf(warm)
	require.Len(t, blocks, 2)
	_, err := e.a.ReleaseByHandle(e.ctx, "warm") // e.a caches both empty and node-1's
	require.NoError(t, err)
	second := warm[len(warm)-1].Block
	key := storeKey(t, e, second)
	rec, err := e.store.Get(e.ctx, ipam.KindBlock, key)
	require.NoError(t, err)
	require.NoError(t, e.store.Delete(e.ctx, ipam.KindBlock, key, rec.Revision)) // the index record stays

	got, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 50, Handle: "h", Node: "node-1"})
	require.NoError(t, err)
	require.Len(t, got.IPv4, 50)
	require.Contains(t, blocksOf(got.IPv4), second, "claimed again")
	e.requireHolds("h", got.IPv4)
}

// TestClaimRunFindsNodesBlock: a request that reserves addresses at the
// ends of each block it claims (ReserveFirst, ReserveLast) needs two new
// blocks at the least, going by what a new block gives it. Its first claim
// finds the block made the node's meanwhile by another allocator, without
// reservations: that block alone has room for the whole request. The
// request must claim no second block, which it would leave empty, as the
// node's, for nothing.
func TestClaimRunFindsNodesBlock(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28)) // blocks of 16
	other := e.allocator()
	raced := false
	hooked := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if !raced && op == "create" && kind == ipam.KindBlock {
			raced = true
			// Another allocator serving node-1 claims the same block,
			// the first of the node's walk, without reservations.
			_, err := other.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "other", Node: "node-1"})
			require.NoError(t, err)
		}
	}}
	a, err := ipam.New(hooked, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)

	// 14: more than the 12 a new block gives with 3+1 reserved.
	got, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 14, Handle: "h", Node: "node-1", ReserveFirst: 3, ReserveLast: 1})
	require.NoError(t, err)
	require.True(t, raced)
	require.Len(t, blocksOf(got.IPv4), 1, "the node's block has room for all 14")
	require.Len(t, e.affine("node-1"), 1, "no second block claimed")
	e.requireHolds("h", got.IPv4)
}

// TestClaimRunFaultAtEveryOperation: requests whose claims come in runs of
// several blocks (a node's first batch, dual-stack; after the node's own
// blocks; with addresses reserved at the blocks' ends; short of space;
// capped by MaxBlocksPerHost) meet a fault at each store operation in
// turn, in each mode. What is left must be only what the write order
// promises (a handle counting too much, an index entry too many), which
// Repair clears; a request that succeeded, wholly or in part, holds just
// what it returned.
func TestClaimRunFaultAtEveryOperation(t *testing.T) {
	type tc struct {
		name  string
		setup func(ctx context.Context, a *ipam.Allocator) error
		args  ipam.AutoAssignArgs
	}
	cases := []tc{
		{"first batch", nil, ipam.AutoAssignArgs{Num4: 20, Num6: 10, Handle: "h", Node: "n1"}},
		{"after held blocks", func(ctx context.Context, a *ipam.Allocator) error {
			// n1 holds two blocks, 4 free in all, behind this allocator's back.
			_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 12, Handle: "setup", Node: "n1"})
			return err
		}, ipam.AutoAssignArgs{Num4: 20, Handle: "h", Node: "n1"}},
		{"reserved ends", nil, ipam.AutoAssignArgs{Num4: 14, Num6: 3, Handle: "h", Node: "n1", ReserveFirst: 1, ReserveLast: 1}},
		{"partial", func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 3, Handle: "setup", Node: "n2"})
			return err
		}, ipam.AutoAssignArgs{Num4: 32, Handle: "h", Node: "n1", Partial: true}},
		{"capped", func(ctx context.Context, a *ipam.Allocator) error {
			cfg := ipam.DefaultConfig()
			cfg.MaxBlocksPerHost = 2
			cfg.StrictAffinity = true
			return a.SetConfig(ctx, cfg)
		}, ipam.AutoAssignArgs{Num4: 20, Handle: "h", Node: "n1", Partial: true}},
	}
	modes := []storetest.FaultMode{storetest.FailOnce, storetest.Crash, storetest.CrashAfter, storetest.LostReply}
	for _, c := range cases {
		for _, keeper := range keepers {
			newStore := func(t *testing.T) *memstore.Store { return crashStore(t, c.setup) }
			t.Run(fmt.Sprintf("%s/keeper=%t", c.name, keeper), func(t *testing.T) {
				clean := storetest.NewFaultyStore(newStore(t), storetest.Fault{})
				a, err := ipam.New(faultyView(clean, false, keeper), ipam.Options{})
				require.NoError(t, err)
				res, err := a.AutoAssign(t.Context(), c.args)
				if !c.args.Partial {
					require.NoError(t, err)
				}
				require.Positive(t, res.Len())
				total := clean.Ops()
				t.Logf("clean run: %d IPv4, %d IPv6, %v; %d operations", len(res.IPv4), len(res.IPv6), err, total)
				for _, mode := range modes {
					for k := int64(1); k <= total; k++ {
						s := newStore(t)
						f := storetest.NewFaultyStore(s, storetest.Fault{At: k, Mode: mode})
						a, err := ipam.New(faultyView(f, false, keeper), ipam.Options{})
						require.NoError(t, err)
						res, err := a.AutoAssign(t.Context(), c.args)
						var ae *ipam.AssignError
						kept := err == nil || errors.As(err, &ae) && c.args.Partial
						where := fmt.Sprintf("%s at %d (%v)", mode, k, err)

						checker, err := ipam.New(s, ipam.Options{})
						require.NoError(t, err)
						r, err := checker.Check(t.Context())
						require.NoError(t, err)
						for _, p := range r.Problems {
							require.Contains(t, []ipam.ProblemKind{ipam.ProblemHandleExcess, ipam.ProblemAffinityStale}, p.Kind, "%s: %v", where, p)
						}
						_, after, err := checker.Repair(t.Context(), ipam.RepairOptions{})
						require.NoError(t, err)
						require.True(t, after.Clean(), "%s; after repair: %v", where, after.Problems)
						if kept && res.Len() > 0 {
							held, err := checker.IPsByHandle(t.Context(), "h")
							require.NoError(t, err, where)
							require.ElementsMatch(t, addrs(slices.Concat(res.IPv4, res.IPv6)), held, where)
						}
					}
				}
			})
		}
	}
}

// TestClaimRunAdoptsCoolingBlocks: a batch's run takes over empty blocks
// another node gave up while some of their addresses cool: they give fewer
// than planned (cooling addresses are held back, reserved ends are reset
// to the request's), the batch claims more, and the counts come out exact.
func TestClaimRunAdoptsCoolingBlocks(t *testing.T) {
	for _, c := range []struct{ rsv, fresh int }{{0, 0}, {1, 0}, {0, 1}, {1, 1}} {
		rsv := c.rsv
		e := newEnv(t, v4pool("p", "10.0.0.0/26", 29)) // 8 blocks of 8
		e.cooldown(time.Hour)
		// node-2 fills three blocks, then releases them in two steps an
		// hour apart: five addresses of each are still cooling when it
		// gives the blocks up.
		var got []ipam.Assigned
		for i := range 3 {
			got = append(got, e.mustAssign4("node-2", fmt.Sprintf("x%d", i), 8)...)
		}
		var early, late []ipam.Release
		for i, x := range got {
			if i%8 < 3 {
				early = append(early, ipam.Release{Addr: x.Addr})
			} else {
				late = append(late, ipam.Release{Addr: x.Addr})
			}
		}
		_, err := e.a.ReleaseIPs(e.ctx, early...)
		require.NoError(t, err)
		e.clock.Advance(2 * time.Hour)
		_, err = e.a.ReleaseIPs(e.ctx, late...)
		require.NoError(t, err)
		_, err = e.a.ReleaseHostAffinities(e.ctx, "node-2", true)
		require.NoError(t, err)

		a := e.a // whose cache holds the blocks as node-2 left them
		if c.fresh == 1 {
			a = e.allocator()
		}
		res, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 64, Handle: "h", Node: "node-1", ReserveFirst: rsv, ReserveLast: rsv, Partial: true})
		var ae *ipam.AssignError
		require.ErrorAs(t, err, &ae)
		require.Greater(t, len(res.IPv4), 5*(8-2*rsv), "%+v", c)
		require.Len(t, blocksOf(res.IPv4), 8, "%+v: every block gave some", c)
		e.requireHolds("h", res.IPv4)
	}
}

// TestClaimRunPastStaleCachedBlock: an allocator's cache still holds a
// block that another allocator deleted (it released the node's
// affinities). A request that claims several blocks in a run must not
// pass that block over for good on the strength of the cached copy: the
// cached refusal moves one walk on, but the block is free, and a request
// that needs every free block must get it. (The state machine found it:
// the request came up short with three blocks unclaimed.)
func TestClaimRunPastStaleCachedBlock(t *testing.T) {
	ctx := t.Context()
	s := memstore.New()
	a, err := ipam.New(s, ipam.Options{})
	require.NoError(t, err)
	other, err := ipam.New(s, ipam.Options{})
	require.NoError(t, err)
	// Four blocks of four.
	require.NoError(t, a.CreatePool(ctx, pool.Pool{Name: "c6", CIDR: netip.MustParsePrefix("fd00::/124"), BlockSize: 126}))
	stale := netip.MustParsePrefix("fd00::4/126")
	_, err = a.ClaimAffinity(ctx, "n0", stale)
	require.NoError(t, err)
	_, err = other.ReleaseHostAffinities(ctx, "n0", false) // deletes it: a's copy is stale
	require.NoError(t, err)
	n0, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num6: 2, Handle: "h0", Node: "n0"})
	require.NoError(t, err)
	require.NotEqual(t, stale, n0.IPv6[0].Block)
	// n1 needs the three other blocks and one address of n0's.
	got, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num6: 13, Handle: "h1", Node: "n1"})
	require.NoError(t, err)
	require.Len(t, got.IPv6, 13)
	require.Contains(t, blocksOf(got.IPv6), stale)
	b, err := a.Block(ctx, stale)
	require.NoError(t, err)
	require.Equal(t, "host:n1", b.Affinity().String())
}
