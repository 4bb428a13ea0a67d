package block_test

import (
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
)

func TestCooldownAndSkip(t *testing.T) {
	b, err := block.NewWithSeq(netip.MustParsePrefix("10.0.0.0/30"), 100)
	require.NoError(t, err)
	pod := block.Owner{Handle: "pod"}
	got, _ := b.Allocate(nil, 4, pod)
	require.Len(t, got, 4)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	require.NoError(t, b.ReleaseAt(got[1], block.Check{}, t0))
	require.NoError(t, b.ReleaseAt(got[2], block.Check{}, t0.Add(time.Minute)))

	// A cooldown ending at t0+30s lets .1 go but holds .2 back.
	cut := block.AllocOptions{ReleasedBefore: t0.Add(30 * time.Second)}
	require.Equal(t, 1, b.CoolingSince(cut.ReleasedBefore))
	x, seq := b.AllocateWith(nil, 2, pod, cut)
	require.Equal(t, []netip.Addr{got[1]}, x)
	require.Equal(t, b.Seq(), seq)
	_, ok := b.ReleasedAt(got[1])
	require.False(t, ok, "taking an address forgets its release time")
	at, ok := b.ReleasedAt(got[2])
	require.True(t, ok)
	require.Equal(t, t0.Add(time.Minute), at)

	// Nothing allowed: nothing changes.
	before, _ := b.MarshalBinary()
	x, seq = b.AllocateWith(nil, 1, pod, block.AllocOptions{Skip: func(netip.Addr) bool { return true }})
	require.Empty(t, x)
	require.Equal(t, b.Seq(), seq)
	after, _ := b.MarshalBinary()
	require.Equal(t, before, after)

	// Pruning forgets old times and moves the counter.
	s := b.Seq()
	require.Equal(t, 0, b.PruneReleased(t0))
	require.Equal(t, 1, b.PruneReleased(t0.Add(2*time.Minute)))
	require.Equal(t, s+1, b.Seq())
	require.Zero(t, b.CoolingSince(time.Time{}))

	// Release times a nanosecond clock cannot hold are refused.
	err = b.ReleaseAt(got[0], block.Check{}, time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC))
	require.ErrorIs(t, err, block.ErrCorrupt)
	_, held := b.Owner(got[0])
	require.True(t, held, "a refused release changes nothing")
	_, err = b.ReleaseHandleAt("pod", nil, time.Time{})
	require.ErrorIs(t, err, block.ErrCorrupt)
}

// goldenV2 is a /30 with one address allocated and one released at a
// recorded time: the version 2 encoding, spelled out.
const goldenV2 = "02" + "04" + "1e" + "0a000000" + // version 2, IPv4, /30, 10.0.0.0
	"0000000000000066" + // counter 102
	"01" + // cursor 1
	"00" + "00" + // no affinity, no claim time
	"00" + // no reserved addresses
	"01" + "00" + "02" + "00" + "03706f64" + "00" + // one allocation: .0, seq 100, owner 0 "pod", no attrs
	"01" + "02" + "8080d0dfbd94b98631" // one release time: .2 at 2026-01-01T00:00:00Z

func goldenV2Block(t *testing.T) *block.Block {
	b, err := block.NewWithSeq(netip.MustParsePrefix("10.0.0.0/30"), 99)
	require.NoError(t, err)
	got, _ := b.Allocate(nil, 1, block.Owner{Handle: "pod"}) // seq 100
	require.Len(t, got, 1)
	_, err = b.Assign(netip.MustParseAddr("10.0.0.2"), block.Owner{Handle: "pod"}) // seq 101
	require.NoError(t, err)
	require.NoError(t, b.ReleaseAt(netip.MustParseAddr("10.0.0.2"), block.Check{}, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))) // 102
	return b
}

func TestBinaryV2Golden(t *testing.T) {
	b := goldenV2Block(t)
	data, err := b.MarshalBinary()
	require.NoError(t, err)
	require.Equal(t, goldenV2, hex.EncodeToString(data))
	var back block.Block
	require.NoError(t, back.UnmarshalBinary(data))
	require.True(t, back.Equal(b))
	js, err := b.MarshalJSON()
	require.NoError(t, err)
	require.Contains(t, string(js), `"released":[{"addr":"10.0.0.2","at":"2026-01-01T00:00:00Z"}]`)
	var jb block.Block
	require.NoError(t, jb.UnmarshalJSON(js))
	require.True(t, jb.Equal(b))

	// Without release times the block is version 1 again.
	b.PruneReleased(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	data, _ = b.MarshalBinary()
	require.Equal(t, byte(1), data[0])
}

func TestBinaryV2Rejects(t *testing.T) {
	head := goldenV2[:len(goldenV2)-len("01"+"02"+"8080d0dfbd94b98631")]
	tests := []struct{ name, hex, text string }{
		{"no times", head + "00", "without release times"},
		{"missing section", head, "release time count: bad varint"},
		{"on the allocated address", head + "01" + "00" + "02", "released address 0 is allocated"},
		{"past the end", head + "01" + "05" + "02", "released address 5 past"},
		{"not after 1970", head + "01" + "01" + "01", "not after 1970"},
		{"zero time", head + "01" + "01" + "00", "not after 1970"},
		{"second time going negative", head + "02" + "01" + "02" + "00" + "03", "not after 1970"},
		{"more than free", head + "05", "release time count 5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := hex.DecodeString(strings.ReplaceAll(tt.hex, " ", ""))
			require.NoError(t, err)
			var b block.Block
			err = b.UnmarshalBinary(raw)
			require.ErrorIs(t, err, block.ErrCorrupt)
			require.Contains(t, err.Error(), tt.text)
		})
	}
	for _, js := range []string{
		`{"version":1,"cidr":"10.0.0.0/30","seq":1,"cursor":0,"released":[{"addr":"10.0.0.9","at":"2026-01-01T00:00:00Z"}]}`,
		`{"version":1,"cidr":"10.0.0.0/30","seq":1,"cursor":0,"released":[{"addr":"10.0.0.1","at":"1960-01-01T00:00:00Z"}]}`,
		`{"version":1,"cidr":"10.0.0.0/30","seq":1,"cursor":0,"reserved":["10.0.0.1"],"released":[{"addr":"10.0.0.1","at":"2026-01-01T00:00:00Z"}]}`,
		`{"version":1,"cidr":"10.0.0.0/30","seq":1,"cursor":0,"released":[{"addr":"10.0.0.1","at":"2026-01-01T00:00:00Z"},{"addr":"10.0.0.1","at":"2026-01-01T00:00:01Z"}]}`,
	} {
		var b block.Block
		require.ErrorIs(t, b.UnmarshalJSON([]byte(js)), block.ErrCorrupt, js)
	}
}

func TestCooldownNoAllocs(t *testing.T) {
	b, _ := block.New(netip.MustParsePrefix("10.0.0.0/26"))
	pod := block.Owner{Handle: "pod"}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var buf [4]netip.Addr
	warm, _ := b.Allocate(buf[:0], 1, pod)
	_ = b.ReleaseAt(warm[0], block.Check{}, at) // grows the release-time array once
	cut := block.AllocOptions{ReleasedBefore: at}
	allocs := testing.AllocsPerRun(200, func() {
		got, _ := b.AllocateWith(buf[:0], 1, pod, cut)
		_ = b.ReleaseAt(got[0], block.Check{}, at.Add(-time.Second))
	})
	require.Zero(t, allocs)
}

func TestPeek(t *testing.T) {
	b := goldenV2Block(t)
	b.SetAffinity(block.Host("node-1"), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	require.NoError(t, b.Reserve(netip.MustParseAddr("10.0.0.3")))
	data, err := b.MarshalBinary()
	require.NoError(t, err)
	sum, err := block.Peek(data)
	require.NoError(t, err)
	require.Equal(t, block.Summary{Prefix: b.Prefix(), Affinity: block.Host("node-1"), Seq: b.Seq(), Size: 4, Used: 1, Reserved: 1}, sum)
	require.Equal(t, 2, sum.Free())
	for _, bad := range [][]byte{nil, {9}, data[:20], data[:len(data)-len(data)/3]} {
		if _, err := block.Peek(bad); err == nil && len(bad) < 40 {
			t.Errorf("Peek(%x) accepted a truncated header", bad)
		}
	}
}

func TestPeekNoAllocs(t *testing.T) {
	b, _ := block.New(netip.MustParsePrefix("10.0.0.0/20"))
	b.Allocate(nil, 100, block.Owner{Handle: "h"})
	data, _ := b.MarshalBinary()
	allocs := testing.AllocsPerRun(100, func() { _, _ = block.Peek(data) })
	require.Zero(t, allocs)
}

// TestUnreserveAt: an address freed from a reservation can carry a release
// time, so that a cooldown holds it back; Reserve forgets one.
func TestUnreserveAt(t *testing.T) {
	b, err := block.New(netip.MustParsePrefix("10.0.0.0/30"))
	require.NoError(t, err)
	a := netip.MustParseAddr("10.0.0.0")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	got, _ := b.Allocate(nil, 1, block.Owner{Handle: "pod"})
	require.Equal(t, []netip.Addr{a}, got)
	require.NoError(t, b.ReleaseAt(a, block.Check{}, t0))
	require.NoError(t, b.Reserve(a))
	_, ok := b.ReleasedAt(a)
	require.False(t, ok, "a reserved address is not free: its time is forgotten")

	s := b.Seq()
	require.NoError(t, b.UnreserveAt(a, t0.Add(time.Hour)))
	require.False(t, b.IsReserved(a))
	at, ok := b.ReleasedAt(a)
	require.True(t, ok)
	require.Equal(t, t0.Add(time.Hour), at)
	require.Equal(t, 1, b.CoolingSince(t0.Add(time.Minute)))
	require.Greater(t, b.Seq(), s)
	x, _ := b.AllocateWith(nil, 4, block.Owner{Handle: "q"}, block.AllocOptions{ReleasedBefore: t0.Add(time.Minute)})
	require.NotContains(t, x, a, "held back by the cooldown")
	require.NoError(t, b.Verify())

	// Not reserved: nothing changes. Out of the block, or a time a
	// nanosecond clock cannot hold: an error, nothing changes.
	before, _ := b.MarshalBinary()
	require.NoError(t, b.UnreserveAt(netip.MustParseAddr("10.0.0.3"), t0))
	require.ErrorIs(t, b.UnreserveAt(netip.MustParseAddr("10.0.0.9"), t0), block.ErrOutOfBlock)
	require.ErrorIs(t, b.UnreserveAt(netip.MustParseAddr("10.0.0.3"), time.Time{}), block.ErrCorrupt)
	after, _ := b.MarshalBinary()
	require.Equal(t, before, after)
	var back block.Block
	require.NoError(t, back.UnmarshalBinary(after), "a release time on an unreserved address encodes")
}
