package block_test

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/internal/ipmath"
)

// The model: a block as plain maps, next-fit as a linear scan. Slow and
// obviously right.

type modelAlloc struct {
	handle string
	attrs  map[string]string
	seq    uint64
}

type model struct {
	prefix netip.Prefix
	size   int
	cursor int
	seq    uint64
	aff    block.Affinity
	claim  time.Time
	alloc  map[int]modelAlloc
	resv   map[int]bool
	rel    map[int]int64 // release times of free addresses, Unix ns
}

// relEpoch and relTime give the release times the machine draws: a few
// instants a second apart, so cutoffs fall between and on them.
var relEpoch = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func relTime(t *rapid.T, label string) time.Time {
	return relEpoch.Add(time.Duration(rapid.IntRange(0, 5).Draw(t, label)) * time.Second)
}

func (m *model) addr(i int) netip.Addr {
	a, _ := ipmath.Nth(m.prefix, ipmath.U64(uint64(i)))
	return a
}

func (m *model) ordinal(a netip.Addr) (int, bool) {
	if !m.prefix.Contains(a) {
		return 0, false
	}
	off, _ := ipmath.Index(m.prefix, a)
	return int(off.Lo), true
}

func (m *model) free(i int) bool { _, used := m.alloc[i]; return !used && !m.resv[i] }

func (m *model) nfree() int { return m.size - len(m.alloc) - len(m.resv) }

// machine runs the block and the model side by side.
type machine struct {
	b       *block.Block
	m       *model
	scratch *block.Block // CopyTo target, kept across steps so its memory is reused
	// twin is the block's partner in Mirror: the previous version, or a
	// scratch copy changed on its own, as an allocator's.
	twin  *block.Block
	attrs []map[string]string
}

var handles = []string{"", "pod-a", "pod-b", "pod-c", "ñ-d", "pod-e"}

func newMachine(t *rapid.T) *machine {
	var p netip.Prefix
	if rapid.Bool().Draw(t, "v4") {
		bits := rapid.SampledFrom([]int{32, 31, 30, 29, 28, 28, 27, 26, 24}).Draw(t, "bits4")
		a := netip.AddrFrom4([4]byte{10, byte(rapid.IntRange(0, 255).Draw(t, "o2")), 0, 0})
		p = netip.PrefixFrom(a, bits)
	} else {
		bits := rapid.SampledFrom([]int{128, 127, 125, 124, 124, 122, 121}).Draw(t, "bits6")
		p = netip.PrefixFrom(netip.MustParseAddr("fd00:1::"), bits)
	}
	seq := rapid.SampledFrom([]uint64{0, 1 << 40, ^uint64(0) - 20}).Draw(t, "seq")
	b, err := block.NewWithSeq(p, seq)
	if err != nil {
		t.Fatal(err)
	}
	return &machine{
		b:       b,
		m:       &model{prefix: p, size: b.Size(), seq: seq, alloc: map[int]modelAlloc{}, resv: map[int]bool{}, rel: map[int]int64{}},
		scratch: new(block.Block),
		twin:    new(block.Block),
		// One map object per attribute set, reused; drawOwner also makes
		// fresh equal copies so records are matched by content too.
		attrs: []map[string]string{nil, {"ns": "a"}, {"ns": "b"}, {"ns": "a", "pod": "x"}},
	}
}

func (s *machine) drawOwner(t *rapid.T) block.Owner {
	h := rapid.SampledFrom(handles).Draw(t, "handle")
	a := s.attrs[rapid.IntRange(0, len(s.attrs)-1).Draw(t, "attrs")]
	switch rapid.IntRange(0, 2).Draw(t, "attrsCopy") {
	case 1:
		a = maps.Clone(a)
	case 2:
		if a == nil {
			a = map[string]string{}
		}
	}
	return block.Owner{Handle: h, Attrs: a}
}

// drawAddr draws an address: mostly in the block, sometimes just outside
// or of the other family.
func (s *machine) drawAddr(t *rapid.T) netip.Addr {
	switch rapid.IntRange(0, 9).Draw(t, "where") {
	case 0:
		last := s.m.addr(s.m.size - 1)
		return last.Next()
	case 1:
		if s.m.prefix.Addr().Is4() {
			return netip.AddrFrom16(s.m.addr(0).As16()) // IPv4-mapped: not in an IPv4 block
		}
		return netip.MustParseAddr("10.0.0.1")
	}
	return s.m.addr(rapid.IntRange(0, s.m.size-1).Draw(t, "ordinal"))
}

// drawAllocated draws an allocated address when there is one.
func (s *machine) drawAllocated(t *rapid.T) netip.Addr {
	if len(s.m.alloc) == 0 || rapid.IntRange(0, 4).Draw(t, "anyAddr") == 0 {
		return s.drawAddr(t)
	}
	keys := slices.Sorted(maps.Keys(s.m.alloc))
	return s.m.addr(rapid.SampledFrom(keys).Draw(t, "allocated"))
}

func (s *machine) Allocate(t *rapid.T) {
	n := rapid.IntRange(-1, 5).Draw(t, "n")
	if rapid.IntRange(0, 9).Draw(t, "big") == 0 {
		n = rapid.IntRange(0, s.m.size+2).Draw(t, "bigN")
	}
	o := s.drawOwner(t)
	// dst with room or without: one address into room takes the hot path.
	prefix := make([]netip.Addr, 1, 1+rapid.IntRange(0, 2).Draw(t, "room"))
	prefix[0] = netip.MustParseAddr("1.2.3.4")
	got, seq := s.b.Allocate(prefix, n, o)
	if got[0] != prefix[0] {
		t.Fatal("Allocate overwrote dst")
	}
	got = got[1:]

	want := min(max(n, 0), s.m.nfree())
	if want == 0 {
		if len(got) != 0 || seq != s.m.seq {
			t.Fatalf("nothing to allocate: got %v, seq %d want %d", got, seq, s.m.seq)
		}
		return
	}
	s.m.seq++
	if seq != s.m.seq {
		t.Fatalf("seq %d, want %d", seq, s.m.seq)
	}
	if len(got) != want {
		t.Fatalf("got %d addresses, want %d", len(got), want)
	}
	for _, a := range got {
		i := s.m.cursor
		for !s.m.free(i) {
			i = (i + 1) % s.m.size
		}
		if a != s.m.addr(i) {
			t.Fatalf("next-fit from %d: got %v, want %v", s.m.cursor, a, s.m.addr(i))
		}
		s.m.alloc[i] = modelAlloc{o.Handle, o.Attrs, seq}
		delete(s.m.rel, i)
		s.m.cursor = (i + 1) % s.m.size
	}
}

// AllocateWith allocates with a cooldown cutoff and a skip set, against a
// model that scans next-fit for free addresses both allow.
func (s *machine) AllocateWith(t *rapid.T) {
	n := rapid.IntRange(0, 5).Draw(t, "n")
	o := s.drawOwner(t)
	var opts block.AllocOptions
	var cutoff int64
	if rapid.Bool().Draw(t, "cooldown") {
		opts.ReleasedBefore = relTime(t, "cutoff")
		cutoff = opts.ReleasedBefore.UnixNano()
	}
	skip := map[netip.Addr]bool{}
	if rapid.Bool().Draw(t, "skip") {
		for range rapid.IntRange(0, 4).Draw(t, "nskip") {
			skip[s.m.addr(rapid.IntRange(0, s.m.size-1).Draw(t, "skipped"))] = true
		}
		opts.Skip = func(a netip.Addr) bool { return skip[a] }
	}
	ok := func(i int) bool {
		if ns := s.m.rel[i]; cutoff != 0 && ns != 0 && ns >= cutoff {
			return false
		}
		return !skip[s.m.addr(i)]
	}
	var want []int
	for k := range s.m.size {
		if i := (s.m.cursor + k) % s.m.size; len(want) < n && s.m.free(i) && ok(i) {
			want = append(want, i)
		}
	}
	before := s.encode(t)
	got, seq := s.b.AllocateWith(nil, n, o, opts)
	if len(want) == 0 {
		if len(got) != 0 || seq != s.m.seq || string(s.encode(t)) != string(before) {
			t.Fatalf("AllocateWith with nothing allowed: got %v, seq %d (model %d), block changed", got, seq, s.m.seq)
		}
		return
	}
	s.m.seq++
	if seq != s.m.seq || len(got) != len(want) {
		t.Fatalf("AllocateWith: got %v seq %d, want %d addresses seq %d", got, seq, len(want), s.m.seq)
	}
	for k, i := range want {
		if got[k] != s.m.addr(i) {
			t.Fatalf("AllocateWith from %d: got %v, want %v", s.m.cursor, got, want)
		}
		s.m.alloc[i] = modelAlloc{o.Handle, o.Attrs, seq}
		delete(s.m.rel, i)
	}
	s.m.cursor = (want[len(want)-1] + 1) % s.m.size
}

func (s *machine) PruneReleased(t *rapid.T) {
	at := relTime(t, "prune")
	n := s.b.PruneReleased(at)
	want := 0
	for i, ns := range s.m.rel {
		if ns < at.UnixNano() {
			delete(s.m.rel, i)
			want++
		}
	}
	if n != want {
		t.Fatalf("PruneReleased(%v) = %d, want %d", at, n, want)
	}
	if want > 0 {
		s.m.seq++
	}
}

func (s *machine) Assign(t *rapid.T) {
	a := s.drawAddr(t)
	o := s.drawOwner(t)
	seq, err := s.b.Assign(a, o)
	i, in := s.m.ordinal(a)
	var want error
	switch {
	case !in:
		want = block.ErrOutOfBlock
	case s.m.resv[i]:
		want = block.ErrReserved
	case !s.m.free(i):
		want = block.ErrInUse
	}
	if want != nil {
		if !errors.Is(err, want) {
			t.Fatalf("Assign %v: got %v, want %v", a, err, want)
		}
		return
	}
	if err != nil {
		t.Fatalf("Assign %v: %v", a, err)
	}
	s.m.seq++
	if seq != s.m.seq {
		t.Fatalf("seq %d, want %d", seq, s.m.seq)
	}
	s.m.alloc[i] = modelAlloc{o.Handle, o.Attrs, seq}
	delete(s.m.rel, i)
}

func (s *machine) Release(t *rapid.T) {
	a := s.drawAllocated(t)
	i, in := s.m.ordinal(a)
	cur, held := s.m.alloc[i]
	held = held && in
	var c block.Check
	switch rapid.IntRange(0, 6).Draw(t, "check") {
	case 1:
		c.Handle = cur.handle
	case 2:
		c.Handle = rapid.SampledFrom(handles).Draw(t, "maybeWrongHandle")
	case 3:
		c.Seq, c.CheckSeq = cur.seq, true
	case 4:
		// A stale or future number.
		c.Seq, c.CheckSeq = cur.seq+uint64(rapid.IntRange(-3, 3).Draw(t, "seqOff")), true
	case 5:
		c = block.Check{Handle: cur.handle, Seq: cur.seq, CheckSeq: true}
	case 6:
		c = block.Check{Handle: rapid.SampledFrom(handles).Draw(t, "h"), Seq: cur.seq + uint64(rapid.IntRange(-1, 1).Draw(t, "off")), CheckSeq: true}
	}
	before := s.encode(t)
	var at time.Time
	var err error
	if rapid.Bool().Draw(t, "releaseAt") {
		at = relTime(t, "releasedAt")
		err = s.b.ReleaseAt(a, c, at)
	} else {
		err = s.b.Release(a, c)
	}
	var want error
	switch {
	case !in:
		want = block.ErrOutOfBlock
	case !held:
		want = block.ErrNotAllocated
	case c.Handle != "" && c.Handle != cur.handle:
		want = block.ErrHandleMismatch
	case c.CheckSeq && c.Seq != cur.seq:
		want = block.ErrSeqMismatch
	}
	if want != nil {
		if !errors.Is(err, want) {
			t.Fatalf("Release %v %+v: got %v, want %v", a, c, err, want)
		}
		if in && s.m.resv[i] && !errors.Is(err, block.ErrReserved) {
			t.Fatalf("Release of reserved %v: %v", a, err)
		}
		if after := s.encode(t); string(after) != string(before) {
			t.Fatalf("refused Release %v changed the block", a)
		}
		return
	}
	if err != nil {
		t.Fatalf("Release %v %+v: %v", a, c, err)
	}
	s.m.seq++
	delete(s.m.alloc, i)
	if !at.IsZero() {
		s.m.rel[i] = at.UnixNano()
	}
}

func (s *machine) ReleaseHandle(t *rapid.T) {
	h := rapid.SampledFrom(handles).Draw(t, "handle")
	var got []netip.Addr
	var at time.Time
	if rapid.Bool().Draw(t, "releaseAt") {
		at = relTime(t, "releasedAt")
		var err error
		if got, err = s.b.ReleaseHandleAt(h, nil, at); err != nil {
			t.Fatal(err)
		}
	} else {
		got = s.b.ReleaseHandle(h, nil)
	}
	var want []netip.Addr
	for _, i := range slices.Sorted(maps.Keys(s.m.alloc)) {
		if s.m.alloc[i].handle == h {
			want = append(want, s.m.addr(i))
			delete(s.m.alloc, i)
			if !at.IsZero() {
				s.m.rel[i] = at.UnixNano()
			}
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ReleaseHandle %q: got %v, want %v", h, got, want)
	}
	if len(want) > 0 {
		s.m.seq++
	}
}

func (s *machine) Reserve(t *rapid.T) {
	a := s.drawAddr(t)
	err := s.b.Reserve(a)
	i, in := s.m.ordinal(a)
	_, used := s.m.alloc[i]
	switch {
	case !in:
		if !errors.Is(err, block.ErrOutOfBlock) {
			t.Fatalf("Reserve %v: %v", a, err)
		}
	case used:
		if !errors.Is(err, block.ErrInUse) {
			t.Fatalf("Reserve %v: %v", a, err)
		}
	case err != nil:
		t.Fatalf("Reserve %v: %v", a, err)
	case !s.m.resv[i]:
		s.m.resv[i] = true
		delete(s.m.rel, i)
		s.m.seq++
	}
}

func (s *machine) Unreserve(t *rapid.T) {
	a := s.drawAddr(t)
	if len(s.m.resv) > 0 && rapid.Bool().Draw(t, "pickReserved") {
		a = s.m.addr(rapid.SampledFrom(slices.Sorted(maps.Keys(s.m.resv))).Draw(t, "reserved"))
	}
	var at time.Time
	var err error
	if rapid.Bool().Draw(t, "unreserveAt") {
		at = relTime(t, "unreservedAt")
		err = s.b.UnreserveAt(a, at)
	} else {
		err = s.b.Unreserve(a)
	}
	i, in := s.m.ordinal(a)
	switch {
	case !in:
		if !errors.Is(err, block.ErrOutOfBlock) {
			t.Fatalf("Unreserve %v: %v", a, err)
		}
	case err != nil:
		t.Fatalf("Unreserve %v: %v", a, err)
	case s.m.resv[i]:
		delete(s.m.resv, i)
		if !at.IsZero() {
			s.m.rel[i] = at.UnixNano()
		}
		s.m.seq++
	}
}

func (s *machine) SetAffinity(t *rapid.T) {
	a := rapid.SampledFrom([]block.Affinity{{}, block.Host("node-1"), block.Host("node-2"), block.Virtual("lb")}).Draw(t, "affinity")
	at := time.Time{}
	if rapid.Bool().Draw(t, "at") {
		at = time.Unix(rapid.Int64Range(-1e10, 1e10).Draw(t, "sec"), rapid.Int64Range(0, 1e9-1).Draw(t, "nsec")).In(time.Local)
	}
	s.b.SetAffinity(a, at)
	s.m.aff, s.m.claim = a, at
	s.m.seq++
}

// Mirror stages the next change as an allocator does: the block is
// mirrored into its twin, which takes its place, and the old block becomes
// the twin. Sometimes the twin was changed first on its own (an attempt
// whose write failed); Mirror must undo that too.
func (s *machine) Mirror(t *rapid.T) {
	if rapid.IntRange(0, 2).Draw(t, "scribble") == 0 {
		x := s.twin
		if x.Size() == 0 {
			s.b.CopyTo(x)
		}
		for a := range x.All() {
			if rapid.Bool().Draw(t, "scribbleRelease") {
				_ = x.Release(a, block.Check{})
			} else {
				_ = x.ReleaseAt(a, block.Check{}, time.Unix(1, 0))
			}
			break
		}
		x.ReleaseHandle(rapid.SampledFrom(handles).Draw(t, "scribbleHandle"), nil)
		x.Allocate(make([]netip.Addr, 0, 1), rapid.IntRange(0, 3).Draw(t, "scribbleN"), s.drawOwner(t))
		x.Allocate(nil, 1, block.Owner{Handle: "scribbled", Attrs: map[string]string{"new": "owner"}})
		if rapid.Bool().Draw(t, "scribbleAff") {
			x.SetAffinity(block.Host("other"), time.Now())
		}
		x.PruneReleased(time.Unix(2, 0))
	}
	s.b.Mirror(s.twin)
	if d := block.CopyDiff(s.b, s.twin); d != "" {
		t.Fatalf("mirror differs in %s", d)
	}
	s.b, s.twin = s.twin, s.b
}

// CloneIsolation changes a clone and a CopyTo copy and checks the original
// is untouched.
func (s *machine) CloneIsolation(t *rapid.T) {
	before := s.encode(t)
	c := s.b.Clone()
	s.b.CopyTo(s.scratch)
	for _, x := range []*block.Block{c, s.scratch} {
		if !x.Equal(s.b) || !s.b.Equal(x) {
			t.Fatal("copy not Equal")
		}
		// Release first, then fill the block, so that released addresses
		// are handed out again with new owners and numbers.
		x.ReleaseHandle("pod-b", nil)
		for a := range s.b.All() {
			_ = x.Release(a, block.Check{})
			break
		}
		x.Allocate(nil, x.Size(), block.Owner{Handle: "pod-f", Attrs: map[string]string{"x": "y"}})
		_ = x.Unreserve(s.m.addr(0))
		x.SetAffinity(block.Host("other"), time.Now())
		if err := x.Verify(); err != nil {
			t.Fatal(err)
		}
	}
	if after := s.encode(t); string(after) != string(before) {
		t.Fatal("changing a copy changed the original")
	}
	if err := s.b.Verify(); err != nil {
		t.Fatal(err)
	}
}

func (s *machine) encode(t *rapid.T) []byte {
	data, err := s.b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func (s *machine) Check(t *rapid.T) {
	b, m := s.b, s.m
	if err := b.Verify(); err != nil {
		t.Fatalf("inconsistent: %v", err)
	}
	if b.Used() != len(m.alloc) || b.Reserved() != len(m.resv) || b.Free() != m.nfree() ||
		b.Used()+b.Free()+b.Reserved() != b.Size() || b.Empty() != (len(m.alloc) == 0) {
		t.Fatalf("counts: used %d reserved %d free %d, model %d %d %d", b.Used(), b.Reserved(), b.Free(), len(m.alloc), len(m.resv), m.nfree())
	}
	if b.Seq() != m.seq || b.Affinity() != m.aff || !b.ClaimTime().Equal(m.claim) {
		t.Fatalf("seq %d affinity %v %v, model %d %v %v", b.Seq(), b.Affinity(), b.ClaimTime(), m.seq, m.aff, m.claim)
	}
	// Allocations, in order, exactly the model's: nothing handed out twice.
	var want []string
	for _, i := range slices.Sorted(maps.Keys(m.alloc)) {
		x := m.alloc[i]
		want = append(want, fmt.Sprintf("%v %q %v %d", m.addr(i), x.handle, attrString(x.attrs), x.seq))
	}
	var got []string
	for a, al := range b.All() {
		got = append(got, fmt.Sprintf("%v %q %v %d", a, al.Owner.Handle, attrString(al.Owner.Attrs), al.Seq))
		if o, ok := b.Owner(a); !ok || o.Seq != al.Seq || o.Owner.Handle != al.Owner.Handle {
			t.Fatalf("Owner(%v) = %v %v, All says %v", a, o, ok, al)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("allocations:\n got %q\nwant %q", got, want)
	}
	// Owner records: one per distinct (handle, attrs), with exact counts.
	wantOwners := map[string]int{}
	for _, x := range m.alloc {
		wantOwners[fmt.Sprintf("%q %v", x.handle, attrString(x.attrs))]++
	}
	gotOwners := map[string]int{}
	for o, n := range b.Owners() {
		k := fmt.Sprintf("%q %v", o.Handle, attrString(o.Attrs))
		if _, dup := gotOwners[k]; dup || n <= 0 {
			t.Fatalf("owner %s listed twice or with %d addresses", k, n)
		}
		gotOwners[k] = n
	}
	if !maps.Equal(gotOwners, wantOwners) {
		t.Fatalf("owners:\n got %v\nwant %v", gotOwners, wantOwners)
	}
	for _, h := range handles {
		var want []netip.Addr
		for _, i := range slices.Sorted(maps.Keys(m.alloc)) {
			if m.alloc[i].handle == h {
				want = append(want, m.addr(i))
			}
		}
		if got := b.AddrsOf(h, nil); !slices.Equal(got, want) {
			t.Fatalf("AddrsOf(%q) = %v, want %v", h, got, want)
		}
	}
	kept := 0
	for _, r := range m.rel {
		if r != 0 {
			kept++
		}
	}
	if got := b.ReleaseTimes(); got != kept {
		t.Fatalf("ReleaseTimes() = %d, model %d", got, kept)
	}
	for i := range m.size {
		if b.IsReserved(m.addr(i)) != m.resv[i] {
			t.Fatalf("IsReserved(%v) = %v", m.addr(i), !m.resv[i])
		}
		at, ok := b.ReleasedAt(m.addr(i))
		if ns, want := m.rel[i]; ok != want || (ok && at.UnixNano() != ns) {
			t.Fatalf("ReleasedAt(%v) = %v %v, model %v %v", m.addr(i), at, ok, time.Unix(0, ns), want)
		}
	}
	for k := range 7 {
		since := relEpoch.Add(time.Duration(k) * time.Second)
		want := 0
		for _, ns := range m.rel {
			if ns >= since.UnixNano() {
				want++
			}
		}
		if got := b.CoolingSince(since); got != want {
			t.Fatalf("CoolingSince(%v) = %d, want %d", since, got, want)
		}
	}
	// Both encodings round trip to an Equal block.
	data := s.encode(t)
	var back block.Block
	if err := back.UnmarshalBinary(data); err != nil {
		t.Fatalf("UnmarshalBinary: %v", err)
	}
	if !back.Equal(b) || back.Verify() != nil {
		t.Fatal("binary round trip not Equal")
	}
	if again, _ := back.MarshalBinary(); string(again) != string(data) {
		t.Fatal("binary encoding not canonical")
	}
	js, err := b.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var jb block.Block
	if err := jb.UnmarshalJSON(js); err != nil {
		t.Fatalf("UnmarshalJSON %s: %v", js, err)
	}
	if !jb.Equal(b) || jb.Verify() != nil {
		t.Fatalf("JSON round trip not Equal: %s", js)
	}
	// The decoded block keeps working like the original.
	back.Allocate(nil, 1, block.Owner{Handle: "pod-a"})
	if err := back.Verify(); err != nil {
		t.Fatal(err)
	}
}

func attrString(m map[string]string) string {
	if len(m) == 0 {
		return "{}"
	}
	return fmt.Sprint(m) // fmt sorts map keys
}

func TestModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		t.Repeat(rapid.StateMachineActions(newMachine(t)))
	})
}
