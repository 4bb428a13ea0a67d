package ipam

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/carve-ipam/carve/block"
)

// blockEntry caches one block as last read or written, with its revision.
// Its mutex is held across a whole read-modify-write, so callers in this
// process take turns on a block instead of racing each other's CAS.
type blockEntry struct {
	mu     sync.Mutex
	key    string // store key
	name   string // prefix as text, for messages
	prefix netip.Prefix
	loaded bool         // blk and rev reflect a read or write of the store
	blk    *block.Block // nil when the block does not exist
	rev    Revision
	// fresh reports whether blk was read or written by the current holder
	// of mu. A cached block is good enough to attempt a write (the
	// compare-and-swap catches a stale one), but a refusal or a "not
	// there" must rest on a fresh read: see confirm.
	fresh bool
	// next is where each attempt builds the new version: a deep copy of blk
	// made before the change, so a failed attempt leaves blk untouched.
	next *block.Block
	// encSize is the length of the block's last encoding, to size the next.
	encSize int
	// writes and revs are a commit's arguments (see assignJoined): they
	// go to the store through an interface, so on the stack they would
	// escape, costing an allocation per commit. The holder of mu uses
	// them, and drops the values written once the commit is done (see
	// dropValues): an entry that kept them would keep every block's last
	// copy of a handle record alive, which for a handle in many blocks is
	// most of the heap (TestHeapBudget). Three: a handle record and a block, or a
	// dual-stack pod's handle record and two blocks (releaseJoinedMany
	// uses the first entry's).
	writes [3]Write
	revs   [3]Revision
	// carved says that the pools, read fresh after the cached block was
	// read or created, carved its prefix (see stillCarved): a request
	// that assigns there need not read them again, whatever the store's
	// generations say. Any read of the block from the store clears it.
	// Atomic, since stillCarved sets it without the lock.
	carved atomic.Bool
}

// lock takes the entry for one operation.
func (e *blockEntry) lock() {
	e.mu.Lock()
	e.fresh = false
}

func (e *blockEntry) unlock() { e.mu.Unlock() }

// errStale asks the retry loop to read a block again before giving a
// negative answer that rested on a cached copy.
var errStale = errors.New("cached block may be stale")

// confirm returns nil when the entry's block was read or written during
// this operation, so a negative answer drawn from it is true. Otherwise it
// drops the cached copy and returns errStale: the caller's retry loop reads
// the block and decides again.
func (e *blockEntry) confirm() error {
	if e.fresh {
		return nil
	}
	e.loaded = false
	return errStale
}

// entry returns the cache entry of the block with prefix p.
func (a *Allocator) entry(p netip.Prefix) *blockEntry {
	newEntry := func() *blockEntry {
		return &blockEntry{key: blockKey(p), name: p.String(), prefix: p}
	}
	if p.Addr().Is4() {
		return a.blocks4.getOrMake(v4Key(p), newEntry)
	}
	return a.blocks.getOrMake(p, newEntry)
}

// v4Key packs an IPv4 prefix into a word: a map with such keys hashes and
// compares one word, where a netip.Prefix key is hashed field by field.
func v4Key(p netip.Prefix) uint64 {
	a := p.Addr().As16() // inlines, where As4 does not
	return uint64(binary.BigEndian.Uint32(a[12:]))<<8 | uint64(uint8(p.Bits()))
}

// freeIn returns how many addresses blk has free when it is aff's block,
// else 0, reading the block unless the cache has it. The answer is a
// guess, good enough to plan with: the block may change before it is
// written. A read that fails gives 0; the write will meet the failure.
func (a *Allocator) freeIn(ctx context.Context, blk netip.Prefix, aff block.Affinity) int {
	e := a.entry(blk)
	e.lock()
	defer e.unlock()
	if a.ensure(ctx, e) != nil || e.blk == nil || e.blk.Affinity() != aff {
		return 0
	}
	return e.blk.Free()
}

// load reads the block from the store. The caller holds e.mu.
func (a *Allocator) load(ctx context.Context, e *blockEntry) error {
	b, rev, err := a.fetch(ctx, e.prefix)
	if err != nil {
		return err
	}
	e.blk, e.rev, e.loaded, e.fresh = b, rev, true, true
	e.carved.Store(false)
	return nil
}

// fetch reads and decodes the block with prefix blk: a new block, nobody
// else's. nil and revision 0 mean it does not exist.
func (a *Allocator) fetch(ctx context.Context, blk netip.Prefix) (*block.Block, Revision, error) {
	rec, err := a.store.Get(ctx, KindBlock, blockKey(blk))
	if errors.Is(err, ErrNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("ipam: read block %s: %w", blk, err)
	}
	b, err := decodeBlock(blk, rec.Value)
	if err != nil {
		return nil, 0, err
	}
	return b, rec.Revision, nil
}

// decodeBlock decodes a block record and checks it is the block its key
// says. Its errors match ErrCorrupt, and are a *corruptBlock naming p.
func decodeBlock(p netip.Prefix, value []byte) (*block.Block, error) {
	b, err := decodeBlockRecord(p, value)
	if err != nil {
		return nil, &corruptBlock{p, err}
	}
	return b, nil
}

// corruptBlock is the error of a block record that does not decode, or
// holds what carve never writes. A claim walking a pool passes over such
// a block (see passOver), as over one another node holds, rather than fail
// a request for a block that was never its node's; an operation on the
// block itself (the node's own block, an address in it) fails with it.
// Check reports it.
type corruptBlock struct {
	blk netip.Prefix
	err error // matches ErrCorrupt
}

func (e *corruptBlock) Error() string { return e.err.Error() }
func (e *corruptBlock) Unwrap() error { return e.err }

// passOver reports whether err says that blk's record is corrupt, and
// nothing more, for an assignment to go on to other blocks. An error
// joined to it (the claim's index entry that could not be deleted again,
// which would leave the node holding the corrupt block) stops the claim.
func passOver(err error, blk netip.Prefix) bool {
	cb, ok := err.(*corruptBlock)
	return ok && cb.blk == blk
}

// decodeBlockRecord is decodeBlock without the wrapping.
func decodeBlockRecord(p netip.Prefix, value []byte) (*block.Block, error) {
	b := new(block.Block)
	if err := b.UnmarshalBinary(value); err != nil {
		return nil, fmt.Errorf("ipam: block %s: %w: %w", p, ErrCorrupt, err)
	}
	if b.Prefix() != p {
		return nil, fmt.Errorf("ipam: block record %s holds block %s: %w", p, b.Prefix(), ErrCorrupt)
	}
	if err := checkStoredAffinity(p, b.Affinity()); err != nil {
		return nil, err
	}
	if b.Seq() >= maxBlockSeq {
		// The counter starts at the clock in nanoseconds and goes up by
		// one per change: no block gets here, and one that did would
		// wrap, to 0 (which releases take as no sequence number) and to
		// numbers it recorded before.
		return nil, fmt.Errorf("ipam: block %s: %w: counter %d is past any a block reaches", p, ErrCorrupt, b.Seq())
	}
	for o := range b.Owners() {
		// An address without a handle (Calico may have written one) is
		// counted by no record; any other handle is a record's key.
		if o.Handle != "" && checkHandle("", o.Handle) != nil {
			return nil, fmt.Errorf("ipam: block %s: %w: owner handle %q is not one carve accepts", p, ErrCorrupt, o.Handle)
		}
	}
	return b, nil
}

// maxBlockSeq bounds the counter of a stored block (see decodeBlock): a
// block starts below it (Unix nanoseconds fit in an int64), and would
// take centuries of changes to climb from there to it.
const maxBlockSeq = 1 << 63

// checkStoredAffinity refuses, as corrupt, an affinity of block p whose
// name carve never accepts: index keys are made of it, so it must be a
// name that can be part of one (see checkNode).
func checkStoredAffinity(p netip.Prefix, aff block.Affinity) error {
	if aff.IsZero() || checkNode("", aff.Name) == nil {
		return nil
	}
	return fmt.Errorf("ipam: block %s: %w: affinity %s:%q is not one carve accepts", p, ErrCorrupt, aff.Kind, aff.Name)
}

// ensure loads the block unless the cache has it. The caller holds e.mu.
func (a *Allocator) ensure(ctx context.Context, e *blockEntry) error {
	if e.loaded {
		return nil
	}
	return a.load(ctx, e)
}

// stage makes e.next a copy of the current block, ready to change. The
// caller holds e.mu and has loaded an existing block.
//
// The copy is a Mirror: e.next is usually the block's previous version
// (commit swaps the two) or a copy changed by an attempt that failed, so
// only what either changed since the last stage is copied. Mirror writes
// e.blk's bookkeeping, never its content, so a BlockKeeper store may read
// e.blk meanwhile.
func (e *blockEntry) stage() *block.Block {
	if e.next == nil {
		e.next = new(block.Block)
	}
	e.blk.Mirror(e.next)
	return e.next
}

// commit writes e.next as the block's new version with compare-and-swap:
// an update, or a delete when the block ended up empty without affinity
// (such a block has nothing to remember, unless addresses in it are still
// cooling: see keepCooling). On success e.next becomes the
// cached block; on a lost race the entry is marked for a fresh read and the
// error matches ErrConflict. The caller holds e.mu.
func (a *Allocator) commit(ctx context.Context, e *blockEntry) error {
	b := e.next
	del, keep, err := a.blockFate(ctx, b)
	switch {
	case err != nil:
		return err
	case del:
		return a.deleteBlock(ctx, e)
	}
	rev, err := a.put(ctx, e, b, e.rev)
	if err != nil {
		return a.blockWriteFailed(e, err)
	}
	e.wrote(rev)
	if keep {
		return a.keptStands(ctx, e)
	}
	return nil
}

// blockFate prunes b's release times and decides what writing b, a
// block's new version, means: a delete when it is empty without affinity
// and nothing in it is cooling (del), otherwise a write, to be followed by
// keptStands when it is such a block kept for its cooling addresses
// (keep).
func (a *Allocator) blockFate(ctx context.Context, b *block.Block) (del, keep bool, err error) {
	a.pruneReleased(b)
	if !b.Empty() || !b.Affinity().IsZero() {
		return false, false, nil
	}
	keep, err = a.keepCooling(ctx, b)
	return !keep && err == nil, keep, err
}

// deleteBlock deletes e's block with compare-and-swap on e.rev.
func (a *Allocator) deleteBlock(ctx context.Context, e *blockEntry) error {
	if err := a.store.Delete(ctx, KindBlock, e.key, e.rev); err != nil {
		return a.writeFailed(e, err)
	}
	e.deleted()
	return nil
}

// keptStands makes the keeping of an empty block without affinity hold
// against a concurrent DeletePool, as claimStands makes a claim hold: with
// the block just written, it reads the pool set, and deletes the block if
// no pool carves it now. DeletePool removes the pool and then deletes the
// pool's empty blocks without affinity, so whichever goes second sees the
// other's write. A refused delete means the block changed meanwhile (a
// claim took it over), which settles it too.
func (a *Allocator) keptStands(ctx context.Context, e *blockEntry) error {
	pools, err := a.storedPools(ctx)
	if err != nil {
		return fmt.Errorf("ipam: keep block %s: %w", e.prefix, err)
	}
	if _, ok := carving(pools, e.prefix); ok {
		return nil
	}
	if err := a.deleteBlock(ctx, e); err != nil && !refused(err) {
		return err
	}
	return nil
}

// keepCooling reports whether commit should write b, empty and without
// affinity, rather than delete it: while an address in it is still cooling
// (Config.ReleaseCooldown) and a pool carves it, so that the
// release times outlive the node's affinity (ReleaseAffinity,
// ReleaseHostAffinities) or the last address of a block left without one.
// A claim may take such a block over (see reclaimable); the Collector
// deletes it once the cooldown has passed (Check lists it as Cooled, not as
// a problem). It reads the view afresh: this is a rare path, and the answer
// must rest on the current cooldown.
func (a *Allocator) keepCooling(ctx context.Context, b *block.Block) (bool, error) {
	if b.ReleaseTimes() == 0 {
		return false, nil
	}
	v, err := a.loadView(ctx)
	if err != nil {
		return false, err
	}
	return v.cooling(b, a.now()), nil
}

// cooling reports whether b, empty and without affinity, is one to keep
// (see keepCooling) under v's pools and configuration at now. A disabled
// pool's blocks are kept too: it may be enabled again.
func (v *view) cooling(b *block.Block, now time.Time) bool {
	cd := v.config.ReleaseCooldown
	if cd <= 0 || b.ReleaseTimes() == 0 {
		return false
	}
	if _, ok := carving(v.pools, b.Prefix()); !ok {
		return false
	}
	return b.CoolingSince(now.Add(-cd)) > 0
}

// pruneReleased forgets the release times b no longer needs: those older
// than the cooldown, or all of them when there is no cooldown. It keeps
// block encodings small. It trusts the cooldown of the allocator's view only
// when the store's generations say the view is current: an operation that
// reads no view (ReleaseHostAffinities, say) may run on an old one, or none,
// and must not forget times that a cooldown set since still needs. Without
// that, it forgets only what no cooldown can need (MaxReleaseCooldown).
func (a *Allocator) pruneReleased(b *block.Block) {
	if b.ReleaseTimes() == 0 {
		return
	}
	cooldown := MaxReleaseCooldown
	if v := a.view.Load(); v != nil && a.gens != nil && a.gens.Generation(KindConfig) == v.configGen {
		cooldown = v.config.ReleaseCooldown
	}
	if cooldown > 0 {
		b.PruneReleased(a.now().Add(-cooldown))
	} else {
		b.PruneReleased(time.Unix(0, math.MaxInt64))
	}
}

// create stores b, a new block, under e. It fails with ErrExists when the
// block exists already. The caller holds e.mu.
func (a *Allocator) create(ctx context.Context, e *blockEntry, b *block.Block) error {
	rev, err := a.put(ctx, e, b, 0)
	if err != nil {
		return a.writeFailed(e, err)
	}
	e.blk, e.rev, e.loaded, e.fresh = b, rev, true, true
	e.carved.Store(false) // until the claim stands (claimStands)
	return nil
}

// put writes b as e's block: a create when rev is 0, an update at rev
// otherwise; handed over as it is when the store is a BlockKeeper, encoded
// otherwise.
func (a *Allocator) put(ctx context.Context, e *blockEntry, b *block.Block, rev Revision) (Revision, error) {
	switch {
	case a.keeper != nil && rev == 0:
		return a.keeper.CreateBlock(ctx, e.key, b)
	case a.keeper != nil:
		return a.keeper.UpdateBlock(ctx, e.key, b, rev)
	}
	value, err := e.encode(b)
	if err != nil {
		return 0, err
	}
	if rev == 0 {
		return a.store.Create(ctx, KindBlock, e.key, value)
	}
	return a.store.Update(ctx, KindBlock, e.key, value, rev)
}

// encode encodes b into a new buffer sized from the last encoding, so that
// it is one allocation.
func (e *blockEntry) encode(b *block.Block) ([]byte, error) {
	value, err := b.AppendBinary(make([]byte, 0, e.encSize+e.encSize/4+64))
	if err != nil {
		return nil, fmt.Errorf("ipam: encode block %s: %w", e.prefix, err)
	}
	e.encSize = len(value)
	return value, nil
}

// refused reports whether a write failed with one of the errors that the
// Store contract says change nothing.
func refused(err error) bool {
	return errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrExists)
}

// writeFailed marks the entry stale after a failed write, so the next
// attempt reads the block again, and wraps the error.
func (a *Allocator) writeFailed(e *blockEntry, err error) error {
	e.loaded, e.fresh = false, false
	if errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("%w: %w", errRecordMoved, err)
	}
	return fmt.Errorf("ipam: write block %s: %w", e.prefix, err)
}

// peeked is a block record's summary (block.Peek), with the revision of
// the record it summarizes.
type peeked struct {
	rev Revision
	sum block.Summary
	err error
}

// peek returns block.Peek of a listed block record, from the allocator's
// cache when it peeked the record at this revision before: a claim or a
// borrow in a crowded pool peeks every block of the pool it lists, and
// most have not changed since the last such request. A record's revision
// names its value (revisions never repeat), so the cache is never stale.
func (a *Allocator) peek(r Record) (block.Summary, error) {
	slot := a.peeks.getOrMake(r.Key, func() *atomic.Pointer[peeked] { return new(atomic.Pointer[peeked]) })
	if p := slot.Load(); p != nil && p.rev == r.Revision {
		return p.sum, p.err
	}
	sum, err := peekRecord(r)
	slot.Store(&peeked{rev: r.Revision, sum: sum, err: err})
	return sum, err
}

// peekRecord is block.Peek of a block record, refused unless the record
// holds the block its key names: callers go on to use the summary's
// prefix, and a record that holds another block (a copy under a wrong
// key) would send them, with its revision, to that other block.
func peekRecord(r Record) (block.Summary, error) {
	blk, err := parseBlockKey(r.Key)
	if err != nil {
		return block.Summary{}, fmt.Errorf("ipam: %w: %w", ErrCorrupt, err)
	}
	return peekBlock(blk, r.Value)
}

// peekBlock is block.Peek of the value of the record of block p, refused
// unless it holds that block (see decodeBlock).
func peekBlock(p netip.Prefix, value []byte) (block.Summary, error) {
	sum, err := block.Peek(value)
	if err != nil {
		return block.Summary{}, fmt.Errorf("ipam: block %s: %w: %w", p, ErrCorrupt, err)
	}
	if sum.Prefix != p {
		return block.Summary{}, fmt.Errorf("ipam: block record %s holds block %s: %w", p, sum.Prefix, ErrCorrupt)
	}
	if err := checkStoredAffinity(p, sum.Affinity); err != nil {
		return block.Summary{}, err
	}
	return sum, nil
}
