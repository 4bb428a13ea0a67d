package selector_test

import (
	"errors"
	"fmt"

	"github.com/carve-ipam/carve/selector"
)

func Example() {
	sel, err := selector.Parse(`rack == "0" && has(ssd)`)
	if err != nil {
		panic(err)
	}
	nodes := map[string]selector.Set{
		"node-a": {"rack": "0", "ssd": "true"},
		"node-b": {"rack": "0"},
		"node-c": {"rack": "1", "ssd": ""},
	}
	for _, name := range []string{"node-a", "node-b", "node-c"} {
		fmt.Println(name, sel.Matches(nodes[name]))
	}
	// Output:
	// node-a true
	// node-b false
	// node-c false
}

func ExampleParse_absentLabels() {
	// != and not in match labels that lack the key; == and in do not.
	none := selector.Set{}
	for _, s := range []string{`zone == "a"`, `zone != "a"`, `zone in {"a"}`, `zone not in {"a"}`} {
		fmt.Printf("%-18s %v\n", s, selector.MustParse(s).Matches(none))
	}
	// Output:
	// zone == "a"        false
	// zone != "a"        true
	// zone in {"a"}      false
	// zone not in {"a"}  true
}

func ExampleSelector_String() {
	for _, s := range []string{
		``,
		`type=='test'`,
		`zone in {'c','a','b','a',}`,
		`a startswith "x" || b == 'y' && !  !  !has(c)`,
	} {
		fmt.Println(selector.MustParse(s))
	}
	// Output:
	// all()
	// type == "test"
	// zone in {"a", "b", "c"}
	// (a starts with "x" || (b == "y" && !has(c)))
}

func ExampleSyntaxError() {
	_, err := selector.Parse(`rack == 0`)
	var se *selector.SyntaxError
	if errors.As(err, &se) {
		fmt.Println(se.Offset)
		fmt.Println(se.Msg)
	}
	fmt.Println(err)
	// Output:
	// 8
	// expected a string after "==", found label "0"
	// selector "rack == 0": offset 8: expected a string after "==", found label "0"
}

func ExampleSelector_UsesGlobal() {
	for _, s := range []string{`global()`, `has(global)`} {
		fmt.Println(s, selector.MustParse(s).UsesGlobal())
	}
	// Output:
	// global() true
	// has(global) false
}

func ExampleNone() {
	fmt.Println(selector.None(), selector.None().Matches(selector.Set{"a": "b"}))
	fmt.Println(selector.All(), selector.All().Matches(nil))
	// Output:
	// !all() false
	// all() true
}
