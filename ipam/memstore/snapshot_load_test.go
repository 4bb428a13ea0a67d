package memstore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// rawRecord is one record of a crafted snapshot.
type rawRecord struct {
	kind  ipam.Kind
	rev   uint64
	key   string
	value []byte
}

// craft writes a snapshot in the documented format, with a correct
// checksum, whatever the content.
func craft(last, count uint64, recs ...rawRecord) []byte {
	buf := []byte("carve memstore snapshot\n")
	buf = append(buf, 1)
	buf = binary.AppendUvarint(buf, last)
	buf = binary.AppendUvarint(buf, count)
	for _, r := range recs {
		buf = append(buf, byte(r.kind))
		buf = binary.AppendUvarint(buf, r.rev)
		buf = binary.AppendUvarint(buf, uint64(len(r.key)))
		buf = append(buf, r.key...)
		buf = binary.AppendUvarint(buf, uint64(len(r.value)))
		buf = append(buf, r.value...)
	}
	return binary.BigEndian.AppendUint32(buf, crc32.Checksum(buf, crc32.MakeTable(crc32.Castagnoli)))
}

// TestLoadRefusesWrappingRevision: a loaded store goes on counting after
// the snapshot's last revision, so a last revision with no room after it
// (the counter would wrap to 0, which means "no record") is refused.
func TestLoadRefusesWrappingRevision(t *testing.T) {
	data := craft(math.MaxUint64, 1, rawRecord{ipam.KindHandle, math.MaxUint64, "h", []byte{1}})
	_, err := memstore.Load(bytes.NewReader(data))
	require.ErrorIs(t, err, memstore.ErrSnapshot)
	require.ErrorContains(t, err, "last revision 18446744073709551615 above")
}

// TestLoadRefusesRepeatedRevision: the store hands out revisions from one
// store-wide counter, so no two records of a snapshot WriteTo wrote share
// a revision. A snapshot in which they do is inconsistent, and Load must
// refuse it with ErrSnapshot.
func TestLoadRefusesRepeatedRevision(t *testing.T) {
	data := craft(5, 2,
		rawRecord{ipam.KindHandle, 5, "a", []byte{1}},
		rawRecord{ipam.KindHandle, 5, "b", []byte{1}})
	_, err := memstore.Load(bytes.NewReader(data))
	require.ErrorIs(t, err, memstore.ErrSnapshot, "two records at revision 5")
}

// TestSnapshotLargeValue: whatever WriteTo writes, Load reads back. An
// allocator can fill a /20 block whose value passes 64 MiB (4096
// addresses, each with a handle and attributes of the longest lengths);
// Load once refused values that long.
func TestSnapshotLargeValue(t *testing.T) {
	s := memstore.New()
	big := bytes.Repeat([]byte{0xa5}, 1<<26+1)
	_, err := s.Create(context.Background(), ipam.KindBlock, "v4:0a400000/20", big)
	require.NoError(t, err)
	var buf bytes.Buffer
	_, err = s.WriteTo(&buf)
	require.NoError(t, err)
	loaded, err := memstore.Load(&buf)
	require.NoError(t, err)
	rec, err := loaded.Get(context.Background(), ipam.KindBlock, "v4:0a400000/20")
	require.NoError(t, err)
	require.True(t, bytes.Equal(big, rec.Value))
}

// failingWriter accepts nothing.
type failingWriter struct{}

func (failingWriter) Write(p []byte) (int, error) { return 0, errors.New("disk full") }

// TestWriteToCountsWhatReachesTheWriter: WriteTo implements io.WriterTo, whose
// n is the number of bytes written to w. On a writer that accepts nothing
// it must report 0, not the bytes it buffered.
func TestWriteToCountsWhatReachesTheWriter(t *testing.T) {
	s := memstore.New()
	_, err := s.Create(t.Context(), ipam.KindHandle, "h", []byte{1, 2, 3})
	require.NoError(t, err)
	n, err := s.WriteTo(failingWriter{})
	require.Error(t, err)
	require.Zero(t, n, "no byte reached w")
}
