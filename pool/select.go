package pool

import (
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/carve-ipam/carve/selector"
)

// Request describes an assignment for [Set.Select]: which pools may serve it.
type Request struct {
	// Family is the address family wanted; the zero Family accepts both.
	Family Family
	// Node is the name of the node the address is for; it appears in
	// explanations.
	Node string
	// NodeLabels are the node's labels, matched by nodeSelector. Nil means
	// none.
	NodeLabels selector.Labels
	// NamespaceLabels are the labels of the workload's namespace, matched by
	// namespaceSelector. Nil means none, and as in Calico the selector is
	// then matched against the empty label set (see [Pool.SelectsNamespace]).
	NamespaceLabels selector.Labels
	// Use is what the address is for; the zero Use means Workload.
	Use Use
	// Pools names the pools to use, in order of preference (Calico's
	// ipv4pools/ipv6pools annotations), each by name or by its CIDR
	// ("10.0.0.0/16"), as the annotations allow. When it is not empty, only
	// these pools are considered and their selectors and assignment mode
	// are ignored.
	Pools []string
}

// ErrNoPool is matched (errors.Is) by every *NoPoolError.
var ErrNoPool = errors.New("no eligible pool")

// Reason says why [Set.Select] passed over a pool.
type Reason int

// The reasons, in the order Select checks them.
const (
	ReasonNotFound          Reason = iota + 1 // a requested pool is not in the set
	ReasonFamily                              // the pool is of the other family
	ReasonDisabled                            // the pool is disabled
	ReasonManual                              // the pool is Manual and was not requested by name
	ReasonNodeSelector                        // nodeSelector does not match the node
	ReasonNamespaceSelector                   // namespaceSelector does not match the namespace
	ReasonUse                                 // allowedUses does not include the request's use
)

// String returns a short name for r, such as "nodeSelector".
func (r Reason) String() string {
	switch r {
	case ReasonNotFound:
		return "not found"
	case ReasonFamily:
		return "family"
	case ReasonDisabled:
		return "disabled"
	case ReasonManual:
		return "manual"
	case ReasonNodeSelector:
		return "nodeSelector"
	case ReasonNamespaceSelector:
		return "namespaceSelector"
	case ReasonUse:
		return "allowedUses"
	}
	return "unknown"
}

// Rejection records why one pool was passed over.
type Rejection struct {
	Pool   string // the pool's name
	Reason Reason
	Detail string // the explanation that follows "pool <name>: "
}

// String returns "pool <name>: <detail>", for example
//
//	pool extra: nodeSelector rack == "1" does not match node node-3 (labels rack=3)
func (r Rejection) String() string { return "pool " + r.Pool + ": " + r.Detail }

// NoPoolError reports that [Set.Select] found no eligible pool, or that a
// pool a request named cannot be used, with the reason for every pool.
type NoPoolError struct {
	Request    Request     // the request, as given
	Rejections []Rejection // one per pool considered, in the order considered
}

// Error lists every pool with the reason it was passed over, on one line.
func (e *NoPoolError) Error() string {
	var b strings.Builder
	b.WriteString("no pool for ")
	if e.Request.Node != "" {
		b.WriteString("node ")
		b.WriteString(e.Request.Node)
	} else {
		b.WriteString("the request")
	}
	b.WriteString(" (")
	b.WriteString(e.Request.Family.String())
	b.WriteString(", ")
	b.WriteString(string(e.Request.Use.orDefault()))
	if len(e.Request.Pools) > 0 {
		b.WriteString(", pools ")
		b.WriteString(strings.Join(e.Request.Pools, ","))
	}
	b.WriteString(")")
	if len(e.Rejections) == 0 {
		b.WriteString(": the set has no pools")
	}
	for i, r := range e.Rejections {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(r.String())
	}
	return b.String()
}

// Unwrap returns [ErrNoPool].
func (e *NoPoolError) Unwrap() error { return ErrNoPool }

// Is reports whether target is [ErrNotFound] and the request named a pool
// that is not in the set, so that a misspelt name can be told from pools
// that exist but do not qualify.
func (e *NoPoolError) Is(target error) bool {
	if target != ErrNotFound {
		return false
	}
	for _, r := range e.Rejections {
		if r.Reason == ReasonNotFound {
			return true
		}
	}
	return false
}

// Select returns the pools that may serve r, in the order to try them, or a
// *NoPoolError that explains, pool by pool, why none can. The rules are
// Calico's (libcalico-go ipam determinePools and the allowed-use filter):
//
// When r.Pools names pools, those pools are the candidates, in r's order and
// each once. Each must exist, be enabled and be of r's family (when r has
// one), or Select fails whatever the other pools are; selectors and
// assignment mode are not checked. Pools that do not allow r's use are
// dropped, and Select fails when none is left.
//
// Otherwise every pool of the set is a candidate, by name, and is eligible
// when it is of r's family, enabled, Automatic, its nodeSelector matches
// r.NodeLabels, its namespaceSelector matches r.NamespaceLabels and it
// allows r's use.
//
// The returned pools are read-only pointers into s. See [Set.AppendSelect]
// to reuse a slice.
func (s *Set) Select(r Request) ([]*Pool, error) {
	return s.AppendSelect(nil, r)
}

// AppendSelect is [Set.Select] appending the eligible pools to dst. With a
// dst of enough capacity it does not allocate unless it fails.
func (s *Set) AppendSelect(dst []*Pool, r Request) ([]*Pool, error) {
	n0 := len(dst)
	if len(r.Pools) > 0 {
		return s.appendRequested(dst, r)
	}
	for _, p := range s.byName {
		if rejection(p, &r) == 0 {
			dst = append(dst, p)
		}
	}
	if len(dst) > n0 {
		return dst, nil
	}
	// The slow path: explain each pool.
	e := &NoPoolError{Request: r, Rejections: make([]Rejection, 0, len(s.byName))}
	for _, p := range s.byName {
		e.Rejections = append(e.Rejections, explain(p, &r, rejection(p, &r)))
	}
	return dst, e
}

func (s *Set) appendRequested(dst []*Pool, r Request) ([]*Pool, error) {
	n0 := len(dst)
	var rej []Rejection
	fatal := false
	use := r.Use.orDefault()
	for i, name := range r.Pools {
		if indexOf(r.Pools[:i], name) >= 0 {
			continue // asked for twice
		}
		p, ok := s.Get(name)
		if !ok {
			p, ok = s.byCIDR(name)
		}
		if ok && (slices.Contains(dst[n0:], p) || slices.ContainsFunc(rej, func(r Rejection) bool { return r.Pool == p.Name })) {
			continue // asked for twice, by name and by CIDR
		}
		var why Reason
		switch {
		case !ok:
			why = ReasonNotFound
		case r.Family != 0 && p.Family() != r.Family:
			why = ReasonFamily
		case p.Disabled:
			why = ReasonDisabled
		case !p.Allows(use):
			why = ReasonUse
		default:
			dst = append(dst, p)
			continue
		}
		if why != ReasonUse {
			fatal = true
		}
		if p == nil {
			rej = append(rej, Rejection{Pool: name, Reason: why, Detail: "no pool has this name or CIDR"})
		} else {
			rej = append(rej, explain(p, &r, why))
		}
	}
	if fatal || len(dst) == n0 {
		return dst[:n0], &NoPoolError{Request: r, Rejections: rej}
	}
	return dst, nil
}

func indexOf(names []string, name string) int {
	for i, n := range names {
		if n == name {
			return i
		}
	}
	return -1
}

// rejection returns why automatic selection passes over p for r, or 0 when
// p is eligible. It does not allocate.
func rejection(p *Pool, r *Request) Reason {
	switch {
	case r.Family != 0 && p.Family() != r.Family:
		return ReasonFamily
	case p.Disabled:
		return ReasonDisabled
	case p.Manual():
		return ReasonManual
	case !p.SelectsNode(r.Node, r.NodeLabels):
		return ReasonNodeSelector
	case !p.SelectsNamespace(r.NamespaceLabels):
		return ReasonNamespaceSelector
	case !p.Allows(r.Use):
		return ReasonUse
	}
	return 0
}

// explain turns a reason into a Rejection with a sentence for people.
func explain(p *Pool, r *Request, why Reason) Rejection {
	var d string
	switch why {
	case ReasonFamily:
		d = "is " + p.Family().String() + ", the request is for " + r.Family.String()
	case ReasonDisabled:
		d = "is disabled"
	case ReasonManual:
		d = "assignmentMode is Manual and the request does not name the pool"
	case ReasonNodeSelector:
		d = "nodeSelector " + selectorText(p.nodeSelector()) + " does not match "
		if r.Node != "" {
			d += "node " + r.Node
		} else {
			d += "the node"
		}
		d += labelsText(r.NodeLabels)
	case ReasonNamespaceSelector:
		d = "namespaceSelector " + selectorText(p.namespaceSelector()) + " does not match the namespace" + labelsText(r.NamespaceLabels)
	case ReasonUse:
		d = "allowedUses " + usesText(p.effectiveUses()) + " does not include " + string(r.Use.orDefault())
	}
	return Rejection{Pool: p.Name, Reason: why, Detail: d}
}

// selectorText prints a selector in canonical form, or says that it does
// not parse (only possible for pools that bypassed validation).
func selectorText(s selector.Selector, err error) string {
	if err != nil {
		return "(invalid: " + err.Error() + ")"
	}
	return s.String()
}

// labelsText shows the labels a selector was matched against, when they
// are a selector.Set (other Labels cannot be listed): " (labels a=1, b=2)",
// or " (no labels)". At most eight are shown.
func labelsText(l selector.Labels) string {
	set, ok := l.(selector.Set)
	if l != nil && !ok {
		return ""
	}
	if len(set) == 0 {
		return " (no labels)"
	}
	keys := slices.Sorted(maps.Keys(set))
	more := ""
	if len(keys) > 8 {
		keys, more = keys[:8], ", ..."
	}
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + set[k]
	}
	return " (labels " + strings.Join(parts, ", ") + more + ")"
}

// byCIDR returns the pool whose CIDR is text, a prefix such as
// "10.0.0.0/16".
func (s *Set) byCIDR(text string) (*Pool, bool) {
	c, err := netip.ParsePrefix(text)
	if err != nil {
		return nil, false
	}
	if p, ok := s.ByAddr(c.Addr()); ok && p.CIDR.Masked() == c.Masked() {
		return p, true
	}
	return nil, false
}
