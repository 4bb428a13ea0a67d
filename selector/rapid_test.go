package selector_test

import (
	"strings"
	"testing"

	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/selector"
)

// genExpr is a randomly generated selector: its source text, spelled and
// spaced at random, together with what the source must mean, built from the
// generator's own definitions rather than the package's.
type genExpr struct {
	text   string
	canon  string // the canonical form Parse(text).String() must return
	eval   func(selector.Set) bool
	global bool
}

// Keys that are keywords elsewhere, and values with quotes, operators and
// white space in them, to catch a lexer that looks too far or too little.
var (
	genKeys   = []string{"a", "rack", "zone", "kubernetes.io/os", "in", "not", "notin", "has", "all", "global", "contains", "starts", "with", "-", "x_1.2"}
	genValues = []string{"", "0", "1", "a", "linux", "it's", `say "hi"`, "ü", "x y", "\t", "!!", "&& ||", "a in {}", ")", "\n"}
)

// blanks draws separating white space; at least min bytes of it.
func blanks(t *rapid.T, min int) string {
	return rapid.SampledFrom([]string{"", " ", "\t", "  ", " \t "}[min:]).Draw(t, "blanks")
}

func quote(t *rapid.T, v string) string {
	q := rapid.SampledFrom([]string{`"`, `'`}).Draw(t, "quote")
	switch {
	case strings.Contains(v, `"`):
		q = `'`
	case strings.Contains(v, `'`):
		q = `"`
	}
	return q + v + q
}

func canonQuote(v string) string {
	if strings.Contains(v, `"`) {
		return `'` + v + `'`
	}
	return `"` + v + `"`
}

// genList draws an || list of && lists (and when sep is "&&", of unaries).
func genList(t *rapid.T, sep string, depth int) genExpr {
	n := rapid.IntRange(1, 3).Draw(t, "operands")
	parts := make([]genExpr, n)
	for i := range parts {
		if sep == "||" {
			parts[i] = genList(t, "&&", depth)
		} else {
			parts[i] = genUnary(t, depth)
		}
	}
	if n == 1 {
		return parts[0]
	}
	var texts, canons []string
	global := false
	for _, p := range parts {
		texts = append(texts, p.text)
		canons = append(canons, p.canon)
		global = global || p.global
	}
	return genExpr{
		text:  strings.Join(texts, blanks(t, 0)+sep+blanks(t, 0)),
		canon: "(" + strings.Join(canons, " "+sep+" ") + ")",
		eval: func(l selector.Set) bool {
			for _, p := range parts {
				if p.eval(l) != (sep == "&&") {
					return sep == "||"
				}
			}
			return sep == "&&"
		},
		global: global,
	}
}

func genUnary(t *rapid.T, depth int) genExpr {
	bangs := rapid.IntRange(0, 3).Draw(t, "bangs")
	p := genPrimary(t, depth)
	prefix := ""
	for range bangs {
		prefix += "!" + blanks(t, 0)
	}
	p.text = prefix + p.text
	if bangs%2 == 1 {
		inner := p.eval
		p.eval = func(l selector.Set) bool { return !inner(l) }
		p.canon = "!" + p.canon
	}
	return p
}

func genPrimary(t *rapid.T, depth int) genExpr {
	kinds := []string{"compare", "compare", "set", "has", "all", "global"}
	if depth > 0 {
		kinds = append(kinds, "paren", "paren")
	}
	k := rapid.SampledFrom(genKeys).Draw(t, "key")
	switch rapid.SampledFrom(kinds).Draw(t, "kind") {
	case "has":
		return genExpr{
			text:  "has(" + blanks(t, 0) + k + blanks(t, 0) + ")",
			canon: "has(" + k + ")",
			eval:  func(l selector.Set) bool { _, ok := l[k]; return ok },
		}
	case "all":
		return genExpr{text: "all(" + blanks(t, 0) + ")", canon: "all()", eval: func(selector.Set) bool { return true }}
	case "global":
		return genExpr{text: "global(" + blanks(t, 0) + ")", canon: "global()", eval: func(selector.Set) bool { return true }, global: true}
	case "paren":
		e := genList(t, "||", depth-1)
		e.text = "(" + blanks(t, 0) + e.text + blanks(t, 0) + ")"
		return e
	case "set":
		return genSet(t, k)
	}
	v := rapid.SampledFrom(genValues).Draw(t, "value")
	type cmp struct {
		spellings []string
		canon     string
		absent    bool
		test      func(have, want string) bool
	}
	c := rapid.SampledFrom([]cmp{
		{[]string{"=="}, "==", false, func(h, w string) bool { return h == w }},
		{[]string{"!="}, "!=", true, func(h, w string) bool { return h != w }},
		{[]string{" contains", "\tcontains"}, "contains", false, strings.Contains},
		{[]string{" starts with", " startswith", "\tstarts \twith"}, "starts with", false, strings.HasPrefix},
		{[]string{" ends with", " endswith", " ends  with"}, "ends with", false, strings.HasSuffix},
	}).Draw(t, "operator")
	return genExpr{
		text:  k + blanks(t, 0) + rapid.SampledFrom(c.spellings).Draw(t, "spelling") + blanks(t, 0) + quote(t, v),
		canon: k + " " + c.canon + " " + canonQuote(v),
		eval: func(l selector.Set) bool {
			have, ok := l[k]
			if !ok {
				return c.absent
			}
			return c.test(have, v)
		},
	}
}

func genSet(t *rapid.T, k string) genExpr {
	values := rapid.SliceOfN(rapid.SampledFrom(genValues), 0, 4).Draw(t, "set")
	not := rapid.Bool().Draw(t, "not")
	var texts []string
	for _, v := range values {
		texts = append(texts, blanks(t, 0)+quote(t, v)+blanks(t, 0))
	}
	text := strings.Join(texts, ",")
	if len(values) > 0 && rapid.Bool().Draw(t, "trailing comma") {
		text += ","
	}
	// Expected canonical set: every distinct value once, in byte order,
	// found by selection rather than by sorting.
	var sorted []string
	for {
		next, found := "", false
		for _, v := range values {
			if (len(sorted) == 0 || v > sorted[len(sorted)-1]) && (!found || v < next) {
				next, found = v, true
			}
		}
		if !found {
			break
		}
		sorted = append(sorted, next)
	}
	var canons []string
	for _, v := range sorted {
		canons = append(canons, canonQuote(v))
	}
	op, spelling := "in", " in"
	if not {
		op, spelling = "not in", rapid.SampledFrom([]string{" not in", " notin", " not\t in"}).Draw(t, "spelling")
	}
	return genExpr{
		text:  k + spelling + blanks(t, 0) + "{" + text + "}",
		canon: k + " " + op + " {" + strings.Join(canons, ", ") + "}",
		eval: func(l selector.Set) bool {
			have, ok := l[k]
			in := false
			for _, v := range values {
				in = in || ok && have == v
			}
			return in != not
		},
	}
}

func genLabels(t *rapid.T) selector.Set {
	l := selector.Set{}
	for _, k := range genKeys {
		if rapid.Bool().Draw(t, "present "+k) {
			l[k] = rapid.SampledFrom(genValues).Draw(t, "value of "+k)
		}
	}
	return l
}

// TestGeneratedSelectors parses randomly spelled selectors and checks the
// canonical text, UsesGlobal and evaluation against the generator's own
// meaning of them.
func TestGeneratedSelectors(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		e := genList(t, "||", 3)
		sel, err := selector.Parse(e.text)
		if err != nil {
			t.Fatalf("Parse(%q): %v", e.text, err)
		}
		if got := sel.String(); got != e.canon {
			t.Fatalf("Parse(%q).String() = %q, want %q", e.text, got, e.canon)
		}
		if sel.UsesGlobal() != e.global {
			t.Fatalf("Parse(%q).UsesGlobal() = %v", e.text, sel.UsesGlobal())
		}
		for range 4 {
			l := genLabels(t)
			if got, want := sel.Matches(l), e.eval(l); got != want {
				t.Fatalf("Parse(%q).Matches(%v) = %v, want %v", e.text, l, got, want)
			}
		}
	})
}
