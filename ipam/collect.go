package ipam

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/pool"
)

// Liveness tells a Collector whether the owner of an allocation still
// exists: the pod, VM, interface or Service its handle and attributes name
// (Attrs carries AttrNode, but for LoadBalancer addresses, and whatever the
// assigning program stored, such as a pod name). An error means "unknown":
// the allocation is treated as alive.
//
// Answer for the owner the address was assigned to, not for whatever now
// bears its name: a StatefulSet pod deleted while its node was down
// comes back under the same name, on another node and with another
// address, and the old address is then a leak. Compare the node
// (Attrs[AttrNode]) and the addresses the pod reports, or a UID stored
// with the address (examples/collector does the first).
type Liveness func(ctx context.Context, a Allocation) (alive bool, err error)

// NodeLiveness tells a Collector whether a node still exists in the
// orchestrator (for Kubernetes, whether its Node object does). An error
// means "unknown": the node is treated as existing.
type NodeLiveness func(ctx context.Context, node string) (exists bool, err error)

// CollectorOptions tune a Collector.
type CollectorOptions struct {
	// Grace is how long an allocation must be seen with a dead owner, an
	// affine block seen empty, a node seen gone (Nodes), and a handle
	// record seen counting more than the blocks hold, before any of them
	// is released or rewritten; 0 means 15 minutes (Calico's default). It
	// must be longer than any assignment takes, and passes further apart
	// than any assignment or release (see Collector).
	Grace time.Duration
	// KeepEmptyBlocks turns off the release of empty affine blocks of
	// nodes that exist. It does not keep the blocks of a node that Nodes
	// calls gone.
	KeepEmptyBlocks bool
	// Nodes, if set, is asked once a pass about each node holding blocks
	// or with labels stored (SetNodeLabels). A node seen gone across the
	// grace period, and still gone when asked again, loses its blocks as
	// if ReleaseHostAffinities had been called: empty ones are deleted,
	// its last one too, and the others keep their addresses without
	// affinity. That frees the block an AutoAssign in flight claims for a
	// node just removed, after the removal released the node's blocks. Its
	// stored labels are deleted too; so are labels stored ahead of a node
	// that the oracle does not know yet, once the grace period has run.
	// nil: nodes are not asked, and a node keeps its last block of each
	// family in an enabled pool for good. Only nodes are asked: the blocks of LoadBalancer
	// addresses belong to VirtualLoadBalancer, which is left alone, as are
	// its empty blocks. A node that has lost its blocks is
	// forgotten: a block it holds later (a claim that was in flight, or a
	// new node of the same name that the oracle does not know yet) waits
	// out a grace period of its own.
	Nodes NodeLiveness
	// DryRun makes the collector report and never write: each pass asks
	// the oracles as usual, the last question before a release too, and
	// returns the result a pass would have (CollectResult.DryRun), but
	// releases, deletes and rewrites nothing. It remembers what it saw as
	// a real collector would, except that what it would release stays
	// ripe, and the next pass reports it again. Run one before letting a
	// collector release in a cluster (Calico's
	// "calicoctl ipam check --show-problem-ips"). What it lists in
	// Released can be released by hand: ReleaseIPs with each
	// Allocation.Release frees an address only if it is still the same
	// assignment.
	DryRun bool
}

// Collector finds leaked addresses and releases them, as Calico's
// kube-controllers IPAM garbage collector does. Call Collect periodically
// (say every Grace/2): an allocation whose owner is dead becomes a suspect;
// it is released only once it has been a suspect for the grace period, only
// together with every other allocation of its handle (all or none; an
// address without a handle, as Calico may have written, stands alone), only if
// the owner is still dead when asked again right before the release, and
// with the sequence number seen, so an address reassigned meanwhile is
// never freed. Empty affine blocks are released the same way once seen
// empty, unchanged, across the grace period, but never a node's last block
// of a family that it can assign from (a dual-stack node keeps one of
// each, as EnsureBlock gave it; a block in a disabled pool, midway
// through a migration, does not count), nor one of VirtualLoadBalancer
// (as in Calico).
//
// Releasing a block's affinity deletes it if it is empty, unless an address
// in it is still cooling (Config.ReleaseCooldown): then it is kept, without
// affinity, so that the release times last; a later pass deletes it once
// the cooldown is over (DeletedBlocks).
//
// A node's last block is kept because the collector cannot tell a quiet
// node from a removed one. Given a node oracle (CollectorOptions.Nodes), it
// can: a node holding blocks, or with labels stored (SetNodeLabels), that
// the oracle calls gone becomes a suspect too, and once it has been gone
// for the grace period, and is still gone when asked again, every block
// it holds loses its affinity and its labels are deleted. Each block is
// released with compare-and-swap on a fresh read: a block another node
// holds by then is left alone. A block that still holds addresses keeps
// them, without affinity; the allocation oracle collects them as usual.
// Without a node oracle, stored labels stay until SetNodeLabels removes
// them.
//
// A handle record that counts more addresses than the blocks hold (a
// crash, or a failed write, between the count and its block) is rewritten
// to what the blocks hold, as Repair would, once every pass across the
// grace period has seen it so at one revision, on the pass after that:
// that pass interval is Repair's settle time, so passes must be further
// apart than any assignment or release takes. An assignment in flight
// looks the same, but not for so long. Until then a request with
// NewHandle finds the handle held (CollectResult.RepairedHandles).
//
// Each pass lists what it waits on (CollectResult.Suspects and GoneNodes,
// with the time each was first seen), and a collector made with
// CollectorOptions.DryRun reports what its passes would do and writes
// nothing.
//
// A Collector keeps its suspects in memory: a new one starts its grace
// periods afresh. It is safe for concurrent use; passes do not overlap.
type Collector struct {
	a     *Allocator
	live  Liveness
	nodes NodeLiveness // nil: nodes are not asked
	grace time.Duration
	keep  bool
	dry   bool

	mu     sync.Mutex
	leaks  map[netip.Addr]suspect
	blocks map[netip.Prefix]suspect
	gone   map[string]goneNode // nodes holding blocks or labels seen gone
	// handles are the handle records seen counting more than the blocks
	// hold, each with the revision seen and since when.
	handles map[string]staleCount
}

// staleCount is what the collector remembers of a handle record that
// counts more addresses than the blocks hold.
type staleCount struct {
	since time.Time
	rev   Revision
	// settle, once the record has stood so for the grace period, holds
	// the pass's read of the handle's blocks and what the handle held
	// there. The next pass rebuilds the record from it and a fresh read if
	// the record is still at rev, as Repair rebuilds from its check after
	// the settle time: a release whose block write came before that read
	// lowers the count, and so changes the revision, before the next pass,
	// and one whose block write came after it finds its address in the
	// read, so that its lowering leaves the other addresses counted.
	settle *checkState
}

// goneNode is what the collector remembers of a node seen gone.
type goneNode struct {
	since time.Time
	// stripped, after a dry pass said the node would lose its blocks,
	// holds those blocks' sequence numbers. A real pass forgets a node it
	// strips, and sees it anew if it holds blocks again; the dry run
	// keeps its clock only while the node holds just those blocks,
	// unchanged (nothing was released), and otherwise starts it again, as
	// the real pass would.
	stripped map[netip.Prefix]uint64
	// labels, with stripped, is the revision of the node's stored labels
	// that the dry pass would have deleted (0: none). Labels set since
	// (or removed) start the node again, as they would after a real pass,
	// which forgets the node and deletes only the labels it listed.
	labels Revision
}

// suspect is what the collector remembers of an allocation or a block.
type suspect struct {
	since  time.Time
	seq    uint64 // the allocation's (or the block's) sequence number
	handle string
}

// Suspect is an allocation whose owner the liveness oracle calls dead,
// waiting out the grace period (see Collector).
type Suspect struct {
	Allocation
	// Since is when a pass first saw the owner dead (at this sequence
	// number); the address is released on the first pass from
	// Since+Grace on, if its owner is still dead then and no other
	// allocation of its handle is alive or has a later Since.
	Since time.Time `json:"since"`
}

// GoneNode is a node holding blocks, or with labels stored, that the node
// oracle calls gone, waiting out the grace period (see Collector).
type GoneNode struct {
	Name string `json:"name"`
	// Since is when a pass first saw it gone; it loses its blocks and
	// labels on the first pass from Since+Grace on, if it is still gone
	// then.
	Since time.Time `json:"since"`
	// Blocks lists the blocks affine to it, in address order, as the pass
	// read them (before any of its own releases: after one that failed
	// in part, GoneNodeBlocks has those that went).
	Blocks []netip.Prefix `json:"blocks"`
	// Labels says that it has labels stored (SetNodeLabels), which go
	// with its blocks.
	Labels bool `json:"labels,omitempty"`
}

// CollectResult says what one pass did, or with CollectorOptions.DryRun
// what it would have done, ready to encode as JSON (a report to read, and
// to release by hand: see CollectorOptions.DryRun).
type CollectResult struct {
	// DryRun says that the pass wrote nothing (CollectorOptions.DryRun):
	// the lists below are what it would have released, deleted and
	// rewritten, as far as its reads tell. A real pass leaves alone what
	// changed since it read it: an address assigned again, a block
	// written.
	DryRun bool `json:"dryRun,omitempty"`
	// Allocations is how many allocations the pass looked at.
	Allocations int `json:"allocations"`
	// Suspects lists, in address order, the allocations with a dead owner
	// that the pass did not release: those waiting out the grace period,
	// and those whose handle holds another allocation that is alive or
	// was seen dead later (a handle is released all at once).
	Suspects []Suspect `json:"suspects,omitempty"`
	// Released lists the allocations released by this pass. An allocation
	// released and assigned again since the pass read it is left to its
	// new owner, without an error.
	Released []Allocation `json:"released,omitempty"`
	// ReleasedBlocks lists the empty blocks whose affinity was released
	// (and which were deleted, or kept while their addresses cool) because
	// they stayed empty, not because their node is gone.
	ReleasedBlocks []netip.Prefix `json:"releasedBlocks,omitempty"`
	// GoneNodes lists, by name, the nodes holding blocks or labels that
	// the node oracle (CollectorOptions.Nodes) calls gone, after the pass:
	// nodes waiting out the grace period, or with a block whose release
	// failed.
	GoneNodes []GoneNode `json:"goneNodes,omitempty"`
	// GoneNodeBlocks lists the blocks whose affinity was released because
	// their node is gone: the empty ones were deleted (or kept while their
	// addresses cool), the others keep their addresses without affinity.
	GoneNodeBlocks []netip.Prefix `json:"goneNodeBlocks,omitempty"`
	// GoneNodeLabels lists, by name, the nodes gone whose stored labels
	// (SetNodeLabels) the pass deleted with their blocks; labels changed
	// since the pass read them stay. (Labels set again unchanged are not
	// written, so they go; a later SetNodeLabels stores them anew.)
	GoneNodeLabels []string `json:"goneNodeLabels,omitempty"`
	// DeletedBlocks lists the blocks without affinity the pass deleted:
	// empty ones kept while their addresses cooled, once the cooldown is
	// over, and any other (one a crash left, say), and those whose last
	// address it released (a gone node's block that held addresses).
	DeletedBlocks []netip.Prefix `json:"deletedBlocks,omitempty"`
	// RepairedHandles lists the handles whose records the pass rewrote to
	// count what the blocks hold: records that counted more, at one
	// revision, in every pass across the grace period and one pass more
	// (left by a crash or a failed write; an assignment in flight looks
	// the same, but not for so long). A record
	// that counted nothing any block holds is deleted, which makes its
	// handle new again for a request with NewHandle.
	RepairedHandles []string `json:"repairedHandles,omitempty"`
}

// NewCollector returns a collector releasing a's leaked addresses, asking
// live whether owners exist.
func NewCollector(a *Allocator, live Liveness, opts CollectorOptions) (*Collector, error) {
	switch {
	case a == nil:
		return nil, fmt.Errorf("ipam: NewCollector: %w: nil allocator", ErrInvalid)
	case live == nil:
		return nil, fmt.Errorf("ipam: NewCollector: %w: nil liveness oracle", ErrInvalid)
	case opts.Grace < 0:
		return nil, fmt.Errorf("ipam: NewCollector: %w: negative grace period %v", ErrInvalid, opts.Grace)
	case opts.Grace == 0:
		opts.Grace = 15 * time.Minute
	}
	return &Collector{a: a, live: live, nodes: opts.Nodes, grace: opts.Grace, keep: opts.KeepEmptyBlocks, dry: opts.DryRun,
		leaks: map[netip.Addr]suspect{}, blocks: map[netip.Prefix]suspect{}, gone: map[string]goneNode{},
		handles: map[string]staleCount{}}, nil
}

// Collect runs one pass: it reads every block, updates the suspects, and
// releases what has been dead, empty or gone for the grace period. Errors
// from individual releases are joined in the returned error; the pass goes
// on.
func (c *Collector) Collect(ctx context.Context) (CollectResult, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.a.now()
	// Nodes with stored labels, if nodes are asked: the labels of one
	// that is gone go with its blocks.
	var labeled map[string]Revision
	if c.nodes != nil {
		nodes, err := c.a.store.List(ctx, KindNode, KeyRange{})
		if err != nil {
			return CollectResult{}, fmt.Errorf("ipam: collect: list nodes: %w", err)
		}
		labeled = make(map[string]Revision, len(nodes))
		for _, r := range nodes {
			labeled[r.Key] = r.Revision
		}
	}
	// The pools, read before the blocks: a node's last block, which the
	// pass keeps, must be one it can assign from (see serves).
	pools, err := c.a.loadView(ctx)
	if err != nil {
		return CollectResult{}, fmt.Errorf("ipam: collect: %w", err)
	}
	recs, err := c.a.store.List(ctx, KindBlock, KeyRange{})
	if err != nil {
		return CollectResult{}, fmt.Errorf("ipam: collect: list blocks: %w", err)
	}
	res := CollectResult{DryRun: c.dry}
	var errs []error
	byHandle := map[string][]Allocation{} // by ownerGroup
	alive := map[string]bool{}            // groups with an allocation whose owner lives
	seen := map[netip.Addr]bool{}
	empty := map[netip.Prefix]*block.Block{}
	var unaffine []*block.Block        // empty blocks without affinity
	affine := map[ownerFamily]int{}    // blocks per node and family that serve it (see serves)
	var held map[string][]netip.Prefix // each node's blocks, in key (so address) order, if nodes are asked
	if c.nodes != nil {
		held = map[string][]netip.Prefix{}
	}
	read := map[netip.Prefix]*block.Block{}     // the blocks as the pass read them
	counts := map[string]map[netip.Prefix]int{} // per handle, its addresses per block
	for _, r := range recs {
		blk, err := parseBlockKey(r.Key)
		if err != nil {
			continue // Check reports it
		}
		b, err := decodeBlock(blk, r.Value)
		if err != nil {
			continue
		}
		if aff := b.Affinity(); aff.Kind == block.HostAffinity {
			if serves(pools, blk) {
				affine[ownerFamily{aff, blk.Addr().Is6()}]++
			}
			if held != nil {
				held[aff.Name] = append(held[aff.Name], blk)
			}
			if b.Empty() {
				empty[blk] = b
			}
		} else if b.Affinity().IsZero() && b.Empty() {
			unaffine = append(unaffine, b)
		}
		read[blk] = b
		for addr, al := range b.All() {
			x := allocationOf(b, addr, al)
			if counts[x.Handle] == nil {
				counts[x.Handle] = map[netip.Prefix]int{}
			}
			counts[x.Handle][blk]++
			res.Allocations++
			seen[addr] = true
			g := ownerGroup(x)
			live, err := c.live(ctx, x)
			if err != nil || live {
				delete(c.leaks, addr)
				alive[g] = true
				continue
			}
			if s, ok := c.leaks[addr]; !ok || s.seq != x.Seq || s.handle != x.Handle {
				c.leaks[addr] = suspect{since: now, seq: x.Seq, handle: x.Handle}
			}
			byHandle[g] = append(byHandle[g], x)
		}
	}
	for addr := range c.leaks {
		if !seen[addr] {
			delete(c.leaks, addr) // released by someone else
		}
	}
	for node := range labeled {
		if _, ok := held[node]; !ok {
			held[node] = []netip.Prefix{} // labels, but no block
		}
	}
	c.askNodes(ctx, held, read, labeled, now)

	// Release whole handles whose every allocation is a ripe suspect: a
	// handle with one live allocation keeps them all.
	touched := map[string]bool{} // handles whose addresses the pass released
	var dry *emptier
	if c.dry {
		v, err := c.a.loadView(ctx)
		if err != nil {
			return res, fmt.Errorf("ipam: collect: %w", err)
		}
		dry = &emptier{v: v, read: read, left: map[netip.Prefix]int{}}
	}
	for _, g := range slices.Sorted(maps.Keys(byHandle)) {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if alive[g] || !c.ripe(byHandle[g], now) {
			continue
		}
		released, deleted, err := c.release(ctx, byHandle[g], dry)
		if len(released) > 0 {
			touched[byHandle[g][0].Handle] = true // its record changed: see staleCounts
		}
		res.Released = append(res.Released, released...)
		res.DeletedBlocks = append(res.DeletedBlocks, deleted...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	res.Suspects = c.suspects(byHandle, res.Released)

	for blk := range c.blocks {
		if _, ok := empty[blk]; !ok {
			delete(c.blocks, blk) // in use again, or gone
		}
	}

	// The blocks of nodes gone for the grace period.
	stripped := map[string]bool{} // nodes that lost all their blocks (or would have)
	for _, node := range slices.Sorted(maps.Keys(c.gone)) {
		if now.Sub(c.gone[node].since) < c.grace {
			continue
		}
		if err := ctx.Err(); err != nil {
			return res, errors.Join(append(errs, err)...)
		}
		released, gone, err := c.releaseNode(ctx, node, held[node], read, labeled[node])
		if err == nil {
			stripped[node] = true
		}
		if rev, ok := labeled[node]; ok && gone && err == nil {
			dropped, lerr := c.dropLabels(ctx, node, rev)
			if dropped {
				res.GoneNodeLabels = append(res.GoneNodeLabels, node)
			}
			if lerr != nil {
				errs = append(errs, lerr)
			}
		}
		res.GoneNodeBlocks = append(res.GoneNodeBlocks, released...)
		for _, blk := range released {
			delete(empty, blk)
			delete(c.blocks, blk)
			if serves(pools, blk) {
				affine[ownerFamily{block.Host(node), blk.Addr().Is6()}]--
			}
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, node := range slices.Sorted(maps.Keys(c.gone)) {
		if !stripped[node] {
			_, hasLabels := labeled[node]
			res.GoneNodes = append(res.GoneNodes, GoneNode{Name: node, Since: c.gone[node].since, Blocks: held[node], Labels: hasLabels})
		}
	}

	// Empty affine blocks. Releasing one whose addresses are still cooling
	// keeps it, without affinity, until the cooldown is over (see
	// keepCooling).
	if !c.keep {
		for _, blk := range slices.SortedFunc(maps.Keys(empty), comparePrefix) {
			b := empty[blk]
			s, ok := c.blocks[blk]
			if !ok || s.seq != b.Seq() {
				c.blocks[blk] = suspect{since: now, seq: b.Seq()}
				continue
			}
			of := ownerFamily{b.Affinity(), blk.Addr().Is6()}
			last := serves(pools, blk) && affine[of] <= 1
			if now.Sub(s.since) < c.grace || last {
				continue // not long enough, or the node's last block of the family
			}
			dec := 0 // what the node's count loses with the block
			if serves(pools, blk) {
				dec = 1
			}
			if c.dry {
				res.ReleasedBlocks = append(res.ReleasedBlocks, blk)
				affine[of] -= dec
				continue
			}
			// The node's count goes down whatever comes of it: a release
			// that failed may have landed (a lost reply, or a failure after
			// the block's write), and a block that changed meanwhile may
			// be gone or another owner's now. Counting it as gone keeps
			// the node's last block of the family, at the cost of a block
			// kept until the next pass.
			affine[of] -= dec
			_, err := c.a.releaseEmptyAffinity(ctx, b.Affinity(), blk, s.seq)
			switch {
			case err == nil:
				res.ReleasedBlocks = append(res.ReleasedBlocks, blk)
				delete(c.blocks, blk)
			case errors.Is(err, errBlockChanged):
				delete(c.blocks, blk)
			default:
				errs = append(errs, err)
			}
		}
	}

	// Empty blocks without affinity, kept while their addresses cooled:
	// once the cooldown is over they have nothing left to remember.
	if len(unaffine) > 0 {
		v, err := c.a.loadView(ctx)
		if err != nil {
			return res, errors.Join(append(errs, fmt.Errorf("ipam: collect: %w", err))...)
		}
		for _, b := range unaffine {
			if v.cooling(b, now) {
				continue
			}
			if c.dry {
				res.DeletedBlocks = append(res.DeletedBlocks, b.Prefix())
				continue
			}
			deleted, err := c.a.releaseEmptyAffinity(ctx, block.Affinity{}, b.Prefix(), b.Seq())
			switch {
			case deleted:
				res.DeletedBlocks = append(res.DeletedBlocks, b.Prefix())
			case err != nil && !errors.Is(err, errBlockChanged):
				errs = append(errs, err)
			}
		}
	}

	repaired, err := c.staleCounts(ctx, now, counts, read, touched)
	res.RepairedHandles = repaired
	if err != nil {
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}

// staleCounts lists the handle records and rewrites those that have
// counted more addresses than the blocks hold, at one revision, for the
// grace period and one pass more, as Repair does (see rebuildHandle and
// staleCount.settle): each count becomes what the read of the pass before
// or a fresh one gives the handle. counts holds, per handle, its
// addresses per block in the pass's read (a handle missing from it holds
// nothing), and read those blocks. The handles in touched, whose
// addresses this pass released (or in a dry run would have), are left
// to the next pass: the release lowered the record, at a revision the
// pass did not read (or a dry run cannot know), and the next pass reads
// the record as the release left it, a dry run's and a real one's alike.
func (c *Collector) staleCounts(ctx context.Context, now time.Time, counts map[string]map[netip.Prefix]int, read map[netip.Prefix]*block.Block, touched map[string]bool) ([]string, error) {
	recs, err := c.a.store.List(ctx, KindHandle, KeyRange{})
	if err != nil {
		return nil, fmt.Errorf("ipam: collect: list handles: %w", err)
	}
	stale := map[string]bool{}
	var repaired []string
	var errs []error
	for _, r := range recs {
		var rec handleRecord
		if rec.unmarshal(r.Value) != nil {
			continue // Check reports it, Repair rebuilds it
		}
		if touched[r.Key] {
			continue
		}
		found := counts[r.Key]
		if !slices.ContainsFunc(rec.entries(), func(hc handleCount) bool { return hc.count > found[hc.block] }) {
			continue
		}
		stale[r.Key] = true
		s, ok := c.handles[r.Key]
		if !ok || s.rev != r.Revision {
			c.handles[r.Key] = staleCount{since: now, rev: r.Revision}
			continue
		}
		if now.Sub(s.since) < c.grace {
			continue
		}
		// Ripe: keep this pass's read for the next one, which rebuilds
		// from it. A dry run, which rebuilds nothing, keeps the latest.
		settle := s.settle
		if settle == nil || c.dry {
			s.settle = settleRead(r.Key, &rec, found, read)
			c.handles[r.Key] = s
		}
		if settle == nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			return repaired, errors.Join(append(errs, err)...)
		}
		delete(c.handles, r.Key)
		fix := c.a.rebuildHandle(ctx, r.Key, r.Revision, settle, c.dry)
		if c.dry && fix.err == nil && len(fix.changed) > 0 {
			// A real pass's rewrite would start the clock again; the dry
			// run, having written nothing, goes on reporting it.
			c.handles[r.Key] = s
		}
		switch {
		case errors.Is(fix.err, errHandleMoved):
			// Written since the listing: an operation under the handle
			// ran, and the next pass starts its clock again.
		case fix.err != nil:
			errs = append(errs, fmt.Errorf("ipam: collect: handle %q: %w", r.Key, fix.err))
		case len(fix.changed) > 0:
			repaired = append(repaired, r.Key)
		}
	}
	for h := range c.handles {
		if !stale[h] {
			delete(c.handles, h)
		}
	}
	return repaired, errors.Join(errs...)
}

// settleRead is what a collector keeps of its pass's read for a
// handle whose record rec counts more than the blocks hold (found, per
// block, in read): the blocks the record names or the handle was found in.
func settleRead(handle string, rec *handleRecord, found map[netip.Prefix]int, read map[netip.Prefix]*block.Block) *checkState {
	blocks := map[netip.Prefix]*block.Block{}
	for _, hc := range rec.entries() {
		if b, ok := read[hc.block]; ok {
			blocks[hc.block] = b
		}
	}
	for blk := range found {
		blocks[blk] = read[blk]
	}
	return &checkState{blocks: blocks, handles: map[string]map[netip.Prefix]int{handle: found}}
}

// askNodes asks the node oracle, if there is one, about each node of held
// (those holding blocks, as read has them, and those with labels stored,
// holding none), once, and updates the node suspects: a node called gone
// is remembered from when it was first seen gone; one that exists, or
// whose answer is unknown, is forgotten, and so is one not in held now.
// labeled holds the revisions of the nodes' stored labels.
func (c *Collector) askNodes(ctx context.Context, held map[string][]netip.Prefix, read map[netip.Prefix]*block.Block, labeled map[string]Revision, now time.Time) {
	if c.nodes == nil {
		return
	}
	for node := range c.gone {
		if _, ok := held[node]; !ok {
			delete(c.gone, node)
		}
	}
	for _, node := range slices.Sorted(maps.Keys(held)) {
		g, ok := c.gone[node]
		if exists, err := c.nodes(ctx, node); err != nil || exists {
			delete(c.gone, node)
		} else if !ok || (g.stripped != nil && (g.labels != labeled[node] || slices.ContainsFunc(held[node], func(blk netip.Prefix) bool {
			seq, ok := g.stripped[blk]
			return !ok || seq != read[blk].Seq()
		}))) {
			c.gone[node] = goneNode{since: now}
		}
	}
}

// releaseNode asks the node oracle again whether node is gone and, if it
// still is, releases node's affinity to blocks, the blocks the pass saw it
// hold, as ReleaseHostAffinities would. It returns those released, and
// whether the node was still gone (false: it exists, or the oracle could
// not say, and nothing was released). The node stays a suspect while one
// of them is left to a later pass (a release that failed); otherwise it
// is forgotten, and a block it holds again later (a claim in flight, or a
// new node of the same name that the oracle does not know yet) starts its
// grace period afresh. In a dry
// run it releases nothing and returns blocks (see goneNode.stripped);
// labels is the revision of the node's stored labels the pass listed (0:
// none), which the dry run remembers.
func (c *Collector) releaseNode(ctx context.Context, node string, blocks []netip.Prefix, read map[netip.Prefix]*block.Block, labels Revision) (released []netip.Prefix, gone bool, err error) {
	if exists, err := c.nodes(ctx, node); err != nil || exists {
		delete(c.gone, node)
		return nil, false, nil
	}
	if c.dry {
		g := c.gone[node]
		g.stripped, g.labels = map[netip.Prefix]uint64{}, labels
		for _, blk := range blocks {
			g.stripped[blk] = read[blk].Seq()
		}
		c.gone[node] = g
		return blocks, true, nil
	}
	aff := block.Host(node)
	var errs []error
	for _, blk := range blocks {
		held, err := c.a.releaseHeld(ctx, aff, blk, false)
		switch {
		case err == nil:
			if held {
				released = append(released, blk)
			}
		case errors.Is(err, ErrAffinityConflict):
			// Not the node's any more: nothing to release.
		default:
			errs = append(errs, fmt.Errorf("ipam: collect: release block %s of gone node %q: %w", blk, node, err))
		}
	}
	if len(errs) == 0 {
		delete(c.gone, node)
	}
	return released, true, errors.Join(errs...)
}

// dropLabels deletes the stored labels of node, a node gone, at rev, the
// revision the pass listed, and reports whether it did (in a dry run,
// whether it would): labels changed since (the node is back) stay. Labels
// set again unchanged are not written (see SetNodeLabels), so they go.
func (c *Collector) dropLabels(ctx context.Context, node string, rev Revision) (bool, error) {
	if c.dry {
		return true, nil
	}
	err := c.a.store.Delete(ctx, KindNode, node, rev)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound):
		return false, nil
	}
	return false, fmt.Errorf("ipam: collect: delete labels of gone node %q: %w", node, err)
}

// suspects lists the suspects that byHandle, the allocations with a dead
// owner in the pass's read, holds after the pass, in address order:
// those not in released.
func (c *Collector) suspects(byHandle map[string][]Allocation, released []Allocation) []Suspect {
	done := map[netip.Addr]bool{} // a real pass has forgotten them already
	if c.dry {
		for _, x := range released {
			done[x.Addr] = true
		}
	}
	var out []Suspect
	for _, allocs := range byHandle {
		for _, x := range allocs {
			if s, ok := c.leaks[x.Addr]; ok && !done[x.Addr] {
				out = append(out, Suspect{Allocation: x, Since: s.since})
			}
		}
	}
	slices.SortFunc(out, func(x, y Suspect) int { return x.Addr.Compare(y.Addr) })
	return out
}

// ownerGroup names the allocations a Collector releases all or none of:
// a handle's, or, for an address without a handle (which carve never
// assigns, but Calico may have), that address alone. No handle holds a
// NUL, so the two never meet.
func ownerGroup(x Allocation) string {
	if x.Handle != "" {
		return x.Handle
	}
	return "\x00" + x.Addr.String()
}

// ripe reports whether every allocation of a handle has been a suspect for
// the grace period.
func (c *Collector) ripe(allocs []Allocation, now time.Time) bool {
	for _, x := range allocs {
		s, ok := c.leaks[x.Addr]
		if !ok || now.Sub(s.since) < c.grace {
			return false
		}
	}
	return true
}

// release asks again whether the owners are dead and, if all are, releases
// the handle's allocations with their sequence numbers. It returns what it
// released and the blocks that deleted. In a dry run (dry set) it
// releases nothing and says what it would have.
func (c *Collector) release(ctx context.Context, allocs []Allocation, dry *emptier) ([]Allocation, []netip.Prefix, error) {
	for _, x := range allocs {
		if live, err := c.live(ctx, x); err != nil || live {
			for _, y := range allocs {
				delete(c.leaks, y.Addr)
			}
			return nil, nil, nil
		}
	}
	if dry != nil {
		return allocs, dry.release(allocs), nil
	}
	rels := make([]Release, len(allocs))
	for i, x := range allocs {
		rels[i] = x.Release()
	}
	res, err := c.a.ReleaseIPs(ctx, rels...)
	if errors.Is(err, ErrHandleMismatch) || errors.Is(err, ErrSeqMismatch) {
		// Refusals only (a store error ends ReleaseIPs before it reports
		// any): addresses released and assigned again since the pass read
		// them, which the checks keep, as they should.
		err = nil
	}
	// Released is in request order, which is allocs' order: one pass
	// over both (a search per address cost a handle of many addresses
	// time quadratic in their number).
	var out []Allocation
	j := 0
	for _, x := range allocs {
		if j < len(res.Released) && res.Released[j] == x.Addr {
			out = append(out, x)
			j++
		}
		delete(c.leaks, x.Addr)
	}
	return out, res.DeletedBlocks, err
}

// emptier tells a dry run which blocks its releases would delete: those
// without affinity whose last address goes, unless kept while their
// addresses cool (see keepCooling; the addresses released cool from now).
type emptier struct {
	v    *view
	read map[netip.Prefix]*block.Block
	left map[netip.Prefix]int // addresses left in blocks released from
}

// release counts allocs, a handle's addresses in the pass's read, as
// released and returns, in address order, the blocks that empties.
func (m *emptier) release(allocs []Allocation) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range allocs {
		b := m.read[x.Block]
		if b == nil || !b.Affinity().IsZero() {
			continue // affine blocks stay their owner's
		}
		n, ok := m.left[x.Block]
		if !ok {
			n = b.Used()
		}
		m.left[x.Block] = n - 1
		if _, carved := carving(m.v.pools, x.Block); n == 1 && (m.v.config.ReleaseCooldown <= 0 || !carved) {
			out = append(out, x.Block)
		}
	}
	slices.SortFunc(out, comparePrefix)
	return out
}

// errBlockChanged: a block changed since a caller last saw it.
var errBlockChanged = errors.New("block changed since it was seen")

// releaseEmptyAffinity releases aff's affinity to blk, which deletes it
// (unless an address in it is still cooling: see keepCooling), only if the
// block is still empty, affine to aff, and at sequence number seq;
// otherwise it returns errBlockChanged. With the zero aff it deletes an
// empty block without affinity on the same terms. It reports whether the
// block was deleted.
func (a *Allocator) releaseEmptyAffinity(ctx context.Context, aff block.Affinity, blk netip.Prefix, seq uint64) (bool, error) {
	e := a.entry(blk)
	e.lock()
	err := a.retry(ctx, "release empty block", e.name, func() error {
		if err := a.load(ctx, e); err != nil {
			return err
		}
		if e.blk == nil || e.blk.Affinity() != aff || !e.blk.Empty() || e.blk.Seq() != seq {
			return errBlockChanged
		}
		next := e.stage()
		next.SetAffinity(block.Affinity{}, time.Time{})
		return a.commit(ctx, e)
	})
	deleted := err == nil && e.blk == nil
	e.unlock()
	if err != nil || aff.IsZero() {
		return deleted, err
	}
	return deleted, a.dropIndex(ctx, aff, blk, 0)
}

// serves reports whether a node can assign from its block blk under v:
// a pool that is enabled, and not a LoadBalancer pool, carves blk (with
// blk's size). Only such blocks count toward the node's last block of a
// family, which a Collector keeps; an empty one in a disabled pool
// (midway through a migration), in a pool UpdatePool made a LoadBalancer
// pool since, or in no pool goes once the grace period has run, even if
// it is the node's only block: its next assignment claims from a pool
// that serves it anyway.
func serves(v *view, blk netip.Prefix) bool {
	p, ok := v.pools.ByAddr(blk.Addr())
	return ok && !p.Disabled && !p.Allows(pool.UseLoadBalancer) && p.BlockSize == blk.Bits()
}

// ownerFamily is a block owner and an address family (IPv6 or not): the
// collector keeps each node's last block of each family.
type ownerFamily struct {
	aff block.Affinity
	v6  bool
}
