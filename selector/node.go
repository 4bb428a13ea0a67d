package selector

import (
	"slices"
	"strings"
)

// op is what a node tests.
type op uint8

const (
	opAll        op = iota // all(): true
	opGlobal               // global(): true; only its presence matters to callers
	opHas                  // has(label)
	opEq                   // label == value
	opNe                   // label != value
	opContains             // label contains value
	opStartsWith           // label starts with value
	opEndsWith             // label ends with value
	opIn                   // label in {set}
	opNotIn                // label not in {set}
	opNot                  // !kids[0]
	opAnd                  // kids[0] && kids[1] && ...; at least two kids
	opOr                   // kids[0] || kids[1] || ...; at least two kids
)

// node is one vertex of a parsed selector. Nodes are never changed after
// Parse returns, so a tree may be shared by any number of goroutines.
type node struct {
	op    op
	nest  uint8    // how deeply the canonical form nests && and || groups in parentheses
	label string   // opHas and the comparisons
	value string   // opEq, opNe, opContains, opStartsWith, opEndsWith
	set   []string // opIn, opNotIn: sorted by bytes, no duplicates
	kids  []node   // opNot, opAnd, opOr
}

// linearSetMax is the set size up to which a linear scan beats binary search.
const linearSetMax = 8

func (n *node) inSet(v string) bool {
	if len(n.set) <= linearSetMax {
		return slices.Contains(n.set, v)
	}
	_, found := slices.BinarySearch(n.set, v)
	return found
}

// eval reports whether l satisfies n. Absent labels make ==, in, contains,
// starts with and ends with false and != and not in true.
func (n *node) eval(l Labels) bool {
	switch n.op {
	case opAll, opGlobal:
		return true
	case opHas:
		_, ok := l.Get(n.label)
		return ok
	case opNot:
		return !n.kids[0].eval(l)
	case opAnd:
		for i := range n.kids {
			if !n.kids[i].eval(l) {
				return false
			}
		}
		return true
	case opOr:
		for i := range n.kids {
			if n.kids[i].eval(l) {
				return true
			}
		}
		return false
	}
	v, ok := l.Get(n.label)
	switch n.op {
	case opEq:
		return ok && v == n.value
	case opNe:
		return !ok || v != n.value
	case opContains:
		return ok && strings.Contains(v, n.value)
	case opStartsWith:
		return ok && strings.HasPrefix(v, n.value)
	case opEndsWith:
		return ok && strings.HasSuffix(v, n.value)
	case opIn:
		return ok && n.inSet(v)
	case opNotIn:
		return !ok || !n.inSet(v)
	}
	panic("selector: unknown node op")
}

// appendKeys appends to keys the label of each comparison and has() in n.
func (n *node) appendKeys(keys *[]string) {
	switch n.op {
	case opAll, opGlobal:
	case opNot, opAnd, opOr:
		for i := range n.kids {
			n.kids[i].appendKeys(keys)
		}
	default:
		*keys = append(*keys, n.label)
	}
}

var comparisonText = [...]string{
	opEq:         " == ",
	opNe:         " != ",
	opContains:   " contains ",
	opStartsWith: " starts with ",
	opEndsWith:   " ends with ",
	opIn:         " in {",
	opNotIn:      " not in {",
}

// appendText appends n in Calico's canonical form: single spaces around
// operators, every && and || group in parentheses, no space after !, and
// each string in double quotes unless it contains one.
func (n *node) appendText(b []byte) []byte {
	switch n.op {
	case opAll:
		return append(b, "all()"...)
	case opGlobal:
		return append(b, "global()"...)
	case opHas:
		b = append(b, "has("...)
		b = append(b, n.label...)
		return append(b, ')')
	case opNot:
		return n.kids[0].appendText(append(b, '!'))
	case opAnd, opOr:
		sep := " && "
		if n.op == opOr {
			sep = " || "
		}
		b = append(b, '(')
		for i := range n.kids {
			if i > 0 {
				b = append(b, sep...)
			}
			b = n.kids[i].appendText(b)
		}
		return append(b, ')')
	case opIn, opNotIn:
		b = append(b, n.label...)
		b = append(b, comparisonText[n.op]...)
		for i, v := range n.set {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = appendQuoted(b, v)
		}
		return append(b, '}')
	}
	b = append(b, n.label...)
	b = append(b, comparisonText[n.op]...)
	return appendQuoted(b, n.value)
}

func appendQuoted(b []byte, s string) []byte {
	q := byte('"')
	if strings.IndexByte(s, '"') >= 0 {
		q = '\'' // the lexer never produces a string holding both quotes
	}
	b = append(b, q)
	b = append(b, s...)
	return append(b, q)
}
