package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

// TestLaneConcurrentMemoReplacementKeepsAddressesUnique has several
// allocators, lane on, assign and release for the same nodes while another
// flips pool settings (selectors, assignment mode, disabled), so that each
// node's memo is replaced concurrently; no address may be handed out twice
// and the store must check clean.
func TestLaneConcurrentMemoReplacementKeepsAddressesUnique(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	var allocs [3]*ipam.Allocator
	for i := range allocs {
		a, err := ipam.New(s, ipam.Options{})
		require.NoError(t, err)
		allocs[i] = a
	}
	require.NoError(t, allocs[0].SetConfig(ctx, ipam.Config{AutoAllocateBlocks: true}))
	for _, p := range []pool.Pool{
		{Name: "a4", CIDR: netip.MustParsePrefix("10.0.0.0/24"), BlockSize: 28},
		{Name: "b4", CIDR: netip.MustParsePrefix("10.0.1.0/24"), BlockSize: 28},
	} {
		require.NoError(t, allocs[0].CreatePool(ctx, p))
	}
	var mu sync.Mutex
	held := map[netip.Addr]string{}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := allocs[w%2]
			for i := range 150 {
				h := fmt.Sprintf("w%d-%d", w, i)
				args := ipam.AutoAssignArgs{Num4: 1, Handle: h, Node: fmt.Sprintf("n%d", w%2)}
				if i%3 == 0 {
					args.NodeLabels = selector.Set{"rack": "a"}
				}
				res, err := a.AutoAssign(ctx, args)
				if err != nil {
					continue
				}
				mu.Lock()
				for _, x := range res.IPv4 {
					if other, dup := held[x.Addr]; dup {
						t.Errorf("%v assigned to %s and %s", x.Addr, other, h)
					}
					held[x.Addr] = h
				}
				mu.Unlock()
				if i%2 == 0 {
					mu.Lock()
					for _, x := range res.IPv4 {
						delete(held, x.Addr)
					}
					mu.Unlock()
					if _, err := a.ReleaseByHandle(ctx, h); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	var fw sync.WaitGroup
	fw.Add(1)
	go func() {
		defer fw.Done()
		a := allocs[2]
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			p, err := a.Pool(ctx, "a4")
			if err != nil {
				t.Error(err)
				return
			}
			switch i % 4 {
			case 0:
				p.NodeSelector = `rack == "a"`
			case 1:
				p.NodeSelector = ""
				p.AssignmentMode = pool.Manual
			case 2:
				p.AssignmentMode = pool.Automatic
				p.NamespaceSelector = `!has(team)`
			case 3:
				p.NamespaceSelector = ""
			}
			_ = a.UpdatePool(ctx, p)
		}
	}()
	wg.Wait()
	close(stop)
	fw.Wait()
	rep, err := allocs[0].Check(ctx)
	require.NoError(t, err)
	require.True(t, rep.Clean(), "%+v", rep.Problems)
}
