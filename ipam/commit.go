package ipam

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// With a store that offers Committer, the pairs of writes that otherwise
// follow each other in a crash-safe order are made in one Commit instead:
// an assignment's raise of its handle's count and its block write, and a
// release by handle's block write and the lowering of its handle's count.
// Only the common shapes join: an assignment to one block outside a
// reservation of counts (a batch or AssignIPs), a release by handle of a
// handle in fewer than MaxCommitWrites blocks (several only when the
// commit goes through at once). Everything else takes the writes one by
// one, as before. A refused commit is retried as a whole, after a fresh
// read of the record it was refused at.

// writeAssign makes the writes of an assignment of k addresses, the first
// addr at seq, staged in e.next for h's handle: the handle's count for the
// block raised, then the block. With a Committer (and no reservation of
// counts under way) both go in one commit, after a read of the handle's
// record unless h knows it; otherwise the count is raised first and the
// block written after, so that a crash in between leaves a count too high
// (repairable), never an address without an owner.
func (a *Allocator) writeAssign(ctx context.Context, h *handleTx, e *blockEntry, addr netip.Addr, seq uint64, k int) error {
	if a.committer != nil && h.spare == nil {
		if !h.known {
			if err := h.read(ctx); err != nil {
				return err
			}
		}
		return a.assignJoined(ctx, h, e, addr, seq, k)
	}
	if err := h.take(ctx, e.prefix, k); err != nil {
		return err
	}
	return a.commitAssign(ctx, h, e, addr, seq, k)
}

// Positions in a joined commit: the handle record's write first.
const (
	joinedHandle = 0
	joinedBlock  = 1
)

// assignJoined is writeAssign's one commit of the handle record and the
// block.
func (a *Allocator) assignJoined(ctx context.Context, h *handleTx, e *blockEntry, addr netip.Addr, seq uint64, k int) error {
	blk := e.prefix
	had := h.rec.count(blk)
	h.rec.put(blk, had+k)
	ws := e.writes[:2]
	h.writeOp(&ws[joinedHandle])
	a.pruneReleased(e.next)
	if err := a.blockWrite(e, &ws[joinedBlock]); err != nil {
		h.rec.put(blk, had)
		return err
	}
	r0 := e.rev
	err := a.committer.Commit(ctx, ws, e.revs[:2])
	created, value := ws[joinedHandle].Rev == 0, ws[joinedHandle].Value
	dropValues(ws)
	if err == nil {
		h.committed(created, e.revs[joinedHandle])
		h.remember()
		e.wrote(e.revs[joinedBlock])
		return nil
	}
	switch refusedAt(err) {
	case joinedBlock:
		// The handle record is as it was: only the block needs reading
		// again, and the next attempt joins the two once more.
		h.rec.put(blk, had)
		return a.blockWriteFailed(e, err)
	case joinedHandle:
		// The block is as it was; the record is read again.
		h.commitFailed(err)
		return handleRefused(e, h, err)
	}
	unsure := h.unsure
	h.commitFailed(err)
	err = a.blockWriteFailed(e, fmt.Errorf("with handle %q: %w", h.id, err))
	// The commit may have landed, all of it, or not at all: the block
	// tells which, as for a block write alone. Nothing was raised before,
	// so nothing needs lowering when it did not.
	ctx, stop := carryOn(ctx)
	defer stop()
	landed, never := a.settleWrite(ctx, e, r0, err, addr, h.id, seq)
	switch {
	case landed:
		// All of the commit landed, the handle's write with it: the
		// record is this request's own, at a revision learnt from a read
		// that finds the value written (unless it changed since).
		h.landed(ctx, value, created, unsure)
		return nil
	case never:
		h.unsure = unsure // none of it did, nor ever will
	default:
		h.unknownWrite(e.prefix, r0, addr, seq, k, false)
	}
	return err
}

// landed records that the write of h's record in a commit whose reply was
// lost, of value (a create if created), happened: a read that finds the
// record holding value makes it h's own again, as written; otherwise h
// stays unsure.
func (h *handleTx) landed(ctx context.Context, value []byte, created, unsure bool) {
	rec, err := h.a.store.Get(ctx, KindHandle, h.id)
	if err != nil || !bytes.Equal(rec.Value, value) {
		return
	}
	if h.rec.unmarshal(rec.Value) != nil {
		return
	}
	h.created = h.created || created
	h.rev, h.mine, h.known, h.unsure = rec.Revision, rec.Revision, true, unsure
	h.remember()
}

// releaseJoined is one attempt at releasing h's addresses in the blocks
// of es (sorted, fewer than MaxCommitWrites, all locked by the caller),
// appending them to *released, in one commit with the lowering of h's
// counts there, for a handle whose record, as the caller read it, counts
// those blocks. ws and revs are the commit's arguments, with room for a
// write per block and one for the record. joined reports that the commit
// was made, and the counts with it; otherwise nothing was released, and
// the error, if any, is the first attempt's for the caller's retry: a
// negative answer drawn from a cached block (errStale), a refusal, or a
// failure.
func (a *Allocator) releaseJoined(ctx context.Context, es []*blockEntry, h *handleTx, at time.Time, released *[]netip.Addr, ws []Write, revs []Revision) (joined bool, err error) {
	if !h.known {
		if err := h.read(ctx); err != nil {
			return false, err
		}
	}
	n := len(*released)
	// What each block releases, and the count each had. Each count goes
	// down by what was released, to zero at least (see lowerJoined), and
	// the record is written in the commit, which checks it.
	var k, had [MaxCommitWrites]int
	for i, e := range es {
		if err = a.ensure(ctx, e); err == nil && e.blk == nil {
			if err = e.confirm(); err == nil {
				err = errNothingHere // the block is gone, on a fresh read
			}
		}
		if err == nil {
			next := e.stage()
			m := len(*released)
			if at.IsZero() {
				*released = next.ReleaseHandle(h.id, *released)
			} else {
				*released, err = next.ReleaseHandleAt(h.id, *released, at)
			}
			if k[i] = len(*released) - m; err == nil && k[i] == 0 {
				err = e.confirm()
				if err == nil {
					err = errNothingHere
				}
			}
		}
		if err != nil {
			restoreCounts(h, es[:i], had[:i])
			*released = (*released)[:n]
			if err == errNothingHere {
				err = nil
			}
			return false, err
		}
		had[i] = h.rec.count(e.prefix)
		if !h.lowerJoined(e.prefix, had[i], k[i]) {
			restoreCounts(h, es[:i], had[:i])
			*released = (*released)[:n]
			return false, errNoRecord
		}
	}
	landed, err := a.commitJoined(ctx, h, es, had[:len(es)], true, ws, revs, nil)
	if !landed {
		*released = (*released)[:n]
	}
	return landed, err
}

// commitJoined commits the staged blocks of es (locked by the caller,
// fewer than MaxCommitWrites), which free addresses of h's handle, in one
// commit, with h's record when writeRec says so: the caller has lowered
// the record's counts of those blocks from had[i], the counts as it read
// them. ws and revs are the commit's arguments, with room for a write per
// block and one for the record. landed reports that
// the commit was made; the error is then a kept block's check after it
// (keptStands). Otherwise nothing was written, the counts are put back in
// h.rec, and the error says why: a refusal at the record (a race, for the
// caller's retry to settle with a fresh read), at a block, or a failure.
// A block the commit deletes, or that keptStands deletes after it, is
// appended to *deleted when deleted is not nil.
func (a *Allocator) commitJoined(ctx context.Context, h *handleTx, es []*blockEntry, had []int, writeRec bool, ws []Write, revs []Revision, deleted *[]netip.Prefix) (landed bool, err error) {
	writes := ws[:0]
	if writeRec {
		writes = writes[:1]
		h.writeOp(&writes[0])
	}
	first := len(writes) // the first block's write
	var del, keep [MaxCommitWrites]bool
	for i, e := range es {
		writes = writes[:len(writes)+1]
		if del[i], keep[i], err = a.blockChange(ctx, e, &writes[len(writes)-1]); err != nil {
			restoreCounts(h, es, had)
			return false, err
		}
	}
	revs = revs[:len(writes)]
	err = a.committer.Commit(ctx, writes, revs)
	dropValues(writes)
	if err != nil {
		i := refusedAt(err)
		if writeRec && i == joinedHandle {
			h.commitFailed(err)
			return false, handleRefused(es[0], h, err)
		}
		restoreCounts(h, es, had)
		if i >= first {
			// Refused at a block: only that block needs reading again.
			return false, a.blockWriteFailed(es[i-first], fmt.Errorf("with handle %q: %w", h.id, err))
		}
		h.commitFailed(err)
		for _, e := range es[1:] {
			_ = a.blockWriteFailed(e, err)
		}
		return false, a.blockWriteFailed(es[0], fmt.Errorf("with handle %q: %w", h.id, err))
	}
	if writeRec {
		h.committed(false, revs[joinedHandle])
		h.remember()
	}
	for i, e := range es {
		if del[i] {
			e.deleted()
			if deleted != nil {
				*deleted = append(*deleted, e.prefix)
			}
			continue
		}
		e.wrote(revs[first+i])
		if keep[i] {
			if kerr := a.keptStands(ctx, e); kerr != nil && err == nil {
				err = kerr
			}
			if e.blk == nil && deleted != nil {
				// Kept for its cooling addresses, but no pool carves it
				// any more: keptStands deleted it.
				*deleted = append(*deleted, e.prefix)
			}
		}
	}
	return true, err
}

// dropValues forgets the values of writes a commit has made: an entry's
// commit arguments (blockEntry.writes) must not keep them alive.
func dropValues(ws []Write) {
	for i := range ws {
		ws[i].Value = nil
	}
}

// errNothingHere tells releaseJoined's error path that a block, read
// fresh, is gone or holds nothing of the handle: no error, and nothing
// joined.
var errNothingHere = errors.New("nothing of the handle in the block")

// errNoRecord tells releaseJoined's caller that the handle's record, as
// read, does not exist while a block holds its addresses: the release must
// go block by block, lowering the count after (see releaseJoined).
var errNoRecord = errors.New("no record of the handle, whose addresses a block holds")

// lowerJoined lowers h's count for blk, had as read, by the k addresses
// a joined release frees there, for the commit that writes the record with
// the blocks. A block may hold more of the handle than the record, as
// read, counts there: an assignment since the read added to both (in one
// commit), or the count is low. The count then goes to zero and the record
// in the commit, so that its check tells the two apart: refused, the
// release starts over from a fresh read; made, the count was low, and
// nothing of the handle is left there to count. lowerJoined reports false,
// changing nothing, when there was no record to read: an assignment since
// may have made it, and no write of a commit can check that a record is
// absent, so the caller goes block by block, lowering the counts after
// from a fresh read (errNoRecord).
func (h *handleTx) lowerJoined(blk netip.Prefix, had, k int) bool {
	switch {
	case had >= k:
		h.rec.put(blk, had-k)
	case h.rev != 0:
		h.rec.put(blk, 0)
	default:
		return false
	}
	return true
}

// restoreCounts puts back the counts es's blocks had in h's record (had),
// which a joined release lowered.
func restoreCounts(h *handleTx, es []*blockEntry, had []int) {
	for i, e := range es {
		h.rec.put(e.prefix, had[i])
	}
}

// releaseJoinedMany is releaseJoined for a handle whose record counts
// several blocks, es (sorted, fewer than MaxCommitWrites): it locks their
// entries, in that order, for the commit. Entries are otherwise locked one
// at a time, so the order is enough to rule out a deadlock between two
// such releases.
func (a *Allocator) releaseJoinedMany(ctx context.Context, h *handleTx, es []handleCount, at time.Time, released *[]netip.Addr) (bool, error) {
	var buf [MaxCommitWrites]*blockEntry
	entries := buf[:len(es)]
	for i, hc := range es {
		entries[i] = a.entry(hc.block)
		entries[i].lock()
	}
	defer func() {
		for _, e := range entries {
			e.unlock()
		}
	}()
	// The first entry's commit arguments serve a handle in two blocks.
	ws, revs := entries[0].writes[:], entries[0].revs[:]
	if len(es)+1 > len(ws) {
		ws, revs = make([]Write, len(es)+1), make([]Revision, len(es)+1)
	}
	return a.releaseJoined(ctx, entries, h, at, released, ws, revs)
}

// handleRefused is the error of a joined commit refused at h's record,
// which another writer changed or deleted meanwhile: a race, which the
// caller's retry settles with a fresh read.
func handleRefused(e *blockEntry, h *handleTx, err error) error {
	if errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("%w: %w", errRecordMoved, err)
	}
	return fmt.Errorf("ipam: write handle %q with block %s: %w", h.id, e.prefix, err)
}

// refusedAt returns the index of the write whose check refused a commit,
// or -1 when err is no such refusal.
func refusedAt(err error) int {
	var ce *CommitError
	if errors.As(err, &ce) {
		return ce.Index
	}
	return -1
}

// writeOp sets w to the write that stores h.rec: a create, an update, or
// a delete once the handle holds nothing. The caller has changed h.rec
// from the record as read or written, so there is something to write.
func (h *handleTx) writeOp(w *Write) {
	*w = Write{Kind: KindHandle, Key: h.id, Rev: h.rev}
	if len(h.rec.entries()) == 0 {
		w.Delete = true
		return
	}
	w.Value = h.a.handleValue(&h.rec, h.last)
}

// committed records that the write from writeOp was made at rev; created
// says it created the record.
func (h *handleTx) committed(created bool, rev Revision) {
	h.created = h.created || created
	h.rev, h.mine = rev, rev
}

// commitFailed records that a commit with a write of the record failed
// with err: the record may not be what h holds (it was changed for the
// write), so it is read again before the next change; and unless the
// commit was refused, it may have been made.
func (h *handleTx) commitFailed(err error) {
	h.known = false
	h.unsure = h.unsure || !refused(err)
}

// blockWrite sets w to the write of e's staged block (e.next) over the
// current version, for a commit: the block itself to a BlockKeeper, its
// encoding otherwise. The caller has pruned its release times, and the
// block is not empty without affinity (see blockChange).
func (a *Allocator) blockWrite(e *blockEntry, w *Write) error {
	*w = Write{Kind: KindBlock, Key: e.key, Rev: e.rev}
	if a.keeper != nil {
		w.Block = e.next
		return nil
	}
	var err error
	w.Value, err = e.encode(e.next)
	return err
}

// blockChange sets w to the write that commit would make of e's staged
// block: a delete (del), or an update (blockWrite), to be followed by
// keptStands when keep is set (see blockFate).
func (a *Allocator) blockChange(ctx context.Context, e *blockEntry, w *Write) (del, keep bool, err error) {
	if del, keep, err = a.blockFate(ctx, e.next); err != nil || del {
		if del {
			*w = Write{Kind: KindBlock, Key: e.key, Rev: e.rev, Delete: true}
		}
		return del, keep, err
	}
	return false, keep, a.blockWrite(e, w)
}

// wrote makes e.next, just written at rev, the cached block: the store may
// keep it (BlockKeeper), so from now on only e.blk, which is never
// modified, refers to it; the previous version is no longer the record's
// value and becomes the scratch copy.
func (e *blockEntry) wrote(rev Revision) {
	e.blk, e.next = e.next, e.blk
	e.rev, e.fresh = rev, true
}

// deleted records that e's block was just deleted.
func (e *blockEntry) deleted() {
	e.blk, e.rev, e.next, e.fresh = nil, 0, nil, true
}

// blockWriteFailed is writeFailed for a write of e.next: unless the store
// refused it, the write may have happened, and a BlockKeeper store may
// then keep e.next, so the entry lets go of it.
func (a *Allocator) blockWriteFailed(e *blockEntry, err error) error {
	if a.keeper != nil && !refused(err) {
		e.next = nil
	}
	return a.writeFailed(e, err)
}
