package ipam_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

func TestConfigJSON(t *testing.T) {
	for _, c := range []ipam.Config{
		ipam.DefaultConfig(),
		{StrictAffinity: true},
		{StrictAffinity: true, AutoAllocateBlocks: true, MaxBlocksPerHost: 4, ReleaseCooldown: 90 * time.Second},
	} {
		data, err := json.Marshal(c)
		require.NoError(t, err)
		var back ipam.Config
		require.NoError(t, json.Unmarshal(data, &back), "%s", data)
		require.Equal(t, c, back, "%s", data)
	}

	for _, tt := range []struct {
		in   string
		want ipam.Config
	}{
		{`{}`, ipam.DefaultConfig()},
		{`{"strictAffinity":true}`, ipam.Config{StrictAffinity: true, AutoAllocateBlocks: true}},
		{`{"autoAllocateBlocks":false,"strictAffinity":true}`, ipam.Config{StrictAffinity: true}},
		{`{"maxBlocksPerHost":null,"releaseCooldown":""}`, ipam.DefaultConfig()},
		{` {"releaseCooldown":"1m30s"} `, ipam.Config{AutoAllocateBlocks: true, ReleaseCooldown: 90 * time.Second}},
	} {
		var got ipam.Config
		require.NoError(t, json.Unmarshal([]byte(tt.in), &got), tt.in)
		require.Equal(t, tt.want, got, tt.in)
	}

	for _, tt := range []struct{ in, msg string }{
		{`{"autoAllocateBlocks":true,"bogus":1}`, "bogus: is not a field of the IPAM configuration"},
		{`{"strictaffinity":true}`, "strictaffinity: is not a field"}, // names are case-sensitive
		{`{"strictAffinity":true,"strictAffinity":false}`, `"strictAffinity": appears twice`},
		{`{"maxBlocksPerHost":"3"}`, `maxBlocksPerHost: want an integer, got "3"`},
		{`{"strictAffinity":1}`, "strictAffinity: want true or false, got 1"},
		{`{"releaseCooldown":"soon"}`, `releaseCooldown: want a duration such as "30s", got "soon"`},
		{`[]`, "want an object, got []"},
		{`{"strictAffinity":true`, "invalid JSON"},
	} {
		c := ipam.Config{MaxBlocksPerHost: 7}
		err := c.UnmarshalJSON([]byte(tt.in))
		require.ErrorIs(t, err, ipam.ErrInvalidConfig, tt.in)
		require.ErrorContains(t, err, tt.msg, tt.in)
		require.Equal(t, ipam.Config{MaxBlocksPerHost: 7}, c, "a failed decode leaves the Config alone")
	}
}

// FuzzConfigJSON: decoding never panics, and whatever decodes encodes to
// JSON that decodes to the same Config.
func FuzzConfigJSON(f *testing.F) {
	f.Add([]byte(`{"strictAffinity":false,"autoAllocateBlocks":true}`))
	f.Add([]byte(`{"strictAffinity":true,"maxBlocksPerHost":3,"releaseCooldown":"30s"}`))
	f.Add([]byte(`{"releaseCooldown":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c ipam.Config
		if err := c.UnmarshalJSON(data); err != nil {
			return
		}
		enc, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		var back ipam.Config
		if err := json.Unmarshal(enc, &back); err != nil {
			t.Fatalf("re-decoding %s: %v", enc, err)
		}
		if back != c {
			t.Fatalf("%s decodes to %+v, which encodes as %s and decodes to %+v", data, c, enc, back)
		}
	})
}
