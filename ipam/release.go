package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/carve-ipam/carve/block"
)

// Release names an address to release and, optionally, what must hold for
// the release to go ahead.
type Release struct {
	Addr netip.Addr
	// Handle, when set, must be the handle holding the address.
	Handle string
	// Seq, when non-zero, must be the sequence number recorded when the
	// address was assigned (Assigned.Seq), so that a late release never
	// frees a later assignment of the same address.
	Seq uint64
}

// ReleaseResult says what ReleaseIPs did with each address.
type ReleaseResult struct {
	// Released lists the addresses released, in request order and as given
	// (an IPv4-mapped IPv6 address releases, and is reported as, itself).
	// An address given more than once in one call, as itself or in its
	// IPv4-mapped form, is released (or refused) once, for its first
	// entry, and listed once, as that entry gives it. Its entries must
	// name the same Handle and Seq: otherwise the call fails with
	// ErrInvalid and releases nothing.
	Released []netip.Addr
	// NotAllocated lists the addresses that were not assigned, in request
	// order, likewise. Releasing them is not an error, so that releases
	// can be repeated safely.
	NotAllocated []netip.Addr

	// DeletedBlocks lists the blocks this call deleted: blocks without
	// affinity (their node gone, say) whose last address it released.
	// One kept while its addresses cool (Config.ReleaseCooldown) is not
	// deleted, nor is a block with affinity, which stays its owner's.
	DeletedBlocks []netip.Prefix
}

type releaseStatus uint8

const (
	relPending releaseStatus = iota
	relReleased
	relNotAllocated
	relRefused
	relRepeat // a later entry for an address given before: not listed
)

// ReleaseIPs releases addresses. Each address is released independently:
// one whose handle or sequence number does not match is refused (and stays
// assigned) without holding back the others, and the returned error joins
// an *AddrError per refused address, matching ErrHandleMismatch or
// ErrSeqMismatch. Addresses that are not assigned are reported in
// NotAllocated.
//
// When the store fails, ReleaseIPs stops and returns the error with what is
// certain by then: an address is in Released only if the write that freed
// it succeeded, and in NotAllocated only if a read that completed found it
// free. A write whose reply was lost may still have freed an address it
// does not list; releasing again settles it. On a store with Committer
// (memstore, etcd), the addresses of one handle in up to seven blocks (a
// dual-stack pod's), each Release naming the handle, are released in one
// commit with the lowering of the handle's counts, so a release repeated
// after a lost reply finds all of it done or none (unless conflicts with
// other writers never clear, or an address lies in a block of a size its
// pool no longer has: then block by block, as below). Otherwise the blocks
// are written first and each handle's counts lowered once at the end: a
// lost reply there can leave a count too high, which releasing again does
// not lower; Check reports it (ProblemHandleExcess) and Repair or a
// Collector removes it.
//
// With Config.ReleaseCooldown set, each address released records when, and
// is not assigned again automatically until the cooldown has passed.
func (a *Allocator) ReleaseIPs(ctx context.Context, rels ...Release) (ReleaseResult, error) {
	return a.releaseIPs(ctx, true, nil, rels, nil)
}

// releaseIPs is ReleaseIPs; stamp records release times for the cooldown
// (a rollback of addresses nobody used does not), and prior gives an
// address the release time it had before the assignment now rolled back
// (one assigned while it cooled, AssignIPArgs.IgnoreCooldown), which its
// release records again. own, if not nil, is the handle transaction of
// the assignment giving addresses back: its handle's counts are lowered
// through it, so that it knows the record as written.
func (a *Allocator) releaseIPs(ctx context.Context, stamp bool, prior map[netip.Addr]time.Time, rels []Release, own *handleTx) (ReleaseResult, error) {
	const op = "release"
	for _, r := range rels {
		if err := checkAddr(op, r.Addr); err != nil {
			return ReleaseResult{}, err
		}
		if r.Handle != "" {
			if err := checkHandle(op, r.Handle); err != nil {
				return ReleaseResult{}, err
			}
		}
	}
	status := make([]releaseStatus, len(rels))
	if err := markRepeats(op, rels, status); err != nil {
		return ReleaseResult{}, err
	}
	v, err := a.loadView(ctx)
	if err != nil {
		return ReleaseResult{}, err
	}
	refusals := make([]error, len(rels))
	times := releaseTimes{prior: prior}
	if stamp && v.config.ReleaseCooldown > 0 {
		times.at = a.now()
	}

	// Group the addresses by block, in order of first appearance.
	var order []netip.Prefix
	groups := map[netip.Prefix][]int{}
	for i, r := range rels {
		if status[i] == relRepeat {
			continue
		}
		addr := r.Addr.Unmap()
		blk, ok := a.guessBlock(v, addr)
		if !ok {
			// No pool holds it any more: its block may outlive the pool.
			if blk, ok, err = a.findBlock(ctx, addr); err != nil {
				return ReleaseResult{}, err
			}
			if !ok {
				status[i] = relNotAllocated
				continue
			}
		}
		if _, seen := groups[blk]; !seen {
			order = append(order, blk)
		}
		groups[blk] = append(groups[blk], i)
	}
	var errs []error
	lowers := handleLowers{}
	var deleted []netip.Prefix
	result := func() ReleaseResult { return releaseResult(rels, status, deleted) }
	if handle := oneHandle(rels, status); own == nil && a.committer != nil && handle != "" && len(order) > 1 && len(order) < MaxCommitWrites {
		// One handle's addresses in a few blocks (a dual-stack pod's): the
		// blocks and the lowered counts in one commit, as ReleaseByHandle
		// does; block by block, below, when an address is in a block other
		// than the one its pool says or the conflicts never clear.
		done, err := a.releaseIPsJoined(ctx, handle, order, groups, rels, status, refusals, times, &deleted)
		switch {
		case done && err != nil:
			return result(), err
		case done:
			order = nil // nothing left to release block by block
		case err != nil && !isRace(err):
			return result(), err
		}
	}
	for _, blk := range order {
		idx := groups[blk]
		// Addresses in one block (a pod's, one leak) join the lowering of
		// their handle's count to the block's write; across blocks the
		// counts are lowered once at the end, in one write per handle.
		found, err := a.releaseFromBlock(ctx, blk, rels, idx, status, refusals, times, lowers, &deleted, own == nil && len(order) == 1)
		if err != nil {
			return result(), a.lowerHandles(ctx, lowers, err, own)
		}
		if !found {
			// No block where the pool says: the pool may have changed since
			// the block was made. Look for the block that holds each address.
			for _, i := range idx {
				b, ok, err := a.findBlock(ctx, rels[i].Addr.Unmap())
				if err != nil {
					return result(), a.lowerHandles(ctx, lowers, err, own)
				}
				if !ok {
					status[i] = relNotAllocated
					continue
				}
				found, err := a.releaseFromBlock(ctx, b, rels, []int{i}, status, refusals, times, lowers, &deleted, false)
				if err != nil {
					return result(), a.lowerHandles(ctx, lowers, err, own)
				}
				if !found {
					status[i] = relNotAllocated // deleted since we found it
				}
			}
		}
	}
	if err := a.lowerHandles(ctx, lowers, nil, own); err != nil {
		return result(), err
	}
	for i, s := range status {
		if s == relRefused {
			errs = append(errs, refusals[i])
		}
	}
	if len(errs) > 0 {
		if len(errs) == 1 {
			return result(), fmt.Errorf("ipam: %w", errs[0])
		}
		return result(), fmt.Errorf("ipam: release: %d addresses refused:\n%w", len(errs), errors.Join(errs...))
	}
	return result(), nil
}

// releaseTimes says what release time a release records: at (zero:
// none), unless prior gives the address the one it had before.
type releaseTimes struct {
	at    time.Time
	prior map[netip.Addr]time.Time
}

func (t releaseTimes) of(addr netip.Addr) time.Time {
	if p, ok := t.prior[addr]; ok {
		return p
	}
	return t.at
}

// markRepeats marks each entry for an address given earlier in rels as
// relRepeat, and refuses entries for one address that disagree on what
// must hold for the release.
func markRepeats(op string, rels []Release, status []releaseStatus) error {
	if len(rels) < 2 {
		return nil
	}
	check := func(i, j int) error { // j repeats i's address
		status[j] = relRepeat
		if rels[i].Handle != rels[j].Handle {
			return invalid(op, "address %s given twice with different handles (%q, %q)", rels[j].Addr.Unmap(), rels[i].Handle, rels[j].Handle)
		}
		if rels[i].Seq != rels[j].Seq {
			return invalid(op, "address %s given twice with different sequence numbers (%d, %d)", rels[j].Addr.Unmap(), rels[i].Seq, rels[j].Seq)
		}
		return nil
	}
	if len(rels) <= 16 { // comparing every pair costs less than a map
		for j := 1; j < len(rels); j++ {
			for i := range j {
				if rels[i].Addr.Unmap() == rels[j].Addr.Unmap() {
					if err := check(i, j); err != nil {
						return err
					}
					break
				}
			}
		}
		return nil
	}
	first := make(map[netip.Addr]int, len(rels))
	for j, r := range rels {
		addr := r.Addr.Unmap()
		if i, ok := first[addr]; ok {
			if err := check(i, j); err != nil {
				return err
			}
			continue
		}
		first[addr] = j
	}
	return nil
}

func releaseResult(rels []Release, status []releaseStatus, deleted []netip.Prefix) ReleaseResult {
	res := ReleaseResult{DeletedBlocks: deleted}
	for i, s := range status {
		switch s {
		case relReleased:
			res.Released = append(res.Released, rels[i].Addr)
		case relNotAllocated:
			res.NotAllocated = append(res.NotAllocated, rels[i].Addr)
		}
	}
	return res
}

// guessBlock returns the block that holds addr if its pool's block size is
// what it was when the block was made: the pool holding addr says which.
func (a *Allocator) guessBlock(v *view, addr netip.Addr) (netip.Prefix, bool) {
	if p, ok := v.pools.ByAddr(addr); ok {
		return p.BlockFor(addr)
	}
	return netip.Prefix{}, false
}

// findBlock finds the existing block holding addr by listing the blocks
// that start between the start of the largest block that could hold it and
// addr itself.
func (a *Allocator) findBlock(ctx context.Context, addr netip.Addr) (netip.Prefix, bool, error) {
	widest := 20
	if addr.Is6() {
		widest = 116
	}
	start, _ := addr.Prefix(widest)
	// Keys of blocks starting at addr are addrKey(addr)+"/..."; "0" sorts
	// just after "/".
	r := KeyRange{Start: addrKey(start.Addr()), End: addrKey(addr) + "0"}
	recs, err := a.store.List(ctx, KindBlock, r)
	if err != nil {
		return netip.Prefix{}, false, fmt.Errorf("ipam: find block of %s: %w", addr, err)
	}
	for _, rec := range recs {
		if blk, err := parseBlockKey(rec.Key); err == nil && blk.Contains(addr) {
			return blk, true, nil
		}
	}
	return netip.Prefix{}, false, nil
}

// releaseFromBlock releases the requests idx of rels that lie in blk, with
// one compare-and-swap write, and adds what it freed per handle to lowers
// for the caller to write once every block is done. With join, on a store
// with Committer, the addresses of one handle are released in one commit
// with the lowering of its count (see releaseJoinedIPs), which then needs
// no write of its own. It reports whether the block exists, and appends
// blk to deleted if the write deleted it.
func (a *Allocator) releaseFromBlock(ctx context.Context, blk netip.Prefix, rels []Release, idx []int, status []releaseStatus, refusals []error, times releaseTimes, lowers handleLowers, deleted *[]netip.Prefix, join bool) (bool, error) {
	e := a.entry(blk)
	e.lock()
	defer e.unlock()
	exists := false
	var freed map[string]int // per handle
	var h handleTx           // the handle of a joined commit, kept across attempts
	joined := false
	err := a.retry(ctx, "release from block", e.name, func() error {
		// Each attempt starts over: nothing of a failed one carries on.
		exists, freed, joined = false, nil, false
		for _, i := range idx {
			status[i], refusals[i] = relPending, nil
		}
		if err := a.ensure(ctx, e); err != nil {
			return err
		}
		if e.blk == nil {
			return e.confirm()
		}
		exists = true
		freed = map[string]int{}
		if err := releaseStaged(e, rels, idx, status, refusals, times, func(handle string) { freed[handle]++ }); err != nil {
			return err
		}
		if len(freed) == 0 {
			return nil
		}
		if join && a.committer != nil && len(freed) == 1 {
			for handle, k := range freed {
				if handle != "" {
					if h.id != handle {
						h.init(a, handle, false)
					}
					var err error
					joined, err = a.releaseJoinedIPs(ctx, e, &h, k)
					if joined || err != nil {
						return err
					}
				}
			}
		}
		return a.commit(ctx, e)
	})
	if err != nil {
		// The block write failed, or its outcome is unknown (a lost
		// reply), or the last attempt's answers were drawn from a cached
		// copy it could not confirm: nothing is known of these addresses.
		for _, i := range idx {
			status[i], refusals[i] = relPending, nil
		}
		return exists, err
	}
	if !joined {
		for handle, k := range freed {
			lowers.add(handle, blk, k)
		}
	}
	if len(freed) > 0 && e.blk == nil {
		*deleted = append(*deleted, blk)
	}
	return exists, nil
}

// oneHandle returns the handle every request of rels names (repeats
// aside), or "" when one names none or they name several.
func oneHandle(rels []Release, status []releaseStatus) string {
	handle := ""
	for i, r := range rels {
		switch {
		case status[i] == relRepeat:
		case r.Handle == "" || (handle != "" && r.Handle != handle):
			return ""
		default:
			handle = r.Handle
		}
	}
	return handle
}

// releaseIPsJoined releases the requests of rels, all naming handle and
// grouped by block in groups (the blocks of order, fewer than
// MaxCommitWrites), in one commit of every block they free addresses in
// and of the handle's record, its counts lowered by what each block
// freed, so that no crash or lost reply comes between the writes. It locks
// the blocks' entries in block order, as releaseJoinedMany does. A block
// that does not exist, whose addresses no other block holds, frees
// nothing (they are not allocated). done is false, with every status
// pending again and nothing written, when a block does not exist where
// its pool says but another holds an address of it (the caller goes block
// by block, finding each), or when it fails: then err says why.
func (a *Allocator) releaseIPsJoined(ctx context.Context, handle string, order []netip.Prefix, groups map[netip.Prefix][]int, rels []Release, status []releaseStatus, refusals []error, times releaseTimes, deleted *[]netip.Prefix) (done bool, err error) {
	blocks := slices.Clone(order)
	slices.SortFunc(blocks, comparePrefix)
	var buf [MaxCommitWrites]*blockEntry
	entries := buf[:len(blocks)]
	for i, blk := range blocks {
		entries[i] = a.entry(blk)
		entries[i].lock()
	}
	defer func() {
		for _, e := range entries {
			e.unlock()
		}
	}()
	reset := func() {
		for _, blk := range blocks {
			for _, i := range groups[blk] {
				status[i], refusals[i] = relPending, nil
			}
		}
	}
	var h handleTx
	h.init(a, handle, false)
	gone, landed := false, false // gone: go block by block
	err = a.retry(ctx, "release", fmt.Sprintf("%q", handle), func() error {
		reset()
		gone = false
		var freed [MaxCommitWrites]int // per entry
		if !h.known {
			if err := h.read(ctx); err != nil {
				return err
			}
		}
		for i, e := range entries {
			if err := a.ensure(ctx, e); err != nil {
				return err
			}
			if e.blk == nil {
				if err := e.confirm(); err != nil {
					return err
				}
				// Not where the pool says: gone (its addresses released
				// before), or made when the pool's block size was
				// another. Only the latter goes block by block.
				for _, j := range groups[e.prefix] {
					_, ok, err := a.findBlock(ctx, rels[j].Addr.Unmap())
					if err != nil {
						return err
					}
					if ok {
						gone = true // found block by block
						return nil
					}
					status[j] = relNotAllocated
				}
				continue
			}
			if err := releaseStaged(e, rels, groups[e.prefix], status, refusals, times, func(string) { freed[i]++ }); err != nil {
				return err
			}
		}
		// The blocks that free something, their counts lowered in the
		// record; the others stay as they are.
		var es [MaxCommitWrites]*blockEntry
		var k, had [MaxCommitWrites]int
		n, lower := 0, false
		for i, e := range entries {
			if freed[i] == 0 {
				continue
			}
			es[n], k[n], had[n] = e, freed[i], h.rec.count(e.prefix)
			if !h.lowerJoined(e.prefix, had[n], k[n]) {
				restoreCounts(&h, es[:n], had[:n])
				gone = true // block by block
				return nil
			}
			lower = true
			n++
		}
		if n == 0 {
			return nil // nothing to free: every answer is confirmed
		}
		var ws [MaxCommitWrites]Write
		var revs [MaxCommitWrites]Revision
		var err error
		landed, err = a.commitJoined(ctx, &h, es[:n], had[:n], lower, ws[:], revs[:], deleted)
		return err
	})
	switch {
	case landed:
		return true, err // err: a kept block's check after the commit
	case err != nil || gone:
		reset()
		return false, err
	}
	return true, nil
}

// releaseStaged releases the requests idx of rels in a new staged
// version of e's block (which exists), setting their status (and refusal),
// and calls freed with the handle of each address it frees. It fails with
// errStale when an address it could not release was judged on a cached
// copy: only a fresh read may say an address is not assigned or is held by
// someone else.
func releaseStaged(e *blockEntry, rels []Release, idx []int, status []releaseStatus, refusals []error, times releaseTimes, freed func(handle string)) error {
	next := e.stage()
	for _, i := range idx {
		r := rels[i]
		addr := r.Addr.Unmap()
		own, ok := next.Owner(addr)
		if !ok {
			status[i] = relNotAllocated
			continue
		}
		c := block.Check{Handle: r.Handle, Seq: r.Seq, CheckSeq: r.Seq != 0}
		var err error
		if at := times.of(addr); at.IsZero() {
			err = next.Release(addr, c)
		} else {
			err = next.ReleaseAt(addr, c, at)
		}
		switch {
		case err == nil:
			status[i] = relReleased
			freed(own.Owner.Handle)
		case errors.Is(err, block.ErrNotAllocated):
			status[i] = relNotAllocated
		default:
			status[i] = relRefused
			refusals[i] = &AddrError{Addr: addr, Err: err}
		}
	}
	for _, i := range idx {
		if status[i] != relReleased {
			return e.confirm()
		}
	}
	return nil
}

// releaseJoinedIPs writes e's staged block, which releases k addresses of
// h's handle, in one commit with h's record, its count for the block
// lowered by k, so that no crash or lost reply comes between the two: a
// release repeated after a lost reply finds both done or neither. joined
// is false, with nothing written, when the record counts fewer than k
// there (nothing to lower: the caller writes the block alone). A refusal
// at the record is a race, for the caller's retry to settle with a fresh
// read of it.
func (a *Allocator) releaseJoinedIPs(ctx context.Context, e *blockEntry, h *handleTx, k int) (joined bool, err error) {
	if !h.known {
		if err := h.read(ctx); err != nil {
			return false, err
		}
	}
	had := h.rec.count(e.prefix)
	if had < k {
		return false, nil
	}
	h.rec.put(e.prefix, had-k)
	es, hads := [1]*blockEntry{e}, [1]int{had}
	return a.commitJoined(ctx, h, es[:], hads[:], true, e.writes[:], e.revs[:], nil)
}

// handleLowers collects, per handle and block, how many addresses a
// release freed, so that each handle's counts are lowered in one write
// once the blocks are written (see handleTx.adjust).
type handleLowers map[string]map[netip.Prefix]int

func (l handleLowers) add(handle string, blk netip.Prefix, k int) {
	if handle == "" {
		return // an address without a handle: no record counts it
	}
	m := l[handle]
	if m == nil {
		m = map[netip.Prefix]int{}
		l[handle] = m
	}
	m[blk] += k
}

// lowerHandles lowers the handles' counts by what the release freed: the
// handles after the blocks, so that a crash in between leaves counts too
// high, which is repairable. It returns err joined with any error of its
// own.
func (a *Allocator) lowerHandles(ctx context.Context, l handleLowers, err error, own *handleTx) error {
	if len(l) == 0 {
		return err
	}
	ctx, cancel := detach(ctx) // the blocks are written: see detach
	defer cancel()
	for _, handle := range sortedKeys(l) {
		deltas := make([]handleCount, 0, len(l[handle]))
		for blk, k := range l[handle] {
			deltas = append(deltas, handleCount{blk, -k})
		}
		h := own
		if h == nil || h.id != handle {
			h = new(handleTx)
			h.init(a, handle, false)
		}
		if herr := h.lowerGone(ctx, deltas); herr != nil {
			return errors.Join(err, herr)
		}
	}
	return err
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// ReleaseByHandle releases every address held by handle and returns them.
// It fails with ErrHandleNotFound when the handle holds nothing (no record,
// or a record whose counts no block bears out), so callers that release
// twice can tell (and may ignore it).
//
// It lowers the handle's count in each block by the addresses it released
// there, and no further: a count its blocks do not bear out is either an
// assignment to the same handle in flight (counted, its block write still
// to come) or what a crash left behind, and the two look alike. Such a
// count stays, so that the record keeps an address assigned a moment later
// releasable; Check reports what a crash left (ProblemHandleExcess) and
// Repair removes it.
//
// On a store that offers Committer and not BlockKeeper (a store in another
// process, such as etcd), the allocator remembers the handle records it
// wrote, and releases a handle it assigned under in one round trip: one
// commit of its blocks and its record, checked against the record as
// written. If anyone changed the record since, the commit is refused and
// the release reads the record and starts over. Elsewhere it reads the
// record first.
func (a *Allocator) ReleaseByHandle(ctx context.Context, handle string) ([]netip.Addr, error) {
	if a.memo {
		if m, ok := a.memos.get(handle); ok {
			if released, done, err := a.releaseRemembered(ctx, handle, &m); done {
				return released, err
			}
		}
	}
	var h handleTx
	if err := h.open(ctx, a, "release by handle", handle); err != nil {
		return nil, err
	}
	v, err := a.configView(ctx)
	if err != nil {
		return nil, err
	}
	at := a.releaseTime(v)
	released := releaseRoom(&h.rec)
	// The blocks, and then how far each block's count goes down: what was
	// released there, lowered in one write once the blocks are done (a
	// crash in between leaves counts too high, which is repairable).
	var buf [4]handleCount
	todo := buf[:0]
	if es := h.rec.entries(); len(es) == 1 {
		todo = append(todo, es[0]) // the usual one: no typed slice copy
	} else {
		todo = append(todo, es...)
	}
	if a.committer != nil && len(todo) > 1 && len(todo) < MaxCommitWrites {
		// A handle in a few blocks (a dual-stack pod): every block and the
		// record in one commit, tried again from fresh reads when another
		// writer got there first, so that no crash comes between the
		// writes; block by block, as below, only when a block holds
		// nothing of the handle any more, the record read again names too
		// many blocks, or the conflicts never clear.
		joined, err := a.releaseJoinedMany(ctx, &h, todo, at, &released)
		if err == errNoRecord {
			err = nil // block by block, below
		}
		if !joined && err != nil {
			err = a.retryAgain(ctx, "release by handle", handle, func() error {
				if !h.known {
					// Refused at the record: release the blocks it names
					// now, which another writer may have added to (as
					// the path from a memo does).
					if err := h.read(ctx); err != nil {
						return err
					}
					todo = append(todo[:0], h.rec.entries()...)
					if len(todo) == 0 || len(todo) >= MaxCommitWrites {
						return nil // block by block, below
					}
				}
				var err error
				joined, err = a.releaseJoinedMany(ctx, &h, todo, at, &released)
				if err == errNoRecord {
					return nil // block by block, below
				}
				return err
			}, err)
		}
		switch {
		case joined && err != nil:
			return released, err
		case joined:
			return released, nil
		case err != nil && !isRace(err):
			return nil, err
		}
	}
	for i, hc := range todo {
		before := len(released)
		e := a.entry(hc.block)
		e.lock()
		// The first attempt as retry would make it, and the closure for
		// the others only when it fails (see assignFrom). With a
		// Committer, a handle in one block has its count lowered in the
		// commit that releases its addresses (joined).
		var err error
		joined := false
		joinable := a.committer != nil && len(todo) == 1
		one := [1]*blockEntry{e}
		if joinable {
			joined, err = a.releaseJoined(ctx, one[:], &h, at, &released, e.writes[:], e.revs[:])
			if err == errNoRecord {
				joinable = false // the count is lowered after, as below
				err = a.releaseHandleOnce(ctx, e, handle, at, &released)
			}
		} else {
			err = a.releaseHandleOnce(ctx, e, handle, at, &released)
		}
		if err != nil {
			err = a.retryAgain(ctx, "release by handle from block", e.name, func() error {
				if joinable {
					var err error
					joined, err = a.releaseJoined(ctx, one[:], &h, at, &released, e.writes[:], e.revs[:])
					if err != errNoRecord {
						return err
					}
					joinable = false
				}
				return a.releaseHandleOnce(ctx, e, handle, at, &released)
			}, err)
		}
		e.unlock()
		if err != nil {
			if herr := h.lower(ctx, todo[:i]); herr != nil {
				err = errors.Join(err, herr)
			}
			return orNil(released), err
		}
		todo[i].count = before - len(released)
		if joined {
			todo[i].count = 0 // lowered in the commit
		}
	}
	if err := h.lower(ctx, todo); err != nil {
		return orNil(released), err
	}
	if len(released) == 0 {
		return nil, noAddrs("release by handle", &h)
	}
	return released, nil
}

// releaseRemembered is ReleaseByHandle for a handle whose record the
// allocator wrote last, as m holds it (see handleMemos): one commit of its
// blocks and the record, without a read of the record. done is false, with
// nothing released, when the commit finds the record or a block not as
// the memo and the cached blocks say, or a block holds nothing of the
// handle: the caller then starts over from a read of the record, which
// may count blocks the memo does not.
func (a *Allocator) releaseRemembered(ctx context.Context, handle string, m *handleMemo) (released []netip.Addr, done bool, err error) {
	v, err := a.configView(ctx)
	if err != nil {
		return nil, true, err
	}
	at := a.releaseTime(v)
	h := handleTx{a: a, id: handle}
	m.load(&h)
	released = releaseRoom(&h.rec)
	var blocks [len(m.es)]handleCount
	es := blocks[:copy(blocks[:], h.rec.entries())]
	var joined bool
	if len(es) == 1 {
		e := a.entry(es[0].block)
		e.lock()
		one := [1]*blockEntry{e}
		joined, err = a.releaseJoined(ctx, one[:], &h, at, &released, e.writes[:], e.revs[:])
		e.unlock()
	} else {
		joined, err = a.releaseJoinedMany(ctx, &h, es, at, &released)
	}
	switch {
	case joined:
		return released, true, err
	case err == nil || err == errNoRecord || isRace(err):
		return nil, false, nil
	}
	return nil, true, err
}

// releaseTime returns the release time to record in blocks under v: now,
// or zero when no release cooldown is configured.
func (a *Allocator) releaseTime(v *view) time.Time {
	if v.config.ReleaseCooldown > 0 {
		return a.now()
	}
	return time.Time{}
}

// releaseRoom returns an empty slice with room for the addresses that r
// counts (at most a block's worth per block, and maxReleaseRoom in all),
// made once rather than grown by the blocks' appends: growing a batch's
// 50,000 addresses by doubling copies and clears them several times over.
// The counts are only as good as the record: one that counts many blocks
// that hold nothing must not make a release allocate for them all, so a
// release larger than maxReleaseRoom grows the slice.
func releaseRoom(r *handleRecord) []netip.Addr {
	size := 0
	for _, hc := range r.entries() {
		size += min(hc.count, block.MaxSize)
		if size >= maxReleaseRoom {
			size = maxReleaseRoom
			break
		}
	}
	return make([]netip.Addr, 0, size)
}

// maxReleaseRoom is the most addresses releaseRoom makes room for: 1.5 MiB.
const maxReleaseRoom = 1 << 16

// releaseHandleOnce is one attempt of ReleaseByHandle on e's block, whose
// lock the caller holds: it releases handle's addresses there, appending
// them to *released, with the release time at unless it is zero.
func (a *Allocator) releaseHandleOnce(ctx context.Context, e *blockEntry, handle string, at time.Time, released *[]netip.Addr) error {
	if err := a.ensure(ctx, e); err != nil {
		return err
	}
	if e.blk == nil {
		return e.confirm()
	}
	next := e.stage()
	n := len(*released)
	if at.IsZero() {
		*released = next.ReleaseHandle(handle, *released)
	} else {
		var err error
		if *released, err = next.ReleaseHandleAt(handle, *released, at); err != nil {
			return err
		}
	}
	if len(*released) == n {
		return e.confirm()
	}
	if err := a.commit(ctx, e); err != nil {
		*released = (*released)[:n]
		return err
	}
	return nil
}

// noAddrs is the error for a handle whose record counts addresses that no
// block holds: as for no record, ErrHandleNotFound.
func noAddrs(op string, h *handleTx) error {
	if h.rev == 0 {
		// The record is gone: another release got there first.
		return fmt.Errorf("ipam: %s %q: %w", op, h.id, ErrHandleNotFound)
	}
	n := 0
	for _, hc := range h.rec.entries() {
		n += hc.count
	}
	return fmt.Errorf("ipam: %s %q: %w: its record counts %d addresses that no block holds (an assignment in flight, or left by a failed write: Check reports it, Repair removes it)", op, h.id, ErrHandleNotFound, n)
}

// orNil returns s, or nil when s is empty: ReleaseByHandle made room
// before it knew whether the handle's blocks would release anything.
func orNil(s []netip.Addr) []netip.Addr {
	if len(s) == 0 {
		return nil
	}
	return s
}

// IPsByHandle returns the addresses held by handle, read fresh from the
// store. A handle that holds nothing gives ErrHandleNotFound.
func (a *Allocator) IPsByHandle(ctx context.Context, handle string) ([]netip.Addr, error) {
	var out []netip.Addr
	err := a.eachOfHandle(ctx, "addresses of handle", handle, func(b *block.Block) bool {
		n := len(out)
		out = b.AddrsOf(handle, out)
		return len(out) > n
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// AssignedByHandle returns what handle holds, read fresh from the store, in
// AutoAssign's result type: each address with its block, the pool that carves
// the block (empty if none does any more) and the sequence number of its
// allocation, IPv4 and then IPv6, each in address order. It is how a
// request repeated with NewHandle learns what the first one got. A handle
// that holds nothing gives ErrHandleNotFound.
//
// An assignment still in flight under the handle shows as far as its
// block writes have got: a request racing a dual-stack one may see its
// IPv4 address and not yet its IPv6 one, or nothing. Compare the result
// with what the first request asked for, and ask again a moment later if
// it is short (examples/cni does).
func (a *Allocator) AssignedByHandle(ctx context.Context, handle string) (AutoAssignResult, error) {
	v, err := a.loadView(ctx)
	if err != nil {
		return AutoAssignResult{}, err
	}
	var res AutoAssignResult
	var addrs []netip.Addr
	err = a.eachOfHandle(ctx, "assignments of handle", handle, func(b *block.Block) bool {
		blk := b.Prefix()
		name := ""
		if p, ok := v.pools.ByAddr(blk.Addr()); ok {
			name = p.Name
		}
		addrs = b.AddrsOf(handle, addrs[:0])
		for _, addr := range addrs {
			al, _ := b.Owner(addr)
			x := Assigned{Addr: addr, Block: blk, Pool: name, Seq: al.Seq}
			if addr.Is4() {
				res.IPv4 = append(res.IPv4, x)
			} else {
				res.IPv6 = append(res.IPv6, x)
			}
		}
		return len(addrs) > 0
	})
	if err != nil {
		return AutoAssignResult{}, err
	}
	return res, nil
}

// eachOfHandle reads handle's record and calls f with each block it names
// that exists, in block order; f reports whether the block holds an
// address of the handle. It fails with ErrHandleNotFound when there is no
// record or no block does.
func (a *Allocator) eachOfHandle(ctx context.Context, op, handle string, f func(*block.Block) bool) error {
	var h handleTx
	if err := h.open(ctx, a, op, handle); err != nil {
		return err
	}
	found := false
	for _, hc := range h.rec.entries() {
		b, err := a.readBlock(ctx, hc.block)
		if err != nil {
			return err
		}
		if b != nil && f(b) {
			found = true
		}
	}
	if !found {
		return noAddrs(op, &h)
	}
	return nil
}

// readBlock reads a block fresh from the store into a block of the
// caller's own; nil means it does not exist. (Not the cached copy: once the
// entry is unlocked, a write may turn that into the scratch copy of the
// next change.)
func (a *Allocator) readBlock(ctx context.Context, blk netip.Prefix) (*block.Block, error) {
	b, _, err := a.fetch(ctx, blk)
	return b, err
}

// Allocation describes who holds an address.
type Allocation struct {
	Addr  netip.Addr   `json:"addr"`
	Block netip.Prefix `json:"block"`
	// Handle and Attrs are as given when the address was assigned, with
	// Attrs[AttrNode] naming the node it was assigned for. Attrs must not
	// be modified.
	Handle string            `json:"handle"`
	Attrs  map[string]string `json:"attrs,omitempty"`
	// Seq is the sequence number recorded when the address was assigned.
	Seq uint64 `json:"seq"`
	// BlockAffinity is the owner of the block when it was read: a node,
	// VirtualLoadBalancer, or none.
	BlockAffinity block.Affinity `json:"blockAffinity,omitzero"`
}

// allocationOf describes al, the allocation of addr in b.
func allocationOf(b *block.Block, addr netip.Addr, al block.Allocation) Allocation {
	return Allocation{Addr: addr, Block: b.Prefix(), Handle: al.Owner.Handle, Attrs: al.Owner.Attrs, Seq: al.Seq, BlockAffinity: b.Affinity()}
}

// Borrowed reports whether x's address was assigned for an owner other
// than its block's, as Calico's calicoctl ipam show --show-borrowed lists
// them: for a node other than the block's (Attrs[AttrNode]), or for no
// node (a LoadBalancer address) in a node's block. In a block without
// affinity every address is borrowed. BlockUtilization.Borrowed counts
// the same addresses.
func (x Allocation) Borrowed() bool { return x.BlockAffinity != allocOwner(x.Attrs) }

// Release names x's address for Allocator.ReleaseIPs on the condition
// that it is still x: held by the same handle, at the same sequence
// number. Releasing what a report listed (Allocations, a Collector's
// suspects or dry run) so never frees the address of a later assignment.
func (x Allocation) Release() Release {
	return Release{Addr: x.Addr, Handle: x.Handle, Seq: x.Seq}
}

// Owner returns who holds addr, read fresh from the store, or an error
// matching ErrNotAllocated.
func (a *Allocator) Owner(ctx context.Context, addr netip.Addr) (Allocation, error) {
	if err := checkAddr("owner", addr); err != nil {
		return Allocation{}, err
	}
	addr = addr.Unmap()
	v, err := a.loadView(ctx)
	if err != nil {
		return Allocation{}, err
	}
	var b *block.Block
	if blk, ok := a.guessBlock(v, addr); ok {
		if b, err = a.readBlock(ctx, blk); err != nil {
			return Allocation{}, err
		}
	}
	if b == nil {
		blk, ok, err := a.findBlock(ctx, addr)
		if err != nil {
			return Allocation{}, err
		}
		if ok {
			if b, err = a.readBlock(ctx, blk); err != nil {
				return Allocation{}, err
			}
		}
	}
	if b != nil {
		if own, ok := b.Owner(addr); ok {
			return allocationOf(b, addr, own), nil
		}
	}
	return Allocation{}, fmt.Errorf("ipam: owner of %s: %w", addr, ErrNotAllocated)
}

// Block returns a copy of the block with prefix blk, read fresh from the
// store, to inspect its allocations, owners and affinity; ErrNotFound if
// it does not exist. Changing the copy changes nothing in the store.
func (a *Allocator) Block(ctx context.Context, blk netip.Prefix) (*block.Block, error) {
	if err := checkPrefix("block", blk); err != nil {
		return nil, err
	}
	b, err := a.readBlock(ctx, blk)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, fmt.Errorf("ipam: block %s: %w", blk, ErrNotFound)
	}
	return b, nil // the caller's own
}

// Allocations returns every allocation whose address lies in within (a
// pool's CIDR, say, to see what still uses a pool before deleting it, or
// 0.0.0.0/0 or ::/0 for every allocation of a family), in address order,
// read fresh from the store. It reads the blocks that overlap within, so a
// large prefix costs a long read. A prefix in IPv4-mapped IPv6 form
// (::ffff:10.0.0.0/104) is ErrInvalid, as everywhere a prefix is taken:
// write it in IPv4 form.
func (a *Allocator) Allocations(ctx context.Context, within netip.Prefix) ([]Allocation, error) {
	if err := checkPrefix("allocations", within); err != nil {
		return nil, err
	}
	recs, err := a.store.List(ctx, KindBlock, blockRange(within))
	if err != nil {
		return nil, fmt.Errorf("ipam: allocations in %s: %w", within, err)
	}
	// A block larger than within, starting before it, holds all of it.
	// (One that starts where within does was listed already.)
	if blk, ok, err := a.findBlock(ctx, within.Addr()); err != nil {
		return nil, err
	} else if ok && blk.Bits() < within.Bits() && blk.Addr() != within.Addr() {
		rec, err := a.store.Get(ctx, KindBlock, blockKey(blk))
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("ipam: allocations in %s: %w", within, err)
		}
		if err == nil {
			recs = append([]Record{rec}, recs...)
		}
	}
	var out []Allocation
	for _, rec := range recs {
		blk, err := parseBlockKey(rec.Key)
		if err != nil {
			return nil, fmt.Errorf("ipam: allocations in %s: %w: %w", within, ErrCorrupt, err)
		}
		b, err := decodeBlock(blk, rec.Value)
		if err != nil {
			return nil, err
		}
		for addr, al := range b.All() {
			if within.Contains(addr) {
				out = append(out, allocationOf(b, addr, al))
			}
		}
	}
	return out, nil
}
