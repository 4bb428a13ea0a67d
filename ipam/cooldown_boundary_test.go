package ipam_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestCooldownBoundary: an address released exactly ReleaseCooldown ago
// still cools, for AssignIP as for Utilization and AutoAssign: one address,
// one answer at one instant. (Found by a review: AssignIP took it.)
func TestCooldownBoundary(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/28", 28))
	e.cooldown(time.Minute)
	x := e.mustAssign4("node-1", "h", 1)[0]
	_, err := e.a.ReleaseIPs(e.ctx, ipam.Release{Addr: x.Addr})
	require.NoError(t, err)
	e.clock.Advance(time.Minute)

	cooling := e.utilization()[0].Cooling
	_, err = e.a.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: x.Addr, Handle: "h2", Node: "node-1"})
	assignable := err == nil
	require.Equal(t, cooling == 0, assignable,
		"Utilization counts %d cooling, AssignIP without IgnoreCooldown: %v", cooling, err)
}
