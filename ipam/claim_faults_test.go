package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

// TestFailedClaimLeavesNothing: a claim's store operation fails in a way
// that ends the request: the context ends just as the claim's index
// record is written (the write lands, the caller hears its context's
// error), or the read of the pools that confirms the claim fails once.
// AutoAssign fails, and leaves nothing behind, as it documents: no block,
// no index record, nothing for Repair.
func TestFailedClaimLeavesNothing(t *testing.T) {
	for _, use := range []pool.Use{pool.UseWorkload, pool.UseLoadBalancer} {
		for _, fault := range []string{"context ends at the index write", "pools unreadable after the block write"} {
			t.Run(fmt.Sprintf("%s/%s", use, fault), func(t *testing.T) {
				e := newEnv(t)
				args := ipam.AutoAssignArgs{Num4: 1, Handle: "h", Use: use}
				if use == pool.UseLoadBalancer {
					require.NoError(t, e.a.CreatePool(e.ctx, pool.Pool{Name: "lb", CIDR: mustPrefix("192.168.100.0/26"), BlockSize: 28, AllowedUses: []pool.Use{pool.UseLoadBalancer}}))
				} else {
					require.NoError(t, e.a.CreatePool(e.ctx, v4pool("pods", "10.244.0.0/24", 28)))
					args.Node = "n1"
				}
				ctx, cancel := context.WithCancel(e.ctx)
				defer cancel()
				blockMade, struck := false, false
				s := &scriptStore{Store: e.store,
					before: func(op string, kind ipam.Kind, key string) error {
						if fault != "context ends at the index write" && op == "get" && kind == ipam.KindPool && blockMade && !struck {
							struck = true
							return errors.New("pools: read failed (timeout)")
						}
						return nil
					},
					after: func(op string, kind ipam.Kind, key string, err error) error {
						if op == "create" && kind == ipam.KindBlock && err == nil {
							blockMade = true
						}
						if fault == "context ends at the index write" && op == "create" && kind == ipam.KindAffinity && err == nil && !struck {
							struck = true
							cancel()
							return ctx.Err()
						}
						return err
					},
				}
				a, err := ipam.New(s, ipam.Options{})
				require.NoError(t, err)
				_, err = a.AutoAssign(ctx, args)
				require.True(t, struck, "the fault struck")
				require.Error(t, err)
				if fault == "context ends at the index write" {
					require.ErrorIs(t, err, context.Canceled)
				}
				for _, k := range []ipam.Kind{ipam.KindBlock, ipam.KindAffinity, ipam.KindHandle} {
					recs, err := e.store.List(e.ctx, k, ipam.KeyRange{})
					require.NoError(t, err)
					require.Empty(t, recs, "%s records left by the failed request", k)
				}
				e.requireConsistent()
			})
		}
	}
}
