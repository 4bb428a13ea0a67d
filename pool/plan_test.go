package pool_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/pool"
)

func TestPlan(t *testing.T) {
	tests := []struct {
		name              string
		cidr              string
		blockSize         int
		nodes, pods       int
		blocks            string
		addrsPerBlock     int
		blocksPerNode     int
		nodesServed       string
		fits              bool
		suggested, needed int
		options           int
		warnings          []string
	}{
		{"seed default pool, small cluster", "10.244.0.0/18", 26, 100, 64,
			"256", 64, 1, "256", true, 26, 19, 13, nil},
		{"operations guide: a /16 of /26 blocks is 1024 nodes", "10.42.0.0/16", 0, 1024, 64,
			"1024", 64, 1, "1024", true, 26, 16, 13, nil},
		{"one node too many", "10.42.0.0/16", 26, 1025, 64,
			"1024", 64, 1, "1024", false, 0, 15, 13, []string{
				"only 1024 of 1025 nodes can get a block: 10.42.0.0/16 has 2^(26-16) = 1024 blocks",
				"no block size serves every node: a /15 pool with blockSize 26 would",
			}},
		{"110 pods need two /26 blocks; /25 holds them in one", "10.244.0.0/16", 26, 10, 110,
			"1024", 64, 2, "512", true, 25, 21, 13, nil},
		{"more nodes than blocks", "10.244.0.0/18", 26, 300, 110,
			"256", 64, 2, "128", false, 0, 16, 13, []string{
				"only 256 of 300 nodes can get a block: 10.244.0.0/18 has 2^(26-18) = 256 blocks",
				"each node needs 2 blocks of 64 addresses for 110 pods: only 128 of 300 nodes can get them",
				"no block size serves every node: a /16 pool with blockSize 25 would",
			}},
		{"enough blocks, not enough for the pods", "10.244.0.0/18", 26, 200, 110,
			"256", 64, 2, "128", false, 0, 17, 13, []string{
				"each node needs 2 blocks of 64 addresses for 110 pods: only 128 of 200 nodes can get them",
				"no block size serves every node: a /17 pool with blockSize 25 would",
			}},
		{"a smaller block size would do", "192.168.0.0/20", 24, 40, 20,
			"16", 256, 1, "16", false, 27, 21, 13, []string{
				"only 16 of 40 nodes can get a block: 192.168.0.0/20 has 2^(24-20) = 16 blocks",
				"blockSize 27 would serve every node",
			}},
		{"small pool: options start at its prefix", "10.0.0.0/24", 28, 8, 10,
			"16", 16, 1, "16", true, 28, 25, 9, nil},
		{"the /31 pool of the operations guide", "10.21.0.0/31", 31, 1, 2,
			"1", 2, 1, "1", true, 31, 31, 2, nil},
		{"IPv6 default pool", "fd00::/48", 0, 5000, 110,
			"18889465931478580854784", 64, 2, "9444732965739290427392", true, 121, 108, 13, nil},
		{"pool smaller than the block the pods need", "10.21.0.0/31", 31, 1, 110,
			"1", 2, 55, "0", false, 0, 25, 2, []string{
				"each node needs 55 blocks of 2 addresses for 110 pods: only 0 of 1 nodes can get them",
				"no block size serves every node: a /25 pool with blockSize 25 would",
			}},
		{"more pods than the largest block", "10.0.0.0/8", 20, 10, 5000,
			"4096", 4096, 2, "2048", true, 20, 15, 13, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pool.Pool{Name: "p", CIDR: netip.MustParsePrefix(tt.cidr), BlockSize: tt.blockSize}
			c, err := pool.Plan(p, tt.nodes, tt.pods)
			require.NoError(t, err)
			require.Equal(t, tt.blocks, c.Blocks.String(), "Blocks")
			require.Equal(t, tt.addrsPerBlock, c.AddressesPerBlock, "AddressesPerBlock")
			require.Equal(t, tt.blocksPerNode, c.BlocksPerNode, "BlocksPerNode")
			require.Equal(t, tt.nodesServed, c.NodesServed.String(), "NodesServed")
			require.Equal(t, tt.fits, c.Fits, "Fits")
			require.Equal(t, tt.suggested, c.Suggested, "Suggested")
			require.Equal(t, tt.needed, c.NeededPrefixLen, "NeededPrefixLen")
			require.Len(t, c.Options, tt.options)
			require.Equal(t, tt.warnings, c.Warnings)
			for i, o := range c.Options {
				if i > 0 {
					require.Equal(t, c.Options[i-1].BlockSize+1, o.BlockSize)
				}
				if o.BlockSize == c.BlockSize {
					require.Equal(t, c.BlockSizeOption, o)
				}
				if o.BlockSize == c.Suggested {
					require.True(t, o.Fits)
				}
			}
		})
	}
}

func TestPlanHugeInputs(t *testing.T) {
	const maxInt = int(^uint(0) >> 1)
	c, err := pool.Plan(pool.Pool{Name: "p", CIDR: netip.MustParsePrefix("10.0.0.0/8")}, maxInt, maxInt)
	require.NoError(t, err)
	require.False(t, c.Fits)
	require.Positive(t, c.BlocksPerNode)
	require.Equal(t, 0, c.Suggested)
	require.Negative(t, c.NeededPrefixLen)
	require.Equal(t, []string{
		"only 262144 of 9223372036854775807 nodes can get a block: 10.0.0.0/8 has 2^(26-8) = 262144 blocks",
		"each node needs 144115188075855872 blocks of 64 addresses for 9223372036854775807 pods: only 0 of 9223372036854775807 nodes can get them",
		"no block size serves every node, and no IPv4 pool would",
	}, c.Warnings)
}

func TestPlanErrors(t *testing.T) {
	_, err := pool.Plan(pool.Pool{Name: "p", CIDR: netip.MustParsePrefix("10.0.0.0/16")}, 0, 10)
	require.EqualError(t, err, `pool "p": plan for 0 nodes with 10 pods each: both must be at least 1`)
	_, err = pool.Plan(pool.Pool{Name: "p", CIDR: netip.MustParsePrefix("10.0.0.0/16")}, 10, 0)
	require.Error(t, err)
	_, err = pool.Plan(pool.Pool{Name: "p"}, 1, 1)
	require.EqualError(t, err, `pool "p": cidr is required`)
	_, err = pool.Plan(pool.Pool{Name: "p", CIDR: netip.MustParsePrefix("10.0.0.0/16"), BlockSize: 40}, 1, 1)
	require.EqualError(t, err, `pool "p": blockSize 40 is outside 20..32 (IPv4)`)
	// A disabled pool smaller than a block passes validation, not planning.
	_, err = pool.Plan(pool.Pool{Name: "p", CIDR: netip.MustParsePrefix("10.0.0.0/28"), Disabled: true}, 1, 1)
	require.EqualError(t, err, `pool "p": cidr 10.0.0.0/28 is smaller than one block (blockSize 26); only a disabled pool may be, an enabled one needs blockSize 28 or more`)
}
