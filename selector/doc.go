// Package selector implements Calico's label-selector language: the
// expressions such as `rack == "0" && has(ssd)` that IP pools use to choose
// nodes and namespaces. It accepts, rejects, evaluates and prints selectors
// exactly as Calico does.
//
// # The language
//
// A selector is a boolean expression over a set of labels (key/value pairs):
//
//	k == "v"          label k is present and its value is v
//	k != "v"          label k is absent, or its value is not v
//	k in {"a", "b"}   label k is present and its value is in the set
//	k not in {"a"}    label k is absent, or its value is not in the set
//	k contains "s"    label k is present and its value contains s
//	k starts with "s" label k is present and its value begins with s
//	k ends with "s"   label k is present and its value ends with s
//	has(k)            label k is present, whatever its value
//	all()             always true
//	global()          always true; kept apart so callers can forbid it
//	!e                not e
//	e && f            e and f
//	e || f            e or f
//	(e)               grouping
//
// || binds loosest, then &&, then the prefix !, which applies to one
// comparison, function or parenthesised expression; a run of ! cancels in
// pairs. The empty selector is all(). Label names are 1 to 512 bytes of
// [A-Za-z0-9_./-]. Strings are in double or single quotes and have no
// escapes, so a string cannot hold both kinds of quote. Sets are in braces,
// may be empty and may end with a comma. The word operators are lower case
// and "startswith", "endswith" and "notin" are accepted too. There are no
// reserved words: "in", "has" and "all" are ordinary label names wherever a
// label can stand. Only spaces and tabs separate tokens; no other white space
// is allowed outside strings. [Parse] gives the full grammar.
//
// A label with the empty value is present: has(k) matches it and k == ""
// matches it, while k == "" does not match labels without k.
//
// # Canonical form
//
// [Selector.String] prints Calico's canonical form, which is what Calico
// stores and compares: `a=="b"&&c in {'y','x'}` prints as
// `(a == "b" && c in {"x", "y"})`. Two selectors with the same canonical form
// match the same labels.
//
// # Limits, and where carve differs from Calico
//
// carve accepts exactly the selectors Calico accepts, with the same meaning
// and canonical text, except that it adds two limits so that hostile input
// gets an error, never a stack overflow or unbounded work: a selector is at
// most [MaxLength] (64 KiB) bytes long, and parentheses nest at most
// [MaxDepth] (100) deep. Both limits apply to the canonical form as well as
// to the text given, so that Parse accepts whatever [Selector.String] prints;
// the canonical form adds spaces, and parentheses around every && and ||
// group. Runs of ! and long chains of && and || are not limited by depth;
// they are parsed without recursion.
//
// Parse errors are [*SyntaxError] values that give the byte offset of the
// problem and a message meant for the person who wrote the selector.
package selector
