package selector

import (
	"strconv"
)

// SyntaxError reports why Parse rejected a selector and where.
type SyntaxError struct {
	Input  string // the selector as given to Parse
	Offset int    // byte offset into Input where the problem was found; len(Input) means the end
	Msg    string // what is wrong, without the input or the offset
}

// errorInputMax bounds how much of a long input Error quotes; the Input field
// keeps all of it.
const errorInputMax = 128

// Error formats the error as
//
//	selector "rack == ": offset 8: expected a string after "=="
//
// quoting at most the first 128 bytes of the input.
func (e *SyntaxError) Error() string {
	in := strconv.Quote(e.Input)
	if len(e.Input) > errorInputMax {
		in = strconv.Quote(e.Input[:errorInputMax]) + "..."
	}
	return "selector " + in + ": offset " + strconv.Itoa(e.Offset) + ": " + e.Msg
}
