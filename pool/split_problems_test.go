package pool_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/pool"
)

// Split documents that the problems with the parts come "all at once": a
// bad number of parts, a name given twice and an invalid name. With a
// number of parts that is not a power of two, only that was reported, and
// the names were not looked at.
func TestSplitReportsEveryProblemAtOnce(t *testing.T) {
	p := pool.Pool{Name: "default", CIDR: netip.MustParsePrefix("10.0.0.0/16")}
	_, err := p.Split("x", "x", "Y")
	require.ErrorIs(t, err, pool.ErrSplit)
	require.ErrorContains(t, err, "cannot be split into 3 pools")
	require.ErrorContains(t, err, `name "x" is given to parts 0 and 1`)
	require.ErrorIs(t, err, pool.ErrName)
	require.ErrorContains(t, err, `name "Y" is not a DNS subdomain`)
}
