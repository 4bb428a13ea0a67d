package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
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

// TestClaimMeetsAffinityRelease: between a claim's block write and its
// second write of the node's index record, another allocator assigns an
// address in the new block and ReleaseAffinity releases it, keeping the
// address (requireEmpty false): the block is nobody's now, and the
// release deleted the index record. The claim must not write the record
// again and leave it standing for a block that is not the node's; it
// claims another block, and the store checks clean.
func TestClaimMeetsAffinityRelease(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	other := e.allocator()
	var released netip.Prefix
	s := &scriptStore{Store: e.store,
		after: func(op string, kind ipam.Kind, key string, err error) error {
			if op == "create" && kind == ipam.KindBlock && err == nil && !released.IsValid() {
				blk := v4BlockOfKey(t, key)
				released = blk
				_, aerr := other.AssignIP(e.ctx, ipam.AssignIPArgs{Addr: blk.Addr().Next().Next(), Handle: "x", Node: "n1"})
				require.NoError(t, aerr)
				require.NoError(t, other.ReleaseAffinity(e.ctx, "n1", blk, false))
			}
			return err
		},
	}
	a, err := ipam.New(s, ipam.Options{})
	require.NoError(t, err)
	res, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n1"})
	require.NoError(t, err)
	require.True(t, released.IsValid(), "the release ran")
	require.NotEqual(t, released, res.IPv4[0].Block, "the released block is nobody's")
	e.requireConsistent()
}

// v4BlockOfKey returns the IPv4 block a block record's key ("v4:" and the
// address in hex, "/" and the prefix length) names.
func v4BlockOfKey(t *testing.T, key string) netip.Prefix {
	t.Helper()
	var x uint32
	var bits int
	_, err := fmt.Sscanf(key, "v4:%08x/%d", &x, &bits)
	require.NoError(t, err, "block key %q", key)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)}), bits)
}

// TestIndexPutBackMeetsRelease: ReleaseAffinity of a block that does not
// exist deletes the node's index record for it anyway, then reads the
// block to see whether to put the record back. Here the node claims the
// block just before that read, so the record goes back, and releases it
// again just before the put-back: the put-back must not leave a record
// for a block that is gone.
func TestIndexPutBackMeetsRelease(t *testing.T) {
	e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
	blk := mustPrefix("10.0.0.16/28")
	blockReads := 0
	var claimed, released bool
	s := &scriptStore{Store: e.store,
		before: func(op string, kind ipam.Kind, key string) error {
			switch {
			case op == "get" && kind == ipam.KindBlock:
				if blockReads++; blockReads == 2 { // dropIndex's read of the block
					_, err := e.a.ClaimAffinity(e.ctx, "n1", blk)
					require.NoError(t, err)
					claimed = true
				}
			case op == "create" && kind == ipam.KindAffinity && claimed && !released:
				require.NoError(t, e.a.ReleaseAffinity(e.ctx, "n1", blk, true))
				released = true
			}
			return nil
		},
	}
	r, err := ipam.New(s, ipam.Options{})
	require.NoError(t, err)
	require.NoError(t, r.ReleaseAffinity(e.ctx, "n1", blk, false))
	require.True(t, released, "the node claimed and released the block during the release")
	e.requireConsistent()
}
