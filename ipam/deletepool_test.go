package ipam_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/storetest"
)

// TestDeletePoolAgainAfterFailure fails each store operation of a
// DeletePool once (a transient error, not a crash) and calls it again, as
// its doc says. Before the pool is removed, the second call finishes the
// job and leaves a clean store: an index entry whose block the first call
// had released already goes too. After, the first call's error says that
// the pool is deleted, the second finds no pool, and what is left, an
// empty block that held a cooling address, a Collector deletes once the
// cooldown is over.
func TestDeletePoolAgainAfterFailure(t *testing.T) {
	setup := func() *env {
		e := newEnv(t, v4pool("pods", "10.244.0.0/24", 28))
		e.cooldown(time.Minute)
		e.mustAssign4("n1", "h-n1", 1)
		e.mustAssign4("n2", "h-n2", 1)
		_, err := e.a.ReleaseByHandle(e.ctx, "h-n1") // n1's block: empty, cooling
		require.NoError(t, err)
		e.requireConsistent()
		return e
	}
	removed := 0
	for at := int64(1); ; at++ {
		e := setup()
		f := storetest.NewFaultyStore(e.store, storetest.Fault{At: at, Mode: storetest.FailOnce})
		a, err := ipam.New(f.WithGenerations(), ipam.Options{Now: e.clock.Now})
		require.NoError(t, err)
		first := a.DeletePool(e.ctx, "pods")
		if f.Ops() < at {
			require.NoError(t, first)
			break
		}
		if first == nil {
			e.requireConsistent()
			continue
		}
		if _, err := e.a.Pool(e.ctx, "pods"); err == nil {
			require.NoError(t, e.a.DeletePool(e.ctx, "pods"), "fault at %d: %v", at, first)
			e.requireConsistent()
			continue
		}
		removed++
		require.ErrorContains(t, first, "the pool is deleted", "fault at %d", at)
		require.ErrorIs(t, e.a.DeletePool(e.ctx, "pods"), ipam.ErrPoolNotFound)
		e.clock.Advance(time.Hour)
		c, err := ipam.NewCollector(e.a, func(ctx context.Context, _ ipam.Allocation) (bool, error) { return true, nil }, ipam.CollectorOptions{})
		require.NoError(t, err)
		_, err = c.Collect(e.ctx)
		require.NoError(t, err)
		r, err := e.a.Check(e.ctx)
		require.NoError(t, err)
		for _, p := range r.Problems {
			require.False(t, strings.HasPrefix(string(p.Kind), "block"), "fault at %d: %v", at, p)
		}
		require.True(t, r.Clean(), "fault at %d: %v", at, r.Problems)
	}
	require.Positive(t, removed, "no fault struck after the pool's removal: the test shows less than it says")
}
