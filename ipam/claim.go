package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/pool"
)

// claimProbes is how many blocks of a pool's walk a claim tries blindly
// before it lists the pool's existing blocks and skips them. In a sparse
// pool (the common case, and always in a large IPv6 pool) the first probe
// succeeds; in a crowded one the list turns a long search into one read.
const claimProbes = 4

// claim claims a block of pool p for aff: the first block of the node's walk
// that does not exist yet, or failing that an empty block of another node
// old enough to reclaim. w walks p past the blocks the node holds already
// (see newWalker); when claim lists the pool's blocks, it adds them to w,
// so that later claims of the same request pass over them too. It reports
// false when the pool has neither.
//
// A block whose record is corrupt counts as taken, and is listed in
// corrupt.
//
// It also returns the pool's blocks when it had to list them, so that
// borrowing need not list them again, and whether the block it returns was
// made aff's by this claim (made), rather than found aff's already (made
// so by another allocator serving the same owner since the owner's blocks
// were read): only a block made so is the caller's to give up again.
func (a *Allocator) claim(ctx context.Context, v *view, p *pool.Pool, w *pool.Walker, aff block.Affinity, rsv hostReserved, mine []netip.Prefix) (blk netip.Prefix, ok, made bool, existing []Record, corrupt []netip.Prefix, err error) {
	listed := false
	probes := 0
	var taken []netip.Prefix // other nodes' blocks met, for w once the walk is over
	defer func() {
		for _, blk := range taken {
			w.Skip(blk)
		}
	}()
	for {
		for blk := range w.Walk(aff.Name) {
			if v.hasReserved && v.reserved.ContainsPrefix(blk) {
				continue // reserved whole by several smaller reservations
			}
			ok, made, fresh, err := a.tryClaim(ctx, blk, aff, probes > 0 || listed, rsv)
			if err != nil && passOver(err, blk) {
				corrupt = append(corrupt, blk)
				ok, fresh = false, true // read, and no block to claim
			} else if err != nil {
				return netip.Prefix{}, false, false, existing, corrupt, err
			}
			if ok {
				return blk, true, made, existing, corrupt, nil
			}
			if fresh {
				// Only a refusal that rests on a read may keep the
				// request's later walks off the block: a cached copy may
				// show a block another allocator has deleted since.
				taken = append(taken, blk)
			}
			probes++
			if probes >= claimProbes && !listed || probes >= a.retries {
				break
			}
		}
		if listed || probes >= a.retries {
			break
		}
		// Crowded pool: read which blocks exist and walk past them.
		recs, err := a.store.List(ctx, KindBlock, blockRange(p.CIDR))
		if err != nil {
			return netip.Prefix{}, false, false, nil, corrupt, fmt.Errorf("ipam: list blocks of pool %q: %w", p.Name, err)
		}
		existing, listed = recs, true
		w.SkipAll(func(yield func(netip.Prefix) bool) {
			for _, r := range recs {
				if blk, err := parseBlockKey(r.Key); err == nil && !yield(blk) {
					return
				}
			}
		})
	}
	blk, ok, made, err = a.reclaim(ctx, v, p, aff, existing, rsv, mine)
	return blk, ok, made, existing, corrupt, err
}

// newWalker returns a walker of p for a node's claims that passes over the
// blocks it holds and those that reservations cover whole.
func newWalker(v *view, p *pool.Pool, held []netip.Prefix) *pool.Walker {
	if !v.hasReserved {
		return p.NewWalker(held)
	}
	skip := append(slices.Clone(held), reservedSkip(v.reserved, p.CIDR, p.BlockSize)...)
	return p.NewWalker(skip)
}

// tryClaim creates block blk affine to aff. It reports false, having
// changed nothing, when the block exists and is not affine to aff, with
// fresh set when that rests on a read made here rather than on a cached
// copy; made is as for claimLocked.
//
// The index record goes first: a crash before the block is created leaves
// an index entry without a block (ignored, and removed by Repair), never a
// block its node cannot find.
func (a *Allocator) tryClaim(ctx context.Context, blk netip.Prefix, aff block.Affinity, look bool, rsv hostReserved) (ok, made, fresh bool, err error) {
	made, fresh, err = a.claimBlock(ctx, blk, aff, look, rsv)
	if errors.Is(err, ErrAffinityConflict) {
		return false, false, fresh, nil
	}
	return err == nil, made, fresh, err
}

// claimBlock is tryClaim with the refusal an error matching
// ErrAffinityConflict that names the block's owner.
func (a *Allocator) claimBlock(ctx context.Context, blk netip.Prefix, aff block.Affinity, look bool, rsv hostReserved) (made, fresh bool, err error) {
	e := a.entry(blk)
	e.lock()
	defer e.unlock()
	err = a.retry(ctx, "claim block", e.name, func() error {
		m, err := a.claimLocked(ctx, e, aff, look, rsv)
		made = made || m
		return err
	})
	return made, e.fresh, err
}

// claimLocked creates e's block affine to aff, or accepts it when it exists
// with that affinity already; otherwise it fails with ErrAffinityConflict
// and leaves no index record behind. made reports that this call made the
// block aff's (created it, or took over an empty one nobody held), as
// opposed to finding it aff's already: only such a claim is the caller's
// to give up again. The caller holds e.mu.
func (a *Allocator) claimLocked(ctx context.Context, e *blockEntry, aff block.Affinity, look bool, rsv hostReserved) (made bool, err error) {
	// Look first, when asked: in a crowded pool most probes find the block
	// taken, and a read settles that without writing (and undoing) an
	// index entry. The first probe of a walk usually finds the block free
	// and goes straight to the writes.
	//
	// A cached copy that calls the block aff's already, or nobody's, is
	// read again too: accepting or adopting it must not rest on a block
	// that another allocator may have deleted or taken since. (A refusal
	// drawn from the cache only moves the walk on; the pool listing that
	// follows, if it comes to that, sees the truth.)
	if (look || e.blk != nil && (e.blk.Affinity() == aff || e.blk.Affinity().IsZero())) && !e.fresh {
		if err := a.load(ctx, e); err != nil {
			return false, err
		}
	}
	if e.blk != nil {
		switch {
		case e.blk.Affinity() == aff:
			return false, a.claimStands(ctx, e, aff) // perhaps an earlier attempt's write whose reply was lost
		case e.blk.Affinity().IsZero() && e.blk.Empty():
			err := a.adoptLocked(ctx, e, aff, rsv)
			return err == nil, err
		}
		return false, conflictError("claim block %s for %s", e.prefix, aff, e.blk)
	}
	idxRev, err := a.createIndex(ctx, aff, e.prefix)
	if err != nil {
		return false, err
	}
	// With the index entry made, the claim goes through to its end, or
	// undoes it, even if the caller gives up meanwhile (see detach).
	ctx, cancel := detach(ctx)
	defer cancel()
	b, err := block.New(e.prefix)
	if err != nil {
		return false, fmt.Errorf("ipam: claim block %s: %w", e.prefix, err)
	}
	rsv.apply(b)
	b.SetAffinity(aff, a.now())
	err = a.create(ctx, e, b)
	if err == nil || !refused(err) {
		// Created, or perhaps (a lost reply): either way the block may be
		// aff's, so its index record must be there.
		if err := a.confirmIndex(ctx, e, aff, err); err != nil {
			return false, err
		}
		// Made by this claim (or, after a lost reply, perhaps by another
		// allocator serving the same owner, which comes to the same).
		err = a.claimStands(ctx, e, aff)
		return err == nil, err
	}
	if !errors.Is(err, ErrExists) {
		return false, err
	}
	// Someone created the block first.
	if err := a.load(ctx, e); err != nil {
		if errors.Is(err, ErrCorrupt) && idxRev != 0 {
			// A block that does not decode is no one's to claim, nor
			// to have claimed meanwhile: the index record made above is
			// this claim's own, and goes (dropIndex would keep it, as it
			// keeps one whose block cannot be read).
			if derr := a.store.Delete(ctx, KindAffinity, affinityKey(aff.String(), e.prefix), idxRev); derr != nil && !refused(derr) {
				err = errors.Join(err, fmt.Errorf("ipam: claim block %s for %s: deleting its index record again: %w", e.prefix, aff, derr))
			}
		}
		return false, err
	}
	switch {
	case e.blk != nil && e.blk.Affinity() == aff:
		// aff's already: an earlier attempt of this node, or another
		// allocator serving it.
		return false, a.claimStands(ctx, e, aff)
	case e.blk != nil && e.blk.Affinity().IsZero() && e.blk.Empty():
		// Kept while its addresses cool: take it over here, as a probe
		// that looked first would, with the index record already made.
		err := a.adoptIndexed(ctx, e, aff, rsv, idxRev)
		return err == nil, err
	}
	if err := a.dropIndex(ctx, aff, e.prefix, idxRev); err != nil {
		return false, err
	}
	if e.blk == nil {
		// Created and deleted again in between: try again.
		return false, fmt.Errorf("ipam: claim block %s: %w", e.prefix, errRecordMoved)
	}
	return false, conflictError("claim block %s for %s", e.prefix, aff, e.blk)
}

// conflictError is ErrAffinityConflict for an operation on blk for aff
// (what says "claim block %s for %s"), saying whose b, the block as read,
// is instead.
func conflictError(what string, blk netip.Prefix, aff block.Affinity, b *block.Block) error {
	whose := "it is " + b.Affinity().String() + "'s"
	if b.Affinity().IsZero() {
		whose = "it has no owner"
		if n := b.Used(); n > 0 {
			whose += fmt.Sprintf(" but holds %d addresses", n)
		}
	}
	return fmt.Errorf("ipam: "+what+": %w: %s", blk, aff, ErrAffinityConflict, whose)
}

// adoptLocked claims e's block, which exists and is empty (without
// affinity, kept while its addresses cool, see keepCooling; or another
// node's, for takeOver), for aff, in a claim's order: the index record, the
// block (compare-and-swap, keeping its release times, with the addresses at
// its ends reserved as rsv says), the index record again, the pool set. The
// caller holds e.mu.
func (a *Allocator) adoptLocked(ctx context.Context, e *blockEntry, aff block.Affinity, rsv hostReserved) error {
	idxRev, err := a.createIndex(ctx, aff, e.prefix)
	if err != nil {
		return err
	}
	return a.adoptIndexed(ctx, e, aff, rsv, idxRev)
}

// createIndex makes a claim's index record of blk for aff, the claim's
// first write, and returns its revision: 0 when it exists already, left
// by an earlier attempt (the block then decides). When the create fails
// in a way that may have made the record all the same (a lost reply, a
// context that ended), the claim ends there, so the record is deleted
// again unless the block is aff's (see dropIndex): a claim that fails
// leaves no index record behind.
func (a *Allocator) createIndex(ctx context.Context, aff block.Affinity, blk netip.Prefix) (Revision, error) {
	rev, err := a.store.Create(ctx, KindAffinity, affinityKey(aff.String(), blk), nil)
	switch {
	case err == nil:
		return rev, nil
	case errors.Is(err, ErrExists):
		return 0, nil
	}
	err = fmt.Errorf("ipam: claim block %s for %s: %w", blk, aff, err)
	if !refused(err) {
		ctx, cancel := detach(ctx)
		defer cancel()
		if derr := a.dropIndex(ctx, aff, blk, 0); derr != nil {
			err = errors.Join(err, fmt.Errorf("ipam: claim block %s for %s: deleting its index record again: %w", blk, aff, derr))
		}
	}
	return 0, err
}

// adoptIndexed is adoptLocked once the index record is there, at revision
// idxRev (0: unknown).
func (a *Allocator) adoptIndexed(ctx context.Context, e *blockEntry, aff block.Affinity, rsv hostReserved, idxRev Revision) error {
	ctx, cancel := detach(ctx) // the index entry is made: see claimLocked
	defer cancel()
	next := e.stage()
	now := a.now()
	rsv.reset(next, now)
	next.SetAffinity(aff, now)
	err := a.commit(ctx, e)
	if err != nil && refused(err) {
		// Changed since read: the retry reads it again.
		return errors.Join(err, a.dropIndex(ctx, aff, e.prefix, idxRev))
	}
	if err := a.confirmIndex(ctx, e, aff, err); err != nil {
		return err
	}
	return a.claimStands(ctx, e, aff)
}

// confirmIndex makes sure of a claim's index record after its block write,
// which failed with werr when not nil (an outcome not known), and reports
// whether the claim goes on (nil). The record was made before the block
// write; when it is gone by now, a release of the block (ReleaseAffinity,
// ReleaseHostAffinities, a pool's deletion, another allocator's claim
// giving the block up) ran between the two writes and deleted it after
// its own write of the block. Then, as after an unknown outcome, the
// block, read fresh, decides: still aff's, the claim goes on; otherwise
// the record made again here goes too (it would be stale), and the claim
// fails with a race for its caller to retry. After an unknown outcome the
// record stays (the write may land yet), and the claim fails with werr.
func (a *Allocator) confirmIndex(ctx context.Context, e *blockEntry, aff block.Affinity, werr error) error {
	rev, err := a.store.Create(ctx, KindAffinity, affinityKey(aff.String(), e.prefix), nil)
	created := err == nil
	if err != nil && !errors.Is(err, ErrExists) {
		return errors.Join(werr, fmt.Errorf("ipam: index block %s for %s: %w", e.prefix, aff, err))
	}
	if werr == nil && !created {
		return nil
	}
	if a.claimLanded(ctx, e, aff) {
		return nil
	}
	if werr != nil {
		return werr
	}
	return errors.Join(fmt.Errorf("ipam: claim block %s for %s: %w: its affinity was released during the claim", e.prefix, aff, errRecordMoved),
		a.dropIndex(ctx, aff, e.prefix, rev))
}

// claimLanded reports whether a claim's block create that failed with an
// unknown outcome happened after all: a fresh read finds the block affine
// to aff (made by this claim, or by another allocator serving the same
// node, which comes to the same). Otherwise the outcome stays unknown.
func (a *Allocator) claimLanded(ctx context.Context, e *blockEntry, aff block.Affinity) bool {
	return a.load(ctx, e) == nil && e.blk != nil && e.blk.Affinity() == aff
}

// claimStands makes a claim hold against a concurrent change of the pool
// set: with e's block just made aff's, it reads the pool set and checks
// that an enabled pool still carves the block. If none does, it gives the
// block up when empty (a claim's new block is) and fails with an error
// matching ErrNotInPool; if the pools cannot be read, it gives the block
// up likewise and fails with the store's error, so that a failed claim
// leaves no block behind. The caller holds e.mu.
//
// A claim writes its block and then reads the pools; a pool change writes
// the pools and then reads the blocks (DeletePool disables the pool, then
// lists its blocks and releases their affinity; CreatePool looks for
// blocks of another size after reading the pool set it replaces, so only
// once an overlapping pool is gone). Whichever of the two goes second sees
// the other's write, so no block is created behind a pool change's back:
// one a pool's deletion would miss, or one carved the old way inside a new
// pool of another block size, overlapping its blocks.
func (a *Allocator) claimStands(ctx context.Context, e *blockEntry, aff block.Affinity) error {
	var why string
	var gone error
	if pools, err := a.storedPools(ctx); err != nil {
		// Unchecked, the claim cannot stand: it fails, and gives the
		// block up as below (the store may well work again at once).
		why = "the pools could not be read"
		gone = fmt.Errorf("ipam: claim block %s: %w", e.prefix, err)
	} else {
		p, ok := carving(pools, e.prefix)
		if ok && !p.Disabled {
			e.carved.Store(true)
			return nil
		}
		why = "no pool holds it now"
		if p, held := pools.ByAddr(e.prefix.Addr()); held {
			why = fmt.Sprintf("pool %q changed during the claim", p.Name)
			if p.Disabled {
				why = fmt.Sprintf("pool %q was disabled during the claim", p.Name)
			}
		}
		gone = fmt.Errorf("ipam: claim block %s for %s: %w: %s", e.prefix, aff, ErrNotInPool, why)
	}
	if e.blk == nil || !e.blk.Empty() {
		return gone
	}
	// Give the block up. If that fails, the store's error is what the
	// caller must see: the block may still be aff's.
	err := a.retry(ctx, "give up block", e.name, func() error {
		if !e.fresh {
			if err := a.load(ctx, e); err != nil {
				return err
			}
		}
		if e.blk == nil || e.blk.Affinity() != aff || !e.blk.Empty() {
			return nil
		}
		next := e.stage()
		next.SetAffinity(block.Affinity{}, time.Time{})
		return a.commit(ctx, e) // empty and unaffine: a delete
	})
	if err == nil && (e.blk == nil || e.blk.Affinity() != aff) {
		// Given up: deleted, or kept while its addresses cool.
		err = a.dropIndex(ctx, aff, e.prefix, 0)
	}
	if err != nil {
		return fmt.Errorf("ipam: claim block %s for %s: %s; giving the block up: %w", e.prefix, aff, why, err)
	}
	return gone
}

// stillCarved checks, after a request assigned got under the view v, that
// the pools as stored now still carve each address's block, when they
// changed since v was read. A block that no pool carves can only be one a
// claim made for the pools as they were before a pool over its range was
// replaced by one with another block size (DeletePool, then CreatePool):
// the claim gives it up once it sees the change, unless a request that,
// like this one, read the pools before it assigned there first. Such an
// address must not stand when a pool overlaps its block (the new pool,
// larger or smaller than the block), since that pool's own blocks may
// assign the same addresses again: the request fails with ErrNotInPool,
// for its caller to roll back. (poolOf keeps a request that read the new
// pools out of such a block.)
func (a *Allocator) stillCarved(ctx context.Context, o *assignOp, got ...[]Assigned) error {
	v := o.v
	if a.gens != nil && a.gens.Generation(KindPool) == v.poolsGen && !o.uncarved {
		return nil
	}
	n := 0
	for _, xs := range got {
		n += len(xs)
	}
	if n == 0 {
		return nil
	}
	rec, err := a.store.Get(ctx, KindPool, singletonKey)
	var pools *pool.Set
	switch {
	case errors.Is(err, ErrNotFound):
		return nil // no pool left: nothing can overlap the blocks
	case err != nil:
		return fmt.Errorf("ipam: assign: read pools after the writes: %w", err)
	case rec.Revision == v.poolsRev && !o.uncarved:
		return nil
	}
	if pools, _, err = unmarshalPools(rec.Value); err != nil {
		return fmt.Errorf("ipam: assign: read pools after the writes: %w", err)
	}
	for _, xs := range got {
		for _, x := range xs {
			if _, ok := carving(pools, x.Block); ok {
				a.entry(x.Block).carved.Store(true)
				continue
			}
			// A block no pool carves may stay if no pool overlaps it (a
			// deleted pool's: its blocks stay, without affinity); one
			// that a pool overlaps would share addresses with that pool's
			// own blocks.
			for _, p := range pools.All() {
				if p.CIDR.Overlaps(x.Block) {
					return &AddrError{Addr: x.Addr, Err: fmt.Errorf("ipam: assign %s: %w: pool %q (%s, /%d blocks) was made during the request over its block %s, which it does not carve", x.Addr, ErrNotInPool, p.Name, p.CIDR, p.BlockSize, x.Block)}
				}
			}
		}
	}
	return nil
}

// storedPools reads the pool set from the store, past the view's cache
// (the view's set when its revision is the stored one).
func (a *Allocator) storedPools(ctx context.Context) (*pool.Set, error) {
	rec, err := a.store.Get(ctx, KindPool, singletonKey)
	switch {
	case errors.Is(err, ErrNotFound):
		return new(pool.Set), nil
	case err != nil:
		return nil, fmt.Errorf("read pools: %w", err)
	}
	if v := a.view.Load(); v != nil && rec.Revision == v.poolsRev {
		return v.pools, nil
	}
	s, _, err := unmarshalPools(rec.Value)
	return s, err
}

// carving returns the pool of pools that carves blk: holds it, with blk's
// size as its block size. Disabled pools count.
func carving(pools *pool.Set, blk netip.Prefix) (*pool.Pool, bool) {
	p, ok := pools.ByAddr(blk.Addr())
	if !ok || p.CIDR.Bits() > blk.Bits() || p.BlockSize != blk.Bits() {
		return nil, false
	}
	return p, true
}

// hostReserved says how many addresses at the start and end of each block a
// request claims are reserved (Calico's HostReservedAttr: 3 and 1 for
// Windows nodes).
type hostReserved struct{ first, last int }

// fits reports whether a block of size addresses keeps one to assign.
func (r hostReserved) fits(size int) bool { return size > r.first+r.last }

// tooSmall says, for a request's reasons, that p's blocks keep no address
// to assign once r is reserved.
func (r hostReserved) tooSmall(p *pool.Pool) string {
	return fmt.Sprintf("pool %q's blocks are too small to reserve %d+%d addresses", p.Name, r.first, r.last)
}

// reset makes the reserved addresses of b, an empty block changing hands,
// those a new block claimed with r would have. An address it frees gets at
// as its release time: the address may have been cooling when it was
// reserved, which forgot its release time (see block.UnreserveAt), so it
// is held back for a cooldown from now. (Without a cooldown, the block
// write prunes the time again.)
func (r hostReserved) reset(b *block.Block, at time.Time) {
	first, last := b.Prefix().Addr(), lastAddr(b.Prefix())
	for i := 0; i < MaxHostReserved && i < b.Size(); i, first, last = i+1, first.Next(), last.Prev() {
		for _, x := range [2]netip.Addr{first, last} {
			if b.UnreserveAt(x, at) != nil { // a clock before 1970 or after 2262
				_ = b.Unreserve(x)
			}
		}
	}
	r.apply(b) // reserving again forgets the time
}

// apply reserves the addresses in a new, empty block.
func (r hostReserved) apply(b *block.Block) {
	if r.first == 0 && r.last == 0 {
		return
	}
	first := b.Prefix().Addr()
	for i, a := 0, first; i < r.first; i, a = i+1, a.Next() {
		_ = b.Reserve(a) // a new block: every address is free
	}
	last := lastAddr(b.Prefix())
	for i, a := 0, last; i < r.last; i, a = i+1, a.Prev() {
		_ = b.Reserve(a)
	}
}

// The affinity index has one key per owner and block, so allocators
// serving the same node (in one process or several) share index records:
// one may delete a record, believing the block is not the node's, just as
// another makes the block the node's, counting on that record. Each side
// therefore writes first and then reads what the other writes. A claimer
// puts the record back after its block write (putIndex); a remover reads
// the block after its delete and restores the record if the block is the
// owner's after all (dropIndex). The store orders the four operations, and
// whichever side goes last sees the other's write, so a block affine to a
// node is never left out of the node's index.

// putIndex makes sure the index records that blk is affine to aff. A
// claimer calls it after writing the block.
func (a *Allocator) putIndex(ctx context.Context, aff block.Affinity, blk netip.Prefix) error {
	_, err := a.store.Create(ctx, KindAffinity, affinityKey(aff.String(), blk), nil)
	if err != nil && !errors.Is(err, ErrExists) {
		return fmt.Errorf("ipam: index block %s for %s: %w", blk, aff, err)
	}
	return nil
}

// dropIndex deletes the index record that says blk is affine to aff; rev 0
// means "whatever its revision". A record already gone is fine. If the
// block, read after the delete, is affine to aff, or cannot be read, the
// record is put back.
func (a *Allocator) dropIndex(ctx context.Context, aff block.Affinity, blk netip.Prefix, rev Revision) error {
	key := affinityKey(aff.String(), blk)
	err := a.retry(ctx, "delete affinity", key, func() error {
		r := rev
		if r == 0 {
			rec, err := a.store.Get(ctx, KindAffinity, key)
			if errors.Is(err, ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
			r = rec.Revision
		}
		err := a.store.Delete(ctx, KindAffinity, key, r)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if errors.Is(err, ErrConflict) {
			rev = 0
		}
		return err
	})
	// Even if the delete failed: it may have happened all the same.
	now, rerr := a.storedAffinity(ctx, blk)
	if rerr == nil && now != aff {
		return err
	}
	// The block is aff's, or the read failed and it may be (another
	// allocator serving the same owner may have made it so, counting on
	// the record): the record goes back. The index is a superset, so a
	// record put back for a block that is not aff's is only stale.
	//
	// A release of the block (a claim giving it up, another release)
	// may have run since the read: its block write, then its delete of
	// the record, which would find none. So a record made again here is
	// checked against the block once more, as a claim checks its own
	// (confirmIndex), and goes if the block is no longer aff's.
	rev, perr := a.store.Create(ctx, KindAffinity, affinityKey(aff.String(), blk), nil)
	switch {
	case errors.Is(perr, ErrExists):
		perr = nil
	case perr != nil:
		perr = fmt.Errorf("ipam: index block %s for %s: %w", blk, aff, perr)
	default:
		if now, rerr2 := a.storedAffinity(ctx, blk); rerr2 == nil && now != aff {
			if derr := a.store.Delete(ctx, KindAffinity, affinityKey(aff.String(), blk), rev); derr != nil && !refused(derr) {
				perr = fmt.Errorf("ipam: delete affinity %s: %w", affinityKey(aff.String(), blk), derr)
			}
		}
	}
	return errors.Join(err, rerr, perr)
}

// storedAffinity reads blk's affinity from the store, past the cache (the
// caller may hold the block's cache entry). A block that does not exist
// has the zero affinity.
func (a *Allocator) storedAffinity(ctx context.Context, blk netip.Prefix) (block.Affinity, error) {
	rec, err := a.store.Get(ctx, KindBlock, blockKey(blk))
	if errors.Is(err, ErrNotFound) {
		return block.Affinity{}, nil
	}
	if err != nil {
		return block.Affinity{}, fmt.Errorf("ipam: read block %s: %w", blk, err)
	}
	sum, err := peekBlock(blk, rec.Value)
	if err != nil {
		return block.Affinity{}, err
	}
	return sum.Affinity, nil
}

// reclaim takes over, from the pool's existing blocks, an empty block
// without affinity (one kept while its addresses cool, see keepCooling) or
// an empty block affine to another node and claimed at least ReclaimAge
// ago; made says it did. A block with room found aff's already and not
// among mine (the owner's blocks the request knows: another request of the
// same owner took it over meanwhile) is returned as found, not made, as a
// claim finds one: two requests of one node taking over blocks at once
// end on one, and MaxBlocksPerHost holds.
func (a *Allocator) reclaim(ctx context.Context, v *view, p *pool.Pool, aff block.Affinity, existing []Record, rsv hostReserved, mine []netip.Prefix) (blk netip.Prefix, ok, made bool, err error) {
	now := a.now()
	for _, r := range existing {
		// Only empty blocks of no node or of other nodes are worth decoding.
		sum, err := a.peek(r)
		if err == nil && sum.Affinity == aff && sum.Free() > 0 && sum.Prefix.Bits() == p.BlockSize &&
			!slices.Contains(mine, sum.Prefix) && !(v.hasReserved && v.reserved.ContainsPrefix(sum.Prefix)) {
			return sum.Prefix, true, false, nil
		}
		if err != nil || sum.Used != 0 || sum.Affinity == aff ||
			!sum.Affinity.IsZero() && (sum.Affinity.Kind != block.HostAffinity || a.reclaimAge < 0) {
			continue
		}
		blk := sum.Prefix
		if v.hasReserved && v.reserved.ContainsPrefix(blk) {
			continue // a reservation covers it whole
		}
		b, err := decodeBlock(blk, r.Value)
		if err != nil || !a.reclaimable(b, aff, now) {
			continue
		}
		ok, made, err := a.takeOver(ctx, blk, aff, rsv)
		if err != nil {
			return netip.Prefix{}, false, false, err
		}
		if ok {
			return blk, true, made, nil
		}
	}
	return netip.Prefix{}, false, false, nil
}

// reclaimable reports whether aff may take b over: b is empty and either
// has no affinity or is another node's, claimed at least ReclaimAge ago.
func (a *Allocator) reclaimable(b *block.Block, aff block.Affinity, now time.Time) bool {
	old := b.Affinity()
	switch {
	case !b.Empty() || old == aff:
		return false
	case old.IsZero():
		return true
	}
	return old.Kind == block.HostAffinity && a.reclaimAge >= 0 && now.Sub(b.ClaimTime()) >= a.reclaimAge
}

// takeOver moves an empty, reclaimable block to aff as a claim adopts one
// (adoptLocked: the new index record, the block by compare-and-swap on a
// fresh read that shows it still reclaimable, the pool set), then drops the
// old owner's index record, if it had one. The block keeps its release
// times: the cooldown of its addresses goes on. ok reports that the block
// is aff's: made by this call, or found so, empty, on the fresh read.
func (a *Allocator) takeOver(ctx context.Context, blk netip.Prefix, aff block.Affinity, rsv hostReserved) (ok, made bool, err error) {
	e := a.entry(blk)
	e.lock()
	defer e.unlock()
	var old block.Affinity
	taken, found := false, false
	err = a.retry(ctx, "reclaim block", e.name, func() error {
		if err := a.load(ctx, e); err != nil {
			return err
		}
		if e.blk != nil && e.blk.Affinity() == aff && e.blk.Empty() {
			found = true // another request of aff's took it over just now
			return nil
		}
		if e.blk == nil || !a.reclaimable(e.blk, aff, a.now()) {
			return nil
		}
		old = e.blk.Affinity()
		if err := a.adoptLocked(ctx, e, aff, rsv); err != nil {
			return err
		}
		taken = true
		return nil
	})
	if !old.IsZero() {
		// Stale whether the take-over stood or the block was given up.
		ctx, cancel := detach(ctx) // see detach
		defer cancel()
		if derr := a.dropIndex(ctx, old, blk, 0); derr != nil {
			err = errors.Join(err, derr)
		}
	}
	if err != nil {
		return false, false, err
	}
	return taken || found, taken, nil
}

// borrow assigns up to want addresses from existing blocks of pool p that
// are not affine to the node, appending them to out. It starts at a point
// that depends on the node so that borrowers spread out. It uses the
// blocks a failed claim listed, if any, and decodes only blocks whose
// header shows free addresses.
func (a *Allocator) borrow(ctx context.Context, o *assignOp, out *[]Assigned, p *pool.Pool, want int) error {
	recs, ok := o.listed[p.Name]
	if !ok {
		var err error
		if recs, err = a.store.List(ctx, KindBlock, blockRange(p.CIDR)); err != nil {
			return fmt.Errorf("ipam: list blocks of pool %q: %w", p.Name, err)
		}
	}
	start := 0
	if len(recs) > 0 {
		start = int(fnv32(o.aff.Name) % uint32(len(recs)))
	}
	goal := len(*out) + want
	for i := range recs {
		r := recs[(start+i)%len(recs)]
		sum, err := a.peek(r)
		if err != nil || sum.Prefix.Bits() != p.BlockSize || sum.Free() == 0 || sum.Affinity == o.aff {
			continue
		}
		b, err := decodeBlock(sum.Prefix, r.Value)
		if err != nil {
			continue
		}
		a.seed(sum.Prefix, b, r.Revision)
		res, err := a.assignFrom(ctx, o, out, p.Name, sum.Prefix, goal-len(*out), false, false)
		if err == nil && res == fromFull {
			// The cache held an older copy that calls the block full, where
			// the list just said it has room (another allocator freed
			// addresses): read it fresh and try again.
			_, err = a.assignFrom(ctx, o, out, p.Name, sum.Prefix, goal-len(*out), false, true)
		}
		if err != nil {
			return err
		}
		if len(*out) == goal {
			break
		}
	}
	return nil
}

// seed puts a block just read by a list into the cache, unless the cache
// holds it already (at that or a later revision).
func (a *Allocator) seed(blk netip.Prefix, b *block.Block, rev Revision) {
	e := a.entry(blk)
	e.lock()
	defer e.unlock()
	if !e.loaded {
		e.blk, e.rev, e.loaded = b, rev, true
		e.carved.Store(false)
	}
}

// fnv32 is FNV-1a, used to spread borrowers over a pool's blocks.
func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}
