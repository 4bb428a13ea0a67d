package pool

import (
	"errors"
	"strconv"
	"strings"
)

// Kinds of validation problem, for errors.Is. Every [FieldError] wraps one
// of them, and a [ValidationError] matches every kind it holds.
var (
	ErrName           = errors.New("invalid pool name")
	ErrCIDR           = errors.New("invalid pool cidr")
	ErrLinkLocal      = errors.New("pool overlaps a link-local range")
	ErrBlockSize      = errors.New("invalid pool blockSize")
	ErrSelector       = errors.New("invalid pool selector")
	ErrAllowedUses    = errors.New("invalid pool allowedUses")
	ErrLoadBalancer   = errors.New("invalid LoadBalancer pool")
	ErrEncapsulation  = errors.New("invalid pool encapsulation")
	ErrAssignmentMode = errors.New("invalid pool assignmentMode")
	ErrImmutable      = errors.New("immutable pool field changed")
	ErrOverlap        = errors.New("pools overlap")
	ErrExists         = errors.New("pool already exists")
	ErrNotFound       = errors.New("pool not found")
	ErrSplit          = errors.New("invalid pool split")
)

// FieldError is one problem with one field of one pool. Its text names the
// pool, the field (by its JSON name) and the value:
//
//	pool "extra": cidr 10.0.0.1/24 is not masked
type FieldError struct {
	Pool   string // the pool's name
	Field  string // the field's JSON name: "cidr", "blockSize", "allowedUses", ...
	Value  string // the offending value as text; may be empty
	Reason string // what is wrong, as a phrase that follows the value
	Kind   error  // one of the Err* kinds above
}

// Error returns `pool "<name>": <field> <value> <reason>`.
func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString("pool ")
	b.WriteString(strconv.Quote(e.Pool))
	b.WriteString(": ")
	e.writeBody(&b)
	return b.String()
}

func (e *FieldError) writeBody(b *strings.Builder) {
	b.WriteString(e.Field)
	if e.Value != "" {
		b.WriteByte(' ')
		b.WriteString(e.Value)
	}
	b.WriteByte(' ')
	b.WriteString(e.Reason)
}

// Unwrap returns the kind of problem, for errors.Is.
func (e *FieldError) Unwrap() error { return e.Kind }

// ValidationError holds every problem found with one pool. Match it with
// errors.As, and the kinds of problem it holds with errors.Is.
type ValidationError struct {
	Pool     string        // the pool's name
	Problems []*FieldError // in the order of the rules in the package doc; never empty
}

// Error lists the problems on one line:
//
//	pool "extra": cidr 10.0.0.1/24 is not masked; blockSize 40 is outside 20..32 (IPv4)
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("pool ")
	b.WriteString(strconv.Quote(e.Pool))
	b.WriteString(": ")
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteString("; ")
		}
		p.writeBody(&b)
	}
	return b.String()
}

// Unwrap returns the problems, so that errors.Is and errors.As look at each.
func (e *ValidationError) Unwrap() []error {
	errs := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		errs[i] = p
	}
	return errs
}

// problems collects the FieldErrors of one pool.
type problems struct {
	pool   string
	list   []*FieldError
	update bool // checking an update of a stored pool: cidr and blockSize are fixed
}

func (ps *problems) add(kind error, field, value, reason string) {
	ps.list = append(ps.list, &FieldError{Pool: ps.pool, Field: field, Value: value, Reason: reason, Kind: kind})
}

// err returns nil when there were no problems, else a *ValidationError.
func (ps *problems) err() error {
	if len(ps.list) == 0 {
		return nil
	}
	return &ValidationError{Pool: ps.pool, Problems: ps.list}
}
