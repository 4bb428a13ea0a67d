package strictjson

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFields(t *testing.T) {
	got, err := Fields([]byte(` {"b": 1, "a": {"x": [1, 2]}, "B": null} `))
	require.NoError(t, err)
	require.Equal(t, []Field{
		{"b", json.RawMessage("1")},
		{"a", json.RawMessage(`{"x": [1, 2]}`)},
		{"B", json.RawMessage("null")},
	}, got, "members in order, keys exactly as written")
	require.True(t, IsNull(got[2].Value))
	require.False(t, IsNull(got[0].Value))

	for _, tt := range []struct{ in, msg string }{
		{``, "invalid JSON: unexpected EOF"},
		{`[1]`, "want an object, got [1]"},
		{`"a"`, `want an object, got "a"`},
		{`{"a":1,"a":2}`, `"a": appears twice`},
		{`{"a":1`, "invalid JSON: unexpected EOF"},
		{`{"a":}`, "invalid JSON"},
		{`{"a":1} {}`, "invalid JSON: data after the object"},
	} {
		_, err := Fields([]byte(tt.in))
		require.ErrorContains(t, err, tt.msg, tt.in)
	}
}

// TestFieldsManyMembers: an object of many members keeps them in order and
// refuses a duplicate wherever it is, as a small one does.
func TestFieldsManyMembers(t *testing.T) {
	for _, n := range []int{scanMembers - 1, scanMembers, scanMembers + 1, 1000} {
		members := make([]string, n)
		for i := range members {
			members[i] = fmt.Sprintf(`"k%d":%d`, i, i)
		}
		fields, err := Fields([]byte("{" + strings.Join(members, ",") + "}"))
		require.NoError(t, err, "%d members", n)
		require.Len(t, fields, n)
		for i, f := range fields {
			require.Equal(t, fmt.Sprintf("k%d", i), f.Key)
		}
		for _, dup := range []int{0, n / 2, n - 1} {
			in := "{" + strings.Join(members, ",") + fmt.Sprintf(`,"k%d":null}`, dup)
			_, err := Fields([]byte(in))
			require.EqualError(t, err, fmt.Sprintf(`"k%d": appears twice`, dup), "%d members, k%d again", n, dup)
		}
	}
}

// BenchmarkFields: the cost per member must not grow with the number of
// members (it did, quadratically, before keys went in a map).
func BenchmarkFields(b *testing.B) {
	for _, n := range []int{10, 1000, 60000} {
		members := make([]string, n)
		for i := range members {
			members[i] = fmt.Sprintf(`"x%d":0`, i)
		}
		data := []byte("{" + strings.Join(members, ",") + "}")
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Fields(data); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/member")
		})
	}
}

func TestDecodeAs(t *testing.T) {
	var n int
	require.NoError(t, DecodeAs(json.RawMessage("42"), &n, "an integer"))
	require.Equal(t, 42, n)
	err := DecodeAs(json.RawMessage(`"forty-two and then a good deal more text"`), &n, "an integer")
	require.EqualError(t, err, `want an integer, got "forty-two and then a good deal more ...`)
}

// FuzzFields: Fields never panics, accepts only valid JSON objects, and
// returns each of their members once.
func FuzzFields(f *testing.F) {
	f.Add([]byte(`{"cidr":"10.0.0.0/24","blockSize":26}`))
	f.Add([]byte(`{"a":1,"a":2}`))
	f.Add([]byte(`{"a":{"b":[1,{"c":null}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fields, err := Fields(data)
		if err != nil {
			return
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatalf("Fields accepted %q, which encoding/json refuses: %v", data, err)
		}
		if len(m) != len(fields) {
			t.Fatalf("Fields gave %d members of %q, encoding/json %d", len(fields), data, len(m))
		}
		for _, f := range fields {
			if _, ok := m[f.Key]; !ok {
				t.Fatalf("member %q of %q not found by encoding/json", f.Key, data)
			}
		}
	})
}
