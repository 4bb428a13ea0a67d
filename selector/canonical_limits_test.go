package selector_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/carve-ipam/carve/selector"
)

// TestCanonicalFormParsesNearLimits checks the promise of Selector.String: every
// selector Parse accepts prints as text that Parse accepts again, so that a
// selector saved with MarshalText (for example in a pool's JSON) can be
// loaded back with UnmarshalText. Parse's limits on length and depth must
// therefore hold for the canonical form too: the canonical form adds spaces
// around operators and parentheses around every && and || group, so it can
// be longer and nest deeper than the text that was parsed.
func TestCanonicalFormParsesNearLimits(t *testing.T) {
	compact := strings.Repeat(`a=="b"&&`, (selector.MaxLength-len(`a=="b"`))/len(`a=="b"&&`)) + `a=="b"`
	mixed := func(levels int) string {
		return strings.Repeat(`has(a) || has(b) && (`, levels) + "has(c)" + strings.Repeat(")", levels)
	}
	for name, tc := range map[string]struct {
		in         string
		mustAccept bool
	}{
		// 64 KiB of input whose canonical form is about 96 KiB.
		"long": {compact, false},
		// 51 nested parentheses whose canonical form nests 102 deep.
		"deep": {mixed(selector.MaxDepth/2 + 1), false},
		// 50 nested parentheses whose canonical form nests 100 deep.
		"deep-at-limit": {mixed(selector.MaxDepth / 2), true},
	} {
		t.Run(name, func(t *testing.T) {
			in := tc.in
			sel, err := selector.Parse(in)
			if err != nil {
				if tc.mustAccept {
					t.Fatalf("Parse: %v", err)
				}
				return // refusing it is fine; accepting it and not its canonical form is not
			}
			text := sel.String()
			if _, err := selector.Parse(text); err != nil {
				t.Errorf("Parse accepts a %d-byte selector but not its canonical form: %v", len(in), err)
			}
			type pool struct {
				NodeSelector selector.Selector `json:"nodeSelector"`
			}
			saved, err := json.Marshal(pool{sel})
			if err != nil {
				t.Fatal(err)
			}
			var loaded pool
			if err := json.Unmarshal(saved, &loaded); err != nil {
				t.Errorf("a pool saved as JSON does not load back: %.200v", err)
			}
		})
	}
}

// TestCanonicalLengthLimit pins the edge of the canonical-form length
// limit: a selector whose canonical form is exactly MaxLength bytes long is
// accepted and reparses; one byte more is refused with a *SyntaxError that
// points at the end of the input.
func TestCanonicalLengthLimit(t *testing.T) {
	// n comparisons print as 12n-2 bytes: "(" + n*`a == "b"` joined by " && " + ")".
	const n = 5461
	build := func(pad int) string {
		return strings.Repeat(`a=="b"&&`, n-1) + `a=="b` + strings.Repeat("x", pad) + `"`
	}
	pad := selector.MaxLength - (12*n - 2)
	sel, err := selector.Parse(build(pad))
	if err != nil {
		t.Fatalf("canonical form of exactly MaxLength bytes: %v", err)
	}
	if got := len(sel.String()); got != selector.MaxLength {
		t.Fatalf("canonical form is %d bytes, want %d", got, selector.MaxLength)
	}
	if _, err := selector.Parse(sel.String()); err != nil {
		t.Fatalf("canonical form does not reparse: %v", err)
	}

	in := build(pad + 1)
	_, err = selector.Parse(in)
	var se *selector.SyntaxError
	if !errors.As(err, &se) {
		t.Fatalf("canonical form of MaxLength+1 bytes: error %v, want a *SyntaxError", err)
	}
	if se.Offset != len(in) || se.Input != in {
		t.Errorf("error at offset %d of a %d-byte input, want the end", se.Offset, len(in))
	}
}
