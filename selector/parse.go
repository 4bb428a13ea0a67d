package selector

import (
	"fmt"
	"slices"
)

// Limits that Calico does not have; they make sure hostile input gets an
// error rather than a stack overflow or unbounded work.
const (
	// MaxLength is the longest selector, in bytes, that Parse accepts. The
	// canonical form of the selector must fit too, so that Parse accepts
	// whatever [Selector.String] prints.
	MaxLength = 64 << 10
	// MaxDepth is how deeply Parse lets parentheses nest, both in the
	// selector as written and in its canonical form, which puts every &&
	// and || group in parentheses.
	MaxDepth = 100
	// MaxLabelLength is the longest label name, in bytes (a Calico limit).
	MaxLabelLength = 512
)

// Parse parses a selector in Calico's label-selector language. The empty
// selector, and one of only spaces and tabs, is all(). Every error is a
// *SyntaxError that gives the byte offset of the problem. With an error,
// Parse returns None(), so that a caller who drops the error selects
// nothing rather than everything (the zero Selector matches everything).
//
// The grammar, with || binding loosest; tokens may be separated by spaces and
// tabs, and "{ x }" means zero or more x:
//
//	selector    = [ or ] EOF
//	or          = and { "||" and }
//	and         = unary { "&&" unary }
//	unary       = { "!" } primary                runs of ! fold by parity
//	primary     = "has(" label ")" | "all(" ")" | "global(" ")"
//	            | "(" or ")"
//	            | label ( "==" | "!=" | "contains" | starts-with | ends-with ) string
//	            | label ( "in" | not-in ) "{" [ string { "," string } [ "," ] ] "}"
//	starts-with = "starts" "with" | "startswith"
//	ends-with   = "ends" "with" | "endswith"
//	not-in      = "not" "in" | "notin"
//	label       = 1 to 512 bytes of [A-Za-z0-9_./-]
//	string      = '"' { any byte but '"' } '"' | "'" { any byte but "'" } "'"
//
// "has(", "all(" and "global(" are single tokens: no space before the "(".
// The word operators are lower case and are recognised only right after a
// label, so that every word, "in" and "has" included, is also a valid label.
// Strings have no escapes. Parentheses nest at most [MaxDepth] deep and the
// input is at most [MaxLength] bytes long; both limits apply to the canonical
// form as well, so that Parse accepts whatever [Selector.String] prints.
func Parse(s string) (Selector, error) {
	p := parser{lx: lexer{in: s}}
	if len(s) > MaxLength {
		return None(), p.errorf(MaxLength, "selector is %d bytes long; the limit is %d", len(s), MaxLength)
	}
	if err := p.advance(); err != nil {
		return None(), err
	}
	if p.tok.kind == tEOF {
		return All(), nil
	}
	root, err := p.or()
	if err != nil {
		return None(), err
	}
	if p.tok.kind != tEOF {
		return None(), p.expected(`"&&", "||" or the end of the selector`)
	}
	switch {
	case root.op == opAll:
		return All(), nil
	case root.op == opNot && root.kids[0].op == opAll:
		return None(), nil
	}
	var buf [256]byte // most selectors print without a heap buffer
	text := root.appendText(buf[:0])
	if len(text) > MaxLength {
		return None(), p.errorf(len(s), "selector is %d bytes long in canonical form; the limit is %d", len(text), MaxLength)
	}
	return Selector{&tree{root: root, text: string(text), global: p.global}}, nil
}

// MustParse is like Parse but panics with the *SyntaxError if s is not a
// valid selector. It is intended for use in tests and with hard-coded
// selectors.
func MustParse(s string) Selector {
	sel, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return sel
}

// parser is a recursive-descent parser with one token of lookahead and one
// method per grammar rule.
type parser struct {
	lx     lexer
	tok    token // the lookahead
	depth  int   // parentheses open around the lookahead
	global bool  // global() seen
}

func (p *parser) advance() error {
	t, err := p.lx.next()
	if err != nil {
		return err
	}
	p.tok = t
	return nil
}

// or parses: and { "||" and }.
func (p *parser) or() (node, error) { return p.list(opOr) }

// and parses: unary { "&&" unary }.
func (p *parser) and() (node, error) { return p.list(opAnd) }

// list parses the operands of o, an || or && list; a lone operand stands for
// itself.
func (p *parser) list(o op) (node, error) {
	sep := tAnd
	if o == opOr {
		sep = tOr
	}
	start := p.tok.off
	first, err := p.operand(o)
	if err != nil || p.tok.kind != sep {
		return first, err
	}
	kids := []node{first}
	nest := first.nest
	for p.tok.kind == sep {
		if err := p.advance(); err != nil {
			return node{}, err
		}
		n, err := p.operand(o)
		if err != nil {
			return node{}, err
		}
		kids = append(kids, n)
		nest = max(nest, n.nest)
	}
	// The canonical form puts the group in parentheses; it must parse too.
	if nest >= MaxDepth {
		return node{}, p.errorf(start, "&& and || groups nest more than %d deep in canonical form, which puts each group in parentheses", MaxDepth)
	}
	return node{op: o, kids: kids, nest: nest + 1}, nil
}

// operand parses one operand of an || or && list.
func (p *parser) operand(o op) (node, error) {
	if o == opOr {
		return p.and()
	}
	return p.unary()
}

// unary parses: { "!" } primary.
func (p *parser) unary() (node, error) {
	negate := false
	for p.tok.kind == tNot {
		negate = !negate
		if err := p.advance(); err != nil {
			return node{}, err
		}
	}
	n, err := p.primary()
	if err != nil || !negate {
		return n, err
	}
	return node{op: opNot, kids: []node{n}, nest: n.nest}, nil
}

// primary parses a function, a parenthesised expression or a comparison.
func (p *parser) primary() (node, error) {
	t := p.tok
	switch t.kind {
	case tHas:
		return node{op: opHas, label: t.val}, p.advance()
	case tAll:
		return node{op: opAll}, p.advance()
	case tGlobal:
		p.global = true
		return node{op: opGlobal}, p.advance()
	case tLParen:
		if p.depth == MaxDepth {
			return node{}, p.errorf(t.off, "parentheses nested more than %d deep", MaxDepth)
		}
		p.depth++
		if err := p.advance(); err != nil {
			return node{}, err
		}
		n, err := p.or()
		if err != nil {
			return node{}, err
		}
		if p.tok.kind != tRParen {
			return node{}, p.expected(fmt.Sprintf(`")" to close the "(" at offset %d`, t.off))
		}
		p.depth--
		return n, p.advance()
	case tLabel:
		if err := p.advance(); err != nil {
			return node{}, err
		}
		return p.comparison(t.val)
	}
	return node{}, p.expected(`a comparison, has(), all(), global(), "!" or "("`)
}

// comparison parses what follows the label of a comparison.
func (p *parser) comparison(label string) (node, error) {
	var o op
	switch p.tok.kind {
	case tEq:
		o = opEq
	case tNe:
		o = opNe
	case tContains:
		o = opContains
	case tStartsWith:
		o = opStartsWith
	case tEndsWith:
		o = opEndsWith
	case tIn:
		o = opIn
	case tNotIn:
		o = opNotIn
	default:
		if p.tok.kind == tLParen && (label == "has" || label == "all" || label == "global") {
			return node{}, p.errorf(p.tok.off, "unexpected \"(\" after label %q: write %s( with no space before the \"(\"", label, label)
		}
		return node{}, p.expected(wantOperator(label))
	}
	opTok := p.tok
	if err := p.advance(); err != nil {
		return node{}, err
	}
	if o == opIn || o == opNotIn {
		set, err := p.set(opTok)
		return node{op: o, label: label, set: set}, err
	}
	if p.tok.kind != tString {
		return node{}, p.expected(fmt.Sprintf("a string after %q", p.text(opTok)))
	}
	n := node{op: o, label: label, value: p.tok.val}
	return n, p.advance()
}

// set parses: "{" [ string { "," string } [ "," ] ] "}", returning the
// strings sorted and without duplicates.
func (p *parser) set(opTok token) ([]string, error) {
	if p.tok.kind != tLBrace {
		return nil, p.expected(fmt.Sprintf(`"{" to start a set after %q`, p.text(opTok)))
	}
	if err := p.advance(); err != nil {
		return nil, err
	}
	var set []string
	for p.tok.kind == tString {
		set = append(set, p.tok.val)
		if err := p.advance(); err != nil {
			return nil, err
		}
		if p.tok.kind != tComma {
			if p.tok.kind != tRBrace {
				return nil, p.expected(`"," or "}" after a set element`)
			}
			break
		}
		if err := p.advance(); err != nil {
			return nil, err
		}
	}
	if p.tok.kind != tRBrace {
		return nil, p.expected(`a string or "}" in a set`)
	}
	slices.Sort(set)
	return slices.Compact(set), p.advance()
}

// text returns the source text of t.
func (p *parser) text(t token) string {
	return p.lx.in[t.off:t.end]
}

// expected reports that the lookahead is not what was wanted, naming it
// unless it is the end of the input.
func (p *parser) expected(what string) error {
	t := p.tok
	switch t.kind {
	case tEOF:
		return p.errorf(t.off, "expected %s", what)
	case tLabel:
		return p.errorf(t.off, "expected %s, found label %q", what, t.val)
	case tString:
		return p.errorf(t.off, "expected %s, found string %q", what, t.val)
	}
	return p.errorf(t.off, "expected %s, found %q", what, p.text(t))
}

func (p *parser) errorf(off int, format string, args ...any) error {
	return p.lx.errorf(off, format, args...)
}
