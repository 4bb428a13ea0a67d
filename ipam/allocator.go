package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync/atomic"
	"time"

	"go4.org/netipx"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/pool"
)

// Options tune an Allocator. The zero value gives Calico's behaviour.
type Options struct {
	// Now returns the current time; nil means time.Now. Everything the
	// allocator times is measured with it: claim times and the reclaim
	// age, release times and the release cooldown, a Collector's grace
	// periods, and Report.Time. A test can drive them with a fake clock.
	Now func() time.Time

	// MaxRetries bounds the compare-and-swap attempts of one write before the
	// operation gives up with ErrTooManyConflicts; 0 means 100, Calico's
	// bound. A write made within another's attempt (a handle's count,
	// raised before its block is written) that gives up fails that attempt,
	// which is made again from a fresh read: under conflicts that never
	// clear, such a pair makes up to MaxRetries² attempts of the inner write.
	MaxRetries int

	// ReclaimAge is how long a node's block must have been claimed before
	// another owner may take it over, when the block is empty and its pool
	// has no unclaimed block left. 0 means one minute (Calico's); a negative
	// value turns reclaiming off. An empty block without affinity (kept while its
	// addresses cool, see Config.ReleaseCooldown) is taken over at any age.
	ReclaimAge time.Duration
}

// Allocator is the IPAM engine: it assigns and releases addresses from the
// pools kept in a Store, claiming blocks for nodes as Calico does. Make
// one with New; the zero Allocator has no store and must not be used.
//
// An Allocator is safe for concurrent use. Any number of allocators, in one
// process or many, may share one store: every write is a compare-and-swap,
// so they never hand out an address twice. An allocator caches what it
// read (pools, configuration, which blocks a node holds, a node's stored
// labels, the blocks it wrote, and on a store that offers Committer but
// not BlockKeeper the handle records it wrote) and checks the cache with
// the store's [Generations] when the store offers them, or by
// compare-and-swap on every write; a stale cache costs a retry, never a
// wrong answer.
type Allocator struct {
	store      Store
	gens       Generations // nil when the store does not offer them
	keeper     BlockKeeper // nil when the store does not offer it
	committer  Committer   // nil when the store does not offer it
	now        func() time.Time
	retries    int
	reclaimAge time.Duration
	// sleep waits for d or until ctx is done (Repair's settle time);
	// tests replace it to run operations during the wait.
	sleep func(ctx context.Context, d time.Duration) error

	view atomic.Pointer[view]

	// Caches (see cache): blocks as last read or written (IPv4 blocks in
	// blocks4, by v4Key), per node name the blocks the node holds and its
	// shared attribute map, the encoded value of handle records that count
	// one block or two, and per block record key the summary of the record
	// last peeked (see peek).
	blocks     cache[netip.Prefix, *blockEntry]
	blocks4    cache[uint64, *blockEntry]
	nodes      cache[string, *nodeCache]
	handleVals cache[handleCount, *handleVal]
	// handlePairs holds the encoded values of handle records that count
	// addresses in two blocks: a dual-stack pod's, most often.
	handlePairs cache[[2]handleCount, []byte]
	peeks       cache[string, *atomic.Pointer[peeked]]
	// memos holds the handle records the allocator wrote, when memo is
	// set (see handleMemos).
	memo  bool
	memos handleMemos
	// lb is VirtualLoadBalancer's cache, as nodes hold each node's; its
	// attrs are nil, since LoadBalancer addresses carry no AttrNode.
	lb nodeCache

	// For tests: noLane sends every AutoAssign the general way, and
	// laneTrace, when set, hears of each request the lane served, and
	// whether it went on in autoAssign after its attempt.
	noLane    bool
	laneTrace func(resumed bool)
}

// cleanupTimeout bounds the store operations that finish or undo what an
// operation began after its caller's context ended.
const cleanupTimeout = 10 * time.Second

// detach returns the context for finishing or undoing what an operation
// began, whether or not ctx has ended: it carries ctx's values, not its
// cancellation or deadline, and ends after cleanupTimeout. A caller that
// gives up midway must not leave a pair of writes half made (a handle's
// count without its block, an index entry without its block) or a failed
// request's addresses assigned.
//
//go:noinline
func detach(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// carryOn returns the context for the second write of a pair whose first
// write is made: ctx while it lasts, and once it has ended, a detached one
// (see detach). It costs nothing while ctx lasts, so the hot path uses it;
// a pair whose second half takes several round trips detaches outright,
// since ctx may end during them. Call stop when the write is done.
func carryOn(ctx context.Context) (c context.Context, stop context.CancelFunc) {
	if ctx.Err() == nil {
		return ctx, noop
	}
	return detach(ctx)
}

func noop() {}

// New returns an allocator on store.
func New(store Store, opts Options) (*Allocator, error) {
	if store == nil {
		return nil, fmt.Errorf("ipam: New: %w: nil store", ErrInvalid)
	}
	if opts.MaxRetries < 0 {
		return nil, fmt.Errorf("ipam: New: %w: MaxRetries %d is negative", ErrInvalid, opts.MaxRetries)
	}
	a := &Allocator{
		store:      store,
		now:        opts.Now,
		retries:    opts.MaxRetries,
		reclaimAge: opts.ReclaimAge,
		sleep:      sleepCtx,
	}
	a.gens, _ = store.(Generations)
	a.keeper, _ = store.(BlockKeeper)
	a.committer, _ = store.(Committer)
	a.memo = a.committer != nil && a.keeper == nil
	if a.now == nil {
		a.now = time.Now
	}
	if a.retries == 0 {
		a.retries = 100
	}
	if a.reclaimAge == 0 {
		a.reclaimAge = time.Minute
	}
	return a, nil
}

// Store returns the store the allocator works on.
func (a *Allocator) Store() Store { return a.store }

// view is an immutable snapshot of the pools, the configuration and the
// reservations.
type view struct {
	pools       *pool.Set
	poolsRev    Revision // 0: no pool record yet
	poolsVer    uint64   // the pool record's version: the last one it gave a pool
	config      Config
	configRev   Revision      // 0: no config record, DefaultConfig in force
	reserved    *netipx.IPSet // every reserved address
	hasReserved bool
	poolsGen    uint64
	configGen   uint64
	resvGen     uint64
	// labelsMatter says that some enabled pool's nodeSelector depends on
	// the node's labels, so that a request without labels is served with the
	// stored ones (see requestLabels).
	labelsMatter bool
}

// loadView returns the current pools and configuration, from the cache when
// the store's generations say nothing changed.
func (a *Allocator) loadView(ctx context.Context) (*view, error) {
	v := a.view.Load()
	if v != nil && a.gens != nil &&
		a.gens.Generation(KindPool) == v.poolsGen && a.gens.Generation(KindConfig) == v.configGen &&
		a.gens.Generation(KindReservation) == v.resvGen {
		return v, nil
	}
	return a.readView(ctx)
}

// configView is loadView for a caller that reads only the configuration:
// the view it returns has the configuration in force, and its pools and
// reservations may be older.
func (a *Allocator) configView(ctx context.Context) (*view, error) {
	v := a.view.Load()
	if v != nil && a.gens != nil && a.gens.Generation(KindConfig) == v.configGen {
		return v, nil
	}
	return a.readView(ctx)
}

// readView reads pools and configuration from the store.
func (a *Allocator) readView(ctx context.Context) (*view, error) {
	nv := &view{config: DefaultConfig()}
	// Read each generation before its record: a write in between makes the
	// cache look stale next time (a spare read), never fresh when it is not.
	if a.gens != nil {
		nv.poolsGen = a.gens.Generation(KindPool)
		nv.configGen = a.gens.Generation(KindConfig)
		nv.resvGen = a.gens.Generation(KindReservation)
	}
	rec, err := a.store.Get(ctx, KindPool, singletonKey)
	switch {
	case err == nil:
		nv.pools, nv.poolsVer, err = unmarshalPools(rec.Value)
		if err != nil {
			return nil, err
		}
		nv.poolsRev = rec.Revision
	case errors.Is(err, ErrNotFound):
		nv.pools = new(pool.Set)
	default:
		return nil, fmt.Errorf("ipam: read pools: %w", err)
	}
	nv.labelsMatter = labelsMatter(nv.pools)
	rec, err = a.store.Get(ctx, KindConfig, singletonKey)
	switch {
	case err == nil:
		if nv.config, err = unmarshalConfig(rec.Value); err != nil {
			return nil, err
		}
		nv.configRev = rec.Revision
	case errors.Is(err, ErrNotFound):
	default:
		return nil, fmt.Errorf("ipam: read config: %w", err)
	}
	if err := a.readReservations(ctx, nv); err != nil {
		return nil, err
	}
	a.view.Store(nv)
	return nv, nil
}

// readReservations reads the reservations into v. Its generation, if the
// store offers them, was read before.
func (a *Allocator) readReservations(ctx context.Context, v *view) error {
	recs, err := a.store.List(ctx, KindReservation, KeyRange{})
	if err != nil {
		return fmt.Errorf("ipam: read reservations: %w", err)
	}
	if v.reserved, err = reservedSet(recs); err != nil {
		return err
	}
	v.hasReserved = len(recs) > 0
	return nil
}

// reservationsSince returns v with the reservations as they are now, or v
// itself when the store's generations say they have not changed since v
// was read. Without generations it reads them every time.
func (a *Allocator) reservationsSince(ctx context.Context, v *view) (*view, error) {
	var gen uint64
	if a.gens != nil {
		if gen = a.gens.Generation(KindReservation); gen == v.resvGen {
			return v, nil
		}
	}
	nv := new(view)
	*nv = *v
	nv.resvGen = gen
	if err := a.readReservations(ctx, nv); err != nil {
		return nil, err
	}
	return nv, nil
}

// allocOptions returns what restricts automatic assignment from blk now: the
// release cooldown and the reservations overlapping it.
func (v *view) allocOptions(blk netip.Prefix, now func() time.Time) block.AllocOptions {
	var opts block.AllocOptions
	if c := v.config.ReleaseCooldown; c > 0 {
		opts.ReleasedBefore = now().Add(-c)
	}
	if v.hasReserved && v.reserved.OverlapsPrefix(blk) {
		opts.Skip = v.reserved.Contains
	}
	return opts
}

// reservesIn reports whether a reservation overlaps one of pools.
func (v *view) reservesIn(pools []*pool.Pool) bool {
	if !v.hasReserved {
		return false
	}
	for _, p := range pools {
		if v.reserved.OverlapsPrefix(p.CIDR) {
			return true
		}
	}
	return false
}

// poolsRecord is the stored form of the pool set: Calico's IPPool resources
// as JSON, so the record reads like the manifests users write. Version is
// the record's last version: each write of the record takes the next one
// and gives it to the pools it adds or changes (a deletion gives it to
// none), so a pool version never repeats, whatever pools are deleted. A
// pool without a version (only in a record carve wrote before pools had
// versions) reads as version 1, and is written back with it: no write
// gives 1 to a pool of such a record, whose next write takes 2.
type poolsRecord struct {
	Version uint64         `json:"version,omitempty"`
	Pools   []poolResource `json:"pools"`
}

type poolResource struct {
	Name    string    `json:"name"`
	Version uint64    `json:"version,omitempty"`
	Spec    pool.Pool `json:"spec"`
}

// marshalPools encodes s, with version as the record's version.
func marshalPools(s *pool.Set, version uint64) ([]byte, error) {
	rec := poolsRecord{Version: version}
	for _, p := range s.All() {
		rec.Pools = append(rec.Pools, poolResource{Name: p.Name, Version: p.Version, Spec: *p})
	}
	return json.Marshal(rec)
}

// unmarshalPools decodes a pool record: the set and the record's version.
// Every pool it returns has a non-zero version (see poolsRecord), so that
// an update made from it is conditional.
func unmarshalPools(data []byte) (*pool.Set, uint64, error) {
	var rec poolsRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, 0, fmt.Errorf("ipam: pool record: %w: %w", ErrCorrupt, err)
	}
	if rec.Version == math.MaxUint64 {
		// No write could take the next version: it would wrap to 0, and
		// pool versions would repeat.
		return nil, 0, fmt.Errorf("ipam: pool record: %w: version %d leaves no next one", ErrCorrupt, rec.Version)
	}
	s := new(pool.Set)
	version := rec.Version
	for _, r := range rec.Pools {
		p := r.Spec
		p.Name = r.Name
		p.Version = r.Version
		if p.Version > rec.Version {
			return nil, 0, fmt.Errorf("ipam: pool record: %w: pool %q has version %d, after the record's %d", ErrCorrupt, r.Name, r.Version, rec.Version)
		}
		if p.Version == 0 {
			p.Version = 1
			version = max(version, 1)
		}
		if err := s.Add(p); err != nil {
			// Not wrapped: the stored pool is at fault, not the caller's.
			return nil, 0, fmt.Errorf("ipam: pool record: %w: %v", ErrCorrupt, err)
		}
	}
	return s, version, nil
}

// Config returns the configuration in force: the stored one, or
// DefaultConfig when none was set. It reads the store, as Pools does.
func (a *Allocator) Config(ctx context.Context) (Config, error) {
	v, err := a.readView(ctx)
	if err != nil {
		return Config{}, err
	}
	return v.config, nil
}

// SetConfig validates c and stores it for every allocator on the store.
// It replaces the stored configuration whatever it holds, one that does
// not decode too (see Check). An invalid c fails with an error matching
// ErrInvalidConfig and, as every malformed argument, ErrInvalid.
func (a *Allocator) SetConfig(ctx context.Context, c Config) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("ipam: set config: %w: %w", ErrInvalid, err)
	}
	value, err := c.marshal()
	if err != nil {
		return err
	}
	return a.retry(ctx, "set", "config", func() error {
		// The record's revision only: the configuration stored is
		// replaced whole, so it need not decode.
		var rev Revision
		rec, err := a.store.Get(ctx, KindConfig, singletonKey)
		switch {
		case err == nil:
			rev = rec.Revision
		case !errors.Is(err, ErrNotFound):
			return fmt.Errorf("ipam: read config: %w", err)
		}
		return a.putSingleton(ctx, KindConfig, value, rev)
	})
}

// putSingleton writes the one record of a kind (pools, config) over the
// revision read, creating it when rev is 0. A record that vanished in
// between counts as a lost race.
func (a *Allocator) putSingleton(ctx context.Context, kind Kind, value []byte, rev Revision) error {
	var err error
	if rev == 0 {
		_, err = a.store.Create(ctx, kind, singletonKey, value)
	} else {
		_, err = a.store.Update(ctx, kind, singletonKey, value, rev)
	}
	if errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("%w: %w", errRecordMoved, err)
	}
	return err
}

// retry runs f until it succeeds, fails with an error other than a
// compare-and-swap loss (ErrConflict, ErrExists, a record that moved under
// it, a stale cached block), or runs out of attempts. op and subject name
// the operation in the error; they are only formatted on failure.
//
// The first attempt, which nearly always succeeds, is made here, without
// the loop; the rest in retryAgain, which callers that made the first
// attempt themselves call directly.
func (a *Allocator) retry(ctx context.Context, op, subject string, f func() error) error {
	if err := f(); err != nil {
		return a.retryAgain(ctx, op, subject, f, err)
	}
	return nil
}

// retryAgain is retry after a first attempt that failed with err.
func (a *Allocator) retryAgain(ctx context.Context, op, subject string, f func() error, err error) error {
	for attempt := 0; ; attempt++ {
		if !isRace(err) {
			return err
		}
		if attempt+1 >= a.retries {
			break
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		backoff(attempt)
		err = f()
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("ipam: %s %s: %w after %d attempts: %w", op, subject, ErrTooManyConflicts, a.retries, err)
}

// isRace reports whether err means another writer got there first. An
// inner retry that gave up (ErrTooManyConflicts wraps the last conflict)
// counts too: the write around it is attempted again from a fresh read
// (see Options.MaxRetries).
func isRace(err error) bool {
	return errors.Is(err, ErrConflict) || errors.Is(err, ErrExists) || errors.Is(err, errRecordMoved) || errors.Is(err, errStale)
}

// sleepCtx waits for d, or returns ctx's error if ctx is done first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// errRecordMoved marks a record that disappeared or appeared between our
// read and our write; the operation re-reads and tries again.
var errRecordMoved = errors.New("record changed during the operation")

// backoff yields after the first conflicts and sleeps a little, with
// jitter, after many, so that racing writers spread out.
func backoff(attempt int) {
	if attempt < 3 {
		return
	}
	d := time.Duration(1<<min(attempt-3, 6)) * 50 * time.Microsecond
	time.Sleep(d/2 + time.Duration(cheapRand(uint64(d/2)+1)))
}

var randState atomic.Uint64

// cheapRand returns a number in [0, n) from a shared splitmix64 sequence:
// jitter only, not security.
func cheapRand(n uint64) uint64 {
	x := randState.Add(0x9e3779b97f4a7c15)
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return (x ^ (x >> 31)) % n
}

// sameAddrFamily reports whether p holds addresses of family f.
func sameAddrFamily(p netip.Prefix, f pool.Family) bool {
	return (f == pool.IPv4) == p.Addr().Is4()
}
