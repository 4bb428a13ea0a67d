package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

// committerOnlyStore is a memstore seen as a store with Committer and
// without BlockKeeper (as etcd is), whose commits go through hook first.
type committerOnlyStore struct {
	ipam.Store
	s    *memstore.Store
	hook func(writes []ipam.Write)
}

func (s *committerOnlyStore) Commit(ctx context.Context, writes []ipam.Write, revs []ipam.Revision) error {
	s.hook(writes)
	return s.s.Commit(ctx, writes, revs)
}

// TestJoinedReleaseRefusedRepeatedly: every joined commit of a
// release by handle is refused at the handle's record, up to k times,
// because another allocator assigns under the handle in a fresh block
// just before it: the record grows past what one commit takes, or the
// retries run out. On a BlockKeeper store and on one with only Committer
// (with the handle memo of the releasing allocator), the release returns
// only addresses it freed and at least those the handle held when it
// started, lowers every count it released (Check clean), and what the
// handle still holds, if anything, is exactly what it did not return. With
// enough retries, the record ends up naming more blocks than a commit
// takes, and the release goes block by block.
func TestJoinedReleaseRefusedRepeatedly(t *testing.T) {
	pools := []pool.Pool{
		{Name: "v4", CIDR: netip.MustParsePrefix("10.0.0.0/24"), BlockSize: 30},
		{Name: "v6", CIDR: netip.MustParsePrefix("fd00::/120"), BlockSize: 126},
	}
	for _, keeper := range []bool{true, false} {
		for _, c := range []struct{ k, retries int }{{1, 3}, {2, 3}, {3, 3}, {6, 3}, {6, 0}} {
			k := c.k
			t.Run(fmt.Sprintf("keeper=%t/refusals=%d/retries=%d", keeper, k, c.retries), func(t *testing.T) {
				ctx := t.Context()
				s := memstore.New()
				setup, err := ipam.New(s, ipam.Options{})
				require.NoError(t, err)
				require.NoError(t, setup.SetConfig(ctx, ipam.Config{AutoAllocateBlocks: true}))
				for _, p := range pools {
					require.NoError(t, setup.CreatePool(ctx, p))
				}
				other, err := ipam.New(s, ipam.Options{})
				require.NoError(t, err)
				refusals := 0
				armed := false
				hook := func(writes []ipam.Write) {
					if !armed || refusals >= k {
						return
					}
					for _, w := range writes {
						if w.Kind == ipam.KindHandle && w.Key == "h" && len(writes) > 2 {
							refusals++
							_, err := other.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: fmt.Sprint("n", 10+refusals)})
							require.NoError(t, err)
							return
						}
					}
				}
				var st ipam.Store
				if keeper {
					st = &commitHookStore{Store: s, hook: hook}
				} else {
					st = &committerOnlyStore{Store: s, s: s, hook: hook}
				}
				a, err := ipam.New(st, ipam.Options{MaxRetries: c.retries})
				require.NoError(t, err)
				res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "h", Node: "n1"})
				require.NoError(t, err)
				var before []netip.Addr
				for _, x := range slices.Concat(res.IPv4, res.IPv6) {
					before = append(before, x.Addr)
				}
				armed = true
				got, err := a.ReleaseByHandle(ctx, "h")
				require.NoError(t, err)
				require.Positive(t, refusals)
				require.Subset(t, got, before, "what h held at the start is released")
				checker := checkedClean(t, s)
				for _, x := range got {
					_, err := checker.Owner(ctx, x)
					require.Error(t, err, "%s returned as released but still assigned", x)
				}
				held, err := checker.IPsByHandle(ctx, "h")
				if err != nil {
					require.ErrorIs(t, err, ipam.ErrHandleNotFound)
				}
				require.Len(t, slices.Concat(got, held), 2+refusals, "every address of h is returned or still held: got %v, held %v", got, held)
				for _, x := range held {
					require.NotContains(t, got, x)
				}
				if len(held) > 0 {
					// What is left is released by a second call.
					again, err := a.ReleaseByHandle(ctx, "h")
					require.NoError(t, err)
					require.ElementsMatch(t, held, again)
					checkedClean(t, s)
				}
			})
		}
	}
}
