package pool

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/carve-ipam/carve/selector"
)

// compiled holds a pool's parsed selectors with the texts they came from,
// so that a Pool copied and then edited never uses a stale parse.
type compiled struct {
	filled         bool
	nodeText       string
	nsText         string
	node, ns       selector.Selector
	nodeErr, nsErr error
	// nodeAll and nsAll say that the selector is all() (or empty): it
	// matches any labels, which SelectsNode and SelectsNamespace then
	// answer without evaluating it.
	nodeAll, nsAll bool
}

func compile(node, ns string) compiled {
	c := compiled{filled: true, nodeText: node, nsText: ns}
	c.node, c.nodeErr = selector.Parse(node)
	c.ns, c.nsErr = selector.Parse(ns)
	// Parse returns All() itself for "" and "all()"; == compares identity.
	c.nodeAll = c.nodeErr == nil && c.node == selector.All()
	c.nsAll = c.nsErr == nil && c.ns == selector.All()
	return c
}

// nodeSelector returns p's parsed node selector, from the cache when it is
// up to date. It never writes to p, so pools shared between goroutines stay
// race-free.
func (p *Pool) nodeSelector() (selector.Selector, error) {
	if p.sel.filled && p.sel.nodeText == p.NodeSelector {
		return p.sel.node, p.sel.nodeErr
	}
	return selector.Parse(p.NodeSelector)
}

// namespaceSelector is nodeSelector for the namespace selector.
func (p *Pool) namespaceSelector() (selector.Selector, error) {
	if p.sel.filled && p.sel.nsText == p.NamespaceSelector {
		return p.sel.ns, p.sel.nsErr
	}
	return selector.Parse(p.NamespaceSelector)
}

// SelectsNode reports whether p's nodeSelector matches a node with the given
// labels (nil means none). Like Calico, only the labels are matched: node,
// the node's name, is not a label and does not take part; it is there so
// that callers hand over the node as a whole, as Calico's SelectsNode does.
// An empty nodeSelector matches every node; one that does not parse matches
// none. SelectsNode uses the selector parsed by [Pool.WithDefaults] or [Set]
// and does not allocate then.
func (p *Pool) SelectsNode(node string, labels selector.Labels) bool {
	if p.sel.filled && p.sel.nodeText == p.NodeSelector {
		return p.sel.nodeAll || p.sel.nodeErr == nil && p.sel.node.Matches(labels)
	}
	s, err := selector.Parse(p.NodeSelector)
	return err == nil && s.Matches(labels)
}

// SelectsNamespace reports whether p's namespaceSelector matches a namespace
// with the given labels. As in Calico, nil labels are an empty label set,
// not "no namespace": a selector such as `team == "a"` does not match them,
// while `!has(team)` does. An empty namespaceSelector matches everything.
func (p *Pool) SelectsNamespace(labels selector.Labels) bool {
	if p.sel.filled && p.sel.nsText == p.NamespaceSelector {
		return p.sel.nsAll || p.sel.nsErr == nil && p.sel.ns.Matches(labels)
	}
	s, err := selector.Parse(p.NamespaceSelector)
	return err == nil && s.Matches(labels)
}

// validateSelectors checks that both selectors parse and do not use
// global(), which Calico reserves for policy namespace selectors.
func validateSelectors(ps *problems, p *Pool) {
	node, err := p.nodeSelector()
	checkSelector(ps, "nodeSelector", p.NodeSelector, node, err)
	ns, err := p.namespaceSelector()
	checkSelector(ps, "namespaceSelector", p.NamespaceSelector, ns, err)
}

func checkSelector(ps *problems, field, text string, s selector.Selector, err error) {
	if err != nil {
		var se *selector.SyntaxError
		if errors.As(err, &se) {
			ps.add(ErrSelector, field, strconv.Quote(text), fmt.Sprintf("does not parse: offset %d: %s", se.Offset, se.Msg))
		} else {
			ps.add(ErrSelector, field, strconv.Quote(text), "does not parse: "+err.Error())
		}
		return
	}
	if s.UsesGlobal() {
		ps.add(ErrSelector, field, strconv.Quote(text), "uses global(), which pool selectors may not")
	}
}

// selectsAllNodes reports whether p's nodeSelector is empty or means all():
// its canonical form is "all()". A selector that does not parse counts as
// selecting all, since validateSelectors reports it already.
func (p *Pool) selectsAllNodes() bool {
	s, err := p.nodeSelector()
	return err != nil || s.String() == "all()"
}
