package ipam_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// storeRecords lists every record of s, with its revision, by kind.
func storeRecords(t require.TestingT, ctx context.Context, s ipam.Store) map[ipam.Kind][]ipam.Record {
	out := map[ipam.Kind][]ipam.Record{}
	for _, k := range ipam.Kinds {
		recs, err := s.List(ctx, k, ipam.KeyRange{})
		require.NoError(t, err)
		out[k] = recs
	}
	return out
}

// dryAndReal returns a collector on a and a dry-run one with the same
// options on other, an allocator on the same store, as a second process
// would run it.
func dryAndReal(t require.TestingT, a, other *ipam.Allocator, live ipam.Liveness, opts ipam.CollectorOptions) (dry, real *ipam.Collector) {
	real, err := ipam.NewCollector(a, live, opts)
	require.NoError(t, err)
	opts.DryRun = true
	dry, err = ipam.NewCollector(other, live, opts)
	require.NoError(t, err)
	return dry, real
}

// requireDryMatches runs a pass of dry and then one of real, both on
// store s, and fails unless the dry one wrote nothing and reported what
// the real one then did. It returns the real pass's result.
func requireDryMatches(t require.TestingT, ctx context.Context, s ipam.Store, dry, real *ipam.Collector, msgAndArgs ...any) ipam.CollectResult {
	before := storeRecords(t, ctx, s)
	report, err := dry.Collect(ctx)
	require.NoError(t, err)
	require.True(t, report.DryRun)
	require.Equal(t, before, storeRecords(t, ctx, s), "a dry run writes nothing")
	res, err := real.Collect(ctx)
	require.NoError(t, err)
	require.False(t, res.DryRun)
	report.DryRun = false
	require.Equal(t, res, report, msgAndArgs...)
	return res
}

// leakyCluster builds a store with something for every part of a
// collector pass to do, under a grace period of 10 minutes:
//   - node-1 holds "live" (alive), "dead" (two addresses, dead), an empty
//     block besides its used one, and a record "ghost" counting an address
//     no block holds;
//   - node-2, which the node oracle calls gone, holds "gone-pod" (dead)
//     and an empty block;
//   - node-3's block lost its affinity while "orphan" (dead) held an
//     address in it;
//   - node-4's block lost its affinity after its address was released, so
//     with a cooldown it is kept until the cooldown is over.
func leakyCluster(t *testing.T, cooldown time.Duration) (*env, *owners, *nodeSet) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	e.cooldown(cooldown)
	e.mustAssign4("node-1", "live", 1)
	e.mustAssign4("node-1", "dead", 2)
	_, err := e.a.ClaimAffinity(e.ctx, "node-1", mustPrefix("10.0.0.224/28"))
	require.NoError(t, err)
	ghostIn := e.affine("node-1")[0]
	_, err = e.store.Create(e.ctx, ipam.KindHandle, "ghost", ipam.EncodeHandle(map[netip.Prefix]int{ghostIn: 1}))
	require.NoError(t, err)

	e.mustAssign4("node-2", "gone-pod", 1)
	_, err = e.a.ClaimAffinity(e.ctx, "node-2", mustPrefix("10.0.0.240/28"))
	require.NoError(t, err)

	e.mustAssign4("node-3", "orphan", 1)
	_, err = e.a.ReleaseHostAffinities(e.ctx, "node-3", false)
	require.NoError(t, err)

	e.mustAssign4("node-4", "brief", 1)
	_, err = e.a.ReleaseByHandle(e.ctx, "brief")
	require.NoError(t, err)
	_, err = e.a.ReleaseHostAffinities(e.ctx, "node-4", false)
	require.NoError(t, err)

	return e, &owners{alive: map[string]bool{"live": true}}, newNodeSet("node-1")
}

// TestCollectorDryRunReportsWhatAPassDoes: at every step a dry-run
// collector reports exactly what a real one, run right after it on the
// same store, then does (released allocations, blocks released, deleted
// and taken from a gone node, handle records rewritten, the suspects and
// gone nodes left), and writes nothing at all.
func TestCollectorDryRunReportsWhatAPassDoes(t *testing.T) {
	for _, cooldown := range []time.Duration{0, 5 * time.Minute} {
		t.Run("cooldown="+cooldown.String(), func(t *testing.T) {
			e, o, nodes := leakyCluster(t, cooldown)
			dry, real := dryAndReal(t, e.a, e.allocator(), o.live, ipam.CollectorOptions{Grace: 10 * time.Minute, Nodes: nodes.live})

			var did ipam.CollectResult // everything the real passes did
			for _, step := range []time.Duration{0, 10 * time.Minute, time.Minute, 5 * time.Minute} {
				e.clock.Advance(step)
				res := requireDryMatches(t, e.ctx, e.store, dry, real, "at +%v", step)
				did.Released = append(did.Released, res.Released...)
				did.ReleasedBlocks = append(did.ReleasedBlocks, res.ReleasedBlocks...)
				did.GoneNodeBlocks = append(did.GoneNodeBlocks, res.GoneNodeBlocks...)
				did.DeletedBlocks = append(did.DeletedBlocks, res.DeletedBlocks...)
				did.RepairedHandles = append(did.RepairedHandles, res.RepairedHandles...)
			}

			// The scenario did exercise every part of a pass.
			handles := map[string]int{}
			for _, x := range did.Released {
				handles[x.Handle]++
			}
			require.Equal(t, map[string]int{"dead": 2, "gone-pod": 1, "orphan": 1}, handles)
			require.Equal(t, []netip.Prefix{mustPrefix("10.0.0.224/28")}, did.ReleasedBlocks)
			require.Len(t, did.GoneNodeBlocks, 2)
			require.Equal(t, []string{"ghost"}, did.RepairedHandles)
			// node-3's block goes with its last address without a
			// cooldown, and once it has cooled with one. node-4's went at
			// once without a cooldown; with one it is deleted once it has
			// cooled, and so is node-2's block that held an address.
			if cooldown == 0 {
				require.Len(t, did.DeletedBlocks, 1)
			} else {
				require.Len(t, did.DeletedBlocks, 3)
			}
			e.requireConsistent()
		})
	}
}

// TestCollectorReportsSuspects: a pass lists the suspects it did not
// release, in address order, with when each was first seen dead, and the
// gone nodes with the blocks they hold, so that an operator can see what
// a collector will do and when.
func TestCollectorReportsSuspects(t *testing.T) {
	e, o, nodes := leakyCluster(t, 0)
	c := newNodeCollector(t, e, o, nodes, 10*time.Minute)
	var dead []netip.Addr
	for _, h := range []string{"dead", "gone-pod", "orphan"} {
		got, err := e.a.IPsByHandle(e.ctx, h)
		require.NoError(t, err)
		dead = append(dead, got...)
	}
	slices.SortFunc(dead, netip.Addr.Compare)
	start := e.clock.Now()
	res := collect(t, e, c)
	var got []netip.Addr
	for _, s := range res.Suspects {
		require.Equal(t, start, s.Since)
		require.Equal(t, mustOwner(t, e, s.Addr), s.Allocation)
		got = append(got, s.Addr)
	}
	require.Equal(t, dead, got, "every dead allocation, in address order; live's not")
	gone := e.affine("node-2")
	require.Len(t, gone, 2)
	require.Equal(t, []ipam.GoneNode{{Name: "node-2", Since: start, Blocks: gone}}, res.GoneNodes)

	// A second address of a dead handle is seen later: the handle waits
	// for it, and the report says why.
	e.clock.Advance(5 * time.Minute)
	late := e.mustAssign4("node-1", "dead", 1)[0]
	res = collect(t, e, c)
	require.Len(t, res.Suspects, 5)
	for _, s := range res.Suspects {
		want := start
		if s.Addr == late.Addr {
			want = e.clock.Now()
		}
		require.Equal(t, want, s.Since, "%s", s.Addr)
		require.Equal(t, s.Seq, mustOwner(t, e, s.Addr).Seq)
	}

	e.clock.Advance(5 * time.Minute)
	res = collect(t, e, c)
	require.ElementsMatch(t, []string{"gone-pod", "orphan"}, handlesOf(res.Released))
	require.Len(t, res.Suspects, 3, "dead waits for its late address")
	require.Empty(t, res.GoneNodes, "node-2's blocks are released")
	for _, s := range res.Suspects {
		require.Equal(t, "dead", s.Handle)
	}
}

func mustOwner(t *testing.T, e *env, addr netip.Addr) ipam.Allocation {
	t.Helper()
	x, err := e.a.Owner(e.ctx, addr)
	require.NoError(t, err)
	return x
}

func handlesOf(xs []ipam.Allocation) []string {
	var out []string
	for _, x := range xs {
		out = append(out, x.Handle)
	}
	return out
}

// TestCollectorDryRunThenReleaseByHand: a dry-run collector goes on
// reporting what is ripe, pass after pass, and releases nothing; an
// operator saving its report as JSON and releasing it with
// Allocation.Release frees what is still as reported and leaves an
// address reassigned since to its new owner.
func TestCollectorDryRunThenReleaseByHand(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	leaked := e.mustAssign4("node-1", "dead-a", 2)
	e.mustAssign4("node-1", "dead-b", 1)
	o := &owners{alive: map[string]bool{}}
	c, err := ipam.NewCollector(e.a, o.live, ipam.CollectorOptions{Grace: time.Minute, DryRun: true})
	require.NoError(t, err)
	collect(t, e, c)
	var report ipam.CollectResult
	for range 3 {
		e.clock.Advance(time.Minute)
		report = collect(t, e, c)
		require.ElementsMatch(t, []string{"dead-a", "dead-a", "dead-b"}, handlesOf(report.Released))
		require.Empty(t, report.Suspects, "a dry run reports what it would release, not as suspects")
	}
	got, err := e.a.IPsByHandle(e.ctx, "dead-a")
	require.NoError(t, err)
	require.Equal(t, addrs(leaked), got, "nothing released")

	// Meanwhile dead-a's first address is released and handed to a new pod.
	_, err = e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: leaked[0].Addr})
	require.NoError(t, err)
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: leaked[0].Addr, Handle: "new-pod", Node: "node-1"})
	require.NoError(t, err)

	// The report goes through a file, as JSON, to be read before release.
	saved, err := json.Marshal(report)
	require.NoError(t, err)
	var read ipam.CollectResult
	require.NoError(t, json.Unmarshal(saved, &read))
	require.Equal(t, report, read)
	require.Contains(t, string(saved), `"dryRun":true`)
	require.Contains(t, string(saved), `"handle":"dead-b"`)

	var rels []ipam.Release
	for _, x := range read.Released {
		rels = append(rels, x.Release())
	}
	res, err := e.a.ReleaseIPs(e.ctx, rels...)
	require.ErrorIs(t, err, ipam.ErrHandleMismatch)
	require.Len(t, res.Released, 2)
	require.NotContains(t, res.Released, leaked[0].Addr)
	require.Equal(t, "new-pod", mustOwner(t, e, leaked[0].Addr).Handle, "the new owner keeps it")
	e.requireConsistent()
}
