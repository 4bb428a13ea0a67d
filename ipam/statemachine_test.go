package ipam_test

import (
	"errors"
	"fmt"
	"maps"
	"math/big"
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

// The pools the state machine draws from: small, so that blocks fill up,
// nodes borrow and pools run out within a few dozen steps.
var machinePools = []pool.Pool{
	{Name: "a4", CIDR: netip.MustParsePrefix("10.0.0.0/27"), BlockSize: 29},
	{Name: "b4", CIDR: netip.MustParsePrefix("10.0.1.0/28"), BlockSize: 30},
	{Name: "c6", CIDR: netip.MustParsePrefix("fd00::/124"), BlockSize: 126},
	{Name: "lb", CIDR: netip.MustParsePrefix("10.0.2.0/28"), BlockSize: 30, AllowedUses: []pool.Use{pool.UseLoadBalancer}},
}

// machineAlts re-create the machine's pools with other block sizes, which
// must be refused while blocks of the old size hold addresses.
var machineAlts = []pool.Pool{
	{Name: "a4", CIDR: netip.MustParsePrefix("10.0.0.0/27"), BlockSize: 28},
	{Name: "b4", CIDR: netip.MustParsePrefix("10.0.1.0/28"), BlockSize: 29},
	{Name: "c6", CIDR: netip.MustParsePrefix("fd00::/124"), BlockSize: 125},
	{Name: "lb", CIDR: netip.MustParsePrefix("10.0.2.0/28"), BlockSize: 29, AllowedUses: []pool.Use{pool.UseLoadBalancer}},
}

var machineNodes = []string{"n0", "n1", "n2", "n3"}

type modelAlloc struct {
	handle string
	seq    uint64
	node   string
}

// machine drives several allocators sharing one memstore, as several
// processes share a datastore, and keeps a model of what must be assigned.
type machine struct {
	ctx     *rapid.T
	store   *memstore.Store
	allocs  []*ipam.Allocator
	clock   *clock
	config  ipam.Config
	live    map[string]bool // pools that exist, by name
	enabled map[string]bool
	shape   map[string]pool.Pool // each pool as last created
	model   map[netip.Addr]modelAlloc
	handles int
}

func newMachine(t *rapid.T) *machine {
	m := &machine{
		ctx:     t,
		store:   memstore.New(),
		clock:   newClock(),
		live:    map[string]bool{},
		enabled: map[string]bool{},
		shape:   map[string]pool.Pool{},
		model:   map[netip.Addr]modelAlloc{},
	}
	for i := range 3 {
		// Some allocators write blocks as bytes, as over a remote store,
		// and some hand them to memstore to keep (ipam.BlockKeeper); some
		// write an assignment's records in one commit (ipam.Committer),
		// some one by one: all must mix on one store.
		var s ipam.Store = m.store
		bytes := rapid.Bool().Draw(t, fmt.Sprintf("bytes%d", i))
		commits := rapid.Bool().Draw(t, fmt.Sprintf("commits%d", i))
		switch {
		case bytes && commits:
			s = bytesCommits{m.store, m.store, m.store}
		case bytes:
			s = bytesOnly{m.store, m.store}
		case !commits:
			s = withoutCommits{Store: m.store}
		}
		a, err := ipam.New(s, ipam.Options{Now: m.clock.Now})
		require.NoError(t, err)
		m.allocs = append(m.allocs, a)
	}
	m.config = ipam.Config{
		StrictAffinity:     rapid.Bool().Draw(t, "strict"),
		AutoAllocateBlocks: true,
		MaxBlocksPerHost:   rapid.IntRange(0, 2).Draw(t, "maxBlocks"),
	}
	require.NoError(t, m.allocs[0].SetConfig(t.Context(), m.config))
	for _, p := range machinePools {
		require.NoError(t, m.allocs[0].CreatePool(t.Context(), p))
		m.live[p.Name], m.enabled[p.Name] = true, true
		m.shape[p.Name] = p
	}
	return m
}

func (m *machine) alloc(t *rapid.T) *ipam.Allocator {
	return m.allocs[rapid.IntRange(0, len(m.allocs)-1).Draw(t, "allocator")]
}

func (m *machine) node(t *rapid.T) string { return rapid.SampledFrom(machineNodes).Draw(t, "node") }

func (m *machine) newHandle() string {
	m.handles++
	return fmt.Sprintf("h%d", m.handles)
}

func (m *machine) modelHandles() []string {
	set := map[string]bool{}
	for _, a := range m.model {
		set[a.handle] = true
	}
	return slices.Sorted(maps.Keys(set))
}

func (m *machine) modelAddrs() []netip.Addr {
	return slices.SortedFunc(maps.Keys(m.model), netip.Addr.Compare)
}

// freeIn counts the addresses of enabled pools of a family, for
// LoadBalancer addresses or for workloads, not in the model.
func (m *machine) freeIn(is4, lb bool) int {
	free := 0
	for _, p := range m.shape {
		if !m.live[p.Name] || !m.enabled[p.Name] || p.CIDR.Addr().Is4() != is4 || p.Allows(pool.UseLoadBalancer) != lb {
			continue
		}
		size := 1 << (p.CIDR.Addr().BitLen() - p.CIDR.Bits())
		used := 0
		for a := range m.model {
			if p.CIDR.Contains(a) {
				used++
			}
		}
		free += size - used
	}
	return free
}

func (m *machine) record(t *rapid.T, node, handle string, got []ipam.Assigned) {
	for _, x := range got {
		if prev, ok := m.model[x.Addr]; ok {
			t.Fatalf("%s handed out to %s while held by %s", x.Addr, handle, prev.handle)
		}
		m.model[x.Addr] = modelAlloc{handle: handle, seq: x.Seq, node: node}
	}
}

func (m *machine) AutoAssign(t *rapid.T) {
	m.autoAssign(t, rapid.IntRange(0, 5).Draw(t, "n4"), rapid.IntRange(0, 3).Draw(t, "n6"))
}

// AutoAssignBatch asks for more addresses than a block holds, so that the
// request claims several blocks at once (a run, see assignHeld), besides
// the node's own.
func (m *machine) AutoAssignBatch(t *rapid.T) {
	m.autoAssign(t, rapid.IntRange(0, 24).Draw(t, "n4"), rapid.IntRange(0, 12).Draw(t, "n6"))
}

func (m *machine) autoAssign(t *rapid.T, n4, n6 int) {
	if n4+n6 == 0 {
		t.Skip("nothing asked")
	}
	partial := rapid.Bool().Draw(t, "partial")
	node, handle := m.node(t), m.newHandle()
	// LoadBalancer addresses are no node's: their blocks are the virtual
	// owner's.
	lb := rapid.IntRange(0, 3).Draw(t, "lb") == 0
	var use pool.Use
	if lb {
		node, use = "", pool.UseLoadBalancer
	}
	free4, free6 := m.freeIn(true, lb), m.freeIn(false, lb)
	res, err := m.alloc(t).AutoAssign(t.Context(), ipam.AutoAssignArgs{
		Num4: n4, Num6: n6, Handle: handle, Node: node, Partial: partial, Use: use,
	})
	var ae *ipam.AssignError
	switch {
	case err == nil:
		require.Len(t, res.IPv4, n4)
		require.Len(t, res.IPv6, n6)
	case errors.As(err, &ae):
		if !partial {
			require.Zero(t, res.Len(), "all-or-nothing")
		}
		require.Equal(t, res, ae.Result)
		if errors.Is(err, ipam.ErrBlockLimit) {
			require.True(t, m.config.MaxBlocksPerHost > 0 && !lb, "a cap without one: %v", err)
		}
		if errors.Is(err, ipam.ErrStrictAffinity) {
			require.True(t, m.config.StrictAffinity, "%v", err)
		}
		// With borrowing allowed and no cap (which the virtual owner does
		// not have), every free address is reachable: a failure means
		// there really was not enough space.
		if !m.config.StrictAffinity && (m.config.MaxBlocksPerHost == 0 || lb) {
			require.True(t, (ae.Short4 > 0 && free4 < n4) || (ae.Short6 > 0 && free6 < n6) || ae.Short4+ae.Short6 == 0,
				"AutoAssign(%d, %d) short %d/%d with %d/%d free: %v", n4, n6, ae.Short4, ae.Short6, free4, free6, err)
		}
	default:
		t.Fatalf("AutoAssign: %v", err)
	}
	for _, x := range res.IPv4 {
		require.True(t, x.Addr.Is4() && x.Block.Contains(x.Addr))
	}
	for _, x := range res.IPv6 {
		require.True(t, x.Addr.Is6() && x.Block.Contains(x.Addr))
	}
	m.record(t, node, handle, res.IPv4)
	m.record(t, node, handle, res.IPv6)
}

// poolAddr draws one of the first n machine pools and an address in it.
func poolAddr(t *rapid.T, n int) (pool.Pool, netip.Addr) {
	p := machinePools[rapid.IntRange(0, n-1).Draw(t, "pool")]
	return p, addrIn(t, p)
}

// addrIn draws an address in p.
func addrIn(t *rapid.T, p pool.Pool) netip.Addr {
	size := 1 << (p.CIDR.Addr().BitLen() - p.CIDR.Bits())
	addr := p.CIDR.Addr()
	for range rapid.IntRange(0, size-1).Draw(t, "offset") {
		addr = addr.Next()
	}
	return addr
}

// assignedIP checks AssignIP's answer for addr in p against the model,
// records what it assigned, and reports whether it did.
func (m *machine) assignedIP(t *rapid.T, p pool.Pool, node, handle string, x ipam.Assigned, err error) bool {
	_, taken := m.model[x.Addr]
	switch {
	case !m.live[p.Name] || !m.enabled[p.Name]:
		require.ErrorIs(t, err, ipam.ErrNotInPool)
	case errors.Is(err, ipam.ErrStrictAffinity):
		require.True(t, m.config.StrictAffinity)
	case taken:
		require.ErrorIs(t, err, ipam.ErrInUse)
	default:
		require.NoError(t, err)
		m.record(t, node, handle, []ipam.Assigned{x})
		return true
	}
	return false
}

func (m *machine) AssignIP(t *rapid.T) {
	p, addr := poolAddr(t, len(machinePools))
	node, handle := m.node(t), m.newHandle()
	var use pool.Use
	if p.Allows(pool.UseLoadBalancer) {
		node, use = "", pool.UseLoadBalancer
	}
	x, err := m.alloc(t).AssignIP(t.Context(), ipam.AssignIPArgs{Addr: addr, Handle: handle, Node: node, Use: use})
	if err != nil {
		x.Addr = addr
	}
	if m.assignedIP(t, p, node, handle, x, err) {
		require.Equal(t, addr, x.Addr)
	}
}

// AssignIPs asks for two or three given addresses, all or none, of a
// node's pools (both families) or of the LoadBalancer pool.
func (m *machine) AssignIPs(t *rapid.T) {
	node, handle := m.node(t), m.newHandle()
	var use pool.Use
	from := machinePools[:3]
	if rapid.Bool().Draw(t, "lb") {
		node, use, from = "", pool.UseLoadBalancer, machinePools[3:]
	}
	var addrs []netip.Addr
	var pools []pool.Pool
	for range rapid.IntRange(2, 3).Draw(t, "n") {
		p := rapid.SampledFrom(from).Draw(t, "pool")
		addr := addrIn(t, p)
		if !slices.Contains(addrs, addr) {
			addrs, pools = append(addrs, addr), append(pools, p)
		}
	}
	res, err := m.alloc(t).AssignIPs(t.Context(), ipam.AssignIPsArgs{Addrs: addrs, Handle: handle, Node: node, Use: use})
	unusable, taken := false, false
	for i, addr := range addrs {
		_, held := m.model[addr]
		taken = taken || held
		unusable = unusable || !m.live[pools[i].Name] || !m.enabled[pools[i].Name]
	}
	switch {
	case unusable:
		require.ErrorIs(t, err, ipam.ErrNotInPool) // found before any write
	case err == nil:
		require.False(t, taken, "assigned %v, some of them taken", addrs)
		var got []netip.Addr
		for _, x := range slices.Concat(res.IPv4, res.IPv6) {
			got = append(got, x.Addr)
		}
		require.ElementsMatch(t, addrs, got)
		m.record(t, node, handle, res.IPv4)
		m.record(t, node, handle, res.IPv6)
		return
	case errors.Is(err, ipam.ErrStrictAffinity):
		require.True(t, m.config.StrictAffinity, "%v", err)
	default:
		require.True(t, taken, "%v refused: %v", addrs, err)
		require.ErrorIs(t, err, ipam.ErrInUse)
	}
	var ae *ipam.AddrError
	if len(addrs) > 1 && !unusable {
		require.ErrorAs(t, err, &ae)
		require.Contains(t, addrs, ae.Addr)
	}
	require.Zero(t, res.Len(), "all or none") // and Check finds the store as the model
}

// RepeatAssign sends a request with NewHandle, under a new handle or one
// that holds addresses: a held handle gets ErrHandleExists and nothing
// else changes. Either way AssignedByHandle then gives back exactly what
// the handle holds.
func (m *machine) RepeatAssign(t *rapid.T) {
	handle := m.newHandle()
	if hs := m.modelHandles(); len(hs) > 0 && rapid.Bool().Draw(t, "held") {
		handle = rapid.SampledFrom(hs).Draw(t, "handle")
	}
	node := m.node(t)
	var held []ipam.Assigned
	for addr, x := range m.model {
		if x.handle == handle {
			held = append(held, ipam.Assigned{Addr: addr, Seq: x.seq})
		}
	}
	a := m.alloc(t)
	if rapid.Bool().Draw(t, "specific") {
		// AssignIP of an address in a workload pool, maybe the handle's own.
		p, addr := poolAddr(t, 3)
		x, err := a.AssignIP(t.Context(), ipam.AssignIPArgs{Addr: addr, Handle: handle, Node: node, NewHandle: true})
		if err != nil {
			x.Addr = addr
		}
		switch {
		case len(held) > 0:
			require.ErrorIs(t, err, ipam.ErrHandleExists)
		case m.assignedIP(t, p, node, handle, x, err):
			require.Equal(t, addr, x.Addr)
			held = append(held, ipam.Assigned{Addr: x.Addr, Seq: x.Seq})
		}
		m.requireHeld(t, a, handle, held)
		return
	}
	res, err := a.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: 1, Handle: handle, Node: node, NewHandle: true})
	var ae *ipam.AssignError
	switch {
	case len(held) > 0:
		require.ErrorIs(t, err, ipam.ErrHandleExists)
		require.Zero(t, res.Len())
	case err == nil:
		require.Len(t, res.IPv4, 1)
		m.record(t, node, handle, res.IPv4)
		held = append(held, ipam.Assigned{Addr: res.IPv4[0].Addr, Seq: res.IPv4[0].Seq})
	case errors.As(err, &ae):
		require.Zero(t, res.Len(), "all-or-nothing")
		require.NotErrorIs(t, err, ipam.ErrHandleExists)
	default:
		t.Fatalf("AutoAssign with NewHandle: %v", err)
	}
	m.requireHeld(t, a, handle, held)
}

// requireHeld checks that AssignedByHandle gives back exactly held (by
// address and sequence number).
func (m *machine) requireHeld(t *rapid.T, a *ipam.Allocator, handle string, held []ipam.Assigned) {
	got, err := a.AssignedByHandle(t.Context(), handle)
	if len(held) == 0 {
		require.ErrorIs(t, err, ipam.ErrHandleNotFound)
		return
	}
	require.NoError(t, err)
	var pairs []ipam.Assigned
	for _, x := range append(got.IPv4, got.IPv6...) {
		require.True(t, x.Block.Contains(x.Addr), "%v", x)
		if p, ok := m.shape[x.Pool]; ok && m.live[x.Pool] {
			require.True(t, p.CIDR.Overlaps(x.Block), "%v", x)
		}
		pairs = append(pairs, ipam.Assigned{Addr: x.Addr, Seq: x.Seq})
	}
	require.ElementsMatch(t, held, pairs)
}

func (m *machine) Release(t *rapid.T) {
	if len(m.model) == 0 {
		t.Skip("nothing assigned")
	}
	addr := rapid.SampledFrom(m.modelAddrs()).Draw(t, "addr")
	held := m.model[addr]
	rel := ipam.Release{Addr: addr}
	kind := rapid.SampledFrom([]string{"plain", "handle", "seq", "stale-seq", "wrong-handle"}).Draw(t, "check")
	switch kind {
	case "handle":
		rel.Handle = held.handle
	case "seq":
		rel.Seq = held.seq
	case "stale-seq":
		rel.Seq = held.seq - 1
	case "wrong-handle":
		rel.Handle = held.handle + "-not"
	}
	res, err := m.alloc(t).ReleaseIPs(t.Context(), rel)
	switch kind {
	case "stale-seq":
		require.ErrorIs(t, err, ipam.ErrSeqMismatch)
		require.Empty(t, res.Released)
	case "wrong-handle":
		require.ErrorIs(t, err, ipam.ErrHandleMismatch)
		require.Empty(t, res.Released)
	default:
		require.NoError(t, err)
		require.Equal(t, []netip.Addr{addr}, res.Released, "release %+v: %+v", rel, res)
		delete(m.model, addr)
	}
}

func (m *machine) ReleaseUnassigned(t *rapid.T) {
	p := machinePools[rapid.IntRange(0, len(machinePools)-1).Draw(t, "pool")]
	addr := p.CIDR.Addr().Next()
	if _, ok := m.model[addr]; ok {
		t.Skip("assigned")
	}
	res, err := m.alloc(t).ReleaseIPs(t.Context(), ipam.Release{Addr: addr})
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{addr}, res.NotAllocated, "release of %s: %+v", addr, res)
}

func (m *machine) ReleaseByHandle(t *rapid.T) {
	handles := m.modelHandles()
	if len(handles) == 0 {
		t.Skip("no handles")
	}
	h := rapid.SampledFrom(handles).Draw(t, "handle")
	got, err := m.alloc(t).ReleaseByHandle(t.Context(), h)
	require.NoError(t, err)
	var want []netip.Addr
	for a, x := range m.model {
		if x.handle == h {
			want = append(want, a)
			delete(m.model, a)
		}
	}
	require.ElementsMatch(t, want, got)
	_, err = m.alloc(t).ReleaseByHandle(t.Context(), h)
	require.ErrorIs(t, err, ipam.ErrHandleNotFound)
}

func (m *machine) ReleaseHostAffinities(t *rapid.T) {
	_, err := m.alloc(t).ReleaseHostAffinities(t.Context(), m.node(t), rapid.Bool().Draw(t, "requireEmpty"))
	if err != nil {
		require.ErrorIs(t, err, ipam.ErrBlockNotEmpty)
	}
}

// machineBlock draws a block of one of the pools, in its current shape.
func (m *machine) machineBlock(t *rapid.T) (pool.Pool, netip.Prefix) {
	p := m.shape[machinePools[rapid.IntRange(0, len(machinePools)-1).Draw(t, "pool")].Name]
	n := 1 << (p.BlockSize - p.CIDR.Bits())
	addr := p.CIDR.Addr()
	step := 1 << (p.CIDR.Addr().BitLen() - p.BlockSize)
	for range rapid.IntRange(0, n-1).Draw(t, "block") * step {
		addr = addr.Next()
	}
	return p, netip.PrefixFrom(addr, p.BlockSize)
}

// owner draws whom an affinity call is for: a node, or "" for the virtual
// owner of LoadBalancer blocks (the LoadBalancer calls).
func (m *machine) owner(t *rapid.T) string {
	if rapid.IntRange(0, 3).Draw(t, "virtual") == 0 {
		return ""
	}
	return m.node(t)
}

func (m *machine) ClaimAffinity(t *rapid.T) {
	p, blk := m.machineBlock(t)
	owner := m.owner(t)
	var claimed []netip.Prefix
	var err error
	if owner == "" {
		claimed, err = m.alloc(t).ClaimLoadBalancerAffinity(t.Context(), blk)
	} else {
		claimed, err = m.alloc(t).ClaimAffinity(t.Context(), owner, blk)
	}
	switch {
	case !m.live[p.Name] || !m.enabled[p.Name]:
		require.ErrorIs(t, err, ipam.ErrNotInPool)
	case (owner == "") != p.Allows(pool.UseLoadBalancer):
		require.ErrorIs(t, err, ipam.ErrInvalid, "the virtual owner, and only it, holds LoadBalancer blocks")
	case err != nil:
		require.ErrorIs(t, err, ipam.ErrAffinityConflict)
		require.Empty(t, claimed)
	default:
		require.Equal(t, []netip.Prefix{blk}, claimed)
	}
}

func (m *machine) ReleaseAffinity(t *rapid.T) {
	_, blk := m.machineBlock(t)
	requireEmpty := rapid.Bool().Draw(t, "requireEmpty")
	var err error
	if owner := m.owner(t); owner == "" {
		err = m.alloc(t).ReleaseLoadBalancerAffinity(t.Context(), blk, requireEmpty)
	} else {
		err = m.alloc(t).ReleaseAffinity(t.Context(), owner, blk, requireEmpty)
	}
	if err != nil {
		require.ErrorIs(t, err, ipam.ErrBlockNotEmpty)
	}
}

// EnsureBlock: a block returned is the node's, of the family asked for,
// in an enabled workload pool; a failure leaves the node's blocks as they
// were.
func (m *machine) EnsureBlock(t *rapid.T) {
	node := m.node(t)
	is4 := rapid.Bool().Draw(t, "v4")
	args := ipam.EnsureBlockArgs{Node: node, IPv4: is4, IPv6: !is4 || rapid.Bool().Draw(t, "both")}
	before := m.blocksOf(t, block.Host(node))
	v4, v6, err := m.alloc(t).EnsureBlock(t.Context(), args)
	if err != nil {
		require.True(t, errors.Is(err, ipam.ErrNoSpace) || errors.Is(err, pool.ErrNoPool), "%v", err)
		require.Equal(t, before, m.blocksOf(t, block.Host(node)), "a failed EnsureBlock changed the node's blocks")
		return
	}
	require.Equal(t, args.IPv4, v4.IsValid())
	require.Equal(t, args.IPv6, v6.IsValid())
	after := m.blocksOf(t, block.Host(node))
	for _, blk := range []netip.Prefix{v4, v6} {
		if !blk.IsValid() {
			continue
		}
		require.Contains(t, after, blk, "the block returned is the node's")
		live := false
		for name, p := range m.shape {
			if m.live[name] && m.enabled[name] && p.CIDR.Contains(blk.Addr()) {
				live = !p.Allows(pool.UseLoadBalancer)
			}
		}
		require.True(t, live, "block %s of no enabled workload pool", blk)
	}
}

// blocksOf lists the blocks affine to aff, per the block records.
func (m *machine) blocksOf(t *rapid.T, aff block.Affinity) []netip.Prefix {
	recs, err := m.store.List(t.Context(), ipam.KindBlock, ipam.KeyRange{})
	require.NoError(t, err)
	var out []netip.Prefix
	for _, r := range recs {
		var b block.Block
		require.NoError(t, b.UnmarshalBinary(r.Value), "block %s", r.Key)
		if b.Affinity() == aff {
			out = append(out, b.Prefix())
		}
	}
	return out
}

func (m *machine) TogglePool(t *rapid.T) {
	p := machinePools[rapid.IntRange(0, len(machinePools)-1).Draw(t, "pool")]
	if !m.live[p.Name] {
		t.Skip("deleted")
	}
	a := m.alloc(t)
	if m.enabled[p.Name] {
		require.NoError(t, a.DisablePool(t.Context(), p.Name))
	} else {
		require.NoError(t, a.EnablePool(t.Context(), p.Name))
	}
	m.enabled[p.Name] = !m.enabled[p.Name]
}

func (m *machine) DeleteOrCreatePool(t *rapid.T) {
	i := rapid.IntRange(0, len(machinePools)-1).Draw(t, "pool")
	p := machinePools[i]
	a := m.alloc(t)
	if m.live[p.Name] {
		require.NoError(t, a.DeletePool(t.Context(), p.Name))
		m.live[p.Name] = false
		return
	}
	if rapid.Bool().Draw(t, "otherBlockSize") {
		p = machineAlts[i]
	}
	err := a.CreatePool(t.Context(), p)
	if errors.Is(err, ipam.ErrLeftoverBlocks) {
		// Allowed only while blocks of another size hold addresses.
		held := false
		for addr := range m.model {
			held = held || p.CIDR.Contains(addr)
		}
		require.True(t, held, "refused %+v with no address held: %v", p.BlockSize, err)
		require.NotEqual(t, m.shape[p.Name].BlockSize, p.BlockSize)
		return
	}
	require.NoError(t, err)
	m.live[p.Name], m.enabled[p.Name] = true, true
	m.shape[p.Name] = p
}

func (m *machine) Check(t *rapid.T) {
	ctx := t.Context()
	// Every block decodes, blocks do not overlap, and their allocations are
	// exactly the model.
	recs, err := m.store.List(ctx, ipam.KindBlock, ipam.KeyRange{})
	require.NoError(t, err)
	seen := map[netip.Addr]modelAlloc{}
	perHandle := map[string]map[netip.Prefix]int{}
	var prev netip.Prefix
	for _, r := range recs {
		var b block.Block
		require.NoError(t, b.UnmarshalBinary(r.Value), "block %s", r.Key)
		p := b.Prefix()
		if prev.IsValid() {
			require.False(t, prev.Overlaps(p), "blocks %s and %s overlap", prev, p)
		}
		prev = p
		inPool, lb := false, false
		for _, mp := range slices.Concat(machinePools, machineAlts) {
			if mp.CIDR.Contains(p.Addr()) && p.Bits() == mp.BlockSize {
				inPool, lb = true, mp.Allows(pool.UseLoadBalancer)
			}
		}
		require.True(t, inPool, "block %s lies in no pool it could have come from", p)
		if aff := b.Affinity(); !aff.IsZero() {
			require.Equal(t, lb, aff == block.Virtual(ipam.VirtualLoadBalancer), "block %s affine to %s", p, aff)
		}
		require.False(t, b.Empty() && b.Affinity().IsZero(), "empty block %s without affinity was kept", p)
		if aff := b.Affinity(); !aff.IsZero() {
			// The affinity index lists every affine block.
			_, err := m.store.Get(ctx, ipam.KindAffinity, aff.String()+"/"+r.Key)
			require.NoError(t, err, "block %s affine to %s has no index record", p, aff)
		}
		for addr, al := range b.All() {
			seen[addr] = modelAlloc{handle: al.Owner.Handle, seq: al.Seq, node: al.Owner.Attrs[ipam.AttrNode]}
			if perHandle[al.Owner.Handle] == nil {
				perHandle[al.Owner.Handle] = map[netip.Prefix]int{}
			}
			perHandle[al.Owner.Handle][p]++
		}
	}
	require.Equal(t, m.model, seen, "the store's allocations are the model's")

	// Handle counts are exact.
	for _, h := range m.modelHandles() {
		got, err := m.allocs[0].IPsByHandle(ctx, h)
		require.NoError(t, err)
		var want []netip.Addr
		for a, x := range m.model {
			if x.handle == h {
				want = append(want, a)
			}
		}
		require.ElementsMatch(t, want, got, "handle %s", h)
	}
	hrecs, err := m.store.List(ctx, ipam.KindHandle, ipam.KeyRange{})
	require.NoError(t, err)
	require.Len(t, hrecs, len(perHandle), "one handle record per handle holding addresses")
	for _, r := range hrecs {
		counts, err := ipam.DecodeHandle(r.Value)
		require.NoError(t, err)
		require.Equal(t, perHandle[r.Key], counts, "handle %s counts exactly what its blocks hold", r.Key)
	}

	// Utilization adds up.
	u, err := m.allocs[0].Utilization(ctx)
	require.NoError(t, err)
	var inUse uint64
	for _, pu := range u {
		inUse += pu.InUse
		sum := new(big.Int).Add(pu.Free, new(big.Int).SetUint64(pu.InUse+pu.Cooling))
		sum.Add(sum, pu.Reserved)
		require.Zero(t, sum.Cmp(pu.Capacity), "pool %q: free + in use + reserved + cooling != capacity", pu.Name)
		var blockUse int
		for _, bu := range pu.Blocks {
			require.Equal(t, bu.Capacity, bu.InUse+bu.Free+bu.Reserved+bu.Cooling)
			blockUse += bu.InUse
		}
		require.EqualValues(t, pu.InUse, blockUse)
	}
	require.EqualValues(t, len(m.model), inUse)
}

// bytesOnly hides a store's BlockKeeper capability, keeping Generations.
type bytesOnly struct {
	ipam.Store
	ipam.Generations
}

// bytesCommits is bytesOnly with Committer.
type bytesCommits struct {
	ipam.Store
	ipam.Generations
	ipam.Committer
}

func TestStateMachine(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := newMachine(t)
		t.Repeat(rapid.StateMachineActions(m))
	})
}
