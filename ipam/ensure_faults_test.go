package ipam_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
)

// ensureFullV6 is a store whose IPv6 pool has no block left: node-1's
// EnsureBlock for both families claims an IPv4 block, then fails on IPv6
// with ErrNoSpace and gives the IPv4 block up again.
func ensureFullV6(t *testing.T) *env {
	t.Helper()
	e := newEnv(t, v4pool("v4", "10.0.0.0/27", 29), v6pool("v6", "fd00::/124", 126))
	for i := range 4 {
		_, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: fmt.Sprintf("other-%d", i), IPv6: true})
		require.NoError(t, err)
	}
	return e
}

// getFailStore fails a Get, before it reaches the store, when fail says
// so, and shows list each List.
type getFailStore struct {
	ipam.Store
	list func(kind ipam.Kind, r ipam.KeyRange)
	fail func(kind ipam.Kind, key string) bool
}

func (s *getFailStore) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	if s.fail(kind, key) {
		return ipam.Record{}, errInjected
	}
	return s.Store.Get(ctx, kind, key)
}

func (s *getFailStore) List(ctx context.Context, kind ipam.Kind, r ipam.KeyRange) ([]ipam.Record, error) {
	s.list(kind, r)
	return s.Store.List(ctx, kind, r)
}

// TestEnsureBlockFailedRollbackReported: EnsureBlock for both families
// claims the node's IPv4 block and fails on IPv6 (its pool full); the
// rollback's read of the IPv4 block fails once, so the block stays the
// node's. The error must not be ErrNoSpace alone, which tells the caller
// that nothing changed: as AutoAssign does in the same spot, it reports
// the rollback's failure.
func TestEnsureBlockFailedRollbackReported(t *testing.T) {
	for _, call := range []string{"ensure block", "auto-assign"} {
		t.Run(call, func(t *testing.T) {
			e := ensureFullV6(t)
			cfg := ipam.DefaultConfig()
			cfg.StrictAffinity = true // else AutoAssign borrows an IPv6 address
			e.config(cfg)
			v6listed, failed := false, false
			s := &getFailStore{Store: e.store,
				list: func(kind ipam.Kind, r ipam.KeyRange) {
					if kind == ipam.KindBlock && strings.HasPrefix(r.Start, "v6:") {
						v6listed = true // the IPv6 claim's listing: IPv4 is claimed
					}
				},
				fail: func(kind ipam.Kind, key string) bool {
					if v6listed && !failed && kind == ipam.KindBlock && strings.HasPrefix(key, "v4:") {
						failed = true
						return true
					}
					return false
				},
			}
			a, err := ipam.New(s, ipam.Options{Now: e.clock.Now})
			require.NoError(t, err)
			if call == "ensure block" {
				_, _, err = a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, IPv6: true})
			} else {
				_, err = a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "node-1"})
			}
			require.Error(t, err)
			require.True(t, failed, "the rollback read the IPv4 block")
			held := e.affine("node-1")
			require.Len(t, held, 1, "the failed rollback left the IPv4 block")
			require.NotErrorIs(t, err, ipam.ErrNoSpace, "%s left %v, yet says only that it found no space", call, held)
			require.ErrorIs(t, err, errInjected, "the rollback's failure is reported")
		})
	}
}

// TestEnsureBlockFaultAtEveryOperation: a store fault at any operation of
// an EnsureBlock for both families (failed, reply lost, crash before or
// after), with the IPv6 pool free or full, leaves only what the write
// order allows (a stale index entry), which Repair clears; a call that
// succeeds returns the blocks the node holds.
func TestEnsureBlockFaultAtEveryOperation(t *testing.T) {
	for _, full6 := range []bool{false, true} {
		for _, keeper := range keepers {
			for _, mode := range []storetest.FaultMode{storetest.FailOnce, storetest.LostReply, storetest.CrashAfter, storetest.Crash} {
				for k := int64(1); ; k++ {
					var e *env
					if full6 {
						e = ensureFullV6(t)
					} else {
						e = newEnv(t, v4pool("v4", "10.0.0.0/27", 29), v6pool("v6", "fd00::/124", 126))
					}
					f := storetest.NewFaultyStore(e.store, storetest.Fault{At: k, Mode: mode})
					a, err := ipam.New(faultyView(f, false, keeper), ipam.Options{Now: e.clock.Now})
					require.NoError(t, err)
					v4, v6, err := a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, IPv6: true})
					name := fmt.Sprintf("full6=%v keeper=%v %s at %d", full6, keeper, mode, k)
					if err == nil {
						require.ElementsMatch(t, []any{v4, v6}, toAny(e.affine("node-1")), name)
					}
					rep, cerr := e.a.Check(e.ctx)
					require.NoError(t, cerr)
					for _, p := range rep.Problems {
						require.Equal(t, ipam.ProblemAffinityStale, p.Kind, "%s: %v", name, p)
					}
					_, after, rerr := e.a.Repair(e.ctx, ipam.RepairOptions{})
					require.NoError(t, rerr)
					require.True(t, after.Clean(), "%s: after repair: %v", name, after.Problems)
					if k > f.Ops() {
						break
					}
				}
			}
		}
	}
}

func toAny[T any](xs []T) []any {
	out := make([]any, len(xs))
	for i, x := range xs {
		out[i] = x
	}
	return out
}

// TestEnsureBlockCancelledLeavesNothing: a caller that gives up at any
// store operation of an EnsureBlock for both families (between two, or
// during one that memstore then refuses), with the IPv6 pool free or
// full, gets an error and finds the store as it was, or gets its blocks.
func TestEnsureBlockCancelledLeavesNothing(t *testing.T) {
	for _, inFlight := range []bool{false, true} {
		for _, full6 := range []bool{false, true} {
			for at := 1; ; at++ {
				var e *env
				if full6 {
					e = ensureFullV6(t)
				} else {
					e = newEnv(t, v4pool("v4", "10.0.0.0/27", 29), v6pool("v6", "fd00::/124", 126))
				}
				before, err := state(e.ctx, e.store)
				require.NoError(t, err)
				ctx, cancel := context.WithCancel(e.ctx)
				cs := &cancelStore{Store: e.store, at: at, inFlight: inFlight, cancel: cancel}
				a, err := ipam.New(cs, ipam.Options{Now: e.clock.Now})
				require.NoError(t, err)
				v4, v6, err := a.EnsureBlock(ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, IPv6: true})
				cancel()
				name := fmt.Sprintf("inflight=%v full6=%v at=%d", inFlight, full6, at)
				after, serr := state(e.ctx, e.store)
				require.NoError(t, serr)
				if err != nil {
					require.Equal(t, before, after, "%s: failed (%v) but changed the store", name, err)
				} else {
					require.False(t, full6, name)
					require.ElementsMatch(t, []any{v4, v6}, toAny(e.affine("node-1")), name)
				}
				e.requireConsistent()
				if cs.n < at {
					break
				}
			}
		}
	}
}

// TestEnsureBlockEmptyNodeMessage: EnsureBlockArgs has no Use, so the
// error for an empty node name must not send the caller to one (the
// message AutoAssign gives, pointing at Use LoadBalancer).
func TestEnsureBlockEmptyNodeMessage(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	_, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{IPv4: true})
	require.ErrorIs(t, err, ipam.ErrInvalid)
	require.ErrorContains(t, err, "empty node name")
	require.NotContains(t, err.Error(), "Use", "EnsureBlockArgs has no Use field")
}

// TestEnsureBlockNamespaceSelector: as the doc says, a pool that selects
// namespaces by label is not chosen for a node (a namespace without
// labels), but is when named.
func TestEnsureBlockNamespaceSelector(t *testing.T) {
	p := v4pool("team-a", "10.0.0.0/24", 28)
	p.NamespaceSelector = `team == "a"`
	e := newEnv(t, p)
	_, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true})
	require.ErrorIs(t, err, pool.ErrNoPool)
	require.ErrorContains(t, err, "namespaceSelector")
	v4, _, err := e.a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "node-1", IPv4: true, IPv4Pools: []string{"team-a"}})
	require.NoError(t, err)
	require.True(t, p.CIDR.Contains(v4.Addr()))
}
