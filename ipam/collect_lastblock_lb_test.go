package ipam_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

// TestCollectorLastBlockNotInLoadBalancerPool: node-1 holds an
// empty block in pool "w" and an empty one in pool "lb", which UpdatePool
// has since made a LoadBalancer pool (the node's block there stays its
// own, but no node assigns from it again: see UpdatePool). Both are ripe.
// The last-block rule counts only blocks a node can assign from, so the
// collector must keep the "w" block and may release the "lb" one; it
// counts the "lb" block as serving the node, releases the "w" block,
// which comes first in address order, and keeps the "lb" one as the
// node's last.
func TestCollectorLastBlockNotInLoadBalancerPool(t *testing.T) {
	e := newEnv(t, v4pool("w", "10.0.0.0/24", 26), v4pool("lb", "10.1.0.0/24", 26))
	for _, name := range []string{"w", "lb"} {
		_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: name, Node: "node-1", IPv4Pools: []string{name}})
		require.NoError(t, err)
	}
	for _, h := range []string{"w", "lb"} {
		_, err := e.a.ReleaseByHandle(e.ctx, h)
		require.NoError(t, err)
	}
	_, err := e.a.ModifyPool(e.ctx, "lb", func(p *pool.Pool) error {
		p.AllowedUses = []pool.Use{pool.UseLoadBalancer}
		return nil
	})
	require.NoError(t, err)
	require.Len(t, e.affine("node-1"), 2)

	c := newCollector(t, e, &owners{alive: map[string]bool{}}, time.Minute)
	_, err = c.Collect(e.ctx)
	require.NoError(t, err)
	e.clock.Advance(time.Minute)
	res, err := c.Collect(e.ctx)
	require.NoError(t, err)
	t.Logf("released %v", res.ReleasedBlocks)
	held := e.affine("node-1")
	require.Len(t, held, 1)
	require.True(t, mustPrefix("10.0.0.0/24").Contains(held[0].Addr()), "node-1 kept %v, in the LoadBalancer pool, as its last block, and lost the one it assigns from", held[0])
}
