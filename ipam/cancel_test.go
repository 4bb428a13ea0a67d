package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

// cancelStore is a memstore whose caller gives up at its at-th operation:
// between operations, after the at-th returns, or, inFlight, during it:
// just before it runs, so that memstore refuses it, as a store does a
// request whose caller is gone (for another store, its outcome would be
// unknown). Every later operation on the cancelled context fails.
type cancelStore struct {
	*memstore.Store
	n, at    int
	inFlight bool
	cancel   context.CancelFunc
}

// op runs one operation.
func op[T any](s *cancelStore, run func() (T, error)) (T, error) {
	if s.n++; s.inFlight && s.n == s.at {
		s.cancel()
	}
	v, err := run()
	if !s.inFlight && s.n == s.at {
		s.cancel()
	}
	return v, err
}

func (s *cancelStore) Get(ctx context.Context, k ipam.Kind, key string) (ipam.Record, error) {
	return op(s, func() (ipam.Record, error) { return s.Store.Get(ctx, k, key) })
}

func (s *cancelStore) List(ctx context.Context, k ipam.Kind, r ipam.KeyRange) ([]ipam.Record, error) {
	return op(s, func() ([]ipam.Record, error) { return s.Store.List(ctx, k, r) })
}

func (s *cancelStore) Create(ctx context.Context, k ipam.Kind, key string, v []byte) (ipam.Revision, error) {
	return op(s, func() (ipam.Revision, error) { return s.Store.Create(ctx, k, key, v) })
}

func (s *cancelStore) Update(ctx context.Context, k ipam.Kind, key string, v []byte, rev ipam.Revision) (ipam.Revision, error) {
	return op(s, func() (ipam.Revision, error) { return s.Store.Update(ctx, k, key, v, rev) })
}

func (s *cancelStore) Delete(ctx context.Context, k ipam.Kind, key string, rev ipam.Revision) error {
	_, err := op(s, func() (struct{}, error) { return struct{}{}, s.Store.Delete(ctx, k, key, rev) })
	return err
}

func (s *cancelStore) CreateBlock(ctx context.Context, key string, b *block.Block) (ipam.Revision, error) {
	return op(s, func() (ipam.Revision, error) { return s.Store.CreateBlock(ctx, key, b) })
}

func (s *cancelStore) Commit(ctx context.Context, writes []ipam.Write, revs []ipam.Revision) error {
	_, err := op(s, func() (struct{}, error) { return struct{}{}, s.Store.Commit(ctx, writes, revs) })
	return err
}

func (s *cancelStore) UpdateBlock(ctx context.Context, key string, b *block.Block, rev ipam.Revision) (ipam.Revision, error) {
	return op(s, func() (ipam.Revision, error) { return s.Store.UpdateBlock(ctx, key, b, rev) })
}

// cancelRun runs call on a fresh store with two pools, where handle "old"
// holds 20 IPv4 addresses (two blocks) and 5 IPv6 addresses of node n1,
// with its context cancelled at the at-th store operation (see
// cancelStore). It returns a working allocator on the store and call's
// error; done reports whether call ran out of operations first.
func cancelRun(t *testing.T, at int, inFlight bool, call func(ctx context.Context, a *ipam.Allocator) error) (a *ipam.Allocator, err error, done bool) {
	t.Helper()
	ms := memstore.New()
	a, err = ipam.New(ms, ipam.Options{})
	require.NoError(t, err)
	ctx := t.Context()
	require.NoError(t, a.CreatePool(ctx, v4pool("v4", "10.0.0.0/22", 28)))
	require.NoError(t, a.CreatePool(ctx, pool.Pool{Name: "v6", CIDR: mustPrefix("fd00::/120"), BlockSize: 124}))
	_, err = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 20, Num6: 5, Handle: "old", Node: "n1"})
	require.NoError(t, err)

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs := &cancelStore{Store: ms, at: at, inFlight: inFlight, cancel: cancel}
	b, err := ipam.New(cs, ipam.Options{})
	require.NoError(t, err)
	err = call(cctx, b)
	return a, err, cs.n < at || !inFlight && cs.n == at
}

// TestCancelledAutoAssignLeavesNothing: a caller that gives up midway (its
// context cancelled between any two store operations, or during a block
// write) gets an error and leaves nothing behind, as a failed AutoAssign
// promises: no address, no handle, no claimed block, nothing for Check to
// report. The request spans many blocks of both families, claims, and the
// old blocks.
func TestCancelledAutoAssignLeavesNothing(t *testing.T) {
	for _, inFlight := range []bool{false, true} {
		t.Run(fmt.Sprintf("inflight=%v", inFlight), func(t *testing.T) { cancelledAutoAssign(t, inFlight) })
	}
}

func cancelledAutoAssign(t *testing.T, inFlight bool) {
	for at := 1; ; at++ {
		var res ipam.AutoAssignResult
		a, err, done := cancelRun(t, at, inFlight, func(ctx context.Context, a *ipam.Allocator) error {
			var err error
			res, err = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 40, Num6: 40, Handle: "h", Node: "n1"})
			return err
		})
		ctx := t.Context()
		got, herr := a.IPsByHandle(ctx, "h")
		if done || err == nil {
			// Done before the cancellation, or with only its last write
			// to make, which went through: the request stands.
			require.NoError(t, err)
			require.Len(t, got, 80)
			if done {
				return
			}
			continue
		}
		require.ErrorIs(t, err, context.Canceled, "cancelled at operation %d", at)
		require.Zero(t, res.Len())
		require.ErrorIs(t, herr, ipam.ErrHandleNotFound, "cancelled at operation %d: %d addresses left under the handle", at, len(got))
		rep, cerr := a.Check(ctx)
		require.NoError(t, cerr)
		require.Empty(t, rep.Problems, "cancelled at operation %d", at)
		old, oerr := a.IPsByHandle(ctx, "old")
		require.NoError(t, oerr)
		require.Len(t, old, 25)
		aff := affineBlocks(t, a, "n1")
		require.Len(t, aff, 3, "cancelled at operation %d: n1 keeps only its old blocks, not %v", at, aff)
	}
}

// affineBlocks lists the blocks affine to node, read from the store.
func affineBlocks(t *testing.T, a *ipam.Allocator, node string) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, pu := range mustUtil(t, a) {
		for _, bu := range pu.Blocks {
			if bu.Affinity == block.Host(node) {
				out = append(out, bu.Prefix)
			}
		}
	}
	return out
}

func mustUtil(t *testing.T, a *ipam.Allocator) []ipam.PoolUtilization {
	t.Helper()
	u, err := a.Utilization(t.Context())
	require.NoError(t, err)
	return u
}

// TestCancelledCallsLeaveNoHalfWrites: whatever call a caller gives up
// midway, between two store operations, the store is left consistent
// (Check finds nothing), and what the call did not do can be done by
// calling it again. (A write cut off in flight has an unknown outcome,
// like a lost reply: see TestLostReplyEachOperation.)
func TestCancelledCallsLeaveNoHalfWrites(t *testing.T) {
	calls := []struct {
		name string
		call func(ctx context.Context, a *ipam.Allocator) error
		// after checks the outcome with a working allocator.
		after func(t *testing.T, a *ipam.Allocator, err error)
	}{
		{"AssignIP", func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: mustAddr("10.0.3.5"), Handle: "fixed", Node: "n2"})
			return err
		}, func(t *testing.T, a *ipam.Allocator, err error) {
			_, herr := a.IPsByHandle(t.Context(), "fixed")
			if err != nil {
				require.ErrorIs(t, herr, ipam.ErrHandleNotFound)
				require.Empty(t, affineBlocks(t, a, "n2"), "the block claimed for the address")
			}
		}},
		{"ReleaseByHandle", func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.ReleaseByHandle(ctx, "old")
			return err
		}, func(t *testing.T, a *ipam.Allocator, err error) {
			if err != nil {
				_, err = a.ReleaseByHandle(t.Context(), "old")
				require.True(t, err == nil || errors.Is(err, ipam.ErrHandleNotFound), "again: %v", err)
			}
			_, herr := a.IPsByHandle(t.Context(), "old")
			require.ErrorIs(t, herr, ipam.ErrHandleNotFound)
		}},
		{"ReleaseIPs", func(ctx context.Context, a *ipam.Allocator) error {
			old, err := a.IPsByHandle(context.WithoutCancel(ctx), "old")
			if err != nil {
				return err
			}
			rels := make([]ipam.Release, len(old))
			for i, x := range old {
				rels[i] = ipam.Release{Addr: x, Handle: "old"}
			}
			_, err = a.ReleaseIPs(ctx, rels...)
			return err
		}, nil},
		{"ReleaseHostAffinities", func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.ReleaseHostAffinities(ctx, "n1", false)
			return err
		}, nil},
		{"ClaimAffinity", func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.ClaimAffinity(ctx, "n2", mustPrefix("10.0.2.0/26"))
			return err
		}, nil},
	}
	for _, c := range calls {
		t.Run("call="+c.name, func(t *testing.T) {
			for at := 1; ; at++ {
				a, err, done := cancelRun(t, at, false, c.call)
				if done {
					require.NoError(t, err)
					return
				}
				if err != nil {
					require.ErrorIs(t, err, context.Canceled, "cancelled at operation %d", at)
				}
				rep, cerr := a.Check(t.Context())
				require.NoError(t, cerr)
				require.Empty(t, rep.Problems, "cancelled at operation %d", at)
				if c.after != nil {
					c.after(t, a, err)
				}
			}
		})
	}
}
