package etcdstore_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
	"github.com/carve-ipam/carve/pool"
)

// revELedger is what the test's workers believe each handle holds, and the
// reverse: which handle holds each address. An address handed to a
// second handle while the first still holds it is a fault.
type revELedger struct {
	mu     sync.Mutex
	byAddr map[netip.Addr]string
	byH    map[string][]netip.Addr
}

func newRevELedger() *revELedger {
	return &revELedger{byAddr: map[netip.Addr]string{}, byH: map[string][]netip.Addr{}}
}

func (l *revELedger) assigned(h string, addrs []netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, x := range addrs {
		if o, ok := l.byAddr[x]; ok {
			return fmt.Errorf("%s assigned to %s while %s holds it", x, h, o)
		}
		l.byAddr[x] = h
	}
	l.byH[h] = append(l.byH[h], addrs...)
	return nil
}

func (l *revELedger) released(h string) []netip.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	was := l.byH[h]
	for _, x := range was {
		delete(l.byAddr, x)
	}
	delete(l.byH, h)
	return was
}

// TestAllocatorsEndToEnd runs allocators on separate clients assigning,
// releasing, claiming and releasing affinities on shared nodes, while
// another changes the pools (disable and enable, modify, split, delete
// and re-create). No address may be held twice, every release returns
// what its handle held, and after a quiet period Check is clean.
func TestAllocatorsEndToEnd(t *testing.T) {
	_, as, _ := revEAllocators(t, 3, etcdstore.Options{})
	ctx := t.Context()
	mk := func(name, cidr string) pool.Pool {
		return pool.Pool{Name: name, CIDR: netip.MustParsePrefix(cidr), BlockSize: 28}
	}
	for _, p := range []pool.Pool{mk("a", "10.8.0.0/24"), mk("b", "10.8.1.0/24"), mk("c", "10.8.2.0/24"), mk("d", "10.8.3.0/24")} {
		if err := as[0].CreatePool(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	cfg := ipam.DefaultConfig()
	cfg.MaxBlocksPerHost = 0
	if err := as[0].SetConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	led := newRevELedger()
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	const workers, ops = 5, 80
	nodes := []string{"n0", "n1", "n2"}
	var handleSeq atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 11))
			var mine []string
			for i := range ops {
				a := as[r.IntN(len(as))]
				node := nodes[r.IntN(len(nodes))]
				switch op := r.IntN(20); {
				case op < 9:
					h := fmt.Sprintf("h%d", handleSeq.Add(1))
					res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1 + r.IntN(2), Handle: h, Node: node})
					if err != nil {
						if !errors.Is(err, ipam.ErrNoSpace) {
							report(fmt.Errorf("worker %d op %d: AutoAssign %s on %s: %w", w, i, h, node, err))
						}
						// What a failed request leaves, if anything, is
						// released below through its handle.
					}
					var got []netip.Addr
					for _, x := range res.IPv4 {
						got = append(got, x.Addr)
					}
					if err := led.assigned(h, got); err != nil {
						report(fmt.Errorf("worker %d op %d: %w", w, i, err))
					}
					mine = append(mine, h)
				case op < 15 && len(mine) > 0:
					j := r.IntN(len(mine))
					h := mine[j]
					mine = slices.Delete(mine, j, j+1)
					want := revESorted(led.released(h))
					got, err := a.ReleaseByHandle(ctx, h)
					if len(want) == 0 {
						if err != nil && !errors.Is(err, ipam.ErrHandleNotFound) {
							report(fmt.Errorf("worker %d op %d: ReleaseByHandle %s (nothing) = %v, %v", w, i, h, got, err))
						}
						continue
					}
					if err != nil || !slices.Equal(revESorted(got), want) {
						report(fmt.Errorf("worker %d op %d: ReleaseByHandle %s = %v, %v; it held %v", w, i, h, got, err, want))
					}
				case op < 17:
					blk := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 8, byte(r.IntN(4)), byte(16 * r.IntN(16))}), 28)
					_, err := a.ClaimAffinity(ctx, node, blk)
					if err != nil && !errors.Is(err, ipam.ErrAffinityConflict) && !errors.Is(err, ipam.ErrNotInPool) && !errors.Is(err, ipam.ErrPoolNotFound) {
						report(fmt.Errorf("worker %d op %d: ClaimAffinity %s %s: %w", w, i, node, blk, err))
					}
				default:
					err := a.ReleaseAffinity(ctx, node, netip.MustParsePrefix("10.8.0.0/16"), r.IntN(2) == 0)
					if err != nil && !errors.Is(err, ipam.ErrBlockNotEmpty) {
						report(fmt.Errorf("worker %d op %d: ReleaseAffinity %s: %w", w, i, node, err))
					}
				}
			}
			for _, h := range mine {
				want := revESorted(led.released(h))
				got, err := as[r.IntN(len(as))].ReleaseByHandle(ctx, h)
				if len(want) == 0 {
					continue
				}
				if err != nil || !slices.Equal(revESorted(got), want) {
					report(fmt.Errorf("worker %d final: ReleaseByHandle %s = %v, %v; it held %v", w, h, got, err, want))
				}
			}
		}()
	}
	// The pool changer.
	var cwg sync.WaitGroup
	cwg.Add(1)
	go func() {
		defer cwg.Done()
		a := as[2]
		split := false
		for i := 0; !stop.Load(); i++ {
			var err error
			switch i % 6 {
			case 0:
				err = a.DisablePool(ctx, "a")
			case 1:
				err = a.EnablePool(ctx, "a")
			case 2:
				_, err = a.ModifyPool(ctx, "b", func(p *pool.Pool) error {
					if p.IPIPMode == pool.Always {
						p.IPIPMode = pool.Never
					} else {
						p.IPIPMode = pool.Always
					}
					return nil
				})
			case 3:
				if err = a.DeletePool(ctx, "c"); err == nil {
					err = a.CreatePool(ctx, mk("c", "10.8.2.0/24"))
					if errors.Is(err, ipam.ErrLeftoverBlocks) {
						err = nil
					}
				}
			case 4:
				if !split {
					_, err = a.SplitPool(ctx, "d", "d", "d2")
					split = err == nil
				} else if err = a.DeletePool(ctx, "d2"); err == nil {
					err = a.CreatePool(ctx, mk("d2", "10.8.3.128/25"))
				}
			case 5:
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				report(fmt.Errorf("pool change %d: %w", i, err))
			}
		}
	}()
	wg.Wait()
	stop.Store(true)
	cwg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Quiet: every watch has caught up with the last change.
	time.Sleep(500 * time.Millisecond)
	led.mu.Lock()
	left := len(led.byAddr)
	led.mu.Unlock()
	if left != 0 {
		t.Errorf("the ledger still holds %d addresses", left)
	}
	rep := revECheckClean(t, ctx, as[1], "after the run")
	if rep != nil && rep.Allocations != 0 {
		t.Errorf("Check counts %d allocations after every handle was released", rep.Allocations)
	}
}
