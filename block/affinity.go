package block

import (
	"strconv"
	"strings"
)

// AffinityKind says what kind of owner a block is affine to.
type AffinityKind uint8

// The affinity kinds. The zero value is NoAffinity.
const (
	// NoAffinity means the block belongs to no one; any node may borrow
	// from it.
	NoAffinity AffinityKind = iota
	// HostAffinity means the block belongs to a node.
	HostAffinity
	// VirtualAffinity means the block belongs to a virtual owner such as a
	// load-balancer controller.
	VirtualAffinity
)

// String returns "host", "virtual", "none", or "AffinityKind(n)" for a kind
// outside the set.
func (k AffinityKind) String() string {
	switch k {
	case NoAffinity:
		return "none"
	case HostAffinity:
		return "host"
	case VirtualAffinity:
		return "virtual"
	}
	return "AffinityKind(" + strconv.Itoa(int(k)) + ")"
}

// Affinity is who a block belongs to. The zero value is no affinity.
// Affinity is comparable.
type Affinity struct {
	Kind AffinityKind
	Name string
}

// Host returns the affinity to the node named node.
func Host(node string) Affinity { return Affinity{Kind: HostAffinity, Name: node} }

// Virtual returns the affinity to the virtual owner named name.
func Virtual(name string) Affinity { return Affinity{Kind: VirtualAffinity, Name: name} }

// IsZero reports whether a is no affinity.
func (a Affinity) IsZero() bool { return a == Affinity{} }

// IsValid reports whether a is the zero Affinity or has a known kind. An
// Affinity with Kind NoAffinity and a non-empty Name is not valid.
func (a Affinity) IsValid() bool {
	switch a.Kind {
	case NoAffinity:
		return a.Name == ""
	case HostAffinity, VirtualAffinity:
		return true
	}
	return false
}

// String returns a in Calico's form, "host:node-1" or "virtual:lb-1", and ""
// for no affinity.
func (a Affinity) String() string {
	if a.IsZero() {
		return ""
	}
	return a.Kind.String() + ":" + a.Name
}

// ParseAffinity parses Calico's form of an affinity as String writes it:
// "host:<node>", "virtual:<name>", or "" for no affinity. The name is
// everything after the first colon and may be empty.
func ParseAffinity(s string) (Affinity, error) {
	if s == "" {
		return Affinity{}, nil
	}
	kind, name, ok := strings.Cut(s, ":")
	if ok {
		switch kind {
		case "host":
			return Host(name), nil
		case "virtual":
			return Virtual(name), nil
		}
	}
	return Affinity{}, &blockError{op: "parse affinity " + strconv.Quote(s), detail: "want host:<node> or virtual:<name>", errs: []error{ErrInvalidAffinity}}
}

// MarshalText returns a in Calico's form, as String does, so that an
// Affinity is a JSON string: "host:node-1", or "" for no affinity. It fails
// for an Affinity that is not valid (see IsValid).
func (a Affinity) MarshalText() ([]byte, error) {
	if !a.IsValid() {
		return nil, &blockError{op: "marshal affinity", detail: "kind " + a.Kind.String() + " with name " + strconv.Quote(a.Name) + " is not an affinity", errs: []error{ErrInvalidAffinity}}
	}
	return []byte(a.String()), nil
}

// UnmarshalText sets a from Calico's form, as ParseAffinity reads it.
func (a *Affinity) UnmarshalText(text []byte) error {
	v, err := ParseAffinity(string(text))
	if err != nil {
		return err
	}
	*a = v
	return nil
}
