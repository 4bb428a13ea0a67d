package ipam_test

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// hex4 spells an IPv4 address as block keys do.
func hex4(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("%02x%02x%02x%02x", b[0], b[1], b[2], b[3])
}

// TestAssignIPsUnsettledWrite: AssignIPs of two addresses of the node's
// block. The second address's block write lands but its reply is lost,
// and the read that would settle it fails too, so its outcome is unknown.
// The request fails and gives back the first address and, since its write
// did land, the second: its error says that nothing was assigned, and it
// is so. When giving the second back fails as well, the error must not
// say so: it says the address may stay, under the handle, where
// ReleaseByHandle finds it.
func TestAssignIPsUnsettledWrite(t *testing.T) {
	for _, storeDown := range []bool{false, true} {
		t.Run(fmt.Sprintf("storeDown=%t", storeDown), func(t *testing.T) {
			e := newEnv(t)
			require.NoError(t, e.a.CreatePool(e.ctx, v4pool("v4", "10.0.0.0/24", 28)))
			warm := e.mustAssign4("node-1", "warm", 1)[0]
			a1, a2 := warm.Block.Addr().Next().Next().Next(), warm.Block.Addr().Next().Next().Next().Next()
			require.Equal(t, 28, warm.Block.Bits())
			blockKey := "v4:" + hex4(warm.Block.Addr()) + "/28"
			updates := 0
			lost, down := false, false
			errTimeout := errors.New("reply lost (timeout)")
			s := &scriptStore{Store: e.store,
				before: func(op string, kind ipam.Kind, key string) error {
					if down {
						return errors.New("store down")
					}
					if lost && op == "get" && kind == ipam.KindBlock && key == blockKey {
						lost = false
						down = storeDown // from the rollback's release of a1 on
						return errors.New("read failed (timeout)")
					}
					return nil
				},
				after: func(op string, kind ipam.Kind, key string, err error) error {
					if op == "update" && kind == ipam.KindBlock && key == blockKey && err == nil {
						if updates++; updates == 2 { // the second address's write
							lost = true
							return errTimeout
						}
					}
					return err
				},
			}
			a, err := ipam.New(s, ipam.Options{})
			require.NoError(t, err)
			res, err := a.AssignIPs(e.ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{a1, a2}, Handle: "h", Node: "node-1"})
			require.Error(t, err)
			require.Zero(t, res.Len())
			t.Logf("error: %v", err)
			held, herr := e.a.AssignedByHandle(e.ctx, "h")
			if !storeDown {
				require.ErrorIs(t, herr, ipam.ErrHandleNotFound, "the handle holds %v", held)
				require.Contains(t, err.Error(), "nothing assigned")
				e.requireConsistent()
				return
			}
			require.NoError(t, herr)
			require.NotZero(t, held.Len())
			require.NotContains(t, err.Error(), "nothing assigned", "%s is assigned under the handle", held.IPv4[0].Addr)
			require.Contains(t, err.Error(), "ReleaseByHandle")
			require.Contains(t, err.Error(), a2.String(), "the error names the address whose write's outcome is unknown")
			_, err = e.a.ReleaseByHandle(e.ctx, "h")
			require.NoError(t, err)
			e.requireConsistent()
		})
	}
}
