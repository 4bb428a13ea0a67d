package ipam

import (
	"bytes"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/block"
)

func TestBlockKeys(t *testing.T) {
	tests := []struct {
		prefix, key string
	}{
		{"10.244.0.64/26", "v4:0af40040/26"},
		{"0.0.0.0/20", "v4:00000000/20"},
		{"255.255.255.255/32", "v4:ffffffff/32"},
		{"fd00::40/122", "v6:fd000000000000000000000000000040/122"},
	}
	for _, tt := range tests {
		p := netip.MustParsePrefix(tt.prefix)
		require.Equal(t, tt.key, blockKey(p))
		back, err := parseBlockKey(tt.key)
		require.NoError(t, err)
		require.Equal(t, p, back)
	}
	for _, bad := range []string{"", "v4:", "v5:0af40040/26", "v4:0af40040", "v4:0AF40040/26", "v4:0af40041/26",
		"v4:0af40040/33", "v4:0af40040/026", "v4:0af4004/26", "v4:0af40040/2x", "v6:fd00/122"} {
		_, err := parseBlockKey(bad)
		require.Error(t, err, "%q", bad)
	}
}

func TestBlockRangeHoldsExactlyThePoolsBlocks(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		is4 := rapid.Bool().Draw(t, "v4")
		bits := 32
		raw := rapid.SliceOfN(rapid.Byte(), 4, 4).Draw(t, "addr4")
		if !is4 {
			bits = 128
			raw = rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, "addr6")
		}
		a, _ := netip.AddrFromSlice(raw)
		pool := netip.PrefixFrom(a, rapid.IntRange(0, bits).Draw(t, "poolBits")).Masked()
		other, _ := netip.AddrFromSlice(rapid.SliceOfN(rapid.Byte(), len(raw), len(raw)).Draw(t, "other"))
		blk := netip.PrefixFrom(other, rapid.IntRange(pool.Bits(), bits).Draw(t, "blockBits")).Masked()
		r := blockRange(pool)
		require.Equal(t, pool.Contains(blk.Addr()), r.Contains(blockKey(blk)),
			"pool %s, block %s, range %+v", pool, blk, r)
	})
}

func TestAffinityKeys(t *testing.T) {
	blk := netip.MustParsePrefix("10.0.0.0/26")
	key := affinityKey("host:node-1.example.com", blk)
	require.Equal(t, "host:node-1.example.com/v4:0a000000/26", key)
	owner, back, err := parseAffinityKey(key)
	require.NoError(t, err)
	require.Equal(t, "host:node-1.example.com", owner)
	require.Equal(t, blk, back)
	require.True(t, affinityRange("host:node-1.example.com").Contains(key))
	require.False(t, affinityRange("host:node-1").Contains(key), "node-1 is not a prefix match of node-1.example.com")
	for _, bad := range []string{"", "/v4:0a000000/26", "host:n", "host:n/x"} {
		_, _, err := parseAffinityKey(bad)
		require.Error(t, err, "%q", bad)
	}
}

func TestPrefixRange(t *testing.T) {
	require.Equal(t, KeyRange{Start: "ab", End: "ac"}, PrefixRange("ab"))
	require.Equal(t, KeyRange{Start: "a\xff", End: "b"}, PrefixRange("a\xff"))
	require.Equal(t, KeyRange{Start: "\xff\xff"}, PrefixRange("\xff\xff"))
	require.Equal(t, KeyRange{}, PrefixRange(""))
}

// TestHandleRecordRoundTrip: a record changed by put and merge, in any
// order, counts what a map changed the same way counts, keeps its entries
// in block order, and decodes to itself.
func TestHandleRecordRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var h handleRecord
		model := map[netip.Prefix]int{}
		drawBlock := func() netip.Prefix {
			base := netip.MustParsePrefix("10.0.0.0/20")
			if rapid.Bool().Draw(t, "v6") {
				base = netip.MustParsePrefix("fd00::/116")
			}
			a := base.Addr()
			for range rapid.IntRange(0, 7).Draw(t, "step") {
				a = a.Next()
			}
			return netip.PrefixFrom(a, a.BitLen()-rapid.IntRange(0, 3).Draw(t, "hostBits")).Masked()
		}
		for range rapid.IntRange(0, 12).Draw(t, "ops") {
			if !rapid.Bool().Draw(t, "merge") {
				blk := drawBlock()
				n := rapid.IntRange(0, 5).Draw(t, "count")
				h.put(blk, n)
				if n == 0 {
					delete(model, blk)
				} else {
					model[blk] = n
				}
				continue
			}
			// A merge of deltas, one per block, in block order; one that
			// would take a count below zero is left out.
			byBlock := map[netip.Prefix]int{}
			for range rapid.IntRange(0, 6).Draw(t, "deltas") {
				byBlock[drawBlock()] = rapid.IntRange(-4, 4).Draw(t, "delta")
			}
			var deltas []handleCount
			changed := false
			for blk, d := range byBlock {
				deltas = append(deltas, handleCount{blk, d})
				if n := model[blk] + d; d != 0 && n >= 0 {
					changed = true
					if n == 0 {
						delete(model, blk)
					} else {
						model[blk] = n
					}
				}
			}
			slices.SortFunc(deltas, func(x, y handleCount) int { return comparePrefix(x.block, y.block) })
			require.Equal(t, changed, h.merge(deltas), "merge of %v reports a change", deltas)
		}
		// Up to two entries live inline, more in big.
		es := h.entries()
		require.Equal(t, len(es) > len(h.small), h.big != nil, "representation of %d entries", len(es))
		require.True(t, slices.IsSortedFunc(es, func(x, y handleCount) int { return comparePrefix(x.block, y.block) }), "entries in order: %v", es)
		got := map[netip.Prefix]int{}
		for _, c := range es {
			got[c.block] = c.count
		}
		require.Equal(t, model, got)

		var back handleRecord
		if len(es) == 0 {
			// Never written (the record is deleted instead), and refused.
			require.Error(t, back.unmarshal(h.appendBinary(nil)))
			return
		}
		require.NoError(t, back.unmarshal(h.appendBinary(nil)))
		require.Equal(t, h.entries(), back.entries())
	})
}

// TestHandleRecordPutMovesEntries: a third entry moves the entries from
// inline to big, and dropping back to two moves them inline again.
func TestHandleRecordPutMovesEntries(t *testing.T) {
	blocks := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/26"),
		netip.MustParsePrefix("10.0.0.64/26"),
		netip.MustParsePrefix("10.0.0.128/26"),
	}
	var h handleRecord
	h.put(blocks[2], 3)
	h.put(blocks[0], 1)
	require.Nil(t, h.big)
	h.put(blocks[1], 2)
	require.NotNil(t, h.big)
	require.Equal(t, []handleCount{{blocks[0], 1}, {blocks[1], 2}, {blocks[2], 3}}, h.entries())
	h.put(blocks[1], 0)
	require.Nil(t, h.big)
	require.Equal(t, []handleCount{{blocks[0], 1}, {blocks[2], 3}}, h.entries())
}

// FuzzHandleRecord: the decoder never panics, whatever it accepts
// re-encodes to the same bytes, and its shortcut for one IPv4 block decides
// as the general decoder does.
func FuzzHandleRecord(f *testing.F) {
	var h handleRecord
	h.put(netip.MustParsePrefix("10.0.0.0/26"), 3)
	f.Add(h.appendBinary(nil))
	h.put(netip.MustParsePrefix("fd00::40/122"), 70000)
	h.put(netip.MustParsePrefix("10.0.0.64/26"), 1)
	f.Add(h.appendBinary(nil))
	f.Add([]byte{1, 0})
	f.Add([]byte{1, 1, 4, 10, 0, 0, 0, 26})
	f.Add([]byte{1, 1, 4, 10, 0, 0, 0, 26, 1})
	f.Add([]byte{1, 1, 4, 10, 0, 0, 1, 26, 1})
	f.Add([]byte{1, 1, 4, 10, 0, 0, 0, 33, 1})
	f.Add([]byte{1, 1, 4, 10, 0, 0, 0, 26, 0})
	f.Add([]byte{1, 1, 4, 10, 0, 0, 0, 26, 0x80})
	f.Add([]byte{1, 1, 4, 10, 0, 0, 0, 26, 0x7f})
	f.Fuzz(func(t *testing.T, data []byte) {
		var h, general handleRecord
		err := h.unmarshal(data)
		anyErr := general.unmarshalAny(data)
		if (err == nil) != (anyErr == nil) {
			t.Fatalf("%x: unmarshal says %v, unmarshalAny %v", data, err, anyErr)
		}
		if err != nil {
			return
		}
		require.Equal(t, general.entries(), h.entries())
		if again := h.appendBinary(nil); !bytes.Equal(again, data) {
			t.Fatalf("decoded %x, re-encoded %x", data, again)
		}
	})
}

// FuzzKeys: the key parsers never panic and accept only what the encoders
// produce.
func FuzzKeys(f *testing.F) {
	f.Add("v4:0af40040/26")
	f.Add("v6:fd000000000000000000000000000040/122")
	f.Add("host:node-1/v4:0af40040/26")
	f.Add("virtual:lb/v6:fd000000000000000000000000000000/128")
	f.Fuzz(func(t *testing.T, key string) {
		if p, err := parseBlockKey(key); err == nil && blockKey(p) != key {
			t.Fatalf("parseBlockKey(%q) = %s, which encodes as %q", key, p, blockKey(p))
		}
		if owner, blk, err := parseAffinityKey(key); err == nil && affinityKey(owner, blk) != key {
			t.Fatalf("parseAffinityKey(%q) = %q %s, which encodes as %q", key, owner, blk, affinityKey(owner, blk))
		}
	})
}

// FuzzPoolAndConfigRecords: the stored pool set and configuration decode
// without panicking, and a decoded pool set encodes back to one that
// decodes the same.
func FuzzPoolAndConfigRecords(f *testing.F) {
	f.Add([]byte(`{"pools":[{"name":"default","spec":{"cidr":"10.244.0.0/18","blockSize":26}}]}`))
	f.Add([]byte(`{"pools":[{"name":"a","spec":{"cidr":"10.0.0.0/24"}},{"name":"b","spec":{"cidr":"10.0.0.0/25"}}]}`))
	f.Add([]byte(`{"version":7,"pools":[{"name":"a","version":3,"spec":{"cidr":"10.0.0.0/24"}},{"name":"b","version":7,"spec":{"cidr":"10.1.0.0/24"}}]}`))
	f.Add([]byte(`{"version":2,"pools":[{"name":"a","version":3,"spec":{"cidr":"10.0.0.0/24"}}]}`))
	f.Add([]byte(`{"strictAffinity":true,"autoAllocateBlocks":false,"maxBlocksPerHost":3}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = unmarshalConfig(data)
		s, ver, err := unmarshalPools(data)
		if err != nil {
			return
		}
		for _, p := range s.All() {
			if p.Version > ver {
				t.Fatalf("pool %q has version %d, after the record's %d", p.Name, p.Version, ver)
			}
		}
		enc, err := marshalPools(s, ver)
		if err != nil {
			t.Fatal(err)
		}
		s2, ver2, err := unmarshalPools(enc)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", enc, err)
		}
		if ver2 != ver {
			t.Fatalf("record version %d decoded as %d", ver, ver2)
		}
		enc2, _ := marshalPools(s2, ver2)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("pool record not stable:\n%s\n%s", enc, enc2)
		}
	})
}

func FuzzNodeAndReservationRecords(f *testing.F) {
	f.Add("n1", []byte(`{"labels":{"rack":"a","zone":"z1"}}`))
	f.Add("n1", []byte(`{"labels":{"k":""},"other":1}`))
	f.Add("n/1", []byte(`{"labels":{"rack":"a"}}`))
	f.Add("r1", []byte(`{"reservedCIDRs":["10.0.0.0/24","fd00::/120"]}`))
	f.Add("r1", []byte(`{"reservedCIDRs":["10.0.0.1/24"]}`))
	f.Fuzz(func(t *testing.T, key string, data []byte) {
		if labels, err := unmarshalNode(key, data); err == nil {
			if len(labels) == 0 || checkLabels("fuzz", key, labels) != nil || checkNode("fuzz", key) != nil {
				t.Fatalf("node %q decoded to labels it would not store: %v", key, labels)
			}
			again, err := unmarshalNode(key, marshalNode(labels))
			if err != nil || !maps.Equal(again, labels) {
				t.Fatalf("node %q: labels %v re-decode as %v, %v", key, labels, again, err)
			}
		}
		if r, err := unmarshalReservation(key, data); err == nil {
			if r.check("fuzz") != nil {
				t.Fatalf("reservation %q decoded to one it would not store: %v", key, r)
			}
		}
	})
}

// BenchmarkParseBlockKey times the parse of a block key, which a claim in
// a crowded pool makes for every block of the pool it lists.
func BenchmarkParseBlockKey(b *testing.B) {
	for _, key := range []string{"v4:0af40040/26", "v6:fd000010024400000000000000000040/122"} {
		b.Run("family="+key[:2], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := parseBlockKey(key); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestParseBlockKeyRefusesUnmasked: parseBlockKey accepts a key exactly
// when its prefix is masked, as Prefix.Masked says, for every prefix
// length of both families and an address with any one bit set, none, all,
// or random ones. (FuzzKeys only round-trips the keys it accepts.)
func TestParseBlockKeyRefusesUnmasked(t *testing.T) {
	check := func(t require.TestingT, raw []byte, bits int) {
		addr, _ := netip.AddrFromSlice(raw)
		p := netip.PrefixFrom(addr, bits)
		key := blockKey(p)
		got, err := parseBlockKey(key)
		if p.Masked() != p {
			require.Error(t, err, "%s (%s) is not masked", key, p)
			require.False(t, hostZero(raw, bits), "%s", p)
			return
		}
		require.NoError(t, err, key)
		require.Equal(t, p, got)
		require.True(t, hostZero(raw, bits), "%s", p)
	}
	for _, width := range []int{4, 16} {
		for bits := 0; bits <= 8*width; bits++ {
			check(t, make([]byte, width), bits)
			check(t, bytes.Repeat([]byte{0xff}, width), bits)
			for bit := range 8 * width {
				raw := make([]byte, width)
				raw[bit/8] = 0x80 >> (bit % 8)
				check(t, raw, bits)
			}
		}
	}
	rapid.Check(t, func(t *rapid.T) {
		width := rapid.SampledFrom([]int{4, 16}).Draw(t, "width")
		raw := rapid.SliceOfN(rapid.Byte(), width, width).Draw(t, "raw")
		check(t, raw, rapid.IntRange(0, 8*width).Draw(t, "bits"))
	})
}

// TestReleaseRoom: a release makes room up front for what the handle's
// record counts, so that a batch's addresses are not copied by growing,
// but never for more than maxReleaseRoom, whatever a corrupt record says.
func TestReleaseRoom(t *testing.T) {
	blocks := func(n, count int) *handleRecord {
		var r handleRecord
		for i := range n {
			r.put(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 10), byte(i >> 2), byte(i << 6)}), 26), count)
		}
		return &r
	}
	for _, tc := range []struct {
		name string
		rec  *handleRecord
		want int
	}{
		{"none", blocks(0, 0), 0},
		{"one address", blocks(1, 1), 1},
		{"a dual-stack pod's two", blocks(2, 1), 2},
		{"a batch of 50,048 in 782 blocks", blocks(782, 64), 782 * 64},
		{"a count above a block's size counts a block", blocks(3, 1<<20), 3 * block.MaxSize},
		{"a record counting 100,000 full blocks", blocks(100_000, block.MaxSize), maxReleaseRoom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := releaseRoom(tc.rec)
			require.Empty(t, got)
			require.Equal(t, tc.want, cap(got))
		})
	}
}
