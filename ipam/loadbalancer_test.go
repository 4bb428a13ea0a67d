package ipam_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

// lbPool is a LoadBalancer pool of /29 blocks.
func lbPool(name, cidr string) pool.Pool {
	return pool.Pool{Name: name, CIDR: mustPrefix(cidr), BlockSize: 29, AllowedUses: []pool.Use{pool.UseLoadBalancer}}
}

var lbOwner = block.Virtual(ipam.VirtualLoadBalancer)

// assignLB asks for n IPv4 LoadBalancer addresses under handle.
func (e *env) assignLB(handle string, n int) (ipam.AutoAssignResult, error) {
	return e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: n, Handle: handle, Use: pool.UseLoadBalancer,
		Attrs: map[string]string{"service": handle, "namespace": "default"}})
}

// blockAffinity returns the affinity of the stored block blk.
func (e *env) blockAffinity(blk netip.Prefix) block.Affinity {
	e.t.Helper()
	b, err := e.a.Block(e.ctx, blk)
	require.NoError(e.t, err)
	return b.Affinity()
}

// TestLoadBalancerVirtualOwner: LoadBalancer addresses come from blocks
// affine to the virtual owner "load-balancer", as in Calico, not to a
// node: the requests name no node, the allocations carry no node
// attribute, and workloads never see those blocks.
func TestLoadBalancerVirtualOwner(t *testing.T) {
	e := newEnv(t, v4pool("pods", "10.0.0.0/24", 26), lbPool("lb", "192.168.0.0/26"))
	web, err := e.assignLB("web", 1)
	require.NoError(t, err)
	require.Len(t, web.IPv4, 1)
	x := web.IPv4[0]
	require.Equal(t, "lb", x.Pool)
	require.Equal(t, lbOwner, e.blockAffinity(x.Block))
	require.Equal(t, "virtual:load-balancer", lbOwner.String())
	own, err := e.a.Owner(e.ctx, x.Addr)
	require.NoError(t, err)
	require.Equal(t, map[string]string{"service": "web", "namespace": "default"}, own.Attrs, "no node attribute")

	// The next service fills the same block; a second allocator finds it
	// through the index.
	other := e.allocator()
	api, err := other.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "api", Use: pool.UseLoadBalancer})
	require.NoError(t, err)
	require.Equal(t, x.Block, api.IPv4[0].Block)
	a4 := x.Block.Addr().As4()
	_, err = e.store.Get(e.ctx, ipam.KindAffinity, fmt.Sprintf("virtual:load-balancer/v4:%x/29", a4[:]))
	require.NoError(t, err, "the virtual owner's index entry")

	// A workload request never takes a LoadBalancer address, and its
	// blocks are the node's.
	pod := e.mustAssign4("load-balancer", "pod", 1)
	require.Equal(t, "pods", pod[0].Pool)
	require.Equal(t, block.Host("load-balancer"), e.blockAffinity(pod[0].Block), "a node may be called load-balancer")

	// Utilization shows the block as the virtual owner's, nothing borrowed.
	for _, pu := range e.utilization() {
		if pu.Name != "lb" {
			continue
		}
		require.Len(t, pu.Blocks, 1)
		require.Equal(t, lbOwner, pu.Blocks[0].Affinity)
		require.Zero(t, pu.Blocks[0].Borrowed)
		require.Equal(t, 2, pu.Blocks[0].InUse)
	}
	e.requireConsistent()

	// Released, the block stays with its owner, as a node's last block does.
	for _, h := range []string{"web", "api"} {
		_, err := e.a.ReleaseByHandle(e.ctx, h)
		require.NoError(t, err)
	}
	require.Equal(t, lbOwner, e.blockAffinity(x.Block))
	e.requireConsistent()
}

// TestLoadBalancerRequestChecks: a LoadBalancer request that names a node,
// or gives a node attribute, is refused before anything is written, and a
// workload request still needs its node.
func TestLoadBalancerRequestChecks(t *testing.T) {
	e := newEnv(t, v4pool("pods", "10.0.0.0/24", 26), lbPool("lb", "192.168.0.0/26"))
	_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "web", Node: "n1", Use: pool.UseLoadBalancer})
	require.ErrorIs(t, err, ipam.ErrInvalid)
	require.ErrorContains(t, err, `node "n1" given for use LoadBalancer`)
	require.ErrorContains(t, err, "leave Node empty")
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "web", Use: pool.UseLoadBalancer,
		Attrs: map[string]string{ipam.AttrNode: "n1"}})
	require.ErrorIs(t, err, ipam.ErrInvalid)
	require.ErrorContains(t, err, "belong to no node")
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("192.168.0.1"), Handle: "web", Node: "n1", Use: pool.UseLoadBalancer})
	require.ErrorIs(t, err, ipam.ErrInvalid)
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod"})
	require.ErrorIs(t, err, ipam.ErrInvalid)
	require.ErrorContains(t, err, "empty node name (LoadBalancer addresses, which belong to no node, are asked for with Use LoadBalancer)")
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("192.168.0.1"), Handle: "web"})
	require.ErrorContains(t, err, "empty node name (LoadBalancer addresses")
	for _, k := range ipam.Kinds {
		if k != ipam.KindPool {
			require.Zero(t, e.store.Len(k), "%s records after refused requests", k)
		}
	}

	// A shortfall names the virtual owner.
	_, err = e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 65, Handle: "big", Use: pool.UseLoadBalancer})
	var ae *ipam.AssignError
	require.ErrorAs(t, err, &ae)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.Empty(t, ae.Node)
	require.ErrorContains(t, err, `assign for virtual:load-balancer handle "big": short of 1 of 65 IPv4`)
}

// TestLoadBalancerNotCappedPerHost: MaxBlocksPerHost caps nodes, not the
// virtual owner, which claims what its services need; StrictAffinity
// keeps nodes out of its blocks and it out of theirs.
func TestLoadBalancerNotCappedPerHost(t *testing.T) {
	e := newEnv(t, v4pool("pods", "10.0.0.0/27", 29), lbPool("lb", "192.168.0.0/26"))
	e.config(ipam.Config{StrictAffinity: true, AutoAllocateBlocks: true, MaxBlocksPerHost: 1})
	res, err := e.assignLB("many", 20)
	require.NoError(t, err)
	require.Len(t, blocksOf(res.IPv4), 3, "20 addresses in blocks of 8")
	for blk := range blocksOf(res.IPv4) {
		require.Equal(t, lbOwner, e.blockAffinity(blk))
	}
	_, err = e.assign4("n1", "pods", 9)
	require.ErrorIs(t, err, ipam.ErrNoSpace)
	require.ErrorContains(t, err, "node holds 1 of maxBlocksPerHost 1 blocks")

	// AssignIP into a block of the virtual owner, with StrictAffinity: a
	// LoadBalancer request may, a node's may not.
	free := mustAddr("192.168.0.20") // in the third block, which holds 4
	x, err := e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: free, Handle: "static", Use: pool.UseLoadBalancer})
	require.NoError(t, err)
	require.Equal(t, lbOwner, e.blockAffinity(x.Block))
	// And one in a block nobody holds yet claims it for the owner.
	x, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: mustAddr("192.168.0.60"), Handle: "static2", Use: pool.UseLoadBalancer})
	require.NoError(t, err)
	require.Equal(t, lbOwner, e.blockAffinity(x.Block))
	e.requireConsistent()
}

// TestLoadBalancerAffinityCalls: ClaimLoadBalancerAffinity and
// ReleaseLoadBalancerAffinity work on the virtual owner's blocks, and only
// on LoadBalancer pools; a node's calls refuse those pools.
func TestLoadBalancerAffinityCalls(t *testing.T) {
	e := newEnv(t, v4pool("pods", "10.0.0.0/24", 26), lbPool("lb", "192.168.0.0/26"))
	_, err := e.a.ClaimAffinity(e.ctx, "n1", mustPrefix("192.168.0.0/29"))
	require.ErrorIs(t, err, ipam.ErrInvalid)
	require.ErrorContains(t, err, `LoadBalancer pool "lb", whose blocks belong to no node (ClaimLoadBalancerAffinity claims them`)
	_, err = e.a.ClaimLoadBalancerAffinity(e.ctx, mustPrefix("10.0.0.0/26"))
	require.ErrorIs(t, err, ipam.ErrInvalid)
	require.ErrorContains(t, err, `pool "pods", which is not a LoadBalancer pool`)
	_, err = e.a.ClaimAffinity(e.ctx, "", mustPrefix("10.0.0.0/26"))
	require.ErrorIs(t, err, ipam.ErrInvalid, "a node's calls need the node")
	require.ErrorIs(t, e.a.ReleaseAffinity(e.ctx, "", mustPrefix("0.0.0.0/0"), false), ipam.ErrInvalid)

	claimed, err := e.a.ClaimLoadBalancerAffinity(e.ctx, mustPrefix("192.168.0.0/28"))
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{mustPrefix("192.168.0.0/29"), mustPrefix("192.168.0.8/29")}, claimed)
	for _, blk := range claimed {
		require.Equal(t, lbOwner, e.blockAffinity(blk))
	}
	// With automatic claims off, the owner assigns from what it claimed.
	e.config(ipam.Config{StrictAffinity: true})
	res, err := e.assignLB("web", 9)
	require.NoError(t, err)
	require.Equal(t, map[netip.Prefix]int{claimed[0]: 8, claimed[1]: 1}, blocksOf(res.IPv4))

	// A node's release does not touch the owner's blocks.
	require.NoError(t, e.a.ReleaseAffinity(e.ctx, "n1", mustPrefix("0.0.0.0/0"), false))
	require.Equal(t, lbOwner, e.blockAffinity(claimed[0]))
	require.ErrorIs(t, e.a.ReleaseLoadBalancerAffinity(e.ctx, mustPrefix("192.168.0.0/26"), true), ipam.ErrBlockNotEmpty)
	_, err = e.a.ReleaseByHandle(e.ctx, "web")
	require.NoError(t, err)
	require.NoError(t, e.a.ReleaseLoadBalancerAffinity(e.ctx, mustPrefix("192.168.0.0/26"), true))
	for _, blk := range claimed {
		_, err := e.a.Block(e.ctx, blk)
		require.ErrorIs(t, err, ipam.ErrNotFound, "an empty block released is deleted")
	}
	e.requireConsistent()
}

// TestClaimRefusalSaysWhy: a claim of a block that is not free says whose
// it is, or that it is no one's but holds addresses.
func TestClaimRefusalSaysWhy(t *testing.T) {
	e := newEnv(t, lbPool("lb", "192.168.0.0/28"))
	web, err := e.assignLB("web", 1)
	require.NoError(t, err)
	held := web.IPv4[0].Block
	require.NoError(t, e.a.ReleaseLoadBalancerAffinity(e.ctx, mustPrefix("192.168.0.0/28"), false))
	claimed, err := e.a.ClaimLoadBalancerAffinity(e.ctx, mustPrefix("192.168.0.0/28"))
	require.ErrorIs(t, err, ipam.ErrAffinityConflict)
	require.Len(t, claimed, 1, "the other block")
	require.EqualError(t, err, "ipam: claim block "+held.String()+" for virtual:load-balancer: affinity conflict: it has no owner but holds 1 addresses")

	e2 := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
	_, err = e2.a.ClaimAffinity(e2.ctx, "n1", mustPrefix("10.0.0.0/25"))
	require.NoError(t, err)
	_, err = e2.a.ClaimAffinity(e2.ctx, "n2", mustPrefix("10.0.0.0/25"))
	require.EqualError(t, err, "ipam: claim affinity 10.0.0.0/25 for host:n2: 2 blocks not claimed:\n"+
		"ipam: claim block 10.0.0.0/26 for host:n2: affinity conflict: it is host:n1's\n"+
		"ipam: claim block 10.0.0.64/26 for host:n2: affinity conflict: it is host:n1's")
}

// TestLoadBalancerBlocksOutliveNodes: neither ReleaseHostAffinities nor a
// Collector that finds every node gone touches the virtual owner's blocks;
// its allocations are collected, like any, when their owner is dead.
func TestLoadBalancerBlocksOutliveNodes(t *testing.T) {
	e := newEnv(t, v4pool("pods", "10.0.0.0/24", 26), lbPool("lb", "192.168.0.0/26"))
	lb, err := e.assignLB("web", 1)
	require.NoError(t, err)
	blk := lb.IPv4[0].Block
	pod := e.mustAssign4("n1", "pod", 1)
	_, err = e.a.ReleaseHostAffinities(e.ctx, ipam.VirtualLoadBalancer, false)
	require.NoError(t, err)
	require.Equal(t, lbOwner, e.blockAffinity(blk), "a node named load-balancer is another owner")

	o := &owners{alive: map[string]bool{"pod": true}}
	nodes := newNodeSet() // every node is gone
	c := newNodeCollector(t, e, o, nodes, time.Minute)
	collect(t, e, c)
	e.clock.Advance(2 * time.Minute)
	res := collect(t, e, c)
	require.Equal(t, []netip.Prefix{pod[0].Block}, res.GoneNodeBlocks)
	require.Len(t, res.Released, 1)
	require.Equal(t, "web", res.Released[0].Handle)
	require.Zero(t, nodes.questions(ipam.VirtualLoadBalancer), "the virtual owner is no node")
	require.Equal(t, lbOwner, e.blockAffinity(blk), "its emptied block stays its own")
	e.requireConsistent()
}

// TestPoolBecomesLoadBalancer: a workload pool may become a LoadBalancer
// pool, as in Calico. The pods keep their addresses, LoadBalancer
// addresses taken from a node's block count as borrowed, and each node
// gives up its blocks there once they are empty, the next time it
// assigns, so that the virtual owner can claim them.
func TestPoolBecomesLoadBalancer(t *testing.T) {
	e := newEnv(t, v4pool("old", "10.0.0.0/26", 28), v4pool("pods", "10.1.0.0/24", 26))
	n1 := e.mustAssign4("n1", "p1", 2) // the first pool in name order
	n2 := e.mustAssign4("n2", "p2", 1)
	require.Equal(t, "old", n1[0].Pool)
	require.Equal(t, "old", n2[0].Pool)

	p, err := e.a.Pool(e.ctx, "old")
	require.NoError(t, err)
	p.AllowedUses = []pool.Use{pool.UseLoadBalancer}
	require.NoError(t, e.a.UpdatePool(e.ctx, p))
	e.requireConsistent()

	// A LoadBalancer address borrowed from n1's block counts as borrowed.
	borrowed := n1[0].Block.Addr().Next().Next().Next()
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: borrowed, Handle: "svc", Use: pool.UseLoadBalancer})
	require.NoError(t, err)
	for _, pu := range e.utilization() {
		if pu.Name != "old" {
			continue
		}
		require.Equal(t, uint64(1), pu.Borrowed, "the LoadBalancer address in n1's block")
		for _, bu := range pu.Blocks {
			if bu.Prefix == n1[0].Block {
				require.Equal(t, 1, bu.Borrowed)
				require.Equal(t, 3, bu.InUse)
			}
		}
	}

	// Pods now come from the other pool; n2's block, emptied, goes at its
	// next assignment, while n1's, which still holds its pods, stays.
	_, err = e.a.ReleaseByHandle(e.ctx, "p2")
	require.NoError(t, err)
	require.Equal(t, "pods", e.mustAssign4("n2", "p3", 1)[0].Pool)
	require.NotContains(t, e.affine("n2"), n2[0].Block, "n2's empty block in the LoadBalancer pool")
	require.Equal(t, "pods", e.mustAssign4("n1", "p4", 1)[0].Pool)
	require.Contains(t, e.affine("n1"), n1[0].Block, "n1's block holds its pods")

	// The virtual owner claims the freed block with the two others.
	got, err := e.assignLB("web", 48)
	require.NoError(t, err)
	var claimed bool
	for _, x := range got.IPv4 {
		claimed = claimed || x.Block == n2[0].Block
	}
	require.True(t, claimed, "the LoadBalancer owner claims n2's former block: %v", blocksOf(got.IPv4))
	require.Equal(t, lbOwner, e.blockAffinity(n2[0].Block))
	e.requireConsistent()
}

// TestLoadBalancerKeepsBlocksOfUnnamedPools: a LoadBalancer request that
// names one pool leaves the virtual owner's empty blocks in the others
// alone; only a node gives up its blocks in a LoadBalancer pool.
func TestLoadBalancerKeepsBlocksOfUnnamedPools(t *testing.T) {
	e := newEnv(t, lbPool("lb-a", "192.168.0.0/26"), lbPool("lb-b", "192.168.1.0/26"))
	web, err := e.assignLB("web", 1)
	require.NoError(t, err)
	require.Equal(t, "lb-a", web.IPv4[0].Pool)
	_, err = e.a.ReleaseByHandle(e.ctx, "web")
	require.NoError(t, err)
	api, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "api", Use: pool.UseLoadBalancer, IPv4Pools: []string{"lb-b"}})
	require.NoError(t, err)
	require.Equal(t, "lb-b", api.IPv4[0].Pool)
	require.Equal(t, lbOwner, e.blockAffinity(web.IPv4[0].Block), "the empty block in lb-a stays the owner's")
	e.requireConsistent()
}
