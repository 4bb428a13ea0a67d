package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

// A node's labels are what pools' nodeSelectors match, as in Calico, where
// they are the labels of the node resource. carve keeps them in a record of
// their own (KindNode), written by SetNodeLabels: a request that gives no
// NodeLabels (nil) uses the stored ones, so that a node's pools do not
// depend on every caller passing the same labels.

// MaxNodeLabels is the most labels SetNodeLabels stores for one node. Each
// key is a label name a selector can test (selector.ValidLabelName: 1 to
// 512 bytes of [A-Za-z0-9_./-]) and each value at most MaxAttrLen bytes of
// valid UTF-8.
const MaxNodeLabels = 256

// nodeJSON is a KindNode record's value.
type nodeJSON struct {
	Labels map[string]string `json:"labels"`
}

// checkLabels checks a node's labels for op.
func checkLabels(op, node string, labels map[string]string) error {
	if len(labels) > MaxNodeLabels {
		return invalid(op, "node %q: %d labels, more than %d", node, len(labels), MaxNodeLabels)
	}
	for k, v := range labels {
		switch {
		case k == "":
			return invalid(op, "node %q: label with an empty key", node)
		case len(k) > selector.MaxLabelLength:
			return invalid(op, "node %q: label key %.40q... of %d bytes is longer than %d", node, k, len(k), selector.MaxLabelLength)
		case !selector.ValidLabelName(k):
			return invalid(op, "node %q: label key %q is not one a selector can name (letters, digits and _./- only)", node, k)
		case len(v) > MaxAttrLen:
			return invalid(op, "node %q: label %s: value of %d bytes is longer than %d", node, k, len(v), MaxAttrLen)
		case !validUTF8(v):
			return invalid(op, "node %q: label %s: value %q is not valid UTF-8", node, k, v)
		}
	}
	return nil
}

// marshalNode encodes a node record holding labels, which have passed
// checkLabels.
func marshalNode(labels map[string]string) []byte {
	value, err := json.Marshal(nodeJSON{Labels: labels})
	if err != nil {
		panic(err) // a map of strings always encodes
	}
	return value
}

// unmarshalNode decodes the labels of the KindNode record of node. A node
// record always has at least one label: SetNodeLabels deletes the record
// for none.
func unmarshalNode(node string, data []byte) (selector.Set, error) {
	var j nodeJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("ipam: node %q: %w: %w", node, ErrCorrupt, err)
	}
	// The checks' errors say what is wrong; they are not the caller's
	// invalid argument, so they do not match ErrInvalid here.
	if err := checkNode("read node", node); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if len(j.Labels) == 0 {
		return nil, fmt.Errorf("ipam: node %q: %w: no labels", node, ErrCorrupt)
	}
	if err := checkLabels("read node", node, j.Labels); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return j.Labels, nil
}

// SetNodeLabels stores the labels of node, replacing those stored before;
// nil or empty labels remove them. AutoAssign and EnsureBlock match pools'
// nodeSelectors against these labels when a request gives no NodeLabels.
// Labels equal to the stored ones write nothing. Labels outside the
// limits of MaxNodeLabels fail with an error matching ErrInvalid that
// names the label, and write nothing. Whoever follows the nodes' labels
// (a controller watching Kubernetes nodes) calls it.
//
// The node's blocks are not touched here: its next AutoAssign or
// EnsureBlock served with these labels that succeeds gives up its empty
// blocks in enabled pools that no longer select it, as it does when a
// pool's nodeSelector changes.
//
// Allocators on the same store see the change at their next request;
// those of other processes see it once their store's Generations move
// (with etcdstore, after its watch delivers the change). The labels stay
// stored until removed: ReleaseHostAffinities leaves them, and a new node
// of the same name is served with them, so remove them (nil) when the
// node leaves the cluster (AllNodeLabels lists them all), or let a
// Collector with a node oracle remove those of nodes gone.
//
// A stored record that does not decode (see Check) is replaced.
func (a *Allocator) SetNodeLabels(ctx context.Context, node string, labels map[string]string) error {
	const op = "set node labels"
	if err := checkNode(op, node); err != nil {
		return err
	}
	if err := checkLabels(op, node, labels); err != nil {
		return err
	}
	var value []byte
	if len(labels) > 0 {
		value = marshalNode(labels)
	}
	return a.retry(ctx, op, fmt.Sprintf("%q", node), func() error {
		rec, err := a.store.Get(ctx, KindNode, node)
		var err2 error
		switch {
		case errors.Is(err, ErrNotFound):
			if value == nil {
				return nil
			}
			_, err2 = a.store.Create(ctx, KindNode, node, value)
		case err != nil:
			return fmt.Errorf("ipam: %s %q: %w", op, node, err)
		case value == nil:
			err2 = a.store.Delete(ctx, KindNode, node, rec.Revision)
		default:
			if old, err := unmarshalNode(node, rec.Value); err == nil && maps.Equal(old, labels) {
				return nil
			}
			_, err2 = a.store.Update(ctx, KindNode, node, value, rec.Revision)
		}
		if errors.Is(err2, ErrNotFound) || errors.Is(err2, ErrExists) {
			err2 = fmt.Errorf("%w: %w", errRecordMoved, err2)
		}
		if err2 != nil {
			return fmt.Errorf("ipam: %s %q: %w", op, node, err2)
		}
		return nil
	})
}

// NodeLabels returns the labels stored for node by SetNodeLabels: nil if
// there are none. The map is the caller's. It reads the store, as Pools
// does; an assignment that uses the stored labels sees another process's
// change after the same lag.
func (a *Allocator) NodeLabels(ctx context.Context, node string) (map[string]string, error) {
	const op = "node labels"
	if err := checkNode(op, node); err != nil {
		return nil, err
	}
	set, err := a.readLabels(ctx, node)
	if err != nil {
		return nil, err
	}
	if len(set) == 0 {
		return nil, nil
	}
	return maps.Clone(set), nil
}

// AllNodeLabels returns the labels SetNodeLabels stored, by node name: what
// a controller that follows the nodes' labels compares with the nodes
// that exist, to remove the labels of those gone. The maps are the
// caller's. A record that does not decode fails the call with an error
// matching ErrCorrupt that names the node (SetNodeLabels replaces it).
func (a *Allocator) AllNodeLabels(ctx context.Context) (map[string]map[string]string, error) {
	recs, err := a.store.List(ctx, KindNode, KeyRange{})
	if err != nil {
		return nil, fmt.Errorf("ipam: list node labels: %w", err)
	}
	out := make(map[string]map[string]string, len(recs))
	for _, rec := range recs {
		set, err := unmarshalNode(rec.Key, rec.Value)
		if err != nil {
			return nil, err
		}
		out[rec.Key] = set
	}
	return out, nil
}

// readLabels reads node's stored labels; none gives an empty set.
func (a *Allocator) readLabels(ctx context.Context, node string) (selector.Set, error) {
	rec, err := a.store.Get(ctx, KindNode, node)
	switch {
	case errors.Is(err, ErrNotFound):
		return noLabels, nil
	case err != nil:
		return nil, fmt.Errorf("ipam: read labels of node %q: %w", node, err)
	}
	return unmarshalNode(node, rec.Value)
}

// noLabels is the labels of a node without stored labels: not nil, so
// that a request whose labels were looked up can tell.
var noLabels = selector.Set{}

// storedLabels is a node's stored labels as last read, with the
// generation of the node records it was read at.
type storedLabels struct {
	gen uint64
	set selector.Set // never modified
}

// cachedLabels returns nc's stored labels if the allocator has them and no
// node record changed since.
func (a *Allocator) cachedLabels(nc *nodeCache) (selector.Set, bool) {
	if l := nc.labels.Load(); l != nil && a.gens != nil && l.gen == a.gens.Generation(KindNode) {
		return l.set, true
	}
	return nil, false
}

// nodeLabels returns the labels the pools of a request for nc's node are
// chosen by when it gives none: the stored ones, from the cache when no
// node record changed since they were read.
func (a *Allocator) nodeLabels(ctx context.Context, node string, nc *nodeCache) (selector.Set, error) {
	if set, ok := a.cachedLabels(nc); ok {
		return set, nil
	}
	var gen uint64
	if a.gens != nil {
		gen = a.gens.Generation(KindNode) // before the read: a change after it makes the cache stale
	}
	set, err := a.readLabels(ctx, node)
	if err != nil {
		return nil, err
	}
	if a.gens != nil {
		nc.labels.Store(&storedLabels{gen: gen, set: set})
	}
	return set, nil
}

// requestLabels returns the node labels a request for node (nc) is served
// with: given, when given (see labelsGiven); otherwise the stored ones
// when some enabled pool's nodeSelector reads labels, and given (none)
// when none does, as no choice then depends on them. unstored reports
// that the labels were left to the store, which has none for the node:
// what a pool selection error then says (see noStoredLabels).
func (a *Allocator) requestLabels(ctx context.Context, v *view, node string, nc *nodeCache, given selector.Labels) (labels selector.Labels, unstored bool, err error) {
	if !v.labelsMatter || labelsGiven(given) {
		return given, false, nil
	}
	set, err := a.nodeLabels(ctx, node, nc)
	return set, err == nil && len(set) == 0, err
}

// noStoredLabels adds to err, a pool selection error for a request served
// with node's stored labels, that it has none stored, when a pool was
// passed over for its nodeSelector: a node agent that leaves the labels
// to the store learns why no pool selects its node.
func noStoredLabels(err error, node string) error {
	var npe *pool.NoPoolError
	if !errors.As(err, &npe) || !slices.ContainsFunc(npe.Rejections, func(r pool.Rejection) bool {
		return r.Reason == pool.ReasonNodeSelector
	}) {
		return err
	}
	return fmt.Errorf("%w; no labels are stored for node %q (SetNodeLabels)", err, node)
}

// labelsGiven reports whether a request gives the node's labels: l is
// neither nil nor a nil selector.Set (what selector.Set(m) makes of a nil
// map), which leave them to the store.
func labelsGiven(l selector.Labels) bool {
	s, isSet := l.(selector.Set)
	return l != nil && (!isSet || s != nil)
}

// ownLabels gives the *pool.NoPoolError in err, a failed selection of
// pools, a copy of the node labels it shows (Request.NodeLabels) when they
// are a selector.Set, and returns err. Labels served from the store are
// shared (see storedLabels; every node without labels has noLabels): a
// caller changing the labels it finds in the error must not change what
// later requests are served with. (Labels the request gave are copied
// too, which changes nothing for the caller.)
func ownLabels(err error) error {
	var npe *pool.NoPoolError
	if errors.As(err, &npe) {
		if set, ok := npe.Request.NodeLabels.(selector.Set); ok {
			npe.Request.NodeLabels = maps.Clone(set)
		}
	}
	return err
}

// labelsMatter reports whether the nodeSelector of some enabled pool of s
// depends on the node's labels. A disabled pool's decides nothing: no
// request chooses the pool, not even by name, and dropUnselected leaves
// the node's blocks there.
func labelsMatter(s *pool.Set) bool {
	for _, p := range s.All() {
		if !p.Disabled && len(selectorKeys(p.NodeSelector)) > 0 {
			return true
		}
	}
	return false
}
