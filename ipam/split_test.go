package ipam_test

import (
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

// splitFixture is a /24 of /28 blocks in use by four nodes, one address
// of which is cooling.
func splitFixture(t *testing.T) *env {
	e := newEnv(t, v4pool("default", "10.0.0.0/24", 28))
	e.cooldown(time.Hour)
	for i, node := range []string{"node-a", "node-b", "node-c", "node-d"} {
		for j := range 3 + i {
			e.mustAssign4(node, node+"-pod-"+string(rune('0'+j)), 1)
		}
	}
	_, err := e.a.ReleaseByHandle(e.ctx, "node-b-pod-0")
	require.NoError(t, err)
	return e
}

// state is what a split must leave as it was.
type splitState struct {
	allocs   []ipam.Allocation
	affine   map[string][]netip.Prefix
	blocks   []ipam.BlockUtilization
	inUse    uint64
	cooling  uint64
	capacity int64
}

func (e *env) splitState(within netip.Prefix) splitState {
	e.t.Helper()
	allocs, err := e.a.Allocations(e.ctx, within)
	require.NoError(e.t, err)
	s := splitState{allocs: allocs, affine: map[string][]netip.Prefix{}}
	for _, node := range []string{"node-a", "node-b", "node-c", "node-d"} {
		s.affine[node] = e.affine(node)
	}
	for _, pu := range e.utilization() {
		if !within.Overlaps(pu.CIDR) {
			continue
		}
		s.blocks = append(s.blocks, pu.Blocks...)
		s.inUse += pu.InUse
		s.cooling += pu.Cooling
		s.capacity += pu.Capacity.Int64()
	}
	return s
}

func TestSplitPoolKeepsEverything(t *testing.T) {
	e := splitFixture(t)
	other := e.allocator() // another process, which has read the pools before the split
	_, err := other.Pools(e.ctx)
	require.NoError(t, err)
	all := mustPrefix("10.0.0.0/24")
	before := e.splitState(all)
	require.EqualValues(t, 1, before.cooling)

	parts, err := e.a.SplitPool(e.ctx, "default", "default", "upper")
	require.NoError(t, err)
	require.Len(t, parts, 2)
	pools, err := e.a.Pools(e.ctx)
	require.NoError(t, err)
	require.Len(t, pools, 2)
	for i, want := range []struct{ name, cidr string }{{"default", "10.0.0.0/25"}, {"upper", "10.0.0.128/25"}} {
		require.Equal(t, want.name, pools[i].Name)
		require.Equal(t, want.cidr, pools[i].CIDR.String())
		require.Equal(t, 28, pools[i].BlockSize)
		require.Equal(t, parts[i].CIDR, pools[i].CIDR)
	}

	require.Equal(t, before, e.splitState(all), "the split changed addresses, owners, affinity or cooldowns")
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.True(t, r.Clean(), "%v", r.Problems)
	require.Empty(t, r.Leftovers)

	// Each node goes on in the block it holds, on either allocator, and
	// the result names the part that holds the block.
	for i, a := range []*ipam.Allocator{e.a, other} {
		for _, node := range []string{"node-a", "node-b", "node-c", "node-d"} {
			res, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: node + "-after-" + string(rune('0'+i)), Node: node})
			require.NoError(t, err)
			got := res.IPv4[0]
			require.Contains(t, before.affine[node], got.Block, "%s claimed a new block", node)
			want := "default"
			if got.Addr.As4()[3] >= 128 {
				want = "upper"
			}
			require.Equal(t, want, got.Pool, "%s", got.Addr)
		}
	}
	require.Equal(t, before.affine, e.splitState(all).affine)
	e.requireConsistent()
}

func TestSplitPoolRefusesAndChangesNothing(t *testing.T) {
	e := newEnv(t, v4pool("default", "10.0.0.0/24", 26), v4pool("other", "10.1.0.0/24", 26))
	e.mustAssign4("node-a", "pod", 1)
	before, err := e.a.Pools(e.ctx)
	require.NoError(t, err)
	for _, tc := range []struct {
		name, pool string
		into       []string
		is         []error
		text       string
	}{
		{"no such pool", "missing", []string{"a", "b"}, []error{ipam.ErrPoolNotFound}, `ipam: split pool "missing": pool not found`},
		{"three parts", "default", []string{"a", "b", "c"}, []error{pool.ErrSplit},
			`ipam: split pool: pool "default": cidr 10.0.0.0/24 cannot be split into 3 pools`},
		{"parts smaller than a block", "default", []string{"a", "b", "c", "d", "e", "f", "g", "h"}, []error{pool.ErrSplit}, "smaller than a block (blockSize 26)"},
		{"a name of another pool", "default", []string{"default", "other"}, []error{ipam.ErrPoolExists},
			`ipam: split pool "default": pool "other": name "other" is already in the set`},
		{"an invalid name", "default", []string{"default", "Upper"}, []error{pool.ErrName}, `name "Upper" is not a DNS subdomain`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parts, err := e.a.SplitPool(e.ctx, tc.pool, tc.into...)
			require.Nil(t, parts)
			for _, k := range tc.is {
				require.ErrorIs(t, err, k)
			}
			require.ErrorContains(t, err, tc.text)
			after, err := e.a.Pools(e.ctx)
			require.NoError(t, err)
			require.Equal(t, before, after)
		})
	}
	e.requireConsistent()
}

// TestSplitPoolThenReselect: a part given its own nodeSelector serves its
// nodes; a node it no longer selects keeps its block there while the
// block holds addresses, and gives it up once it is empty.
func TestSplitPoolThenReselect(t *testing.T) {
	e := newEnv(t, v4pool("default", "10.0.0.0/24", 26))
	// node-a fills blocks until it holds one in the upper half.
	var inUpper netip.Prefix
	var upperPod string
	for i := 0; inUpper == (netip.Prefix{}); i++ {
		require.Less(t, i, 3)
		upperPod = "a-" + string(rune('a'+i))
		if got := e.mustAssign4("node-a", upperPod, 64); got[0].Addr.As4()[3] >= 128 {
			inUpper = got[0].Block
		}
	}
	_, err := e.a.SplitPool(e.ctx, "default", "rack-1", "rack-2")
	require.NoError(t, err)
	for _, rack := range []string{"1", "2"} {
		p, err := e.a.Pool(e.ctx, "rack-"+rack)
		require.NoError(t, err)
		p.NodeSelector = `rack == "` + rack + `"`
		require.NoError(t, e.a.UpdatePool(e.ctx, p))
	}

	// A rack-2 node gets rack-2's addresses.
	res, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "c", Node: "node-c", NodeLabels: labels("rack", "2")})
	require.NoError(t, err)
	require.Equal(t, "rack-2", res.IPv4[0].Pool)

	// node-a keeps its full block in rack-2 while it holds addresses...
	require.Contains(t, e.affine("node-a"), inUpper)
	_, err = e.a.ReleaseByHandle(e.ctx, upperPod)
	require.NoError(t, err)
	// ...and gives it up, empty, when it next assigns.
	res, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "a-next", Node: "node-a", NodeLabels: labels("rack", "1")})
	require.NoError(t, err)
	require.Equal(t, "rack-1", res.IPv4[0].Pool)
	require.NotContains(t, e.affine("node-a"), inUpper)
	e.requireConsistent()
}

// TestSplitPoolDuringClaim: a claim has read the pools and is writing its
// block when the pool is split; the claim stands, since a part carves
// the block the same way.
func TestSplitPoolDuringClaim(t *testing.T) {
	e := newEnv(t, v4pool("default", "10.0.0.0/24", 28))
	var once sync.Once
	split := false
	hs := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if op != "create" || kind != ipam.KindBlock {
			return
		}
		once.Do(func() {
			_, err := e.a.SplitPool(e.ctx, "default", "low", "high")
			require.NoError(t, err)
			split = true
		})
	}}
	claimer, err := ipam.New(hs, ipam.Options{})
	require.NoError(t, err)
	res, err := claimer.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-a"})
	require.True(t, split)
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{res.IPv4[0].Block}, e.affine("node-a"))
	e.requireConsistent()
}

// TestDeletePoolDuringSplit: a pool is split while DeletePool releases its
// blocks; the deletion must not remove the part that kept the name, nor
// end the cooldowns of the other part's blocks.
func TestDeletePoolDuringSplit(t *testing.T) {
	e := newEnv(t, v4pool("old", "10.0.0.0/24", 28))
	e.cooldown(time.Hour)
	for _, node := range []string{"node-a", "node-b", "node-c", "node-d"} {
		e.mustAssign4(node, node, 1)
	}
	_, err := e.a.ReleaseByHandle(e.ctx, "node-d") // an empty block, cooling
	require.NoError(t, err)
	before := e.splitState(mustPrefix("10.0.0.0/24"))

	err = e.deleteWhileSplit(ipam.KindBlock, "")
	require.ErrorIs(t, err, ipam.ErrPoolNotFound)
	require.ErrorContains(t, err, `the pool over 10.0.0.0/24 was replaced during its deletion, and "old" now names the pool over 10.0.0.0/25, which is kept`)

	pools, err := e.a.Pools(e.ctx)
	require.NoError(t, err)
	require.Len(t, pools, 2)
	for _, p := range pools {
		require.True(t, p.Disabled, "%s", p.Name)
	}
	after := e.splitState(mustPrefix("10.0.0.0/24"))
	require.Len(t, after.allocs, len(before.allocs))
	for i, x := range after.allocs {
		require.True(t, x.BlockAffinity.IsZero(), "%s: the deletion released its block", x.Addr)
		x.BlockAffinity = before.allocs[i].BlockAffinity
		require.Equal(t, before.allocs[i], x)
	}
	require.Equal(t, before.cooling, after.cooling, "a cooling block was deleted")
	var blocks []netip.Prefix
	for _, b := range after.blocks {
		blocks = append(blocks, b.Prefix)
	}
	for _, b := range before.blocks {
		require.True(t, slices.Contains(blocks, b.Prefix), "block %s is gone", b.Prefix)
	}
	e.requireConsistent()

	// Deleting each part then finishes the job.
	require.NoError(t, e.a.DeletePool(e.ctx, "old"))
	require.NoError(t, e.a.DeletePool(e.ctx, "new"))
	e.requireConsistent()
}

// TestSplitPoolWhileAssigning: allocators on other goroutines assign and
// release through a split; afterwards every address still held is held
// once, by its handle, and the store is consistent.
func TestSplitPoolWhileAssigning(t *testing.T) {
	e := newEnv(t, v4pool("default", "10.0.0.0/22", 28))
	var wg sync.WaitGroup
	held := make([][]ipam.Assigned, 4)
	for w := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := e.allocator()
			node := "node-" + string(rune('a'+w))
			for i := range 60 {
				h := node + "-" + string(rune('0'+i/10)) + string(rune('0'+i%10))
				res, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: h, Node: node})
				if !assert(t, err) {
					return
				}
				if i%3 == 0 {
					_, err := a.ReleaseByHandle(e.ctx, h)
					if !assert(t, err) {
						return
					}
					continue
				}
				held[w] = append(held[w], res.IPv4...)
			}
		}()
	}
	parts, err := e.a.SplitPool(e.ctx, "default", "p0", "p1", "p2", "p3")
	require.NoError(t, err)
	wg.Wait()

	allocs, err := e.a.Allocations(e.ctx, mustPrefix("10.0.0.0/22"))
	require.NoError(t, err)
	got := map[netip.Addr]string{}
	for _, x := range allocs {
		got[x.Addr] = x.Handle
	}
	n := 0
	for _, as := range held {
		for _, x := range as {
			require.Contains(t, got, x.Addr)
			n++
		}
	}
	require.Len(t, got, n)
	for _, pu := range e.utilization() {
		require.Contains(t, []netip.Prefix{parts[0].CIDR, parts[1].CIDR, parts[2].CIDR, parts[3].CIDR}, pu.CIDR)
	}
	e.requireConsistent()
}

// assert reports err as a test failure from any goroutine, and whether
// there was none.
func assert(t *testing.T, err error) bool {
	if err != nil {
		t.Error(err)
		return false
	}
	return true
}

// deleteWhileSplit runs DeletePool("old") on another allocator, whose
// store splits "old" into "old" and "new" just before its first write of
// a record of kind (of any kind when write is "", else only that write:
// "create", "update" or "delete").
func (e *env) deleteWhileSplit(kind ipam.Kind, write string) error {
	e.t.Helper()
	var once sync.Once
	hs := &hookStore{Store: e.store, hook: func(op string, k ipam.Kind, key string) {
		if k != kind || write != "" && op != write {
			return
		}
		once.Do(func() {
			_, err := e.a.SplitPool(e.ctx, "old", "old", "new")
			require.NoError(e.t, err)
		})
	}}
	deleter, err := ipam.New(hs, ipam.Options{Now: e.clock.Now})
	require.NoError(e.t, err)
	return deleter.DeletePool(e.ctx, "old")
}
