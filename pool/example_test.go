package pool_test

import (
	"fmt"
	"net/netip"

	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

// A manifest from the Calico documentation, converted from YAML to JSON,
// decodes into pools; defaults and validation come after.
func ExampleDecodeManifest() {
	manifest := `{
	  "apiVersion": "projectcalico.org/v3",
	  "kind": "IPPool",
	  "metadata": {"name": "extra-ippool"},
	  "spec": {"cidr": "192.168.0.0/20", "vxlanMode": "Always", "natOutgoing": true, "nodeSelector": "type==\"test\""}
	}`
	pools, err := pool.DecodeManifest([]byte(manifest))
	if err != nil {
		fmt.Println(err)
		return
	}
	p := pools[0].WithDefaults()
	fmt.Println(p.Name, p.CIDR, p.BlockSize, p.VXLANMode, p.AllowedUses, p.Validate())

	// A misspelt field is an error, not a silent default.
	_, err = pool.DecodeManifest([]byte(`{"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
	  "metadata": {"name": "extra-ippool"}, "spec": {"cidr": "192.168.0.0/20", "blocksize": 24}}`))
	fmt.Println(err)
	// Output:
	// extra-ippool 192.168.0.0/20 26 Always [Workload Tunnel] <nil>
	// manifest item 1 (IPPool "extra-ippool"): spec.blocksize: is not a field of the IPPool spec
}

// Pools per rack, chosen by nodeSelector, and the explanation when a node
// has none.
func ExampleSet_Select() {
	var s pool.Set
	for _, p := range []pool.Pool{
		{Name: "rack-0-ippool", CIDR: netip.MustParsePrefix("192.168.0.0/24"), NodeSelector: `rack == "0"`},
		{Name: "rack-1-ippool", CIDR: netip.MustParsePrefix("192.168.1.0/24"), NodeSelector: `rack == "1"`},
		{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/16"), Disabled: true},
	} {
		if err := s.Add(p); err != nil {
			fmt.Println(err)
		}
	}
	pools, err := s.Select(pool.Request{Family: pool.IPv4, Node: "kube-node-1", NodeLabels: selector.Set{"rack": "1"}})
	fmt.Println(pools[0].Name, pools[0].CIDR, err)

	_, err = s.Select(pool.Request{Family: pool.IPv4, Node: "kube-node-9", NodeLabels: selector.Set{"rack": "9"}})
	fmt.Println(err)

	// A pool named in the request (Calico's ipv4pools annotation) is used
	// whatever its selector says.
	pools, _ = s.Select(pool.Request{Family: pool.IPv4, Node: "kube-node-9", Pools: []string{"rack-0-ippool"}})
	fmt.Println(pools[0].Name)
	// Output:
	// rack-1-ippool 192.168.1.0/24 <nil>
	// no pool for node kube-node-9 (IPv4, Workload): pool default-ipv4-ippool: is disabled; pool rack-0-ippool: nodeSelector rack == "0" does not match node kube-node-9 (labels rack=9); pool rack-1-ippool: nodeSelector rack == "1" does not match node kube-node-9 (labels rack=9)
	// rack-0-ippool
}

// Each node walks a pool's blocks from its own starting point, skipping the
// blocks that exist already.
func ExamplePool_Walk() {
	p := pool.Pool{Name: "small", CIDR: netip.MustParsePrefix("10.0.0.0/24"), BlockSize: 26}
	for _, node := range []string{"node-1", "node-2"} {
		fmt.Print(node, ":")
		for b := range p.Walk(node, nil) {
			fmt.Print(" ", b)
		}
		fmt.Println()
	}
	existing := []netip.Prefix{netip.MustParsePrefix("10.0.0.192/26")}
	fmt.Print("node-2, skipping 10.0.0.192/26:")
	for b := range p.Walk("node-2", existing) {
		fmt.Print(" ", b)
	}
	fmt.Println()

	// A /48 has 2^74 blocks of /122; the walk starts at once all the same.
	huge := pool.Pool{Name: "huge", CIDR: netip.MustParsePrefix("fd00::/48")}
	for b := range huge.Walk("node-1", nil) {
		fmt.Println(huge.NumBlocks(), "blocks, node-1 starts at", b)
		break
	}
	// Output:
	// node-1: 10.0.0.64/26 10.0.0.128/26 10.0.0.192/26 10.0.0.0/26
	// node-2: 10.0.0.192/26 10.0.0.0/26 10.0.0.64/26 10.0.0.128/26
	// node-2, skipping 10.0.0.192/26: 10.0.0.0/26 10.0.0.64/26 10.0.0.128/26
	// 18889465931478580854784 blocks, node-1 starts at fd00::8f43:560c:5020:fa3e:4440/122
}

// A node taking blocks one after another keeps one Walker and tells it of
// each block it takes: every walk starts at the node's first block and
// jumps over all it holds.
func ExampleWalker() {
	p := pool.Pool{Name: "small", CIDR: netip.MustParsePrefix("10.0.0.0/24"), BlockSize: 26}
	w := p.NewWalker([]netip.Prefix{netip.MustParsePrefix("10.0.0.192/26")}) // another node's
	for range 3 {
		var next netip.Prefix
		for b := range w.Walk("node-2") {
			next = b
			break
		}
		fmt.Println("node-2 takes", next)
		w.Skip(next) // after the walk: never during one
	}
	// Output:
	// node-2 takes 10.0.0.0/26
	// node-2 takes 10.0.0.64/26
	// node-2 takes 10.0.0.128/26
}

// The block-size rule of the Calico documentation: 2^(blockSize - prefix)
// blocks must cover the nodes.
func ExamplePlan() {
	p := pool.Pool{Name: "default-ipv4-pool", CIDR: netip.MustParsePrefix("10.244.0.0/18"), BlockSize: 26}
	c, err := pool.Plan(p, 300, 110)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.Blocks, "blocks of", c.AddressesPerBlock, "addresses;", c.BlocksPerNode, "blocks per node;", c.NodesServed, "nodes served")
	for _, w := range c.Warnings {
		fmt.Println("warning:", w)
	}
	c, _ = pool.Plan(p, 100, 110)
	fmt.Println("100 nodes fit:", c.Fits, "- suggested blockSize", c.Suggested)
	// Output:
	// 256 blocks of 64 addresses; 2 blocks per node; 128 nodes served
	// warning: only 256 of 300 nodes can get a block: 10.244.0.0/18 has 2^(26-18) = 256 blocks
	// warning: each node needs 2 blocks of 64 addresses for 110 pods: only 128 of 300 nodes can get them
	// warning: no block size serves every node: a /16 pool with blockSize 25 would
	// 100 nodes fit: true - suggested blockSize 25
}

// Migrating to a new pool: find free space next to the existing pools,
// add the new pool, disable the old one.
func ExampleSet_FindFree() {
	var s pool.Set
	old := pool.Pool{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("192.168.0.0/16")}
	if err := s.Add(old); err != nil {
		fmt.Println(err)
	}
	cidr, ok := s.FindFree(netip.MustParsePrefix("192.168.0.0/15"), 16)
	fmt.Println(cidr, ok)
	fmt.Println(s.Add(pool.Pool{Name: "new-pool", CIDR: cidr, BlockSize: 27}))
	old.Disabled = true
	fmt.Println(s.Update(old))
	fmt.Println(s.Add(pool.Pool{Name: "temporary-pool", CIDR: netip.MustParsePrefix("192.168.128.0/17")}))
	// Output:
	// 192.169.0.0/16 true
	// <nil>
	// <nil>
	// pool "temporary-pool": cidr 192.168.128.0/17 overlaps pool "default-ipv4-ippool" (192.168.0.0/16)
}
