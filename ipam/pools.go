package ipam

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/pool"
)

// The pool set is one record, so that every change is checked against every
// other pool (overlap, name) and written with one compare-and-swap: two
// allocators creating overlapping pools at once cannot both succeed.

// changePools applies change to a copy of the stored pool set and writes
// it, retrying from a fresh read when another writer got there first.
// change gives every pool it adds or replaces the version it is passed,
// or returns errUnchanged to leave the record as it is.
func (a *Allocator) changePools(ctx context.Context, op string, change func(s *pool.Set, version uint64) error) error {
	return a.retry(ctx, op, "", func() error {
		v, err := a.readView(ctx)
		if err != nil {
			return err
		}
		s := new(pool.Set)
		for _, p := range v.pools.All() {
			if err := s.Add(*p); err != nil {
				return fmt.Errorf("ipam: %s: stored pools: %w: %w", op, ErrCorrupt, err)
			}
		}
		if v.poolsVer >= math.MaxUint64-1 {
			// The next version would be one no record may hold (see
			// unmarshalPools).
			return fmt.Errorf("ipam: %s: stored pools: %w: version %d leaves no next one", op, ErrCorrupt, v.poolsVer)
		}
		next := v.poolsVer + 1
		switch err := change(s, next); {
		case errors.Is(err, errUnchanged):
			return nil
		case err != nil:
			return err
		}
		value, err := marshalPools(s, next)
		if err != nil {
			return err
		}
		return a.putSingleton(ctx, KindPool, value, v.poolsRev)
	})
}

// errUnchanged tells changePools that the pools need no write.
var errUnchanged = errors.New("pools unchanged")

// CreatePool validates p (after defaults) and adds it to the store, with
// a new Version (p.Version is ignored). It fails with ErrPoolExists if the
// name is taken and with a *pool.ValidationError if p is invalid or
// overlaps any pool, disabled ones included.
//
// Blocks of a deleted pool stay while they hold addresses. A new pool over
// the same addresses must carve them the same way, or its blocks would
// overlap the old ones: CreatePool refuses, with ErrLeftoverBlocks, a pool
// whose range holds a block of another size (a deletion of the old pool
// still running makes it fail with the overlap instead).
func (a *Allocator) CreatePool(ctx context.Context, p pool.Pool) error {
	op := fmt.Sprintf("create pool %q", p.Name)
	return a.changePools(ctx, op, func(s *pool.Set, version uint64) error {
		if _, ok := s.Get(p.Name); ok {
			return fmt.Errorf("ipam: %s: %w", op, ErrPoolExists)
		}
		p.Version = version
		if err := s.Add(p); err != nil {
			return fmt.Errorf("ipam: create pool: %w", err) // the error names the pool
		}
		// Leftover blocks are looked for after the pool set this write
		// replaces was read, so a pool deleted after the look shows as a
		// changed pool set, and the write fails and looks again. (The look
		// must not come before that read: the deletion of an overlapping
		// pool, with a node's block in it, could fall in between.)
		return a.checkLeftovers(ctx, op, p.WithDefaults())
	})
}

// checkLeftovers refuses a new pool whose range holds blocks that do not
// fit its block size.
func (a *Allocator) checkLeftovers(ctx context.Context, op string, p pool.Pool) error {
	if !p.CIDR.IsValid() {
		return nil // pool validation reports it
	}
	cidr := p.CIDR.Masked()
	recs, err := a.store.List(ctx, KindBlock, blockRange(cidr))
	if err != nil {
		return fmt.Errorf("ipam: %s: list blocks: %w", op, err)
	}
	var bad []Record
	for _, r := range recs {
		if blk, err := parseBlockKey(r.Key); err == nil && blk.Bits() != p.BlockSize {
			bad = append(bad, r)
		}
	}
	// A larger block that starts before the pool and covers it.
	if blk, ok, err := a.findBlock(ctx, cidr.Addr()); err != nil {
		return err
	} else if ok && blk.Bits() < cidr.Bits() && !slices.ContainsFunc(bad, func(r Record) bool { return r.Key == blockKey(blk) }) {
		// (One that starts where the pool does was listed already.)
		r, err := a.store.Get(ctx, KindBlock, blockKey(blk))
		switch {
		case err == nil:
			bad = append(bad, r)
		case !errors.Is(err, ErrNotFound): // deleted since: no longer in the way
			return fmt.Errorf("ipam: %s: read block %s: %w", op, blk, err)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	// Say what each one needs: a block with addresses waits for their
	// release, an empty one (what a crash can leave) for Repair.
	what := make([]string, len(bad))
	for i, r := range bad {
		blk, _ := parseBlockKey(r.Key)
		b, err := decodeBlock(blk, r.Value)
		switch {
		case err != nil:
			what[i] = fmt.Sprintf("%s (unreadable: %v)", blk, err)
		case b.Empty():
			what[i] = fmt.Sprintf("%s (empty: Repair deletes it)", blk)
		default:
			n, them := fmt.Sprintf("%d addresses", b.Used()), "them"
			if b.Used() == 1 {
				n, them = "1 address", "it"
			}
			what[i] = fmt.Sprintf("%s (%s in use: release %s first)", blk, n, them)
		}
	}
	return fmt.Errorf("ipam: %s: %w: cidr %s holds blocks of a deleted pool that do not fit blockSize %d: %s",
		op, ErrLeftoverBlocks, cidr, p.BlockSize, strings.Join(what, ", "))
}

// UpdatePool replaces the pool named p.Name. The CIDR and block size never
// change, and a LoadBalancer pool stays one.
//
// Start from the stored pool (Pool or Pools) and change what you need: p
// replaces every field. The pool read carries its Version, and UpdatePool
// changes the pool only while it is still that version; if anyone changed
// it since (DisablePool, another UpdatePool, ...), it fails with an error
// matching ErrPoolChanged and changes nothing, so an update made from an
// old read cannot undo a newer change. Read the pool again and apply the
// change again, or let ModifyPool do both. A zero p.Version updates
// whatever is stored. An update that changes nothing writes nothing and
// keeps the version.
//
// A pool may become a LoadBalancer pool, as in Calico. What nodes hold in
// it stays theirs: their addresses until released, and their blocks,
// from which LoadBalancer requests may borrow (counted as Borrowed in
// Utilization). A node gives up each of its blocks there once it is
// empty, the next time it assigns, and the virtual owner may then claim
// it.
func (a *Allocator) UpdatePool(ctx context.Context, p pool.Pool) error {
	op := fmt.Sprintf("update pool %q", p.Name)
	return a.changePools(ctx, op, func(s *pool.Set, version uint64) error {
		old, ok := s.Get(p.Name)
		if !ok {
			return fmt.Errorf("ipam: %s: %w", op, ErrPoolNotFound)
		}
		if p.Version != 0 && p.Version != old.Version {
			return fmt.Errorf("ipam: %s: %w: the update was made from version %d, and version %d is stored (read the pool again and apply the change again)",
				op, ErrPoolChanged, p.Version, old.Version)
		}
		_, err := updateIn(s, p, old, version)
		return err
	})
}

// updateIn replaces old, the pool of s called p.Name, by p with the
// version given, and returns p as it is now in s; or it returns
// errUnchanged, and old, when p has old's spec.
func updateIn(s *pool.Set, p pool.Pool, old *pool.Pool, version uint64) (pool.Pool, error) {
	if sameSpec(p, *old) {
		// Nothing to change: no write, and the version stays, so
		// updates made from a read of it still apply (a manifest
		// applied again and again, say).
		return *old, errUnchanged
	}
	p.Version = version
	if err := s.Update(p); err != nil {
		if !p.CIDR.IsValid() {
			// Most likely a pool with only the fields to change set.
			return pool.Pool{}, fmt.Errorf("ipam: update pool: %w (UpdatePool replaces the whole pool: start from Pool(ctx, %q) and change what you need, or use ModifyPool)", err, p.Name)
		}
		return pool.Pool{}, fmt.Errorf("ipam: update pool: %w", err) // the error names the pool
	}
	return p, nil
}

// ModifyPool changes the pool called name as change says, in one step: it
// applies change to a copy of the pool as stored and stores the result,
// as UpdatePool would with the pool just read, and when another writer
// changed the pools in between it reads them again and applies change
// again (so change may run more than once, and must change only the pool
// it is given). It is the way to change a few fields of a pool without
// losing a concurrent change to others, where UpdatePool replaces every
// field and, with a Version read earlier, fails with ErrPoolChanged.
//
// It returns the pool as stored, with its Version. The rules are
// UpdatePool's: the name, CIDR and block size never change, and a
// LoadBalancer pool stays one; a change that renames the pool fails with
// ErrInvalid, and one that breaks the other rules or makes the pool
// invalid with a *pool.ValidationError; either changes nothing. A
// change that changes nothing writes nothing and keeps the Version. An
// error from change stops ModifyPool, which changes nothing and returns
// it, wrapped. It fails with ErrPoolNotFound when there is no such pool.
func (a *Allocator) ModifyPool(ctx context.Context, name string, change func(p *pool.Pool) error) (pool.Pool, error) {
	op := fmt.Sprintf("modify pool %q", name)
	if change == nil {
		return pool.Pool{}, invalid(op, "nil change")
	}
	var out pool.Pool
	err := a.changePools(ctx, op, func(s *pool.Set, version uint64) error {
		old, ok := s.Get(name)
		if !ok {
			return fmt.Errorf("ipam: %s: %w", op, ErrPoolNotFound)
		}
		p := clonePool(*old)
		if err := change(&p); err != nil {
			return fmt.Errorf("ipam: %s: %w", op, err)
		}
		if p.Name != name {
			return invalid(op, "the change renamed the pool to %q (create a pool of that name, and delete this one, instead)", p.Name)
		}
		var err error
		out, err = updateIn(s, p, old, version)
		if errors.Is(err, errUnchanged) {
			out = clonePool(*old)
		}
		return err
	})
	if err != nil {
		return pool.Pool{}, err
	}
	return out, nil
}

// clonePool returns a copy of p that shares nothing a caller could change
// with it: pools handed out are copies of the allocator's own.
func clonePool(p pool.Pool) pool.Pool {
	p.AllowedUses = slices.Clone(p.AllowedUses)
	return p
}

// sameSpec reports whether p and q have the same spec, defaults applied:
// the same encoding, which leaves out Name and Version.
func sameSpec(p, q pool.Pool) bool {
	a, err := json.Marshal(p.WithDefaults())
	if err != nil {
		return false
	}
	b, err := json.Marshal(q.WithDefaults())
	return err == nil && bytes.Equal(a, b)
}

// DisablePool stops new assignments from the pool. Addresses assigned from
// it stay, and can be released. It applies to the pool as stored, whatever
// its Version, and gives it a new one; disabling a disabled pool writes
// nothing and keeps its Version.
func (a *Allocator) DisablePool(ctx context.Context, name string) error {
	return a.setDisabled(ctx, name, true, netip.Prefix{}, fmt.Sprintf("disable pool %q", name))
}

// EnablePool lets a disabled pool be assigned from again. As DisablePool,
// it gives the pool a new Version, and enabling an enabled pool writes
// nothing.
func (a *Allocator) EnablePool(ctx context.Context, name string) error {
	return a.setDisabled(ctx, name, false, netip.Prefix{}, fmt.Sprintf("enable pool %q", name))
}

// setDisabled disables or enables the pool called name, as op. With want
// valid, it fails with ErrPoolNotFound, changing nothing, when the name
// names a pool over another range.
func (a *Allocator) setDisabled(ctx context.Context, name string, disabled bool, want netip.Prefix, op string) error {
	return a.changePools(ctx, op, func(s *pool.Set, version uint64) error {
		p, ok := s.Get(name)
		switch {
		case !ok:
			return fmt.Errorf("ipam: %s: %w", op, ErrPoolNotFound)
		case want.IsValid() && p.CIDR != want:
			return fmt.Errorf("ipam: %s: %w: the pool over %s was replaced, and %q now names the pool over %s, which is kept",
				op, ErrPoolNotFound, want, name, p.CIDR)
		case p.Disabled == disabled:
			return errUnchanged
		}
		q := *p
		q.Disabled = disabled
		q.Version = version
		if err := s.Update(q); err != nil {
			return fmt.Errorf("ipam: %s: %w", strings.Fields(op)[0]+" pool", err) // the error names the pool
		}
		return nil
	})
}

// SplitPool replaces the pool called name by len(into) pools of equal size
// with its settings, called into[0], into[1], ... in address order, and
// returns them as stored, each with its new Version: Calico's calicoctl
// ipam split (see [pool.Pool.Split] for the rules: 2, 4, 8, ... parts,
// each holding whole blocks, valid names given once; one may be the
// pool's own).
//
// Nothing else changes. Every block of the pool lies in exactly one new
// pool, which carves it the same way; its affinity, addresses, owners and
// release times stay, and a claim in flight stands. The pool set is one
// record, so the replacement is one write: no allocator ever sees part of
// the range without a pool, and, unlike Calico, the datastore need not be
// locked while it runs.
//
// Afterwards each part is a pool of its own: UpdatePool can give it its
// own nodeSelector (a node keeps its non-empty blocks in a part that no
// longer selects it, and gives up each once it is empty, as after any
// selector change), DisablePool can stop it and DeletePool can remove
// it, the rest staying in use. Requests that name the pool
// (AutoAssignArgs.IPv4Pools and IPv6Pools) must name the new pools.
//
// It fails with ErrPoolNotFound, or with a *pool.ValidationError when the
// parts or names are wrong (pool.ErrSplit, pool.ErrName) or a new name is
// another pool's (ErrPoolExists); the stored pools are then unchanged.
func (a *Allocator) SplitPool(ctx context.Context, name string, into ...string) ([]pool.Pool, error) {
	op := fmt.Sprintf("split pool %q", name)
	var parts []pool.Pool
	err := a.changePools(ctx, op, func(s *pool.Set, version uint64) error {
		p, ok := s.Get(name)
		if !ok {
			return fmt.Errorf("ipam: %s: %w", op, ErrPoolNotFound)
		}
		var err error
		if parts, err = p.Split(into...); err != nil {
			return fmt.Errorf("ipam: split pool: %w", err) // the error names the pool
		}
		s.Remove(name)
		for i := range parts {
			parts[i].Version = version
			if err := s.Add(parts[i]); err != nil {
				return fmt.Errorf("ipam: %s: %w", op, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i := range parts {
		parts[i] = clonePool(parts[i])
	}
	return parts, nil
}

// DeletePool deletes a pool as Calico does: it disables the pool, releases
// every block affinity in it (empty blocks are deleted, others keep their
// addresses without affinity), then removes the pool. Assigned addresses
// stay assigned until released. Interrupted, it can simply be called again,
// until it has removed the pool: an error after that says "the pool is
// deleted" (a call again finds no pool), and what it may leave, empty
// blocks without affinity that held cooling addresses, Repair deletes, as
// does a Collector once their cooldown is over.
// If the pool is enabled again while it runs, it keeps the pool and fails
// with ErrPoolEnabled. If the name comes to name another range (a
// SplitPool) while it runs, it fails with ErrPoolNotFound, keeps the pool
// that has the name, and leaves the other parts' blocks alone when the
// split came before its disable.
//
// Deleting a pool ends the release cooldown of its addresses
// (Config.ReleaseCooldown): its empty blocks go, release times and all, and
// a pool created over the same range may assign them at once.
//
// To move workloads to another pool, or to another block size, do what
// Calico's migration procedure does: create the new pool, disable the old
// one (DisablePool: nothing new is assigned from it, what it holds stays),
// re-create the workloads so that they get addresses from the new pool and
// release the old ones, then delete the old pool. Blocks of the old pool
// that still hold addresses stay, without affinity, and are listed in
// Report.Leftovers; the migration is over when none is left. A new pool
// over the old range with another block size is refused
// (ErrLeftoverBlocks) until then. examples/migration shows it step by step.
func (a *Allocator) DeletePool(ctx context.Context, name string) error {
	p, err := a.Pool(ctx, name)
	if errors.Is(err, ErrPoolNotFound) {
		return fmt.Errorf("ipam: delete pool %q: %w", name, ErrPoolNotFound)
	}
	if err != nil {
		return err
	}
	if !p.Disabled {
		// Disable the pool read above, not whatever the name names by now:
		// a split (or a deletion and a create) in between gives the name
		// to another range, and releasing p's blocks would then take
		// those of pools that stay enabled.
		if err := a.setDisabled(ctx, name, true, p.CIDR, fmt.Sprintf("delete pool %q", name)); err != nil {
			return err
		}
	}
	recs, err := a.store.List(ctx, KindBlock, blockRange(p.CIDR))
	if err != nil {
		return fmt.Errorf("ipam: delete pool %q: list blocks: %w", name, err)
	}
	for _, r := range recs {
		blk, err := parseBlockKey(r.Key)
		if err != nil {
			continue
		}
		b, err := decodeBlock(blk, r.Value)
		if err != nil {
			return fmt.Errorf("ipam: delete pool %q: %w", name, err)
		}
		if err := a.releaseAnyAffinity(ctx, blk, b.Affinity()); err != nil {
			return fmt.Errorf("ipam: delete pool %q: %w", name, err)
		}
	}
	if err := a.dropPoolIndex(ctx, p.CIDR); err != nil {
		return fmt.Errorf("ipam: delete pool %q: %w", name, err)
	}
	op := fmt.Sprintf("delete pool %q", name)
	err = a.changePools(ctx, op, func(s *pool.Set, _ uint64) error {
		q, ok := s.Get(name)
		if !ok {
			return fmt.Errorf("ipam: %s: %w", op, ErrPoolNotFound)
		}
		if q.CIDR != p.CIDR {
			// Split (or deleted and created again) while its blocks were
			// released: the name is another pool's now.
			return fmt.Errorf("ipam: %s: %w: the pool over %s was replaced during its deletion, and %q now names the pool over %s, which is kept",
				op, ErrPoolNotFound, p.CIDR, name, q.CIDR)
		}
		if !q.Disabled {
			// Enabled again while its blocks were released: claims may
			// have followed, which the deletion did not see.
			return fmt.Errorf("ipam: %s: %w; it is kept", op, ErrPoolEnabled)
		}
		s.Remove(name)
		return nil
	})
	if err != nil {
		return err
	}
	// Empty blocks kept without affinity while their addresses cooled
	// (see keepCooling) go with the pool: listed after its removal, so a
	// block kept meanwhile, which reads the pool set after its write
	// (keptStands), is deleted by one side or the other.
	if recs, err = a.store.List(ctx, KindBlock, blockRange(p.CIDR)); err != nil {
		return fmt.Errorf("ipam: %s: the pool is deleted; its empty blocks are left to Repair or a Collector: list blocks: %w", op, err)
	}
	var errs []error
	for _, r := range recs {
		// A record that does not hold the block its key names is passed
		// over (Check reports it).
		sum, err := peekRecord(r)
		if err != nil || sum.Used != 0 || !sum.Affinity.IsZero() {
			continue
		}
		if _, err := a.releaseEmptyAffinity(ctx, block.Affinity{}, sum.Prefix, sum.Seq); err != nil && !errors.Is(err, errBlockChanged) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("ipam: %s: the pool is deleted; its empty blocks are left to Repair or a Collector: %w", op, errors.Join(errs...))
	}
	return nil
}

// dropPoolIndex removes the index entries for blocks in cidr that their
// blocks do not bear out: a call cut short between a block's release and
// its entry's delete leaves one, which the block, no longer affine, does
// not show. An entry whose block is its owner's stays: the deletion
// released the blocks it listed, so such a block was claimed since, which
// only an enabled pool allows, and the removal then fails with
// ErrPoolEnabled.
func (a *Allocator) dropPoolIndex(ctx context.Context, cidr netip.Prefix) error {
	recs, err := a.store.List(ctx, KindAffinity, KeyRange{})
	if err != nil {
		return fmt.Errorf("list affinities: %w", err)
	}
	for _, r := range recs {
		owner, blk, err := parseAffinityKey(r.Key)
		if err != nil || blk.Bits() < cidr.Bits() || !cidr.Contains(blk.Addr()) {
			continue // Check reports a malformed key
		}
		aff, _ := block.ParseAffinity(owner) // parseAffinityKey checked it
		now, err := a.storedAffinity(ctx, blk)
		if err != nil {
			return err
		}
		if now == aff {
			continue
		}
		if err := a.dropIndex(ctx, aff, blk, r.Revision); err != nil {
			return err
		}
	}
	return nil
}

// releaseAnyAffinity releases blk's affinity, whoever holds it: aff, as
// last read, or whoever took the block over since (a reclaim racing the
// deletion of its pool).
func (a *Allocator) releaseAnyAffinity(ctx context.Context, blk netip.Prefix, aff block.Affinity) error {
	for range a.retries {
		if aff.IsZero() {
			return nil
		}
		err := a.releaseAffinity(ctx, aff, blk, false)
		if !errors.Is(err, ErrAffinityConflict) {
			return err
		}
		if aff, err = a.storedAffinity(ctx, blk); err != nil {
			return err
		}
	}
	return fmt.Errorf("ipam: release block %s: %w: its affinity kept changing", blk, ErrTooManyConflicts)
}

// Pools returns the pools in the store, in name order, each with its
// Version (see UpdatePool). It reads the store, not the allocator's cache:
// assignments use the cache, which sees another process's change once the
// store's generations move (at once on memstore, after the watch's lag on
// etcd: see Generations).
func (a *Allocator) Pools(ctx context.Context) ([]pool.Pool, error) {
	v, err := a.readView(ctx)
	if err != nil {
		return nil, err
	}
	ps := v.pools.All()
	out := make([]pool.Pool, len(ps))
	for i, p := range ps {
		out[i] = clonePool(*p)
	}
	return out, nil
}

// Pool returns the pool with the given name, with its Version (see
// UpdatePool), or an error matching ErrPoolNotFound. It reads the store,
// as Pools does.
func (a *Allocator) Pool(ctx context.Context, name string) (pool.Pool, error) {
	v, err := a.readView(ctx)
	if err != nil {
		return pool.Pool{}, err
	}
	p, ok := v.pools.Get(name)
	if !ok {
		return pool.Pool{}, fmt.Errorf("ipam: pool %q: %w", name, ErrPoolNotFound)
	}
	return clonePool(*p), nil
}
