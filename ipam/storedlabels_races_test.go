package ipam_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// TestStoredLabelsFlipAcrossAllocators: one allocator flips a
// node's stored labels between two racks while another serves the node's
// requests (which give no labels) from several goroutines, through the
// lane and the general path. Every request that starts after a
// SetNodeLabels returned must be served from the pool of the labels it
// stored, whatever the serving allocator cached.
func TestStoredLabelsFlipAcrossAllocators(t *testing.T) {
	pa := v4pool("rack-a", "10.1.0.0/16", 26)
	pa.NodeSelector = `rack == "a"`
	pb := v4pool("rack-b", "10.2.0.0/16", 26)
	pb.NodeSelector = `rack == "b"`
	e := newEnv(t, pa, pb)
	setter, server := e.a, e.allocator()
	var mu sync.RWMutex // held for reading by requests, for writing by flips
	var wg sync.WaitGroup
	stop := make(chan struct{})
	want := "rack-a"
	require.NoError(t, setter.SetNodeLabels(e.ctx, "node-1", map[string]string{"rack": "a"}))
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				mu.RLock()
				w := want
				h := fmt.Sprintf("g%d-%d", g, i)
				res, err := server.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: h, Node: "node-1"})
				mu.RUnlock()
				if err != nil {
					t.Errorf("%s: %v", h, err)
					return
				}
				if res.IPv4[0].Pool != w {
					t.Errorf("%s: from %s, stored labels select %s", h, res.IPv4[0].Pool, w)
					return
				}
				if _, err := server.ReleaseByHandle(e.ctx, h); err != nil {
					t.Errorf("release %s: %v", h, err)
					return
				}
			}
		}()
	}
	for i := range 200 {
		rack, name := "a", "rack-a"
		if i%2 == 0 {
			rack, name = "b", "rack-b"
		}
		mu.Lock()
		require.NoError(t, setter.SetNodeLabels(e.ctx, "node-1", map[string]string{"rack": rack}))
		want = name
		mu.Unlock()
	}
	close(stop)
	wg.Wait()
}
