package selector_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/carve-ipam/carve/selector"
)

// vector is one line of testdata/calico-selector-vectors.tsv, taken from
// Calico's own tests and checked against Calico's parser and evaluator.
type vector struct {
	line     int
	kind     string // match, parse_error or canonical
	selector string
	labels   selector.Set
	expected string
}

// unescapeVector undoes the escapes of the vector file: \\ for a backslash,
// \t, \n and \r for TAB, LF and CR.
func unescapeVector(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 == len(s) {
			return "", fmt.Errorf("%q: lone backslash at the end", s)
		}
		i++
		switch s[i] {
		case '\\':
			b.WriteByte('\\')
		case 't':
			b.WriteByte('\t')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		default:
			return "", fmt.Errorf("%q: unknown escape \\%c", s, s[i])
		}
	}
	return b.String(), nil
}

func readVectors(t *testing.T, path string) []vector {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var vs []vector
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for line := 1; sc.Scan(); line++ {
		cols := strings.Split(sc.Text(), "\t")
		if len(cols) != 4 {
			t.Fatalf("%s:%d: %d columns, want 4", path, line, len(cols))
		}
		v := vector{line: line, kind: cols[0]}
		if v.selector, err = unescapeVector(cols[1]); err != nil {
			t.Fatalf("%s:%d: %v", path, line, err)
		}
		if v.expected, err = unescapeVector(cols[3]); err != nil {
			t.Fatalf("%s:%d: %v", path, line, err)
		}
		if err := json.Unmarshal([]byte(cols[2]), &v.labels); err != nil {
			t.Fatalf("%s:%d: labels: %v", path, line, err)
		}
		vs = append(vs, v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return vs
}

// vectorName makes a readable subtest name: the line, the kind and the start
// of the selector.
func vectorName(v vector) string {
	sel := v.selector
	if len(sel) > 40 {
		sel = sel[:40] + "..."
	}
	if strings.TrimSpace(sel) == "" {
		sel = "(blank)"
	}
	return fmt.Sprintf("%03d-%s/%s", v.line, v.kind, sel)
}

func TestCalicoConformance(t *testing.T) {
	vs := readVectors(t, "testdata/calico-selector-vectors.tsv")
	if len(vs) != 583 {
		t.Fatalf("read %d vectors, want 583", len(vs))
	}
	for _, v := range vs {
		t.Run(vectorName(v), func(t *testing.T) {
			sel, err := selector.Parse(v.selector)
			switch v.kind {
			case "parse_error":
				if err == nil {
					t.Fatalf("Parse(%q) = %q, want an error", v.selector, sel)
				}
				var se *selector.SyntaxError
				if !errors.As(err, &se) {
					t.Fatalf("Parse(%q) error %T, want *SyntaxError", v.selector, err)
				}
				if se.Input != v.selector || se.Offset < 0 || se.Offset > len(v.selector) {
					t.Fatalf("Parse(%q): %+v: wrong input or offset out of range", v.selector, se)
				}
			case "match":
				if err != nil {
					t.Fatal(err)
				}
				want := v.expected == "true"
				if got := sel.Matches(v.labels); got != want {
					t.Errorf("Parse(%q).Matches(%v) = %v, want %v", v.selector, v.labels, got, want)
				}
			case "canonical":
				if err != nil {
					t.Fatal(err)
				}
				if got := sel.String(); got != v.expected {
					t.Errorf("Parse(%q).String() = %q, want %q", v.selector, got, v.expected)
				}
				if _, err := selector.Parse(v.expected); err != nil {
					t.Errorf("canonical form does not parse: %v", err)
				}
			default:
				t.Fatalf("unknown kind %q", v.kind)
			}
		})
	}
}
