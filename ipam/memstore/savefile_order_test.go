package memstore_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// TestSaveFileKeepsTheLaterSnapshot: the package doc tells a program that
// hands out addresses to save a snapshot before it reports one, and a
// provisioner serving requests at once saves from each of them. Two
// SaveFiles of one store to one path each copy the store and then write
// and rename their own file, so the one that copied first can rename
// last: SaveFile returns for the second, and the file then holds the
// first one's older copy, without what the second saved. A crash then
// loses an address already reported, and the next start hands it out
// again.
func TestSaveFileKeepsTheLaterSnapshot(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	path := filepath.Join(dir, "ipam.snap")
	s := memstore.New()
	// Which save renames last is a race: try a few times.
	for round := range 5 {
		// A large record, so that a save of it takes a while to write.
		bigRev, err := s.Create(ctx, ipam.KindBlock, "v4:0a000000/26", bytes.Repeat([]byte{0x5a}, 32<<20))
		require.NoError(t, err)

		first := make(chan error, 1)
		go func() { first <- s.SaveFile(path) }()
		// The first save has copied the store once its file has bytes.
		require.Eventually(t, func() bool {
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), ".ipam.snap.tmp-") {
					if fi, err := e.Info(); err == nil && fi.Size() > 0 {
						return true
					}
				}
			}
			return false
		}, 10*time.Second, 100*time.Microsecond, "the first save's file never got bytes")

		// A request: the store changes, it is saved, the address reported.
		require.NoError(t, s.Delete(ctx, ipam.KindBlock, "v4:0a000000/26", bigRev))
		reported := fmt.Sprintf("vm-%d", round)
		_, err = s.Create(ctx, ipam.KindHandle, reported, []byte{1})
		require.NoError(t, err)
		require.NoError(t, s.SaveFile(path))
		require.NoError(t, <-first)

		loaded, err := memstore.LoadFile(path)
		require.NoError(t, err)
		_, err = loaded.Get(ctx, ipam.KindHandle, reported)
		require.NoError(t, err, "round %d: the file holds an older snapshot than the last SaveFile that returned", round)
	}
}
