package ipam_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

// rackPools are a pool per rack, chosen by the node's label rack.
func rackPools() []pool.Pool {
	a, b := v4pool("rack-a", "10.0.0.0/24", 28), v4pool("rack-b", "10.0.1.0/24", 28)
	a.NodeSelector, b.NodeSelector = `rack == "a"`, `rack == "b"`
	return []pool.Pool{a, b}
}

func TestNodeLabelsStored(t *testing.T) {
	e := newEnv(t)
	got, err := e.a.NodeLabels(e.ctx, "n1")
	require.NoError(t, err)
	require.Nil(t, got, "a node without labels")

	in := map[string]string{"rack": "a", "zone": "z1"}
	require.NoError(t, e.a.SetNodeLabels(e.ctx, "n1", in))
	in["rack"] = "changed by the caller afterwards"
	got, err = e.a.NodeLabels(e.ctx, "n1")
	require.NoError(t, err)
	require.Equal(t, map[string]string{"rack": "a", "zone": "z1"}, got)
	got["zone"] = "changed by the caller"
	again, err := e.a.NodeLabels(e.ctx, "n1")
	require.NoError(t, err)
	require.Equal(t, "z1", again["zone"], "NodeLabels returns the caller's own map")

	other, err := e.a.NodeLabels(e.ctx, "n2")
	require.NoError(t, err)
	require.Nil(t, other, "labels are per node")

	for _, none := range []map[string]string{nil, {}} {
		require.NoError(t, e.a.SetNodeLabels(e.ctx, "n1", map[string]string{"rack": "b"}))
		require.NoError(t, e.a.SetNodeLabels(e.ctx, "n1", none))
		got, err = e.a.NodeLabels(e.ctx, "n1")
		require.NoError(t, err)
		require.Nil(t, got)
		require.Zero(t, e.store.Len(ipam.KindNode), "no labels, no record")
	}
	require.NoError(t, e.a.SetNodeLabels(e.ctx, "n1", nil), "removing labels a node does not have")
	e.requireConsistent()
}

func TestAllNodeLabels(t *testing.T) {
	e := newEnv(t)
	all, err := e.a.AllNodeLabels(e.ctx)
	require.NoError(t, err)
	require.Empty(t, all)
	require.NoError(t, e.a.SetNodeLabels(e.ctx, "n1", map[string]string{"rack": "a"}))
	require.NoError(t, e.a.SetNodeLabels(e.ctx, "n2", map[string]string{"rack": "b", "zone": "z"}))
	require.NoError(t, e.a.SetNodeLabels(e.ctx, "n3", map[string]string{"rack": "c"}))
	require.NoError(t, e.a.SetNodeLabels(e.ctx, "n3", nil))
	all, err = e.a.AllNodeLabels(e.ctx)
	require.NoError(t, err)
	require.Equal(t, map[string]map[string]string{"n1": {"rack": "a"}, "n2": {"rack": "b", "zone": "z"}}, all)
	all["n1"]["rack"] = "changed by the caller"
	got, err := e.a.NodeLabels(e.ctx, "n1")
	require.NoError(t, err)
	require.Equal(t, map[string]string{"rack": "a"}, got, "the maps are the caller's")

	_, err = e.store.Create(e.ctx, ipam.KindNode, "bad", []byte(`{`))
	require.NoError(t, err)
	_, err = e.a.AllNodeLabels(e.ctx)
	require.ErrorIs(t, err, ipam.ErrCorrupt)
	require.ErrorContains(t, err, `node "bad"`)
}

func TestSetNodeLabelsWritesOnlyChanges(t *testing.T) {
	e := newEnv(t)
	counting := storetest.NewCountingStore(e.store)
	a, err := ipam.New(counting, ipam.Options{})
	require.NoError(t, err)
	writes := func() int64 {
		c, _ := storetest.CountsOf(counting)
		return c.Of(storetest.OpCreate, ipam.KindNode) + c.Of(storetest.OpUpdate, ipam.KindNode) + c.Of(storetest.OpDelete, ipam.KindNode)
	}
	for i, step := range []struct {
		labels map[string]string
		writes int64
	}{
		{map[string]string{"rack": "a"}, 1},
		{map[string]string{"rack": "a"}, 1},
		{map[string]string{"rack": "a", "zone": "z"}, 2},
		{map[string]string{"zone": "z", "rack": "a"}, 2},
		{map[string]string{"rack": "a", "zone": ""}, 3},
		{nil, 4},
		{nil, 4},
	} {
		require.NoError(t, a.SetNodeLabels(e.ctx, "n1", step.labels))
		require.Equal(t, step.writes, writes(), "after step %d (%v)", i, step.labels)
	}
}

func TestSetNodeLabelsRejects(t *testing.T) {
	e := newEnv(t)
	many := map[string]string{}
	for i := range ipam.MaxNodeLabels + 1 {
		many[strings.Repeat("k", i+1)] = ""
	}
	for _, tc := range []struct {
		name, node string
		labels     map[string]string
		says       string
	}{
		{"empty node", "", map[string]string{"rack": "a"}, "empty node name"},
		{"slash in node", "a/b", map[string]string{"rack": "a"}, `"a/b" contains "/"`},
		{"empty key", "n1", map[string]string{"": "a"}, `node "n1": label with an empty key`},
		{"long key", "n1", map[string]string{strings.Repeat("k", ipam.MaxAttrLen+1): "a"}, "of 513 bytes is longer than 512"},
		{"key with a space", "n1", map[string]string{"a b": "a"}, `label key "a b" is not one a selector can name`},
		{"key with =", "n1", map[string]string{"a=b": "a"}, `label key "a=b" is not one a selector can name`},
		{"key not ASCII", "n1", map[string]string{"ü": "a"}, `label key "ü" is not one a selector can name`},
		{"long value", "n1", map[string]string{"rack": strings.Repeat("v", ipam.MaxAttrLen+1)}, "label rack: value of 513 bytes is longer than 512"},
		{"bad UTF-8", "n1", map[string]string{"rack": "\xff"}, `label rack: value "\xff" is not valid UTF-8`},
		{"too many", "n1", many, "257 labels, more than 256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := e.a.SetNodeLabels(e.ctx, tc.node, tc.labels)
			require.ErrorIs(t, err, ipam.ErrInvalid)
			require.ErrorContains(t, err, tc.says)
			require.Zero(t, e.store.Len(ipam.KindNode), "nothing written")
		})
	}
	_, err := e.a.NodeLabels(e.ctx, " n1")
	require.ErrorIs(t, err, ipam.ErrInvalid)
}

// A request without NodeLabels is served with the node's stored labels,
// by AutoAssign's lane and its general path alike: a changed label moves
// the node's next address to the other rack's pool and gives up its empty
// block in the first.
func TestAutoAssignUsesStoredLabels(t *testing.T) {
	e := newEnv(t, rackPools()...)
	ctx := e.ctx
	assign := func(handle string, labels selector.Labels) (ipam.AutoAssignResult, error) {
		return e.a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: handle, Node: "n1", NodeLabels: labels})
	}

	_, err := assign("h0", nil)
	require.ErrorIs(t, err, pool.ErrNoPool, "no labels stored: no pool selects the node")
	require.ErrorContains(t, err, `no labels are stored for node "n1" (SetNodeLabels)`)
	var noPool *pool.NoPoolError
	require.ErrorAs(t, err, &noPool)
	_, _, err = e.a.EnsureBlock(ctx, ipam.EnsureBlockArgs{Node: "n1", IPv4: true})
	require.ErrorIs(t, err, pool.ErrNoPool)
	require.ErrorContains(t, err, `no labels are stored for node "n1" (SetNodeLabels)`)
	_, err = assign("h0", selector.Set{})
	require.ErrorIs(t, err, pool.ErrNoPool)
	require.NotContains(t, err.Error(), "stored", "labels given: nothing is said of stored ones")
	_, err = e.a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h0", Node: "n1", IPv4Pools: []string{"no-such-pool"}})
	require.ErrorIs(t, err, ipam.ErrPoolNotFound)
	require.NotContains(t, err.Error(), "stored", "no nodeSelector passed a pool over: labels are not the reason")

	require.NoError(t, e.a.SetNodeLabels(ctx, "n1", map[string]string{"rack": "a"}))
	for _, h := range []string{"h1", "h2", "h3"} { // the general path, then the lane
		res, err := assign(h, nil)
		require.NoError(t, err)
		require.Equal(t, "rack-a", res.IPv4[0].Pool)
	}
	blockA := e.affine("n1")
	require.Len(t, blockA, 1)

	res, err := assign("given", selector.Set{"rack": "b"})
	require.NoError(t, err)
	require.Equal(t, "rack-b", res.IPv4[0].Pool, "labels given serve the request instead")
	labels, err := e.a.NodeLabels(ctx, "n1")
	require.NoError(t, err)
	require.Equal(t, map[string]string{"rack": "a"}, labels, "and are not stored")
	_, err = assign("none-given", selector.Set{})
	require.ErrorIs(t, err, pool.ErrNoPool, "an empty Set is no labels, not the stored ones")
	var fromCache map[string]string // a node agent's labels, not known yet
	res, err = assign("nil-map", selector.Set(fromCache))
	require.NoError(t, err, "a nil Set leaves the labels to the store")
	require.Equal(t, "rack-a", res.IPv4[0].Pool)
	require.Contains(t, e.affine("n1"), blockA[0])

	for _, h := range []string{"h1", "h2", "h3", "given", "nil-map"} {
		_, err := e.a.ReleaseByHandle(ctx, h)
		require.NoError(t, err)
	}
	require.NoError(t, e.a.SetNodeLabels(ctx, "n1", map[string]string{"rack": "b"}))
	for _, h := range []string{"h4", "h5"} {
		res, err := assign(h, nil)
		require.NoError(t, err)
		require.Equal(t, "rack-b", res.IPv4[0].Pool)
	}
	require.NotContains(t, e.affine("n1"), blockA[0], "the empty block in rack-a, which no longer selects the node, is given up")
	e.requireConsistent()
}

// Other allocators, the general path and EnsureBlock see labels another
// allocator stores.
func TestStoredLabelsSharedByAllocators(t *testing.T) {
	e := newEnv(t, rackPools()...)
	ctx := e.ctx
	other := e.allocator()
	require.NoError(t, other.SetNodeLabels(ctx, "n1", map[string]string{"rack": "a"}))
	v4, _, err := e.a.EnsureBlock(ctx, ipam.EnsureBlockArgs{Node: "n1", IPv4: true})
	require.NoError(t, err)
	require.True(t, mustPrefix("10.0.0.0/24").Overlaps(v4), "EnsureBlock in rack-a, got %v", v4)

	require.NoError(t, other.SetNodeLabels(ctx, "n1", map[string]string{"rack": "b"}))
	v4b, _, err := e.a.EnsureBlock(ctx, ipam.EnsureBlockArgs{Node: "n1", IPv4: true})
	require.NoError(t, err)
	require.True(t, mustPrefix("10.0.1.0/24").Overlaps(v4b), "EnsureBlock in rack-b after the change, got %v", v4b)
	require.NotContains(t, e.affine("n1"), v4, "the empty rack-a block is given up")

	res, err := e.a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 2, Handle: "h", Node: "n1"})
	require.NoError(t, err)
	require.Equal(t, v4b, res.IPv4[0].Block)
}

// Without labels that matter (no pool selects nodes by label), a request
// without NodeLabels does not read the node's record; with them, on a
// store without Generations, it reads it every time, as it reads pools.
func TestStoredLabelsReads(t *testing.T) {
	for _, tc := range []struct {
		name     string
		pools    []pool.Pool
		gens     bool
		perReq   int64
		firstReq int64
	}{
		{"no selector, generations", []pool.Pool{v4pool("p", "10.0.0.0/24", 28)}, true, 0, 0},
		{"no selector, no generations", []pool.Pool{v4pool("p", "10.0.0.0/24", 28)}, false, 0, 0},
		{"selectors, generations", rackPools(), true, 0, 1},
		{"selectors, no generations", rackPools(), false, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.pools...)
			require.NoError(t, e.a.SetNodeLabels(e.ctx, "n1", map[string]string{"rack": "a"}))
			var s ipam.Store = e.store
			if !tc.gens {
				s = struct{ ipam.Store }{e.store}
			}
			counting := storetest.NewCountingStore(s)
			a, err := ipam.New(counting, ipam.Options{})
			require.NoError(t, err)
			reads := func() int64 {
				c, _ := storetest.CountsOf(counting)
				return c.Of(storetest.OpGet, ipam.KindNode)
			}
			for i := range 4 {
				_, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"})
				require.NoError(t, err)
				require.Equal(t, tc.firstReq+int64(i)*tc.perReq, reads(), "node record reads after %d requests", i+1)
			}
		})
	}
}

func TestNodeLabelsCorrupt(t *testing.T) {
	e := newEnv(t, rackPools()...)
	_, err := e.store.Create(e.ctx, ipam.KindNode, "n1", []byte(`{"labels":`))
	require.NoError(t, err)

	_, err = e.a.NodeLabels(e.ctx, "n1")
	require.ErrorIs(t, err, ipam.ErrCorrupt)
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"})
	require.ErrorIs(t, err, ipam.ErrCorrupt, "a request served with the stored labels cannot read them")
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1", NodeLabels: selector.Set{"rack": "a"}})
	require.NoError(t, err, "a request with its own labels does not need them")

	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, r.LabeledNodes)
	require.Len(t, r.Problems, 1)
	require.Equal(t, ipam.ProblemCorrupt, r.Problems[0].Kind)
	require.Equal(t, "node n1", r.Problems[0].Record)
	require.Contains(t, r.Problems[0].Detail, "SetNodeLabels replaces it")

	require.NoError(t, e.a.SetNodeLabels(e.ctx, "n1", map[string]string{"rack": "b"}), "a corrupt record is replaced")
	got, err := e.a.NodeLabels(e.ctx, "n1")
	require.NoError(t, err)
	require.Equal(t, map[string]string{"rack": "b"}, got)
	r, err = e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Empty(t, r.Problems)

	for _, bad := range []string{`{"labels":{}}`, `{"labels":{"":"x"}}`, `{}`, `[]`} {
		_, err := e.store.Create(e.ctx, ipam.KindNode, "bad", []byte(bad))
		require.NoError(t, err)
		_, err = e.a.NodeLabels(e.ctx, "bad")
		require.ErrorIs(t, err, ipam.ErrCorrupt, "value %s", bad)
		require.False(t, errors.Is(err, ipam.ErrInvalid), "a corrupt record is not the caller's invalid argument")
		require.NoError(t, e.a.SetNodeLabels(e.ctx, "bad", nil), "deleting a corrupt record")
	}
}

// A request served with the stored labels may fail for want of a pool:
// the *pool.NoPoolError then shows the labels it was matched against. They
// are the error's own. The allocator shares the stored labels between the
// requests of a node, and the labels of a node without any between all
// nodes: a caller that changes the labels it finds in an error (to retry
// with one more, say) must not change what other requests are served with.
func TestNoPoolErrorOwnsStoredLabels(t *testing.T) {
	e := newEnv(t, rackPools()...)
	ctx := e.ctx
	require.NoError(t, e.a.SetNodeLabels(ctx, "n1", map[string]string{"rack": "c"}))
	scribble := func(err error) {
		t.Helper()
		var npe *pool.NoPoolError
		require.True(t, errors.As(err, &npe), "%v", err)
		set, ok := npe.Request.NodeLabels.(selector.Set)
		require.True(t, ok, "the labels matched, as a selector.Set: %#v", npe.Request.NodeLabels)
		set["rack"] = "a"
	}
	for _, node := range []string{"n1", "n2"} { // stored labels, and none
		for range 2 { // the labels as read, then from the cache
			_, err := e.a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: node})
			require.ErrorIs(t, err, pool.ErrNoPool)
			scribble(err)
			_, _, err = e.a.EnsureBlock(ctx, ipam.EnsureBlockArgs{Node: node, IPv4: true})
			require.ErrorIs(t, err, pool.ErrNoPool)
			scribble(err)
		}
	}
	for _, node := range []string{"n1", "n2", "n3"} {
		_, err := e.a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: node})
		require.ErrorIs(t, err, pool.ErrNoPool, "node %s is served with labels a caller changed in an error", node)
		_, _, err = e.a.EnsureBlock(ctx, ipam.EnsureBlockArgs{Node: node, IPv4: true})
		require.ErrorIs(t, err, pool.ErrNoPool, "node %s is served with labels a caller changed in an error", node)
	}
	require.Empty(t, e.affine("n1"))
	require.Empty(t, e.affine("n2"))
}

// A disabled pool's nodeSelector decides nothing: no request chooses the
// pool, and a node's blocks there are kept whatever its labels (see
// AutoAssign). Requests without NodeLabels then neither read the node's
// record nor fail when it does not decode, as when no pool has a
// nodeSelector; they do once the pool is enabled again.
func TestDisabledPoolSelectorNeedsNoLabels(t *testing.T) {
	rack := v4pool("rack-a", "10.0.1.0/24", 28)
	rack.NodeSelector = `rack == "a"`
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28), rack)
	require.NoError(t, e.a.DisablePool(e.ctx, "rack-a"))
	_, err := e.store.Create(e.ctx, ipam.KindNode, "n1", []byte(`{"labels":`))
	require.NoError(t, err)

	counting := storetest.NewCountingStore(struct{ ipam.Store }{e.store}) // without Generations: every request reads
	a, err := ipam.New(counting, ipam.Options{})
	require.NoError(t, err)
	for _, h := range []string{"h1", "h2"} {
		res, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: h, Node: "n1"})
		require.NoError(t, err)
		require.Equal(t, "p", res.IPv4[0].Pool)
	}
	_, _, err = a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: "n1", IPv4: true})
	require.NoError(t, err)
	c, _ := storetest.CountsOf(counting)
	require.Zero(t, c.Of(storetest.OpGet, ipam.KindNode), "node record reads")

	require.NoError(t, a.EnablePool(e.ctx, "rack-a"))
	_, err = a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h3", Node: "n1"})
	require.ErrorIs(t, err, ipam.ErrCorrupt, "the labels matter again")
}
