package pool_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/pool"
)

func TestDecodeManifestHintsAtYAML(t *testing.T) {
	_, err := pool.DecodeManifest([]byte("apiVersion: projectcalico.org/v3\nkind: IPPool\n"))
	require.ErrorContains(t, err, "looks like YAML")
	_, err = pool.DecodeManifest([]byte(`{"apiVersion": `))
	require.Error(t, err)
	require.NotContains(t, err.Error(), "YAML")
}

func TestSelectByCIDR(t *testing.T) {
	s, err := pool.NewSet(pool.Pool{Name: "a", CIDR: netip.MustParsePrefix("10.0.0.0/16")}, pool.Pool{Name: "b", CIDR: netip.MustParsePrefix("10.1.0.0/16")})
	require.NoError(t, err)
	got, err := s.Select(pool.Request{Family: pool.IPv4, Pools: []string{"10.1.0.0/16", "a"}})
	require.NoError(t, err)
	require.Equal(t, "b", got[0].Name)
	require.Equal(t, "a", got[1].Name)
	_, err = s.Select(pool.Request{Family: pool.IPv4, Pools: []string{"10.1.0.0/24"}})
	require.ErrorIs(t, err, pool.ErrNoPool, "a CIDR inside a pool is not the pool")
}
