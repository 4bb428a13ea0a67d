package ipam_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/pool"
)

// TestHandleMemoConcurrent: allocators on a store without BlockKeeper
// (the memo on) assign and release a few shared handles from many
// goroutines. A release by handle holds the handle alone (no assignment
// to it runs meanwhile), so it must return exactly what the handle
// holds; at the end the store must check clean with nothing left.
func TestHandleMemoConcurrent(t *testing.T) {
	e := newEnv(t, v4pool("p4", "10.0.0.0/22", 28), pool.Pool{Name: "p6", CIDR: mustPrefix("fd00::/112"), BlockSize: 124})
	allocs := []*ipam.Allocator{e.remote(), e.remote(), e.remote()}
	const nh = 12
	var locks [nh]sync.RWMutex
	var mu sync.Mutex
	held := map[string]map[netip.Addr]bool{}
	for i := range nh {
		held[fmt.Sprintf("h%d", i)] = map[netip.Addr]bool{}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for range 300 {
				i := r.IntN(nh)
				h := fmt.Sprintf("h%d", i)
				a := allocs[r.IntN(len(allocs))]
				node := fmt.Sprintf("n%d", r.IntN(3))
				switch r.IntN(3) {
				case 0, 1:
					locks[i].RLock()
					res, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: r.IntN(3), Num6: r.IntN(2), Handle: h, Node: node})
					if err == nil {
						mu.Lock()
						for _, x := range append(res.IPv4, res.IPv6...) {
							held[h][x.Addr] = true
						}
						mu.Unlock()
					}
					locks[i].RUnlock()
				case 2:
					locks[i].Lock()
					got, err := a.ReleaseByHandle(e.ctx, h)
					mu.Lock()
					want := held[h]
					held[h] = map[netip.Addr]bool{}
					mu.Unlock()
					if len(want) == 0 {
						if err == nil {
							errs <- fmt.Errorf("release of empty %s gave %v", h, got)
						}
					} else if err != nil {
						errs <- fmt.Errorf("release %s: %v", h, err)
					} else if len(got) != len(want) {
						errs <- fmt.Errorf("release %s: got %v, want %v", h, got, want)
					} else {
						for _, x := range got {
							if !want[x] {
								errs <- fmt.Errorf("release %s: got %v, want %v", h, got, want)
								break
							}
						}
					}
					locks[i].Unlock()
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	e.requireConsistent()
	for h, s := range held {
		if len(s) > 0 {
			got, err := allocs[0].ReleaseByHandle(e.ctx, h)
			require.NoError(t, err)
			require.Len(t, got, len(s))
		}
	}
	e.requireConsistent()
	e.requireEmptyHandles()
}
