package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
)

// commitHookStore is a memstore that runs hook before each commit, with
// the writes it is about to make.
type commitHookStore struct {
	*memstore.Store
	hook func(writes []ipam.Write)
}

func (s *commitHookStore) Commit(ctx context.Context, writes []ipam.Write, revs []ipam.Revision) error {
	s.hook(writes)
	return s.Store.Commit(ctx, writes, revs)
}

// firstCommitHook is a commitHookStore on ms that calls f before its
// first commit only.
func firstCommitHook(ms *memstore.Store, f func(writes []ipam.Write)) *commitHookStore {
	commits := 0
	return &commitHookStore{Store: ms, hook: func(writes []ipam.Write) {
		if commits++; commits == 1 {
			f(writes)
		}
	}}
}

// TestLostReplyOfCommitStands: the reply of the commit that writes a
// steady-state assignment's handle and block is lost, but the commit
// happened. As for a block write alone, the allocator reads the block,
// finds its own allocation, and the request succeeds, with nothing left
// for Repair.
func TestLostReplyOfCommitStands(t *testing.T) {
	for _, explicit := range []bool{false, true} {
		t.Run(fmt.Sprintf("AssignIP=%t", explicit), func(t *testing.T) {
			// run makes the request on a fresh store, losing the reply of
			// operation k (0: none), and returns the store, the number of
			// the commit, and the request's result.
			run := func(k int64) (*memstore.Store, int64, []netip.Addr, error) {
				s := crashStore(t, func(ctx context.Context, a *ipam.Allocator) error {
					_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "first", Node: "n1"})
					return err
				})
				var f *storetest.FaultyStore
				var at int64
				hs := &commitHookStore{Store: s, hook: func(writes []ipam.Write) {
					require.Len(t, writes, 2, "the handle and the block in one commit")
					if at == 0 {
						at = f.Ops()
					}
				}}
				f = storetest.NewFaultyStore(hs, storetest.Fault{At: k, Mode: storetest.LostReply})
				a, err := ipam.New(f.WithCommits(), ipam.Options{})
				require.NoError(t, err)
				if explicit {
					x, err := a.AssignIP(t.Context(), ipam.AssignIPArgs{Addr: netip.MustParseAddr("10.0.0.3"), Handle: "h", Node: "n1"})
					return s, at, []netip.Addr{x.Addr}, err
				}
				res, err := a.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"})
				return s, at, addrs(res.IPv4), err
			}
			_, at, _, err := run(0)
			require.NoError(t, err)
			require.Positive(t, at, "the request made a commit")

			s, _, got, err := run(at)
			require.NoError(t, err, "the commit happened: the request stands")
			require.Len(t, got, 1)
			held, err := checkedClean(t, s).IPsByHandle(t.Context(), "h")
			require.NoError(t, err)
			require.Equal(t, got, held)
		})
	}
}

// TestRefusedCommits has another allocator change the handle record or
// the block just before a commit of an assignment or a release by handle,
// so that the store refuses the commit at one write or the other. The
// request must retry and end as if nothing had come between, and the
// store must check clean.
func TestRefusedCommits(t *testing.T) {
	type interference struct {
		name string
		// do runs on another allocator just before the first commit.
		do func(ctx context.Context, a *ipam.Allocator) error
	}
	sameHandle := interference{"the handle's record", func(ctx context.Context, a *ipam.Allocator) error {
		// Another request of the same handle: its record changes.
		_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n2"})
		return err
	}}
	sameBlock := interference{"the block", func(ctx context.Context, a *ipam.Allocator) error {
		_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "other", Node: "n1"})
		return err
	}}
	for _, op := range []string{"assign", "release"} {
		for _, in := range []interference{sameHandle, sameBlock} {
			t.Run(op+"/"+in.name, func(t *testing.T) {
				s := memstore.New()
				setup, err := ipam.New(s, ipam.Options{})
				require.NoError(t, err)
				for _, p := range crashPools {
					require.NoError(t, setup.CreatePool(t.Context(), p))
				}
				for _, node := range []string{"n1", "n2"} {
					_, err = setup.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: 1, Handle: "first-" + node, Node: node})
					require.NoError(t, err)
				}
				if op == "release" {
					_, err = setup.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"})
					require.NoError(t, err)
				}
				other, err := ipam.New(s, ipam.Options{})
				require.NoError(t, err)
				var commits int
				hs := &commitHookStore{Store: s}
				hs.hook = func([]ipam.Write) {
					commits++
					if commits == 1 {
						require.NoError(t, in.do(t.Context(), other))
					}
				}
				a, err := ipam.New(hs, ipam.Options{})
				require.NoError(t, err)
				switch op {
				case "assign":
					res, err := a.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"})
					require.NoError(t, err)
					require.Len(t, res.IPv4, 1)
				case "release":
					got, err := a.ReleaseByHandle(t.Context(), "h")
					require.NoError(t, err)
					// The interfering request of the same handle assigned
					// its address before this release read the record: both
					// are released, or the first only, never an error.
					require.NotEmpty(t, got)
				}
				require.Greater(t, commits, 1, "the first commit was refused, and the request committed again")
				held, err := checkedClean(t, s).IPsByHandle(t.Context(), "h")
				switch {
				case op == "assign" && in.name == "the handle's record":
					require.NoError(t, err)
					require.Len(t, held, 2, "this request's address and the other's")
				case op == "assign":
					require.NoError(t, err)
					require.Len(t, held, 1)
				case in.name == "the handle's record":
					require.NoError(t, err, "the other request assigned after the read: its address stays")
					require.Len(t, held, 1)
				default:
					require.ErrorIs(t, err, ipam.ErrHandleNotFound)
				}
			})
		}
	}
}

// checkedClean returns an allocator on s, having required that s checks
// clean.
func checkedClean(t *testing.T, s ipam.Store) *ipam.Allocator {
	t.Helper()
	checker, err := ipam.New(s, ipam.Options{})
	require.NoError(t, err)
	r, err := checker.Check(t.Context())
	require.NoError(t, err)
	require.True(t, r.Clean(), "%v", r.Problems)
	return checker
}

func TestWriteStringAndCommitError(t *testing.T) {
	for _, c := range []struct {
		w    ipam.Write
		want string
	}{
		{ipam.Write{Kind: ipam.KindHandle, Key: "h", Value: []byte("v")}, `create handle "h"`},
		{ipam.Write{Kind: ipam.KindBlock, Key: "v4:0a000000/26", Rev: 7, Block: new(block.Block)}, `update block "v4:0a000000/26" at 7 (block)`},
		{ipam.Write{Kind: ipam.KindHandle, Key: "h", Rev: 9, Delete: true}, `delete handle "h" at 9`},
	} {
		require.Equal(t, c.want, c.w.String())
	}
	err := fmt.Errorf("store: %w", &ipam.CommitError{Index: 1, Err: fmt.Errorf("update block: %w", ipam.ErrConflict)})
	require.ErrorIs(t, err, ipam.ErrConflict)
	var ce *ipam.CommitError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, 1, ce.Index)
	require.Equal(t, "store: commit refused at write 1: update block: revision conflict", err.Error())
}

// TestDualStackRoundTrips: a dual-stack pod's handle holds an address in
// a block of each family. With a Committer its assignment is a commit per
// family, and its release one read and one commit of both blocks and the
// handle record; without it each block and each change of the record is
// a write of its own.
func TestDualStackRoundTrips(t *testing.T) {
	for _, c := range []struct {
		commits bool
		trips   [2]int // per AutoAssign, per ReleaseByHandle
	}{{true, [2]int{2, 2}}, {false, [2]int{4, 4}}} {
		t.Run(fmt.Sprintf("commits=%t", c.commits), func(t *testing.T) {
			e := newEnv(t, v4pool("p4", "10.0.0.0/16", 26), pool.Pool{Name: "p6", CIDR: netip.MustParsePrefix("fd00::/112"), BlockSize: 122})
			var s ipam.Store = e.store
			if !c.commits {
				s = withoutCommits{Store: e.store}
			}
			counting := storetest.NewCountingStore(s)
			a, err := ipam.New(counting, ipam.Options{})
			require.NoError(t, err)
			for i := range 2 { // claim the blocks, fill the caches
				_, err = a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: fmt.Sprint("warm", i), Node: "n1"})
				require.NoError(t, err)
			}
			const n = 10
			before, _ := storetest.CountsOf(counting)
			for i := range n {
				_, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: fmt.Sprint("pod", i), Node: "n1"})
				require.NoError(t, err)
			}
			mid, _ := storetest.CountsOf(counting)
			for i := range n {
				got, err := a.ReleaseByHandle(e.ctx, fmt.Sprint("pod", i))
				require.NoError(t, err)
				require.Len(t, got, 2)
			}
			after, _ := storetest.CountsOf(counting)
			assigns, releases := mid.Sub(before), after.Sub(mid)
			t.Logf("%d dual-stack AutoAssigns: %s; their releases: %s", n, assigns, releases)
			require.EqualValues(t, c.trips[0]*n, assigns.Total(), "%s", assigns)
			require.EqualValues(t, c.trips[1]*n, releases.Total(), "%s", releases)
			e.requireConsistent()
		})
	}
}

// TestConcurrentDualStackReleases: goroutines assign dual-stack pairs and
// release them by handle at once, on one allocator and on several, so
// that releases that lock both blocks of a handle for one commit run
// beside assignments and releases that lock one block at a time. Nothing
// may deadlock, fail, or be left inconsistent.
func TestConcurrentDualStackReleases(t *testing.T) {
	for _, shared := range []bool{true, false} {
		t.Run(fmt.Sprintf("shared=%t", shared), func(t *testing.T) {
			e := newEnv(t, v4pool("p4", "10.0.0.0/24", 28), pool.Pool{Name: "p6", CIDR: netip.MustParsePrefix("fd00::/120"), BlockSize: 124})
			const workers, rounds = 8, 150
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				a := e.a
				if !shared {
					var err error
					a, err = ipam.New(e.store, ipam.Options{})
					require.NoError(t, err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					node := fmt.Sprint("n", w%2) // two workers' pods share a block
					for r := range rounds {
						h := fmt.Sprintf("w%d-r%d", w, r)
						res, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: h, Node: node})
						if err != nil {
							errs <- fmt.Errorf("assign %s: %w", h, err)
							return
						}
						got, err := a.ReleaseByHandle(e.ctx, h)
						if err != nil || len(got) != 2 {
							errs <- fmt.Errorf("release %s of %v: %v, %w", h, res, got, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			e.requireConsistent()
			require.Zero(t, e.store.Len(ipam.KindHandle))
		})
	}
}

// TestReleaseByHandleOfMissingBlock: a handle's record counts addresses
// in a block that does not exist (what a crash between a count's raise
// and its block's creation leaves, before Repair), alone or beside a
// block that does. ReleaseByHandle releases what there is, says
// ErrHandleNotFound when there is nothing, and leaves the count for
// Repair; with or without commits.
func TestReleaseByHandleOfMissingBlock(t *testing.T) {
	for _, commits := range []bool{false, true} {
		t.Run(fmt.Sprintf("commits=%t", commits), func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
			var s ipam.Store = e.store
			if !commits {
				s = withoutCommits{Store: e.store}
			}
			a, err := ipam.New(s, ipam.Options{})
			require.NoError(t, err)
			ghost := mustPrefix("10.0.0.128/28")

			e.mustAssign4("n1", "both", 1)
			e.ghostCount("both", ghost)
			got, err := a.ReleaseByHandle(e.ctx, "both")
			require.NoError(t, err)
			require.Len(t, got, 1, "the address of the block that exists")

			// The record counts the missing block alone.
			e.mustAssign4("n1", "ghost", 1)
			e.ghostCount("ghost", ghost)
			_, err = a.ReleaseByHandle(e.ctx, "ghost")
			require.NoError(t, err)
			_, err = a.ReleaseByHandle(e.ctx, "ghost")
			require.ErrorIs(t, err, ipam.ErrHandleNotFound)
		})
	}
}
