package ipam_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

// The tests here hold AutoAssign's lane (autoAssignLane) to what AutoAssign
// does without it: two stores, one used through allocators with the lane
// and one through allocators without, are given the same operations, and
// must give the same answers and hold the same records after each.

// laneStore is a memstore that runs fn, once, just before the at-th write
// it is asked for since fn was set: another allocator's work landing in
// the middle of a request, between its reads and its writes. It keeps
// Generations and BlockKeeper.
type laneStore struct {
	*memstore.Store
	writes int
	at     int
	fn     func()
	landed string // what fn did, and its answer
	// base is, per block, its counter when it was last created: blocks
	// start counting at the wall clock, so the two stores' sequence
	// numbers are compared as offsets from it.
	base map[netip.Prefix]uint64
}

func (s *laneStore) write() {
	s.writes++
	if s.fn != nil && s.writes == s.at {
		fn := s.fn
		s.fn = nil
		fn()
	}
}

func (s *laneStore) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (ipam.Revision, error) {
	s.write()
	return s.Store.Create(ctx, kind, key, value)
}

func (s *laneStore) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	s.write()
	return s.Store.Update(ctx, kind, key, value, rev)
}

func (s *laneStore) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	s.write()
	return s.Store.Delete(ctx, kind, key, rev)
}

func (s *laneStore) CreateBlock(ctx context.Context, key string, b *block.Block) (ipam.Revision, error) {
	s.write()
	rev, err := s.Store.CreateBlock(ctx, key, b)
	if err == nil {
		s.base[b.Prefix()] = b.Seq()
	}
	return rev, err
}

func (s *laneStore) UpdateBlock(ctx context.Context, key string, b *block.Block, rev ipam.Revision) (ipam.Revision, error) {
	s.write()
	return s.Store.UpdateBlock(ctx, key, b, rev)
}

// Commit counts as one write: fn lands before it or after it, never
// inside.
func (s *laneStore) Commit(ctx context.Context, writes []ipam.Write, revs []ipam.Revision) error {
	s.write()
	err := s.Store.Commit(ctx, writes, revs)
	if err == nil {
		for _, w := range writes {
			if w.Block != nil && w.Rev == 0 {
				s.base[w.Block.Prefix()] = w.Block.Seq()
			}
		}
	}
	return err
}

// withoutCommit is a laneStore without Commit: the field, shallower than
// the method laneStore promotes, hides it, so the type is no Committer.
type withoutCommit struct {
	*laneStore
	Commit struct{}
}

// laneWorld is one store with three allocators on it, all with the lane
// or all without. Operations use the first two; the third makes the
// changes that land in the middle of them.
type laneWorld struct {
	store  *laneStore
	allocs [3]*ipam.Allocator
	clock  *clock
}

// laneTrace counts what the lane did.
type laneTrace struct{ served, resumed int }

// laneDiff is the two worlds: the lane on in the first, off in the second.
type laneDiff struct {
	w     [2]*laneWorld
	trace laneTrace          // the first world's lane
	addrs [2][]ipam.Assigned // what each world assigned, to release
}

// With commits unset, the allocators see a store without Committer and
// write records one by one.
func newLaneDiff(t require.TestingT, cfg ipam.Config, pools []pool.Pool, commits bool) *laneDiff {
	d := &laneDiff{}
	for i := range d.w {
		w := &laneWorld{store: &laneStore{Store: memstore.New(), base: map[netip.Prefix]uint64{}}, clock: newClock()}
		var s ipam.Store = w.store
		if !commits {
			s = withoutCommit{laneStore: w.store}
		}
		for j := range w.allocs {
			a, err := ipam.New(s, ipam.Options{Now: w.clock.Now})
			require.NoError(t, err)
			ipam.SetLane(a, i == 0)
			ipam.SetLaneTrace(a, func(resumed bool) {
				require.Zero(t, i, "the lane served a request with the lane off")
				d.trace.served++
				if resumed {
					d.trace.resumed++
				}
			})
			w.allocs[j] = a
		}
		d.w[i] = w
	}
	d.do(t, "setup", func(w *laneWorld) string {
		err := w.allocs[0].SetConfig(context.Background(), cfg)
		for _, p := range pools {
			err = errors.Join(err, w.allocs[0].CreatePool(context.Background(), p))
		}
		return fmt.Sprint(err)
	})
	return d
}

// laneErrs are the errors whose matching is compared besides the text.
var laneErrs = []error{
	ipam.ErrNoSpace, ipam.ErrBlockLimit, ipam.ErrStrictAffinity, ipam.ErrHandleExists,
	ipam.ErrHandleNotFound, ipam.ErrInvalid, ipam.ErrTooManyConflicts, ipam.ErrInUse, pool.ErrNoPool,
}

// show gives an answer and its error as text, with the sentinels it
// matches; sequence numbers are given as offsets from their block's
// start (see laneStore.base), and left out of error messages.
func (w *laneWorld) show(v any, err error) string {
	rel := func(xs []ipam.Assigned) []ipam.Assigned {
		out := slices.Clone(xs)
		for i := range out {
			out[i].Seq -= w.store.base[out[i].Block]
		}
		return out
	}
	switch x := v.(type) {
	case ipam.AutoAssignResult:
		v = ipam.AutoAssignResult{IPv4: rel(x.IPv4), IPv6: rel(x.IPv6)}
	case ipam.Assigned:
		v = rel([]ipam.Assigned{x})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%+v | %v |", v, err)
	for _, s := range laneErrs {
		if errors.Is(err, s) {
			fmt.Fprintf(&b, " %v;", s)
		}
	}
	var ae *ipam.AssignError
	if errors.As(err, &ae) {
		fmt.Fprintf(&b, " kept %s", w.show(ae.Result, nil))
	}
	return bigNumber.ReplaceAllString(b.String(), "SEQ")
}

// bigNumber matches the sequence numbers in error messages.
var bigNumber = regexp.MustCompile(`[0-9]{15,}`)

// records returns the world's records of a kind, blocks as JSON with their
// sequence numbers as offsets from the block's start.
func (w *laneWorld) records(t require.TestingT, kind ipam.Kind) []ipam.Record {
	recs, err := w.store.Store.List(context.Background(), kind, ipam.KeyRange{})
	require.NoError(t, err)
	if kind != ipam.KindBlock {
		return recs
	}
	for i, r := range recs {
		var b block.Block
		require.NoError(t, b.UnmarshalBinary(r.Value))
		js, err := b.MarshalJSON()
		require.NoError(t, err)
		var j map[string]any
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.UseNumber()
		require.NoError(t, dec.Decode(&j))
		base := w.store.base[b.Prefix()]
		rebase := func(m map[string]any) {
			n, err := strconv.ParseUint(string(m["seq"].(json.Number)), 10, 64)
			require.NoError(t, err)
			m["seq"] = n - base
		}
		rebase(j)
		if as, ok := j["allocations"].([]any); ok {
			for _, a := range as {
				rebase(a.(map[string]any))
			}
		}
		recs[i].Value, err = json.Marshal(j)
		require.NoError(t, err)
	}
	return recs
}

// do runs f in both worlds and requires the same answers, with what
// landed meanwhile (see laneStore), and the same records.
func (d *laneDiff) do(t require.TestingT, what string, f func(w *laneWorld) string) {
	var got [2]string
	for i, w := range d.w {
		got[i] = f(w) + " / " + w.store.landed
		w.store.landed = ""
	}
	require.Equal(t, got[1], got[0], "%s: the lane on (first) and off answer differently", what)
	for _, kind := range ipam.Kinds {
		recs := [2][]ipam.Record{d.w[0].records(t, kind), d.w[1].records(t, kind)}
		require.Equal(t, recs[1], recs[0], "%s: the %s records differ with the lane on (first) and off", what, kind)
	}
}

func (d *laneDiff) assign(t require.TestingT, i int, args ipam.AutoAssignArgs) {
	d.do(t, fmt.Sprintf("AutoAssign(%+v) by allocator %d", args, i), func(w *laneWorld) string {
		res, err := w.allocs[i].AutoAssign(context.Background(), args)
		k := slices.Index(d.w[:], w)
		d.addrs[k] = append(d.addrs[k], res.IPv4...)
		d.addrs[k] = append(d.addrs[k], res.IPv6...)
		return w.show(res, err)
	})
}

func (d *laneDiff) release(t require.TestingT, i int, handle string) {
	d.do(t, fmt.Sprintf("ReleaseByHandle(%q) by allocator %d", handle, i), func(w *laneWorld) string {
		got, err := w.allocs[i].ReleaseByHandle(context.Background(), handle)
		return w.show(got, err)
	})
}

func (d *laneDiff) change(t require.TestingT, i int, what string, f func(ctx context.Context, a *ipam.Allocator) error) {
	d.do(t, fmt.Sprintf("%s by allocator %d", what, i), func(w *laneWorld) string {
		return w.show(nil, f(context.Background(), w.allocs[i]))
	})
}

// interfere has the third allocator make a change just before the at-th
// write from now. Both worlds make the same writes, so it lands at the
// same point in both.
func (d *laneDiff) interfere(at int, what string, f func(ctx context.Context, a *ipam.Allocator) error) {
	for _, w := range d.w {
		w.store.at, w.store.writes = at, 0
		w.store.fn = func() { w.store.landed = what + ": " + w.show(nil, f(context.Background(), w.allocs[2])) }
	}
}

// The pools of the random test: small, so that blocks fill up and nodes
// claim, borrow and run out.
var lanePools = []pool.Pool{
	{Name: "a4", CIDR: netip.MustParsePrefix("10.0.0.0/26"), BlockSize: 28},
	{Name: "b4", CIDR: netip.MustParsePrefix("10.0.1.0/28"), BlockSize: 30},
	{Name: "c6", CIDR: netip.MustParsePrefix("fd00::/123"), BlockSize: 125},
	{Name: "lb", CIDR: netip.MustParsePrefix("10.0.2.0/29"), BlockSize: 30, AllowedUses: []pool.Use{pool.UseLoadBalancer}},
}

var (
	laneNodes   = []string{"n0", "n1", "n2"}
	laneHandles = []string{"h0", "h1", "h2", "h3", "h4", "h5"}
)

// laneMachine draws the operations of TestLaneMatchesAutoAssign.
type laneMachine struct {
	*laneDiff
	// shared is a label map that requests pass and that is changed after
	// some of them, as a caller reusing its map does.
	shared selector.Set
}

func newLaneMachine(t *rapid.T) laneMachine {
	cfg := ipam.Config{AutoAllocateBlocks: true, MaxBlocksPerHost: rapid.IntRange(0, 3).Draw(t, "maxBlocks")}
	var pools []pool.Pool
	for _, p := range lanePools {
		switch p.Name {
		case "a4":
			// Blocks of 4 fill up, and are then found full in the cache
			// after another allocator freed an address.
			p.BlockSize = rapid.IntRange(28, 30).Draw(t, "blockSize")
		case "b4":
			if rapid.Bool().Draw(t, "laneSelect") {
				p.NodeSelector = `rack == "a"`
			}
		}
		pools = append(pools, p)
	}
	m := laneMachine{newLaneDiff(t, cfg, pools, rapid.Bool().Draw(t, "commits")), selector.Set{"rack": "a"}}
	// Each node claims its blocks, as nodes in service have.
	for _, node := range laneNodes {
		m.assign(t, 0, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "warm", Node: node})
		m.release(t, 0, "warm")
	}
	return m
}

// Check is done by every operation (laneDiff.do).
func (m laneMachine) Check(*rapid.T) {}

// alloc draws the allocator of an operation: mostly the first, so that
// its caches are warm and the lane serves it.
func (m laneMachine) alloc(t *rapid.T) int { return rapid.IntRange(0, 3).Draw(t, "allocator") / 3 }

func (m laneMachine) AutoAssign(t *rapid.T) { m.autoAssign(t) }

// Burst is what a node does most: a few requests in a row, some of them
// released again.
func (m laneMachine) Burst(t *rapid.T) {
	for range rapid.IntRange(1, 8).Draw(t, "burst") {
		if rapid.IntRange(0, 2).Draw(t, "release") == 0 {
			m.ReleaseByHandle(t)
		} else {
			m.autoAssign(t)
		}
	}
}

func (m laneMachine) autoAssign(t *rapid.T) {
	args := ipam.AutoAssignArgs{
		Handle: rapid.SampledFrom(laneHandles).Draw(t, "handle"),
		Node:   rapid.SampledFrom(laneNodes).Draw(t, "node"),
	}
	// The lane's shapes most of the time (an address of one family, or
	// of each), and now and then anything.
	switch rapid.IntRange(0, 5).Draw(t, "family") {
	case 0:
		args.Num6 = 1
	case 1:
		args.Num4, args.Num6 = 1, 1
	default:
		args.Num4 = 1
	}
	if rapid.IntRange(0, 4).Draw(t, "other") == 0 {
		args.Num4 = rapid.IntRange(0, 3).Draw(t, "n4")
		args.Num6 = rapid.IntRange(0, 2).Draw(t, "n6")
		args.Partial = rapid.Bool().Draw(t, "partial")
		args.Use = rapid.SampledFrom([]pool.Use{"", pool.UseWorkload, pool.UseTunnel, pool.UseLoadBalancer}).Draw(t, "use")
		if args.Use == pool.UseLoadBalancer && rapid.Bool().Draw(t, "lbNode") {
			args.Node = ""
		}
		args.IPv4Pools = rapid.SampledFrom([][]string{nil, {"a4"}, {"b4", "a4"}, {"zz"}}).Draw(t, "pools")
		args.ReserveFirst = rapid.SampledFrom([]int{0, 1, -1, 65}).Draw(t, "reserveFirst")
		args.Handle = rapid.SampledFrom([]string{args.Handle, " h", "h/x", ""}).Draw(t, "oddHandle")
		args.Node = rapid.SampledFrom([]string{args.Node, "n/x", "new"}).Draw(t, "oddNode")
	}
	args.NewHandle = rapid.Bool().Draw(t, "newHandle")
	// Per-request host reservations, which the lane's memo does not
	// depend on, and which matter once a request claims a block.
	if rapid.IntRange(0, 5).Draw(t, "reserveHosts") == 0 {
		args.ReserveFirst = rapid.IntRange(0, 2).Draw(t, "reserveFirstLane")
		args.ReserveLast = rapid.IntRange(0, 2).Draw(t, "reserveLastLane")
	}
	switch rapid.IntRange(0, 4).Draw(t, "attrs") {
	case 1:
		args.Attrs = map[string]string{"pod": "p"}
	case 2:
		args.Attrs = map[string]string{ipam.AttrNode: args.Node}
	case 3:
		args.Attrs = map[string]string{ipam.AttrNode: "elsewhere"}
	}
	switch rapid.IntRange(0, 12).Draw(t, "labels") {
	case 7:
		// Shapes the lane's memo tells apart, or takes as the same labels.
		args.NodeLabels = rapid.SampledFrom([]selector.Labels{
			selector.Set(nil), otherLabels(nil), otherLabels{"rack": "a"},
			selector.Set{"rack": "a", "zone": "z"}, selector.Set{"rack": ""},
			selector.Set{"rack": "a", "zone": "y"}, selector.Set{"zone": "z"}, otherLabels{"rack": "b", "zone": "z"},
			selector.Set{"rack": "ab", "team": "a"},
		}).Draw(t, "nodeShape")
	case 8:
		args.NamespaceLabels = rapid.SampledFrom([]selector.Labels{
			selector.Set(nil), otherLabels{"team": "a"}, selector.Set{"team": "a", "x": "y"}, selector.Set{"rack": "a"},
			selector.Set{"team": "a", "tier": "x"}, otherLabels{"tier": "x"}, selector.Set{"team": "b", "tier": "y"},
		}).Draw(t, "nsShape")
		if rapid.Bool().Draw(t, "bothShapes") {
			args.NodeLabels = rapid.SampledFrom([]selector.Labels{
				nil, selector.Set{"rack": "a"}, selector.Set{"rack": "b", "zone": "z"}, otherLabels{"zone": "y"},
			}).Draw(t, "nodeShape2")
		}
	case 9:
		// The same map, changed by the caller after some requests.
		args.NodeLabels = m.shared
		args.NamespaceLabels = m.shared
		defer func() {
			switch rapid.IntRange(0, 2).Draw(t, "changeShared") {
			case 1:
				m.shared["rack"] = rapid.SampledFrom([]string{"a", "b"}).Draw(t, "sharedRack")
			case 2:
				m.shared["team"] = rapid.SampledFrom([]string{"a", "b"}).Draw(t, "sharedTeam")
			}
		}()
	case 1:
		args.NodeLabels = selector.Set{"rack": "a"}
	case 2:
		args.NodeLabels = selector.Set{"rack": "b"}
	case 3:
		args.NamespaceLabels = selector.Set{}
	case 4:
		args.NamespaceLabels = selector.Set{"team": "a"}
	case 5:
		args.NodeLabels = selector.Set{}
	case 6:
		args.NodeLabels = selector.Set{"rack": "a"}
		args.NamespaceLabels = selector.Set{"team": "b"}
	}
	m.assign(t, m.alloc(t), args)
}

func (m laneMachine) ReleaseByHandle(t *rapid.T) {
	m.release(t, m.alloc(t), rapid.SampledFrom(laneHandles).Draw(t, "handle"))
}

func (m laneMachine) ReleaseIP(t *rapid.T) {
	if len(m.addrs[0]) == 0 {
		t.Skip("nothing assigned yet")
	}
	j := rapid.IntRange(0, len(m.addrs[0])-1).Draw(t, "addr")
	seq := rapid.Bool().Draw(t, "seq")
	i := m.alloc(t)
	m.do(t, fmt.Sprintf("ReleaseIPs(%v, seq %v)", m.addrs[0][j].Addr, seq), func(w *laneWorld) string {
		x := m.addrs[slices.Index(m.w[:], w)][j]
		rel := ipam.Release{Addr: x.Addr}
		if seq {
			rel.Seq = x.Seq
		}
		got, err := w.allocs[i].ReleaseIPs(context.Background(), rel)
		return w.show(got, err)
	})
}

func (m laneMachine) AssignIP(t *rapid.T) {
	p := rapid.SampledFrom(lanePools[:3]).Draw(t, "pool")
	addr := p.CIDR.Addr()
	for range rapid.IntRange(0, 15).Draw(t, "offset") {
		addr = addr.Next()
	}
	args := ipam.AssignIPArgs{
		Addr:   addr,
		Handle: rapid.SampledFrom(laneHandles).Draw(t, "handle"),
		Node:   rapid.SampledFrom(laneNodes).Draw(t, "node"),
	}
	i := m.alloc(t)
	m.do(t, fmt.Sprintf("AssignIP(%+v)", args), func(w *laneWorld) string {
		got, err := w.allocs[i].AssignIP(context.Background(), args)
		return w.show(got, err)
	})
}

// laneChange draws a change of pools, configuration, reservations or
// affinities, or another node's request, as text and as the function that
// makes it.
func laneChange(t *rapid.T) (string, func(ctx context.Context, a *ipam.Allocator) error) {
	switch rapid.IntRange(0, 7).Draw(t, "change") {
	case 0:
		c := ipam.Config{
			AutoAllocateBlocks: rapid.IntRange(0, 4).Draw(t, "auto") > 0,
			StrictAffinity:     rapid.Bool().Draw(t, "strict"),
			MaxBlocksPerHost:   rapid.IntRange(0, 3).Draw(t, "maxBlocks"),
		}
		if rapid.Bool().Draw(t, "cooldown") {
			c.ReleaseCooldown = time.Minute
		}
		return fmt.Sprintf("SetConfig(%+v)", c), func(ctx context.Context, a *ipam.Allocator) error { return a.SetConfig(ctx, c) }
	case 1:
		name := rapid.SampledFrom([]string{"a4", "b4", "c6"}).Draw(t, "pool")
		if rapid.Bool().Draw(t, "disable") {
			return "DisablePool " + name, func(ctx context.Context, a *ipam.Allocator) error { return a.DisablePool(ctx, name) }
		}
		return "EnablePool " + name, func(ctx context.Context, a *ipam.Allocator) error { return a.EnablePool(ctx, name) }
	case 2:
		name := rapid.SampledFrom([]string{"a4", "b4", "c6"}).Draw(t, "pool")
		field := rapid.SampledFrom([]string{"nodeSelector", "namespaceSelector", "assignmentMode"}).Draw(t, "field")
		var sel string
		switch field {
		case "nodeSelector":
			// Selectors reading one key or several, testing presence and
			// absence, sets and prefixes.
			sel = rapid.SampledFrom([]string{
				"", "all()", `rack == "a"`, `!has(rack)`, `has(zone)`, `rack in {"a", "b"}`,
				`!has(zone) && rack != "b"`, `zone == "z" || rack not in {"a"}`, `rack starts with "a" && !(zone in {"y"})`,
			}).Draw(t, "selector")
		case "namespaceSelector":
			// Namespace selectors reading keys of their own, and one the
			// node's labels have too.
			sel = rapid.SampledFrom([]string{
				"", "all()", `team == "a"`, `!has(team)`, `has(tier)`, `team in {"a"} || tier == "x"`,
				`!has(tier) && team != "b"`, `rack == "a"`,
			}).Draw(t, "selector")
		default:
			sel = string(rapid.SampledFrom([]pool.AssignmentMode{pool.Automatic, pool.Manual}).Draw(t, "mode"))
		}
		return fmt.Sprintf("UpdatePool %s %s %s", name, field, sel), func(ctx context.Context, a *ipam.Allocator) error {
			p, err := a.Pool(ctx, name)
			if err != nil {
				return err
			}
			switch field {
			case "nodeSelector":
				p.NodeSelector = sel
			case "namespaceSelector":
				p.NamespaceSelector = sel
			default:
				p.AssignmentMode = pool.AssignmentMode(sel)
			}
			return a.UpdatePool(ctx, p)
		}
	case 3:
		p := rapid.SampledFrom(lanePools[:3]).Draw(t, "pool")
		if rapid.Bool().Draw(t, "delete") {
			return "DeletePool " + p.Name, func(ctx context.Context, a *ipam.Allocator) error { return a.DeletePool(ctx, p.Name) }
		}
		return "CreatePool " + p.Name, func(ctx context.Context, a *ipam.Allocator) error { return a.CreatePool(ctx, p) }
	case 4:
		r := ipam.Reservation{Name: "r", CIDRs: []netip.Prefix{
			rapid.SampledFrom([]netip.Prefix{
				netip.MustParsePrefix("10.0.0.0/30"), netip.MustParsePrefix("10.0.0.0/27"),
				netip.MustParsePrefix("10.0.1.0/28"), netip.MustParsePrefix("fd00::/126"),
			}).Draw(t, "reserved"),
		}}
		if rapid.Bool().Draw(t, "delete") {
			return "DeleteReservation", func(ctx context.Context, a *ipam.Allocator) error { return a.DeleteReservation(ctx, r.Name) }
		}
		return fmt.Sprintf("reserve %v", r.CIDRs), reserve(r)
	case 5:
		node := rapid.SampledFrom(laneNodes).Draw(t, "node")
		return "ReleaseHostAffinities " + node, func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.ReleaseHostAffinities(ctx, node, false)
			return err
		}
	case 6:
		// The labels a request without NodeLabels is served with.
		node := rapid.SampledFrom(laneNodes).Draw(t, "node")
		labels := rapid.SampledFrom([]map[string]string{
			nil, {"rack": "a"}, {"rack": "b"}, {"rack": "a", "zone": "z"}, {"zone": "z"}, {"rack": "b", "zone": "y"}, {"team": "a"},
		}).Draw(t, "labels")
		return fmt.Sprintf("SetNodeLabels(%s, %v)", node, labels), func(ctx context.Context, a *ipam.Allocator) error {
			return a.SetNodeLabels(ctx, node, labels)
		}
	default:
		handle := rapid.SampledFrom(laneHandles).Draw(t, "handle")
		if rapid.Bool().Draw(t, "release") {
			return "ReleaseByHandle " + handle, func(ctx context.Context, a *ipam.Allocator) error {
				_, err := a.ReleaseByHandle(ctx, handle)
				return err
			}
		}
		args := ipam.AutoAssignArgs{Num4: 1, Handle: handle, Node: rapid.SampledFrom(laneNodes).Draw(t, "node")}
		return fmt.Sprintf("AutoAssign(%+v)", args), func(ctx context.Context, a *ipam.Allocator) error {
			_, err := a.AutoAssign(ctx, args)
			return err
		}
	}
}

// reserve makes or replaces the reservation r.
func reserve(r ipam.Reservation) func(ctx context.Context, a *ipam.Allocator) error {
	return func(ctx context.Context, a *ipam.Allocator) error {
		if err := a.CreateReservation(ctx, r); !errors.Is(err, ipam.ErrExists) {
			return err
		}
		return a.UpdateReservation(ctx, r)
	}
}

func (m laneMachine) Change(t *rapid.T) {
	what, f := laneChange(t)
	m.change(t, m.alloc(t), what, f)
}

// Interfere makes a change land just before one of the next few writes,
// usually those of a request of the lane's shape.
func (m laneMachine) Interfere(t *rapid.T) {
	what, f := laneChange(t)
	m.interfere(rapid.IntRange(1, 3).Draw(t, "at"), what, f)
	if rapid.IntRange(0, 3).Draw(t, "next") > 0 {
		m.autoAssign(t)
	}
}

func (m laneMachine) Advance(t *rapid.T) {
	dt := time.Duration(rapid.IntRange(1, 90).Draw(t, "seconds")) * time.Second
	for _, w := range m.w {
		w.clock.Advance(dt)
	}
}

// TestLaneMatchesAutoAssign runs random requests, releases, changes and
// interference on two stores, through allocators with the lane and
// without, and requires the same answers, errors and records after every
// step.
func TestLaneMatchesAutoAssign(t *testing.T) {
	var total laneTrace
	rapid.Check(t, func(t *rapid.T) {
		m := newLaneMachine(t)
		t.Repeat(rapid.StateMachineActions(m))
		total.served += m.trace.served
		total.resumed += m.trace.resumed
	})
	t.Logf("the lane served %d requests, and went on in autoAssign for %d", total.served, total.resumed)
	require.Positive(t, total.served, "the lane served no request")
	require.Positive(t, total.resumed, "the lane never went on in autoAssign")
}

// TestLaneScenarios runs, with the lane and without, the cases where the
// lane's attempt does not simply succeed, each of which random operations
// meet only now and then, and requires the same answers and records.
func TestLaneScenarios(t *testing.T) {
	small := []pool.Pool{
		{Name: "a4", CIDR: netip.MustParsePrefix("10.0.0.0/28"), BlockSize: 30},
		{Name: "b4", CIDR: netip.MustParsePrefix("10.0.1.0/28"), BlockSize: 30},
	}
	cfg := ipam.Config{AutoAllocateBlocks: true, MaxBlocksPerHost: 2}
	req := func(handle string) ipam.AutoAssignArgs {
		return ipam.AutoAssignArgs{Num4: 1, Handle: handle, Node: "n0"}
	}
	// warm has n0 hold a block of a4 with room, known to allocator 0.
	warm := func(t *testing.T, d *laneDiff) {
		d.assign(t, 0, req("h0"))
		d.assign(t, 0, req("h1"))
	}
	runLaneScenarios(t, cfg, small, []laneScenario{{
		name: "steady",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			for range 3 {
				d.assign(t, 0, req("h2"))
				d.release(t, 0, "h2")
			}
		},
		served: 3,
	}, {
		// The cached block is full; another allocator freed an address:
		// the fresh read finds it, rather than a claim.
		name: "freed elsewhere",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			d.assign(t, 0, req("h2"))
			d.assign(t, 0, req("h3"))
			d.release(t, 1, "h1")
			d.assign(t, 0, req("h4"))
		},
		served: 3, resumed: 1,
	}, {
		// The block loses its affinity between the lane's reads and its
		// writes: the node's index entry is dropped and it claims another.
		name: "taken away",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			d.interfere(1, "ReleaseHostAffinities n0", func(ctx context.Context, a *ipam.Allocator) error {
				_, err := a.ReleaseHostAffinities(ctx, "n0", false)
				return err
			})
			d.assign(t, 0, req("h2"))
		},
		served: 1, resumed: 1,
	}, {
		// Another allocator writes the block before the request's first
		// write (its commit, or its handle's write): a conflict, retried
		// on a fresh read.
		name: "conflict",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			d.interfere(1, "AutoAssign n0", func(ctx context.Context, a *ipam.Allocator) error {
				_, err := a.AutoAssign(ctx, req("other"))
				return err
			})
			d.assign(t, 0, req("h2"))
		},
		served: 1,
	}, {
		// A reservation made during the request covers the address it
		// got: it is given back and another assigned.
		name: "reserved meanwhile",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			d.interfere(1, "reserve a4's first block", reserve(ipam.Reservation{
				Name: "r", CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/30")},
			}))
			d.assign(t, 0, req("h2"))
		},
		served: 1, resumed: 1,
	}, {
		// A request with NewHandle under a handle that holds addresses.
		name: "handle exists",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			args := req("h1")
			args.NewHandle = true
			d.assign(t, 0, args)
		},
		served: 1, resumed: 1,
	}, {
		// A pool disabled: the first request reads the view, the second
		// must not go by what the node chose before.
		name: "pool disabled",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			d.assign(t, 0, ipam.AutoAssignArgs{Num4: 1, Handle: "b", Node: "n0", IPv4Pools: []string{"b4"}})
			d.assign(t, 0, req("h2"))
			d.assign(t, 0, req("h5")) // the lane: a4, then b4
			d.release(t, 0, "h0")     // room in a4's block
			d.change(t, 0, "DisablePool a4", func(ctx context.Context, a *ipam.Allocator) error { return a.DisablePool(ctx, "a4") })
			d.assign(t, 0, req("h3"))
			d.assign(t, 0, req("h4"))
		},
		served: 2,
	}, {
		// The node's block fills and it claims another, up to its limit
		// of two: the lane must not go by the blocks it held before.
		name: "second block",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			for i := 2; i < 10; i++ {
				d.assign(t, 0, req(fmt.Sprintf("h%d", i))) // claims at 4
			}
		},
		served: 6, resumed: 2,
	}, {
		// The node claims a block in its second pool: once the first is
		// full, the lane must not claim a third.
		name: "block in the second pool",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			d.assign(t, 0, req("h2")) // the lane
			d.assign(t, 0, ipam.AutoAssignArgs{Num4: 1, Handle: "b", Node: "n0", IPv4Pools: []string{"b4"}})
			d.assign(t, 0, req("h3")) // fills a4's block
			d.assign(t, 0, req("h4")) // from b4's
			d.assign(t, 0, req("h5"))
		},
		served: 2, resumed: 1,
	}, {
		// A block of a pool that no longer selects the node, kept while
		// it held an address, is given up once empty.
		name: "unselected emptied",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			d.assign(t, 0, ipam.AutoAssignArgs{Num4: 1, Handle: "b", Node: "n0", IPv4Pools: []string{"b4"}})
			d.change(t, 0, "b4 selects rack a", nodeSelector("b4", `rack == "a"`))
			d.assign(t, 0, req("h2"))
			d.release(t, 0, "h1")
			d.assign(t, 0, req("h3"))
			d.release(t, 0, "b")
			d.assign(t, 0, req("h4"))
		},
		served: 2,
	}, {
		// Labels that a pool's selector asks for.
		name: "labels",
		run: func(t *testing.T, d *laneDiff) {
			d.change(t, 0, "b4 selects rack a", nodeSelector("b4", `rack == "a"`))
			warm(t, d)
			args := req("h2")
			args.NodeLabels = selector.Set{"rack": "a"}
			for range 3 {
				d.assign(t, 0, args)
				d.assign(t, 0, req("h3"))
			}
		},
		served: 5,
	}, {
		// Every pool chosen by nodeSelector, the node's labels with every
		// request (as a node agent passes them): the lane serves them, the
		// same labels again without matching selectors, labels no
		// selector asks about with the same pools, and other labels that
		// choose other pools.
		name: "racks",
		run: func(t *testing.T, d *laneDiff) {
			for _, name := range []string{"a4", "b4"} {
				d.change(t, 0, name+" selects its rack", nodeSelector(name, fmt.Sprintf("rack == %q", name)))
			}
			labeled := func(handle string, labels selector.Labels) ipam.AutoAssignArgs {
				args := req(handle)
				args.NodeLabels = labels
				return args
			}
			rackA := selector.Set{"rack": "a4", "zone": "z1"}
			d.assign(t, 0, labeled("h0", rackA))
			for range 3 {
				d.assign(t, 0, labeled("h1", selector.Set{"rack": "a4", "zone": "z1"}))
				d.release(t, 0, "h1")
			}
			d.assign(t, 0, labeled("h2", selector.Set{"rack": "a4", "zone": "z2"}))
			d.assign(t, 0, labeled("h3", selector.Set{"rack": "b4"}))
			d.assign(t, 0, labeled("h4", rackA)) // the claim changed the index: AutoAssign
			d.assign(t, 0, labeled("h5", rackA))
			d.assign(t, 0, labeled("h6", selector.Set{"rack": "b4"}))
			d.assign(t, 0, labeled("h7", nil)) // no pool: AutoAssign says why
			// Labels of another type: the memo compares them, as a
			// selector.Set, on the keys the selectors read.
			for range 2 {
				d.assign(t, 0, labeled("h8", otherLabels{"rack": "a4"}))
				d.release(t, 0, "h8")
			}
		},
		served: 6,
	}})
}

// otherLabels is selector.Labels of a type other than selector.Set.
type otherLabels map[string]string

func (l otherLabels) Get(key string) (string, bool) {
	v, ok := l[key]
	return v, ok
}

// nodeSelector returns a change that gives the pool called name the
// nodeSelector sel.
func nodeSelector(name, sel string) func(context.Context, *ipam.Allocator) error {
	return func(ctx context.Context, a *ipam.Allocator) error {
		p, err := a.Pool(ctx, name)
		if err != nil {
			return err
		}
		p.NodeSelector = sel
		return a.UpdatePool(ctx, p)
	}
}

// The dual-stack lane tests' pools (blocks of four addresses, four of
// each family), configuration, request of node n0, and warm-up: n0 holds
// a block of each family with room, known to allocator 0.
var (
	dualPools = []pool.Pool{
		{Name: "a4", CIDR: netip.MustParsePrefix("10.0.0.0/28"), BlockSize: 30},
		{Name: "c6", CIDR: netip.MustParsePrefix("fd00::/124"), BlockSize: 126},
	}
	dualConfig = ipam.Config{AutoAllocateBlocks: true, MaxBlocksPerHost: 3}
)

func dualReq(handle string) ipam.AutoAssignArgs {
	return ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: handle, Node: "n0"}
}

func dualWarm(t *testing.T, d *laneDiff) {
	d.assign(t, 0, dualReq("h0"))
	d.assign(t, 0, dualReq("h1"))
}

// TestLaneDualStack runs, with the lane and without, dual-stack requests
// (an address of each family), which the lane serves as two attempts, and
// the cases where one of them does not simply succeed.
func TestLaneDualStack(t *testing.T) {
	req, warm := dualReq, dualWarm
	runLaneScenarios(t, dualConfig, dualPools, []laneScenario{{
		name: "steady",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			for range 3 {
				d.assign(t, 0, req("h2"))
				d.release(t, 0, "h2")
			}
		},
		served: 3,
	}, {
		// The IPv6 block fills up: its attempt finds it full, and the
		// request goes on in autoAssign, which claims another.
		name: "second family full",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			d.assign(t, 0, req("h2"))
			d.assign(t, 0, req("h3"))
			d.assign(t, 0, req("h4"))
		},
		served: 3, resumed: 1,
	}, {
		// Another allocator writes the IPv6 block between the request's
		// two writes: the second attempt's conflict is retried.
		name: "conflict between the families",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			d.interfere(2, "AutoAssign n0 v6", func(ctx context.Context, a *ipam.Allocator) error {
				_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num6: 1, Handle: "other", Node: "n0"})
				return err
			})
			d.assign(t, 0, req("h2"))
		},
		served: 1,
	}, {
		// The node's blocks lose their affinity before the first write:
		// both families claim again.
		name: "taken away",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			d.interfere(1, "ReleaseHostAffinities n0", func(ctx context.Context, a *ipam.Allocator) error {
				_, err := a.ReleaseHostAffinities(ctx, "n0", false)
				return err
			})
			d.assign(t, 0, req("h2"))
		},
		served: 1, resumed: 1,
	}, {
		// The IPv6 pool is deleted just before the request's first write:
		// the IPv4 address is written, the IPv6 block is no longer the
		// node's, and no pool is left to claim in, so the IPv4 address is
		// given back.
		name: "second family's pool deleted",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			d.assign(t, 0, ipam.AutoAssignArgs{Num6: 1, Handle: "h0", Node: "n0"})
			d.interfere(1, "DeletePool c6", func(ctx context.Context, a *ipam.Allocator) error {
				return a.DeletePool(ctx, "c6")
			})
			d.assign(t, 0, req("h0"))
		},
		served: 1, resumed: 1,
	}, {
		// No room for IPv6 anywhere: all or nothing gives the IPv4
		// address back.
		name: "no room for the second family",
		run: func(t *testing.T, d *laneDiff) {
			warm(t, d)
			d.assign(t, 1, ipam.AutoAssignArgs{Num6: 14, Handle: "all6", Node: "n1"})
			// n0's allocator learns of n1's claims, as the next request
			// of the node would.
			d.assign(t, 0, ipam.AutoAssignArgs{Num4: 1, Handle: "v4", Node: "n0"})
			d.assign(t, 0, req("h2"))
		},
		served: 1, resumed: 1,
	}})
}

// laneScenario is a case of TestLaneScenarios or TestLaneDualStack.
type laneScenario struct {
	name            string
	run             func(t *testing.T, d *laneDiff)
	served, resumed int // at least
}

// runLaneScenarios runs each case, with the lane and without, with and
// without commits, and requires that the lane served, and went on in
// autoAssign for, at least as many requests as the case says.
func runLaneScenarios(t *testing.T, cfg ipam.Config, pools []pool.Pool, cases []laneScenario) {
	for _, tc := range cases {
		for _, commits := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/commits=%t", tc.name, commits), func(t *testing.T) {
				d := newLaneDiff(t, cfg, pools, commits)
				tc.run(t, d)
				require.GreaterOrEqual(t, d.trace.served, tc.served, "requests the lane served")
				require.GreaterOrEqual(t, d.trace.resumed, tc.resumed, "requests the lane went on with in autoAssign")
			})
		}
	}
}
