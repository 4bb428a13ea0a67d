package block_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
)

var (
	pfx   = netip.MustParsePrefix
	addr  = netip.MustParseAddr
	podA  = block.Owner{Handle: "pod-a"}
	podB  = block.Owner{Handle: "pod-b"}
	noChk = block.Check{}
)

func mustNew(t testing.TB, p string, seq uint64) *block.Block {
	t.Helper()
	b, err := block.NewWithSeq(pfx(p), seq)
	require.NoError(t, err)
	return b
}

func TestNewSizes(t *testing.T) {
	tests := []struct {
		prefix string
		size   int
		err    string // "" for accepted
	}{
		{"10.0.0.0/20", 4096, ""},
		{"10.0.0.0/26", 64, ""},
		{"10.0.0.64/26", 64, ""},
		{"10.0.0.5/32", 1, ""},
		{"10.0.0.0/31", 2, ""},
		{"fd00::/116", 4096, ""},
		{"fd00::/122", 64, ""},
		{"fd00::1/128", 1, ""},
		{"::ffff:10.0.0.0/122", 64, ""},
		{"10.0.0.0/19", 0, "block 10.0.0.0/19: IPv4 block size must be /20 to /32"},
		{"10.0.0.0/8", 0, "block 10.0.0.0/8: IPv4 block size must be /20 to /32"},
		{"0.0.0.0/0", 0, "block 0.0.0.0/0: IPv4 block size must be /20 to /32"},
		{"fd00::/115", 0, "block fd00::/115: IPv6 block size must be /116 to /128"},
		{"fd00::/64", 0, "block fd00::/64: IPv6 block size must be /116 to /128"},
		{"10.0.0.1/26", 0, "block 10.0.0.1/26: prefix is not masked (want 10.0.0.0/26)"},
		{"fd00::1/122", 0, "block fd00::1/122: prefix is not masked (want fd00::/122)"},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			b, err := block.New(pfx(tt.prefix))
			if tt.err != "" {
				require.ErrorIs(t, err, block.ErrInvalidPrefix)
				assert.True(t, strings.HasPrefix(err.Error(), tt.err), "error %q", err)
				assert.Nil(t, b)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.size, b.Size())
			assert.Equal(t, tt.size, b.Free())
			assert.Equal(t, pfx(tt.prefix), b.Prefix())
			assert.True(t, b.Empty())
			require.NoError(t, b.Verify())
		})
	}
	_, err := block.New(netip.Prefix{})
	assert.ErrorIs(t, err, block.ErrInvalidPrefix)
}

func TestSeedsDoNotRepeat(t *testing.T) {
	// A block created again starts above every number of its earlier life.
	first, err := block.New(pfx("10.0.0.0/30"))
	require.NoError(t, err)
	assert.Greater(t, first.Seq(), uint64(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()))
	for range 3 {
		first.Allocate(nil, 1, podA)
	}
	again, err := block.New(pfx("10.0.0.0/30"))
	require.NoError(t, err)
	assert.Greater(t, again.Seq(), first.Seq())
}

func TestSeedsConcurrent(t *testing.T) {
	// Blocks created at once, from many goroutines, start at distinct
	// counters even when the clock does not move between them.
	const n = 8
	seqs := make(chan uint64, n*100)
	done := make(chan struct{})
	for range n {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 100 {
				b, err := block.New(pfx("10.0.0.0/32"))
				if err != nil {
					panic(err)
				}
				seqs <- b.Seq()
			}
		}()
	}
	for range n {
		<-done
	}
	close(seqs)
	seen := map[uint64]bool{}
	for s := range seqs {
		require.False(t, seen[s], "seed %d twice", s)
		seen[s] = true
	}
}

func TestErrorTexts(t *testing.T) {
	b := mustNew(t, "10.0.0.0/26", 0)
	_, err := b.Assign(addr("10.0.0.5"), podA)
	require.NoError(t, err)
	for range 6 {
		b.SetAffinity(block.Host("n"), time.Time{})
	} // counter now 7: 10.0.0.5 recorded 1
	require.NoError(t, b.Reserve(addr("10.0.0.0")))

	tests := []struct {
		name string
		err  error
		is   []error
		text string
	}{
		{"seq", b.Release(addr("10.0.0.5"), block.Check{Seq: 7, CheckSeq: true}),
			[]error{block.ErrSeqMismatch}, "block 10.0.0.0/26: release 10.0.0.5: sequence number 7 does not match 1"},
		{"handle", b.Release(addr("10.0.0.5"), block.Check{Handle: "pod-b"}),
			[]error{block.ErrHandleMismatch}, `block 10.0.0.0/26: release 10.0.0.5: handle "pod-b" does not match "pod-a"`},
		{"not allocated", b.Release(addr("10.0.0.6"), noChk),
			[]error{block.ErrNotAllocated}, "block 10.0.0.0/26: release 10.0.0.6: address not allocated"},
		{"release reserved", b.Release(addr("10.0.0.0"), noChk),
			[]error{block.ErrNotAllocated, block.ErrReserved}, "block 10.0.0.0/26: release 10.0.0.0: address reserved, not allocated"},
		{"release outside", b.Release(addr("10.0.1.0"), noChk),
			[]error{block.ErrOutOfBlock}, "block 10.0.0.0/26: release 10.0.1.0: address not in block"},
		{"release other family", b.Release(addr("::ffff:10.0.0.5"), noChk),
			[]error{block.ErrOutOfBlock}, "block 10.0.0.0/26: release ::ffff:10.0.0.5: address not in block"},
		{"assign in use", second(b.Assign(addr("10.0.0.5"), podB)),
			[]error{block.ErrInUse}, `block 10.0.0.0/26: assign 10.0.0.5: address in use by handle "pod-a"`},
		{"assign reserved", second(b.Assign(addr("10.0.0.0"), podB)),
			[]error{block.ErrReserved}, "block 10.0.0.0/26: assign 10.0.0.0: address reserved"},
		{"assign outside", second(b.Assign(addr("10.0.0.64"), podB)),
			[]error{block.ErrOutOfBlock}, "block 10.0.0.0/26: assign 10.0.0.64: address not in block"},
		{"assign invalid", second(b.Assign(netip.Addr{}, podB)),
			[]error{block.ErrOutOfBlock}, "block 10.0.0.0/26: assign invalid IP: address not in block"},
		{"reserve in use", b.Reserve(addr("10.0.0.5")),
			[]error{block.ErrInUse}, `block 10.0.0.0/26: reserve 10.0.0.5: address in use by handle "pod-a"`},
		{"reserve outside", b.Reserve(addr("10.0.0.99")),
			[]error{block.ErrOutOfBlock}, "block 10.0.0.0/26: reserve 10.0.0.99: address not in block"},
		{"unreserve outside", b.Unreserve(addr("10.0.0.99")),
			[]error{block.ErrOutOfBlock}, "block 10.0.0.0/26: unreserve 10.0.0.99: address not in block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Error(t, tt.err)
			assert.Equal(t, tt.text, tt.err.Error())
			for _, s := range tt.is {
				assert.ErrorIs(t, tt.err, s)
			}
			assert.NotErrorIs(t, tt.err, block.ErrCorrupt)
		})
	}
	// None of the refused calls changed anything.
	assert.Equal(t, uint64(8), b.Seq())
	assert.Equal(t, 1, b.Used())
	assert.Equal(t, 1, b.Reserved())
	require.NoError(t, b.Verify())
}

func second[T any](_ T, err error) error { return err }

func TestReleaseChecks(t *testing.T) {
	b := mustNew(t, "fd00::/122", 100)
	got, seq := b.Allocate(nil, 2, podA)
	require.Equal(t, []netip.Addr{addr("fd00::"), addr("fd00::1")}, got)
	require.Equal(t, uint64(101), seq)

	// Refused checks change nothing, not even the counter.
	before, _ := b.MarshalBinary()
	assert.ErrorIs(t, b.Release(got[0], block.Check{Seq: seq - 1, CheckSeq: true}), block.ErrSeqMismatch)
	assert.ErrorIs(t, b.Release(got[0], block.Check{Handle: "pod-b", Seq: seq, CheckSeq: true}), block.ErrHandleMismatch)
	assert.ErrorIs(t, b.Release(got[0], block.Check{Handle: "pod-a", Seq: 0, CheckSeq: true}), block.ErrSeqMismatch)
	after, _ := b.MarshalBinary()
	assert.Equal(t, before, after)

	// Seq 0 without CheckSeq is no check; a right handle and seq pass.
	require.NoError(t, b.Release(got[0], block.Check{Handle: "pod-a"}))
	require.NoError(t, b.Release(got[1], block.Check{Handle: "pod-a", Seq: seq, CheckSeq: true}))
	assert.Equal(t, uint64(103), b.Seq())
	assert.True(t, b.Empty())

	// The address comes back with a new number: the old one is now stale.
	b2 := mustNew(t, "10.0.0.0/32", 0)
	_, s1 := b2.Allocate(nil, 1, podA)
	require.NoError(t, b2.Release(addr("10.0.0.0"), noChk))
	_, s2 := b2.Allocate(nil, 1, podA)
	assert.NotEqual(t, s1, s2)
	assert.ErrorIs(t, b2.Release(addr("10.0.0.0"), block.Check{Seq: s1, CheckSeq: true}), block.ErrSeqMismatch)
	require.NoError(t, b2.Release(addr("10.0.0.0"), block.Check{Seq: s2, CheckSeq: true}))
}

func TestNextFitReuseOrder(t *testing.T) {
	b := mustNew(t, "10.0.0.0/28", 0)
	ips := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, x := range s {
			out = append(out, addr("10.0.0."+x))
		}
		return out
	}
	got, _ := b.Allocate(nil, 5, podA)
	require.Equal(t, ips("0", "1", "2", "3", "4"), got)
	require.NoError(t, b.Release(addr("10.0.0.1"), noChk))
	require.NoError(t, b.Release(addr("10.0.0.3"), noChk))

	// The released addresses come back only after the rest of the block.
	got, _ = b.Allocate(nil, 11, podB)
	require.Equal(t, ips("5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15"), got)
	got, _ = b.Allocate(nil, 1, podB)
	require.Equal(t, ips("1"), got)

	// The cursor moved past 10.0.0.1; releasing 10.0.0.0 (behind it) and
	// 10.0.0.9 (ahead): 10.0.0.3, then 10.0.0.9, then round to 10.0.0.0.
	require.NoError(t, b.Release(addr("10.0.0.0"), noChk))
	require.NoError(t, b.Release(addr("10.0.0.9"), noChk))
	got, _ = b.Allocate(nil, 5, podB)
	require.Equal(t, ips("3", "9", "0"), got, "fewer when the block fills")
	assert.Equal(t, 0, b.Free())
	got, seq := b.Allocate(got[:0], 1, podB)
	assert.Empty(t, got)
	assert.Equal(t, b.Seq(), seq, "nothing allocated: no change")

	// Assign does not move the cursor; reserved addresses are skipped.
	c := mustNew(t, "10.0.0.0/29", 0)
	_, err := c.Assign(addr("10.0.0.0"), podA)
	require.NoError(t, err)
	require.NoError(t, c.Reserve(addr("10.0.0.1")))
	_, err = c.Assign(addr("10.0.0.5"), podA)
	require.NoError(t, err)
	got, _ = c.Allocate(nil, 8, podB)
	assert.Equal(t, ips("2", "3", "4", "6", "7"), got)

	// n <= 0 hands out nothing.
	d := mustNew(t, "10.0.0.0/29", 0)
	for _, n := range []int{0, -1} {
		got, seq = d.Allocate(nil, n, podA)
		assert.Empty(t, got)
		assert.Equal(t, uint64(0), seq)
	}
}

func TestReserveRules(t *testing.T) {
	b := mustNew(t, "10.0.0.0/30", 0)
	_, err := b.Assign(addr("10.0.0.2"), podA)
	require.NoError(t, err)
	steps := []struct {
		op      string
		a       string
		err     error
		seq     uint64 // counter after the step
		free    int
		reserve bool // IsReserved after the step
	}{
		{"reserve", "10.0.0.0", nil, 2, 2, true},
		{"reserve", "10.0.0.0", nil, 2, 2, true}, // again: no change
		{"reserve", "10.0.0.2", block.ErrInUse, 2, 2, false},
		{"reserve", "10.0.0.4", block.ErrOutOfBlock, 2, 2, false},
		{"unreserve", "10.0.0.1", nil, 2, 2, false}, // not reserved: no change
		{"unreserve", "10.0.0.2", nil, 2, 2, false}, // allocated, not reserved: no change
		{"reserve", "10.0.0.3", nil, 3, 1, true},
		{"unreserve", "10.0.0.0", nil, 4, 2, false},
		{"unreserve", "10.0.0.0", nil, 4, 2, false},
		{"unreserve", "fd00::", block.ErrOutOfBlock, 4, 2, false},
	}
	for i, s := range steps {
		var err error
		if s.op == "reserve" {
			err = b.Reserve(addr(s.a))
		} else {
			err = b.Unreserve(addr(s.a))
		}
		if s.err == nil {
			require.NoError(t, err, "step %d", i)
		} else {
			require.ErrorIs(t, err, s.err, "step %d", i)
		}
		assert.Equal(t, s.seq, b.Seq(), "step %d seq", i)
		assert.Equal(t, s.free, b.Free(), "step %d free", i)
		assert.Equal(t, s.reserve, b.IsReserved(addr(s.a)), "step %d IsReserved", i)
		assert.Equal(t, b.Size(), b.Used()+b.Free()+b.Reserved(), "step %d sum", i)
		require.NoError(t, b.Verify())
	}
	// Reserved addresses are not allocations: Empty ignores them, Owner
	// and All do not report them.
	require.NoError(t, b.Release(addr("10.0.0.2"), noChk))
	assert.True(t, b.Empty())
	assert.Equal(t, 1, b.Reserved())
	_, ok := b.Owner(addr("10.0.0.3"))
	assert.False(t, ok)
	for range b.All() {
		t.Fatal("All yields a reserved address")
	}
	got, _ := b.Allocate(nil, 4, podA)
	assert.Equal(t, []netip.Addr{addr("10.0.0.0"), addr("10.0.0.1"), addr("10.0.0.2")}, got)
}

func TestOwnersShared(t *testing.T) {
	b := mustNew(t, "10.0.0.0/26", 0)
	attrs := map[string]string{"pod": "a", "ns": "x"}
	b.Allocate(nil, 2, block.Owner{Handle: "h", Attrs: attrs})
	// An equal map, a different map object: the same owner.
	b.Allocate(nil, 1, block.Owner{Handle: "h", Attrs: map[string]string{"ns": "x", "pod": "a"}})
	// nil and empty attributes are equal.
	b.Allocate(nil, 1, block.Owner{Handle: "g"})
	b.Allocate(nil, 1, block.Owner{Handle: "g", Attrs: map[string]string{}})
	// Same handle, other attributes: another owner.
	b.Allocate(nil, 1, block.Owner{Handle: "h", Attrs: map[string]string{"pod": "b"}})

	counts := map[string]int{}
	for o, n := range b.Owners() {
		counts[fmt.Sprintf("%s %v", o.Handle, o.Attrs)] += n
	}
	assert.Equal(t, map[string]int{"h map[ns:x pod:a]": 3, "g map[]": 2, "h map[pod:b]": 1}, counts)

	// The record keeps the first map, uncopied.
	al, ok := b.Owner(addr("10.0.0.2"))
	require.True(t, ok)
	assert.Equal(t, "h", al.Owner.Handle)
	assert.Equal(t, fmt.Sprintf("%p", attrs), fmt.Sprintf("%p", al.Owner.Attrs))

	assert.Equal(t, []netip.Addr{addr("10.0.0.0"), addr("10.0.0.1"), addr("10.0.0.2"), addr("10.0.0.5")}, b.AddrsOf("h", nil))
	got := b.ReleaseHandle("h", nil)
	assert.Equal(t, []netip.Addr{addr("10.0.0.0"), addr("10.0.0.1"), addr("10.0.0.2"), addr("10.0.0.5")}, got)
	assert.Empty(t, b.AddrsOf("h", nil))
	n := 0
	for o := range b.Owners() {
		assert.Equal(t, "g", o.Handle, "records of h dropped")
		n++
	}
	assert.Equal(t, 1, n)
	seq := b.Seq()
	assert.Empty(t, b.ReleaseHandle("h", nil))
	assert.Equal(t, seq, b.Seq(), "releasing nothing is no change")
	require.NoError(t, b.Verify())
}

func TestAffinity(t *testing.T) {
	tests := []struct {
		a    block.Affinity
		s    string
		zero bool
	}{
		{block.Affinity{}, "", true},
		{block.Host("node-1"), "host:node-1", false},
		{block.Virtual("lb-1"), "virtual:lb-1", false},
		{block.Host("a:b"), "host:a:b", false},
		{block.Host(""), "host:", false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.s, tt.a.String())
		assert.Equal(t, tt.zero, tt.a.IsZero())
		assert.True(t, tt.a.IsValid())
		back, err := block.ParseAffinity(tt.s)
		require.NoError(t, err)
		assert.Equal(t, tt.a, back)

		// In JSON an affinity is its string.
		data, err := json.Marshal(struct{ A block.Affinity }{tt.a})
		require.NoError(t, err)
		assert.Equal(t, `{"A":`+strconv.Quote(tt.s)+`}`, string(data))
		var got struct{ A block.Affinity }
		require.NoError(t, json.Unmarshal(data, &got))
		assert.Equal(t, tt.a, got.A)
	}
	for _, bad := range []block.Affinity{{Name: "x"}, {Kind: 3, Name: "y"}} {
		_, err := json.Marshal(bad)
		assert.ErrorIs(t, err, block.ErrInvalidAffinity)
		assert.ErrorContains(t, err, `is not an affinity`)
	}
	var got block.Affinity
	err := json.Unmarshal([]byte(`"node-1"`), &got)
	assert.ErrorIs(t, err, block.ErrInvalidAffinity)
	assert.ErrorContains(t, err, `parse affinity "node-1": want host:<node> or virtual:<name>`)
	for _, s := range []string{"node-1", "hosts:x", "Host:x", ":x", "none:"} {
		_, err := block.ParseAffinity(s)
		assert.ErrorIs(t, err, block.ErrInvalidAffinity, s)
	}
	assert.False(t, block.Affinity{Name: "x"}.IsValid())
	assert.False(t, block.Affinity{Kind: 3}.IsValid())
	assert.Equal(t, "AffinityKind(3)", block.AffinityKind(3).String())
	assert.Equal(t, "none", block.NoAffinity.String())

	b := mustNew(t, "10.0.0.0/26", 5)
	at := time.Date(2025, 1, 2, 3, 4, 5, 6, time.FixedZone("X", 3600))
	b.SetAffinity(block.Host("node-1"), at)
	assert.Equal(t, block.Host("node-1"), b.Affinity())
	assert.True(t, at.Equal(b.ClaimTime()))
	assert.Equal(t, time.UTC, b.ClaimTime().Location())
	assert.Equal(t, uint64(6), b.Seq())
	assert.Panics(t, func() { b.SetAffinity(block.Affinity{Kind: 9}, at) })
	b.SetAffinity(block.Affinity{}, time.Time{})
	assert.True(t, b.Affinity().IsZero())
	assert.Equal(t, uint64(7), b.Seq())
}

func TestString(t *testing.T) {
	b := mustNew(t, "10.0.0.0/26", 0)
	assert.Equal(t, "10.0.0.0/26 0/64 used", b.String())
	b.SetAffinity(block.Host("node-1"), time.Now())
	b.Allocate(nil, 12, podA)
	assert.Equal(t, "10.0.0.0/26 host:node-1 12/64 used", b.String())
	require.NoError(t, b.Reserve(addr("10.0.0.63")))
	assert.Equal(t, "10.0.0.0/26 host:node-1 12/64 used, 1 reserved", b.String())
	assert.Equal(t, "invalid block", new(block.Block).String())
}

func TestZeroBlock(t *testing.T) {
	var b block.Block
	assert.False(t, b.Prefix().IsValid())
	assert.Equal(t, 0, b.Size()+b.Used()+b.Free()+b.Reserved())
	assert.True(t, b.Empty())
	got, _ := b.Allocate(nil, 3, podA)
	assert.Empty(t, got)
	_, err := b.Assign(addr("10.0.0.1"), podA)
	assert.ErrorIs(t, err, block.ErrOutOfBlock)
	assert.ErrorIs(t, b.Release(addr("10.0.0.1"), noChk), block.ErrOutOfBlock)
	assert.ErrorIs(t, b.Reserve(addr("10.0.0.1")), block.ErrOutOfBlock)
	assert.ErrorIs(t, b.Unreserve(addr("10.0.0.1")), block.ErrOutOfBlock)
	assert.False(t, b.IsReserved(addr("10.0.0.1")))
	_, ok := b.Owner(addr("10.0.0.1"))
	assert.False(t, ok)
	assert.Empty(t, b.AddrsOf("x", nil))
	assert.Empty(t, b.ReleaseHandle("x", nil))
	b.SetAffinity(block.Host("n"), time.Now())
	assert.True(t, b.Affinity().IsZero())
	assert.Equal(t, uint64(0), b.Seq())
	_, err = b.MarshalBinary()
	assert.ErrorIs(t, err, block.ErrInvalidPrefix)
	_, err = b.MarshalJSON()
	assert.ErrorIs(t, err, block.ErrInvalidPrefix)
	assert.True(t, b.Equal(new(block.Block)))
	assert.True(t, b.Clone().Equal(&b))
	assert.False(t, b.Equal(mustNew(t, "10.0.0.0/32", 0)))
	assert.False(t, b.Equal(nil))
	assert.True(t, (*block.Block)(nil).Equal(nil))
	require.NoError(t, b.Verify())
}

func TestClaimTimeRange(t *testing.T) {
	b := mustNew(t, "10.0.0.0/30", 0)
	b.SetAffinity(block.Host("n"), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC))
	_, err := b.MarshalBinary()
	assert.ErrorIs(t, err, block.ErrCorrupt)
	_, err = b.MarshalJSON()
	assert.ErrorIs(t, err, block.ErrCorrupt)
	for _, at := range []time.Time{
		time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(1969, 12, 31, 23, 59, 59, 5, time.UTC),
	} {
		b.SetAffinity(block.Host("n"), at)
		roundTrip(t, b)
	}
}

// roundTrip checks both encodings give back an Equal, consistent block.
func roundTrip(t *testing.T, b *block.Block) {
	t.Helper()
	roundTripBinary(t, b)
	js, err := b.MarshalJSON()
	require.NoError(t, err)
	var jb block.Block
	require.NoError(t, jb.UnmarshalJSON(js), "%s", js)
	require.NoError(t, jb.Verify())
	require.True(t, b.Equal(&jb), "JSON round trip of %s", js)
}

// roundTripBinary checks the binary encoding gives back an Equal,
// consistent block and is canonical.
func roundTripBinary(t *testing.T, b *block.Block) {
	t.Helper()
	data, err := b.MarshalBinary()
	require.NoError(t, err)
	var back block.Block
	require.NoError(t, back.UnmarshalBinary(data))
	require.NoError(t, back.Verify())
	require.True(t, b.Equal(&back), "binary round trip of %v", b)
	again, err := back.MarshalBinary()
	require.NoError(t, err)
	require.Equal(t, data, again, "binary encoding is canonical")
}

func TestEqualAndClone(t *testing.T) {
	b := mustNew(t, "10.0.0.0/28", 10)
	b.Allocate(nil, 3, block.Owner{Handle: "a", Attrs: map[string]string{"k": "v"}})
	b.Allocate(nil, 2, podB)
	require.NoError(t, b.Release(addr("10.0.0.1"), noChk))
	c := b.Clone()
	require.True(t, b.Equal(c))
	require.NoError(t, c.Verify())

	// Changing the clone leaves the original alone, and vice versa.
	before, _ := b.MarshalBinary()
	c.Allocate(nil, 3, podA)
	require.NoError(t, c.Release(addr("10.0.0.0"), noChk))
	require.NoError(t, c.Reserve(addr("10.0.0.1")))
	c.SetAffinity(block.Host("x"), time.Now())
	after, _ := b.MarshalBinary()
	assert.Equal(t, before, after)
	assert.False(t, b.Equal(c))

	// CopyTo into a block of another size and shape.
	d := mustNew(t, "fd00::/120", 0)
	d.Allocate(nil, 200, podA)
	b.CopyTo(d)
	require.True(t, b.Equal(d))
	require.NoError(t, d.Verify())
	b.CopyTo(b)
	require.True(t, b.Equal(d))

	// Each part of the state matters to Equal: pairs of changes that move
	// the counter alike but leave different blocks.
	now := time.Now()
	pairs := map[string][2]func(*block.Block){
		"affinity": {
			func(x *block.Block) { x.SetAffinity(block.Host("y"), now) },
			func(x *block.Block) { x.SetAffinity(block.Virtual("y"), now) },
		},
		"claim time": {
			func(x *block.Block) { x.SetAffinity(block.Host("y"), now) },
			func(x *block.Block) { x.SetAffinity(block.Host("y"), now.Add(1)) },
		},
		"reserved": {
			func(x *block.Block) { _ = x.Reserve(addr("10.0.0.15")) },
			func(x *block.Block) { _ = x.Reserve(addr("10.0.0.14")) },
		},
		"cursor": {
			func(x *block.Block) { x.Allocate(nil, 1, podA); _ = x.Release(addr("10.0.0.5"), noChk) },
			func(x *block.Block) { _, _ = x.Assign(addr("10.0.0.5"), podA); _ = x.Release(addr("10.0.0.5"), noChk) },
		},
		"address": {
			func(x *block.Block) { _, _ = x.Assign(addr("10.0.0.1"), podA) },
			func(x *block.Block) { _, _ = x.Assign(addr("10.0.0.7"), podA) },
		},
		"handle": {
			func(x *block.Block) { _, _ = x.Assign(addr("10.0.0.1"), podA) },
			func(x *block.Block) { _, _ = x.Assign(addr("10.0.0.1"), podB) },
		},
	}
	for name, p := range pairs {
		x, y := b.Clone(), b.Clone()
		p[0](x)
		p[1](y)
		require.Equal(t, x.Seq(), y.Seq(), name)
		assert.False(t, x.Equal(y), name)
		assert.False(t, y.Equal(x), name)
	}
	// Same everything but the owner's attributes, or the allocation seq.
	x := mustNew(t, "10.0.0.0/30", 0)
	y := mustNew(t, "10.0.0.0/30", 0)
	x.Allocate(nil, 1, block.Owner{Handle: "h", Attrs: map[string]string{"a": "1"}})
	y.Allocate(nil, 1, block.Owner{Handle: "h", Attrs: map[string]string{"a": "2"}})
	assert.False(t, x.Equal(y))
	x2 := mustNew(t, "10.0.0.0/30", 0)
	y2 := mustNew(t, "10.0.0.0/30", 0)
	x2.Allocate(nil, 1, podA)
	x2.SetAffinity(block.Affinity{}, time.Time{})
	y2.SetAffinity(block.Affinity{}, time.Time{})
	y2.Allocate(nil, 1, podA)
	assert.Equal(t, x2.Seq(), y2.Seq())
	assert.False(t, x2.Equal(y2), "allocation seqs differ")
}

func TestManyOwners(t *testing.T) {
	// Enough owners to grow the record index several times, then drop most
	// and check the records left are exact.
	b := mustNew(t, "fd00::/116", 0)
	for i := range 3000 {
		_, err := b.Assign(netip.AddrFrom16([16]byte{0: 0xfd, 14: byte(i >> 8), 15: byte(i)}), block.Owner{Handle: fmt.Sprint("h", i%1000)})
		require.NoError(t, err)
	}
	require.NoError(t, b.Verify())
	for i := range 1000 {
		if i%7 != 0 {
			got := b.ReleaseHandle(fmt.Sprint("h", i), nil)
			require.Len(t, got, 3)
		}
	}
	require.NoError(t, b.Verify())
	n := 0
	for o, c := range b.Owners() {
		assert.Equal(t, 3, c, o.Handle)
		n++
	}
	assert.Equal(t, 143, n)
	assert.Equal(t, 429, b.Used())
	roundTrip(t, b)
}

func TestAllEarlyStop(t *testing.T) {
	b := mustNew(t, "10.0.0.0/28", 0)
	b.Allocate(nil, 5, podA)
	var seen []netip.Addr
	for a, al := range b.All() {
		assert.Equal(t, "pod-a", al.Owner.Handle)
		assert.Equal(t, uint64(1), al.Seq)
		seen = append(seen, a)
		if len(seen) == 2 {
			break
		}
	}
	assert.Equal(t, []netip.Addr{addr("10.0.0.0"), addr("10.0.0.1")}, seen)
	n := 0
	for range b.Owners() {
		n++
		break
	}
	assert.Equal(t, 1, n)
}

func TestSentinelsDistinct(t *testing.T) {
	all := []error{block.ErrInvalidPrefix, block.ErrOutOfBlock, block.ErrInUse, block.ErrReserved,
		block.ErrNotAllocated, block.ErrHandleMismatch, block.ErrSeqMismatch, block.ErrCorrupt, block.ErrInvalidAffinity}
	for i, a := range all {
		for j, b := range all {
			assert.Equal(t, i == j, errors.Is(a, b))
		}
	}
}

func TestConcurrentReads(t *testing.T) {
	// Readers share a block nobody changes; run with -race.
	b := mustNew(t, "10.0.0.0/26", 0)
	b.Allocate(nil, 40, podA)
	b.Allocate(nil, 10, block.Owner{Handle: "pod-b", Attrs: map[string]string{"k": "v"}})
	want, err := b.MarshalBinary()
	require.NoError(t, err)
	done := make(chan error, 4)
	for range 4 {
		go func() {
			var err error
			for range 50 {
				data, _ := b.MarshalBinary()
				_, _ = b.MarshalJSON()
				c := b.Clone()
				var d block.Block
				b.CopyTo(&d)
				_ = b.AddrsOf("pod-b", nil)
				_, _ = b.Owner(addr("10.0.0.3"))
				for range b.All() {
				}
				for range b.Owners() {
				}
				if string(data) != string(want) || !c.Equal(b) || !d.Equal(b) || b.String() == "" {
					err = errors.New("a reader saw a different block")
				}
			}
			done <- err
		}()
	}
	for range 4 {
		require.NoError(t, <-done)
	}
}

// TestReleaseHandleOneAddress: a handle left with one address is released
// from where it was last given one when that is still its address, and
// found by a scan when it is not (released since, given to another owner,
// or reserved).
func TestReleaseHandleOneAddress(t *testing.T) {
	tests := []struct {
		name string
		// setup leaves pod-a holding exactly the address it returns.
		setup func(t *testing.T, b *block.Block) netip.Addr
	}{
		{"last given", func(t *testing.T, b *block.Block) netip.Addr {
			got, _ := b.Allocate(nil, 1, podA)
			return got[0]
		}},
		{"assigned", func(t *testing.T, b *block.Block) netip.Addr {
			_, err := b.Assign(addr("10.0.0.9"), podA)
			require.NoError(t, err)
			return addr("10.0.0.9")
		}},
		{"last given released since", func(t *testing.T, b *block.Block) netip.Addr {
			got, _ := b.Allocate(nil, 2, podA)
			require.NoError(t, b.Release(got[1], noChk))
			return got[0]
		}},
		{"last given now another owner's", func(t *testing.T, b *block.Block) netip.Addr {
			got, _ := b.Allocate(nil, 1, podA)
			_, err := b.Assign(addr("10.0.0.5"), podA)
			require.NoError(t, err)
			require.NoError(t, b.Release(addr("10.0.0.5"), noChk))
			_, err = b.Assign(addr("10.0.0.5"), podB)
			require.NoError(t, err)
			return got[0]
		}},
		{"last given now reserved", func(t *testing.T, b *block.Block) netip.Addr {
			got, _ := b.Allocate(nil, 1, podA)
			_, err := b.Assign(addr("10.0.0.7"), podA)
			require.NoError(t, err)
			require.NoError(t, b.Release(addr("10.0.0.7"), noChk))
			require.NoError(t, b.Reserve(addr("10.0.0.7")))
			return got[0]
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustNew(t, "10.0.0.0/28", 0)
			_, _ = b.Allocate(nil, 2, podB)
			held := tt.setup(t, b)
			used := b.Used()
			got := b.ReleaseHandle("pod-a", nil)
			require.Equal(t, []netip.Addr{held}, got)
			require.Equal(t, used-1, b.Used())
			require.Empty(t, b.AddrsOf("pod-a", nil))
			require.Len(t, b.AddrsOf("pod-b", nil), b.Used(), "pod-b keeps the rest")
			require.NoError(t, b.Verify())
		})
	}
}
