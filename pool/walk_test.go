package pool_test

import (
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/pool"
)

// drawSmallPool draws a pool of at most 2^8 blocks, of either family.
func drawSmallPool(t *rapid.T) *pool.Pool {
	var a netip.Addr
	if rapid.Bool().Draw(t, "v4") {
		a = netip.AddrFrom4([4]byte(rapid.SliceOfN(rapid.Byte(), 4, 4).Draw(t, "a4")))
	} else {
		a = netip.AddrFrom16([16]byte(rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, "a6")))
	}
	w := a.BitLen()
	bits := rapid.IntRange(w-12, w).Draw(t, "bits")
	bs := rapid.IntRange(bits, min(w, bits+8)).Draw(t, "blockSize") // never 0: bits >= w-12
	return &pool.Pool{Name: "p", CIDR: netip.PrefixFrom(a, bits).Masked(), BlockSize: bs}
}

// drawSkip draws prefixes around p: single blocks, parts of blocks, runs of
// blocks, prefixes around the pool, and some of the other family.
func drawSkip(t *rapid.T, p *pool.Pool) []netip.Prefix {
	n := rapid.IntRange(0, 12).Draw(t, "nskip")
	out := make([]netip.Prefix, 0, n)
	w := p.CIDR.Addr().BitLen()
	for i := range n {
		if rapid.IntRange(0, 9).Draw(t, "otherFamily") == 0 {
			out = append(out, netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::/0"))
			continue
		}
		// An address near the pool: inside it, or in the range twice as big.
		around := netip.PrefixFrom(p.CIDR.Addr(), max(0, p.CIDR.Bits()-1)).Masked()
		size := new(big.Int).Lsh(big.NewInt(1), uint(w-around.Bits()))
		off := new(big.Int).SetBytes(rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, fmt.Sprint("off", i)))
		a := addAddr(around.Addr(), off.Mod(off, size))
		bits := rapid.IntRange(max(0, p.CIDR.Bits()-1), w).Draw(t, fmt.Sprint("bits", i))
		out = append(out, netip.PrefixFrom(a, bits))
	}
	return out
}

func walkAll(p *pool.Pool, node string, skip []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for b := range p.Walk(node, skip) {
		out = append(out, b)
	}
	return out
}

// TestWalkVisitsEveryBlockOnce checks the walk against an oracle that lists
// every block: the walk yields exactly the blocks no skip prefix overlaps,
// each once, in index order rotated to start at the node's first block that
// is not skipped; and each step either yields a block or jumps a run.
func TestWalkVisitsEveryBlockOnce(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := drawSmallPool(t)
		node := rapid.StringN(0, 12, -1).Draw(t, "node")
		skip := drawSkip(t, p)

		var all, want []netip.Prefix // all blocks; those not skipped, by index
		n := int(p.NumBlocks().Int64())
		for i := range n {
			b, ok := p.BlockAt(big.NewInt(int64(i)))
			require.True(t, ok)
			all = append(all, b)
			if !slices.ContainsFunc(skip, func(q netip.Prefix) bool { return q.IsValid() && q.Masked().Overlaps(b) }) {
				want = append(want, b)
			}
		}

		full := walkAll(p, node, nil)
		require.Len(t, full, n)
		start := slices.Index(all, full[0])
		require.Equal(t, append(slices.Clone(all[start:]), all[:start]...), full, "no skip: every block, rotated to the node's start")

		got := walkAll(p, node, skip)
		if len(want) == 0 {
			require.Empty(t, got)
		} else {
			// The first block is the first one not skipped from the start on.
			var first netip.Prefix
			for _, b := range full {
				if slices.Contains(want, b) {
					first = b
					break
				}
			}
			k := slices.Index(want, first)
			require.Equal(t, append(slices.Clone(want[k:]), want[:k]...), got)
		}

		blocks, steps := pool.WalkSteps(p, node, skip, n+1)
		require.Equal(t, got, blocks)
		require.LessOrEqual(t, steps, len(got)+len(skip)+2, "steps")
		require.Equal(t, got, walkAll(p, node, skip), "a second iteration repeats the first")
	})
}

// TestWalkerGrowsLikeWalk: a Walker built from some skip prefixes and then
// given the rest one at a time (Skip) or several at once (SkipAll), in any
// order, walks exactly as Walk does with all of them, after every
// addition.
func TestWalkerGrowsLikeWalk(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := drawSmallPool(t)
		node := rapid.StringN(0, 12, -1).Draw(t, "node")
		skip := drawSkip(t, p)
		// Adjacent blocks too, so that additions merge with what is there.
		for i := range rapid.IntRange(0, 6).Draw(t, "nadjacent") {
			idx := rapid.Int64Range(0, p.NumBlocks().Int64()-1).Draw(t, fmt.Sprint("adjacent", i))
			b, ok := p.BlockAt(big.NewInt(idx))
			require.True(t, ok)
			skip = append(skip, b)
		}
		k := rapid.IntRange(0, len(skip)).Draw(t, "initial")
		order := rapid.Permutation(skip[k:]).Draw(t, "order")
		w := p.NewWalker(skip[:k])
		have := slices.Clone(skip[:k])
		require.Equal(t, walkAll(p, node, have), slices.Collect(w.Walk(node)))
		for len(order) > 0 {
			// One prefix with Skip, or several at once with SkipAll.
			n := 1
			if rapid.Bool().Draw(t, "batch") {
				n = rapid.IntRange(1, len(order)).Draw(t, "batchSize")
				w.SkipAll(slices.Values(order[:n]))
				w.SkipAll(slices.Values([]netip.Prefix(nil)))
			} else {
				w.Skip(order[0])
			}
			have = append(have, order[:n]...)
			require.Equal(t, walkAll(p, node, have), slices.Collect(w.Walk(node)), "after adding %s", order[:n])
			order = order[n:]
		}
	})
}

// TestWalkerClaimsInARow: a node claiming block after block with one
// walker, adding each block it takes, gets every block of the pool once,
// in its walk order, whatever it held to begin with.
func TestWalkerClaimsInARow(t *testing.T) {
	p := &pool.Pool{Name: "p", CIDR: netip.MustParsePrefix("10.0.0.0/16"), BlockSize: 26}
	held := []netip.Prefix{netip.MustParsePrefix("10.0.64.0/26"), netip.MustParsePrefix("10.0.0.0/20")}
	want := walkAll(p, "node-1", held)
	w := p.NewWalker(held)
	var got []netip.Prefix
	for {
		var next netip.Prefix
		for b := range w.Walk("node-1") {
			next = b
			break
		}
		if !next.IsValid() {
			break
		}
		got = append(got, next)
		w.Skip(next)
	}
	require.Equal(t, want, got)
	require.Len(t, got, 1024-64-1)
}

// TestWalkHugePool checks that walking a 2^74-block pool starts at once:
// a handful of steps, as many allocations as for a /24, and a skip list
// that covers 2^70 blocks jumped in one step.
func TestWalkHugePool(t *testing.T) {
	small := mkPool("10.0.0.0/24", 26)
	huge := mkPool("fd00::/48", 122)

	blocks, steps := pool.WalkSteps(huge, "node-1", nil, 3)
	require.Len(t, blocks, 3)
	require.Equal(t, 3, steps)
	for i := 1; i < 3; i++ { // consecutive blocks, unless the walk wrapped
		require.True(t, blocks[i].Addr() == nextBlock(blocks[i-1]) || blocks[i] == netip.MustParsePrefix("fd00::/122"))
	}

	first := func(p *pool.Pool) func() {
		return func() {
			for range p.Walk("node-1", nil) {
				break
			}
		}
	}
	allocsSmall := testing.AllocsPerRun(100, first(small))
	allocsHuge := testing.AllocsPerRun(100, first(huge))
	require.Equal(t, allocsSmall, allocsHuge)
	require.LessOrEqual(t, allocsHuge, 4.0)

	// Skip a /52 around the node's first block: 2^70 blocks in one run.
	start := blocks[0]
	run := netip.PrefixFrom(start.Addr(), 52).Masked()
	got, steps := pool.WalkSteps(huge, "node-1", []netip.Prefix{run}, 1)
	require.Len(t, got, 1)
	require.Equal(t, 2, steps, "one jump, one block")
	require.False(t, run.Overlaps(got[0]))
	want := netip.PrefixFrom(nextBlock(netip.PrefixFrom(lastAddr(run), 122).Masked()), 122)
	if !huge.CIDR.Contains(want.Addr()) {
		want = netip.MustParsePrefix("fd00::/122") // the run reached the end: wrap
	}
	require.Equal(t, want, got[0])

	// 5000 existing blocks one after another from the start: merged into
	// one run and jumped in one step.
	var existing []netip.Prefix
	b := start
	for range 5000 {
		existing = append(existing, b)
		b = netip.PrefixFrom(nextBlock(b), 122)
	}
	slices.Reverse(existing) // the walk does not need them sorted
	got, steps = pool.WalkSteps(huge, "node-1", existing, 1)
	require.Equal(t, []netip.Prefix{b}, got)
	require.Equal(t, 2, steps)

	// Skipping the whole pool leaves nothing, at once.
	got, steps = pool.WalkSteps(huge, "node-1", []netip.Prefix{netip.MustParsePrefix("fd00::/32")}, 1)
	require.Empty(t, got)
	require.LessOrEqual(t, steps, 2)
}

func nextBlock(b netip.Prefix) netip.Addr {
	return addAddr(b.Addr(), new(big.Int).Lsh(big.NewInt(1), uint(b.Addr().BitLen()-b.Bits())))
}

func lastAddr(p netip.Prefix) netip.Addr {
	return addAddr(p.Addr(), new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), uint(p.Addr().BitLen()-p.Bits())), big.NewInt(1)))
}

// TestWalkSpreadsNodes checks that nodes start in different places, and the
// same node always in the same place.
func TestWalkSpreadsNodes(t *testing.T) {
	p := mkPool("10.244.0.0/18", 26) // 256 blocks
	starts := map[netip.Prefix]bool{}
	for i := range 100 {
		node := fmt.Sprintf("node-%d", i)
		first := walkAll(p, node, nil)[0]
		require.Equal(t, first, walkAll(p, node, nil)[0])
		starts[first] = true
	}
	// 100 names hashed into 256 blocks: about 82 distinct starts expected.
	require.Greater(t, len(starts), 60)

	// The order is part of the contract: pin some starts so that a change
	// of hash is a deliberate one.
	for node, want := range map[string]string{"node-1": "10.244.4.64/26", "node-2": "10.244.50.192/26", "": "10.244.19.128/26"} {
		require.Equal(t, want, walkAll(p, node, nil)[0].String(), node)
	}
	first, _ := pool.WalkSteps(mkPool("fd00::/48", 122), "node-1", nil, 1)
	require.Equal(t, "fd00::8f43:560c:5020:fa3e:4440/122", first[0].String())
}

func TestWalkEdges(t *testing.T) {
	require.Empty(t, walkAll(&pool.Pool{}, "n", nil), "zero pool")
	require.Empty(t, walkAll(mkPool("10.0.0.0/28", 26), "n", nil), "smaller than a block")
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.21.0.0/31")}, walkAll(mkPool("10.21.0.0/31", 31), "n", nil))

	// ::/0 in /128 blocks: 2^128 blocks, indexes up to the very top of the
	// 128-bit range. Skipping either half lands in the other at once.
	all := mkPool("::/0", 128)
	for _, tt := range []struct{ skip, rest string }{{"::/1", "8000::/1"}, {"8000::/1", "::/1"}} {
		for _, node := range []string{"a", "b", "c", "d"} {
			blocks, steps := pool.WalkSteps(all, node, []netip.Prefix{netip.MustParsePrefix(tt.skip)}, 2)
			require.Len(t, blocks, 2)
			require.True(t, netip.MustParsePrefix(tt.rest).Contains(blocks[0].Addr()), "%s skipping %s: %s", node, tt.skip, blocks[0])
			require.LessOrEqual(t, steps, 3)
		}
	}
	top, steps := pool.WalkSteps(all, "a", []netip.Prefix{netip.MustParsePrefix("::/1"), netip.MustParsePrefix("8000::/2"),
		netip.MustParsePrefix("c000::/2")}, 10)
	require.Empty(t, top)
	require.LessOrEqual(t, steps, 3)
}
