package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
)

// nodeSet is a node oracle over a set of existing nodes. It counts the
// questions about each node.
type nodeSet struct {
	mu     sync.Mutex
	exists map[string]bool
	fail   map[string]error // nodes whose answer is unknown
	asked  map[string]int
	// hook, when set, is called on every question, after counting it,
	// and may change the answer (through exists: the lock is held).
	hook func(node string, asked int)
}

func newNodeSet(exists ...string) *nodeSet {
	n := &nodeSet{exists: map[string]bool{}, fail: map[string]error{}, asked: map[string]int{}}
	for _, node := range exists {
		n.exists[node] = true
	}
	return n
}

func (n *nodeSet) live(_ context.Context, node string) (bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.asked[node]++
	if n.hook != nil {
		n.hook(node, n.asked[node])
	}
	return n.exists[node], n.fail[node]
}

func (n *nodeSet) set(node string, exists bool) {
	n.mu.Lock()
	n.exists[node] = exists
	n.mu.Unlock()
}

func (n *nodeSet) questions(node string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.asked[node]
}

func newNodeCollector(t *testing.T, e *env, o *owners, n *nodeSet, grace time.Duration) *ipam.Collector {
	t.Helper()
	c, err := ipam.NewCollector(e.a, o.live, ipam.CollectorOptions{Grace: grace, Nodes: n.live})
	require.NoError(t, err)
	return c
}

// collect runs one pass, which must succeed.
func collect(t *testing.T, e *env, c *ipam.Collector) ipam.CollectResult {
	t.Helper()
	res, err := c.Collect(e.ctx)
	require.NoError(t, err)
	return res
}

// emptyBlock gives node one block, empty, and returns it.
func (e *env) emptyBlock(node string) netip.Prefix {
	e.t.Helper()
	got := e.mustAssign4(node, "tmp-"+node, 1)
	_, err := e.a.ReleaseByHandle(e.ctx, "tmp-"+node)
	require.NoError(e.t, err)
	return got[0].Block
}

// blockInfo returns what Utilization says of blk, failing the test if it
// does not exist.
func (e *env) blockInfo(blk netip.Prefix) ipam.BlockUtilization {
	e.t.Helper()
	for _, pu := range e.utilization() {
		for _, b := range pu.Blocks {
			if b.Prefix == blk {
				return b
			}
		}
	}
	e.t.Fatalf("block %s does not exist", blk)
	return ipam.BlockUtilization{}
}

// blockCount returns how many blocks exist.
func (e *env) blockCount() int {
	e.t.Helper()
	n := 0
	for _, pu := range e.utilization() {
		n += len(pu.Blocks)
	}
	return n
}

// TestCollectorReleasesBlockOfRemovedNode: the node-removal controller
// calls ReleaseHostAffinities for node-a while node-a's own AutoAssign is
// claiming a block. The claim lands after the release, so the removed node
// holds a block. Its address is collected as a leak, but without a node
// oracle the block, the node's last, stays affine to a node that no longer
// exists: lost to the pool. With one, it is released once the node has
// been gone for the grace period.
func TestCollectorReleasesBlockOfRemovedNode(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	var once sync.Once
	removed := false
	hs := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if op == "create" && kind == ipam.KindBlock {
			once.Do(func() {
				_, err := e.a.ReleaseHostAffinities(e.ctx, "node-a", false)
				require.NoError(t, err)
				removed = true
			})
		}
	}}
	claimer, err := ipam.New(hs, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)
	_, err = claimer.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod-a", Node: "node-a"})
	require.NoError(t, err)
	require.True(t, removed, "the node was removed during the claim")
	orphan := e.affine("node-a")
	require.Len(t, orphan, 1, "the claim landed after the removal")

	o := &owners{alive: map[string]bool{}} // pod-a never ran
	old := newCollector(t, e, o, time.Minute)
	collect(t, e, old)
	e.clock.Advance(time.Minute)
	require.Len(t, collect(t, e, old).Released, 1, "the address is a leak")
	for range 3 {
		e.clock.Advance(time.Hour)
		require.Empty(t, collect(t, e, old).ReleasedBlocks, "the node's last block")
	}
	require.Equal(t, orphan, e.affine("node-a"), "without a node oracle the block stays")

	nodes := newNodeSet() // node-a is gone
	c := newNodeCollector(t, e, o, nodes, time.Minute)
	res := collect(t, e, c)
	require.Len(t, res.GoneNodes, 1)
	require.Empty(t, res.GoneNodeBlocks, "not before the grace period")
	e.clock.Advance(time.Minute)
	res = collect(t, e, c)
	require.Equal(t, orphan, res.GoneNodeBlocks)
	require.Empty(t, res.ReleasedBlocks, "reported as a gone node's block only")
	require.Empty(t, res.GoneNodes)
	require.Empty(t, e.affine("node-a"))
	require.Zero(t, e.blockCount(), "the empty block is deleted")
	e.requireConsistent()
}

// TestCollectorGoneNodeLastBlock: a node holding exactly one empty block
// that the node oracle calls gone loses it once the grace period has run,
// not before, whether or not empty blocks are kept; a node that exists
// keeps its last block. Each node is asked once a pass, and once more
// before its blocks are released.
func TestCollectorGoneNodeLastBlock(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep-empty-blocks=%v", keep), func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
			gone := e.emptyBlock("node-1")
			kept := e.emptyBlock("node-2")
			nodes := newNodeSet("node-2")
			o := &owners{alive: map[string]bool{}}
			c, err := ipam.NewCollector(e.a, o.live, ipam.CollectorOptions{Grace: 10 * time.Minute, KeepEmptyBlocks: keep, Nodes: nodes.live})
			require.NoError(t, err)

			res := collect(t, e, c)
			require.Len(t, res.GoneNodes, 1)
			require.Empty(t, res.GoneNodeBlocks)
			e.clock.Advance(10*time.Minute - time.Second)
			res = collect(t, e, c)
			require.Len(t, res.GoneNodes, 1)
			require.Empty(t, res.GoneNodeBlocks, "not before the grace period")
			require.Equal(t, []netip.Prefix{gone}, e.affine("node-1"))
			require.Equal(t, 2, nodes.questions("node-1"))

			e.clock.Advance(time.Second)
			res = collect(t, e, c)
			require.Equal(t, []netip.Prefix{gone}, res.GoneNodeBlocks)
			require.Empty(t, res.ReleasedBlocks)
			require.Empty(t, res.GoneNodes)
			require.Empty(t, e.affine("node-1"))
			require.Equal(t, 4, nodes.questions("node-1"), "once a pass, and once before the release")

			for range 3 {
				e.clock.Advance(time.Hour)
				res = collect(t, e, c)
				require.Empty(t, res.GoneNodeBlocks)
				require.Empty(t, res.ReleasedBlocks)
			}
			require.Equal(t, []netip.Prefix{kept}, e.affine("node-2"), "a node that exists keeps its last block")
			require.Equal(t, 6, nodes.questions("node-2"))
			require.Equal(t, 4, nodes.questions("node-1"), "a node without blocks is not asked")
			e.requireConsistent()
		})
	}
}

// TestCollectorNodeUnknownMeansExists: a node the oracle cannot answer for
// is treated as existing, and a suspect whose answer turns unknown is
// forgotten.
func TestCollectorNodeUnknownMeansExists(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	blk := e.emptyBlock("node-1")
	nodes := newNodeSet()
	nodes.fail["node-1"] = errors.New("api server down")
	c := newNodeCollector(t, e, &owners{alive: map[string]bool{}}, nodes, time.Minute)
	for range 3 {
		res := collect(t, e, c)
		require.Empty(t, res.GoneNodes)
		require.Empty(t, res.GoneNodeBlocks)
		e.clock.Advance(time.Hour)
	}
	require.Equal(t, []netip.Prefix{blk}, e.affine("node-1"))

	// Gone, then unknown when the grace period has run.
	nodes.mu.Lock()
	delete(nodes.fail, "node-1")
	nodes.mu.Unlock()
	require.Len(t, collect(t, e, c).GoneNodes, 1)
	e.clock.Advance(time.Minute)
	nodes.mu.Lock()
	nodes.fail["node-1"] = errors.New("api server down")
	nodes.mu.Unlock()
	res := collect(t, e, c)
	require.Empty(t, res.GoneNodes)
	require.Empty(t, res.GoneNodeBlocks)
	require.Equal(t, []netip.Prefix{blk}, e.affine("node-1"))
}

// TestCollectorGoneNodeComesBack: a node that exists again drops its
// suspicion, whether it comes back between passes or between the pass's
// question and the one right before the release; its grace period then
// starts over.
func TestCollectorGoneNodeComesBack(t *testing.T) {
	t.Run("between passes", func(t *testing.T) {
		e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
		blk := e.emptyBlock("node-1")
		nodes := newNodeSet()
		c := newNodeCollector(t, e, &owners{alive: map[string]bool{}}, nodes, time.Minute)
		require.Len(t, collect(t, e, c).GoneNodes, 1)
		e.clock.Advance(30 * time.Second)
		nodes.set("node-1", true) // it was only slow to register
		require.Empty(t, collect(t, e, c).GoneNodes)
		e.clock.Advance(30 * time.Second)
		nodes.set("node-1", false)
		res := collect(t, e, c)
		require.Len(t, res.GoneNodes, 1)
		require.Empty(t, res.GoneNodeBlocks, "the grace period starts over")
		e.clock.Advance(59 * time.Second)
		require.Empty(t, collect(t, e, c).GoneNodeBlocks)
		require.Equal(t, []netip.Prefix{blk}, e.affine("node-1"))
		e.clock.Advance(time.Second)
		require.Equal(t, []netip.Prefix{blk}, collect(t, e, c).GoneNodeBlocks)
	})
	t.Run("before the release", func(t *testing.T) {
		e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
		blk := e.emptyBlock("node-1")
		nodes := newNodeSet()
		c := newNodeCollector(t, e, &owners{alive: map[string]bool{}}, nodes, time.Minute)
		collect(t, e, c)
		e.clock.Advance(time.Minute)
		nodes.hook = func(node string, asked int) {
			if asked == 3 { // the question right before the release
				nodes.exists[node] = true
			}
		}
		res := collect(t, e, c)
		require.Empty(t, res.GoneNodeBlocks)
		require.Empty(t, res.GoneNodes)
		require.Equal(t, []netip.Prefix{blk}, e.affine("node-1"))

		nodes.hook = nil
		nodes.set("node-1", false)
		e.clock.Advance(time.Hour)
		res = collect(t, e, c)
		require.Empty(t, res.GoneNodeBlocks, "the grace period starts over")
		require.Len(t, res.GoneNodes, 1)
		e.clock.Advance(time.Minute)
		require.Equal(t, []netip.Prefix{blk}, collect(t, e, c).GoneNodeBlocks)
	})
}

// TestCollectorGoneNodeKeepsAddresses: the blocks of a gone node that
// still hold addresses lose their affinity, as ReleaseHostAffinities leaves
// them, and keep their addresses, which the allocation oracle collects as
// usual.
func TestCollectorGoneNodeKeepsAddresses(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	big := e.mustAssign4("node-1", "big", 16)
	small := e.mustAssign4("node-1", "small", 1)
	blocks := []netip.Prefix{big[0].Block, small[0].Block}
	require.ElementsMatch(t, blocks, e.affine("node-1"))
	o := &owners{alive: map[string]bool{"big": true, "small": true}}
	nodes := newNodeSet()
	c := newNodeCollector(t, e, o, nodes, time.Minute)

	collect(t, e, c)
	e.clock.Advance(time.Minute)
	res := collect(t, e, c)
	require.ElementsMatch(t, blocks, res.GoneNodeBlocks)
	require.Empty(t, res.GoneNodes)
	require.Empty(t, res.Released)
	require.Equal(t, 3, nodes.questions("node-1"), "once a pass, not once a block")
	require.Empty(t, e.affine("node-1"))
	for _, blk := range blocks {
		require.True(t, e.blockInfo(blk).Affinity.IsZero(), "%s has no affinity", blk)
	}
	for handle, want := range map[string][]ipam.Assigned{"big": big, "small": small} {
		got, err := e.a.IPsByHandle(e.ctx, handle)
		require.NoError(t, err)
		require.ElementsMatch(t, addrs(want), got, "%s keeps its addresses", handle)
	}
	e.requireConsistent()

	// The addresses are collected as usual once their owner is dead.
	o.set("small", false)
	require.Empty(t, collect(t, e, c).Released)
	e.clock.Advance(time.Minute)
	res = collect(t, e, c)
	require.Equal(t, addrs(small), allocAddrs(res.Released))
	require.Equal(t, []netip.Prefix{small[0].Block}, res.DeletedBlocks, "the pass says it deleted the block")
	require.Equal(t, 1, e.blockCount(), "the emptied block without affinity is gone")
	e.requireConsistent()
}

// TestCollectorGoneNodeCoolingBlock: a gone node's empty block in which an
// address is cooling loses its affinity with the node's other blocks, and
// is kept, without affinity, until the cooldown is over; a later pass
// deletes it.
func TestCollectorGoneNodeCoolingBlock(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/28", 30)) // four blocks of 4
	e.cooldown(time.Hour)
	got := e.mustAssign4("node-1", "a", 8) // two blocks
	cooling, full := got[0].Block, got[4].Block
	require.NotEqual(t, cooling, full)
	var rels []ipam.Release
	for _, x := range got[:4] {
		rels = append(rels, ipam.Release{Addr: x.Addr})
	}
	_, err := e.a.ReleaseIPs(e.ctx, rels...)
	require.NoError(t, err)
	nodes := newNodeSet()
	c := newNodeCollector(t, e, &owners{alive: map[string]bool{"a": true}}, nodes, time.Minute)

	collect(t, e, c)
	e.clock.Advance(time.Minute)
	res := collect(t, e, c)
	require.ElementsMatch(t, []netip.Prefix{cooling, full}, res.GoneNodeBlocks)
	require.Empty(t, res.GoneNodes)
	require.Empty(t, e.affine("node-1"))
	require.Equal(t, 2, e.blockCount(), "the cooling block is kept")
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{cooling}, r.Cooling)

	e.clock.Advance(time.Hour)
	res = collect(t, e, c)
	require.Equal(t, []netip.Prefix{cooling}, res.DeletedBlocks, "cooled down, it goes")
	require.Equal(t, 1, e.blockCount(), "the block holding a's addresses stays, without affinity")
	e.requireConsistent()
}

// TestCollectorGoneNodeBlockTakenMeanwhile: between the pass's read and the
// release, the gone node's block is released and claimed by another node,
// which assigns from it. The release is compare-and-swap on a fresh read:
// the block, now another node's, is left alone, and that is not an error.
func TestCollectorGoneNodeBlockTakenMeanwhile(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	blk := e.emptyBlock("node-1")
	nodes := newNodeSet("node-2")
	o := &owners{alive: map[string]bool{"pod-2": true}}
	c := newNodeCollector(t, e, o, nodes, time.Minute)
	collect(t, e, c)
	e.clock.Advance(time.Minute)
	nodes.hook = func(node string, asked int) {
		if node == "node-1" && asked == 3 { // the question right before the release
			require.NoError(t, e.a.ReleaseAffinity(e.ctx, "node-1", blk, false))
			_, err := e.a.ClaimAffinity(e.ctx, "node-2", blk)
			require.NoError(t, err)
			_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: blk.Addr(), Handle: "pod-2", Node: "node-2"})
			require.NoError(t, err)
		}
	}
	res := collect(t, e, c)
	require.Empty(t, res.GoneNodeBlocks)
	require.Empty(t, res.GoneNodes)
	require.Equal(t, block.Host("node-2"), e.blockInfo(blk).Affinity)
	own, err := e.a.Owner(e.ctx, blk.Addr())
	require.NoError(t, err)
	require.Equal(t, "pod-2", own.Handle)
	e.requireConsistent()
}

// TestCollectorGoneNodeStartsAgain: a node that lost its blocks to the
// collector is forgotten, so a block it holds afterwards (an AutoAssign
// that was in flight, or a new node of the same name that an oracle
// reading a cache does not know yet) waits out a grace period of its
// own rather than lose its affinity on the next pass.
func TestCollectorGoneNodeStartsAgain(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	e.emptyBlock("node-a")
	nodes := newNodeSet()
	c := newNodeCollector(t, e, &owners{alive: map[string]bool{}}, nodes, time.Minute)
	collect(t, e, c)
	e.clock.Advance(time.Minute)
	res := collect(t, e, c)
	require.Len(t, res.GoneNodeBlocks, 1)
	require.Empty(t, res.GoneNodes)

	e.emptyBlock("node-a")
	e.clock.Advance(time.Second)
	res = collect(t, e, c)
	require.Empty(t, res.GoneNodeBlocks)
	require.Equal(t, []ipam.GoneNode{{Name: "node-a", Since: e.clock.Now(), Blocks: e.affine("node-a")}}, res.GoneNodes)
	e.clock.Advance(time.Minute)
	require.Len(t, collect(t, e, c).GoneNodeBlocks, 1)
}

// TestCollectorDeletesGoneNodesLabels: the stored labels of a node that
// the node oracle calls gone are deleted with its blocks once the grace
// period has run, whether or not it holds blocks; a node that exists, or
// whose answer is unknown, keeps them; a dry run only reports them; and
// labels changed while the pass runs (the node is back) stay.
func TestCollectorDeletesGoneNodesLabels(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	blk := e.emptyBlock("with-block")
	for _, node := range []string{"with-block", "labels-only", "alive", "unknown", "back"} {
		require.NoError(t, e.a.SetNodeLabels(e.ctx, node, map[string]string{"rack": "a"}))
	}
	nodes := newNodeSet("alive")
	nodes.fail["unknown"] = errors.New("oracle down")
	o := &owners{alive: map[string]bool{}}

	dry, err := ipam.NewCollector(e.a, o.live, ipam.CollectorOptions{Grace: time.Minute, Nodes: nodes.live, DryRun: true})
	require.NoError(t, err)
	c := newNodeCollector(t, e, o, nodes, time.Minute)
	res := collect(t, e, c)
	collect(t, e, dry)
	names := func(gs []ipam.GoneNode) []string {
		var out []string
		for _, g := range gs {
			out = append(out, g.Name)
		}
		return out
	}
	require.Equal(t, []string{"back", "labels-only", "with-block"}, names(res.GoneNodes), "nodes with labels but no block are asked too")
	for _, g := range res.GoneNodes {
		require.True(t, g.Labels, "%s has labels", g.Name)
	}
	require.Empty(t, res.GoneNodes[1].Blocks)
	require.Equal(t, []netip.Prefix{blk}, res.GoneNodes[2].Blocks)
	require.Empty(t, res.GoneNodeLabels, "not before the grace period")

	e.clock.Advance(time.Minute)
	dres := collect(t, e, dry)
	require.Equal(t, []string{"back", "labels-only", "with-block"}, dres.GoneNodeLabels, "a dry run reports them")
	for _, node := range []string{"with-block", "labels-only", "back"} {
		got, err := e.a.NodeLabels(e.ctx, node)
		require.NoError(t, err)
		require.NotNil(t, got, "a dry run deletes nothing (%s)", node)
	}

	// "back" returns between the pass's read and its last question: its
	// labels, set again, stay.
	last := nodes.questions("back") + 2 // the pass's question, then the last one
	nodes.hook = func(node string, asked int) {
		if node == "back" && asked == last {
			require.NoError(t, e.a.SetNodeLabels(e.ctx, "back", map[string]string{"rack": "b"}))
		}
	}
	res = collect(t, e, c)
	require.Equal(t, []string{"labels-only", "with-block"}, res.GoneNodeLabels)
	require.Equal(t, []netip.Prefix{blk}, res.GoneNodeBlocks)
	for node, want := range map[string]map[string]string{
		"with-block": nil, "labels-only": nil,
		"alive": {"rack": "a"}, "unknown": {"rack": "a"}, "back": {"rack": "b"},
	} {
		got, err := e.a.NodeLabels(e.ctx, node)
		require.NoError(t, err)
		require.Equal(t, want, got, "labels of %s", node)
	}
	require.Empty(t, collect(t, e, c).GoneNodeLabels, "a node stripped is forgotten")
	e.requireConsistent()
}

// TestCollectorDryRunGoneNodeLabelsSetAgain: a node gone for the grace
// period loses its blocks; then labels are stored for it (a node of the
// same name the oracle does not know yet). A real collector forgot the
// node when it stripped it, and gives the labels a grace period of their
// own; a dry run, run on the same store before each real pass, must
// report the same, not the labels as ripe at once.
func TestCollectorDryRunGoneNodeLabelsSetAgain(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	e.mustAssign4("n", "pod", 1)
	nodes := newNodeSet()
	o := &owners{alive: map[string]bool{"pod": true}}
	other, err := ipam.New(e.store, ipam.Options{Now: e.clock.Now})
	require.NoError(t, err)
	dry, real := dryAndReal(t, e.a, other, o.live, ipam.CollectorOptions{Grace: time.Minute, Nodes: nodes.live})

	requireDryMatches(t, e.ctx, e.store, dry, real)
	e.clock.Advance(time.Minute)
	res := requireDryMatches(t, e.ctx, e.store, dry, real)
	require.Len(t, res.GoneNodeBlocks, 1, "the node is stripped")

	require.NoError(t, e.a.SetNodeLabels(e.ctx, "n", map[string]string{"rack": "a"}))
	res = requireDryMatches(t, e.ctx, e.store, dry, real)
	require.Empty(t, res.GoneNodeLabels, "labels stored after the node was stripped wait out a grace period")
	require.Equal(t, []ipam.GoneNode{{Name: "n", Since: e.clock.Now(), Blocks: []netip.Prefix{}, Labels: true}}, res.GoneNodes)
	e.clock.Advance(time.Minute)
	res = requireDryMatches(t, e.ctx, e.store, dry, real)
	require.Equal(t, []string{"n"}, res.GoneNodeLabels)
}
