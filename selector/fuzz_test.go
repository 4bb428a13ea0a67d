package selector_test

import (
	"errors"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/carve-ipam/carve/selector"
)

// fuzzSeeds start the fuzz targets: realistic pool selectors, every
// construct, and near misses.
var fuzzSeeds = []string{
	``,
	`all()`,
	`!all()`,
	`global()`,
	`rack == "0" && has(ssd)`,
	`type == "test"`,
	`route-reflector == 'true'`,
	`zone in {"a","b","c",}`,
	`a not in {'x"y', "z"}`,
	`notin notin {}`,
	`a startswith "x" || b ends  with 'y' && !c contains ""`,
	`!(!(has(a) || !has(b))) && (all() || global())`,
	`((a == "1" && b != "2") || c in {}) && !!d not in {"e"}`,
	`has( kubernetes.io/hostname ) && kubernetes.io/os == "linux"`,
	`a == "b" c`,
	`has (a)`,
	`a in {"x",,}`,
	"a == \"x\ny\"\t&&\tb == ''",
	`(((((a == "1")))))`,
}

// fuzzLabels returns n label sets for checking sel, drawn with seed from the
// label names and string contents that appear in sel, so that comparisons
// have a fair chance of matching either way.
func fuzzLabels(sel string, seed uint64, n int) []selector.Set {
	keys := labelWords.FindAllString(sel, 16)
	if len(keys) == 0 {
		keys = []string{"a"}
	}
	values := []string{"", "x"}
	for _, m := range quotedStrings.FindAllString(sel, 16) {
		v := m[1 : len(m)-1]
		values = append(values, v, v+"x", "x"+v, v[:len(v)/2])
	}
	r := rand.New(rand.NewPCG(seed, uint64(len(sel))))
	sets := make([]selector.Set, n)
	for i := range sets {
		sets[i] = selector.Set{}
		for _, k := range keys {
			if r.IntN(3) > 0 {
				sets[i][k] = values[r.IntN(len(values))]
			}
		}
	}
	return sets
}

var (
	labelWords    = regexp.MustCompile(`[A-Za-z0-9_./-]+`)
	quotedStrings = regexp.MustCompile(`"[^"]*"|'[^']*'`)
)

// FuzzParse checks that Parse never panics, that every error is a
// *SyntaxError with an offset inside the input, and that every selector it
// accepts prints as text that parses back to a selector that behaves the
// same and prints the same, except that Calico's printing keeps a double
// negation written with parentheses, which a second parse folds away.
func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s, uint64(1))
	}
	f.Fuzz(func(t *testing.T, in string, seed uint64) {
		sel, err := selector.Parse(in)
		if err != nil {
			var se *selector.SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("Parse(%q): error %T, want *SyntaxError", in, err)
			}
			if se.Input != in || se.Offset < 0 || se.Offset > len(in) || se.Msg == "" {
				t.Fatalf("Parse(%q): bad error %+v", in, se)
			}
			if sel != selector.None() {
				t.Fatalf("Parse(%q) returned a selector that matches something with its error", in)
			}
			_ = err.Error()
			return
		}
		text := sel.String()
		again, err := selector.Parse(text)
		if err != nil {
			t.Fatalf("Parse(%q).String() = %q does not parse: %v", in, text, err)
		}
		if !strings.Contains(text, "!!") && again.String() != text {
			t.Fatalf("Parse(%q).String() = %q reprints as %q", in, text, again.String())
		}
		if fixed := selector.MustParse(again.String()).String(); fixed != again.String() {
			t.Fatalf("%q is not a fixed point: it prints as %q", again.String(), fixed)
		}
		if sel.UsesGlobal() != again.UsesGlobal() {
			t.Fatalf("UsesGlobal of %q and %q differ", in, text)
		}
		for _, l := range fuzzLabels(in, seed, 8) {
			if sel.Matches(l) != again.Matches(l) {
				t.Fatalf("on %v, %q gives %v and its printed form %q gives %v",
					l, in, sel.Matches(l), text, again.Matches(l))
			}
		}
	})
}

// FuzzReference checks Parse, String, UsesGlobal and Matches against the
// plain reference implementation in reference_test.go.
func FuzzReference(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s, uint64(2))
	}
	f.Fuzz(func(t *testing.T, in string, seed uint64) {
		sel, err := selector.Parse(in)
		ref, ok := refParse(in)
		if (err == nil) != ok {
			t.Fatalf("Parse(%q): error %v, but the reference accepts it: %v", in, err, ok)
		}
		if !ok {
			return
		}
		if sel.String() != ref.text {
			t.Fatalf("Parse(%q).String() = %q, reference %q", in, sel.String(), ref.text)
		}
		if sel.UsesGlobal() != ref.global {
			t.Fatalf("Parse(%q).UsesGlobal() = %v, reference %v", in, sel.UsesGlobal(), ref.global)
		}
		for _, l := range fuzzLabels(in, seed, 8) {
			if got, want := sel.Matches(l), ref.eval(l); got != want {
				t.Fatalf("Parse(%q).Matches(%v) = %v, reference %v", in, l, got, want)
			}
		}
	})
}

// TestReferenceConformance holds the oracle to the Calico vectors, so that
// agreeing with it means something.
func TestReferenceConformance(t *testing.T) {
	for _, v := range readVectors(t, "testdata/calico-selector-vectors.tsv") {
		ref, ok := refParse(v.selector)
		switch {
		case v.kind == "parse_error" && ok:
			t.Errorf("line %d: reference accepts %q", v.line, v.selector)
		case v.kind != "parse_error" && !ok:
			t.Errorf("line %d: reference rejects %q", v.line, v.selector)
		case v.kind == "match" && ref.eval(v.labels) != (v.expected == "true"):
			t.Errorf("line %d: reference evaluates %q on %v wrongly", v.line, v.selector, v.labels)
		case v.kind == "canonical" && ref.text != v.expected:
			t.Errorf("line %d: reference prints %q as %q, want %q", v.line, v.selector, ref.text, v.expected)
		}
	}
}

// FuzzValidLabelName checks that every key ValidLabelName accepts can be
// named in a selector, which then reads exactly that key.
func FuzzValidLabelName(f *testing.F) {
	for _, k := range []string{"rack", "kubernetes.io/os", "a b", "", "ü", "in", "x)", strings.Repeat("k", 513)} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		if !selector.ValidLabelName(key) {
			return
		}
		for _, text := range []string{"has(" + key + ")", key + ` == "v"`, key + ` not in {"a"}`} {
			s, err := selector.Parse(text)
			if err != nil {
				t.Fatalf("valid label name %q: Parse(%q): %v", key, text, err)
			}
			if got := s.Keys(); len(got) != 1 || got[0] != key {
				t.Fatalf("Parse(%q).Keys() = %q, want [%q]", text, got, key)
			}
		}
	})
}
