package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
)

// handleTx keeps one handle record in step with the blocks during an
// operation. It knows the record as last read or written and writes only
// when a count changes.
//
// Crash safety rests on the order of writes: a handle's count for a block is
// raised before the block is written and lowered after, so after a crash at
// any point the handle may claim too much (repairable: the block is the
// truth), never too little.
type handleTx struct {
	a   *Allocator
	id  string
	rec handleRecord
	rev Revision // 0: no record
	// known reports whether rec and rev reflect the store; a handleTx for a
	// new handle assumes there is no record, which saves a read on the hot
	// path (a wrong guess costs one failed create).
	known bool
	// last, when not nil, is where handleValue looks first for the value
	// to write and keeps what it wrote: the node's slot.
	last *atomic.Pointer[handleVal]
	// spare, during a reservation, is how far reserve raised each block's
	// count beyond what take has used so far; nil otherwise.
	spare []handleCount
	hint  int // where fromSpare starts looking
	// exclusive makes the operation hold the handle alone
	// (AutoAssignArgs.NewHandle): it must create the record, and reading
	// one at a revision other than the one it wrote last fails with
	// ErrHandleExists. Revisions never repeat, so a record at mine is this
	// operation's own: any other writer, a delete and create by others
	// included, leaves another revision.
	exclusive bool
	mine      Revision // the record's revision as this operation last wrote it; 0: none
	created   bool     // this operation created the record (at some point)
	// unsettled lists this operation's block writes of one address whose
	// outcome stayed unknown (see settleWrite): each may have assigned
	// its address, at its Seq, or may yet. A rollback settles them.
	unsettled []unsettledWrite
	// unsure says that a write of the record failed in a way that may
	// have applied it (a lost reply): a record at a revision this
	// operation does not know may then be its own, and an exclusive
	// operation cannot say that another request holds the handle.
	unsure bool
}

// init starts tracking the handle id, assuming it has no record yet when
// assumeNew is set and reading it on first use otherwise.
func (h *handleTx) init(a *Allocator, id string, assumeNew bool) {
	*h = handleTx{a: a, id: id, known: assumeNew}
}

// open starts tracking an existing handle for op: it checks the ID and
// reads the record, failing with ErrHandleNotFound when there is none.
// h must be new (the zero handleTx), as after h.init(a, id, false).
func (h *handleTx) open(ctx context.Context, a *Allocator, op, id string) error {
	if err := checkHandle(op, id); err != nil {
		return err
	}
	h.a, h.id = a, id
	if err := h.read(ctx); err != nil {
		return err
	}
	if h.rev == 0 {
		return fmt.Errorf("ipam: %s %q: %w", op, id, ErrHandleNotFound)
	}
	return nil
}

func (h *handleTx) read(ctx context.Context) error {
	rec, err := h.a.store.Get(ctx, KindHandle, h.id)
	switch {
	case err == nil:
		if err := h.rec.unmarshal(rec.Value); err != nil {
			return fmt.Errorf("ipam: handle %q: %w: %w", h.id, ErrCorrupt, err)
		}
		h.rev = rec.Revision
	case errors.Is(err, ErrNotFound):
		h.rec, h.rev = handleRecord{}, 0
	default:
		return fmt.Errorf("ipam: read handle %q: %w", h.id, err)
	}
	h.known = true
	if h.exclusive && h.rev != 0 && h.rev != h.mine {
		if h.unsure {
			return h.unknown()
		}
		return h.exists()
	}
	return nil
}

// add moves the handle's count for blk by delta and writes the record,
// retrying from a fresh read when another writer changed it in between: a
// create, an update, or a delete once the handle holds nothing. A count is
// never taken below zero (see adjust).
func (h *handleTx) add(ctx context.Context, blk netip.Prefix, delta int) error {
	if delta == 0 {
		return nil
	}
	return h.move(ctx, blk, delta)
}

// move is add for a delta other than zero.
//
// The record is nearly always known (a new handle, or one just read):
// then the first attempt changes it here, without the closures of
// rewrite, which later attempts go through.
func (h *handleTx) move(ctx context.Context, blk netip.Prefix, delta int) error {
	if !h.known {
		return h.rewrite(ctx, h.mover(blk, delta))
	}
	n := h.rec.count(blk) + delta
	if n < 0 {
		return h.unchanged(ctx, h.mover(blk, delta)) // as mover reporting no change
	}
	h.rec.put(blk, n)
	if err := h.write(ctx); err != nil {
		h.known = false
		return h.rewriteAgain(ctx, h.mover(blk, delta), err)
	}
	return nil
}

// mover is move's change of the record, for rewrite.
func (h *handleTx) mover(blk netip.Prefix, delta int) func() bool {
	return func() bool {
		n := h.rec.count(blk) + delta
		if n < 0 {
			return false
		}
		h.rec.put(blk, n)
		return true
	}
}

// rewrite applies change to the record, read first unless known, and
// writes it when change reports a change, retrying from a fresh read when
// another writer changed it in between. After a failed write the record no
// longer says what the store holds, so the next attempt reads it again.
//
// When the record is known (a new handle, or one just read), the first
// attempt, which nearly always succeeds, is made here, outside the retry
// loop and its closure.
func (h *handleTx) rewrite(ctx context.Context, change func() bool) error {
	if !h.known {
		return h.a.retry(ctx, "update handle", h.id, h.attempt(ctx, change))
	}
	if !change() {
		return h.unchanged(ctx, change)
	}
	if err := h.write(ctx); err != nil {
		h.known = false
		return h.rewriteAgain(ctx, change, err)
	}
	return nil
}

// unchanged is rewrite after change found nothing to change in the record
// as known. That may rest on a record read a while ago: a release that
// freed more addresses in a block than the record it read counts there
// (an assignment since, of the same handle in the same block, raised the
// count and wrote the block) would leave the raised count in place. So
// the record is read again and change applied to it; only what that
// fresh read says is final. A handle held exclusively (NewHandle) is the
// operation's own, and is not read again.
func (h *handleTx) unchanged(ctx context.Context, change func() bool) error {
	if h.exclusive {
		return nil
	}
	h.known = false
	return h.a.retry(ctx, "update handle", h.id, h.attempt(ctx, change))
}

// rewriteAgain is rewrite after a first attempt that failed with err.
func (h *handleTx) rewriteAgain(ctx context.Context, change func() bool, err error) error {
	return h.a.retryAgain(ctx, "update handle", h.id, h.attempt(ctx, change), err)
}

// attempt is one attempt of rewrite: it reads the record unless known,
// applies change and writes the record if change reports a change.
func (h *handleTx) attempt(ctx context.Context, change func() bool) func() error {
	return func() error {
		if !h.known {
			if err := h.read(ctx); err != nil {
				return err
			}
		}
		if !change() {
			return nil
		}
		err := h.write(ctx)
		if err != nil {
			h.known = false
		}
		return err
	}
}

// adjust moves the handle's count for each block of deltas by the entry's
// count, in one write of the record, retrying from a fresh read when
// another writer changed it in between: a create, an update, or a delete
// once the handle holds nothing.
//
// A lowering never takes a count below zero. A release lowers counts after
// its block write, by what it released; a count lower than that, on a
// fresh read (see unchanged), means the record did not count these
// addresses (an earlier repair, or a record written by another tool), and
// it is left as it is. Nor is a count ever
// lowered by more than was released: a count higher than its block bears
// out may be an assignment in flight (its count raised, its block write
// still to come), which cannot be told from what a crash left, so it stays
// for Repair.
func (h *handleTx) adjust(ctx context.Context, deltas []handleCount) error {
	// Blocks moved by nothing are left out: left in, a lowering with
	// nothing else to do would read the record again (see unchanged). The
	// usual cases (none or one left: a release by handle whose counts its
	// commit lowered) allocate nothing.
	moved, last := 0, -1
	for i, d := range deltas {
		if !noCount(d) {
			moved, last = moved+1, i
		}
	}
	switch moved {
	case 0:
		return nil
	case 1:
		return h.add(ctx, deltas[last].block, deltas[last].count)
	}
	if moved < len(deltas) {
		deltas = slices.DeleteFunc(slices.Clone(deltas), noCount)
	}
	slices.SortFunc(deltas, func(x, y handleCount) int { return comparePrefix(x.block, y.block) })
	return h.rewrite(ctx, func() bool { return h.rec.merge(deltas) })
}

// noCount reports that d moves no count.
func noCount(d handleCount) bool { return d.count == 0 }

// A request that spans several blocks raises the handle's counts for all
// of them in one write (reserve), draws on that as it writes each block
// (take), and lowers what it did not use in a second write at the end
// (settle). Without it, each block would write the record once more, and
// each write encodes every entry, so a batch of b blocks would cost b
// writes of up to b entries: quadratic. The counts are raised before any
// of the block writes they cover, so the write order, and what a crash
// leaves, are as for one block.

// reserve raises the handle's counts by plan (a count per block) and keeps
// the raise as spare for take, beside what an earlier reserve of the same
// operation left (a request reserves for the node's blocks, then for the
// blocks it claims).
func (h *handleTx) reserve(ctx context.Context, plan []handleCount) error {
	if err := h.adjust(ctx, plan); err != nil {
		return err
	}
	if h.spare == nil {
		h.hint = 0
	}
	h.spare = append(h.spare, plan...)
	return nil
}

// take raises the handle's count for blk by k ahead of a block write that
// assigns k addresses, drawing first on the spare that reserve raised.
func (h *handleTx) take(ctx context.Context, blk netip.Prefix, k int) error {
	rest := k
	if h.spare != nil {
		rest = h.fromSpare(blk, k)
	}
	if rest == 0 {
		return nil
	}
	err := h.move(ctx, blk, rest)
	if err != nil && rest < k {
		// No block write follows: what came from the spare is spare again.
		h.giveBack(blk, k-rest)
	}
	return err
}

// fromSpare uses up to k of blk's spare and returns what is still to raise.
func (h *handleTx) fromSpare(blk netip.Prefix, k int) int {
	i := h.spareOf(blk)
	if i < 0 {
		return k
	}
	use := min(k, h.spare[i].count)
	h.spare[i].count -= use
	return k - use
}

// spareOf returns the index of blk's entry in the spare, or -1. Blocks are
// mostly taken in the order of the spare, so the search starts where the
// last one ended: a batch of b blocks makes about b comparisons, not
// b*b/2.
func (h *handleTx) spareOf(blk netip.Prefix) int {
	n := len(h.spare)
	for j := range n {
		i := h.hint + j
		if i >= n {
			i -= n
		}
		if h.spare[i].block == blk {
			h.hint = i
			return i
		}
	}
	return -1
}

// settle lowers the handle's counts by the spare that take did not use,
// and ends the reservation. If that write fails, the counts stay too high,
// as after a crash, until Repair.
func (h *handleTx) settle(ctx context.Context) error {
	if h.spare == nil {
		return nil
	}
	return h.settleSpare(ctx)
}

// settleSpare is settle once there is a reservation; settle, small enough
// to inline, keeps the check for one off the single-address path.
func (h *handleTx) settleSpare(ctx context.Context) error {
	// adjust wants one entry per block, and a block may have two: a
	// request that reserved for the node's blocks can claim one of them
	// again in a run (it was gone from the store, see assignHeld) and
	// reserve for it once more. Their counts add up.
	slices.SortFunc(h.spare, func(x, y handleCount) int { return comparePrefix(x.block, y.block) })
	deltas := h.spare[:0]
	for _, hc := range h.spare {
		if n := len(deltas); n > 0 && deltas[n-1].block == hc.block {
			deltas[n-1].count -= hc.count
			continue
		}
		deltas = append(deltas, handleCount{hc.block, -hc.count})
	}
	ctx, cancel := detach(ctx) // the blocks are written: see detach
	defer cancel()
	err := h.adjust(ctx, deltas)
	h.spare = nil
	return err
}

// write stores h.rec as the handle's record.
func (h *handleTx) write(ctx context.Context) error {
	var err error
	rev := Revision(0)
	switch {
	case len(h.rec.entries()) == 0 && h.rev == 0:
	case len(h.rec.entries()) == 0:
		err = h.a.store.Delete(ctx, KindHandle, h.id, h.rev)
	case h.rev == 0:
		rev, err = h.a.store.Create(ctx, KindHandle, h.id, h.a.handleValue(&h.rec, h.last))
		h.created = h.created || err == nil
	default:
		rev, err = h.a.store.Update(ctx, KindHandle, h.id, h.a.handleValue(&h.rec, h.last), h.rev)
	}
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			err = fmt.Errorf("%w: %w", errRecordMoved, err)
		}
		h.unsure = h.unsure || !refused(err)
		return fmt.Errorf("ipam: write handle %q: %w", h.id, err)
	}
	h.rev, h.mine = rev, rev
	h.remember()
	return nil
}

// handleExists returns an error matching ErrHandleExists if handle has a
// record, for a request with NewHandle that failed for another reason
// having written nothing; nil if it has none or the read fails (the
// request's own error then stands).
func (a *Allocator) handleExists(ctx context.Context, handle string) error {
	var h handleTx
	h.init(a, handle, false)
	if h.read(ctx) != nil || h.rev == 0 {
		return nil
	}
	return h.exists()
}

// exists is the error of an exclusive operation that found the handle's
// record made by someone else. It does not match ErrExists, so that retry
// gives up at once.
func (h *handleTx) exists() error {
	n := 0
	for _, hc := range h.rec.entries() {
		n += hc.count
	}
	return fmt.Errorf("ipam: request with NewHandle under %q: %w (its record counts %d; AssignedByHandle shows what the blocks hold so far, and a count no block bears out is an assignment in flight or a failed write's leftover, which Check reports and Repair removes)", h.id, ErrHandleExists, n)
}

// unknown is the error of an exclusive operation that finds the handle's
// record at a revision it does not know after a write of its own whose
// outcome it could not learn: the record may be its own or another
// request's. It does not match ErrHandleExists, which would tell a
// repeated request that an earlier one assigned. A count the operation
// leaves too high stays for Repair or a Collector.
func (h *handleTx) unknown() error {
	return fmt.Errorf("ipam: request with NewHandle under %q: the handle's record changed after a write of this request whose outcome is unknown; it may be this request's own", h.id)
}

// handleValue encodes a handle record. The value of a handle holding some
// addresses of a single block, by far the most common, is shared by every
// such handle: values are immutable once written, so one copy serves all.
// So is the value of one holding addresses of two blocks.
// last, if not nil, is tried first and then holds the value returned.
func (a *Allocator) handleValue(r *handleRecord, last *atomic.Pointer[handleVal]) []byte {
	es := r.entries()
	switch len(es) {
	case 1:
	case 2:
		// A dual-stack pod's: shared too, as immutable.
		return a.handlePairs.getOrMake([2]handleCount{es[0], es[1]}, func() []byte { return r.appendBinary(nil) })
	default:
		return r.appendBinary(nil)
	}
	if last != nil {
		if hv := last.Load(); hv != nil && hv.hc == es[0] {
			return hv.v
		}
	}
	hv := a.handleVals.getOrMake(es[0], func() *handleVal { return &handleVal{es[0], r.appendBinary(nil)} })
	if last != nil {
		last.Store(hv)
	}
	return hv.v
}

// handleVal is a shared handle value with the one entry it encodes.
type handleVal struct {
	hc handleCount
	v  []byte
}

// lower is adjust for the lowerings that follow a release's block writes,
// on the record h read: on a detached context once ctx has ended, so that
// a caller giving up between the two leaves no count too high (see
// carryOn).
func (h *handleTx) lower(ctx context.Context, deltas []handleCount) error {
	ctx, stop := carryOn(ctx)
	err := h.adjust(ctx, deltas)
	stop()
	return err
}

// undo lowers the handle's count for blk by k again after the block write
// it was raised for failed with err, and returns err (joined with any
// error of its own), when never: the write certainly did not happen and
// never will (see settleWrite). Otherwise it may have happened, so the
// count stays: too high at worst, which lets ReleaseByHandle find the
// addresses if they were assigned.
func (h *handleTx) undo(ctx context.Context, blk netip.Prefix, k int, err error, never bool) error {
	if !never {
		return err
	}
	if h.spare != nil {
		// During a reservation the raise stays, as spare for the next
		// attempt; settle lowers what is left of it.
		h.giveBack(blk, k)
		return err
	}
	if herr := h.lowerGone(ctx, []handleCount{{blk, -k}}); herr != nil {
		return errors.Join(err, herr)
	}
	return err
}

// lowerGone is adjust for lowerings by addresses no block holds: released,
// or assigned by a write that never happens. Their counts go down whoever
// wrote the record since: when h holds the handle exclusively and another
// request wrote the record meanwhile (an assignment under the handle), the
// lowering is made through a transaction of its own, and h's error, that
// the handle is held, stands.
func (h *handleTx) lowerGone(ctx context.Context, deltas []handleCount) error {
	err := h.adjust(ctx, deltas)
	if err != nil && h.exclusive && errors.Is(err, ErrHandleExists) {
		var other handleTx
		other.init(h.a, h.id, false)
		if oerr := other.adjust(ctx, deltas); oerr != nil {
			err = errors.Join(err, oerr)
		}
	}
	return err
}

// unsettledWrite is a block write of one address whose outcome stayed
// unknown: a compare-and-swap of blk at r0 that assigned addr at seq.
// raised says that the handle's count for it was raised by a write of its
// own before (otherwise the count went in the same commit).
type unsettledWrite struct {
	blk    netip.Prefix
	r0     Revision
	addr   netip.Addr
	seq    uint64
	raised bool
}

// unknownWrite notes that the write of blk at r0 that assigned addr at seq
// (and k-1 more with it) may or may not have happened (see settleWrite);
// raised is as for unsettledWrite. A write of one address is noted for a
// rollback to settle; one of several stays counted under the handle,
// where ReleaseByHandle finds it.
func (h *handleTx) unknownWrite(blk netip.Prefix, r0 Revision, addr netip.Addr, seq uint64, k int, raised bool) {
	if k == 1 {
		h.unsettled = append(h.unsettled, unsettledWrite{blk, r0, addr, seq, raised})
	}
}

// giveBack returns k to blk's spare.
func (h *handleTx) giveBack(blk netip.Prefix, k int) {
	if i := h.spareOf(blk); i >= 0 {
		h.spare[i].count += k
		return
	}
	h.spare = append(h.spare, handleCount{blk, k})
}
