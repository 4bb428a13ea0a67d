package etcdstore_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
)

// TestWatchLeavesBlocksAndHandles: a store does not receive the blocks and
// handles other processes write, which every assignment and release of
// the cluster writes and no allocator keeps by generation. Another client
// writes 1.3 MB of blocks and handles, then a pool; once the store's
// generation of pools has moved, it must have received far less than what
// was written (a watch of the whole prefix received all of it).
func TestWatchLeavesBlocksAndHandles(t *testing.T) {
	p := newProxy(t)
	prefix := freshPrefix()
	s := newStore(t, newClientTo(t, p.endpoint()), etcdstore.Options{Prefix: prefix})
	other := newStore(t, newClient(t), etcdstore.Options{Prefix: prefix})
	ctx := t.Context()
	// The pool watch is up once it delivers a first pool.
	g := s.Generation(ipam.KindPool)
	if _, err := other.Create(ctx, ipam.KindPool, "first", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the watch delivers the first pool", func() bool { return s.Generation(ipam.KindPool) != g })

	before := p.toClients.Load()
	value := bytes.Repeat([]byte("b"), 32<<10)
	written := 0
	for i := range 20 {
		for _, k := range []ipam.Kind{ipam.KindBlock, ipam.KindHandle} {
			if _, err := other.Create(ctx, k, fmt.Sprint(i), value); err != nil {
				t.Fatal(err)
			}
			written += len(value)
		}
	}
	g = s.Generation(ipam.KindPool)
	if _, err := other.Create(ctx, ipam.KindPool, "second", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the watch delivers the second pool", func() bool { return s.Generation(ipam.KindPool) != g })
	if got := p.toClients.Load() - before; got > int64(written/10) {
		t.Fatalf("the store received %d bytes while another client wrote %d bytes of blocks and handles and a pool", got, written)
	}
}
