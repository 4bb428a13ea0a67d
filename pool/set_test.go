package pool_test

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/pool"
)

// setMachine applies the same steps to a Set and to a map of pools, the
// trivially correct model, and checks after each step that they agree and
// that no two pools of the set overlap.
type setMachine struct {
	s     *pool.Set
	model map[string]pool.Pool
}

// drawCandidate draws pools crowded into 10.0.0.0/14 and fd00::/46, so that
// overlaps, duplicate names and invalid pools are all common.
func drawCandidate(t *rapid.T) pool.Pool {
	name := rapid.SampledFrom([]string{"a", "b", "c", "d", "e", "f", "g", "h", "Bad_Name"}).Draw(t, "name")
	var c netip.Prefix
	if rapid.IntRange(0, 3).Draw(t, "family") > 0 {
		bits := rapid.IntRange(14, 27).Draw(t, "bits4")
		a := netip.AddrFrom4([4]byte{10, byte(rapid.IntRange(0, 3).Draw(t, "b1")), byte(rapid.IntRange(0, 255).Draw(t, "b2")), 0})
		c = netip.PrefixFrom(a, bits)
		if rapid.IntRange(0, 9).Draw(t, "mask") > 0 {
			c = c.Masked()
		}
	} else {
		bits := rapid.IntRange(46, 124).Draw(t, "bits6")
		a := netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, byte(rapid.IntRange(0, 3).Draw(t, "b5"))})
		c = netip.PrefixFrom(a, bits).Masked()
	}
	return pool.Pool{
		Name:      name,
		CIDR:      c,
		BlockSize: rapid.SampledFrom([]int{0, 0, 24, 26, 122}).Draw(t, "blockSize"),
		Disabled:  rapid.Bool().Draw(t, "disabled"),
	}
}

func (m *setMachine) Add(t *rapid.T) {
	p := drawCandidate(t)
	err := m.s.Add(p)
	_, exists := m.model[p.Name]
	overlaps := false
	for _, o := range m.model {
		overlaps = overlaps || o.CIDR.Overlaps(p.CIDR.Masked())
	}
	wantOK := p.Validate() == nil && !exists && !overlaps
	require.Equal(t, wantOK, err == nil, "Add(%s %s /%d disabled=%v): %v", p.Name, p.CIDR, p.BlockSize, p.Disabled, err)
	if err != nil {
		require.Equal(t, exists, errors.Is(err, pool.ErrExists))
		require.Equal(t, overlaps, errors.Is(err, pool.ErrOverlap))
		return
	}
	m.model[p.Name] = p.WithDefaults()
}

func (m *setMachine) Update(t *rapid.T) {
	if len(m.model) == 0 {
		t.Skip("empty")
	}
	old := m.model[rapid.SampledFrom(sortedKeys(m.model)).Draw(t, "name")]
	p := old
	p.Disabled = rapid.Bool().Draw(t, "disabled")
	changeBS := rapid.IntRange(0, 4).Draw(t, "changeBlockSize") == 0
	if changeBS {
		p.BlockSize++
	}
	err := m.s.Update(p)
	wantOK := !changeBS && p.Validate() == nil
	require.Equal(t, wantOK, err == nil, "Update: %v", err)
	if err == nil {
		m.model[p.Name] = p.WithDefaults()
	}
}

func (m *setMachine) Remove(t *rapid.T) {
	name := rapid.SampledFrom([]string{"a", "b", "c", "d", "e", "f", "g", "h"}).Draw(t, "name")
	_, ok := m.model[name]
	require.Equal(t, ok, m.s.Remove(name))
	delete(m.model, name)
}

func (m *setMachine) ByAddr(t *rapid.T) {
	var a netip.Addr
	if rapid.Bool().Draw(t, "v4") {
		a = netip.AddrFrom4([4]byte{10, byte(rapid.IntRange(0, 4).Draw(t, "b1")), rapid.Byte().Draw(t, "b2"), rapid.Byte().Draw(t, "b3")})
	} else {
		a = netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, byte(rapid.IntRange(0, 4).Draw(t, "b5")), 15: rapid.Byte().Draw(t, "b15")})
	}
	want := ""
	for _, p := range m.model {
		if p.CIDR.Contains(a) {
			want = p.Name
		}
	}
	got, ok := m.s.ByAddr(a)
	require.Equal(t, want != "", ok, "ByAddr(%s)", a)
	if ok {
		require.Equal(t, want, got.Name)
	}
}

func (m *setMachine) Check(t *rapid.T) {
	all := m.s.All()
	require.Equal(t, len(m.model), m.s.Len())
	names := make([]string, len(all))
	for i, p := range all {
		names[i] = p.Name
		require.Equal(t, m.model[p.Name], *p)
		got, ok := m.s.Get(p.Name)
		require.True(t, ok)
		require.Same(t, p, got)
		for _, q := range all[i+1:] {
			require.False(t, p.CIDR.Overlaps(q.CIDR), "%s %s overlaps %s %s", p.Name, p.CIDR, q.Name, q.CIDR)
		}
	}
	require.Equal(t, sortedKeys(m.model), names, "All is by name")
}

func sortedKeys(m map[string]pool.Pool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// TestSetNeverOverlaps: whatever is added, updated and removed, the set
// agrees with its model and its pools never overlap.
func TestSetNeverOverlaps(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := &setMachine{s: new(pool.Set), model: map[string]pool.Pool{}}
		t.Repeat(rapid.StateMachineActions(m))
	})
}

func TestSetAddErrors(t *testing.T) {
	var s pool.Set
	require.NoError(t, s.Add(v4("default", "10.244.0.0/16")))
	old := v4("old", "10.96.0.0/16")
	old.Disabled = true
	require.NoError(t, s.Add(old))

	err := s.Add(v4("default", "10.0.0.0/16"))
	require.EqualError(t, err, `pool "default": name "default" is already in the set`)
	require.ErrorIs(t, err, pool.ErrExists)

	err = s.Add(v4("wide", "10.0.0.0/8"))
	require.EqualError(t, err, `pool "wide": cidr 10.0.0.0/8 overlaps pool "old" (10.96.0.0/16); cidr 10.0.0.0/8 overlaps pool "default" (10.244.0.0/16)`)
	require.ErrorIs(t, err, pool.ErrOverlap)

	err = s.Add(v4("inner", "10.96.4.0/24")) // inside a disabled pool: still an overlap
	require.EqualError(t, err, `pool "inner": cidr 10.96.4.0/24 overlaps pool "old" (10.96.0.0/16)`)

	// Validation problems and set problems come together.
	err = s.Add(v4("default", "10.244.0.1/24"))
	require.EqualError(t, err, `pool "default": cidr 10.244.0.1/24 is not masked; name "default" is already in the set; `+
		`cidr 10.244.0.1/24 overlaps pool "default" (10.244.0.0/16)`)
	require.Equal(t, 2, s.Len())

	err = s.Update(v4("ghost", "10.1.0.0/16"))
	require.EqualError(t, err, `pool "ghost": name "ghost" is not in the set`)
	require.ErrorIs(t, err, pool.ErrNotFound)
	require.False(t, s.Remove("ghost"))
}

// TestSetUpdateSubBlockPool: a disabled pool smaller than one block can
// stay in a set, and enabling it is refused with an error that says what
// can be done: not a blockSize change, which no update may make.
func TestSetUpdateSubBlockPool(t *testing.T) {
	var s pool.Set
	tiny := v4("tiny", "10.0.0.0/28")
	tiny.Disabled = true
	require.NoError(t, s.Add(tiny))
	tiny.Disabled = false
	err := s.Update(tiny)
	require.ErrorIs(t, err, pool.ErrBlockSize)
	require.EqualError(t, err, `pool "tiny": cidr 10.0.0.0/28 is smaller than one block (blockSize 26); only a disabled pool may be, `+
		`and blockSize cannot change: to use the range, delete the pool and create one with blockSize 28 or more`)
	got, _ := s.Get("tiny")
	require.True(t, got.Disabled, "the set is unchanged")
}

func TestSetStoresItsOwnCopy(t *testing.T) {
	var s pool.Set
	p := v4("a", "10.0.0.0/16")
	p.AllowedUses = []pool.Use{pool.UseWorkload}
	require.NoError(t, s.Add(p))
	p.AllowedUses[0] = pool.UseTunnel // the caller's slice, not the set's
	got, _ := s.Get("a")
	require.Equal(t, []pool.Use{pool.UseWorkload}, got.AllowedUses)
	require.Equal(t, 26, got.BlockSize, "defaults applied")
	require.Equal(t, "all()", got.NodeSelector)

	// Update installs a new pool: the old pointer still describes the old one.
	q := *got
	q.Disabled = true
	require.NoError(t, s.Update(q))
	require.False(t, got.Disabled)
	now, _ := s.Get("a")
	require.True(t, now.Disabled)
	byAddr, _ := s.ByAddr(netip.MustParseAddr("10.0.3.4"))
	require.Same(t, now, byAddr)
}

func TestSetIPSetFreeFindFree(t *testing.T) {
	var s pool.Set
	for _, p := range []pool.Pool{v4("a", "10.0.0.0/16"), v4("b", "10.2.0.0/16"), v4("c", "fd00::/48")} {
		require.NoError(t, s.Add(p))
	}
	union := s.IPSet()
	require.Equal(t, []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("10.2.0.0/16"), netip.MustParsePrefix("fd00::/48"),
	}, union.Prefixes())

	free := s.Free(netip.MustParsePrefix("10.0.0.0/14"))
	require.Equal(t, []netip.Prefix{
		netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.3.0.0/16"),
	}, free.Prefixes())

	got, ok := s.FindFree(netip.MustParsePrefix("10.0.0.0/8"), 16)
	require.True(t, ok)
	require.Equal(t, "10.1.0.0/16", got.String())
	got, ok = s.FindFree(netip.MustParsePrefix("10.0.0.0/8"), 15)
	require.True(t, ok)
	require.Equal(t, "10.4.0.0/15", got.String())
	_, ok = s.FindFree(netip.MustParsePrefix("10.0.0.0/15"), 15)
	require.False(t, ok)
	_, ok = s.FindFree(netip.MustParsePrefix("10.0.0.0/16"), 8)
	require.False(t, ok, "bits shorter than within")

	// Link-local space is never offered.
	got, ok = s.FindFree(netip.MustParsePrefix("169.254.0.0/15"), 16)
	require.True(t, ok)
	require.Equal(t, "169.255.0.0/16", got.String())
	require.Empty(t, s.Free(netip.Prefix{}).Prefixes())
	require.Empty(t, new(pool.Set).IPSet().Prefixes())
}

func TestSetNoAllocs(t *testing.T) {
	s := hundredPools(t)
	a := netip.MustParseAddr("10.42.3.4")
	require.Zero(t, testing.AllocsPerRun(100, func() {
		if p, ok := s.ByAddr(a); !ok || p.Name != "rack-42" {
			t.Fatal("ByAddr")
		}
		if _, ok := s.Get("rack-7"); !ok {
			t.Fatal("Get")
		}
	}))
}

// TestSetConcurrentReads runs readers on a shared set under -race.
func TestSetConcurrentReads(t *testing.T) {
	s := hundredPools(t)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				r := pool.Request{Family: pool.IPv4, Node: "n", NodeLabels: labels("rack", fmt.Sprint((g*7+i)%100))}
				pools, err := s.Select(r)
				if err != nil || len(pools) != 2 {
					t.Errorf("Select: %v %v", pools, err)
					return
				}
				s.ByAddr(netip.MustParseAddr("10.1.2.3"))
				_ = s.All()
			}
		}()
	}
	wg.Wait()
}

// hundredPools is a set of 100 rack pools with a nodeSelector each, and a
// shared pool for all nodes.
func hundredPools(t testing.TB) *pool.Set {
	var s pool.Set
	for i := range 100 {
		p := v4(fmt.Sprintf("rack-%d", i), fmt.Sprintf("10.%d.0.0/16", i))
		p.NodeSelector = fmt.Sprintf("rack == %q", fmt.Sprint(i))
		require.NoError(t, s.Add(p))
	}
	require.NoError(t, s.Add(v4("shared", "172.16.0.0/12")))
	require.True(t, slices.IsSortedFunc(s.All(), func(a, b *pool.Pool) int { return strings.Compare(a.Name, b.Name) }))
	return &s
}

// TestPoolString: a pool prints its fields by name, the same before and
// after a Set has parsed its selectors (which it caches inside the pool),
// and every exported field is printed.
func TestPoolString(t *testing.T) {
	p := pool.Pool{Name: "a", CIDR: netip.MustParsePrefix("10.0.0.0/24")}.WithDefaults()
	want := "{Name:a Version:0 CIDR:10.0.0.0/24 BlockSize:26 NodeSelector:all() NamespaceSelector: Disabled:false " +
		"AllowedUses:[Workload Tunnel] AssignmentMode:Automatic IPIPMode:Never VXLANMode:Never NATOutgoing:false DisableBGPExport:false}"
	require.Equal(t, want, fmt.Sprint(p))
	require.Equal(t, want, fmt.Sprintf("%+v", p))
	s, err := pool.NewSet(p)
	require.NoError(t, err)
	got, ok := s.Get("a")
	require.True(t, ok)
	require.True(t, got.SelectsNode("n", nil))
	require.Equal(t, want, fmt.Sprintf("%v", *got))
	typ := reflect.TypeFor[pool.Pool]()
	for i := range typ.NumField() {
		if f := typ.Field(i); f.IsExported() {
			require.Regexp(t, `[{ ]`+f.Name+`:`, want, "String leaves out %s", f.Name)
		}
	}
}
