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

// TestDecodeManifestRefusesAWSSubnetID: Calico's IPPoolSpec has
// awsSubnetID (Calico 3.19 on, for pools backed by an AWS subnet), which
// carve does not support. A manifest that sets it is refused with an
// error that says so, not that the field does not exist (found by a
// review).
func TestDecodeManifestRefusesAWSSubnetID(t *testing.T) {
	_, err := pool.DecodeManifest([]byte(`{"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
		"metadata": {"name": "aws-az1"},
		"spec": {"cidr": "10.100.0.0/20", "awsSubnetID": "subnet-0123456789abcdef0", "nodeSelector": "zone == \"az1\""}}`))
	var de *pool.DecodeError
	require.ErrorAs(t, err, &de)
	require.Equal(t, "aws-az1", de.Name)
	require.ErrorContains(t, err, `spec.awsSubnetID: is a field of Calico's IPPool spec (pools backed by an AWS subnet) that carve does not support`)
}
