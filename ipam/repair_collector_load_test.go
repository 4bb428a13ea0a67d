package ipam_test

import (
	"context"
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
)

// loadHeld is what the workers of the stress test hold: per handle,
// the addresses and sequence numbers AutoAssign gave it.
type loadHeld struct {
	mu        sync.Mutex
	held      map[string]map[netip.Addr]uint64
	released  map[netip.Addr]uint64 // addresses released, with the seq they had
	abandoned map[string]map[netip.Addr]uint64
	dead      map[string]bool
}

func (h *loadHeld) live(_ context.Context, a ipam.Allocation) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.dead[a.Handle], nil
}

// TestRepairAndCollectorUnderLoad: workers assign, release by
// handle, release single addresses and abandon handles (leaks) on their
// nodes; meanwhile a corruptor raises handle counts (what a crash
// between the count and the block leaves), Repair runs with a settle
// time, and a Collector runs passes. Nothing a live owner holds may be
// released or lose its count; what was abandoned must be collected; and
// Repair on the quiet store then leaves it clean.
func TestRepairAndCollectorUnderLoad(t *testing.T) {
	for _, commits := range []bool{true, false} {
		t.Run(fmt.Sprintf("commits=%v", commits), func(t *testing.T) { repairCollectorLoad(t, commits) })
	}
}

func repairCollectorLoad(t *testing.T, commits bool) {
	ctx := t.Context()
	ms := memstore.New()
	newA := func() *ipam.Allocator {
		var s ipam.Store = ms
		if !commits { // a store without Committer, Generations or BlockKeeper
			s = &opHookStore{Store: ms, before: func(string, ipam.Kind, string) error { return nil }}
		}
		a, err := ipam.New(s, ipam.Options{})
		require.NoError(t, err)
		return a
	}
	admin := newA()
	require.NoError(t, admin.CreatePool(ctx, v4pool("p", "10.0.0.0/22", 28)))
	st := &loadHeld{held: map[string]map[netip.Addr]uint64{}, released: map[netip.Addr]uint64{},
		abandoned: map[string]map[netip.Addr]uint64{}, dead: map[string]bool{}}

	const workers = 3
	dur := 3 * time.Second
	if testing.Short() {
		dur = time.Second
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errc := make(chan error, 100)
	report := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := newA()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			node := fmt.Sprintf("node-%d", w)
			var mine []string
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				switch op := rng.IntN(10); {
				case op < 5 || len(mine) == 0:
					h := fmt.Sprintf("h-%d-%d", w, k)
					res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1 + rng.IntN(3), Handle: h, Node: node,
						Attrs: map[string]string{"w": "x"}})
					if err != nil {
						if !errors.Is(err, ipam.ErrNoSpace) {
							report(fmt.Errorf("assign %s: %w", h, err))
						}
						continue
					}
					st.mu.Lock()
					m := map[netip.Addr]uint64{}
					for _, x := range res.IPv4 {
						m[x.Addr] = x.Seq
					}
					st.held[h] = m
					st.mu.Unlock()
					mine = append(mine, h)
				case op < 7:
					i := rng.IntN(len(mine))
					h := mine[i]
					mine = append(mine[:i], mine[i+1:]...)
					st.mu.Lock()
					m := st.held[h]
					delete(st.held, h)
					st.mu.Unlock()
					_, err := a.ReleaseByHandle(ctx, h)
					if err != nil {
						report(fmt.Errorf("release %s: %w", h, err))
					}
					st.mu.Lock()
					for addr, seq := range m {
						st.released[addr] = seq
					}
					st.mu.Unlock()
				case op < 8 && rng.IntN(4) == 0:
					// Give up an empty block, or claim one.
					if rng.IntN(2) == 0 {
						_, err := a.ReleaseHostAffinities(ctx, node, true)
						if err != nil && !errors.Is(err, ipam.ErrBlockNotEmpty) {
							report(fmt.Errorf("release affinities: %w", err))
						}
					} else {
						blk := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(rng.IntN(4)), byte(16 * rng.IntN(16))}), 28)
						_, err := a.ClaimAffinity(ctx, node, blk)
						if err != nil && !errors.Is(err, ipam.ErrAffinityConflict) {
							report(fmt.Errorf("claim %s: %w", blk, err))
						}
					}
				case op < 9:
					h := mine[rng.IntN(len(mine))]
					st.mu.Lock()
					var addr netip.Addr
					var seq uint64
					for addr, seq = range st.held[h] {
						break
					}
					if len(st.held[h]) > 1 {
						delete(st.held[h], addr)
					} else {
						addr = netip.Addr{}
					}
					st.mu.Unlock()
					if !addr.IsValid() {
						continue
					}
					_, err := a.ReleaseIPs(ctx, ipam.Release{Addr: addr, Handle: h, Seq: seq})
					if err != nil {
						report(fmt.Errorf("release %s of %s: %w", addr, h, err))
					}
					st.mu.Lock()
					st.released[addr] = seq
					st.mu.Unlock()
				default: // abandon: the owner dies without a release
					i := rng.IntN(len(mine))
					h := mine[i]
					mine = append(mine[:i], mine[i+1:]...)
					st.mu.Lock()
					st.abandoned[h] = st.held[h]
					delete(st.held, h)
					st.dead[h] = true
					st.mu.Unlock()
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	// The corruptor: raises a handle's count by one now and then.
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(99, 1))
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			recs, err := ms.List(ctx, ipam.KindHandle, ipam.KeyRange{})
			if err != nil || len(recs) == 0 {
				continue
			}
			r := recs[rng.IntN(len(recs))]
			counts, err := ipam.DecodeHandle(r.Value)
			if err != nil {
				continue
			}
			for blk := range counts {
				counts[blk]++
				break
			}
			_, _ = ms.Update(ctx, ipam.KindHandle, r.Key, ipam.EncodeHandle(counts), r.Revision)
		}
	}()
	// Repair with a settle time, over and over.
	wg.Add(1)
	go func() {
		defer wg.Done()
		a := newA()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, _, err := a.Repair(ctx, ipam.RepairOptions{Settle: 150 * time.Millisecond}); err != nil {
				report(fmt.Errorf("repair: %w", err))
			}
		}
	}()
	// A collector.
	c, err := ipam.NewCollector(newA(), st.live, ipam.CollectorOptions{Grace: 300 * time.Millisecond})
	require.NoError(t, err)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := c.Collect(ctx); err != nil {
				report(fmt.Errorf("collect: %w", err))
			}
		}
	}()

	time.Sleep(dur)
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Errorf("%v", err)
	}

	// The quiet store: the collector collects what was abandoned.
	for range 6 {
		time.Sleep(100 * time.Millisecond)
		_, err := c.Collect(ctx)
		require.NoError(t, err)
	}
	r, err := admin.Check(ctx)
	require.NoError(t, err)
	for _, p := range r.Problems {
		if p.Kind == ipam.ProblemHandleMissing {
			t.Errorf("a count too low after the load: %v", p)
		}
	}
	_, after, err := admin.Repair(ctx, ipam.RepairOptions{})
	require.NoError(t, err)
	require.True(t, after.Clean(), "%v", after.Problems)

	st.mu.Lock()
	defer st.mu.Unlock()
	for h, m := range st.held {
		for addr, seq := range m {
			own, err := admin.Owner(ctx, addr)
			if err != nil || own.Handle != h || own.Seq != seq {
				t.Errorf("%s of live handle %s (seq %d): owner now %+v, %v", addr, h, seq, own, err)
			}
		}
		got, err := admin.IPsByHandle(ctx, h)
		require.NoError(t, err)
		require.Len(t, got, len(m), "handle %s", h)
	}
	for h, m := range st.abandoned {
		for addr, seq := range m {
			own, err := admin.Owner(ctx, addr)
			if err == nil && own.Handle == h && own.Seq == seq {
				t.Errorf("%s of abandoned handle %s never collected", addr, h)
			}
		}
	}
	t.Logf("held %d handles, abandoned %d, released %d addresses", len(st.held), len(st.abandoned), len(st.released))
}
