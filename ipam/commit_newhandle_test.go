package ipam_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
)

// TestNewHandleLostReplyOfFirstCommit: a dual-stack request with
// NewHandle in the steady state (the node holds a v4 and a v6 block). The
// reply of the write that puts its IPv4 address in the block is lost, but
// the write happened. Without a Committer that write is the block update
// alone (the handle was created before it), and the request succeeds (see
// TestLostReplyOfAssignmentStands). With a Committer it is the commit of
// the handle's create and the block: the allocator finds its allocation
// in the block, so it knows the whole commit landed (all or none), and
// the request should succeed the same way. The two paths must agree.
func TestNewHandleLostReplyOfFirstCommit(t *testing.T) {
	for _, commits := range []bool{false, true} {
		t.Run(fmt.Sprintf("commits=%t", commits), func(t *testing.T) {
			run := func(k int64) (*memstore.Store, int64, ipam.AutoAssignResult, error) {
				s := crashStore(t, func(ctx context.Context, a *ipam.Allocator) error {
					_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "first", Node: "n1"})
					return err
				})
				fs, at := lostFirstBlockWrite(s, commits, k)
				a, err := ipam.New(fs, ipam.Options{})
				require.NoError(t, err)
				res, err := a.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "n1", NewHandle: true})
				return s, at(), res, err
			}
			_, at, _, err := run(0)
			require.NoError(t, err)
			require.Positive(t, at)

			s, _, res, err := run(at)
			require.NoError(t, err, "the write happened: the request stands")
			require.Len(t, res.IPv4, 1)
			require.Len(t, res.IPv6, 1)
			checkedClean(t, s)
		})
	}
}

// TestNewHandleLostReplyThenNoSpace: a dual-stack request with
// NewHandle whose IPv4 write's reply is lost (the write happened) and for
// which the IPv6 pool has no room. All or nothing: the request gives its
// IPv4 address back and fails with ErrNoSpace. Without a Committer it does
// so and leaves nothing behind; a repeated request finds no handle. With a
// Committer the same must hold: the handle record the request's own commit
// created must not survive to make a repeated request fail with
// ErrHandleExists.
func TestNewHandleLostReplyThenNoSpace(t *testing.T) {
	for _, commits := range []bool{false, true} {
		t.Run(fmt.Sprintf("commits=%t", commits), func(t *testing.T) {
			run := func(k int64) (*memstore.Store, int64, error) {
				s := crashStore(t, func(ctx context.Context, a *ipam.Allocator) error {
					_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "first", Node: "n1"})
					if err == nil { // another node takes every IPv6 address
						_, err = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num6: 16, Handle: "all6", Node: "n2"})
					}
					return err
				})
				fs, at := lostFirstBlockWrite(s, commits, k)
				a, err := ipam.New(fs, ipam.Options{})
				require.NoError(t, err)
				_, err = a.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "n1", NewHandle: true})
				return s, at(), err
			}
			_, at, err := run(0)
			require.ErrorIs(t, err, ipam.ErrNoSpace)
			require.Positive(t, at)

			s, _, err := run(at)
			require.ErrorIs(t, err, ipam.ErrNoSpace, "as without the lost reply")
			require.NotErrorIs(t, err, ipam.ErrHandleExists)
			checker, err := ipam.New(s, ipam.Options{})
			require.NoError(t, err)
			r, err := checker.Check(t.Context())
			require.NoError(t, err)
			require.True(t, r.Clean(), "%v", r.Problems)
			_, err = checker.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1", NewHandle: true})
			require.NoError(t, err, "the repeated request finds no record of the first")
		})
	}
}

// lostFirstBlockWrite returns s behind a FaultyStore that loses the reply
// of operation k (0: none), offering Committer when commits is set, and a
// function that gives the number of the operation that first wrote a
// block: a commit, or with commits unset a block update.
func lostFirstBlockWrite(s *memstore.Store, commits bool, k int64) (ipam.Store, func() int64) {
	var f *storetest.FaultyStore
	var at int64
	var inner ipam.Store
	if commits {
		inner = &commitHookStore{Store: s, hook: func([]ipam.Write) {
			if at == 0 {
				at = f.Ops()
			}
		}}
	} else {
		inner = &hookStore{Store: s, hook: func(op string, kind ipam.Kind, key string) {
			if kind == ipam.KindBlock && op == "update" && at == 0 {
				at = f.Ops()
			}
		}}
	}
	f = storetest.NewFaultyStore(inner, storetest.Fault{At: k, Mode: storetest.LostReply})
	return f.WithCommits(), func() int64 { return at }
}
