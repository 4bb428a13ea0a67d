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
	t.Run("faulty-never-commits", func(t *testing.T) {
		storetest.RunConformanceTests(t, func(t *testing.T) ipam.Store {
			s := storetest.NewFaultyStore(memstore.New(), storetest.Fault{}).WithCommits()
			_, ok := s.(ipam.Committer)
			require.True(t, ok)
			return s
		})
	})
	// Over a store that keeps no blocks, the wrappers encode the blocks of
	// a commit as they do those of CreateBlock and UpdateBlock.
	t.Run("counting-bytes-only", func(t *testing.T) {
		storetest.RunConformanceTests(t, func(*testing.T) ipam.Store { return storetest.NewCountingStore(bytesOnly{Store: memstore.New()}) })
	})
	t.Run("faulty-bytes-only", func(t *testing.T) {
		storetest.RunConformanceTests(t, func(*testing.T) ipam.Store {
			return storetest.NewFaultyStore(bytesOnly{Store: memstore.New()}, storetest.Fault{}).WithCommits()
		})
	})
	t.Run("faulty-without-keeper", func(t *testing.T) {
		storetest.RunConformanceTests(t, func(*testing.T) ipam.Store {
			return storetest.WithoutBlockKeeper(storetest.NewFaultyStore(memstore.New(), storetest.Fault{}).WithCommits())
		})
	})
}

// WithoutBlockKeeper hides BlockKeeper and nothing else.
func TestWithoutBlockKeeper(t *testing.T) {
	type plain struct{ ipam.Store }
	ms := memstore.New()
	f := storetest.NewFaultyStore(ms, storetest.Fault{})
	for _, c := range []struct {
		name          string
		s             ipam.Store
		gens, commits bool
	}{
		{"plain", storetest.NewFaultyStore(plain{memstore.New()}, storetest.Fault{}), false, false},
		{"generations", f.WithGenerations(), true, false},
		{"commits", f.WithCommits(), true, true},
		{"commits-only", storetest.NewFaultyStore(struct {
			ipam.Store
			ipam.Committer
		}{ms, ms}, storetest.Fault{}).WithCommits(), false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, ok := c.s.(ipam.BlockKeeper)
			require.True(t, ok, "a FaultyStore always keeps blocks")
			s := storetest.WithoutBlockKeeper(c.s)
			_, ok = s.(ipam.BlockKeeper)
			require.False(t, ok)
			_, ok = s.(ipam.Generations)
			require.Equal(t, c.gens, ok, "Generations")
			_, ok = s.(ipam.Committer)
			require.Equal(t, c.commits, ok, "Committer")
		})
	}
}

// bytesOnly is a memstore without BlockKeeper: the fields, shallower than
// the methods the embedded store promotes, hide them.
type bytesOnly struct {
	*memstore.Store
	CreateBlock, UpdateBlock struct{}
}

// A commit is one round trip; each of its writes counts under its method.
func TestCountsCommits(t *testing.T) {
	ctx := context.Background()
	s := storetest.NewCountingStore(memstore.New())
	c, ok := s.(ipam.Committer)
	require.True(t, ok, "memstore's Committer must pass through")
	rev, err := s.Create(ctx, ipam.KindHandle, "h", []byte("v"))
	require.NoError(t, err)
	revs := make([]ipam.Revision, 3)
	require.NoError(t, c.Commit(ctx, []ipam.Write{
		{Kind: ipam.KindHandle, Key: "h", Rev: rev, Delete: true},
		{Kind: ipam.KindHandle, Key: "g", Value: []byte("v")},
		{Kind: ipam.KindBlock, Key: "b", Value: []byte("v")},
	}, revs))
	got, _ := storetest.CountsOf(s)
	require.Equal(t, int64(2), got.Total(), "a create and a commit")
	require.Equal(t, int64(1), got.Commits())
	require.Equal(t, int64(2), got.Of(storetest.OpCreate, ipam.KindHandle))
	require.Equal(t, int64(1), got.Of(storetest.OpDelete, ipam.KindHandle))
	require.Equal(t, int64(1), got.Of(storetest.OpCreate, ipam.KindBlock))
	require.Equal(t, "create block=1 create handle=2 delete handle=1 (3 in 1 commits)", got.String())
	require.Equal(t, int64(0), got.Sub(got).Total())
	require.Equal(t, int64(4), got.Add(got).Total())
}

// A fault strikes a commit whole: none of its writes, or (after the fact)
// all of them.
func TestFaultModesCommit(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []storetest.FaultMode{storetest.FailOnce, storetest.Crash, storetest.CrashAfter, storetest.LostReply} {
		t.Run(mode.String(), func(t *testing.T) {
			inner := memstore.New()
			s := storetest.NewFaultyStore(inner, storetest.Fault{At: 1, Mode: mode}).WithCommits()
			err := s.(ipam.Committer).Commit(ctx, []ipam.Write{
				{Kind: ipam.KindHandle, Key: "a", Value: []byte("v")},
				{Kind: ipam.KindHandle, Key: "b", Value: []byte("v")},
			}, make([]ipam.Revision, 2))
			require.ErrorIs(t, err, storetest.ErrInjected)
			applied := mode == storetest.CrashAfter || mode == storetest.LostReply
			require.Equal(t, map[bool]int{true: 2, false: 0}[applied], inner.Len(ipam.KindHandle))
		})
	}
	// Without a Committer below, WithCommits offers none.
	s := storetest.NewFaultyStore(bytesOnly{Store: memstore.New()}, storetest.Fault{}).WithCommits()
	_, ok := s.(ipam.Committer)
	require.True(t, ok, "bytesOnly keeps memstore's Committer")
	type plain struct{ ipam.Store }
	s = storetest.NewFaultyStore(plain{memstore.New()}, storetest.Fault{}).WithCommits()
	_, ok = s.(ipam.Committer)
	require.False(t, ok)
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
