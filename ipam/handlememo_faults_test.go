package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

var errMemoFault = errors.New("injected fault")

// armedStore is a store without BlockKeeper (so an allocator on it keeps
// the handle memo) whose k-th operation from arm fails: without effect
// (lost false) or applied with its reply lost (lost true).
type armedStore struct {
	s *memstore.Store

	mu   sync.Mutex
	left int // operations until the fault; 0: none armed
	lost bool
	hit  bool
}

func (s *armedStore) arm(k int, lost bool) {
	s.mu.Lock()
	s.left, s.lost, s.hit = k, lost, false
	s.mu.Unlock()
}

// fault reports whether this operation is the faulty one, and whether it
// is to be applied.
func (s *armedStore) fault() (faulty, apply bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.left == 0 {
		return false, true
	}
	s.left--
	if s.left > 0 {
		return false, true
	}
	s.hit = true
	return true, s.lost
}

func do[T any](s *armedStore, f func() (T, error)) (T, error) {
	faulty, apply := s.fault()
	var v T
	var err error
	if apply {
		v, err = f()
	}
	if faulty {
		return v, errMemoFault
	}
	return v, err
}

func (s *armedStore) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	return do(s, func() (ipam.Record, error) { return s.s.Get(ctx, kind, key) })
}

func (s *armedStore) List(ctx context.Context, kind ipam.Kind, r ipam.KeyRange) ([]ipam.Record, error) {
	return do(s, func() ([]ipam.Record, error) { return s.s.List(ctx, kind, r) })
}

func (s *armedStore) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (ipam.Revision, error) {
	return do(s, func() (ipam.Revision, error) { return s.s.Create(ctx, kind, key, value) })
}

func (s *armedStore) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	return do(s, func() (ipam.Revision, error) { return s.s.Update(ctx, kind, key, value, rev) })
}

func (s *armedStore) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	_, err := do(s, func() (struct{}, error) { return struct{}{}, s.s.Delete(ctx, kind, key, rev) })
	return err
}

func (s *armedStore) Commit(ctx context.Context, writes []ipam.Write, revs []ipam.Revision) error {
	_, err := do(s, func() (struct{}, error) { return struct{}{}, s.s.Commit(ctx, writes, revs) })
	return err
}

func (s *armedStore) Generation(kind ipam.Kind) uint64 { return s.s.Generation(kind) }

// TestHandleMemoReleaseUnderFaults: an allocator on a store without
// BlockKeeper (the memo on) assigned under "h"; then (per case) others
// change the handle; then its ReleaseByHandle meets a fault at each of
// its store operations in turn, one failing without effect or applied
// with its reply lost. Released again until the handle is gone, every
// address of h goes, none is reported twice, and the store checks clean
// with no record left.
func TestHandleMemoReleaseUnderFaults(t *testing.T) {
	dual := []pool.Pool{v4pool("p4", "10.0.0.0/16", 26), {Name: "p6", CIDR: mustPrefix("fd00::/112"), BlockSize: 122}}
	cases := []struct {
		name  string
		setup func(e *env, a, b *ipam.Allocator)
	}{
		{"one block", func(e *env, a, b *ipam.Allocator) {
			_, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 2, Handle: "h", Node: "n1"})
			require.NoError(e.t, err)
		}},
		{"dual", func(e *env, a, b *ipam.Allocator) {
			_, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "n1"})
			require.NoError(e.t, err)
		}},
		{"dual, third block by another", func(e *env, a, b *ipam.Allocator) {
			_, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "n1"})
			require.NoError(e.t, err)
			_, err = b.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n2"})
			require.NoError(e.t, err)
		}},
		{"dual, one released by IP", func(e *env, a, b *ipam.Allocator) {
			res, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 2, Num6: 1, Handle: "h", Node: "n1"})
			require.NoError(e.t, err)
			_, err = a.ReleaseIPs(e.ctx, ipam.Release{Addr: res.IPv4[0].Addr, Handle: "h"})
			require.NoError(e.t, err)
		}},
		{"AssignIPs of two blocks", func(e *env, a, b *ipam.Allocator) {
			_, err := a.AssignIPs(e.ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{mustAddr("10.0.0.5"), mustAddr("fd00::5")}, Handle: "h", Node: "n1"})
			require.NoError(e.t, err)
		}},
		{"another block by another, then released by it", func(e *env, a, b *ipam.Allocator) {
			_, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"})
			require.NoError(e.t, err)
			res, err := b.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n2"})
			require.NoError(e.t, err)
			_, err = b.ReleaseIPs(e.ctx, ipam.Release{Addr: res.IPv4[0].Addr, Handle: "h"})
			require.NoError(e.t, err)
		}},
	}
	for _, c := range cases {
		for _, lost := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/lost=%t", c.name, lost), func(t *testing.T) {
				for k := 1; ; k++ {
					if k > 40 {
						t.Fatal("the release never got past its faults")
					}
					e := newEnv(t, dual...)
					s := &armedStore{s: e.store}
					a, err := ipam.New(s, ipam.Options{Now: e.clock.Now})
					require.NoError(t, err)
					c.setup(e, a, e.remote())
					want := e.ips("h")
					s.arm(k, lost)
					got, err := a.ReleaseByHandle(e.ctx, "h")
					hit := s.hit
					s.arm(0, false)
					for i := 0; i < 5 && err != nil && !errors.Is(err, ipam.ErrHandleNotFound); i++ {
						var rel []netip.Addr
						rel, err = a.ReleaseByHandle(e.ctx, "h")
						got = append(got, rel...)
					}
					if err == nil {
						_, err = a.ReleaseByHandle(e.ctx, "h")
					}
					require.ErrorIs(t, err, ipam.ErrHandleNotFound, "fault at op %d", k)
					seen := map[netip.Addr]bool{}
					for _, x := range got {
						require.False(t, seen[x], "%s released twice (fault at op %d)", x, k)
						seen[x] = true
						require.Contains(t, want, x)
					}
					if !lost {
						require.ElementsMatch(t, want, got, "fault at op %d", k)
					}
					_, err = e.store.Get(e.ctx, ipam.KindHandle, "h")
					require.ErrorIs(t, err, ipam.ErrNotFound, "fault at op %d: the record stays", k)
					for _, x := range want {
						_, err := e.a.Owner(e.ctx, x)
						require.ErrorIs(t, err, ipam.ErrNotAllocated, "fault at op %d: %s stays", k, x)
					}
					r, err := e.a.Check(e.ctx)
					require.NoError(t, err)
					require.True(t, r.Clean(), "fault at op %d: %v", k, r.Problems)
					if !hit {
						return
					}
				}
			})
		}
	}
}
