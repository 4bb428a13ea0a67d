package pool

import (
	"net/netip"

	"github.com/carve-ipam/carve/internal/ipmath"
)

// WalkSteps walks p for node like Walk, stopping after k blocks, and returns
// those blocks with the number of loop steps the walk took: the tests use it
// to check that a walk never steps through blocks one by one where it should
// jump.
func WalkSteps(p *Pool, node string, skip []netip.Prefix, k int) ([]netip.Prefix, int) {
	g, ok := p.geometry()
	if !ok {
		return nil, 0
	}
	var out []netip.Prefix
	steps := walkIndices(g.last(), nodeStart(node, g.n), skipRuns(g, skip), func(i ipmath.Uint128) bool {
		out = append(out, g.at(i))
		return len(out) < k
	})
	return out, steps
}
