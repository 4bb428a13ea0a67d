package selector

import "slices"

// Labels is what a selector is evaluated against.
type Labels interface {
	// Get returns the value of the label key and whether the label is
	// present. A present label may have the empty value. Matches may call
	// Get from several goroutines at once if the caller shares the Labels.
	Get(key string) (value string, ok bool)
}

// Set is Labels held in a map. A nil Set has no labels.
type Set map[string]string

// Get returns the value of the label key and whether s has it.
func (s Set) Get(key string) (string, bool) {
	v, ok := s[key]
	return v, ok
}

// noLabels stands in for a nil Labels.
type noLabels struct{}

func (noLabels) Get(string) (string, bool) { return "", false }

// Selector is a parsed label selector: a small value that refers to an
// immutable tree, so it is cheap to copy and safe for concurrent use.
//
// The zero Selector matches everything and prints as "all()", like [All].
// Selectors are comparable, but == compares identity, not meaning: two
// selectors parsed from the same text are different values, except that
// Parse returns the shared [All] and [None] values for every selector that
// prints as "all()" or "!all()". Compare [Selector.String] results to learn
// whether two selectors are the same.
type Selector struct {
	t *tree
}

// tree is the parsed form of a selector with the facts derived from it.
type tree struct {
	root   node
	text   string // root in canonical form
	global bool   // global() appears somewhere in root
}

var (
	allTree  = &tree{root: node{op: opAll}, text: "all()"}
	noneTree = &tree{root: node{op: opNot, kids: []node{{op: opAll}}}, text: "!all()"}
)

// All returns the selector that matches every set of labels, "all()". Parse
// returns the same value for the empty selector and for "all()".
func All() Selector { return Selector{allTree} }

// None returns the selector that matches no set of labels. It prints as
// "!all()", the shortest selector Calico accepts that never matches; Parse
// returns the same value for that text.
func None() Selector { return Selector{noneTree} }

// Matches reports whether the labels l satisfy s. A nil l has no labels.
// Matches does not allocate; whatever l.Get allocates is up to l.
func (s Selector) Matches(l Labels) bool {
	if s.t == nil {
		return true
	}
	if l == nil {
		l = noLabels{}
	}
	return s.t.root.eval(l)
}

// String returns s in Calico's canonical form, which Parse accepts: single
// spaces around operators, "starts with" and "not in" rather than
// "startswith" and "notin", every && and || group in parentheses, "!" with no
// space after it, sets sorted by bytes without duplicates, and every string
// in double quotes unless it contains one. Like Calico, String keeps a
// negation written with parentheses: "!(!has(a))" prints as "!!has(a)",
// which parses back as "has(a)".
func (s Selector) String() string {
	if s.t == nil {
		return allTree.text
	}
	return s.t.text
}

// ValidLabelName reports whether a selector can name the label key: 1 to
// MaxLabelLength bytes of [A-Za-z0-9_./-]. A label under any other key is
// one no selector can test.
func ValidLabelName(key string) bool {
	if key == "" || len(key) > MaxLabelLength {
		return false
	}
	for i := 0; i < len(key); i++ {
		if !isLabelByte(key[i]) {
			return false
		}
	}
	return true
}

// Keys returns the label keys s reads, sorted by bytes and without
// duplicates: two sets of labels that agree on each of them (absent from
// both, or present in both with the same value) get the same answer from
// Matches, whatever their other labels. all(), global() and the empty
// selector read none. The slice is the caller's.
func (s Selector) Keys() []string {
	if s.t == nil {
		return nil
	}
	var keys []string
	s.t.root.appendKeys(&keys)
	slices.Sort(keys)
	return slices.Compact(keys)
}

// UsesGlobal reports whether global() appears anywhere in s.
func (s Selector) UsesGlobal() bool {
	return s.t != nil && s.t.global
}

// AppendText appends the canonical form of s (see [Selector.String]) to b.
// It never fails.
func (s Selector) AppendText(b []byte) ([]byte, error) {
	return append(b, s.String()...), nil
}

// MarshalText returns the canonical form of s (see [Selector.String]). It
// never fails. With UnmarshalText it lets a Selector sit in JSON or YAML
// configuration as a string. A string literal that is not valid UTF-8
// (Parse accepts one, as Calico does) does not survive encoding/json,
// which writes each invalid byte as U+FFFD: such a selector loads back as
// another one. (Kubernetes label values are ASCII, so a selector over
// Kubernetes labels has no such literal.)
func (s Selector) MarshalText() ([]byte, error) {
	return []byte(s.String()), nil
}

// UnmarshalText parses text with Parse and, on success, stores the result
// in *s. An empty text gives all().
func (s *Selector) UnmarshalText(text []byte) error {
	sel, err := Parse(string(text))
	if err != nil {
		return err
	}
	*s = sel
	return nil
}
