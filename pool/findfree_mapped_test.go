package pool_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/pool"
)

// FindFree promises "a CIDR a new pool can take"; inside the IPv4-mapped
// range it offered one that Add refuses.
func TestFindFreeOffersOnlyPoolableCIDRs(t *testing.T) {
	var s pool.Set
	for _, tt := range []struct {
		within string
		bits   int
	}{
		{"::ffff:0:0/96", 104},
		{"::/64", 96},
		{"::/64", 120},
	} {
		c, ok := s.FindFree(netip.MustParsePrefix(tt.within), tt.bits)
		if !ok {
			continue
		}
		p := pool.Pool{Name: "new", CIDR: c, BlockSize: 128}
		require.NoError(t, p.Validate(), "FindFree(%s, %d) = %s", tt.within, tt.bits, c)
	}
	require.False(t, s.Free(netip.MustParsePrefix("::/64")).Contains(netip.MustParseAddr("::ffff:10.0.0.1")),
		"Free leaves out the IPv4-mapped range, which no pool may use")
}
