package memstore_test

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// liveHeap returns the bytes in use on the heap after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestLoadTakesTheMemoryOfTheStore: a provisioner restarts from its
// snapshot and expects the loaded store to hold what the saved one held
// in about the memory it took. Load reads each key and value through a
// bytes.Buffer that grows by at least 512 bytes at a time, and keeps the
// buffer as the value: a handle record of 20 bytes then holds about 1 KiB,
// and a store of 100,000 handles that took 14 MiB takes 106 MiB after a
// restart, loaded from a snapshot of 3.4 MiB (a crafted snapshot of tiny
// records gets more still out of each byte).
func TestLoadTakesTheMemoryOfTheStore(t *testing.T) {
	const n = 100_000
	ctx := t.Context()
	before := liveHeap()
	s := memstore.New()
	for i := range n {
		_, err := s.Create(ctx, ipam.KindHandle, fmt.Sprintf("vm-%07d", i), []byte("0123456789abcdefghij"))
		require.NoError(t, err)
	}
	_, err := s.List(ctx, ipam.KindHandle, ipam.KeyRange{}) // its key order built, as a load builds it
	require.NoError(t, err)
	saved := liveHeap() - before
	var buf bytes.Buffer
	_, err = s.WriteTo(&buf)
	require.NoError(t, err)
	data := buf.Bytes()

	before = liveHeap()
	loaded, err := memstore.Load(bytes.NewReader(data))
	require.NoError(t, err)
	got := liveHeap() - before
	runtime.KeepAlive(s)
	runtime.KeepAlive(loaded)
	t.Logf("%d handles: the store takes %d KiB, loaded from its snapshot of %d KiB %d KiB", n, saved>>10, len(data)>>10, got>>10)
	require.LessOrEqual(t, got, 2*saved, "a loaded store takes at most twice the memory of the store saved")
}
