package block_test

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
)

// goldenBlock is the block whose encodings the golden tests spell out.
func goldenBlock(t testing.TB) *block.Block {
	b := mustNew(t, "10.0.0.0/30", 100)
	require.NoError(t, b.Reserve(addr("10.0.0.3")))                                  // 101
	b.Allocate(nil, 2, block.Owner{Handle: "h", Attrs: map[string]string{"a": "1"}}) // 102: .0 .1
	_, err := b.Assign(addr("10.0.0.2"), block.Owner{Handle: "g"})                   // 103
	require.NoError(t, err)                                                          //
	b.SetAffinity(block.Host("n"), time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC))      // 104
	return b
}

// goldenHex is goldenBlock's binary encoding, field by field.
var goldenHex = strings.Join([]string{
	"01",       // version
	"04", "1e", // IPv4, /30
	"0a000000",         // 10.0.0.0
	"0000000000000068", // counter 104
	"02",               // cursor
	"01", "01", "6e",   // host, name "n"
	"01", "ca88b0f70c", "06", // claim time: zigzag(1735787045) s, 6 ns
	"01", "03", // 1 reserved: 10.0.0.3
	"03",                                                       // 3 allocations
	"00", "02", "00", "01", "68", "01", "01", "61", "01", "31", // .0: gap 0, 104-102, new owner 0 "h" {a:1}
	"00", "02", "00", // .1: gap 0, 104-102, owner 0
	"00", "01", "01", "01", "67", "00", // .2: gap 0, 104-103, new owner 1 "g" {}
}, "")

func TestBinaryGolden(t *testing.T) {
	b := goldenBlock(t)
	data, err := b.MarshalBinary()
	require.NoError(t, err)
	assert.Equal(t, goldenHex, hex.EncodeToString(data))
	prefix := []byte("xyz")
	appended, err := b.AppendBinary(prefix)
	require.NoError(t, err)
	assert.Equal(t, "xyz"+string(data), string(appended))

	raw, _ := hex.DecodeString(goldenHex)
	var back block.Block
	require.NoError(t, back.UnmarshalBinary(raw))
	assert.True(t, b.Equal(&back))
	assert.Equal(t, "10.0.0.0/30 host:n 3/4 used, 1 reserved", back.String())
}

func TestJSONGolden(t *testing.T) {
	b := goldenBlock(t)
	js, err := b.MarshalJSON()
	require.NoError(t, err)
	want := `{"version":1,"cidr":"10.0.0.0/30","seq":104,"cursor":2,"affinity":"host:n",` +
		`"claimTime":"2025-01-02T03:04:05.000000006Z","reserved":["10.0.0.3"],` +
		`"owners":[{"handle":"h","attrs":{"a":"1"}},{"handle":"g"}],` +
		`"allocations":[{"addr":"10.0.0.0","owner":0,"seq":102},{"addr":"10.0.0.1","owner":0,"seq":102},{"addr":"10.0.0.2","owner":1,"seq":103}]}`
	assert.Equal(t, want, string(js))

	// Order of lists does not matter on input; a claim time in another
	// zone is the same instant.
	shuffled := `{"version":1,"cidr":"10.0.0.0/30","seq":104,"cursor":2,"affinity":"host:n",
		"claimTime":"2025-01-02T04:04:05.000000006+01:00","reserved":["10.0.0.3"],
		"owners":[{"handle":"g","attrs":{}},{"handle":"h","attrs":{"a":"1"}}],
		"allocations":[{"addr":"10.0.0.2","owner":0,"seq":103},{"addr":"10.0.0.1","owner":1,"seq":102},{"addr":"10.0.0.0","owner":1,"seq":102}]}`
	var back block.Block
	require.NoError(t, back.UnmarshalJSON([]byte(shuffled)))
	assert.True(t, b.Equal(&back))
	require.NoError(t, back.Verify())
}

func TestBinaryRejects(t *testing.T) {
	good := goldenHex
	tests := []struct {
		name string
		hex  string
		text string // part of the error
	}{
		{"empty", "", "version: want 1 bytes, have 0"},
		{"version 0", "00" + good[2:], "unsupported version 0"},
		{"version 3", "03" + good[2:], "unsupported version 3"},
		{"version 2 without release times", "02" + good[2:] + "00", "without release times"},
		{"family", "0105" + good[4:], "family 5"},
		{"size /19", "010413" + good[6:], "IPv4 block size must be /20 to /32"},
		{"size /33", "010421" + good[6:], "prefix length 33 longer than 32 bits"},
		{"size /129", "010681" + strings.Repeat("00", 16) + good[30:], "prefix length 129 longer than 128 bits"},
		{"unmasked", "01041e0a000001" + good[14:], "prefix is not masked"},
		{"truncated address", "01041e0a00", "address: want 4 bytes, have 2"},
		{"truncated counter", good[:20], "sequence number: want 8 bytes"},
		{"cursor past end", replace(good, 30, "04"), "cursor 4 outside the block's 4 addresses"},
		{"non-minimal varint", replace(good, 30, "8200"), "cursor: varint not minimal"},
		{"affinity kind", replace(good, 32, "03"), "affinity kind 3 unknown"},
		{"claim flag", replace(good, 38, "02"), "claim time flag 2"},
		{"nanoseconds", replace(good, 50, "80ca b5ee 03"), "out of range"},
		{"reserved count", replace(good, 52, "05"), "reserved count 5"},
		{"reserved past end", replace(good, 54, "04"), "reserved address 4 past"},
		{"too many allocations", replace(good, 56, "04"), "allocation count 4"},
		{"reserved and allocated", replace(good, 56, "01 03 00 01 01 68 00"), "address 3 both reserved and allocated"},
		{"owner index out of range", replace(good, 56, "01 00 00 01"), "owner index 1 out of range (0 owners so far)"},
		{"owner index past owners", replace(good, 56, "02 00 00 00 01 68 00 00 00 02"), "owner index 2 out of range (1 owners so far)"},
		{"keys out of order", replace(good, 56, "01 00 02 00 01 68 02 01 62 01 31 01 61 01 31"), `attribute key "a" not after "b"`},
		{"duplicate key", replace(good, 56, "01 00 02 00 01 68 02 01 61 01 31 01 61 01 31"), `attribute key "a" not after "a"`},
		{"owner written twice", replace(good, 56, "02 00 02 00 01 68 00 00 02 01 01 68 00"), `already an owner`},
		{"string past end", replace(good, 56, "01 00 02 00 09 68"), "handle: length 9, 1 bytes left"},
		{"trailing byte", good + "00", "1 bytes after the block"},
		{"truncated", good[:len(good)-2], ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := hex.DecodeString(strings.ReplaceAll(tt.hex, " ", ""))
			require.NoError(t, err)
			b := goldenBlock(t)
			err = b.UnmarshalBinary(raw)
			require.ErrorIs(t, err, block.ErrCorrupt)
			assert.Contains(t, err.Error(), tt.text)
			assert.Regexp(t, `^block( \S+)?: decode binary: offset \d+: `, err.Error())
			assert.True(t, b.Equal(new(block.Block)), "a failed decode leaves the zero Block")
			// The block is reusable after a failure.
			require.NoError(t, b.UnmarshalBinary(mustHex(goldenHex)))
			assert.True(t, b.Equal(goldenBlock(t)))
		})
	}
}

// replace returns the hex string s with the bytes from hex offset at on
// replaced by with, for the rest of the string. Offsets are in hex digits.
func replace(s string, at int, with string) string {
	return s[:at] + strings.ReplaceAll(with, " ", "")
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func TestJSONRejects(t *testing.T) {
	head := `{"version":1,"cidr":"10.0.0.0/30","seq":9,"cursor":0`
	tests := []struct {
		name, js, text string
	}{
		{"not json", `{`, "unexpected EOF"},
		{"null", `null`, "unsupported version 0"},
		{"version", `{"version":2,"cidr":"10.0.0.0/30"}`, "unsupported version 2"},
		{"unknown field", head + `,"extra":1}`, `unknown field "extra"`},
		{"trailing", head + `}{}`, "data after the block"},
		{"no cidr", `{"version":1}`, "block: decode json: invalid prefix"},
		{"unmasked", `{"version":1,"cidr":"10.0.0.1/30"}`, "block 10.0.0.1/30: decode json: prefix is not masked (want 10.0.0.0/30)"},
		{"size", `{"version":1,"cidr":"10.0.0.0/16"}`, "IPv4 block size must be /20 to /32"},
		{"cursor", head[:len(head)-1] + `4}`, "cursor 4 outside"},
		{"negative cursor", head[:len(head)-1] + `-1}`, "cursor -1 outside"},
		{"negative seq", `{"version":1,"cidr":"10.0.0.0/30","seq":-1}`, "cannot unmarshal number -1"},
		{"affinity", head + `,"affinity":"node-1"}`, "want host:<node> or virtual:<name>"},
		{"claim year", head + `,"claimTime":"0000-01-01T00:00:00Z"}`, "outside years 1 to 9999"},
		{"reserved outside", head + `,"reserved":["10.0.0.4"]}`, "reserved address 10.0.0.4 not in block"},
		{"reserved twice", head + `,"reserved":["10.0.0.1","10.0.0.1"]}`, "reserved address 10.0.0.1 listed twice"},
		{"allocated outside", head + `,"owners":[{"handle":"h"}],"allocations":[{"addr":"fd00::","owner":0,"seq":1}]}`, "allocated address fd00:: not in block"},
		{"allocated twice", head + `,"owners":[{"handle":"h"}],"allocations":[{"addr":"10.0.0.1","owner":0},{"addr":"10.0.0.1","owner":0}]}`, "listed twice"},
		{"reserved and allocated", head + `,"reserved":["10.0.0.1"],"owners":[{"handle":"h"}],"allocations":[{"addr":"10.0.0.1","owner":0}]}`, "both reserved and allocated"},
		{"owner out of range", head + `,"owners":[{"handle":"h"}],"allocations":[{"addr":"10.0.0.1","owner":1}]}`, "owner index 1 out of range (1 owners)"},
		{"negative owner", head + `,"owners":[{"handle":"h"}],"allocations":[{"addr":"10.0.0.1","owner":-1}]}`, "owner index -1 out of range"},
		{"owner unused", head + `,"owners":[{"handle":"h"},{"handle":"g"}],"allocations":[{"addr":"10.0.0.1","owner":0}]}`, `owner 1 (handle "g") holds no address`},
		{"owner twice", head + `,"owners":[{"handle":"h"},{"handle":"h","attrs":{}}],"allocations":[{"addr":"10.0.0.1","owner":0},{"addr":"10.0.0.2","owner":1}]}`, "already an owner"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := goldenBlock(t)
			err := b.UnmarshalJSON([]byte(tt.js))
			require.ErrorIs(t, err, block.ErrCorrupt)
			assert.Contains(t, err.Error(), tt.text)
			assert.True(t, b.Equal(new(block.Block)), "a failed decode leaves the zero Block")
		})
	}
}

func TestJSONNeedsUTF8(t *testing.T) {
	for _, o := range []block.Owner{
		{Handle: "\xff"},
		{Handle: "h", Attrs: map[string]string{"k": "\xfe"}},
		{Handle: "h", Attrs: map[string]string{"\xfe": "v"}},
	} {
		b := mustNew(t, "10.0.0.0/30", 0)
		b.Allocate(nil, 1, o)
		_, err := b.MarshalJSON()
		assert.ErrorIs(t, err, block.ErrCorrupt)
		roundTripBinary(t, b) // the binary encoding carries any bytes
	}
	b := mustNew(t, "10.0.0.0/30", 0)
	b.SetAffinity(block.Host("\xff"), time.Time{})
	_, err := b.MarshalJSON()
	assert.ErrorIs(t, err, block.ErrCorrupt)
	roundTripBinary(t, b)
}

func TestDecodeErrorsMatch(t *testing.T) {
	var b block.Block
	err := b.UnmarshalBinary(mustHex("010413" + goldenHex[6:]))
	assert.ErrorIs(t, err, block.ErrCorrupt)
	assert.ErrorIs(t, err, block.ErrInvalidPrefix)
	assert.False(t, errors.Is(err, block.ErrOutOfBlock))
}
