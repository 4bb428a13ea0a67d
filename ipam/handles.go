package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
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
}

// init starts tracking the handle id, assuming it has no record yet when
// assumeNew is set and reading it on first use otherwise.
func (h *handleTx) init(a *Allocator, id string, assumeNew bool) {
	*h = handleTx{a: a, id: id, known: assumeNew}
}

// open starts tracking an existing handle for op: it checks the ID and
// reads the record, failing with ErrHandleNotFound when there is none.
func (h *handleTx) open(ctx context.Context, a *Allocator, op, id string) error {
	if err := checkHandle(op, id); err != nil {
		return err
	}
	h.init(a, id, false)
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
	return nil
}

// add moves the handle's count for blk by delta and writes the record,
// retrying from a fresh read when another writer changed it in between.
func (h *handleTx) add(ctx context.Context, blk netip.Prefix, delta int) error {
	if delta == 0 {
		return nil
	}
	return h.set(ctx, blk, func(n int) int { return n + delta })
}

// lower moves the handle's count for blk down by k, the addresses the
// caller has just released there, after the block write. It never lowers a
// count by more than the caller released: a count higher than the block
// holds may be an assignment in flight (its count raised, its block write
// still to come), which is indistinguishable from the leftover of a crash,
// so what is left stays for Repair. A count lower than k means the record
// did not count these addresses (an earlier repair, or a record written by
// another tool); it is left as it is.
func (h *handleTx) lower(ctx context.Context, blk netip.Prefix, k int) error {
	err := h.add(ctx, blk, -k)
	if err != nil && !errors.Is(err, ErrTooManyConflicts) && isCountError(err) {
		return nil
	}
	return err
}

func isCountError(err error) bool {
	var ce *countError
	return errors.As(err, &ce)
}

// set changes the handle's count for blk to count(current) and writes the
// record: a create, an update, or a delete once the handle holds nothing.
func (h *handleTx) set(ctx context.Context, blk netip.Prefix, count func(int) int) error {
	return h.a.retry(ctx, "update handle", h.id, func() error {
		if !h.known {
			if err := h.read(ctx); err != nil {
				return err
			}
		}
		old := h.rec.count(blk)
		n := count(old)
		if n == old {
			return nil
		}
		if n < 0 {
			return fmt.Errorf("ipam: handle %q: %w", h.id, &countError{blk, old, n - old})
		}
		// Change the record in place and put it back if the write fails.
		h.rec.put(blk, n)
		if err := h.write(ctx); err != nil {
			h.rec.put(blk, old)
			h.known = false
			return err
		}
		return nil
	})
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
	default:
		rev, err = h.a.store.Update(ctx, KindHandle, h.id, h.a.handleValue(&h.rec, h.last), h.rev)
	}
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			err = fmt.Errorf("%w: %w", errRecordMoved, err)
		}
		return fmt.Errorf("ipam: write handle %q: %w", h.id, err)
	}
	h.rev = rev
	return nil
}

// handleValue encodes a handle record. The value of a handle holding some
// addresses of a single block, by far the most common, is shared by every
// such handle: values are immutable once written, so one copy serves all.
// last, if not nil, is tried first and then holds the value returned.
func (a *Allocator) handleValue(r *handleRecord, last *atomic.Pointer[handleVal]) []byte {
	es := r.entries()
	if len(es) != 1 {
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

// undo lowers the handle's count for blk by k again after the block write
// it was raised for failed with err, and returns err (joined with any
// error of its own). Only a refusal (ErrConflict, ErrNotFound, ErrExists)
// certainly changed nothing; after any other failure the write may have
// happened (a lost reply), so the count stays: too high at worst, which
// lets ReleaseByHandle find the addresses if they were assigned.
func (h *handleTx) undo(ctx context.Context, blk netip.Prefix, k int, err error) error {
	if !refused(err) {
		return err
	}
	if herr := h.add(ctx, blk, -k); herr != nil {
		return errors.Join(err, herr)
	}
	return err
}
