package memstore_test

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// craftLengths writes a snapshot of one record whose key and value
// lengths are given apart from the bytes that follow them, with a correct
// checksum: a snapshot whose lengths lie.
func craftLengths(klen uint64, key string, vlen uint64, value []byte) []byte {
	buf := []byte("carve memstore snapshot\n")
	buf = append(buf, 1)
	buf = binary.AppendUvarint(buf, 5) // last revision
	buf = binary.AppendUvarint(buf, 1) // one record
	buf = append(buf, byte(ipam.KindHandle))
	buf = binary.AppendUvarint(buf, 5)
	buf = binary.AppendUvarint(buf, klen)
	buf = append(buf, key...)
	buf = binary.AppendUvarint(buf, vlen)
	buf = append(buf, value...)
	return binary.BigEndian.AppendUint32(buf, crc32.Checksum(buf, crc32.MakeTable(crc32.Castagnoli)))
}

// TestLoadRefusesLengthPastTheEnd: a key or value length of 2^63
// or more promises more bytes than any snapshot holds, so the snapshot is
// truncated or damaged and Load must refuse it with ErrSnapshot, as it
// refuses a length of 2^62. Instead Load reads such a length as 0 and
// goes on: it loads a record with an empty key or an empty value, from a
// snapshot WriteTo never wrote.
func TestLoadRefusesLengthPastTheEnd(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"key length 2^62", craftLengths(1<<62, "", 1, []byte{1})},
		{"key length 2^63", craftLengths(1<<63, "", 1, []byte{1})},
		{"key length 2^64-1", craftLengths(1<<64-1, "", 1, []byte{1})},
		{"value length 2^63", craftLengths(1, "h", 1<<63, nil)},
		{"value length 2^64-1", craftLengths(1, "h", 1<<64-1, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := memstore.Load(bytes.NewReader(tc.data))
			if err == nil {
				recs, _ := s.List(t.Context(), ipam.KindHandle, ipam.KeyRange{})
				t.Fatalf("Load accepted a snapshot whose %s promises bytes it does not hold, loading %+v", tc.name, recs)
			}
			require.ErrorIs(t, err, memstore.ErrSnapshot)
			require.ErrorContains(t, err, "truncated")
		})
	}
}
