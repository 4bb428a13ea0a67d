package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// readHook runs after, once, after the first read of a handle record.
type readHook struct{ after func() }

func (h *readHook) read(kind ipam.Kind) {
	if kind == ipam.KindHandle && h.after != nil {
		f := h.after
		h.after = nil
		f()
	}
}

// recordReadHook is memstore with a readHook: every other method of
// memstore (Commit, BlockKeeper) is its own.
type recordReadHook struct {
	*memstore.Store
	readHook
}

func (s *recordReadHook) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	rec, err := s.Store.Get(ctx, kind, key)
	s.read(kind)
	return rec, err
}

// plainRecordReadHook is recordReadHook as a plain Store: no Committer,
// no BlockKeeper, so a release writes blocks and records apart.
type plainRecordReadHook struct {
	ipam.Store
	readHook
}

func (s *plainRecordReadHook) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	rec, err := s.Store.Get(ctx, kind, key)
	s.read(kind)
	return rec, err
}

// TestReleaseAfterStaleRecordRead: a release reads the handle's record,
// and before it reads the blocks another allocator assigns the handle
// addresses there (block and record in one commit). The release frees
// them too (by handle: all the handle's addresses; by address: the ones
// named), but the record it read does not count them: the counts it
// writes, or leaves, must not keep the other allocator's raise for
// addresses no block holds any more. Check must be clean after. Found by
// TestJoinedConcurrent, which failed about once in fifty runs.
func TestReleaseAfterStaleRecordRead(t *testing.T) {
	x4, x6 := mustAddr("10.0.0.5"), mustAddr("fd00::5")
	fixed := func(ctx context.Context, t *testing.T, a *ipam.Allocator, addrs ...netip.Addr) {
		for _, x := range addrs {
			_, err := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: x, Handle: "h", Node: "n", IgnoreCooldown: true})
			require.NoError(t, err)
		}
	}
	for _, tc := range []struct {
		name  string
		plain bool // a store without Committer
		// before runs before the release, during after its read of the
		// handle's record, by another allocator.
		before, during func(ctx context.Context, t *testing.T, other *ipam.Allocator)
		release        func(ctx context.Context, a *ipam.Allocator) error
	}{{
		// The record read counts 1 in the block, which holds 2 when the
		// release reads it: one commit would keep the count at 2.
		name:   "ReleaseByHandle/one more in the block/joined",
		before: func(ctx context.Context, t *testing.T, o *ipam.Allocator) { fixed(ctx, t, o, x4) },
		during: func(ctx context.Context, t *testing.T, o *ipam.Allocator) { fixed(ctx, t, o, x4.Next()) },
		release: func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.ReleaseByHandle(ctx, "h")
			return err
		},
	}, {
		// The same without Committer: the count is lowered after the
		// block, from a record that counts fewer than were freed, which
		// looked like nothing to lower.
		name:   "ReleaseByHandle/one more in the block/plain",
		plain:  true,
		before: func(ctx context.Context, t *testing.T, o *ipam.Allocator) { fixed(ctx, t, o, x4) },
		during: func(ctx context.Context, t *testing.T, o *ipam.Allocator) { fixed(ctx, t, o, x4.Next()) },
		release: func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.ReleaseByHandle(ctx, "h")
			return err
		},
	}, {
		// By address, without Seq, across two blocks: the handle's
		// addresses were released and its record deleted before the
		// release read it; then the same addresses are assigned to it
		// again. No record, as read, can be checked in a commit.
		name: "ReleaseIPs/record made again/joined",
		before: func(ctx context.Context, t *testing.T, o *ipam.Allocator) {
			fixed(ctx, t, o, x4, x6)
			_, err := o.ReleaseByHandle(ctx, "h")
			require.NoError(t, err)
		},
		during: func(ctx context.Context, t *testing.T, o *ipam.Allocator) { fixed(ctx, t, o, x4, x6) },
		release: func(ctx context.Context, a *ipam.Allocator) error {
			res, err := a.ReleaseIPs(ctx, ipam.Release{Addr: x4, Handle: "h"}, ipam.Release{Addr: x6, Handle: "h"})
			if err == nil && len(res.Released) != 2 {
				err = fmt.Errorf("released %v", res.Released)
			}
			return err
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			ms := memstore.New()
			setup, err := ipam.New(ms, ipam.Options{})
			require.NoError(t, err)
			require.NoError(t, setup.CreatePool(ctx, v4pool("p4", "10.0.0.0/24", 26)))
			require.NoError(t, setup.CreatePool(ctx, v6pool("p6", "fd00::/120", 122)))
			other, err := ipam.New(ms, ipam.Options{})
			require.NoError(t, err)
			tc.before(ctx, t, other)

			// The release's allocator has read no block yet.
			during := func() { tc.during(ctx, t, other) }
			var store ipam.Store = &recordReadHook{ms, readHook{during}}
			if tc.plain {
				store = &plainRecordReadHook{ms, readHook{during}}
			}
			a, err := ipam.New(store, ipam.Options{})
			require.NoError(t, err)
			require.NoError(t, tc.release(ctx, a))
			r, err := setup.Check(ctx)
			require.NoError(t, err)
			require.True(t, r.Clean(), "%v", r.Problems)
		})
	}
}
