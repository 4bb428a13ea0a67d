package selector_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/selector"
)

// canonicalCase is an accepted selector and the text it prints as.
type canonicalCase struct {
	in, want string
}

func checkCanonical(t *testing.T, cases []canonicalCase) {
	t.Helper()
	for _, c := range cases {
		sel, err := selector.Parse(c.in)
		if assert.NoError(t, err, "Parse(%q)", c.in) {
			assert.Equal(t, c.want, sel.String(), "Parse(%q).String()", c.in)
		}
	}
}

func TestTokens(t *testing.T) {
	long := strings.Repeat("k", selector.MaxLabelLength)
	checkCanonical(t, []canonicalCase{
		// Spaces and tabs anywhere between tokens, none needed around symbols.
		{" \t a\t==\t'b' \t", `a == "b"`},
		{`a=="b"&&c!="d"||!has(e)`, `((a == "b" && c != "d") || !has(e))`},
		// Every label byte class, and labels that look like anything else.
		{`aZ09_./- == "x"`, `aZ09_./- == "x"`},
		{`--- == "x"`, `--- == "x"`},
		{`... in {}`, `... in {}`},
		{long + ` == "x"`, long + ` == "x"`},
		{"has(" + long + ")", "has(" + long + ")"},
		// No reserved words: keywords are labels where a label can stand.
		{`in in {"in"}`, `in in {"in"}`},
		{`notin notin {}`, `notin not in {}`},
		{`not not in {}`, `not not in {}`},
		{`contains contains "contains"`, `contains contains "contains"`},
		{`starts starts with "x"`, `starts starts with "x"`},
		{`with ends with "x"`, `with ends with "x"`},
		{`has != "x"`, `has != "x"`},
		{`all == "x" && global == "y"`, `(all == "x" && global == "y")`},
		{`has(has) && has(all) && has(in)`, `(has(has) && has(all) && has(in))`},
		// Word operators in every spelling Calico accepts.
		{`a notin {"x"}`, `a not in {"x"}`},
		{"a not \t in {\"x\"}", `a not in {"x"}`},
		{`a startswith "x"`, `a starts with "x"`},
		{`a endswith "x"`, `a ends with "x"`},
		{"a starts\t\twith 'x'", `a starts with "x"`},
		// A word operator may run straight into a quote or a brace.
		{`a in{"x"}`, `a in {"x"}`},
		{`a notin{}`, `a not in {}`},
		{`a contains'x'`, `a contains "x"`},
		{`a ends with"x"`, `a ends with "x"`},
		// Functions: spaces inside the parentheses, none before them.
		{"has( \ta\t )", "has(a)"},
		{"all( \t)", "all()"},
		{"global(\t)", "global()"},
		// Strings hold any byte but their own quote, with no escapes.
		{`a == "\"`, `a == "\"`},
		{`a == '"'`, `a == '"'`},
		{"a == \"\x00\xff\n\r\"", "a == \"\x00\xff\n\r\""},
		{`a == "\n"`, `a == "\n"`},
		{`a == ""`, `a == ""`},
		{`a == ''`, `a == ""`},
	})
}

func TestPrecedence(t *testing.T) {
	checkCanonical(t, []canonicalCase{
		{"has(a) || has(b) && has(c)", "(has(a) || (has(b) && has(c)))"},
		{"has(a) && has(b) || has(c)", "((has(a) && has(b)) || has(c))"},
		{"has(a) && has(b) && has(c) && has(d)", "(has(a) && has(b) && has(c) && has(d))"},
		{"has(a) || has(b) || has(c)", "(has(a) || has(b) || has(c))"},
		{"(has(a) || has(b)) && has(c)", "((has(a) || has(b)) && has(c))"},
		{"(has(a) && has(b)) && has(c)", "((has(a) && has(b)) && has(c))"},
		{"!has(a) && has(b)", "(!has(a) && has(b))"},
		{"!(has(a) && has(b))", "!(has(a) && has(b))"},
		{`!a == "b" || c in {}`, `(!a == "b" || c in {})`},
		{"!!has(a)", "has(a)"},
		{"! ! ! has(a)", "!has(a)"},
		{"!!!!has(a)", "has(a)"},
		// Parentheses stop the folding of ! runs, as in Calico.
		{"!(!has(a))", "!!has(a)"},
		{"!(!(!has(a)))", "!!!has(a)"},
		{"!!(!has(a))", "!has(a)"},
		{"((has(a)))", "has(a)"},
		{"(((has(a))) && ((has(b))))", "(has(a) && has(b))"},
	})

	// The same precedence in evaluation: && before ||, ! before &&.
	l := selector.Set{"a": "1"}
	for in, want := range map[string]bool{
		`a == "1" || has(b) && has(c)`:   true,
		`(a == "1" || has(b)) && has(c)`: false,
		`!has(b) && a == "1"`:            true,
		`!(has(b) && a == "1")`:          true,
		`!has(a) || has(b)`:              false,
		`!(has(a) || has(b))`:            false,
		`!!!has(a)`:                      false,
		`!(!has(a))`:                     true,
	} {
		assert.Equal(t, want, selector.MustParse(in).Matches(l), "%s on %v", in, l)
	}
}

func TestAbsentAndEmptyLabels(t *testing.T) {
	absent := selector.Set{"other": "x"}
	empty := selector.Set{"k": ""}
	tests := []struct {
		sel           string
		absent, empty bool
	}{
		{`k == "x"`, false, false},
		{`k == ""`, false, true},
		{`k != "x"`, true, true},
		{`k != ""`, true, false},
		{`k in {"x"}`, false, false},
		{`k in {""}`, false, true},
		{`k in {}`, false, false},
		{`k not in {"x"}`, true, true},
		{`k not in {""}`, true, false},
		{`k not in {}`, true, true},
		{`k contains ""`, false, true},
		{`k contains "x"`, false, false},
		{`k starts with ""`, false, true},
		{`k ends with ""`, false, true},
		{`has(k)`, false, true},
		{`!has(k)`, true, false},
		{`!k == "x"`, true, true},
		{`!k != "x"`, false, false},
		{`all()`, true, true},
		{`global()`, true, true},
		{`!all()`, false, false},
	}
	for _, tt := range tests {
		sel := selector.MustParse(tt.sel)
		assert.Equal(t, tt.absent, sel.Matches(absent), "%s with k absent", tt.sel)
		assert.Equal(t, tt.absent, sel.Matches(nil), "%s with nil Labels", tt.sel)
		assert.Equal(t, tt.absent, sel.Matches(selector.Set(nil)), "%s with a nil Set", tt.sel)
		assert.Equal(t, tt.empty, sel.Matches(empty), "%s with k empty", tt.sel)
	}
}

func TestMatchesValues(t *testing.T) {
	l := selector.Set{"zone": "eu-west-1b", "Rack": "07"}
	tests := []struct {
		sel  string
		want bool
	}{
		{`zone == "eu-west-1b"`, true},
		{`zone == "EU-WEST-1B"`, false}, // values are case-sensitive
		{`rack == "07"`, false},         // and so are keys
		{`Rack == "7"`, false},
		{`zone contains "west"`, true},
		{`zone contains "eu-west-1b-x"`, false},
		{`zone starts with "eu-"`, true},
		{`zone starts with "west"`, false},
		{`zone ends with "1b"`, true},
		{`zone ends with "1"`, false},
		{`zone in {"a", "eu-west-1b"}`, true},
		{`zone not in {"a", "eu-west-1b"}`, false},
		// Sets past the linear-scan size use binary search.
		{`zone in {"a","b","c","d","e","f","g","h","i","eu-west-1b","z"}`, true},
		{`zone in {"a","b","c","d","e","f","g","h","i","eu-west-1a","z"}`, false},
		{`zone not in {"a","b","c","d","e","f","g","h","i","eu-west-1b","z"}`, false},
		{`Rack in {"7","07","007","0007","00007","000007","0000007","00000007","000000007"}`, true},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, selector.MustParse(tt.sel).Matches(l), tt.sel)
	}
}

func TestCanonicalStrings(t *testing.T) {
	checkCanonical(t, []canonicalCase{
		// Double quotes unless the string holds one; each set element alone.
		{`a == 'x'`, `a == "x"`},
		{`a == "it's"`, `a == "it's"`},
		{`a == 'say "hi"'`, `a == 'say "hi"'`},
		{`a in {'"', "'", 'x'}`, `a in {'"', "'", "x"}`},
		// Sets sorted by bytes, duplicates gone, one trailing comma allowed.
		{`a in {"b", "B", "a", "10", "9", "b",}`, `a in {"10", "9", "B", "a", "b"}`},
		{`a in {"é", "z", "e"}`, `a in {"e", "z", "é"}`},
		{`a not in { }`, `a not in {}`},
		{`a in {""}`, `a in {""}`},
		// The empty selector, and all() however it is spelled.
		{"", "all()"},
		{" \t ", "all()"},
		{"(all())", "all()"},
	})
}

func TestSyntaxErrors(t *testing.T) {
	tests := []struct {
		in     string
		offset int
		msg    string
	}{
		{`rack == `, 8, `expected a string after "=="`},
		{`a == b`, 5, `expected a string after "==", found label "b"`},
		{`a starts  with 1`, 15, `expected a string after "starts  with", found label "1"`},
		{`a = "b"`, 2, `expected "==", found "="`},
		{`a == "b" & c == "d"`, 9, `expected "&&", found "&"`},
		{`a == "b" | c == "d"`, 9, `expected "||", found "|"`},
		{`a == "b`, 5, `unterminated string: no closing double quote`},
		{`a == 'b`, 5, `unterminated string: no closing single quote`},
		{`a`, 1, `expected an operator (==, !=, in, not in, contains, starts with, ends with) after label "a"`},
		{`a b`, 2, `expected an operator (==, !=, in, not in, contains, starts with, ends with) after label "a", found "b"`},
		{`a IN {}`, 2, `expected an operator (==, !=, in, not in, contains, starts with, ends with) after label "a", found "IN"`},
		{`a inx {}`, 2, `expected an operator (==, !=, in, not in, contains, starts with, ends with) after label "a", found "inx"`},
		{`a "b"`, 2, `expected an operator (==, !=, in, not in, contains, starts with, ends with) after label "a", found string "b"`},
		{`has (a)`, 4, `unexpected "(" after label "has": write has( with no space before the "("`},
		{`all ()`, 4, `unexpected "(" after label "all": write all( with no space before the "("`},
		{`has()`, 4, `expected a label name after "has(", found ')'`},
		{`has('a')`, 4, `expected a label name after "has(", found '\''`},
		{`has(a b)`, 6, `expected ")" to close "has(", found 'b'`},
		{`has(a`, 5, `expected ")" to close "has("`},
		{`all(x)`, 4, `expected ")" after "all(" (all() takes no arguments), found 'x'`},
		{`global(`, 7, `expected ")" after "global(" (global() takes no arguments)`},
		{`a in "x"`, 5, `expected "{" to start a set after "in", found string "x"`},
		{`a not in ("x")`, 9, `expected "{" to start a set after "not in", found "("`},
		{`a in {"x" "y"}`, 10, `expected "," or "}" after a set element, found string "y"`},
		{`a in {"x",,}`, 10, `expected a string or "}" in a set, found ","`},
		{`a in {,}`, 6, `expected a string or "}" in a set, found ","`},
		{`a in {"x"`, 9, `expected "," or "}" after a set element`},
		{`a in {x}`, 6, `expected a string or "}" in a set, found label "x"`},
		{`!`, 1, `expected a comparison, has(), all(), global(), "!" or "("`},
		{`&& has(a)`, 0, `expected a comparison, has(), all(), global(), "!" or "(", found "&&"`},
		{`has(a) && || has(b)`, 10, `expected a comparison, has(), all(), global(), "!" or "(", found "||"`},
		{`()`, 1, `expected a comparison, has(), all(), global(), "!" or "(", found ")"`},
		{`"a" == "a"`, 0, `expected a comparison, has(), all(), global(), "!" or "(", found string "a"`},
		{`(has(a)`, 7, `expected ")" to close the "(" at offset 0`},
		{`has(a) && (has(b) has(c)`, 18, `expected ")" to close the "(" at offset 10, found "has(c)"`},
		{`has(a))`, 6, `expected "&&", "||" or the end of the selector, found ")"`},
		{`a == "b" c == "d"`, 9, `expected "&&", "||" or the end of the selector, found label "c"`},
		{"a == \"b\"\n", 8, `unexpected character '\n': only spaces and tabs may separate tokens`},
		{"a\u00a0== \"b\"", 1, `unexpected character '\u00a0': only spaces and tabs may separate tokens`},
		{`ü == "x"`, 0, `unexpected character 'ü'`},
		{"a == \"b\" \xff", 9, `unexpected byte 0xff (not UTF-8)`},
		{`a > "1"`, 2, `unexpected character '>'`},
		{strings.Repeat("k", 513) + ` == "x"`, 0, `label is 513 bytes long; the limit is 512`},
		{"has(" + strings.Repeat("k", 513) + ")", 4, `label is 513 bytes long; the limit is 512`},
	}
	for _, tt := range tests {
		sel, err := selector.Parse(tt.in)
		var se *selector.SyntaxError
		if !assert.ErrorAs(t, err, &se, "Parse(%q) = %q", tt.in, sel) {
			continue
		}
		assert.Equal(t, tt.in, se.Input, "Parse(%q): Input", tt.in)
		assert.Equal(t, tt.offset, se.Offset, "Parse(%q): Offset", tt.in)
		assert.Equal(t, tt.msg, se.Msg, "Parse(%q): Msg", tt.in)
		assert.Equal(t, selector.None(), sel, "Parse(%q) returned a selector that matches something with its error", tt.in)
	}
}

func TestSyntaxErrorText(t *testing.T) {
	_, err := selector.Parse("rack == ")
	require.Error(t, err)
	assert.Equal(t, `selector "rack == ": offset 8: expected a string after "=="`, err.Error())

	// A long input is quoted only in part; the field keeps all of it.
	in := strings.Repeat("(", 1000)
	_, err = selector.Parse(in)
	var se *selector.SyntaxError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, in, se.Input)
	assert.Equal(t, `selector "`+strings.Repeat("(", 128)+`"...: offset 100: parentheses nested more than 100 deep`, err.Error())
}

func TestLimits(t *testing.T) {
	nest := func(depth int) string {
		return strings.Repeat("(", depth) + "has(a)" + strings.Repeat(")", depth)
	}
	sel, err := selector.Parse(nest(selector.MaxDepth))
	require.NoError(t, err)
	assert.Equal(t, "has(a)", sel.String())

	var se *selector.SyntaxError
	_, err = selector.Parse(nest(selector.MaxDepth + 1))
	require.ErrorAs(t, err, &se)
	assert.Equal(t, selector.MaxDepth, se.Offset)

	// Nesting that would overflow a naive parser's stack is an error.
	_, err = selector.Parse(strings.Repeat("!(", selector.MaxLength/2))
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 2*selector.MaxDepth+1, se.Offset)

	// The deepest negations allowed still evaluate: 100 nested !( ).
	deep := strings.Repeat("!(", selector.MaxDepth) + "has(a)" + strings.Repeat(")", selector.MaxDepth)
	sel = selector.MustParse(deep)
	assert.True(t, sel.Matches(selector.Set{"a": ""}))
	assert.Equal(t, strings.Repeat("!", selector.MaxDepth)+"has(a)", sel.String())

	// Length: exactly MaxLength bytes is fine, one more is not.
	atLimit := "has(a)" + strings.Repeat(" ", selector.MaxLength-len("has(a)"))
	_, err = selector.Parse(atLimit)
	require.NoError(t, err)
	_, err = selector.Parse(atLimit + " ")
	require.ErrorAs(t, err, &se)
	assert.Equal(t, selector.MaxLength, se.Offset)
	assert.Equal(t, "selector is 65537 bytes long; the limit is 65536", se.Msg)

	// Runs of ! and long && and || chains use no depth at all.
	bangs := strings.Repeat("!", selector.MaxLength-len("has(a)")) + "has(a)"
	assert.Equal(t, "has(a)", selector.MustParse(bangs).String())
	chain := strings.Repeat(`a == "1" && `, selector.MaxLength/16) + "has(a)"
	sel = selector.MustParse(chain)
	assert.True(t, sel.Matches(selector.Set{"a": "1"}))
	assert.False(t, sel.Matches(selector.Set{"a": "2"}))
}

func TestSingletonsAndZero(t *testing.T) {
	var zero selector.Selector
	assert.True(t, zero.Matches(nil))
	assert.True(t, zero.Matches(selector.Set{"a": "b"}))
	assert.Equal(t, "all()", zero.String())
	assert.False(t, zero.UsesGlobal())

	assert.Equal(t, "all()", selector.All().String())
	assert.True(t, selector.All().Matches(nil))
	assert.Equal(t, "!all()", selector.None().String())
	assert.False(t, selector.None().Matches(nil))
	assert.False(t, selector.None().Matches(selector.Set{"a": "b"}))

	// Parse hands out the shared singletons.
	for _, in := range []string{"", "  ", "all()", "( all( ) )", "!!all()"} {
		assert.True(t, selector.MustParse(in) == selector.All(), "Parse(%q) is not All()", in)
	}
	for _, in := range []string{"!all()", "! ( all() )", "!!!all()"} {
		assert.True(t, selector.MustParse(in) == selector.None(), "Parse(%q) is not None()", in)
	}
	assert.True(t, selector.All() != selector.None())
}

func TestUsesGlobal(t *testing.T) {
	for in, want := range map[string]bool{
		"global()":                         true,
		"!global()":                        true,
		`a == "b" || (has(c) && global())`: true,
		"all()":                            false,
		`global == "x"`:                    false,
		`a == "global()"`:                  false,
		"has(global)":                      false,
	} {
		assert.Equal(t, want, selector.MustParse(in).UsesGlobal(), in)
	}
}

func TestKeys(t *testing.T) {
	for in, want := range map[string][]string{
		"":                             nil,
		"all()":                        nil,
		"!all()":                       nil,
		"global() && all()":            nil,
		`rack == "a"`:                  {"rack"},
		`zone != "z" && rack in {"a"}`: {"rack", "zone"},
		`!(has(ssd) || ssd == "yes")`:  {"ssd"},
		`a contains "x" || b starts with "y" || c ends with "z" || d not in {}`: {"a", "b", "c", "d"},
		`has(rack) && global()`:       {"rack"},
		`kubernetes.io/os == "linux"`: {"kubernetes.io/os"},
		`rack == "has(zone)"`:         {"rack"},
	} {
		assert.Equal(t, want, selector.MustParse(in).Keys(), in)
	}
	assert.Nil(t, selector.Selector{}.Keys(), "the zero Selector")
	sel := selector.MustParse(`b == "1" && a == "2"`)
	keys := sel.Keys()
	keys[0] = "changed"
	assert.Equal(t, []string{"a", "b"}, sel.Keys(), "the slice is the caller's")
}

func TestValidLabelName(t *testing.T) {
	for in, want := range map[string]bool{
		"rack": true, "kubernetes.io/os": true, "node-role.kubernetes.io/worker": true, "x_1.2": true, "in": true,
		strings.Repeat("k", selector.MaxLabelLength): true,
		"": false, "a b": false, "a=b": false, "ü": false, "a\n": false, "a:b": false,
		strings.Repeat("k", selector.MaxLabelLength+1): false,
	} {
		assert.Equal(t, want, selector.ValidLabelName(in), "%q", in)
		if want {
			_, err := selector.Parse("has(" + in + ")")
			assert.NoError(t, err, "a valid name parses: %q", in)
		}
	}
}

func TestMustParsePanics(t *testing.T) {
	defer func() {
		r := recover()
		err, ok := r.(error)
		require.True(t, ok, "MustParse panicked with %v, want an error", r)
		var se *selector.SyntaxError
		assert.ErrorAs(t, err, &se)
	}()
	selector.MustParse("a ==")
	t.Fatal("MustParse did not panic")
}

func TestText(t *testing.T) {
	type pool struct {
		NodeSelector selector.Selector `json:"nodeSelector"`
	}
	var p pool
	require.NoError(t, json.Unmarshal([]byte(`{"nodeSelector":"rack=='0'&&has(ssd)"}`), &p))
	assert.True(t, p.NodeSelector.Matches(selector.Set{"rack": "0", "ssd": ""}))
	out, err := json.Marshal(p)
	require.NoError(t, err)
	assert.Equal(t, `{"nodeSelector":"(rack == \"0\" \u0026\u0026 has(ssd))"}`, string(out))

	// An empty string is all(), and so is a missing field.
	require.NoError(t, json.Unmarshal([]byte(`{"nodeSelector":""}`), &p))
	assert.Equal(t, "all()", p.NodeSelector.String())
	out, err = json.Marshal(pool{})
	require.NoError(t, err)
	assert.Equal(t, `{"nodeSelector":"all()"}`, string(out))

	// A bad selector keeps the old value and reports a *SyntaxError.
	p.NodeSelector = selector.MustParse("has(a)")
	err = json.Unmarshal([]byte(`{"nodeSelector":"has(a"}`), &p)
	var se *selector.SyntaxError
	require.True(t, errors.As(err, &se), "error %v", err)
	assert.Equal(t, "has(a", se.Input)
	assert.Equal(t, "has(a)", p.NodeSelector.String())

	b, err := selector.MustParse("a in {'y','x'}").AppendText([]byte("sel="))
	require.NoError(t, err)
	assert.Equal(t, `sel=a in {"x", "y"}`, string(b))
}

// TestConcurrentUse lets the race detector look at shared selectors.
func TestConcurrentUse(t *testing.T) {
	sel := selector.MustParse(`rack in {"0", "1"} && !has(drain)`)
	done := make(chan bool)
	for i := range 4 {
		go func() {
			l := selector.Set{"rack": string(rune('0' + i%3))}
			ok := true
			for range 1000 {
				ok = ok && sel.Matches(l) == (i%3 < 2) && sel.String() != ""
			}
			done <- ok
		}()
	}
	for range 4 {
		assert.True(t, <-done)
	}
}

func TestMatchesDoesNotAllocate(t *testing.T) {
	node := benchNode()
	for _, in := range append(benchSelectors(), benchSelector{"set-large", `zone in {"a","b","c","d","e","f","g","h","i","j"}`}) {
		sel := selector.MustParse(in.text)
		var labels selector.Labels = node // converted once, as callers do
		if allocs := testing.AllocsPerRun(100, func() { sel.Matches(labels) }); allocs != 0 {
			t.Errorf("Matches(%s) allocates %v times per call", in.name, allocs)
		}
		if allocs := testing.AllocsPerRun(100, func() { sel.Matches(nil) }); allocs != 0 {
			t.Errorf("Matches(%s, nil) allocates %v times per call", in.name, allocs)
		}
		if allocs := testing.AllocsPerRun(100, func() { _ = sel.String() }); allocs != 0 {
			t.Errorf("String(%s) allocates %v times per call", in.name, allocs)
		}
	}
}
