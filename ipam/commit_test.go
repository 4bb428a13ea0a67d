package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
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
				s := memstore.New()
				setup, err := ipam.New(s, ipam.Options{})
				require.NoError(t, err)
				for _, p := range crashPools {
					require.NoError(t, setup.CreatePool(t.Context(), p))
				}
				_, err = setup.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: 1, Handle: "first", Node: "n1"})
				require.NoError(t, err)
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
