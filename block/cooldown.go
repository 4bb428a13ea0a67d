package block

import (
	"math"
	"net/netip"
	"time"
)

// Release times and filtered allocation: what a release cooldown and
// address reservations need.
//
// A block remembers, for each free address released with ReleaseAt or
// ReleaseHandleAt, when it was released. AllocateWith can then pass over
// addresses released too recently (a cooldown: a released address is not
// handed to a new owner while the old one may still be using it) and over
// addresses a caller excludes (addresses reserved outside the block).
// Allocating, assigning or reserving an address forgets its release time;
// PruneReleased forgets times too old to matter, keeping the encoding small.

// AllocOptions restricts which free addresses AllocateWith may hand out.
// The zero AllocOptions restricts nothing.
type AllocOptions struct {
	// ReleasedBefore, when not zero, passes over addresses whose recorded
	// release time is at or after it.
	ReleasedBefore time.Time
	// Skip, when not nil, passes over the addresses for which it reports
	// true. It must not change the block.
	Skip func(netip.Addr) bool
}

// AllocateWith is Allocate restricted by opts: it appends to dst up to n
// free addresses that opts allows, in next-fit order, and gives them to o.
// It returns dst and the sequence number recorded, and changes nothing when
// no address qualifies. With the zero AllocOptions it is Allocate.
func (b *Block) AllocateWith(dst []netip.Addr, n int, o Owner, opts AllocOptions) ([]netip.Addr, uint64) {
	cool := !opts.ReleasedBefore.IsZero() && b.nrel > 0
	var cutoff int64
	if cool {
		cutoff = cutoffNanos(opts.ReleasedBefore)
	}
	if !cool && opts.Skip == nil {
		return b.Allocate(dst, n, o)
	}
	n = min(n, b.Free())
	if n <= 0 {
		return dst, b.seq
	}
	eligible := func(i int) bool {
		if cool && b.rel[i] != 0 && b.rel[i] >= cutoff {
			return false
		}
		return opts.Skip == nil || !opts.Skip(b.addr(i))
	}
	// Pick first, change after: nothing changes when nothing qualifies.
	var buf [64]int
	picks := buf[:0]
	visit := func(from, to int) {
		for i := from; i < to && len(picks) < n; {
			j, ok := b.taken.NextClear(uint(i))
			if !ok || int(j) >= to {
				return
			}
			if eligible(int(j)) {
				picks = append(picks, int(j))
			}
			i = int(j) + 1
		}
	}
	visit(b.cursor, b.size)
	visit(0, b.cursor)
	if len(picks) == 0 {
		return dst, b.seq
	}
	s := uint16(b.recs.acquire(o.Handle, o.Attrs, len(picks)))
	b.seq++
	for _, i := range picks {
		b.taken.Set(uint(i))
		b.owner[i] = s
		b.aseq[i] = b.seq
		b.mir.touch(i)
		b.forget(i)
		dst = append(dst, b.addr(i))
	}
	b.recs.recs[s].at = uint16(picks[len(picks)-1] + 1)
	b.cursor = picks[len(picks)-1] + 1
	if b.cursor == b.size {
		b.cursor = 0
	}
	b.used += len(picks)
	return dst, b.seq
}

// ReleaseAt is Release that also records at as the address's release time,
// for AllocateWith's ReleasedBefore. at must be after 1970 and before 2262
// in UTC (a time in nanoseconds since 1970 fits an int64); otherwise, or when the
// release is refused, nothing changes and the error is Release's or wraps
// ErrCorrupt.
func (b *Block) ReleaseAt(a netip.Addr, c Check, at time.Time) error {
	ns, ok := releaseNanos(at)
	if !ok {
		return b.releaseTimeError("release "+a.String(), at)
	}
	i, err := b.release(a, c)
	if err != nil {
		return err
	}
	b.remember(i, ns)
	return nil
}

// UnreserveAt is Unreserve that also records at as the freed address's
// release time, as if it had just been released. Reserve forgets an
// address's release time (a reserved address is not free), so an address
// reserved while it was cooling and freed again would be assignable at
// once; UnreserveAt lets the caller hold it back for a cooldown instead.
// at is checked as ReleaseAt checks it; an address that is not reserved is
// left alone.
func (b *Block) UnreserveAt(a netip.Addr, at time.Time) error {
	ns, ok := releaseNanos(at)
	if !ok {
		return b.releaseTimeError("unreserve "+a.String(), at)
	}
	i, err := b.unreserve(a)
	if err == nil && i >= 0 {
		b.remember(i, ns)
	}
	return err
}

// ReleaseHandleAt is ReleaseHandle that also records at as the release time
// of every address it frees. An at that ReleaseAt refuses releases nothing
// and returns dst unchanged with the error.
func (b *Block) ReleaseHandleAt(handle string, dst []netip.Addr, at time.Time) ([]netip.Addr, error) {
	ns, ok := releaseNanos(at)
	if !ok {
		return dst, b.releaseTimeError("release handle "+handle, at)
	}
	return b.releaseHandle(handle, dst, ns), nil
}

// Release times are after 1970 and before 2262 in UTC, so that each fits an
// int64 of Unix nanoseconds.
var (
	epoch           = time.Unix(0, 0)
	releaseEnd      = time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC)
	maxReleaseNanos = releaseEnd.UnixNano()
)

// validReleaseNanos reports whether ns, in Unix nanoseconds, can be a
// release time: after 1970 and before 2262 in UTC. ReleaseAt and both
// decoders accept exactly these.
func validReleaseNanos(ns int64) bool { return ns > 0 && ns < maxReleaseNanos }

// cutoffNanos returns t in Unix nanoseconds, to compare with release times,
// saturated where UnixNano would wrap around: every release time compares
// with the result as it does with t (0 is before all of them, MaxInt64 after
// all of them).
func cutoffNanos(t time.Time) int64 {
	switch {
	case t.Before(epoch):
		return 0
	case !t.Before(releaseEnd):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// releaseNanos returns at in Unix nanoseconds, if it can be a release time.
// The bounds are instants (the years of UTC, where the block keeps the
// time): an offset can move a time across a year's end.
func releaseNanos(at time.Time) (int64, bool) {
	if !at.After(epoch) || !at.Before(releaseEnd) {
		return 0, false // and UnixNano might overflow
	}
	return at.UnixNano(), true
}

func (b *Block) releaseTimeError(op string, at time.Time) error {
	return &blockError{block: b.prefix, op: op, detail: "release time " + at.String() + " outside 1970 to 2262", errs: []error{ErrCorrupt}}
}

// remember records ns as the release time of the free ordinal i.
func (b *Block) remember(i int, ns int64) {
	if len(b.rel) == 0 {
		b.rel = resize(b.rel, b.size)
	}
	if b.rel[i] == 0 {
		b.nrel++
	}
	b.rel[i] = ns
	b.mir.touch(i)
}

// forget drops the release time of ordinal i, which is being taken.
func (b *Block) forget(i int) {
	if b.nrel > 0 && b.rel[i] != 0 {
		b.rel[i] = 0
		b.nrel--
		b.mir.touch(i)
	}
}

// ReleasedAt returns when the free address a was released, if it was
// released with ReleaseAt or ReleaseHandleAt and the time is still kept.
func (b *Block) ReleasedAt(a netip.Addr) (time.Time, bool) {
	i, ok := b.ordinal(a)
	if !ok || b.nrel == 0 || b.rel[i] == 0 {
		return time.Time{}, false
	}
	return time.Unix(0, b.rel[i]).UTC(), true
}

// ReleaseTimes returns how many free addresses have their release time
// kept (see ReleasedAt and PruneReleased).
func (b *Block) ReleaseTimes() int { return b.nrel }

// CoolingSince returns how many free addresses were released at or after
// t: those AllocateWith with ReleasedBefore t passes over.
func (b *Block) CoolingSince(t time.Time) int {
	if b.nrel == 0 {
		return 0
	}
	cutoff, n := cutoffNanos(t), 0
	for _, ns := range b.rel {
		if ns != 0 && ns >= cutoff {
			n++
		}
	}
	return n
}

// PruneReleased forgets the release times before t, which a cooldown
// ending at t no longer needs, and returns how many it forgot. Forgetting
// something is a change and moves the counter.
func (b *Block) PruneReleased(t time.Time) int {
	if b.nrel == 0 {
		return 0
	}
	cutoff, n := cutoffNanos(t), 0
	for i, ns := range b.rel {
		if ns != 0 && ns < cutoff {
			b.rel[i] = 0
			b.mir.touch(i)
			n++
		}
	}
	if n > 0 {
		b.nrel -= n
		b.seq++
	}
	return n
}
