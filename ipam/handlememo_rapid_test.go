package ipam_test

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

// memoMachine: several allocators on one store without BlockKeeper (the
// handle memo on), or with it, sharing a few handles, so that a handle's
// record is written by one allocator and released through another's
// memo. ReleaseByHandle must return exactly the handle's addresses, and
// handle records must count exactly what the blocks hold.
type memoMachine struct {
	store  *memstore.Store
	allocs []*ipam.Allocator
	model  map[netip.Addr]string // address -> handle
}

var memoPools = []pool.Pool{
	{Name: "a4", CIDR: netip.MustParsePrefix("10.0.0.0/27"), BlockSize: 30},
	{Name: "c6", CIDR: netip.MustParsePrefix("fd00::/124"), BlockSize: 126},
}

var memoHandles = []string{"h0", "h1", "h2"}

func (m *memoMachine) alloc(t *rapid.T) *ipam.Allocator {
	return m.allocs[rapid.IntRange(0, len(m.allocs)-1).Draw(t, "allocator")]
}

func (m *memoMachine) AutoAssign(t *rapid.T) {
	n4, n6 := rapid.IntRange(0, 5).Draw(t, "n4"), rapid.IntRange(0, 2).Draw(t, "n6")
	if n4+n6 == 0 {
		t.Skip("nothing")
	}
	h := rapid.SampledFrom(memoHandles).Draw(t, "handle")
	node := rapid.SampledFrom([]string{"n0", "n1", "n2"}).Draw(t, "node")
	res, err := m.alloc(t).AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: n4, Num6: n6, Handle: h, Node: node})
	var ae *ipam.AssignError
	if err != nil && !errors.As(err, &ae) {
		t.Fatalf("AutoAssign: %v", err)
	}
	for _, x := range slices.Concat(res.IPv4, res.IPv6) {
		_, held := m.model[x.Addr]
		require.False(t, held, "%s assigned twice", x.Addr)
		m.model[x.Addr] = h
	}
}

func (m *memoMachine) AssignIPs(t *rapid.T) {
	h := rapid.SampledFrom(memoHandles).Draw(t, "handle")
	var addrs []netip.Addr
	for range rapid.IntRange(1, 3).Draw(t, "n") {
		p := rapid.SampledFrom(memoPools).Draw(t, "pool")
		addr := addrIn(t, p)
		if !slices.Contains(addrs, addr) {
			addrs = append(addrs, addr)
		}
	}
	taken := false
	for _, a := range addrs {
		_, held := m.model[a]
		taken = taken || held
	}
	res, err := m.alloc(t).AssignIPs(t.Context(), ipam.AssignIPsArgs{Addrs: addrs, Handle: h, Node: "n0"})
	if err != nil {
		require.True(t, taken, "%v: %v", addrs, err)
		require.Zero(t, res.Len())
		return
	}
	require.False(t, taken)
	for _, a := range addrs {
		m.model[a] = h
	}
}

func (m *memoMachine) Release(t *rapid.T) {
	if len(m.model) == 0 {
		t.Skip("empty")
	}
	addr := rapid.SampledFrom(slices.SortedFunc(maps.Keys(m.model), netip.Addr.Compare)).Draw(t, "addr")
	res, err := m.alloc(t).ReleaseIPs(t.Context(), ipam.Release{Addr: addr, Handle: m.model[addr]})
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{addr}, res.Released)
	delete(m.model, addr)
}

func (m *memoMachine) ReleaseByHandle(t *rapid.T) {
	h := rapid.SampledFrom(memoHandles).Draw(t, "handle")
	var want []netip.Addr
	for a, x := range m.model {
		if x == h {
			want = append(want, a)
			delete(m.model, a)
		}
	}
	got, err := m.alloc(t).ReleaseByHandle(t.Context(), h)
	if len(want) == 0 {
		require.ErrorIs(t, err, ipam.ErrHandleNotFound)
		return
	}
	require.NoError(t, err)
	require.ElementsMatch(t, want, got)
}

func (m *memoMachine) ReleaseHostAffinities(t *rapid.T) {
	node := rapid.SampledFrom([]string{"n0", "n1", "n2"}).Draw(t, "node")
	_, err := m.alloc(t).ReleaseHostAffinities(t.Context(), node, rapid.Bool().Draw(t, "requireEmpty"))
	if err != nil {
		require.ErrorIs(t, err, ipam.ErrBlockNotEmpty)
	}
}

func (m *memoMachine) Check(t *rapid.T) {
	ctx := t.Context()
	recs, err := m.store.List(ctx, ipam.KindBlock, ipam.KeyRange{})
	require.NoError(t, err)
	seen := map[netip.Addr]string{}
	perHandle := map[string]map[netip.Prefix]int{}
	for _, r := range recs {
		var b block.Block
		require.NoError(t, b.UnmarshalBinary(r.Value))
		for addr, al := range b.All() {
			seen[addr] = al.Owner.Handle
			if perHandle[al.Owner.Handle] == nil {
				perHandle[al.Owner.Handle] = map[netip.Prefix]int{}
			}
			perHandle[al.Owner.Handle][b.Prefix()]++
		}
	}
	require.Equal(t, m.model, seen)
	hrecs, err := m.store.List(ctx, ipam.KindHandle, ipam.KeyRange{})
	require.NoError(t, err)
	require.Len(t, hrecs, len(perHandle))
	for _, r := range hrecs {
		counts, err := ipam.DecodeHandle(r.Value)
		require.NoError(t, err)
		require.Equal(t, perHandle[r.Key], counts, "handle %s", r.Key)
	}
	rep, err := m.allocs[0].Check(ctx)
	require.NoError(t, err)
	require.True(t, rep.Clean(), "%v", rep.Problems)
}

func TestHandleMemoSharedHandles(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := &memoMachine{store: memstore.New(), model: map[netip.Addr]string{}}
		for i := range 3 {
			var s ipam.Store = bytesCommits{m.store, m.store, m.store}
			if i == 2 && rapid.Bool().Draw(t, "keeper") {
				s = m.store
			}
			a, err := ipam.New(s, ipam.Options{})
			require.NoError(t, err, fmt.Sprint(i))
			m.allocs = append(m.allocs, a)
		}
		for _, p := range memoPools {
			require.NoError(t, m.allocs[0].CreatePool(t.Context(), p))
		}
		t.Repeat(rapid.StateMachineActions(m))
	})
}
