package ipam_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestReclaimAgeBoundary: an empty block of another node is taken over
// once it was claimed ReclaimAge ago (the default minute) or more, as
// Options.ReclaimAge says, and not a moment before.
func TestReclaimAgeBoundary(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/28", 28)) // one block
	cfg := ipam.DefaultConfig()
	cfg.StrictAffinity = true // no borrowing: only a take-over serves node-2
	e.config(cfg)
	got := e.mustAssign4("node-1", "h1", 1)
	_, err := e.a.ReleaseByHandle(e.ctx, "h1")
	require.NoError(t, err)

	e.clock.Advance(time.Minute - time.Nanosecond)
	_, err = e.assign4("node-2", "h2", 1)
	require.ErrorIs(t, err, ipam.ErrNoSpace, "claimed less than ReclaimAge ago: kept")
	require.Equal(t, []netip.Prefix{got[0].Block}, e.affine("node-1"))

	e.clock.Advance(time.Nanosecond)
	res, err := e.assign4("node-2", "h2", 1)
	require.NoError(t, err, "claimed exactly ReclaimAge ago: taken over")
	require.Equal(t, got[0].Block, res.IPv4[0].Block)
	require.Empty(t, e.affine("node-1"))
	e.requireConsistent()
}
