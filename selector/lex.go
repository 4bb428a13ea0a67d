package selector

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// tokKind is the kind of a token.
type tokKind uint8

const (
	tEOF        tokKind = iota
	tLabel              // a label name: val
	tString             // a quoted string: val is its contents
	tLParen             // (
	tRParen             // )
	tLBrace             // {
	tRBrace             // }
	tComma              // ,
	tEq                 // ==
	tNe                 // !=
	tNot                // !
	tAnd                // &&
	tOr                 // ||
	tIn                 // in
	tNotIn              // not in, notin
	tContains           // contains
	tStartsWith         // starts with, startswith
	tEndsWith           // ends with, endswith
	tHas                // has(label): val is the label
	tAll                // all()
	tGlobal             // global()
)

// token is one lexeme; off and end are byte offsets into the input.
type token struct {
	kind tokKind
	off  int
	end  int
	val  string
}

// operatorWords are the word operators, recognised only right after a label
// and tried in this order. Words of one operator may be separated by spaces
// and tabs or not at all ("not in", "notin"); the last word must not run on
// into label characters ("inx" is not "in").
var operatorWords = [...]struct {
	kind  tokKind
	words []string
}{
	{tContains, []string{"contains"}},
	{tStartsWith, []string{"starts", "with"}},
	{tEndsWith, []string{"ends", "with"}},
	{tNotIn, []string{"not", "in"}},
	{tIn, []string{"in"}},
}

// lexer splits a selector into tokens on demand. Keywords depend on context,
// as in Calico: "in", "contains" and the other word operators exist only right
// after a label, and "has(", "all(" and "global(" only where a label could
// start, so every word is also usable as a label name.
type lexer struct {
	in   string
	pos  int
	prev token // the token returned last
}

func isLabelByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '_' || c == '.' || c == '/' || c == '-'
}

// skipBlanks returns the offset of the first byte at or after i that is
// neither a space nor a tab.
func skipBlanks(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	return i
}

// labelEnd returns the offset just past the run of label bytes starting at i.
func labelEnd(s string, i int) int {
	for i < len(s) && isLabelByte(s[i]) {
		i++
	}
	return i
}

// next returns the next token, or a *SyntaxError.
func (lx *lexer) next() (token, error) {
	start := skipBlanks(lx.in, lx.pos)
	t, err := lx.scan(start)
	if err != nil {
		return token{}, err
	}
	lx.pos = t.end
	lx.prev = t
	return t, nil
}

func (lx *lexer) scan(start int) (token, error) {
	in := lx.in
	if start == len(in) {
		return token{kind: tEOF, off: start, end: start}, nil
	}
	single := func(k tokKind) (token, error) { return token{kind: k, off: start, end: start + 1}, nil }
	double := func(k tokKind, pair string) (token, error) {
		if !strings.HasPrefix(in[start:], pair) {
			return token{}, lx.errorf(start, "expected %q, found %q", pair, in[start:start+1])
		}
		return token{kind: k, off: start, end: start + 2}, nil
	}
	switch c := in[start]; c {
	case '(':
		return single(tLParen)
	case ')':
		return single(tRParen)
	case '{':
		return single(tLBrace)
	case '}':
		return single(tRBrace)
	case ',':
		return single(tComma)
	case '=':
		return double(tEq, "==")
	case '&':
		return double(tAnd, "&&")
	case '|':
		return double(tOr, "||")
	case '!':
		if strings.HasPrefix(in[start:], "!=") {
			return token{kind: tNe, off: start, end: start + 2}, nil
		}
		return single(tNot)
	case '"', '\'':
		// No escapes: a string runs to the next quote of the same kind.
		n := strings.IndexByte(in[start+1:], c)
		if n < 0 {
			name := "double"
			if c == '\'' {
				name = "single"
			}
			return token{}, lx.errorf(start, "unterminated string: no closing %s quote", name)
		}
		return token{kind: tString, off: start, end: start + n + 2, val: in[start+1 : start+1+n]}, nil
	}
	if !isLabelByte(in[start]) {
		return token{}, lx.unexpected(start)
	}
	if lx.prev.kind == tLabel {
		return lx.operator(start)
	}
	switch rest := in[start:]; {
	case strings.HasPrefix(rest, "has("):
		return lx.has(start)
	case strings.HasPrefix(rest, "all("):
		return lx.call(start, tAll, "all(")
	case strings.HasPrefix(rest, "global("):
		return lx.call(start, tGlobal, "global(")
	}
	end := labelEnd(in, start)
	if err := lx.checkLabelLen(start, end); err != nil {
		return token{}, err
	}
	return token{kind: tLabel, off: start, end: end, val: in[start:end]}, nil
}

// has scans "has(label)", which is one token.
func (lx *lexer) has(start int) (token, error) {
	in := lx.in
	i := skipBlanks(in, start+len("has("))
	j := labelEnd(in, i)
	if j == i {
		return token{}, lx.expected(i, `a label name after "has("`)
	}
	if err := lx.checkLabelLen(i, j); err != nil {
		return token{}, err
	}
	k := skipBlanks(in, j)
	if k == len(in) || in[k] != ')' {
		return token{}, lx.expected(k, `")" to close "has("`)
	}
	return token{kind: tHas, off: start, end: k + 1, val: in[i:j]}, nil
}

// call scans a function without arguments, "all()" or "global()", which is
// one token.
func (lx *lexer) call(start int, k tokKind, open string) (token, error) {
	i := skipBlanks(lx.in, start+len(open))
	if i == len(lx.in) || lx.in[i] != ')' {
		return token{}, lx.expected(i, fmt.Sprintf(`")" after %q (%s) takes no arguments)`, open, open))
	}
	return token{kind: k, off: start, end: i + 1}, nil
}

// operator scans the word operator that must follow a label.
func (lx *lexer) operator(start int) (token, error) {
	in := lx.in
	for _, op := range operatorWords {
		i := start
		for w, word := range op.words {
			if w > 0 {
				i = skipBlanks(in, i)
			}
			if !strings.HasPrefix(in[i:], word) {
				i = -1
				break
			}
			i += len(word)
		}
		if i >= 0 && (i == len(in) || !isLabelByte(in[i])) {
			return token{kind: op.kind, off: start, end: i}, nil
		}
	}
	return token{}, lx.errorf(start, "expected %s, found %q", wantOperator(lx.prev.val), in[start:labelEnd(in, start)])
}

// wantOperator describes what must follow a label.
func wantOperator(label string) string {
	return fmt.Sprintf("an operator (==, !=, in, not in, contains, starts with, ends with) after label %q", label)
}

func (lx *lexer) checkLabelLen(i, j int) error {
	if j-i > MaxLabelLength {
		return lx.errorf(i, "label is %d bytes long; the limit is %d", j-i, MaxLabelLength)
	}
	return nil
}

// unexpected reports a byte that cannot start any token.
func (lx *lexer) unexpected(i int) error {
	r, size := utf8.DecodeRuneInString(lx.in[i:])
	if r == utf8.RuneError && size <= 1 {
		return lx.errorf(i, "unexpected byte 0x%02x (not UTF-8)", lx.in[i])
	}
	if unicode.IsSpace(r) {
		return lx.errorf(i, "unexpected character %q: only spaces and tabs may separate tokens", r)
	}
	return lx.errorf(i, "unexpected character %q", r)
}

// expected reports that what was wanted is missing at offset i, naming the
// character found there unless i is the end of the input.
func (lx *lexer) expected(i int, what string) error {
	if i == len(lx.in) {
		return lx.errorf(i, "expected %s", what)
	}
	r, _ := utf8.DecodeRuneInString(lx.in[i:])
	return lx.errorf(i, "expected %s, found %s", what, strconv.QuoteRune(r))
}

func (lx *lexer) errorf(off int, format string, args ...any) error {
	return &SyntaxError{Input: lx.in, Offset: off, Msg: fmt.Sprintf(format, args...)}
}
