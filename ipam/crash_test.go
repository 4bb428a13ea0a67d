package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
)

// crashPools: small, so that blocks fill, nodes borrow and claims collide.
var crashPools = []pool.Pool{
	{Name: "v4", CIDR: netip.MustParsePrefix("10.0.0.0/27"), BlockSize: 29},
	{Name: "v6", CIDR: netip.MustParsePrefix("fd00::/124"), BlockSize: 126},
}

// step is one action of the workload, drawn in advance so that every run
// does the same things in the same order.
type step struct {
	node int
	kind int    // what to do
	n    int    // a count
	pick uint64 // picks a handle, address or block among those known then
}

func crashWorkload(seed uint64, steps int) []step {
	r := rand.New(rand.NewPCG(seed, 99))
	w := make([]step, steps)
	for i := range w {
		w[i] = step{node: r.IntN(3), kind: r.IntN(7), n: 1 + r.IntN(3), pick: r.Uint64()}
	}
	return w
}

// crashRun executes a workload on one store. Node 0 talks to the store
// through a FaultyStore; when it crashes, node 0 "restarts" with a fresh
// allocator on the real store, as a restarted process would.
type crashRun struct {
	t       *testing.T
	ctx     context.Context
	store   *memstore.Store
	clock   *clock
	cool    bool // a release cooldown is set: the clock moves a second a step
	keeper  bool // the allocators hand blocks to the store (BlockKeeper)
	faulty  *storetest.FaultyStore
	allocs  [3]*ipam.Allocator
	handles []string
	held    []ipam.Assigned
	next    int
}

// With commits set, node 0's store offers Committer, so the fault may
// strike a commit of two records; otherwise it writes them one by one.
// With keeper unset, every node writes blocks as bytes (no BlockKeeper),
// as over a store in another process.
func newCrashRun(t *testing.T, f storetest.Fault, commits, keeper bool) *crashRun {
	return newCoolCrashRun(t, f, 0, commits, keeper)
}

// newCoolCrashRun is newCrashRun with a release cooldown.
func newCoolCrashRun(t *testing.T, f storetest.Fault, cooldown time.Duration, commits, keeper bool) *crashRun {
	t.Helper()
	r := &crashRun{t: t, ctx: t.Context(), store: memstore.New(), clock: newClock(), cool: cooldown > 0, keeper: keeper}
	setup := r.allocator(r.store)
	for _, p := range crashPools {
		require.NoError(t, setup.CreatePool(r.ctx, p))
	}
	if r.cool {
		cfg := ipam.DefaultConfig()
		cfg.ReleaseCooldown = cooldown
		require.NoError(t, setup.SetConfig(r.ctx, cfg))
	}
	r.faulty = storetest.NewFaultyStore(r.store, f)
	r.allocs[0] = r.allocator(faultyView(r.faulty, commits, keeper))
	for i := 1; i < 3; i++ {
		r.allocs[i] = r.allocator(r.nodeStore())
	}
	return r
}

// nodeStore is the store of a node without faults: memstore, without
// BlockKeeper unless r.keeper.
func (r *crashRun) nodeStore() ipam.Store {
	if r.keeper {
		return r.store
	}
	return storetest.WithoutBlockKeeper(r.store)
}

func (r *crashRun) allocator(s ipam.Store) *ipam.Allocator {
	a, err := ipam.New(s, ipam.Options{Now: r.clock.Now})
	require.NoError(r.t, err)
	return a
}

// expected reports whether err is an outcome the workload can meet: no
// space, a refused release, a conflict with another node, or the injected
// fault itself.
func expected(err error) bool {
	return err == nil || errors.Is(err, ipam.ErrNoSpace) || errors.Is(err, ipam.ErrInUse) ||
		errors.Is(err, ipam.ErrHandleNotFound) || errors.Is(err, ipam.ErrBlockNotEmpty) ||
		errors.Is(err, ipam.ErrAffinityConflict) || errors.Is(err, ipam.ErrSeqMismatch) ||
		errors.Is(err, ipam.ErrStrictAffinity) || errors.Is(err, storetest.ErrInjected)
}

func (r *crashRun) do(s step) error {
	if r.cool {
		r.clock.Advance(time.Second)
	}
	a := r.allocs[s.node]
	node := fmt.Sprintf("node-%d", s.node)
	var err error
	switch s.kind {
	case 0, 1, 2: // assignments are the most common
		r.next++
		h := fmt.Sprintf("h%d", r.next)
		args := ipam.AutoAssignArgs{Num4: s.n, Handle: h, Node: node}
		if s.pick%3 == 0 {
			args.Num6 = 1
		}
		var res ipam.AutoAssignResult
		res, err = a.AutoAssign(r.ctx, args)
		if err == nil {
			r.handles = append(r.handles, h)
			r.held = append(r.held, res.IPv4...)
			r.held = append(r.held, res.IPv6...)
		}
	case 3:
		if len(r.handles) > 0 {
			_, err = a.ReleaseByHandle(r.ctx, r.handles[s.pick%uint64(len(r.handles))])
		}
	case 4:
		if len(r.held) > 0 {
			x := r.held[s.pick%uint64(len(r.held))]
			_, err = a.ReleaseIPs(r.ctx, ipam.Release{Addr: x.Addr, Seq: x.Seq})
		}
	case 5:
		r.next++
		addr := netip.AddrFrom4([4]byte{10, 0, 0, byte(s.pick % 32)})
		_, err = a.AssignIP(r.ctx, ipam.AssignIPArgs{Addr: addr, Handle: fmt.Sprintf("ip%d", r.next), Node: node})
	case 6:
		// With a cooldown, non-empty blocks are released too, and
		// emptied later without affinity.
		_, err = a.ReleaseHostAffinities(r.ctx, node, !r.cool || s.pick%2 == 0)
	}
	if s.node == 0 && r.faulty.Crashed() {
		// Node 0's process died: it comes back with a fresh allocator.
		r.allocs[0] = r.allocator(r.nodeStore())
		r.faulty = storetest.NewFaultyStore(r.store, storetest.Fault{})
	}
	return err
}

// requireRepairable checks what a fault left: only repairable damage
// (never an address held twice, never a corrupt record), and only what the
// write order promises (docs/ARCHITECTURE.md): a handle counting too much,
// an index entry too many. Repair must clear it, and the workload more
// then goes on, on every node, and stays consistent.
func (r *crashRun) requireRepairable(fault string, more []step) {
	t := r.t
	t.Helper()
	checker := r.allocs[1]
	rep, err := checker.Check(r.ctx)
	require.NoError(t, err)
	require.True(t, rep.Repairable(), "%s left: %v", fault, rep.Problems)
	for _, p := range rep.Problems {
		require.Contains(t, []ipam.ProblemKind{ipam.ProblemHandleExcess, ipam.ProblemAffinityStale}, p.Kind, "%s: %v", fault, p)
	}
	actions, after, err := checker.Repair(r.ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	for _, act := range actions {
		require.True(t, act.Done, "%v: %s", act.Problem, act.Note)
	}
	require.True(t, after.Clean(), "after repair: %v", after.Problems)
	r.run(more)
	rep, err = checker.Check(r.ctx)
	require.NoError(t, err)
	require.True(t, rep.Clean(), "after more work: %v", rep.Problems)
}

func (r *crashRun) run(w []step) {
	r.t.Helper()
	for i, s := range w {
		if err := r.do(s); !expected(err) && !(r.cool && errors.Is(err, ipam.ErrCoolingDown)) {
			r.t.Fatalf("step %d %+v: %v", i, s, err)
		}
	}
}

func TestCrashAtEveryOperation(t *testing.T) {
	for _, commits := range []bool{false, true} {
		for _, keeper := range keepers {
			t.Run(fmt.Sprintf("commits=%t/keeper=%t", commits, keeper), func(t *testing.T) { crashAtEveryOperation(t, commits, keeper) })
		}
	}
}

func crashAtEveryOperation(t *testing.T, commits, keeper bool) {
	w := crashWorkload(1, 60)
	// Count node 0's store operations in a run without faults.
	clean := newCrashRun(t, storetest.Fault{}, commits, keeper)
	clean.run(w)
	total := clean.faulty.Ops()
	require.Greater(t, total, int64(50))
	r, err := clean.allocs[1].Check(clean.ctx)
	require.NoError(t, err)
	require.True(t, r.Clean(), "the fault-free run is consistent: %v", r.Problems)

	step := int64(1)
	if testing.Short() {
		step = 7
	}
	for _, mode := range []storetest.FaultMode{storetest.FailOnce, storetest.Crash, storetest.CrashAfter, storetest.LostReply} {
		for k := int64(1); k <= total; k += step {
			t.Run(fmt.Sprintf("mode=%s/at=%d", mode, k), func(t *testing.T) {
				run := newCrashRun(t, storetest.Fault{At: k, Mode: mode}, commits, keeper)
				run.run(w)
				run.requireRepairable(fmt.Sprintf("fault %s at %d", mode, k), crashWorkload(2, 30))
			})
		}
	}
}

// TestLostReplyEachOperation loses the reply of every store operation of
// one public call in turn (the write happens; the caller hears it failed)
// and checks that only the states the write order promises are left, and
// that Repair clears them.
func TestLostReplyEachOperation(t *testing.T) {
	type call func(ctx context.Context, a *ipam.Allocator) error
	assign := func(args ipam.AutoAssignArgs) call {
		return func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.AutoAssign(ctx, args)
			return err
		}
	}
	releaseH := func(ctx context.Context, a *ipam.Allocator) error {
		_, err := a.ReleaseByHandle(ctx, "h")
		return err
	}
	cases := []struct {
		name  string
		setup call // on a store with crashPools, without faults
		run   call
		// joined: with a Committer the call's writes are one commit, so a
		// lost reply leaves nothing for Repair (a release by handle of up
		// to seven blocks).
		joined bool
	}{
		{"AutoAssign claiming", nil, assign(ipam.AutoAssignArgs{Num4: 2, Num6: 1, Handle: "h", Node: "n1"}), false},
		{"AutoAssign steady",
			assign(ipam.AutoAssignArgs{Num4: 1, Handle: "first", Node: "n1"}),
			assign(ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"}), true},
		{"AutoAssign across held blocks", func(ctx context.Context, a *ipam.Allocator) error {
			// n1 holds three blocks, empty.
			_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 20, Handle: "setup", Node: "n1"})
			if err == nil {
				_, err = a.ReleaseByHandle(ctx, "setup")
			}
			return err
		}, assign(ipam.AutoAssignArgs{Num4: 20, Handle: "h", Node: "n1"}), false},
		{"AssignIP", nil, func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: netip.MustParseAddr("10.0.0.3"), Handle: "h", Node: "n1"})
			return err
		}, false},
		{"ReleaseByHandle", assign(ipam.AutoAssignArgs{Num4: 2, Num6: 1, Handle: "h", Node: "n1"}), releaseH, true},
		{"ReleaseByHandle one block", assign(ipam.AutoAssignArgs{Num4: 2, Handle: "h", Node: "n1"}), releaseH, true},
		{"ReleaseByHandle across blocks", assign(ipam.AutoAssignArgs{Num4: 20, Handle: "h", Node: "n1"}), releaseH, true},
		{"ReleaseIPs across blocks", assign(ipam.AutoAssignArgs{Num4: 20, Handle: "h", Node: "n1"}), func(ctx context.Context, a *ipam.Allocator) error {
			var rels []ipam.Release
			for i := range 32 { // the whole v4 pool
				rels = append(rels, ipam.Release{Addr: netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})})
			}
			_, err := a.ReleaseIPs(ctx, rels...)
			return err
		}, false},
		{"ReleaseHostAffinities", func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"})
			if err == nil {
				_, err = a.ReleaseByHandle(ctx, "h")
			}
			return err
		}, func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.ReleaseHostAffinities(ctx, "n1", false)
			return err
		}, false},
	}
	for _, c := range cases {
		for _, commits := range []bool{false, true} {
			for _, keeper := range keepers {
				t.Run(fmt.Sprintf("%s/commits=%t/keeper=%t", c.name, commits, keeper), func(t *testing.T) {
					lostReplyEachOperation(t, c.setup, c.run, commits, keeper, commits && c.joined)
				})
			}
		}
	}
}

// lostReplyEachOperation is a case of TestLostReplyEachOperation: with
// clean set, every lost reply must leave a store that checks clean.
func lostReplyEachOperation(t *testing.T, setup, run func(context.Context, *ipam.Allocator) error, commits, keeper, clean bool) {
	newStore := func(t *testing.T) *memstore.Store { return crashStore(t, setup) }
	fault0 := storetest.NewFaultyStore(newStore(t), storetest.Fault{})
	a, err := ipam.New(faultyView(fault0, commits, keeper), ipam.Options{})
	require.NoError(t, err)
	require.NoError(t, run(t.Context(), a))
	total := fault0.Ops()
	require.Positive(t, total)
	for k := int64(1); k <= total; k++ {
		s := newStore(t)
		f := storetest.NewFaultyStore(s, storetest.Fault{At: k, Mode: storetest.LostReply})
		a, err := ipam.New(faultyView(f, commits, keeper), ipam.Options{})
		require.NoError(t, err)
		_ = run(t.Context(), a) // fails or not, depending on k

		checker, err := ipam.New(s, ipam.Options{})
		require.NoError(t, err)
		r, err := checker.Check(t.Context())
		require.NoError(t, err)
		if clean {
			require.True(t, r.Clean(), "reply of operation %d lost: %v", k, r.Problems)
		}
		for _, p := range r.Problems {
			require.Contains(t, []ipam.ProblemKind{ipam.ProblemHandleExcess, ipam.ProblemAffinityStale}, p.Kind,
				"reply of operation %d lost: %v", k, p)
		}
		_, after, err := checker.Repair(t.Context(), ipam.RepairOptions{})
		require.NoError(t, err)
		require.True(t, after.Clean(), "reply of operation %d lost; after repair: %v", k, after.Problems)
	}
}

// TestReleaseReportsOnlyCertainReleases: whichever store operation of
// ReleaseIPs or ReleaseByHandle fails, and whether the failed write took effect or not, every
// address the result calls released is free in the store, and every
// address it calls not allocated is (an address named twice included).
func TestReleaseReportsOnlyCertainReleases(t *testing.T) {
	modes := []storetest.FaultMode{storetest.FailOnce, storetest.Crash, storetest.CrashAfter, storetest.LostReply}
	for _, mode := range modes {
		for at := int64(1); at <= 10; at++ {
			for _, commits := range []bool{false, true} {
				for _, keeper := range keepers {
					releaseReportsOnlyCertainReleases(t, mode, at, commits, keeper)
				}
			}
		}
	}
}

func releaseReportsOnlyCertainReleases(t *testing.T, mode storetest.FaultMode, at int64, commits, keeper bool) {
	t.Run(fmt.Sprintf("%s/at=%d/commits=%t/keeper=%t", mode, at, commits, keeper), func(t *testing.T) {
		e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
		got := e.mustAssign4("node-1", "h1", 2)
		fs := storetest.NewFaultyStore(e.store, storetest.Fault{At: at, Mode: mode})
		a, err := ipam.New(faultyView(fs, commits, keeper), ipam.Options{MaxRetries: 1})
		require.NoError(t, err)
		// The first address twice: its second copy finds it released
		// in the block being staged.
		res, err := a.ReleaseIPs(e.ctx, ipam.Release{Addr: got[0].Addr}, ipam.Release{Addr: got[1].Addr}, ipam.Release{Addr: got[0].Addr})
		if err == nil {
			require.ElementsMatch(t, addrs(got), res.Released)
		}
		for _, addr := range append(res.Released, res.NotAllocated...) {
			_, err := e.a.Owner(e.ctx, addr)
			require.ErrorIs(t, err, ipam.ErrNotAllocated, "%s reported released or free, but is assigned", addr)
		}
	})
	for _, n := range []int{2, 70} { // one block, two blocks
		t.Run(fmt.Sprintf("by-handle/%s/at=%d/commits=%t/keeper=%t/n=%d", mode, at, commits, keeper, n), func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
			got := e.mustAssign4("node-1", "h1", n)
			fs := storetest.NewFaultyStore(e.store, storetest.Fault{At: at, Mode: mode})
			a, err := ipam.New(faultyView(fs, commits, keeper), ipam.Options{MaxRetries: 1})
			require.NoError(t, err)
			released, err := a.ReleaseByHandle(e.ctx, "h1")
			if err == nil {
				require.ElementsMatch(t, addrs(got), released)
			}
			for _, addr := range released {
				_, err := e.a.Owner(e.ctx, addr)
				require.ErrorIs(t, err, ipam.ErrNotAllocated, "%s reported released, but is assigned", addr)
			}
		})
	}
}

// TestLostReplyOfAssignmentStands: the reply of AutoAssign's block write is
// lost, but the write happened. The allocator reads the block, sees its own
// allocation (the handle, at the sequence number the write gave it), and
// the request succeeds, with nothing left for Repair. Before, the request
// failed and left the address assigned under a handle its caller had
// given up on.
func TestLostReplyOfAssignmentStands(t *testing.T) {
	for _, c := range []struct {
		name     string
		setup    bool   // n1 holds a block already: the steady state
		write    string // the block write whose reply is lost
		explicit bool   // AssignIP of 10.0.0.9, in n1's block
	}{
		{"the claim's block", false, "create", false},
		{"a new block's first address", false, "update", false},
		{"steady", true, "update", false},
		{"AssignIP", true, "update", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			// run makes the request on a fresh store, losing the reply of
			// operation k (0: none), and returns the store, the number of
			// the first block write, and the request's result.
			run := func(k int64) (*memstore.Store, int64, ipam.AutoAssignResult, error) {
				s := memstore.New()
				setup, err := ipam.New(s, ipam.Options{})
				require.NoError(t, err)
				for _, p := range crashPools {
					require.NoError(t, setup.CreatePool(t.Context(), p))
				}
				if c.setup {
					_, err := setup.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: 1, Handle: "first", Node: "n1"})
					require.NoError(t, err)
				}
				var f *storetest.FaultyStore
				var at int64
				hs := &hookStore{Store: s, hook: func(op string, kind ipam.Kind, key string) {
					if kind == ipam.KindBlock && op == c.write && at == 0 {
						at = f.Ops()
					}
				}}
				f = storetest.NewFaultyStore(hs, storetest.Fault{At: k, Mode: storetest.LostReply})
				a, err := ipam.New(f, ipam.Options{})
				require.NoError(t, err)
				if c.explicit {
					x, err := a.AssignIP(t.Context(), ipam.AssignIPArgs{Addr: netip.MustParseAddr("10.0.0.9"), Handle: "h", Node: "n1"})
					return s, at, ipam.AutoAssignResult{IPv4: []ipam.Assigned{x}}, err
				}
				res, err := a.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"})
				return s, at, res, err
			}
			_, at, _, err := run(0)
			require.NoError(t, err)
			require.Positive(t, at)

			s, _, res, err := run(at)
			require.NoError(t, err, "the write happened: the request stands")
			require.Len(t, res.IPv4, 1)
			got, err := checkedClean(t, s).IPsByHandle(t.Context(), "h")
			require.NoError(t, err)
			require.Equal(t, []netip.Addr{res.IPv4[0].Addr}, got)
		})
	}
}

// crashStore returns a store with crashPools, set up further by setup
// (nil: nothing more), for a case of a fault-at-every-operation test.
func crashStore(t *testing.T, setup func(context.Context, *ipam.Allocator) error) *memstore.Store {
	s := memstore.New()
	a, err := ipam.New(s, ipam.Options{})
	require.NoError(t, err)
	for _, p := range crashPools {
		require.NoError(t, a.CreatePool(t.Context(), p))
	}
	if setup != nil {
		require.NoError(t, setup(t.Context(), a))
	}
	return s
}
