package memstore_test

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// TestSnapshotOfEmptyKeyLoads: a store holds whatever its writes
// were given, and a snapshot of it must load back: otherwise SaveFile
// succeeds on shutdown and LoadFile refuses the file on the next start,
// losing every record in it. memstore accepts a record under the empty
// key (Create, Update and Commit all take it), WriteTo writes it, and
// Load refuses the whole snapshot ("empty key").
func TestSnapshotOfEmptyKeyLoads(t *testing.T) {
	s := memstore.New()
	ctx := t.Context()
	_, err := s.Create(ctx, ipam.KindHandle, "", []byte("empty key"))
	require.NoError(t, err, "memstore takes the empty key")
	_, err = s.Create(ctx, ipam.KindBlock, "v4:0a000000/26", []byte("a block"))
	require.NoError(t, err)

	path := filepath.Join(t.TempDir(), "ipam.snap")
	require.NoError(t, s.SaveFile(path))
	loaded, err := memstore.LoadFile(path)
	require.NoError(t, err, "a snapshot SaveFile wrote must load")
	rec, err := loaded.Get(ctx, ipam.KindHandle, "")
	require.NoError(t, err)
	require.Equal(t, []byte("empty key"), rec.Value)

	var buf bytes.Buffer
	_, err = s.WriteTo(&buf)
	require.NoError(t, err)
	_, err = memstore.Load(&buf)
	require.NoError(t, err, "a snapshot WriteTo wrote must load")
}
