package etcdstore_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
	"github.com/carve-ipam/carve/pool"
)

// TestMemoSharedHandles runs several allocators, each on its own
// client and store (as separate processes), over a few shared handles and
// nodes. Operations on one handle are serialized by the test (so what the
// handle holds is known exactly at each release), but each is made by a
// random allocator, so every allocator's handle memo goes stale over and
// over; handles and blocks are shared, so operations on different handles
// race. Every ReleaseByHandle must return exactly what the handle holds.
func TestMemoSharedHandles(t *testing.T) {
	_, as, _ := revEAllocators(t, 3, etcdstore.Options{})
	ctx := t.Context()
	for _, p := range []pool.Pool{
		{Name: "v4", CIDR: netip.MustParsePrefix("10.7.0.0/22"), BlockSize: 29},
		{Name: "v6", CIDR: netip.MustParsePrefix("fd00:7::/112"), BlockSize: 125},
	} {
		if err := as[0].CreatePool(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	const handles, workers, opsPer = 8, 6, 60
	var mu [handles]sync.Mutex
	held := make([][]netip.Addr, handles)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range opsPer {
				hi := r.IntN(handles)
				h := fmt.Sprintf("pod-%d", hi)
				a := as[r.IntN(len(as))]
				node := fmt.Sprintf("n%d", r.IntN(3))
				mu[hi].Lock()
				var err error
				switch op := r.IntN(10); {
				case op < 5:
					args := ipam.AutoAssignArgs{Num4: 1, Handle: h, Node: node}
					if r.IntN(2) == 0 {
						args.Num6 = 1
					}
					var res ipam.AutoAssignResult
					res, err = a.AutoAssign(ctx, args)
					if err == nil {
						for _, x := range res.IPv4 {
							held[hi] = append(held[hi], x.Addr)
						}
						for _, x := range res.IPv6 {
							held[hi] = append(held[hi], x.Addr)
						}
					} else {
						err = fmt.Errorf("worker %d op %d: AutoAssign %s: %w", w, i, h, err)
					}
				case op < 7 && len(held[hi]) > 0:
					j := r.IntN(len(held[hi]))
					addr := held[hi][j]
					var rr ipam.ReleaseResult
					rr, err = a.ReleaseIPs(ctx, ipam.Release{Addr: addr, Handle: h})
					if err == nil && !slices.Equal(rr.Released, []netip.Addr{addr}) {
						err = fmt.Errorf("worker %d op %d: ReleaseIPs %s of %s released %v", w, i, addr, h, rr.Released)
					} else if err != nil {
						err = fmt.Errorf("worker %d op %d: ReleaseIPs %s of %s: %w", w, i, addr, h, err)
					}
					held[hi] = slices.Delete(held[hi], j, j+1)
				default:
					var got []netip.Addr
					got, err = a.ReleaseByHandle(ctx, h)
					want := revESorted(held[hi])
					if len(want) == 0 {
						if !errors.Is(err, ipam.ErrHandleNotFound) {
							err = fmt.Errorf("worker %d op %d: ReleaseByHandle %s holding nothing = %v, %v; want ErrHandleNotFound", w, i, h, got, err)
						} else {
							err = nil
						}
					} else if err != nil || !slices.Equal(revESorted(got), want) {
						err = fmt.Errorf("worker %d op %d: ReleaseByHandle %s = %v, %v; the handle holds %v", w, i, h, got, err, want)
					}
					held[hi] = nil
				}
				mu[hi].Unlock()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// What each handle still holds is what the store says it holds.
	for hi := range handles {
		h := fmt.Sprintf("pod-%d", hi)
		got, err := as[hi%len(as)].IPsByHandle(ctx, h)
		if len(held[hi]) == 0 {
			if !errors.Is(err, ipam.ErrHandleNotFound) {
				t.Errorf("IPsByHandle %s holding nothing = %v, %v", h, got, err)
			}
			continue
		}
		if err != nil || !slices.Equal(revESorted(got), revESorted(held[hi])) {
			t.Errorf("IPsByHandle %s = %v, %v; want %v", h, got, err, revESorted(held[hi]))
		}
	}
	revECheckClean(t, ctx, as[0], "after shared-handle churn")
}
