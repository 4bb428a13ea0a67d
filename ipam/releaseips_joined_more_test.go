package ipam_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
)

// joinedReleaseSetup makes a store with a v4 pool of /30 blocks and a v6 pool of
// /126 blocks, and assigns handle "h" five IPv4 addresses (two blocks) and
// one IPv6 address on node n1: the Releases naming h, with their Seqs.
func joinedReleaseSetup(t *testing.T) (*memstore.Store, *ipam.Allocator, []ipam.Release, []ipam.Assigned) {
	t.Helper()
	ctx := t.Context()
	ms := memstore.New()
	setup, err := ipam.New(ms, ipam.Options{})
	require.NoError(t, err)
	require.NoError(t, setup.CreatePool(ctx, v4pool("v4", "10.0.0.0/26", 30)))
	require.NoError(t, setup.CreatePool(ctx, v6pool("v6", "fd00::/120", 126)))
	res, err := setup.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 5, Num6: 1, Handle: "h", Node: "n1"})
	require.NoError(t, err)
	all := slices.Concat(res.IPv4, res.IPv6)
	var rels []ipam.Release
	for _, x := range all {
		rels = append(rels, ipam.Release{Addr: x.Addr, Handle: "h", Seq: x.Seq})
	}
	return ms, setup, rels, all
}

// TestJoinedRetryStatuses: the joined commit is refused at a block
// because another allocator released one of the addresses meanwhile; the
// retry from fresh reads reports that address NotAllocated (not
// Released), releases the others, and leaves the store clean.
func TestJoinedRetryStatuses(t *testing.T) {
	ctx := t.Context()
	ms, other, rels, _ := joinedReleaseSetup(t)
	hs := firstCommitHook(ms, func([]ipam.Write) {
		got, err := other.ReleaseIPs(ctx, rels[0])
		require.NoError(t, err)
		require.Len(t, got.Released, 1)
	})
	a, err := ipam.New(hs, ipam.Options{})
	require.NoError(t, err)
	got, err := a.ReleaseIPs(ctx, rels...)
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{rels[0].Addr}, got.NotAllocated)
	var want []netip.Addr
	for _, r := range rels[1:] {
		want = append(want, r.Addr)
	}
	require.Equal(t, want, got.Released)
	checker := checkedClean(t, ms)
	_, err = checker.IPsByHandle(ctx, "h")
	require.ErrorIs(t, err, ipam.ErrHandleNotFound)
}

// TestJoinedRetrySeqRefused: between the first attempt and the
// commit, another allocator releases an address and assigns it again to
// the same handle (a new Seq). The retry refuses that address with
// ErrSeqMismatch, keeps it assigned and counted, releases the others.
func TestJoinedRetrySeqRefused(t *testing.T) {
	ctx := t.Context()
	ms, other, rels, _ := joinedReleaseSetup(t)
	hs := firstCommitHook(ms, func([]ipam.Write) {
		_, err := other.ReleaseIPs(ctx, rels[1])
		require.NoError(t, err)
		_, err = other.AssignIP(ctx, ipam.AssignIPArgs{Addr: rels[1].Addr, Handle: "h", Node: "n1"})
		require.NoError(t, err)
	})
	a, err := ipam.New(hs, ipam.Options{})
	require.NoError(t, err)
	got, err := a.ReleaseIPs(ctx, rels...)
	require.ErrorIs(t, err, ipam.ErrSeqMismatch)
	var ae *ipam.AddrError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, rels[1].Addr, ae.Addr)
	require.Len(t, got.Released, len(rels)-1)
	require.NotContains(t, got.Released, rels[1].Addr)
	require.Empty(t, got.NotAllocated)
	checker := checkedClean(t, ms)
	held, err := checker.IPsByHandle(ctx, "h")
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{rels[1].Addr}, held)
}

// TestJoinedMixedHandles: Releases naming h, one of them for an
// address another handle holds (refused, stays), one repeated in its
// IPv4-mapped form; and a call naming two handles, which must not join.
func TestJoinedMixedHandles(t *testing.T) {
	ctx := t.Context()
	ms, a, rels, _ := joinedReleaseSetup(t)
	g, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "g", Node: "n1"})
	require.NoError(t, err)
	gAddr := g.IPv4[0].Addr

	// h's first two and its IPv6, g's IPv4 named as h's, a repeat.
	call := []ipam.Release{rels[0], rels[5], {Addr: gAddr, Handle: "h"}, {Addr: netip.AddrFrom16(rels[0].Addr.As16()), Handle: "h", Seq: rels[0].Seq}, rels[4]}
	got, err := a.ReleaseIPs(ctx, call...)
	require.ErrorIs(t, err, ipam.ErrHandleMismatch)
	require.Equal(t, []netip.Addr{rels[0].Addr, rels[5].Addr, rels[4].Addr}, got.Released)
	require.Empty(t, got.NotAllocated)
	checkedClean(t, ms)

	// Two handles in one call: each released and counted down.
	got, err = a.ReleaseIPs(ctx, rels[1], ipam.Release{Addr: g.IPv6[0].Addr, Handle: "g"}, rels[2])
	require.NoError(t, err)
	require.Len(t, got.Released, 3)
	checker := checkedClean(t, ms)
	held, err := checker.IPsByHandle(ctx, "g")
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{gAddr}, held)
	held, err = checker.IPsByHandle(ctx, "h")
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{rels[3].Addr}, held)
}

// TestJoinedDeletedBlocks: h's addresses in blocks without affinity
// (its node's affinity released). Released in one call, the blocks go and
// are listed in DeletedBlocks; with a cooldown they stay, cooling, and are
// not listed.
func TestJoinedDeletedBlocks(t *testing.T) {
	for _, cool := range []bool{false, true} {
		t.Run(fmt.Sprintf("cooldown=%t", cool), func(t *testing.T) {
			ctx := t.Context()
			ms, a, rels, all := joinedReleaseSetup(t)
			if cool {
				cfg := ipam.DefaultConfig()
				cfg.ReleaseCooldown = time.Hour
				require.NoError(t, a.SetConfig(ctx, cfg))
			}
			_, err := a.ReleaseHostAffinities(ctx, "n1", false)
			require.NoError(t, err)
			got, err := a.ReleaseIPs(ctx, rels...)
			require.NoError(t, err)
			require.Len(t, got.Released, len(rels))
			blocks := map[netip.Prefix]bool{}
			for _, x := range all {
				blocks[x.Block] = true
			}
			if cool {
				require.Empty(t, got.DeletedBlocks)
				require.Equal(t, len(blocks), ms.Len(ipam.KindBlock))
			} else {
				require.Len(t, got.DeletedBlocks, len(blocks))
				for _, b := range got.DeletedBlocks {
					require.True(t, blocks[b], "%s", b)
				}
				require.Zero(t, ms.Len(ipam.KindBlock))
			}
			checkedClean(t, ms)
		})
	}
}

// TestJoinedFaults: a fault at every store operation of a joined
// ReleaseIPs (a failure, a lost reply, a crash after the operation).
// What the call lists is certain, the store checks clean right after
// (all of the commit or none of it), and releasing again from a fresh
// allocator settles everything.
func TestJoinedFaults(t *testing.T) {
	for _, keeper := range keepers {
		for _, mode := range []storetest.FaultMode{storetest.FailOnce, storetest.LostReply, storetest.CrashAfter} {
			for k := int64(1); ; k++ {
				ms, _, rels, _ := joinedReleaseSetup(t)
				f := storetest.NewFaultyStore(ms, storetest.Fault{At: k, Mode: mode})
				a, err := ipam.New(faultyView(f, true, keeper), ipam.Options{})
				require.NoError(t, err)
				got, err := a.ReleaseIPs(t.Context(), rels...)
				if err == nil {
					require.Len(t, got.Released, len(rels))
					checkedClean(t, ms)
					break // past the last operation
				}
				name := fmt.Sprintf("keeper=%v %v at %d", keeper, mode, k)
				checker := checkedClean(t, ms)
				for _, addr := range got.Released {
					_, err := checker.Owner(t.Context(), addr)
					require.ErrorIs(t, err, ipam.ErrNotAllocated, "%s: %s listed released", name, addr)
				}
				for _, addr := range got.NotAllocated {
					_, err := checker.Owner(t.Context(), addr)
					require.ErrorIs(t, err, ipam.ErrNotAllocated, "%s: %s listed not allocated", name, addr)
				}
				again, err := checker.ReleaseIPs(t.Context(), rels...)
				require.NoError(t, err, name)
				require.Len(t, slices.Concat(again.Released, again.NotAllocated), len(rels), name)
				checkedClean(t, ms)
				_, err = checker.IPsByHandle(t.Context(), "h")
				require.ErrorIs(t, err, ipam.ErrHandleNotFound, name)
				require.Less(t, k, int64(50))
			}
		}
	}
}

// TestJoinedConcurrent: allocators on one memstore assign
// dual-stack addresses under a few shared handles, release them by
// address (the joined path, with and without Seq), and release the
// handles, all at once. Check is clean at the end.
func TestJoinedConcurrent(t *testing.T) {
	ctx := t.Context()
	ms := memstore.New()
	setup, err := ipam.New(ms, ipam.Options{})
	require.NoError(t, err)
	require.NoError(t, setup.CreatePool(ctx, v4pool("v4", "10.0.0.0/24", 29)))
	require.NoError(t, setup.CreatePool(ctx, v6pool("v6", "fd00::/120", 126)))
	const workers, rounds = 6, 60
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds)
	for w := range workers {
		a, err := ipam.New(ms, ipam.Options{})
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				h := fmt.Sprint("h", (w+r)%3)
				res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1 + r%3, Num6: 1, Handle: h, Node: fmt.Sprint("n", w%2)})
				if err != nil {
					errs <- fmt.Errorf("assign %s: %w", h, err)
					continue
				}
				switch r % 4 {
				case 0, 1:
					var rels []ipam.Release
					for _, x := range slices.Concat(res.IPv4, res.IPv6) {
						rel := ipam.Release{Addr: x.Addr, Handle: h}
						if r%4 == 0 {
							rel.Seq = x.Seq
						}
						rels = append(rels, rel)
					}
					// Another worker may release the shared handle first.
					got, err := a.ReleaseIPs(ctx, rels...)
					if errors.Is(err, ipam.ErrSeqMismatch) || errors.Is(err, ipam.ErrHandleMismatch) {
						continue // released and assigned again meanwhile
					}
					if err != nil || len(got.Released)+len(got.NotAllocated) != len(rels) {
						errs <- fmt.Errorf("release %s %v: %+v, %w", h, rels, got, err)
					}
				case 2:
					if _, err := a.ReleaseByHandle(ctx, h); err != nil && !errors.Is(err, ipam.ErrHandleNotFound) {
						errs <- fmt.Errorf("release handle %s: %w", h, err)
					}
				case 3:
					// Release what the handle holds now, by address.
					held, err := a.AssignedByHandle(ctx, h)
					if err != nil {
						continue
					}
					var rels []ipam.Release
					for _, x := range slices.Concat(held.IPv4, held.IPv6) {
						rels = append(rels, ipam.Release{Addr: x.Addr, Handle: h, Seq: x.Seq})
					}
					if _, err := a.ReleaseIPs(ctx, rels...); err != nil && !errors.Is(err, ipam.ErrSeqMismatch) && !errors.Is(err, ipam.ErrHandleMismatch) {
						errs <- fmt.Errorf("release held %s: %w", h, err)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkedClean(t, ms)
}
