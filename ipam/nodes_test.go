package ipam

import (
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"
)

// plainASCIISlow is plainASCII one byte at a time.
func plainASCIISlow(s string, slash bool) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || (c == '/' && !slash) {
			return false
		}
	}
	return true
}

func TestPlainASCII(t *testing.T) {
	tests := []struct {
		s         string
		want      bool // without "/"
		wantSlash bool // with "/" allowed
	}{
		{"", true, true},
		{"node-1", true, true},
		{"a-pod-with-a-long-name-0123456789", true, true},
		{" !\"#$%&'()*+,-.0123456789:;<=>?@AZ[\\]^_`az{|}~", true, true},
		{"rack/1", false, true},
		{"0123456/", false, true},
		{"01234567/", false, true},
		{"k8s-pod-network/default/web-0", false, true},
		{"tab\there", false, false},
		{"01234567\x1f", false, false},
		{"0123456\x7f", false, false},
		{"0123456\x80", false, false},
		{"nøde", false, false},
		{"01234567890123456789012\x00", false, false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, plainASCII(tt.s, false), "%q", tt.s)
		require.Equal(t, tt.wantSlash, plainASCII(tt.s, true), "%q with slashes allowed", tt.s)
	}
	// Every byte value in every position of a word and of the tail.
	for c := 0; c < 256; c++ {
		for pos := 0; pos < 12; pos++ {
			b := []byte(strings.Repeat("a", 12))
			b[pos] = byte(c)
			for _, slash := range []bool{false, true} {
				require.Equal(t, plainASCIISlow(string(b), slash), plainASCII(string(b), slash), "byte %#x at %d, slash %v", c, pos, slash)
			}
		}
	}
	rapid.Check(t, func(t *rapid.T) {
		s := rapid.String().Draw(t, "s")
		slash := rapid.Bool().Draw(t, "slash")
		if plainASCII(s, slash) != plainASCIISlow(s, slash) {
			t.Fatalf("plainASCII(%q, %v) = %v", s, slash, plainASCII(s, slash))
		}
	})
}

// TestValidUTF8 checks the ASCII shortcut against utf8.ValidString, with a
// bad or multi-byte sequence at every position of a word and of the tail.
func TestValidUTF8(t *testing.T) {
	for _, bad := range []string{"\x80", "\xff", "\xc3", "ø", "€", "\xed\xa0\x80"} {
		for pos := 0; pos <= 17; pos++ {
			s := strings.Repeat("a", pos) + bad + strings.Repeat("b", 17-pos)
			require.Equal(t, utf8.ValidString(s), validUTF8(s), "%q", s)
		}
	}
	rapid.Check(t, func(t *rapid.T) {
		s := string(rapid.SliceOf(rapid.Byte()).Draw(t, "s"))
		if validUTF8(s) != utf8.ValidString(s) {
			t.Fatalf("validUTF8(%q) = %v", s, validUTF8(s))
		}
	})
}

func TestCheckName(t *testing.T) {
	tests := []struct {
		name   string
		s      string
		slash  bool
		reason string // "" for valid
	}{
		{"plain", "node-1", false, ""},
		{"unicode", "nœud-1", false, ""},
		{"slash in handle", "k8s-pod-network/default/web", true, ""},
		{"slash in node", "rack/1", false, `contains "/"`},
		{"empty", "", false, "empty"},
		{"too long", strings.Repeat("n", MaxNameLen+1), false, "longer than"},
		{"longest", strings.Repeat("n", MaxNameLen), false, ""},
		{"control", "node\n1", false, "control character"},
		{"bad utf8", "node\xff", true, "not valid UTF-8"},
		{"space inside", "node 1", false, ""},
		{"trailing space", "node-1 ", false, "white space"},
		{"leading space", " pod", true, "white space"},
		{"unicode space", "nœud\u00a0", false, "white space"},
		{"long, trailing space", "k8s-pod-network.0123456789 ", true, "white space"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkName("op", "node name", tt.s, tt.slash)
			if tt.reason == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalid)
			require.ErrorContains(t, err, tt.reason)
		})
	}
}

func TestCache(t *testing.T) {
	var c cache[int, *int]
	made := 0
	mk := func(k int) func() *int {
		return func() *int { made++; v := k; return &v }
	}
	first := c.getOrMake(1, mk(1))
	require.Same(t, first, c.getOrMake(1, mk(1)), "a key keeps its value")
	for k := 2; k <= 100; k++ {
		require.Equal(t, k, *c.getOrMake(k, mk(k)))
	}
	require.Equal(t, 100, made)
	// Lookups of every key until the keys added since the first snapshot
	// are promoted to a new one, which no lookup can tell.
	for range 3 {
		for k := 1; k <= 100; k++ {
			require.Equal(t, k, *c.getOrMake(k, mk(k)))
		}
	}
	require.Equal(t, 100, made)
	require.Equal(t, 100, c.len())
	require.Len(t, c.snapshot(), 100, "dirty was promoted")

	// A full cache starts over.
	for k := 101; k <= maxCached; k++ {
		c.getOrMake(k, mk(k))
	}
	require.Equal(t, maxCached, c.len())
	c.getOrMake(-1, mk(-1))
	require.Equal(t, 1, c.len())
	require.NotSame(t, first, c.getOrMake(1, mk(1)), "forgotten")
}

func TestCacheConcurrent(t *testing.T) {
	var c cache[int, *int]
	var wg sync.WaitGroup
	got := make([][]*int, 8)
	for g := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 500 {
				got[g] = append(got[g], c.getOrMake(k%50, func() *int { v := k % 50; return &v }))
			}
		}()
	}
	wg.Wait()
	for g := range got {
		for k, v := range got[g] {
			require.Same(t, got[0][k], v, "every caller gets the same value for key %d", k%50)
		}
	}
}

// len returns the number of keys cached (for tests).
func (c *cache[K, V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dirty != nil {
		return len(c.dirty)
	}
	return len(c.snapshot())
}
