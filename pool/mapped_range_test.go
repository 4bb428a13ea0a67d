package pool_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/pool"
)

// An IPv6 pool that holds the IPv4-mapped range ::ffff:0:0/96 carves
// blocks of IPv4-mapped addresses (::ffff:10.1.2.0/122, ...). The package
// refuses a CIDR written in IPv4-mapped form, and the ipam package unmaps
// every address it is given (ReleaseIPs, AssignIP, Owner), so an address
// handed out from such a block can never be found again: its release
// reports it not allocated, and it leaks (or, unmapped, names an address
// of an IPv4 pool). Overlap detection misses it too: 10.0.0.0/8 and ::/64
// both "hold" ::ffff:10.0.0.1. Such pools must be refused like the
// IPv4-mapped CIDRs they contain.
func TestPoolHoldingIPv4MappedRangeRefused(t *testing.T) {
	for _, c := range []string{"::/64", "::fffe:0:0/95", "::/1", "::/8"} {
		t.Run(c, func(t *testing.T) {
			p := pool.Pool{Name: "six", CIDR: netip.MustParsePrefix(c)}

			// What such a pool carves: a block of IPv4-mapped addresses.
			b, ok := p.BlockFor(netip.MustParseAddr("::ffff:10.0.0.1"))
			require.True(t, ok)
			require.True(t, b.Addr().Is4In6(), "block %s", b)

			err := p.Validate()
			require.ErrorIs(t, err, pool.ErrCIDR, "%s holds the IPv4-mapped range ::ffff:0:0/96", c)
			require.ErrorContains(t, err, c)

			s, err := pool.NewSet(pool.Pool{Name: "four", CIDR: netip.MustParsePrefix("10.0.0.0/8")})
			require.NoError(t, err)
			require.ErrorIs(t, s.Add(p), pool.ErrCIDR)
		})
	}
	// Pools next to the range, and NAT64's well-known prefix, are fine.
	for _, c := range []string{"::fffe:0:0/96", "::1:0:0:0/96", "64:ff9b::/96", "fd00::/48"} {
		p := pool.Pool{Name: "six", CIDR: netip.MustParsePrefix(c)}
		require.NoError(t, p.Validate(), c)
	}
}
