package pool_test

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/pool"
)

// TestUnmarshalKeepsVersion: decoding a spec into a pool replaces its
// spec and leaves what is not spec alone: the name, and the Version read
// from the store, so that an update made from the result stays
// conditional (a zero Version would make it unconditional unnoticed).
func TestUnmarshalKeepsVersion(t *testing.T) {
	p := pool.Pool{Name: "a", Version: 7, CIDR: netip.MustParsePrefix("10.0.0.0/24"), Disabled: true}
	require.NoError(t, json.Unmarshal([]byte(`{"cidr":"10.0.0.0/24","nodeSelector":"rack == \"r1\""}`), &p))
	require.Equal(t, "a", p.Name)
	require.Equal(t, uint64(7), p.Version)
	require.False(t, p.Disabled, "the spec is replaced whole")
	require.Equal(t, `rack == "r1"`, p.NodeSelector)
}
