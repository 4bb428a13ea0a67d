package ipam_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

// TestSplitUnderLoad: nodes assign, release and claim while the
// pool is split, a part is given a nodeSelector no node matches, split
// again, and a part disabled and deleted. No address may be held twice,
// every address handed out stays its handle's, and the store checks
// clean (but for the deleted part's leftovers) after Repair.
func TestSplitUnderLoad(t *testing.T) {
	for round := range 3 {
		t.Run(fmt.Sprint(round), func(t *testing.T) { splitLoad(t, round) })
	}
}

func splitLoad(t *testing.T, round int) {
	ctx := t.Context()
	ms := memstore.New()
	newA := func() *ipam.Allocator {
		a, err := ipam.New(ms, ipam.Options{})
		require.NoError(t, err)
		return a
	}
	admin := newA()
	require.NoError(t, admin.CreatePool(ctx, v4pool("p", "10.0.0.0/22", 28)))
	var mu sync.Mutex
	held := map[netip.Addr]string{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errc := make(chan error, 100)
	report := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := newA()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(round)))
			node := fmt.Sprintf("node-%d", w)
			var mine []string
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				switch op := rng.IntN(10); {
				case op < 6 || len(mine) == 0:
					h := fmt.Sprintf("h-%d-%d", w, k)
					res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1 + rng.IntN(20), Handle: h, Node: node})
					if err != nil {
						if !errors.Is(err, ipam.ErrNoSpace) && !errors.Is(err, ipam.ErrNotInPool) {
							report(fmt.Errorf("assign %s: %w", h, err))
						}
						continue
					}
					mu.Lock()
					for _, x := range res.IPv4 {
						// (A release in another worker may not have
						// dropped it from held yet: the final check decides.)
						held[x.Addr] = h
					}
					mu.Unlock()
					mine = append(mine, h)
				case op < 9:
					i := rng.IntN(len(mine))
					h := mine[i]
					mine = append(mine[:i], mine[i+1:]...)
					res, err := a.ReleaseByHandle(ctx, h)
					if err != nil {
						report(fmt.Errorf("release %s: %w", h, err))
					}
					mu.Lock()
					for _, addr := range res {
						if held[addr] == h {
							delete(held, addr)
						}
					}
					mu.Unlock()
				default:
					blk := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(rng.IntN(4)), byte(16 * rng.IntN(16))}), 28)
					_, err := a.ClaimAffinity(ctx, node, blk)
					if err != nil && !errors.Is(err, ipam.ErrAffinityConflict) && !errors.Is(err, ipam.ErrNotInPool) &&
						!errors.Is(err, ipam.ErrPoolNotFound) && !errors.Is(err, ipam.ErrInvalid) {
						report(fmt.Errorf("claim %s: %w", blk, err))
					}
				}
			}
		}()
	}
	loadAdmin(t, admin)
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	r, err := admin.Check(ctx)
	require.NoError(t, err)
	for _, p := range r.Problems {
		if !p.Repairable {
			t.Errorf("not repairable: %v", p)
		}
	}
	_, after, err := admin.Repair(ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	require.True(t, after.Clean(), "%v", after.Problems)
	for addr, h := range held {
		own, err := admin.Owner(ctx, addr)
		require.NoError(t, err, "%s of %s", addr, h)
		require.Equal(t, h, own.Handle)
	}
	t.Logf("%d held, %d leftovers, problems before repair: %v", len(held), len(after.Leftovers), r.Problems)
}

func loadAdmin(t *testing.T, admin *ipam.Allocator) {
	ctx := t.Context()
	step := func(f func() error) {
		time.Sleep(time.Duration(20+rand.IntN(30)) * time.Millisecond)
		if err := f(); err != nil {
			t.Errorf("admin: %v", err)
		}
	}
	step(func() error { _, err := admin.SplitPool(ctx, "p", "p", "q"); return err })
	step(func() error {
		_, err := admin.ModifyPool(ctx, "q", func(p *pool.Pool) error { p.NodeSelector = `rack == "none"`; return nil })
		return err
	})
	step(func() error { _, err := admin.SplitPool(ctx, "p", "r", "p"); return err })
	step(func() error { return admin.DeletePool(ctx, "r") })
	step(func() error { _, err := admin.SplitPool(ctx, "q", "q", "s"); return err })
	step(func() error { return admin.DeletePool(ctx, "s") })
}
