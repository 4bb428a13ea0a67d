package ipam_test

import (
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestReservationOverClaimedBlock: a reservation covering a whole
// block is made while an AutoAssign is in flight, after its claim created
// that block and before it assigned there. The request then sees the
// reservation (its re-check after the write), gives the address back and
// assigns again. ARCHITECTURE.md: "Either the reservation's write comes
// first and the request sees it, or the address was written first". The
// reservation came first, so the request must end as one made after it:
// with an address of another block (the pool has three more), whatever
// MaxBlocksPerHost (1) and StrictAffinity say, since with the reservation
// in place first the claim would have passed over the reserved block.
func TestReservationOverClaimedBlock(t *testing.T) {
	for _, strict := range []bool{true, false} {
		t.Run(map[bool]string{true: "strict", false: "borrowing allowed"}[strict], func(t *testing.T) {
			e := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
			cfg := ipam.DefaultConfig()
			cfg.MaxBlocksPerHost = 1
			cfg.StrictAffinity = strict
			e.config(cfg)
			var once sync.Once
			var reserved netip.Prefix
			hs := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
				if kind != ipam.KindBlock || op != "update" {
					return
				}
				once.Do(func() {
					u, err := e.a.Utilization(e.ctx)
					require.NoError(t, err)
					require.Len(t, u[0].Blocks, 1, "the claim made one block")
					reserved = u[0].Blocks[0].Prefix
					require.NoError(t, e.a.CreateReservation(e.ctx, ipam.Reservation{Name: "late", CIDRs: []netip.Prefix{reserved}}))
				})
			}}
			s := struct {
				*hookStore
				ipam.Generations
			}{hs, e.store}
			a, err := ipam.New(s, ipam.Options{Now: e.clock.Now})
			require.NoError(t, err)
			res, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-1"})
			require.True(t, reserved.IsValid(), "the hook ran")
			require.NoError(t, err, "the pool has three unreserved blocks, and the reservation came before the address was written")
			require.Len(t, res.IPv4, 1)
			require.False(t, reserved.Contains(res.IPv4[0].Addr))

			// The same request, with the reservation made before it, on a
			// fresh store: it succeeds.
			e2 := newEnv(t, v4pool("p", "10.0.0.0/24", 26))
			e2.config(cfg)
			require.NoError(t, e2.a.CreateReservation(e2.ctx, ipam.Reservation{Name: "late", CIDRs: []netip.Prefix{reserved}}))
			_, err = e2.a.AutoAssign(e2.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-1"})
			require.NoError(t, err, "with the reservation made first")
		})
	}
}
