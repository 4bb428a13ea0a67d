package ipam

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/pool"
)

// ProblemKind names a kind of inconsistency Check reports.
type ProblemKind string

// The problems Check finds. Blocks are the truth about who holds an
// address; handle records and the affinity index are derived from them and
// can always be rebuilt.
const (
	// ProblemCorrupt: a record does not decode, holds what carve never
	// writes (a block that is not the one its key names, or that names an
	// owner handle or an affinity carve never accepts), or has a key carve
	// never writes. Repairable for derived records (handles, affinity index),
	// not for pools, configuration, reservations, node labels or blocks.
	ProblemCorrupt ProblemKind = "corrupt-record"
	// ProblemHandleMissing: a block holds addresses of a handle whose record
	// is missing or counts fewer there. Repairable, unless the record also
	// counts addresses in a corrupt block.
	ProblemHandleMissing ProblemKind = "handle-missing"
	// ProblemHandleExcess: a handle record counts more addresses in a block
	// than the block gives the handle (what a crash between the handle and
	// the block write leaves). Repairable, unless the record also counts
	// addresses in a corrupt block.
	ProblemHandleExcess ProblemKind = "handle-excess"
	// ProblemAffinityStale: an affinity index entry for a block that does not
	// exist or is not affine to that owner (what a crash during a claim or
	// an affinity release leaves). Repairable, but not while the block is
	// corrupt (whose it is cannot be told then).
	ProblemAffinityStale ProblemKind = "affinity-stale"
	// ProblemAffinityUnindexed: a block affine to an owner whose index lacks
	// it, so the node would not find it. Repairable.
	ProblemAffinityUnindexed ProblemKind = "affinity-unindexed"
	// ProblemBlockEmptyUnaffine: an empty block without affinity, which
	// should have been deleted (what a crash during an affinity release
	// leaves). One kept for the release cooldown is no problem: see
	// Report.Cooling and Report.Cooled. Repairable.
	ProblemBlockEmptyUnaffine ProblemKind = "block-empty-unaffine"
	// ProblemBlockOutsidePools: a block that no pool carves, and which is
	// empty (repairable: it is deleted), or affine to a node, or overlaps
	// a pool that carves blocks of another size (not repairable: release
	// its addresses). A block of a deleted pool that still holds addresses
	// and has no affinity, which is what DeletePool leaves, is not a
	// problem but a Leftover.
	ProblemBlockOutsidePools ProblemKind = "block-outside-pools"
	// ProblemBlockOverlap: two blocks share addresses. Not repairable: an
	// address could be held twice; release one block's addresses.
	ProblemBlockOverlap ProblemKind = "block-overlap"
	// ProblemConfig: the configuration record is invalid. Not repairable.
	ProblemConfig ProblemKind = "config-invalid"
)

// Problem is one inconsistency.
type Problem struct {
	Kind ProblemKind `json:"kind"`
	// Record names the store record concerned: "<kind> <key>".
	Record string `json:"record"`
	// Block, Handle and Owner name what the problem is about, when it is
	// about them (Owner is an affinity such as "host:node-1").
	Block  netip.Prefix `json:"block,omitzero"`
	Handle string       `json:"handle,omitempty"`
	Owner  string       `json:"owner,omitempty"`
	Detail string       `json:"detail"`
	// Repairable reports whether Repair can fix it.
	Repairable bool `json:"repairable"`

	rev Revision // the record's revision when checked
}

func (p Problem) String() string {
	s := string(p.Kind) + ": " + p.Record + ": " + p.Detail
	if !p.Repairable {
		s += " (not repairable)"
	}
	return s
}

// Report is what Check found, ready to encode as JSON.
type Report struct {
	// Time is when the check read the store.
	Time time.Time `json:"time"`
	// Counts of what was read.
	Pools        int `json:"pools"`
	Blocks       int `json:"blocks"`
	Allocations  int `json:"allocations"`
	Handles      int `json:"handles"`
	Affinities   int `json:"affinities"`
	Reservations int `json:"reservations"`
	LabeledNodes int `json:"labeledNodes"` // nodes with labels stored (SetNodeLabels)
	// Problems lists every inconsistency found, in a stable order.
	Problems []Problem `json:"problems"`
	// Leftovers lists, in address order, the blocks of deleted pools that
	// still hold addresses. They are no problem: DeletePool leaves assigned
	// addresses assigned, and a leftover block is deleted once its last
	// address is released. Migrations (see DeletePool) end when none is
	// left.
	Leftovers []Leftover `json:"leftovers,omitempty"`
	// Cooling lists, in address order, empty blocks without affinity kept
	// because an address in them is still cooling (Config.ReleaseCooldown).
	// They are no problem: a claim may take one over.
	Cooling []netip.Prefix `json:"cooling,omitempty"`
	// Cooled lists, in address order, empty blocks without affinity that
	// were kept while their addresses cooled and whose cooldown is over
	// (or was turned off). They are no problem either, and Repair leaves
	// them: the Collector deletes them, a claim may take one over, and
	// DeletePool deletes its pool's.
	Cooled []netip.Prefix `json:"cooled,omitempty"`
}

// Leftover is a block that no pool carves any more, without affinity,
// still holding addresses.
type Leftover struct {
	Block netip.Prefix `json:"block"`
	InUse int          `json:"inUse"`
}

// overlapsPool reports whether blk shares an address with a pool.
func overlapsPool(pools *pool.Set, blk netip.Prefix) bool {
	for _, p := range pools.All() {
		if p.CIDR.Overlaps(blk) {
			return true
		}
	}
	return false
}

// Clean reports whether the check found nothing wrong.
func (r *Report) Clean() bool { return len(r.Problems) == 0 }

// Repairable reports whether Repair can fix every problem found.
func (r *Report) Repairable() bool {
	for _, p := range r.Problems {
		if !p.Repairable {
			return false
		}
	}
	return true
}

// checkState is what Check read, for Repair to compare against.
type checkState struct {
	blocks   map[netip.Prefix]*block.Block
	handles  map[string]map[netip.Prefix]int // from the blocks
	handleOf map[string]Revision
}

// Check reads the whole store and reports every inconsistency in carve's
// own records: addresses whose handle record is missing, handle counts
// that disagree with the blocks, affinity index entries without their
// block and affine blocks missing from the index, blocks outside every
// pool, overlapping blocks, empty blocks that should have been deleted,
// and records that do not decode.
//
// Unlike `calicoctl ipam check`, it does not look for leaks: an address
// whose workload is gone is consistent here, as carve does not know your
// workloads. A [Collector] finds leaks, asking a liveness oracle you
// give it.
//
// Check reads record by record, not a snapshot: operations in flight while
// it runs can show as passing problems (a handle counted before its block
// is written). Run it on a quiet store, or check again.
func (a *Allocator) Check(ctx context.Context) (*Report, error) {
	r, _, err := a.check(ctx)
	return r, err
}

func (a *Allocator) check(ctx context.Context) (*Report, *checkState, error) {
	r := &Report{Time: a.now(), Problems: []Problem{}}
	st := &checkState{blocks: map[netip.Prefix]*block.Block{}, handles: map[string]map[netip.Prefix]int{}, handleOf: map[string]Revision{}}
	add := func(p Problem) { r.Problems = append(r.Problems, p) }

	// Pools, configuration, reservations, node labels. The pool set and
	// the configuration have one record each, under singletonKey: a
	// record under another key is none of carve's, and carve never reads
	// it.
	for _, kind := range []Kind{KindPool, KindConfig} {
		recs, err := a.store.List(ctx, kind, KeyRange{})
		if err != nil {
			return nil, nil, fmt.Errorf("ipam: check: %w", err)
		}
		for _, rec := range recs {
			if rec.Key != singletonKey {
				add(Problem{Kind: ProblemCorrupt, Record: kind.String() + " " + rec.Key,
					Detail: fmt.Sprintf("carve keeps its %s record under %q, and never reads this one", kind, singletonKey)})
			}
		}
	}
	pools := new(pool.Set)
	poolsKnown := true // false: the pool record does not decode
	if rec, err := a.store.Get(ctx, KindPool, singletonKey); err == nil {
		if s, _, err := unmarshalPools(rec.Value); err != nil {
			add(Problem{Kind: ProblemCorrupt, Record: "pool " + singletonKey, Detail: err.Error()})
			poolsKnown = false
		} else {
			pools = s
		}
	} else if !errors.Is(err, ErrNotFound) {
		return nil, nil, fmt.Errorf("ipam: check: %w", err)
	}
	r.Pools = pools.Len()
	v := &view{pools: pools, config: DefaultConfig()} // for view.cooling
	if rec, err := a.store.Get(ctx, KindConfig, singletonKey); err == nil {
		c, err := unmarshalConfig(rec.Value)
		if err == nil {
			err = c.Validate()
		}
		if err != nil {
			add(Problem{Kind: ProblemConfig, Record: "config " + singletonKey, Detail: err.Error()})
		} else {
			v.config = c
		}
	} else if !errors.Is(err, ErrNotFound) {
		return nil, nil, fmt.Errorf("ipam: check: %w", err)
	}
	// Records of a kind keyed by name, each decoded on its own: how many
	// there are, and a problem for each that does not decode.
	named := func(kind Kind, hint string, decode func(key string, value []byte) error) (int, error) {
		recs, err := a.store.List(ctx, kind, KeyRange{})
		if err != nil {
			return 0, fmt.Errorf("ipam: check: %w", err)
		}
		for _, rec := range recs {
			if err := decode(rec.Key, rec.Value); err != nil {
				add(Problem{Kind: ProblemCorrupt, Record: kind.String() + " " + rec.Key, Detail: err.Error() + hint})
			}
		}
		return len(recs), nil
	}
	var err error
	if r.Reservations, err = named(KindReservation, "", func(key string, value []byte) error {
		_, err := unmarshalReservation(key, value)
		return err
	}); err != nil {
		return nil, nil, err
	}
	if r.LabeledNodes, err = named(KindNode, " (SetNodeLabels replaces it)", func(key string, value []byte) error {
		_, err := unmarshalNode(key, value)
		return err
	}); err != nil {
		return nil, nil, err
	}

	// Blocks: the truth.
	recs, err := a.store.List(ctx, KindBlock, KeyRange{})
	if err != nil {
		return nil, nil, fmt.Errorf("ipam: check: %w", err)
	}
	wantIndex := map[string]netip.Prefix{}
	unreadable := map[netip.Prefix]bool{} // blocks whose record does not decode
	var reach netip.Prefix                // the block reaching furthest so far
	for _, rec := range recs {
		blk, err := parseBlockKey(rec.Key)
		if err != nil {
			add(Problem{Kind: ProblemCorrupt, Record: "block " + rec.Key, Detail: err.Error()})
			continue
		}
		b, err := decodeBlock(blk, rec.Value)
		if err != nil {
			add(Problem{Kind: ProblemCorrupt, Record: "block " + rec.Key, Block: blk, Detail: err.Error()})
			unreadable[blk] = true
			continue
		}
		r.Blocks++
		st.blocks[blk] = b
		name := "block " + rec.Key
		if reach.IsValid() && reach.Overlaps(blk) {
			add(Problem{Kind: ProblemBlockOverlap, Record: name, Block: blk, Detail: fmt.Sprintf("overlaps block %s", reach)})
		}
		if !reach.IsValid() || reach.Addr().Is4() != blk.Addr().Is4() || !reach.Contains(blk.Addr()) || blk.Bits() < reach.Bits() {
			reach = blk
		}
		switch _, ok := carving(pools, blk); {
		case !poolsKnown:
			// Which pool carves it, if any, cannot be told: the pool
			// record's problem stands for it.
		case !ok && !b.Empty() && b.Affinity().IsZero() && !overlapsPool(pools, blk):
			// What DeletePool leaves: addresses stay until released.
			r.Leftovers = append(r.Leftovers, Leftover{Block: blk, InUse: b.Used()})
		case !ok:
			add(Problem{Kind: ProblemBlockOutsidePools, Record: name, Block: blk, rev: rec.Revision, Repairable: b.Empty(),
				Detail: fmt.Sprintf("no pool carves it; %d addresses in use", b.Used())})
		case b.Empty() && b.Affinity().IsZero() && v.cooling(b, r.Time):
			r.Cooling = append(r.Cooling, blk)
		case b.Empty() && b.Affinity().IsZero() && b.ReleaseTimes() > 0:
			// Kept while its addresses cooled (keepCooling): the release
			// times say so, where a crash leftover has none to keep.
			r.Cooled = append(r.Cooled, blk)
		case b.Empty() && b.Affinity().IsZero():
			add(Problem{Kind: ProblemBlockEmptyUnaffine, Record: name, Block: blk, rev: rec.Revision, Repairable: true, Detail: "empty and without affinity"})
		}
		if aff := b.Affinity(); !aff.IsZero() {
			wantIndex[affinityKey(aff.String(), blk)] = blk
		}
		for o, n := range b.Owners() {
			r.Allocations += n
			if o.Handle == "" {
				continue // an address without a handle: no record counts it
			}
			m := st.handles[o.Handle]
			if m == nil {
				m = map[netip.Prefix]int{}
				st.handles[o.Handle] = m
			}
			m[blk] += n
		}
	}

	// The affinity index.
	idx, err := a.store.List(ctx, KindAffinity, KeyRange{})
	if err != nil {
		return nil, nil, fmt.Errorf("ipam: check: %w", err)
	}
	r.Affinities = len(idx)
	for _, rec := range idx {
		owner, blk, err := parseAffinityKey(rec.Key)
		if err != nil {
			add(Problem{Kind: ProblemCorrupt, Record: "affinity " + rec.Key, Detail: err.Error(), rev: rec.Revision, Repairable: true})
			continue
		}
		if _, ok := wantIndex[rec.Key]; ok {
			delete(wantIndex, rec.Key)
			continue
		}
		if unreadable[blk] {
			// Not repairable while the block is not: it may be the owner's.
			add(Problem{Kind: ProblemAffinityStale, Record: "affinity " + rec.Key, Block: blk, Owner: owner, rev: rec.Revision,
				Detail: "block is corrupt; whose it is cannot be told while it is"})
			continue
		}
		detail := "block does not exist"
		if b, ok := st.blocks[blk]; ok {
			detail = "block is affine to " + strings.TrimSpace(b.Affinity().String()+" ")
			if b.Affinity().IsZero() {
				detail = "block has no affinity"
			}
		}
		add(Problem{Kind: ProblemAffinityStale, Record: "affinity " + rec.Key, Block: blk, Owner: owner, Detail: detail, rev: rec.Revision, Repairable: true})
	}
	for _, key := range slices.Sorted(maps.Keys(wantIndex)) {
		blk := wantIndex[key]
		owner := st.blocks[blk].Affinity().String()
		add(Problem{Kind: ProblemAffinityUnindexed, Record: "block " + blockKey(blk), Block: blk, Owner: owner, Detail: "affine to " + owner + " but not in its index", Repairable: true})
	}

	// Handle records against the blocks.
	hrecs, err := a.store.List(ctx, KindHandle, KeyRange{})
	if err != nil {
		return nil, nil, fmt.Errorf("ipam: check: %w", err)
	}
	r.Handles = len(hrecs)
	seen := map[string]bool{}
	for _, rec := range hrecs {
		seen[rec.Key] = true
		st.handleOf[rec.Key] = rec.Revision
		name := "handle " + rec.Key
		if err := checkHandle("check", rec.Key); err != nil {
			// No block can give it an address: Repair deletes it.
			add(Problem{Kind: ProblemCorrupt, Record: name, Handle: rec.Key, Detail: "the key is not a handle ID carve accepts: " + err.Error(), rev: rec.Revision, Repairable: true})
			continue
		}
		var h handleRecord
		if err := h.unmarshal(rec.Value); err != nil {
			add(Problem{Kind: ProblemCorrupt, Record: name, Handle: rec.Key, Detail: err.Error(), rev: rec.Revision, Repairable: true})
			continue
		}
		truth := st.handles[rec.Key]
		// A record that counts addresses in a corrupt block cannot be
		// rebuilt (see rebuildHandle) while that block cannot be read.
		repairable, why := true, ""
		for _, c := range h.entries() {
			if unreadable[c.block] {
				repairable, why = false, fmt.Sprintf(" (its count in block %s, which is corrupt, cannot be checked)", c.block)
				break
			}
		}
		for _, c := range h.entries() {
			if unreadable[c.block] {
				continue
			}
			if have := truth[c.block]; c.count > have {
				add(Problem{Kind: ProblemHandleExcess, Record: name, Block: c.block, Handle: rec.Key, rev: rec.Revision, Repairable: repairable,
					Detail: fmt.Sprintf("counts %d addresses in block %s, which gives it %d%s", c.count, c.block, have, why)})
			}
		}
		for _, blk := range slices.SortedFunc(maps.Keys(truth), comparePrefix) {
			if n := h.count(blk); n < truth[blk] {
				add(Problem{Kind: ProblemHandleMissing, Record: name, Block: blk, Handle: rec.Key, rev: rec.Revision, Repairable: repairable,
					Detail: fmt.Sprintf("counts %d addresses in block %s, which gives it %d%s", n, blk, truth[blk], why)})
			}
		}
	}
	for _, handle := range slices.Sorted(maps.Keys(st.handles)) {
		if seen[handle] {
			continue
		}
		st.handleOf[handle] = 0
		for _, blk := range slices.SortedFunc(maps.Keys(st.handles[handle]), comparePrefix) {
			add(Problem{Kind: ProblemHandleMissing, Record: "handle " + handle, Block: blk, Handle: handle, Repairable: true,
				Detail: fmt.Sprintf("no record; block %s gives it %d addresses", blk, st.handles[handle][blk])})
		}
	}
	return r, st, nil
}

// RepairAction is what Repair did about one problem.
type RepairAction struct {
	Problem Problem `json:"problem"`
	// Done reports whether the problem was fixed; otherwise Note says why
	// not (not repairable, or the records changed since the check).
	Done bool   `json:"done"`
	Note string `json:"note,omitempty"`
}

// RepairOptions tune Repair. The zero value repairs a quiet store at once.
type RepairOptions struct {
	// Settle is how long Repair waits, after its check and before it
	// rewrites handle records, for operations in flight during the check to
	// finish. Set it longer than any AutoAssign, AssignIP or release takes
	// (a batch included) to repair a store in use: a handle count that an
	// assignment has raised but whose block it has not written yet looks
	// too high to the check, and lowering it would lose that address. Zero
	// means no operation is in flight (after a crash, or with allocators
	// paused), and Repair does not wait. Negative is invalid.
	Settle time.Duration
}

// Repair checks the store and fixes every repairable problem, re-reading
// each record and writing with compare-and-swap, and returns what it did
// and the report of a check run after the repairs. It rebuilds handle
// records from the blocks, removes stale affinity index entries and adds
// missing ones, and deletes empty blocks nothing should keep.
//
// A handle count becomes the number of addresses the block gives the
// handle in the check's read or in a fresh one after the settle time,
// told apart by sequence number: a release in flight (its block written,
// its count not yet lowered) is not taken off twice, and an assignment
// that landed meanwhile is not mistaken for another address's release.
// A record written by anyone since the check is left for the next run.
//
// Calico asks for the datastore to be locked while leaked addresses are
// released from a check's report. Repair needs that only with a zero
// opts.Settle: with a settle time longer than any operation, it is safe to
// run while allocators are working.
func (a *Allocator) Repair(ctx context.Context, opts RepairOptions) ([]RepairAction, *Report, error) {
	if opts.Settle < 0 {
		return nil, nil, invalid("repair", "negative settle time %v", opts.Settle)
	}
	r, st, err := a.check(ctx)
	if err != nil {
		return nil, nil, err
	}
	if opts.Settle > 0 && slices.ContainsFunc(r.Problems, func(p Problem) bool { return p.Repairable && p.Handle != "" }) {
		if err := a.sleep(ctx, opts.Settle); err != nil {
			return nil, nil, fmt.Errorf("ipam: repair: %w", err)
		}
	}
	var actions []RepairAction
	rebuilt := map[string]handleFix{}
	for _, p := range r.Problems {
		act := RepairAction{Problem: p}
		if !p.Repairable {
			act.Note = "not repairable"
			actions = append(actions, act)
			continue
		}
		var err error
		switch p.Kind {
		case ProblemHandleMissing, ProblemHandleExcess, ProblemCorrupt:
			if p.Handle == "" { // a malformed affinity key
				err = a.store.Delete(ctx, KindAffinity, strings.TrimPrefix(p.Record, "affinity "), p.rev)
				break
			}
			fix, ok := rebuilt[p.Handle]
			if !ok {
				fix = a.rebuildHandle(ctx, p.Handle, st.handleOf[p.Handle], st, false)
				rebuilt[p.Handle] = fix
			}
			err = fix.err
			if err == nil && p.Kind != ProblemCorrupt && !fix.changed[p.Block] {
				act.Note = "no longer found: an operation in flight during the check has finished"
			}
		case ProblemAffinityStale:
			err = a.repairStaleIndex(ctx, p)
		case ProblemAffinityUnindexed:
			err = a.repairUnindexed(ctx, p)
		case ProblemBlockOutsidePools:
			// After a settle time a new pool may carve it, and a node
			// have claimed it: then it is no problem any more.
			var v *view
			if v, err = a.readView(ctx); err == nil {
				if _, ok := carving(v.pools, p.Block); ok {
					act.Note = "no longer found: a pool carves the block again"
					break
				}
				err = a.deleteEmptyBlock(ctx, p.Block, false)
			}
		case ProblemBlockEmptyUnaffine:
			err = a.deleteEmptyBlock(ctx, p.Block, true)
		}
		act.Done = err == nil
		if err != nil {
			act.Note = err.Error()
		}
		actions = append(actions, act)
	}
	after, err := a.Check(ctx)
	return actions, after, err
}

// handleFix is what rebuildHandle did: the blocks whose count it changed,
// or why it could not.
type handleFix struct {
	changed map[netip.Prefix]bool
	err     error
}

// errHandleMoved: a rebuild found the handle's record written since the
// check it rebuilds from.
var errHandleMoved = errors.New("handle record written since the check")

// rebuildHandle rewrites a handle record, if it is still at rev, the
// revision the check read. Each count the record holds for a block the
// check found or the record names becomes the number of addresses the
// block gives the handle in the check's read or in a fresh one (the
// union, told apart by sequence number: see unionCount).
//
// This is what makes it safe while operations run. An assignment raises
// a count before its block write and a release lowers it after its own;
// with the record unchanged since the check, any such operation whose
// count the check saw began before the check, and has finished by the
// time the settle time is over. An operation that raises a count after
// the check changes the record, and the write below fails. So an address
// the fresh read alone shows is an assignment the record counts already,
// and one the check alone showed was released after the check, its count
// still to come down (unless it came down before the check read the
// record: the count is then one too high, the safe direction, and the
// next check sees it). Counting by number alone would take one for the
// other: an assignment landing while another address's release is in
// flight looks like no change, and a count lowered for both would lose
// the assigned address. With no record at all, no release can lower one,
// and the fresh read alone counts.
//
// With dry set it writes nothing, and says what it would change.
func (a *Allocator) rebuildHandle(ctx context.Context, handle string, rev Revision, st *checkState, dry bool) handleFix {
	cur, err := a.store.Get(ctx, KindHandle, handle)
	switch {
	case errors.Is(err, ErrNotFound):
		if rev != 0 {
			return handleFix{err: fmt.Errorf("%w: deleted", errHandleMoved)}
		}
	case err != nil:
		return handleFix{err: err}
	case cur.Revision != rev:
		return handleFix{err: fmt.Errorf("%w; check again", errHandleMoved)}
	}
	var old handleRecord
	corrupt := false
	if rev != 0 && old.unmarshal(cur.Value) != nil {
		old, corrupt = handleRecord{}, true // rebuilt from nothing
	}
	blocks := map[netip.Prefix]bool{}
	for blk := range st.handles[handle] {
		blocks[blk] = true
	}
	for _, c := range old.entries() {
		blocks[c.block] = true
	}
	// A record under a key that is no handle ID counts what no block can
	// give (decodeBlock refuses such an owner): it goes, and its blocks,
	// which may not even decode, need no reading.
	badKey := checkHandle("", handle) != nil
	fix := handleFix{changed: map[netip.Prefix]bool{}}
	var next handleRecord
	for _, blk := range slices.SortedFunc(maps.Keys(blocks), comparePrefix) {
		n := 0
		if !badKey {
			b, err := a.readBlock(ctx, blk)
			if err != nil {
				return handleFix{err: err}
			}
			then := st.blocks[blk]
			if rev == 0 {
				then = nil // no record: the fresh read alone counts
			}
			n = unionCount(then, b, handle)
		}
		if have := old.count(blk); n != have {
			fix.changed[blk] = true
		}
		if n > 0 {
			next.put(blk, n)
		}
	}
	switch {
	case len(fix.changed) == 0 && !corrupt && !(badKey && rev != 0), dry:
		return fix
	case len(next.entries()) == 0 && rev == 0:
	case len(next.entries()) == 0:
		err = a.store.Delete(ctx, KindHandle, handle, rev)
	case rev == 0:
		_, err = a.store.Create(ctx, KindHandle, handle, next.appendBinary(nil))
	default:
		_, err = a.store.Update(ctx, KindHandle, handle, next.appendBinary(nil), rev)
	}
	if err != nil {
		return handleFix{err: err}
	}
	return fix
}

// unionCount counts the allocations two reads of a block, x and y (nil: no
// block), give handle: those of x, and those of y that x does not have.
// An allocation is its address and sequence number, which the block never
// gives twice (not even across its deletion and re-creation: see
// block.New), so an address released and assigned again in between counts
// twice.
func unionCount(x, y *block.Block, handle string) int {
	type alloc struct {
		addr netip.Addr
		seq  uint64
	}
	seen := map[alloc]bool{}
	for _, b := range []*block.Block{x, y} {
		if b == nil {
			continue
		}
		for _, addr := range b.AddrsOf(handle, nil) {
			al, _ := b.Owner(addr)
			seen[alloc{addr, al.Seq}] = true
		}
	}
	return len(seen)
}

// repairUnindexed adds the missing index entry of an affine block. As a
// claimer does, it writes first and reads after: if the block, read after
// the write, is no longer affine to the owner (its affinity was released
// meanwhile), the entry is dropped again.
func (a *Allocator) repairUnindexed(ctx context.Context, p Problem) error {
	aff, err := block.ParseAffinity(p.Owner)
	if err != nil {
		return err
	}
	if err := a.putIndex(ctx, aff, p.Block); err != nil {
		return err
	}
	now, err := a.storedAffinity(ctx, p.Block)
	if err != nil || now == aff {
		return err
	}
	return a.dropIndex(ctx, aff, p.Block, 0)
}

// repairStaleIndex deletes an index entry whose block, read fresh, is still
// not affine to its owner.
func (a *Allocator) repairStaleIndex(ctx context.Context, p Problem) error {
	aff, err := block.ParseAffinity(p.Owner)
	if err != nil {
		return err
	}
	b, err := a.readBlock(ctx, p.Block)
	if err != nil {
		return err
	}
	if b != nil && b.Affinity() == aff {
		return errors.New("the block is affine to its owner again")
	}
	return a.dropIndex(ctx, aff, p.Block, p.rev)
}

// deleteEmptyBlock deletes a block that is, read fresh, still empty: its
// affinity, if any, is released (which deletes it, unless an address in it
// is cooling), or it is deleted. With unaffine, a block that has an
// affinity now was claimed since the check (a node may take over an empty
// block without affinity) and is left to its node.
func (a *Allocator) deleteEmptyBlock(ctx context.Context, blk netip.Prefix, unaffine bool) error {
	e := a.entry(blk)
	e.lock()
	defer e.unlock()
	if err := a.load(ctx, e); err != nil {
		return err
	}
	switch {
	case e.blk == nil:
		return nil
	case !e.blk.Empty():
		return errors.New("the block is in use again")
	case unaffine && !e.blk.Affinity().IsZero():
		return fmt.Errorf("the block was claimed since the check (%s)", e.blk.Affinity())
	}
	aff := e.blk.Affinity()
	next := e.stage()
	next.SetAffinity(block.Affinity{}, time.Time{})
	if err := a.commit(ctx, e); err != nil { // empty and unaffine: a delete
		return err
	}
	var kept error
	if e.blk != nil {
		// Kept (see keepCooling): an address in it cools under a cooldown
		// set since the check. Its affinity is released all the same.
		kept = errors.New("an address in it is still cooling; kept without affinity")
	}
	if !aff.IsZero() {
		return errors.Join(kept, a.dropIndex(ctx, aff, blk, 0))
	}
	return kept
}
