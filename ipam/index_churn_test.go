package ipam_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carve-ipam/carve/ipam"
)

// TestIndexChurn: allocators serving the same nodes (memo on and
// off) assign, release, claim and release affinities (keeping addresses
// or not) and toggle the pool, all at once. Once they are done the store
// must check clean: no index record for a block that is not its
// owner's, no affine block missing from the index.
func TestIndexChurn(t *testing.T) {
	var replaced atomic.Int64
	defer func() { t.Logf("pools replaced: %d", replaced.Load()) }()
	for _, replace := range []bool{false, true} {
		for round := range 6 {
			e := newEnv(t, v4pool("small", "10.10.0.0/26", 29))
			nodes := []string{"node-a", "node-b"}
			var allocs []*ipam.Allocator
			for i := range 4 {
				if i%2 == 0 {
					allocs = append(allocs, e.remote())
				} else {
					a, err := ipam.New(e.store, ipam.Options{ReclaimAge: time.Nanosecond})
					if err != nil {
						t.Fatal(err)
					}
					allocs = append(allocs, a)
				}
			}
			var wg sync.WaitGroup
			for w, a := range allocs {
				rng := rand.New(rand.NewPCG(uint64(round), uint64(w)))
				wg.Add(1)
				go func() {
					defer wg.Done()
					var held []string
					for i := range 120 {
						node := nodes[rng.IntN(len(nodes))]
						blk := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 10, 0, byte(8 * rng.IntN(8))}), 29)
						var err error
						switch op := rng.IntN(10); {
						case op < 3:
							h := fmt.Sprintf("w%d-%d", w, i)
							_, err = a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: h, Node: node})
							if err == nil {
								held = append(held, h)
							}
						case op < 5 && len(held) > 0:
							k := rng.IntN(len(held))
							_, err = a.ReleaseByHandle(e.ctx, held[k])
							held = append(held[:k], held[k+1:]...)
						case op == 5:
							_, err = a.ClaimAffinity(e.ctx, node, blk)
						case op == 6:
							err = a.ReleaseAffinity(e.ctx, node, blk, rng.IntN(2) == 0)
						case op == 7:
							_, err = a.ReleaseHostAffinities(e.ctx, node, rng.IntN(2) == 0)
						case op == 8:
							_, _, err = a.EnsureBlock(e.ctx, ipam.EnsureBlockArgs{Node: node, IPv4: true})
						case op == 9 && w == 0 && replace && rng.IntN(2) == 0:
							// Replace the pool by one of the other block size;
							// refused while blocks of the old size are left.
							p, perr := a.Pool(e.ctx, "small")
							if perr == nil {
								size := 28
								if p.BlockSize == 28 {
									size = 29
								}
								if a.DeletePool(e.ctx, "small") == nil {
									if cerr := a.CreatePool(e.ctx, v4pool("small", "10.10.0.0/26", size)); cerr == nil {
										replaced.Add(1)
									} else {
										_ = a.CreatePool(e.ctx, v4pool("small", "10.10.0.0/26", p.BlockSize))
									}
								}
							}
						case op == 9 && w == 0:
							p, perr := a.Pool(e.ctx, "small")
							if perr == nil {
								p.Disabled = !p.Disabled
								err = a.UpdatePool(e.ctx, p)
							}
						}
						var ae *ipam.AssignError
						if err != nil && !errors.As(err, &ae) && !strings.Contains(err.Error(), "is disabled") && !strings.Contains(err.Error(), "no pool") && !errors.Is(err, ipam.ErrInvalid) && !errors.Is(err, ipam.ErrNoSpace) && !errors.Is(err, ipam.ErrBlockNotEmpty) &&
							!errors.Is(err, ipam.ErrAffinityConflict) && !errors.Is(err, ipam.ErrNotInPool) && !errors.Is(err, ipam.ErrPoolChanged) &&
							!errors.Is(err, ipam.ErrNotFound) && !errors.Is(err, ipam.ErrHandleNotFound) {
							t.Errorf("round %d worker %d: %v", round, w, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			r, err := e.a.Check(e.ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range r.Problems {
				t.Errorf("round %d: %s: %s %s", round, p.Kind, p.Record, p.Detail)
			}
			if t.Failed() {
				return
			}
		}
	}
}
