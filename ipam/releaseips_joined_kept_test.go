package ipam_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestJoinedKeptBlockDeletedReported: with a cooldown, h's blocks
// without affinity are kept while their addresses cool; but when the v4
// pool is deleted just as the joined commit is made, keptStands deletes
// the v4 blocks after the commit. The blocks the call deleted must be
// listed in DeletedBlocks, as they are when the addresses are in one
// block (releaseFromBlock lists a block keptStands deleted).
func TestJoinedKeptBlockDeletedReported(t *testing.T) {
	for _, joined := range []bool{false, true} {
		t.Run(fmt.Sprintf("joined=%t", joined), func(t *testing.T) {
			ctx := t.Context()
			ms, other, rels, all := joinedReleaseSetup(t)
			cfg := ipam.DefaultConfig()
			cfg.ReleaseCooldown = time.Hour
			require.NoError(t, other.SetConfig(ctx, cfg))
			_, err := other.ReleaseHostAffinities(ctx, "n1", false)
			require.NoError(t, err)
			hs := &commitHookStore{Store: ms, hook: func([]ipam.Write) {}}
			a, err := ipam.New(hs, ipam.Options{})
			require.NoError(t, err)
			_, err = a.Pools(ctx) // load the view with the pool
			require.NoError(t, err)
			call := rels
			if !joined {
				// Two addresses in the first v4 block only.
				call = nil
				for i, x := range all {
					if x.Block == all[0].Block {
						call = append(call, rels[i])
					}
				}
			}
			deleted := false
			hs.hook = func([]ipam.Write) {
				if !deleted {
					deleted = true
					require.NoError(t, other.DeletePool(ctx, "v4"))
				}
			}
			got, err := a.ReleaseIPs(ctx, call...)
			require.NoError(t, err)
			require.Len(t, got.Released, len(call))
			var gone []netip.Prefix
			for _, x := range all {
				if x.Addr.Is4() && !slices.Contains(gone, x.Block) {
					if _, err := other.Block(ctx, x.Block); errors.Is(err, ipam.ErrNotFound) {
						if slices.ContainsFunc(call, func(r ipam.Release) bool { return x.Block.Contains(r.Addr) }) {
							gone = append(gone, x.Block)
						}
					}
				}
			}
			require.True(t, deleted)
			require.NotEmpty(t, gone, "keptStands deleted the v4 blocks")
			require.ElementsMatch(t, gone, got.DeletedBlocks, "the blocks this call deleted")
		})
	}
}
