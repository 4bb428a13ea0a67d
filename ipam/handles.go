package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
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
	// known reports whether rec and rev reflect the store; a fresh handleTx
	// for a new handle assumes there is no record, which saves a read on
	// the hot path (a wrong guess costs one failed create).
	known bool
}

// newHandleTx starts tracking the handle id, assuming it has no record yet
// when assumeNew is set and reading it on first use otherwise.
func (a *Allocator) newHandleTx(id string, assumeNew bool) *handleTx {
	return &handleTx{a: a, id: id, known: assumeNew}
}

func (h *handleTx) read(ctx context.Context) error {
	rec, err := h.a.store.Get(ctx, KindHandle, h.id)
	switch {
	case errors.Is(err, ErrNotFound):
		h.rec, h.rev = handleRecord{}, 0
	case err != nil:
		return fmt.Errorf("ipam: read handle %q: %w", h.id, err)
	default:
		var r handleRecord
		if err := r.unmarshal(rec.Value); err != nil {
			return fmt.Errorf("ipam: handle %q: %w: %w", h.id, ErrCorrupt, err)
		}
		h.rec, h.rev = r, rec.Revision
	}
	h.known = true
	return nil
}

// add moves the handle's count for blk by delta and writes the record,
// retrying when another writer changed it in between.
func (h *handleTx) add(ctx context.Context, blk netip.Prefix, delta int) error {
	if delta == 0 {
		return nil
	}
	return h.update(ctx, func(r *handleRecord) error { return r.add(blk, delta) })
}

// clear drops the handle's count for blk, whatever it was: the caller has
// just released every address the handle held there.
func (h *handleTx) clear(ctx context.Context, blk netip.Prefix) error {
	return h.update(ctx, func(r *handleRecord) error { return r.add(blk, -r.count(blk)) })
}

// update applies change to a copy of the record and writes the result,
// retrying from a fresh read when the record moved.
func (h *handleTx) update(ctx context.Context, change func(*handleRecord) error) error {
	return h.a.retry(ctx, "update handle "+h.id, func() error {
		if !h.known {
			if err := h.read(ctx); err != nil {
				return err
			}
		}
		next := handleRecord{blocks: append([]handleCount(nil), h.rec.blocks...)}
		if err := change(&next); err != nil {
			return fmt.Errorf("ipam: handle %q: %w", h.id, err)
		}
		if slices.Equal(next.blocks, h.rec.blocks) {
			return nil
		}
		if err := h.write(ctx, next); err != nil {
			h.known = false
			return err
		}
		return nil
	})
}

// write stores next as the handle's record: a create, an update, or a
// delete once the handle holds nothing.
func (h *handleTx) write(ctx context.Context, next handleRecord) error {
	var err error
	rev := Revision(0)
	switch {
	case len(next.blocks) == 0 && h.rev == 0:
	case len(next.blocks) == 0:
		err = h.a.store.Delete(ctx, KindHandle, h.id, h.rev)
	case h.rev == 0:
		rev, err = h.a.store.Create(ctx, KindHandle, h.id, next.appendBinary(nil))
	default:
		rev, err = h.a.store.Update(ctx, KindHandle, h.id, next.appendBinary(nil), h.rev)
	}
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			err = fmt.Errorf("%w: %w", errRecordMoved, err)
		}
		return fmt.Errorf("ipam: write handle %q: %w", h.id, err)
	}
	h.rec, h.rev = next, rev
	return nil
}
