package ipam

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/pool"
)

// AssignIPArgs is a request for one specific address.
type AssignIPArgs struct {
	// Addr is the address to assign; it must lie in an enabled pool that
	// allows Use. An IPv4-mapped IPv6 address (::ffff:10.0.0.1) stands for
	// its IPv4 address.
	Addr netip.Addr
	// Handle, Attrs, Node and Use are as in AutoAssignArgs.
	Handle string
	Attrs  map[string]string
	Node   string
	Use    pool.Use
	// NewHandle assigns only if Handle holds no address yet, as in
	// AutoAssignArgs: otherwise AssignIP fails with ErrHandleExists.
	NewHandle bool
	// IgnoreCooldown assigns the address even if it was released
	// Config.ReleaseCooldown ago or less, which otherwise fails with
	// ErrCoolingDown. It is for a caller that knows who had the address
	// last: a workload that gets its fixed address back when it restarts
	// (a StatefulSet pod, a VM), for which the cooldown would only delay
	// the restart.
	IgnoreCooldown bool
}

// AssignIP assigns one specific address. If its block does not exist yet
// the block is claimed for the node (for use LoadBalancer, for
// VirtualLoadBalancer). With StrictAffinity the block must be affine to
// the node (or to VirtualLoadBalancer). It fails with ErrHandleExists if
// args.NewHandle and the handle holds addresses (this one or others),
// ErrInUse if the address is taken (also when args.Handle holds it),
// ErrReserved if its block reserves it (AutoAssignArgs.ReserveFirst and
// ReserveLast), ErrCoolingDown if it was released Config.ReleaseCooldown
// ago or less (unless args.IgnoreCooldown), and
// ErrNotInPool if no usable pool holds it (none, or one that is disabled
// or does not allow Use). As in Calico, naming the address is an explicit
// choice: the pool's nodeSelector and namespaceSelector, its assignment
// mode (Manual pools included) and Reservations are not consulted.
//
// AssignIPs assigns several addresses, all or none. To move an owner to
// another fixed address without the risk of losing the one it has, assign
// the new one first, under the same handle and without NewHandle, and
// release the old one (with its Seq) only once that succeeded.
func (a *Allocator) AssignIP(ctx context.Context, args AssignIPArgs) (Assigned, error) {
	res, err := a.assignIPs(ctx, false, AssignIPsArgs{
		Addrs: []netip.Addr{args.Addr}, Handle: args.Handle, Attrs: args.Attrs,
		Node: args.Node, Use: args.Use, NewHandle: args.NewHandle, IgnoreCooldown: args.IgnoreCooldown,
	})
	switch {
	case err != nil:
		return Assigned{}, err
	case len(res.IPv4) > 0:
		return res.IPv4[0], nil
	}
	return res.IPv6[0], nil
}

// AssignIPsArgs is a request for several specific addresses under one
// handle, assigned all or none.
type AssignIPsArgs struct {
	// Addrs are the addresses to assign: at least one, at most MaxAssign,
	// none twice; IPv4 and IPv6 may be mixed, and several may share a
	// block. Each must lie in an enabled pool that allows Use. An
	// IPv4-mapped IPv6 address (::ffff:10.0.0.1) stands for its IPv4
	// address.
	Addrs []netip.Addr
	// Handle, Attrs, Node, Use, NewHandle and IgnoreCooldown are as in
	// AssignIPArgs, and hold for every address.
	Handle         string
	Attrs          map[string]string
	Node           string
	Use            pool.Use
	NewHandle      bool
	IgnoreCooldown bool
}

// AssignIPs assigns several specific addresses under one handle, all or
// none: a pod or VM with a fixed IPv4 and IPv6 address (Calico's ipAddrs
// annotation), or a Service with several. Each address is assigned as
// AssignIP assigns it, in the order given, and can fail the same ways.
// Addresses that no usable pool holds are found before anything is
// written. When an address fails later, the ones assigned before it are
// released again, as they were: with no release time (they were never
// used), or with the one they had if IgnoreCooldown took them while they
// cooled; and the blocks claimed for them are given up if still empty.
// The error of an address that could not be had, the first one or a
// later one, says that nothing was assigned and wraps an *AddrError
// naming the address and its cause (ErrInUse, ErrCoolingDown...).
// Unlike carve, Calico's CNI plugin assigns such addresses one at a time,
// and keeps the first when the second fails.
//
// The handle's record is written once for all the addresses, before their
// blocks; each address then costs one write of its block. With NewHandle
// that first write is the one that creates the record, so that of
// requests racing under one handle at most one assigns. A block write
// whose outcome the request could not learn (its reply lost, and the read
// that would tell failed too) is given back as well if it happened. If
// the store fails while the addresses are given back, those it could not
// release stay recorded under the handle, where ReleaseByHandle finds
// them, and the error says so and does not say that nothing was assigned,
// as for AutoAssign.
//
// A pool replaced during the request, as for AutoAssign, fails it with
// ErrNotInPool when the block of an address it assigned is not one the
// new pool carves.
//
// The result lists the addresses by family, each family in the order
// given.
func (a *Allocator) AssignIPs(ctx context.Context, args AssignIPsArgs) (AutoAssignResult, error) {
	return a.assignIPs(ctx, true, args)
}

// assignIPs is AssignIPs; named says that the error of a request that
// failed says that nothing was assigned (AssignIP's, about its one
// address, does not need to).
func (a *Allocator) assignIPs(ctx context.Context, named bool, args AssignIPsArgs) (AutoAssignResult, error) {
	o, targets, err := a.prepareFixed(ctx, args)
	if err != nil && named && errors.Is(err, ErrNotInPool) {
		err = nothingAssigned(args, err)
	}
	if err == nil {
		var res AutoAssignResult
		if err = a.assignFixed(ctx, o, targets, named, args.IgnoreCooldown, &res); err == nil {
			err = a.stillCarved(ctx, o, res.IPv4, res.IPv6)
		}
		if err == nil {
			return res, nil
		}
		// Give back what was assigned, and the blocks claimed for it. With
		// nothing assigned, giving up a claimed block is best effort.
		unsettled := len(o.h.unsettled) > 0
		if rerr := a.rollback(ctx, o, res); rerr != nil && res.Len() > 0 {
			return AutoAssignResult{}, errors.Join(err, fmt.Errorf("ipam: assign under %q: giving back the %d addresses assigned failed: an address not released stays under the handle, and a count left too high is removed by Repair or a Collector: %w", args.Handle, res.Len(), rerr))
		} else if rerr != nil && unsettled {
			return AutoAssignResult{}, errors.Join(err, rerr) // rerr says what may stay
		}
		if named {
			err = nothingAssigned(args, err)
		}
	}
	if args.NewHandle && (o == nil || !o.h.created) && unavailable(err) {
		// As for AutoAssign (see assignError): a repeated request learns
		// first that its handle holds addresses; a record this request
		// created is its own leftover.
		if herr := a.handleExists(ctx, args.Handle); herr != nil {
			return AutoAssignResult{}, herr
		}
	}
	return AutoAssignResult{}, err
}

// unavailable reports whether AssignIPs's err says an address cannot be
// had, as opposed to a bad argument or a failing store.
func unavailable(err error) bool {
	for _, target := range [...]error{ErrNotInPool, ErrInUse, ErrReserved, ErrCoolingDown, ErrStrictAffinity} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// nothingAssigned wraps the error of an AssignIPs request that assigned
// nothing.
func nothingAssigned(args AssignIPsArgs, err error) error {
	what := "1 address"
	if n := len(args.Addrs); n != 1 {
		what = fmt.Sprintf("%d addresses", n)
	}
	return fmt.Errorf("ipam: assign %s under %q: nothing assigned: %w", what, args.Handle, err)
}

// fixedAddr is one address of an AssignIPs request, with where it goes.
type fixedAddr struct {
	addr netip.Addr
	blk  netip.Prefix
	pool string
}

// prepareFixed checks args and finds each address's pool and block. It
// writes nothing; on success the operation it returns tracks the handle.
// An error that only the view shows (an address outside a usable pool)
// comes with a nil operation too.
func (a *Allocator) prepareFixed(ctx context.Context, args AssignIPsArgs) (*assignOp, []fixedAddr, error) {
	const op = "assign"
	if err := checkFixed(op, args); err != nil {
		return nil, nil, err
	}
	attrs, shared, err := ownerAttrs(op, args.Node, args.Attrs)
	if err != nil {
		return nil, nil, err
	}
	use := args.Use
	if use == "" {
		use = pool.UseWorkload
	}
	v, err := a.loadView(ctx)
	if err != nil {
		return nil, nil, err
	}
	targets := make([]fixedAddr, len(args.Addrs))
	for i, addr := range args.Addrs {
		addr = addr.Unmap()
		p, ok := v.pools.ByAddr(addr)
		var why error
		switch {
		case !ok:
			why = fmt.Errorf("ipam: assign %s: %w: no pool holds it", addr, ErrNotInPool)
		case p.Disabled:
			why = fmt.Errorf("ipam: assign %s: %w: pool %q is disabled", addr, ErrNotInPool, p.Name)
		case !p.Allows(use):
			why = fmt.Errorf("ipam: assign %s: %w: pool %q does not allow use %s", addr, ErrNotInPool, p.Name, use)
		}
		if why != nil {
			return nil, nil, &AddrError{Addr: addr, Err: why}
		}
		blk, _ := p.BlockFor(addr)
		targets[i] = fixedAddr{addr, blk, p.Name}
	}
	aff := ownerOf(use, args.Node)
	if shared && aff.Kind == block.HostAffinity {
		attrs = a.node(args.Node).attrs
	}
	o := &assignOp{v: v, node: args.Node, aff: aff, owner: block.Owner{Handle: args.Handle, Attrs: attrs}}
	o.h.init(a, args.Handle, args.NewHandle)
	o.h.exclusive = args.NewHandle
	return o, targets, nil
}

// checkFixed checks an AssignIPs request.
func checkFixed(op string, args AssignIPsArgs) error {
	switch n := len(args.Addrs); {
	case n == 0:
		return invalid(op, "no addresses given")
	case n > MaxAssign:
		return invalid(op, "%d addresses, more than %d", n, MaxAssign)
	}
	for _, addr := range args.Addrs {
		if err := checkAddr(op, addr); err != nil {
			return err
		}
	}
	if len(args.Addrs) > 1 {
		if err := checkDistinct(op, args.Addrs); err != nil {
			return err
		}
	}
	if err := checkHandle(op, args.Handle); err != nil {
		return err
	}
	if err := checkUse(op, args.Use); err != nil {
		return err
	}
	if args.Use != pool.UseLoadBalancer {
		return checkRequestNode(op, args.Node)
	}
	return checkNodeForUse(op, args.Use, args.Node)
}

// checkDistinct fails if an address appears twice in addrs, counting an
// IPv4-mapped IPv6 address as its IPv4 address.
func checkDistinct(op string, addrs []netip.Addr) error {
	type at struct {
		addr netip.Addr
		i    int
	}
	s := make([]at, len(addrs))
	for i, addr := range addrs {
		s[i] = at{addr.Unmap(), i}
	}
	slices.SortFunc(s, func(x, y at) int { return cmp.Or(x.addr.Compare(y.addr), cmp.Compare(x.i, y.i)) })
	for k := 1; k < len(s); k++ {
		if s[k].addr == s[k-1].addr {
			x, y := addrs[s[k-1].i], addrs[s[k].i]
			if x == y {
				return invalid(op, "address %s given twice (at %d and %d)", x, s[k-1].i, s[k].i)
			}
			return invalid(op, "address %s given twice (as %s at %d and %s at %d)", s[k].addr, x, s[k-1].i, y, s[k].i)
		}
	}
	return nil
}

// assignFixed assigns the addresses of targets in order, appending each
// to res, and stops at the first that fails. With more than one address
// it raises the handle's counts for all of them in one write first.
func (a *Allocator) assignFixed(ctx context.Context, o *assignOp, targets []fixedAddr, named, ignoreCooldown bool, res *AutoAssignResult) (err error) {
	if len(targets) > 1 {
		if err := o.h.reserve(ctx, fixedPlan(targets)); err != nil {
			return err
		}
		defer func() {
			if err != nil {
				// A request that failed assigns nothing more, so lowering
				// what it raised (here, and as its rollback releases)
				// needs no hold on the handle: a record written by
				// someone else meanwhile (a release of the handle) must
				// not stop it, which would leave the counts too high and
				// call the handle held.
				o.h.exclusive = false
			}
			// A failure to lower unused counts does not fail a request
			// that got its addresses: it leaves counts too high, as a
			// crash would.
			if serr := o.h.settle(ctx); serr != nil && err != nil {
				err = errors.Join(err, serr)
			}
		}()
	}
	for _, t := range targets {
		x, err := a.assignOne(ctx, o, t, ignoreCooldown)
		if err != nil {
			if unavailable(err) {
				err = &AddrError{Addr: t.addr, Err: err}
			}
			return err
		}
		if x.Addr.Is4() {
			res.IPv4 = append(res.IPv4, x)
		} else {
			res.IPv6 = append(res.IPv6, x)
		}
	}
	return nil
}

// fixedPlan counts the addresses of targets per block.
func fixedPlan(targets []fixedAddr) []handleCount {
	blocks := make([]netip.Prefix, len(targets))
	for i, t := range targets {
		blocks[i] = t.blk
	}
	slices.SortFunc(blocks, comparePrefix)
	var plan []handleCount
	for _, blk := range blocks {
		if n := len(plan); n > 0 && plan[n-1].block == blk {
			plan[n-1].count++
			continue
		}
		plan = append(plan, handleCount{blk, 1})
	}
	return plan
}

// assignOne assigns t's address to o's owner: one write of its block,
// after raising the handle's count for it (from the reservation, if
// any). It claims the block for o's affinity when it does not exist yet,
// or exists empty and held by nobody, and notes such a claim in
// o.claimed for rollback.
func (a *Allocator) assignOne(ctx context.Context, o *assignOp, t fixedAddr, ignoreCooldown bool) (Assigned, error) {
	addr, blk, cfg := t.addr, t.blk, o.v.config
	e := a.entry(blk)
	e.lock()
	defer e.unlock()
	var seq uint64
	err := a.retry(ctx, "assign into block", e.name, func() error {
		if err := a.ensure(ctx, e); err != nil {
			return err
		}
		if e.blk == nil || e.blk.Empty() && e.blk.Affinity().IsZero() {
			// No block yet, or an empty one nobody holds (kept while its
			// addresses cool): claim it for the node. If another node got
			// there first, the block now loaded is theirs: assign into it
			// like any existing block.
			// Only a block this request made the owner's is its own to
			// give up on failure: one found the owner's already (another
			// allocator's claim, made since the cached copy) is not.
			switch made, err := a.claimLocked(ctx, e, o.aff, false, hostReserved{}); {
			case err == nil:
				if made {
					o.claimed = append(o.claimed, blk) // rollback skips repeats
				}
			case !errors.Is(err, ErrAffinityConflict):
				return err
			}
		}
		if cfg.StrictAffinity && e.blk.Affinity() != o.aff {
			if err := e.confirm(); err != nil {
				return err
			}
			return fmt.Errorf("ipam: assign %s: %w: block %s is affine to %q, not %s", addr, ErrStrictAffinity, blk, e.blk.Affinity(), o.aff)
		}
		if at, ok := e.blk.ReleasedAt(addr); ok && ignoreCooldown {
			// A rollback gives the address back as it was: cooling.
			if o.cooled == nil {
				o.cooled = map[netip.Addr]time.Time{}
			}
			o.cooled[addr] = at
		} else if c := cfg.ReleaseCooldown; c > 0 && ok && !at.Before(a.now().Add(-c)) {
			// Cooling up to and including the cooldown's last instant, as
			// AutoAssign and Utilization count it (block.CoolingSince).
			if err := e.confirm(); err != nil {
				return err
			}
			return fmt.Errorf("ipam: assign %s: %w: released at %s, cooldown %v (IgnoreCooldown assigns it all the same)", addr, ErrCoolingDown, at.Format(time.RFC3339), c)
		}
		next := e.stage()
		var err error
		if seq, err = next.Assign(addr, o.owner); err != nil {
			if cerr := e.confirm(); cerr != nil {
				return cerr
			}
			return fmt.Errorf("ipam: %w", err) // the block's error names the address
		}
		if err := a.writeAssign(ctx, &o.h, e, addr, seq, 1); err != nil {
			return err
		}
		if !e.carved.Load() {
			o.uncarved = true // stillCarved reads the pools
		}
		return nil
	})
	if err != nil {
		return Assigned{}, err
	}
	return Assigned{Addr: addr, Block: blk, Pool: t.pool, Seq: seq}, nil
}
