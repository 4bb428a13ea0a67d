package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

// TestRefusedJoinedRelease: another allocator changes one of the records
// of a joined release by handle of a handle in three blocks (its record,
// or one of its blocks) just before the commit, which the store refuses
// at that write. The release must be tried again from fresh reads (block
// by block once the record names too many blocks) and end as if nothing
// had come between, leaving the store clean: with the record changed, it
// releases what the record names then; with the record gone (another
// release got there first), it finds nothing.
func TestRefusedJoinedRelease(t *testing.T) {
	pools := []pool.Pool{
		{Name: "v4", CIDR: netip.MustParsePrefix("10.0.0.0/27"), BlockSize: 30},
		{Name: "v6", CIDR: netip.MustParsePrefix("fd00::/124"), BlockSize: 126},
	}
	for _, target := range []string{"handle", "handle in 8 blocks", "handle gone", "block 0", "block 1", "block 2"} {
		for _, cooldown := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/cooldown=%t", target, cooldown), func(t *testing.T) {
				s := memstore.New()
				setup, err := ipam.New(s, ipam.Options{})
				require.NoError(t, err)
				cfg := ipam.Config{AutoAllocateBlocks: true}
				if cooldown {
					cfg.ReleaseCooldown = 1e9
				}
				require.NoError(t, setup.SetConfig(t.Context(), cfg))
				for _, p := range pools {
					require.NoError(t, setup.CreatePool(t.Context(), p))
				}
				// h: three IPv4 addresses (a /30 block gives four: the
				// node's first block and a second) and one IPv6.
				_, err = setup.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: 3, Handle: "f", Node: "n1"})
				require.NoError(t, err)
				res, err := setup.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: 3, Num6: 1, Handle: "h", Node: "n1"})
				require.NoError(t, err)
				var want []netip.Addr
				blocks := map[netip.Prefix]bool{}
				for _, x := range slices.Concat(res.IPv4, res.IPv6) {
					want = append(want, x.Addr)
					blocks[x.Block] = true
				}
				require.Len(t, blocks, 3, "h in three blocks: %v", res)
				sorted := slices.SortedFunc(func(yield func(netip.Prefix) bool) {
					for b := range blocks {
						if !yield(b) {
							return
						}
					}
				}, func(a, b netip.Prefix) int {
					if c := a.Addr().Compare(b.Addr()); c != 0 {
						return c
					}
					return a.Bits() - b.Bits()
				})
				other, err := ipam.New(s, ipam.Options{})
				require.NoError(t, err)
				interfere := func(ctx context.Context) error {
					switch target {
					case "handle":
						// The record changes: another address of h, in a
						// fresh block of n2.
						_, err := other.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "n2"})
						return err
					case "handle in 8 blocks":
						// Five more blocks: more than one commit takes.
						for _, n := range []string{"n2", "n3", "n4", "n5", "n6"} {
							if _, err := other.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: n}); err != nil {
								return err
							}
						}
						return nil
					case "handle gone":
						_, err := other.ReleaseByHandle(ctx, "h")
						return err
					}
					var i int
					fmt.Sscanf(target, "block %d", &i)
					blk := sorted[i]
					if i == 0 {
						// Full: f's addresses leave it.
						_, err := other.ReleaseByHandle(ctx, "f")
						return err
					}
					// An address of another handle in that block.
					for a := blk.Addr(); blk.Contains(a); a = a.Next() {
						if _, err := other.AssignIP(ctx, ipam.AssignIPArgs{Addr: a, Handle: "x", Node: "n1"}); err == nil {
							return nil
						}
					}
					return fmt.Errorf("no free address in %s", blk)
				}
				var commits, refused int
				hs := &commitHookStore{Store: s}
				hs.hook = func(writes []ipam.Write) {
					commits++
					if commits == 1 {
						require.Len(t, writes, 4, "three blocks and the record: %v", writes)
						require.NoError(t, interfere(t.Context()))
						refused++
					}
				}
				a, err := ipam.New(hs, ipam.Options{})
				require.NoError(t, err)
				got, err := a.ReleaseByHandle(t.Context(), "h")
				require.Equal(t, 1, refused)
				if target == "handle gone" {
					require.ErrorIs(t, err, ipam.ErrHandleNotFound)
					require.NotContains(t, err.Error(), "counts", "the record is gone: %v", err)
					require.Empty(t, got)
				} else {
					require.NoError(t, err)
					require.Subset(t, got, want)
				}
				checker := checkedClean(t, s)
				held, err := checker.IPsByHandle(t.Context(), "h")
				// The retry reads the record again and releases every
				// address it names: the other request's too, as the memo
				// path and a store without BlockKeeper do.
				require.ErrorIs(t, err, ipam.ErrHandleNotFound, "still held: %v", held)
				switch target {
				case "handle":
					require.Len(t, got, len(want)+1, "the other request's address is released too")
				case "handle in 8 blocks":
					require.Len(t, got, len(want)+5, "the other request's addresses are released too")
				case "handle gone":
				default:
					require.ElementsMatch(t, want, got)
				}
			})
		}
	}
}

// lostCommitStore is a memstore (a BlockKeeper) whose next commit of n
// writes, once armed, is made and then reported failed: a lost reply.
type lostCommitStore struct {
	*memstore.Store
	n    int
	lost int
}

func (s *lostCommitStore) Commit(ctx context.Context, writes []ipam.Write, revs []ipam.Revision) error {
	err := s.Store.Commit(ctx, writes, revs)
	if err == nil && s.n != 0 && len(writes) == s.n {
		s.n = 0
		s.lost++
		return errors.New("lost reply")
	}
	return err
}

// TestLostReplyOfJoinedReleaseThenReuse: the reply of the commit of a
// release by handle of a handle in two or three blocks is lost, but the
// commit landed, and the BlockKeeper store keeps the blocks the commit
// gave it. The same allocator then goes on assigning in those blocks: no
// entry may build its next version in a block the store kept, and the
// store must check clean.
func TestLostReplyOfJoinedReleaseThenReuse(t *testing.T) {
	pools := []pool.Pool{
		{Name: "v4", CIDR: netip.MustParsePrefix("10.0.0.0/24"), BlockSize: 30},
		{Name: "v6", CIDR: netip.MustParsePrefix("fd00::/120"), BlockSize: 126},
	}
	for _, num4 := range []int{1, 3} {
		t.Run(fmt.Sprintf("num4=%d", num4), func(t *testing.T) {
			s := &lostCommitStore{Store: memstore.New()}
			a, err := ipam.New(s, ipam.Options{})
			require.NoError(t, err)
			for _, p := range pools {
				require.NoError(t, a.CreatePool(t.Context(), p))
			}
			_, err = a.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "w", Node: "n1"})
			require.NoError(t, err)
			res, err := a.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: num4, Num6: 1, Handle: "h", Node: "n1"})
			require.NoError(t, err)
			blocks := map[netip.Prefix]bool{}
			for _, x := range slices.Concat(res.IPv4, res.IPv6) {
				blocks[x.Block] = true
			}
			s.n = len(blocks) + 1
			_, err = a.ReleaseByHandle(t.Context(), "h")
			require.Error(t, err)
			require.Equal(t, 1, s.lost, "the joined commit's reply was lost")
			// The same allocator, its cache after the lost reply.
			for i := range 6 {
				_, err := a.AutoAssign(t.Context(), ipam.AutoAssignArgs{Num4: num4, Num6: 1, Handle: fmt.Sprint("p", i), Node: "n1"})
				require.NoError(t, err)
				if i%2 == 0 {
					_, err = a.ReleaseByHandle(t.Context(), fmt.Sprint("p", i))
					require.NoError(t, err)
				}
			}
			_, err = a.ReleaseByHandle(t.Context(), "h")
			require.ErrorIs(t, err, ipam.ErrHandleNotFound, "the lost commit landed")
			checker := checkedClean(t, s.Store)
			for i := 1; i < 6; i += 2 {
				got, err := checker.IPsByHandle(t.Context(), fmt.Sprint("p", i))
				require.NoError(t, err)
				require.Len(t, got, num4+1)
			}
			got, err := checker.IPsByHandle(t.Context(), "w")
			require.NoError(t, err)
			require.Len(t, got, 2)
		})
	}
}
