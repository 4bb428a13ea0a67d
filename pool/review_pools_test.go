package pool_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/pool"
)

// TestSelectRequestedPoolOnceByNameAndCIDR: Select's doc promises that the
// pools a request names are the candidates "each once"; a pool named once
// by its name and once by its CIDR is the same pool, and comes back once.
func TestSelectRequestedPoolOnceByNameAndCIDR(t *testing.T) {
	s, err := pool.NewSet(
		pool.Pool{Name: "a", CIDR: netip.MustParsePrefix("10.0.0.0/16")},
		pool.Pool{Name: "b", CIDR: netip.MustParsePrefix("10.1.0.0/16")},
		pool.Pool{Name: "off", CIDR: netip.MustParsePrefix("10.2.0.0/16"), Disabled: true},
	)
	require.NoError(t, err)
	got, err := s.Select(pool.Request{Family: pool.IPv4, Pools: []string{"a", "10.0.0.0/16", "b", "10.1.0.0/16"}})
	require.NoError(t, err)
	var names []string
	for _, p := range got {
		names = append(names, p.Name)
	}
	require.Equal(t, []string{"a", "b"}, names)

	// A pool that cannot be used is explained once too.
	_, err = s.Select(pool.Request{Family: pool.IPv4, Pools: []string{"off", "10.2.0.0/16"}})
	var npe *pool.NoPoolError
	require.ErrorAs(t, err, &npe)
	require.Len(t, npe.Rejections, 1, "%v", err)
}

// TestDecodeManifestReadsAWSSubnetID: the package doc says the spec of an
// existing IPPool decodes as it is, and refuses only fields the IPPool spec
// does not have; Calico's IPPoolSpec has awsSubnetID (Calico 3.19 on, for
// pools backed by an AWS subnet), so a manifest that sets it must decode.
func TestDecodeManifestReadsAWSSubnetID(t *testing.T) {
	ps, err := pool.DecodeManifest([]byte(`{"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
		"metadata": {"name": "aws-az1"},
		"spec": {"cidr": "10.100.0.0/20", "awsSubnetID": "subnet-0123456789abcdef0", "nodeSelector": "zone == \"az1\""}}`))
	require.NoError(t, err)
	require.Len(t, ps, 1)
	require.Equal(t, "aws-az1", ps[0].Name)
	require.Equal(t, netip.MustParsePrefix("10.100.0.0/20"), ps[0].CIDR)
}
