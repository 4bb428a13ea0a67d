package selector_test

import (
	"slices"
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

// chooser makes the generator's random choices. Two drivers share one
// generator: rapid, which shrinks failures, and the fuzzer's raw bytes.
type chooser interface {
	// choose returns a number in [0, n); label names the choice.
	choose(n int, label string) int
}

type rapidChooser struct{ t *rapid.T }

func (c rapidChooser) choose(n int, label string) int {
	return rapid.IntRange(0, n-1).Draw(c.t, label)
}

// byteChooser takes one byte per choice and chooses 0 once the bytes run
// out, so that every input is a valid selector.
type byteChooser struct{ b []byte }

func (c *byteChooser) choose(n int, _ string) int {
	if len(c.b) == 0 {
		return 0
	}
	v := int(c.b[0]) % n
	c.b = c.b[1:]
	return v
}

func pick[E any](c chooser, from []E, label string) E {
	return from[c.choose(len(from), label)]
}

// blanks chooses white space to put between tokens, maybe none.
func blanks(c chooser) string {
	return pick(c, []string{"", " ", "\t", "  ", " \t "}, "blanks")
}

func quote(c chooser, v string) string {
	q := pick(c, []string{`"`, `'`}, "quote")
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
func genList(c chooser, sep string, depth int) genExpr {
	n := 1 + c.choose(3, "operands")
	parts := make([]genExpr, n)
	for i := range parts {
		if sep == "||" {
			parts[i] = genList(c, "&&", depth)
		} else {
			parts[i] = genUnary(c, depth)
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
		text:  strings.Join(texts, blanks(c)+sep+blanks(c)),
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

func genUnary(c chooser, depth int) genExpr {
	bangs := c.choose(4, "bangs")
	p := genPrimary(c, depth)
	prefix := ""
	for range bangs {
		prefix += "!" + blanks(c)
	}
	p.text = prefix + p.text
	if bangs%2 == 1 {
		inner := p.eval
		p.eval = func(l selector.Set) bool { return !inner(l) }
		p.canon = "!" + p.canon
	}
	return p
}

func genPrimary(c chooser, depth int) genExpr {
	kinds := []string{"compare", "compare", "set", "has", "all", "global"}
	if depth > 0 {
		kinds = append(kinds, "paren", "paren")
	}
	k := pick(c, genKeys, "key")
	switch pick(c, kinds, "kind") {
	case "has":
		return genExpr{
			text:  "has(" + blanks(c) + k + blanks(c) + ")",
			canon: "has(" + k + ")",
			eval:  func(l selector.Set) bool { _, ok := l[k]; return ok },
		}
	case "all":
		return genExpr{text: "all(" + blanks(c) + ")", canon: "all()", eval: func(selector.Set) bool { return true }}
	case "global":
		return genExpr{text: "global(" + blanks(c) + ")", canon: "global()", eval: func(selector.Set) bool { return true }, global: true}
	case "paren":
		e := genList(c, "||", depth-1)
		e.text = "(" + blanks(c) + e.text + blanks(c) + ")"
		return e
	case "set":
		return genSet(c, k)
	}
	v := pick(c, genValues, "value")
	type cmp struct {
		spellings []string
		canon     string
		absent    bool
		test      func(have, want string) bool
	}
	op := pick(c, []cmp{
		{[]string{"=="}, "==", false, func(h, w string) bool { return h == w }},
		{[]string{"!="}, "!=", true, func(h, w string) bool { return h != w }},
		{[]string{" contains", "\tcontains"}, "contains", false, strings.Contains},
		{[]string{" starts with", " startswith", "\tstarts \twith"}, "starts with", false, strings.HasPrefix},
		{[]string{" ends with", " endswith", " ends  with"}, "ends with", false, strings.HasSuffix},
	}, "operator")
	return genExpr{
		text:  k + blanks(c) + pick(c, op.spellings, "spelling") + blanks(c) + quote(c, v),
		canon: k + " " + op.canon + " " + canonQuote(v),
		eval: func(l selector.Set) bool {
			have, ok := l[k]
			if !ok {
				return op.absent
			}
			return op.test(have, v)
		},
	}
}

func genSet(c chooser, k string) genExpr {
	values := make([]string, c.choose(5, "set size"))
	for i := range values {
		values[i] = pick(c, genValues, "set element")
	}
	not := c.choose(2, "not") == 1
	var texts []string
	for _, v := range values {
		texts = append(texts, blanks(c)+quote(c, v)+blanks(c))
	}
	text := strings.Join(texts, ",")
	if len(values) > 0 && c.choose(2, "trailing comma") == 1 {
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
		op, spelling = "not in", pick(c, []string{" not in", " notin", " not\t in"}, "spelling")
	}
	return genExpr{
		text:  k + spelling + blanks(c) + "{" + text + "}",
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

func genLabels(c chooser) selector.Set {
	l := selector.Set{}
	for _, k := range genKeys {
		if c.choose(2, "present "+k) == 1 {
			l[k] = pick(c, genValues, "value of "+k)
		}
	}
	return l
}

// checkGenerated parses a randomly spelled selector and checks the canonical
// text, UsesGlobal and evaluation against the generator's own meaning of it.
func checkGenerated(t interface{ Fatalf(string, ...any) }, c chooser) {
	e := genList(c, "||", 3)
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
	keys := sel.Keys()
	for range 4 {
		l := genLabels(c)
		got := sel.Matches(l)
		if want := e.eval(l); got != want {
			t.Fatalf("Parse(%q).Matches(%v) = %v, want %v", e.text, l, got, want)
		}
		// Labels that agree with l on the keys the selector reads, whatever
		// they hold otherwise, get the same answer.
		other := genLabels(c)
		for k := range other {
			if slices.Contains(keys, k) {
				delete(other, k)
			}
		}
		for _, k := range keys {
			if v, ok := l[k]; ok {
				other[k] = v
			}
		}
		if sel.Matches(other) != got {
			t.Fatalf("Parse(%q) reads keys %q, but Matches(%v) = %v and Matches(%v) = %v", e.text, keys, l, got, other, !got)
		}
	}
}

func TestGeneratedSelectors(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) { checkGenerated(t, rapidChooser{t}) })
}

// FuzzGenerated lets the fuzzer make the generator's choices.
func FuzzGenerated(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"))
	f.Add([]byte(strings.Repeat("\xff\x7f\x80\x03", 40)))
	f.Fuzz(func(t *testing.T, b []byte) { checkGenerated(t, &byteChooser{b}) })
}
