package ipam_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
)

// TestReleaseByHandleAfterOthersWrote: on a store without BlockKeeper an
// allocator releases a handle by the record it wrote itself (see
// handleMemos), without reading it. When
// another allocator, or a Repair, changed the record since, the release
// must still release what the handle holds when it is called, as one
// that reads the record would: every address, in every block, and leave
// a store that checks clean.
func TestReleaseByHandleAfterOthersWrote(t *testing.T) {
	dual := []pool.Pool{v4pool("p4", "10.0.0.0/16", 26), {Name: "p6", CIDR: netip.MustParsePrefix("fd00::/112"), BlockSize: 122}}
	for _, c := range []struct {
		name string
		// first is a's assignment under "h"; then runs, with the other
		// allocator, b, before a releases "h". want is how many addresses
		// A's release returns (0: ErrHandleNotFound).
		first ipam.AutoAssignArgs
		then  func(e *env, a, b *ipam.Allocator)
		want  int
	}{
		{"another block", ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"}, func(e *env, _, b *ipam.Allocator) {
			_, err := b.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n2"})
			require.NoError(t, err)
		}, 2},
		{"the same block", ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"}, func(e *env, _, b *ipam.Allocator) {
			_, err := b.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"})
			require.NoError(t, err)
		}, 2},
		{"the same block, then cached again", ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"}, func(e *env, a, b *ipam.Allocator) {
			_, err := b.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"})
			require.NoError(t, err)
			// a writes the block again for another handle: it then caches
			// the block with both of h's addresses, and its memo still
			// counts one.
			_, err = a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "other", Node: "n1"})
			require.NoError(t, err)
			_, err = a.ReleaseByHandle(e.ctx, "other")
			require.NoError(t, err)
		}, 2},
		{"released", ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"}, func(e *env, _, b *ipam.Allocator) {
			_, err := b.ReleaseByHandle(e.ctx, "h")
			require.NoError(t, err)
		}, 0},
		{"released and assigned again", ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"}, func(e *env, _, b *ipam.Allocator) {
			_, err := b.ReleaseByHandle(e.ctx, "h")
			require.NoError(t, err)
			_, err = b.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"})
			require.NoError(t, err)
		}, 1},
		{"an address released by IP", ipam.AutoAssignArgs{Num4: 2, Handle: "h", Node: "n1"}, func(e *env, _, b *ipam.Allocator) {
			ips, err := b.IPsByHandle(e.ctx, "h")
			require.NoError(t, err)
			_, err = b.ReleaseIPs(e.ctx, ipam.Release{Addr: ips[0], Handle: "h"})
			require.NoError(t, err)
		}, 1},
		{"dual-stack, a third block", ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "n1"}, func(e *env, _, b *ipam.Allocator) {
			_, err := b.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n2"})
			require.NoError(t, err)
		}, 3},
		{"dual-stack, released", ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "n1"}, func(e *env, _, b *ipam.Allocator) {
			_, err := b.ReleaseByHandle(e.ctx, "h")
			require.NoError(t, err)
		}, 0},
		{"a count repaired", ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"}, func(e *env, _, b *ipam.Allocator) {
			// A count too high, as a crash leaves it, removed by Repair:
			// the record changes, the blocks do not.
			before, err := e.store.Get(e.ctx, ipam.KindHandle, "h")
			require.NoError(t, err)
			e.ghostCount("h", mustPrefix("10.0.1.0/26"))
			_, _, err = b.Repair(e.ctx, ipam.RepairOptions{})
			require.NoError(t, err)
			after, err := e.store.Get(e.ctx, ipam.KindHandle, "h")
			require.NoError(t, err)
			require.Equal(t, before.Value, after.Value)
			require.NotEqual(t, before.Revision, after.Revision)
		}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, dual...)
			a, b := e.remote(), e.remote()
			_, err := a.AutoAssign(e.ctx, c.first)
			require.NoError(t, err)
			c.then(e, a, b)
			var want []netip.Addr
			if c.want > 0 {
				want = e.ips("h")
				require.Len(t, want, c.want)
			}
			got, err := a.ReleaseByHandle(e.ctx, "h")
			if c.want == 0 {
				require.ErrorIs(t, err, ipam.ErrHandleNotFound)
			} else {
				require.NoError(t, err)
				require.ElementsMatch(t, want, got)
			}
			_, err = e.store.Get(e.ctx, ipam.KindHandle, "h")
			require.ErrorIs(t, err, ipam.ErrNotFound, "the handle's record is gone")
			e.requireConsistent()
			e.requireEmptyHandles()
		})
	}
}

// remote returns an allocator on e's store as on a store in another
// process: with Generations and Committer, without BlockKeeper.
func (e *env) remote() *ipam.Allocator {
	e.t.Helper()
	return e.remoteOn(e.store)
}

// remoteOn returns an allocator on s, which offers Generations and
// Committer, hiding any BlockKeeper.
func (e *env) remoteOn(s ipam.Store) *ipam.Allocator {
	e.t.Helper()
	a, err := ipam.New(bytesCommits{s, s.(ipam.Generations), s.(ipam.Committer)}, ipam.Options{Now: e.clock.Now})
	require.NoError(e.t, err)
	return a
}

// ips returns the addresses handle holds, read fresh, in address order.
func (e *env) ips(handle string) []netip.Addr {
	e.t.Helper()
	got, err := e.a.IPsByHandle(e.ctx, handle)
	require.NoError(e.t, err)
	slices.SortFunc(got, netip.Addr.Compare)
	return got
}

// requireEmptyHandles requires that the store hold no handle record.
func (e *env) requireEmptyHandles() {
	e.t.Helper()
	recs, err := e.store.List(e.ctx, ipam.KindHandle, ipam.KeyRange{})
	require.NoError(e.t, err)
	require.Empty(e.t, recs)
}

// TestReleaseByHandleMemoRoundTrips: on a store without BlockKeeper the
// allocator that wrote a handle's record releases it in one round trip,
// and again after it assigned under the handle once more; a memo another
// writer outdated costs a refused commit and a read of the record. On
// memstore, which keeps blocks, the allocator keeps no memo.
func TestReleaseByHandleMemoRoundTrips(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/16", 26))
	counting := storetest.NewCountingStore(e.store)
	a := e.remoteOn(counting)
	b := e.allocator()
	assign := func(x *ipam.Allocator, handle string) {
		t.Helper()
		_, err := x.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: handle, Node: "n1"})
		require.NoError(t, err)
	}
	release := func(handle string, want int) storetest.Counts {
		t.Helper()
		before, _ := storetest.CountsOf(counting)
		got, err := a.ReleaseByHandle(e.ctx, handle)
		require.NoError(t, err)
		require.Len(t, got, want)
		after, _ := storetest.CountsOf(counting)
		return after.Sub(before)
	}
	assign(a, "warm") // claims the block, fills the caches
	assign(a, "h")
	assign(a, "h") // a second write of the record: the memo follows it
	ops := release("h", 2)
	require.EqualValues(t, 1, ops.Total(), "%s", ops)

	assign(a, "h")
	assign(b, "h") // outdates a's memo
	ops = release("h", 2)
	require.EqualValues(t, 1, ops.Of(storetest.OpGet, ipam.KindHandle), "%s", ops)
	// The commit on the memo is refused; so is the next, on the block as
	// a cached it (b wrote it too); the third, after a read of each, is
	// made.
	require.EqualValues(t, 1, ops.Of(storetest.OpGet, ipam.KindBlock), "%s", ops)
	require.EqualValues(t, 3, ops.Commits(), "%s", ops)

	// With BlockKeeper: a read and a commit.
	a, err := ipam.New(counting, ipam.Options{})
	require.NoError(t, err)
	assign(a, "h")
	ops = release("h", 1)
	require.EqualValues(t, 1, ops.Of(storetest.OpGet, ipam.KindHandle), "%s", ops)
	require.EqualValues(t, 2, ops.Total(), "%s", ops)
	e.requireConsistent()
}

// TestHandleMemoBounded: an allocator remembers at most a bounded number
// of handle records; releases of handles it no longer remembers read
// their records, and every release is right.
func TestHandleMemoBounded(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/8", 24))
	e.a = e.remote()
	const n = 20000 // more than the memo holds
	for i := range n {
		_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: fmt.Sprint("pod-", i), Node: fmt.Sprint("n", i%64)})
		require.NoError(t, err)
	}
	for i := range n {
		got, err := e.a.ReleaseByHandle(e.ctx, fmt.Sprint("pod-", i))
		require.NoError(t, err, "pod-%d", i)
		require.Len(t, got, 1)
	}
	e.requireConsistent()
	e.requireEmptyHandles()
}

// TestReleaseByHandleMemoFaults: a release by handle that goes by the
// allocator's memo meets a fault at each of its store operations in turn
// (a failure, a lost reply). It leaves nothing for Repair (the release is
// one commit), and a second call releases whatever the first did not, by
// the memo or after a read; the handle is then gone and its addresses
// free.
func TestReleaseByHandleMemoFaults(t *testing.T) {
	pools := []pool.Pool{v4pool("p4", "10.0.0.0/24", 28), {Name: "p6", CIDR: netip.MustParsePrefix("fd00::/120"), BlockSize: 124}}
	for _, c := range []struct {
		name string
		args ipam.AutoAssignArgs
		// stale: another allocator assigns under the handle before the
		// release, so that the commit on the memo is refused and the
		// release starts over from a read.
		stale bool
	}{
		{"one block", ipam.AutoAssignArgs{Num4: 2, Handle: "h", Node: "n1"}, false},
		{"two blocks", ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "n1"}, false},
		{"three blocks", ipam.AutoAssignArgs{Num4: 20, Num6: 1, Handle: "h", Node: "n1"}, false},
		{"one block, stale", ipam.AutoAssignArgs{Num4: 2, Handle: "h", Node: "n1"}, true},
		{"two blocks, stale", ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "n1"}, true},
	} {
		outdate := func(e *env) {
			if c.stale {
				_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n2"})
				require.NoError(e.t, err)
			}
		}
		run := func(t *testing.T, f storetest.Fault) (ops int64) {
			e := newEnv(t, pools...)
			faulty := storetest.NewFaultyStore(e.store, storetest.Fault{})
			if f.At > 0 {
				faulty = storetest.NewFaultyStore(e.store, f)
			}
			a := e.remoteOn(faulty.WithCommits())
			_, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "warm", Node: "n1"})
			require.NoError(t, err)
			_, err = a.AutoAssign(e.ctx, c.args)
			require.NoError(t, err)
			outdate(e)
			before := faulty.Ops()
			want := e.ips("h")
			got, err := a.ReleaseByHandle(e.ctx, "h")
			if f.At == 0 {
				require.NoError(t, err)
				require.ElementsMatch(t, want, got)
				return faulty.Ops() - before
			}
			rep, cerr := e.a.Check(e.ctx)
			require.NoError(t, cerr)
			require.True(t, rep.Clean(), "%v", rep.Problems)
			if err != nil {
				more, err := a.ReleaseByHandle(e.ctx, "h")
				if !errors.Is(err, ipam.ErrHandleNotFound) {
					require.NoError(t, err)
				}
				got = append(got, more...)
				require.Subset(t, want, got)
			} else {
				require.ElementsMatch(t, want, got)
			}
			_, _, err = e.a.Repair(e.ctx, ipam.RepairOptions{})
			require.NoError(t, err)
			_, err = e.a.IPsByHandle(e.ctx, "h")
			require.ErrorIs(t, err, ipam.ErrHandleNotFound)
			e.requireConsistent()
			return 0
		}
		t.Run(c.name, func(t *testing.T) {
			// The store operations of the first assignment and of the
			// pair's, then those of the release.
			e := newEnv(t, pools...)
			counting := storetest.NewFaultyStore(e.store, storetest.Fault{})
			a := e.remoteOn(counting.WithCommits())
			_, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "warm", Node: "n1"})
			require.NoError(t, err)
			_, err = a.AutoAssign(e.ctx, c.args)
			require.NoError(t, err)
			outdate(e)
			start := counting.Ops()
			n := run(t, storetest.Fault{})
			require.Positive(t, n)
			for _, mode := range []storetest.FaultMode{storetest.FailOnce, storetest.LostReply} {
				for k := start + 1; k <= start+n; k++ {
					t.Run(fmt.Sprintf("%s/at=%d", mode, k-start), func(t *testing.T) {
						run(t, storetest.Fault{At: k, Mode: mode})
					})
				}
			}
		})
	}
}
