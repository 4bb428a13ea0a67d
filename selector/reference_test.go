package selector_test

import (
	"regexp"
	"slices"
	"strings"

	"github.com/carve-ipam/carve/selector"
)

// This file holds a second, deliberately plain implementation of the
// selector language, used as an oracle by the fuzz tests: one regular
// expression per token, a token slice, and a parser that builds an
// evaluation closure and the canonical text side by side. It is written for
// obviousness, not speed, and shares no code with the package.

type refToken struct {
	kind string // "label", "string", "has", "all", "global", "eof", or the operator: "==", "not in", "(", ...
	val  string // label name or string contents
}

// refRule recognises one kind of token. context says where: "" anywhere,
// "label" only right after a label, "start" anywhere but right after a label.
type refRule struct {
	kind    string
	context string
	re      *regexp.Regexp
}

var refRules = func() []refRule {
	rules := []struct{ kind, context, re string }{
		{"string", "", `^"([^"]*)"`},
		{"string", "", `^'([^']*)'`},
		{"==", "", `^==`},
		{"!=", "", `^!=`},
		{"!", "", `^!`},
		{"&&", "", `^&&`},
		{"||", "", `^\|\|`},
		{"(", "", `^\(`},
		{")", "", `^\)`},
		{"{", "", `^\{`},
		{"}", "", `^\}`},
		{",", "", `^,`},
		{"contains", "label", `^contains`},
		{"starts with", "label", `^starts[ \t]*with`},
		{"ends with", "label", `^ends[ \t]*with`},
		{"not in", "label", `^not[ \t]*in`},
		{"in", "label", `^in`},
		{"has", "start", `^has\([ \t]*([A-Za-z0-9_./-]+)[ \t]*\)`},
		{"all", "start", `^all\([ \t]*\)`},
		{"global", "start", `^global\([ \t]*\)`},
		{"label", "start", `^([A-Za-z0-9_./-]+)`},
	}
	var out []refRule
	for _, r := range rules {
		out = append(out, refRule{r.kind, r.context, regexp.MustCompile(r.re)})
	}
	return out
}()

var refLabelByte = regexp.MustCompile(`^[A-Za-z0-9_./-]`)

// refTokenize splits s into tokens, or reports false.
func refTokenize(s string) ([]refToken, bool) {
	var toks []refToken
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return append(toks, refToken{kind: "eof"}), true
		}
		afterLabel := len(toks) > 0 && toks[len(toks)-1].kind == "label"
		found := false
		for _, r := range refRules {
			if r.context == "label" && !afterLabel || r.context == "start" && afterLabel {
				continue
			}
			m := r.re.FindStringSubmatch(s)
			if m == nil {
				continue
			}
			rest := s[len(m[0]):]
			if r.context == "label" && refLabelByte.MatchString(rest) {
				continue // "inx" is not "in"
			}
			t := refToken{kind: r.kind}
			if len(m) > 1 {
				t.val = m[1]
			}
			if (t.kind == "label" || t.kind == "has") && len(t.val) > 512 {
				return nil, false
			}
			toks = append(toks, t)
			s = rest
			found = true
			break
		}
		if !found {
			return nil, false
		}
	}
}

// refExpr is a parsed selector: how to evaluate it and how it prints.
type refExpr struct {
	eval   func(map[string]string) bool
	text   string
	global bool
}

type refParser struct {
	toks  []refToken
	depth int
}

func (p *refParser) peek() string { return p.toks[0].kind }

func (p *refParser) take() refToken {
	t := p.toks[0]
	if t.kind != "eof" {
		p.toks = p.toks[1:]
	}
	return t
}

// refParse parses s, or reports false if s is not a valid selector. The
// limits on length and depth apply to the canonical form too: a selector is
// refused if its canonical form would be.
func refParse(s string) (refExpr, bool) {
	e, ok := refParseText(s)
	if !ok {
		return refExpr{}, false
	}
	if _, ok := refParseText(e.text); !ok {
		return refExpr{}, false
	}
	return e, true
}

// refParseText parses s, checking the limits on s alone.
func refParseText(s string) (refExpr, bool) {
	if len(s) > selector.MaxLength {
		return refExpr{}, false
	}
	toks, ok := refTokenize(s)
	if !ok {
		return refExpr{}, false
	}
	p := &refParser{toks: toks}
	if p.peek() == "eof" {
		return refExpr{eval: func(map[string]string) bool { return true }, text: "all()"}, true
	}
	e, ok := p.list("||")
	if !ok || p.peek() != "eof" {
		return refExpr{}, false
	}
	return e, true
}

// list parses operands separated by sep, "||" or "&&".
func (p *refParser) list(sep string) (refExpr, bool) {
	var parts []refExpr
	for {
		var e refExpr
		var ok bool
		if sep == "||" {
			e, ok = p.list("&&")
		} else {
			e, ok = p.unary()
		}
		if !ok {
			return refExpr{}, false
		}
		parts = append(parts, e)
		if p.peek() != sep {
			break
		}
		p.take()
	}
	if len(parts) == 1 {
		return parts[0], true
	}
	var texts []string
	global := false
	for _, e := range parts {
		texts = append(texts, e.text)
		global = global || e.global
	}
	eval := func(l map[string]string) bool {
		for _, e := range parts {
			if e.eval(l) == (sep == "||") {
				return sep == "||"
			}
		}
		return sep == "&&"
	}
	return refExpr{eval, "(" + strings.Join(texts, " "+sep+" ") + ")", global}, true
}

func (p *refParser) unary() (refExpr, bool) {
	bangs := 0
	for p.peek() == "!" {
		p.take()
		bangs++
	}
	e, ok := p.primary()
	if !ok || bangs%2 == 0 {
		return e, ok
	}
	return refExpr{func(l map[string]string) bool { return !e.eval(l) }, "!" + e.text, e.global}, true
}

func refQuote(s string) string {
	if strings.Contains(s, `"`) {
		return "'" + s + "'"
	}
	return `"` + s + `"`
}

func (p *refParser) primary() (refExpr, bool) {
	t := p.take()
	switch t.kind {
	case "has":
		k := t.val
		return refExpr{func(l map[string]string) bool { _, ok := l[k]; return ok }, "has(" + k + ")", false}, true
	case "all":
		return refExpr{func(map[string]string) bool { return true }, "all()", false}, true
	case "global":
		return refExpr{func(map[string]string) bool { return true }, "global()", true}, true
	case "(":
		p.depth++
		if p.depth > selector.MaxDepth {
			return refExpr{}, false
		}
		e, ok := p.list("||")
		if !ok || p.take().kind != ")" {
			return refExpr{}, false
		}
		p.depth--
		return e, true
	case "label":
		return p.comparison(t.val)
	}
	return refExpr{}, false
}

func (p *refParser) comparison(k string) (refExpr, bool) {
	op := p.take().kind
	switch op {
	case "in", "not in":
		if p.take().kind != "{" {
			return refExpr{}, false
		}
		var set []string
		for p.peek() == "string" {
			set = append(set, p.take().val)
			if p.peek() != "," {
				break
			}
			p.take()
		}
		if p.take().kind != "}" {
			return refExpr{}, false
		}
		in := func(l map[string]string) bool { v, ok := l[k]; return ok && slices.Contains(set, v) }
		var quoted []string
		for _, v := range set {
			if !slices.Contains(quoted, refQuote(v)) {
				quoted = append(quoted, refQuote(v))
			}
		}
		// Sorted by contents, not by quoted text.
		slices.SortFunc(quoted, func(a, b string) int { return strings.Compare(a[1:len(a)-1], b[1:len(b)-1]) })
		text := k + " " + op + " {" + strings.Join(quoted, ", ") + "}"
		if op == "in" {
			return refExpr{in, text, false}, true
		}
		return refExpr{func(l map[string]string) bool { return !in(l) }, text, false}, true
	case "==", "!=", "contains", "starts with", "ends with":
		s := p.take()
		if s.kind != "string" {
			return refExpr{}, false
		}
		v := s.val
		var test func(string) bool
		switch op {
		case "==":
			test = func(x string) bool { return x == v }
		case "!=":
			test = func(x string) bool { return x != v }
		case "contains":
			test = func(x string) bool { return strings.Contains(x, v) }
		case "starts with":
			test = func(x string) bool { return strings.HasPrefix(x, v) }
		case "ends with":
			test = func(x string) bool { return strings.HasSuffix(x, v) }
		}
		absent := op == "!=" // the only one of these that an absent label satisfies
		eval := func(l map[string]string) bool {
			x, ok := l[k]
			if !ok {
				return absent
			}
			return test(x)
		}
		return refExpr{eval, k + " " + op + " " + refQuote(v), false}, true
	}
	return refExpr{}, false
}
