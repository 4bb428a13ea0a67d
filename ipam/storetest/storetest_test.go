package storetest_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
)

// The wrappers pass every call through unchanged when they count, or when
// no fault strikes: the conformance suite holds for them as for the store.
func TestWrappersConform(t *testing.T) {
	t.Run("counting", func(t *testing.T) {
		storetest.RunConformanceTests(t, func(*testing.T) ipam.Store { return storetest.NewCountingStore(memstore.New()) })
	})
	t.Run("faulty-never", func(t *testing.T) {
		storetest.RunConformanceTests(t, func(*testing.T) ipam.Store {
			return storetest.NewFaultyStore(memstore.New(), storetest.Fault{}).WithGenerations()
		})
	})
}

func TestCounts(t *testing.T) {
	ctx := context.Background()
	s := storetest.NewCountingStore(memstore.New())
	_, ok := s.(ipam.Generations)
	require.True(t, ok, "memstore's Generations must pass through")
	_, ok = storetest.CountsOf(memstore.New())
	require.False(t, ok, "a store that counts nothing has no counts")

	zero, ok := storetest.CountsOf(s)
	require.True(t, ok)
	require.Equal(t, storetest.Counts{}, zero)
	require.Equal(t, "none", zero.String())

	rev, err := s.Create(ctx, ipam.KindHandle, "h", []byte("v"))
	require.NoError(t, err)
	_, err = s.Update(ctx, ipam.KindHandle, "h", []byte("w"), rev)
	require.NoError(t, err)
	_, err = s.Get(ctx, ipam.KindHandle, "h")
	require.NoError(t, err)
	_, err = s.Get(ctx, ipam.KindConfig, "missing")
	require.ErrorIs(t, err, ipam.ErrNotFound, "failed calls count too")
	mid, _ := storetest.CountsOf(s)
	_, err = s.List(ctx, ipam.KindHandle, ipam.KeyRange{})
	require.NoError(t, err)
	end, _ := storetest.CountsOf(s)

	require.Equal(t, int64(1), end.Of(storetest.OpCreate, ipam.KindHandle))
	require.Equal(t, int64(1), end.Of(storetest.OpGet, ipam.KindConfig))
	require.Equal(t, int64(0), end.Of(storetest.OpDelete, ipam.KindHandle))
	require.Equal(t, int64(0), end.Of(storetest.Op(99), ipam.KindHandle), "an op out of range counts nothing")
	require.Equal(t, int64(5), end.Total())
	require.Equal(t, "get handle=1 get config=1 list handle=1 create handle=1 update handle=1", end.String())
	between := end.Sub(mid)
	require.Equal(t, int64(1), between.Total())
	require.Equal(t, "list handle=1", between.String())
	require.Equal(t, end, mid.Add(between))
	require.Equal(t, int64(2), between.Add(between).Of(storetest.OpList, ipam.KindHandle))
	require.Equal(t, "op(99)", storetest.Op(99).String())
}

func TestFaultModes(t *testing.T) {
	ctx := context.Background()
	// Each store gets three creates; the second meets the fault.
	cases := []struct {
		mode    storetest.FaultMode
		applied bool // the second create took effect
		third   bool // the third create works
	}{
		{storetest.FailOnce, false, true},
		{storetest.Crash, false, false},
		{storetest.CrashAfter, true, false},
		{storetest.LostReply, true, true},
	}
	for _, c := range cases {
		t.Run(c.mode.String(), func(t *testing.T) {
			inner := memstore.New()
			f := storetest.NewFaultyStore(inner, storetest.Fault{At: 2, Mode: c.mode})
			for i := 1; i <= 3; i++ {
				_, err := f.Create(ctx, ipam.KindHandle, fmt.Sprint("h", i), []byte("v"))
				switch {
				case i == 1, i == 3 && c.third:
					require.NoError(t, err, "create %d", i)
				default:
					require.ErrorIs(t, err, storetest.ErrInjected, "create %d", i)
				}
			}
			for i, want := range []bool{true, c.applied, c.third} {
				_, err := inner.Get(ctx, ipam.KindHandle, fmt.Sprint("h", i+1))
				if want {
					require.NoError(t, err, "h%d should be in the store", i+1)
				} else {
					require.ErrorIs(t, err, ipam.ErrNotFound, "h%d should not be in the store", i+1)
				}
			}
			require.Equal(t, int64(3), f.Ops())
			require.Equal(t, c.mode == storetest.Crash || c.mode == storetest.CrashAfter, f.Crashed())
		})
	}
	require.Equal(t, "fault-mode(9)", storetest.FaultMode(9).String())
}
