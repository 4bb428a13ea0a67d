package ipam_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestCollectorReleasesLargeHandleInLinearTime: a Collector pass that
// releases a leaked handle of many addresses (one AutoAssign may give a
// handle 65536 of a family; a provisioner may hold more under one
// handle) costs about what the pass that read them did, not time
// quadratic in their number. The pass holds the collector's lock
// throughout, and the first version spent seconds matching the released
// addresses against the handle's, one search each.
func TestCollectorReleasesLargeHandleInLinearTime(t *testing.T) {
	if testing.Short() {
		t.Skip("assigns 2^17 addresses")
	}
	e := newEnv(t, v4pool("p", "10.0.0.0/12", 26))
	const n, per = 1 << 17, 1 << 16
	for range n / per {
		_, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: per, Handle: "tenant-a", Node: "node-1"})
		require.NoError(t, err)
	}
	c, err := ipam.NewCollector(e.a, func(context.Context, ipam.Allocation) (bool, error) { return false, nil },
		ipam.CollectorOptions{Grace: time.Minute, KeepEmptyBlocks: true})
	require.NoError(t, err)

	start := time.Now()
	res, err := c.Collect(e.ctx) // reads them all, asks about each: suspects
	require.NoError(t, err)
	read := time.Since(start)
	require.Len(t, res.Suspects, n)

	e.clock.Advance(2 * time.Minute)
	start = time.Now()
	res, err = c.Collect(e.ctx) // reads them again, asks again, releases
	require.NoError(t, err)
	release := time.Since(start)
	require.Len(t, res.Released, n)
	require.Less(t, release, 5*read+time.Second,
		"the pass that released %d addresses of one handle took %v; the pass that only read them %v", n, release, read)
}
