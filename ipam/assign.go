package ipam

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

// AutoAssignArgs is a request for addresses chosen by the allocator.
type AutoAssignArgs struct {
	// Num4 and Num6 are how many IPv4 and IPv6 addresses to assign; at
	// least one must be positive, neither more than MaxAssign.
	Num4, Num6 int

	// Handle names the owner of the addresses (for example a pod, a VM
	// interface or a Service); ReleaseByHandle releases them all.
	// Required (see MaxNameLen for what a handle ID may hold). Without
	// NewHandle every call assigns new addresses, under a handle that
	// holds some already too, as in Calico.
	Handle string

	// NewHandle makes the request safe to repeat: it assigns only if
	// Handle holds no address yet, and otherwise fails with an error
	// matching ErrHandleExists, having assigned nothing. Of requests racing
	// under one handle, on any number of allocators, at most one assigns:
	// the first write of a request creates the handle's record, a store's
	// create succeeds once, and a request goes on only with the record at
	// the revision it wrote last. (None does if the one that got the
	// handle then fails and gives it up; asking again then assigns.)
	//
	// A caller that may send a request again (a CNI ADD retried, a
	// controller whose status update failed) sets it and, on
	// ErrHandleExists, reads what the first request got with
	// AssignedByHandle. Compare that with what was asked, family by
	// family: a request still in flight shows only as far as it has got,
	// and one cut short by a crash, or by a handle write that failed, may
	// have left part of its addresses, or a count without addresses
	// (AssignedByHandle then gives ErrHandleNotFound). Such a handle stays
	// held until ReleaseByHandle releases what it holds and the count
	// left is removed: by Repair, or by a Collector once the count has
	// stood unchanged for its grace period. A request that fails cleanly
	// leaves the handle new again.
	NewHandle bool

	// Attrs are stored with each address, with AttrNode set to Node (the
	// caller may set AttrNode only to Node).
	Attrs map[string]string

	// Node is the node the addresses are for: its blocks are used first and
	// new blocks are claimed for it (see MaxNameLen for what a node name
	// may hold). Required, except for use LoadBalancer, where it must be
	// empty: LoadBalancer addresses belong to no node, and come from
	// blocks of the virtual owner VirtualLoadBalancer.
	Node string

	// NodeLabels and NamespaceLabels are matched against pools'
	// nodeSelector and namespaceSelector. A map[string]string converts:
	// selector.Set(m), or selector.Set{"rack": "a"}.
	//
	// NodeLabels nil, or a nil selector.Set (selector.Set(m) of a nil map),
	// means the node's labels as SetNodeLabels stored them (none, if it
	// stored none), which is how a node agent that does not know the
	// labels leaves them to whoever keeps them. Labels given
	// (selector.Set{} for none) serve this request instead; they are
	// neither checked nor stored. A request that succeeds gives up the
	// node's empty blocks in enabled pools whose nodeSelector the labels
	// it was served with do not match (see AutoAssign). NamespaceLabels
	// nil means none.
	NodeLabels      selector.Labels
	NamespaceLabels selector.Labels

	// Use is what the addresses are for; the zero Use means
	// pool.UseWorkload. Only pools that allow Use qualify; with
	// pool.UseLoadBalancer the blocks used and claimed are
	// VirtualLoadBalancer's, as in Calico.
	Use pool.Use

	// IPv4Pools and IPv6Pools name the pools to use, in order, each by its
	// name or its CIDR. When set they bypass selectors and Manual
	// assignment mode, but each must exist, be enabled and be of the right
	// family: otherwise the request fails with an *AssignError whose cause
	// is a *pool.NoPoolError naming the pool, and a name that no pool has
	// also matches ErrPoolNotFound.
	IPv4Pools, IPv6Pools []string

	// Partial accepts fewer addresses than asked for: what was assigned is
	// kept and returned along with an *AssignError. Without it AutoAssign is
	// all-or-nothing across both families.
	Partial bool

	// ReserveFirst and ReserveLast reserve that many addresses at the start
	// and the end of every block this request claims, as Calico does for
	// Windows nodes (3 and 1): they are never assigned, and count as
	// Reserved in utilization. Pools whose blocks would keep no address are
	// not claimed from. Each at most MaxHostReserved.
	ReserveFirst, ReserveLast int
}

// MaxHostReserved bounds AutoAssignArgs.ReserveFirst and ReserveLast.
const MaxHostReserved = 64

// Assigned is one assigned address.
type Assigned struct {
	Addr netip.Addr
	// Block is the block the address came from, and Pool the name of the
	// pool that carved it as the request saw the pools (a SplitPool or
	// DeletePool meanwhile may have given the block to another pool).
	Block netip.Prefix
	Pool  string
	// Seq is the block's sequence number recorded with the allocation; pass
	// it in a Release to release this allocation and never a later one of
	// the same address. It is large and says nothing by itself: a block's
	// counter starts at its creation time in nanoseconds and goes up by
	// one per change, so that a block deleted and made again does not
	// repeat the numbers of its earlier life.
	Seq uint64
}

// Prefix returns the address with its block's prefix length, the form in
// which Calico's CNI plugin reports an address it assigned automatically
// (10.244.0.5/26). For an address asked for by AssignIP, the plugin
// reports a host-length prefix (10.244.0.5/32) instead, and for a
// LoadBalancer address the block means nothing to a Service: use Addr.
func (x Assigned) Prefix() netip.Prefix { return netip.PrefixFrom(x.Addr, x.Block.Bits()) }

// AutoAssignResult holds the addresses AutoAssign assigned.
type AutoAssignResult struct {
	IPv4, IPv6 []Assigned
}

// Len returns the number of addresses in r.
func (r AutoAssignResult) Len() int { return len(r.IPv4) + len(r.IPv6) }

// assignOp carries one assignment operation's state.
type assignOp struct {
	v      *view
	node   string
	nc     *nodeCache // the node's cache
	aff    block.Affinity
	owner  block.Owner
	labels selector.Labels
	h      handleTx
	// claimed lists the blocks this operation claimed, for rollback.
	claimed []netip.Prefix
	// corrupt lists the blocks its claims passed over because their
	// records are corrupt (see passOver), for the reasons of a request
	// that falls short.
	corrupt []netip.Prefix
	// cooled holds the release times of addresses assigned while they
	// cooled (AssignIPs with IgnoreCooldown), which a rollback restores.
	cooled map[netip.Addr]time.Time
	// unselected lists blocks affine to the node that no eligible pool
	// holds: once the operation succeeds, those whose pool no longer
	// selects the node are given up if empty.
	unselected []netip.Prefix
	// listed keeps, per pool, the blocks a claim listed, for borrowing.
	listed map[string][]Record
	// rsv is what each block this operation claims reserves.
	rsv hostReserved
	// addrs is scratch space for the addresses of one block, when more
	// than a few are wanted.
	addrs []netip.Addr
	// cooling and reserved say whether a block this operation looked at
	// had free addresses that the release cooldown or a reservation held
	// back, for the reasons of a failure.
	cooling, reserved bool
	// capped and strict say that MaxBlocksPerHost stopped a claim, and
	// StrictAffinity borrowing, for a family that came out short.
	capped, strict bool
	// uncarved says that the operation assigned in a block whose cache
	// entry is not known to be carved by the pools (see stillCarved).
	uncarved bool
}

// AutoAssign assigns addresses from the pools that qualify for the request,
// as Calico does: first from blocks affine to the node, then from blocks it
// claims for the node (AutoAllocateBlocks, up to MaxBlocksPerHost), then,
// unless StrictAffinity, borrowed from other blocks of the pools.
// Once it succeeds, the node gives up its empty blocks in enabled pools
// that no longer select it, as Calico does: whose nodeSelector does not
// match the node's labels (args.NodeLabels, or those SetNodeLabels
// stored), or that became LoadBalancer pools (see UpdatePool).
//
// It is all-or-nothing across both families unless args.Partial: when it
// cannot assign everything it releases what it assigned and returns an
// *AssignError. Errors from the store are returned as they are; the
// addresses assigned by then are released on a best-effort basis and are
// otherwise recorded under the handle, where ReleaseByHandle finds them.
// A request during which a pool it assigned from was replaced by a pool
// over the same range with another block size (DeletePool, then
// CreatePool) may have assigned from a block the new pool does not carve:
// it releases what it assigned and fails with an *AddrError matching
// ErrNotInPool, and may be made again.
func (a *Allocator) AutoAssign(ctx context.Context, args AutoAssignArgs) (AutoAssignResult, error) {
	if a.gens != nil && !a.noLane {
		if res, ok, err := a.autoAssignLane(ctx, &args); ok {
			return res, err
		}
	}
	// A node the allocator has met has a name that passed the checks.
	// LoadBalancer addresses belong to no node, but to the virtual owner.
	lb := args.Use == pool.UseLoadBalancer
	var nc *nodeCache
	known := lb
	if lb {
		nc = &a.lb
	} else {
		nc, known = a.nodes.get(args.Node)
	}
	if err := checkAutoAssign(args, known); err != nil {
		return AutoAssignResult{}, err
	}
	attrs, shared, err := ownerAttrs("auto-assign", args.Node, args.Attrs)
	if err != nil {
		return AutoAssignResult{}, err
	}
	if !known {
		nc = a.node(args.Node)
	}
	if shared {
		attrs = nc.attrs
	}
	v, err := a.loadView(ctx)
	if err != nil {
		return AutoAssignResult{}, err
	}
	unstored := false
	if !lb {
		if args.NodeLabels, unstored, err = a.requestLabels(ctx, v, args.Node, nc, args.NodeLabels); err != nil {
			return AutoAssignResult{}, err
		}
	}
	use := args.Use
	if use == "" {
		use = pool.UseWorkload
	}
	// Choose the pools of both families before writing anything.
	var pools [2][]*pool.Pool
	var selErr [2]error
	var poolBuf [2][4]*pool.Pool
	for i, fam := range []pool.Family{pool.IPv4, pool.IPv6} {
		n, names := args.Num4, args.IPv4Pools
		if fam == pool.IPv6 {
			n, names = args.Num6, args.IPv6Pools
		}
		if n == 0 {
			continue
		}
		pools[i], selErr[i] = v.pools.AppendSelect(poolBuf[i][:0], pool.Request{
			Family: fam, Node: args.Node, NodeLabels: args.NodeLabels,
			NamespaceLabels: args.NamespaceLabels, Use: use, Pools: names,
		})
		if selErr[i] != nil {
			selErr[i] = ownLabels(selErr[i])
			if unstored {
				selErr[i] = noStoredLabels(selErr[i], args.Node)
			}
		}
	}
	if !args.Partial && (selErr[0] != nil || selErr[1] != nil) {
		// All-or-nothing and a family has no pool: fail before writing,
		// saying which family and why.
		var short [2]int
		var reasons []string
		for i, n := range [2]int{args.Num4, args.Num6} {
			if selErr[i] != nil {
				short[i] = n
				reasons = append(reasons, selErr[i].Error())
			}
		}
		return AutoAssignResult{}, a.assignError(ctx, args, false, AutoAssignResult{}, short, reasons, nil, errors.Join(selErr[0], selErr[1]))
	}

	var o assignOp
	a.startAssign(&o, v, nc, &args, attrs)
	return a.autoAssign(ctx, &args, &o, &pools, &selErr, nil)
}

// startAssign sets up o, which must be new, for an AutoAssign request
// args, checked, for the owner of nc, under v; attrs are the addresses'
// attributes. (The caller declares o, which then stays on its stack.)
func (a *Allocator) startAssign(o *assignOp, v *view, nc *nodeCache, args *AutoAssignArgs, attrs map[string]string) {
	o.v, o.node, o.aff, o.nc = v, args.Node, ownerOf(args.Use, args.Node), nc
	o.owner = block.Owner{Handle: args.Handle, Attrs: attrs}
	o.labels = args.NodeLabels
	o.rsv = hostReserved{args.ReserveFirst, args.ReserveLast}
	// As h.init(a, args.Handle, true) would, without zeroing h again.
	o.h.a, o.h.id, o.h.known = a, args.Handle, true
	o.h.exclusive = args.NewHandle
	o.h.last = &nc.lastHandleVal
}

// autoAssign is AutoAssign once the request is checked and its pools are
// chosen: it assigns each family, and settles what that leaves (a
// shortfall, a reservation made meanwhile, blocks no longer selected).
// first, when not nil, holds per family the attempt that the lane made on
// the node's first block (see autoAssignLane), if it made one, which the
// family takes as its own first attempt.
func (a *Allocator) autoAssign(ctx context.Context, args *AutoAssignArgs, o *assignOp, pools *[2][]*pool.Pool, selErr *[2]error, first *[2]*laneTry) (AutoAssignResult, error) {
	var res AutoAssignResult
	var short [2]int
	var reasons []string
	var cause error // the families' selection errors
	full := false   // a family's pools had too little room
	want := [2]int{args.Num4, args.Num6}
	for round := 0; ; round++ {
		for i, fam := range []pool.Family{pool.IPv4, pool.IPv6} {
			n := want[i]
			if n == 0 {
				continue
			}
			if selErr[i] != nil {
				short[i] = n
				reasons = append(reasons, selErr[i].Error())
				cause = errors.Join(cause, selErr[i])
				continue
			}
			var got []Assigned
			var why string
			var err error
			if first != nil && round == 0 && first[i] != nil {
				got, why, err = a.assignHeld(ctx, o, fam, n, pools[i], first[i].held, first[i].out, first[i])
			} else {
				got, why, err = a.assignFamily(ctx, o, fam, n, pools[i])
			}
			// A failure to lower unused counts does not fail a request that
			// got its addresses: it leaves counts too high, as a crash would.
			if serr := o.h.settle(ctx); serr != nil && err != nil {
				err = errors.Join(err, serr)
			}
			if fam == pool.IPv4 {
				res.IPv4 = appendAssigned(res.IPv4, got)
			} else {
				res.IPv6 = appendAssigned(res.IPv6, got)
			}
			if err != nil {
				_ = a.rollback(ctx, o, res) // best effort: the store is failing
				return AutoAssignResult{}, err
			}
			if len(got) < n {
				full = true
				short[i] += n - len(got)
				reasons = append(reasons, why)
				if !args.Partial {
					// All-or-nothing: give back what this request took.
					if err := a.rollback(ctx, o, res); err != nil {
						return AutoAssignResult{}, err
					}
					return AutoAssignResult{}, a.assignError(ctx, *args, o.h.created, AutoAssignResult{}, short, reasons, o.noSpace(), nil)
				}
			}
		}
		// A reservation made while this request was in flight may cover an
		// address it wrote after reading the reservations: give such
		// addresses back and assign others.
		if res.Len() == 0 || a.gens != nil && a.gens.Generation(KindReservation) == o.v.resvGen {
			break
		}
		again, err := a.unreserve(ctx, o, &res)
		if err == nil && again != [2]int{} && round+1 >= a.retries {
			err = fmt.Errorf("ipam: auto-assign for %s: %w: the reservations changed %d times during the request", o.aff, ErrTooManyConflicts, round+1)
		}
		if err != nil {
			_ = a.rollback(ctx, o, res) // best effort
			return AutoAssignResult{}, err
		}
		if again == [2]int{} {
			break
		}
		want = again
	}
	if err := a.stillCarved(ctx, o, res.IPv4, res.IPv6); err != nil {
		if rerr := a.rollback(ctx, o, res); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return AutoAssignResult{}, err
	}
	a.dropUnselected(ctx, o)
	if short[0]+short[1] > 0 {
		var space error
		if full {
			space = o.noSpace()
		}
		return res, a.assignError(ctx, *args, o.h.created, res, short, reasons, space, cause)
	}
	return res, nil
}

// appendAssigned appends got to to, without a copy when to is empty.
func appendAssigned(to, got []Assigned) []Assigned {
	if len(to) == 0 {
		return got
	}
	return append(to, got...)
}

// unreserve checks the addresses of res against the reservations as they
// are now, if they changed since o's view was read. It releases those that
// a reservation covers, takes them out of res, and returns how many it took
// out per family, for the request to assign again (with o's view now
// including the new reservations). The release checks each address's
// sequence number, so it frees only what this request assigned.
func (a *Allocator) unreserve(ctx context.Context, o *assignOp, res *AutoAssignResult) ([2]int, error) {
	v, err := a.reservationsSince(ctx, o.v)
	if err != nil || v == o.v {
		return [2]int{}, err
	}
	o.v = v
	var took [2]int
	if !v.hasReserved {
		return took, nil
	}
	var rels []Release
	for i, got := range [2][]Assigned{res.IPv4, res.IPv6} {
		for _, x := range got {
			if v.reserved.Contains(x.Addr) {
				rels = append(rels, Release{Addr: x.Addr, Handle: o.owner.Handle, Seq: x.Seq})
				took[i]++
			}
		}
	}
	if len(rels) == 0 {
		return took, nil
	}
	// Out of res only once released: a rollback after a failure covers
	// them. A refusal (the address is no longer this allocation: someone
	// released it meanwhile) leaves nothing to give back.
	_, err = a.releaseIPs(ctx, false, nil, rels, &o.h)
	if err != nil && !errors.Is(err, ErrHandleMismatch) && !errors.Is(err, ErrSeqMismatch) {
		return took, err
	}
	reserved := func(x Assigned) bool { return v.reserved.Contains(x.Addr) }
	res.IPv4 = slices.DeleteFunc(res.IPv4, reserved)
	res.IPv6 = slices.DeleteFunc(res.IPv6, reserved)
	// A block this request claimed that the new reservations cover whole
	// has nothing left to give: had they come first, the claim would have
	// passed it over. It goes, so that the request assigns again as one
	// made after them would (not stopped by MaxBlocksPerHost, say).
	kept := o.claimed[:0]
	for _, blk := range o.claimed {
		if v.reserved.ContainsPrefix(blk) {
			err := a.releaseAffinity(ctx, o.aff, blk, true)
			if err == nil || errors.Is(err, ErrAffinityConflict) {
				continue
			}
			if !errors.Is(err, ErrBlockNotEmpty) {
				return took, err
			}
		}
		kept = append(kept, blk)
	}
	o.claimed = kept
	return took, nil
}

// noSpace is the cause of a shortfall in pools that qualified: ErrNoSpace,
// with ErrBlockLimit and ErrStrictAffinity when those limits stood in the
// way.
func (o *assignOp) noSpace() error {
	switch {
	case o.capped && o.strict:
		return fmt.Errorf("%w: %w, %w", ErrNoSpace, ErrBlockLimit, ErrStrictAffinity)
	case o.capped:
		return fmt.Errorf("%w: %w", ErrNoSpace, ErrBlockLimit)
	case o.strict:
		return fmt.Errorf("%w: %w", ErrNoSpace, ErrStrictAffinity)
	}
	return ErrNoSpace
}

// assignError reports a shortfall: space is non-nil when a family's pools
// had too little room (see noSpace), cause holds the selection errors of
// families without a pool (pool.ErrNoPool).
//
// A request with NewHandle that kept nothing fails with ErrHandleExists
// instead when the handle holds addresses: that is the answer a repeated
// request needs, whatever else would have stopped it (a pool deleted or
// full since the first request). Not when the request created the
// handle's record itself (created): a record left then is its own, from a
// write that failed while it gave its addresses back.
func (a *Allocator) assignError(ctx context.Context, args AutoAssignArgs, created bool, kept AutoAssignResult, short [2]int, reasons []string, space, cause error) error {
	if args.NewHandle && !created && kept.Len() == 0 {
		if err := a.handleExists(ctx, args.Handle); err != nil {
			return err
		}
	}
	var err error
	switch {
	case space != nil && cause != nil:
		err = fmt.Errorf("%w: %w", space, cause)
	case cause != nil:
		err = cause // a configuration problem, not a full pool
	default:
		err = space
	}
	return &AssignError{
		Node: args.Node, Handle: args.Handle, Want4: args.Num4, Want6: args.Num6,
		Result: kept, Short4: short[0], Short6: short[1], Reasons: reasons, Err: err,
	}
}

// checkAutoAssign checks args; a known node's name was checked before.
func checkAutoAssign(args AutoAssignArgs, knownNode bool) error {
	const op = "auto-assign"
	switch {
	case args.Num4 < 0 || args.Num6 < 0:
		return invalid(op, "negative count (%d IPv4, %d IPv6)", args.Num4, args.Num6)
	case args.Num4 > MaxAssign || args.Num6 > MaxAssign:
		return invalid(op, "count (%d IPv4, %d IPv6) above the limit of %d per family", args.Num4, args.Num6, MaxAssign)
	case args.Num4 == 0 && args.Num6 == 0:
		return invalid(op, "no addresses asked for")
	}
	if err := checkClaimArgs(op, args.ReserveFirst, args.ReserveLast, args.IPv4Pools, args.IPv6Pools); err != nil {
		return err
	}
	if err := checkHandle(op, args.Handle); err != nil {
		return err
	}
	if !knownNode {
		if err := checkRequestNode(op, args.Node); err != nil {
			return err
		}
	}
	if err := checkUse(op, args.Use); err != nil {
		return err
	}
	return checkNodeForUse(op, args.Use, args.Node) // the attributes are checked as they are copied: ownerAttrs
}

// checkClaimArgs checks what AutoAssign and EnsureBlock requests share:
// the addresses to reserve in each block claimed, and the pools named.
func checkClaimArgs(op string, reserveFirst, reserveLast int, pools4, pools6 []string) error {
	if reserveFirst < 0 || reserveLast < 0 || reserveFirst > MaxHostReserved || reserveLast > MaxHostReserved {
		return invalid(op, "reserved addresses per block (first %d, last %d) outside 0..%d", reserveFirst, reserveLast, MaxHostReserved)
	}
	for _, names := range [2][]string{pools4, pools6} {
		if slices.Contains(names, "") {
			return invalid(op, "an empty pool name in %q", names)
		}
	}
	return nil
}

// checkRequestNode checks the node of a request for a node's addresses,
// pointing a request without one at use LoadBalancer.
func checkRequestNode(op, node string) error {
	if node == "" {
		return invalid(op, "empty node name (LoadBalancer addresses, which belong to no node, are asked for with Use %s)", pool.UseLoadBalancer)
	}
	return checkNode(op, node)
}

// checkNodeForUse checks that a LoadBalancer request names no node: its
// addresses belong to VirtualLoadBalancer.
func checkNodeForUse(op string, u pool.Use, node string) error {
	if u == pool.UseLoadBalancer && node != "" {
		return lbNodeError(op, node) // out of line, so that this inlines
	}
	return nil
}

//go:noinline
func lbNodeError(op, node string) error {
	return invalid(op, "node %q given for use LoadBalancer: LoadBalancer addresses belong to no node (their blocks are affine to %s); leave Node empty",
		node, loadBalancerOwner)
}

// ownerOf returns the affinity of the blocks a request for use u on node
// takes addresses from: VirtualLoadBalancer's for LoadBalancer addresses,
// the node's for any other.
func ownerOf(u pool.Use, node string) block.Affinity {
	if u == pool.UseLoadBalancer {
		return loadBalancerOwner
	}
	return block.Host(node)
}

func checkUse(op string, u pool.Use) error {
	switch u {
	case "", pool.UseWorkload, pool.UseTunnel, pool.UseLoadBalancer:
		return nil
	}
	return invalid(op, "unknown use %q (want %s, %s or %s)", u, pool.UseWorkload, pool.UseTunnel, pool.UseLoadBalancer)
}

// rollback undoes a failed AutoAssign or AssignIPs: it releases what the
// operation assigned, each address only if it is still the same
// allocation (and with the release time it had before, if it was
// cooling), and gives up the blocks it claimed if they are still empty, so
// that a failed request leaves the store as it found it (but for block
// counters).
func (a *Allocator) rollback(ctx context.Context, o *assignOp, res AutoAssignResult) error {
	ctx, cancel := detach(ctx) // the request may have failed because ctx ended
	defer cancel()
	// A request that fails assigns nothing more: lowering what it raised
	// needs no hold on the handle (see assignFixed). A record written by
	// someone else meanwhile (an assignment or release under the handle)
	// must not stop it, which would leave the counts too high.
	o.h.exclusive = false
	var errs []error
	if res.Len() > 0 {
		rels := make([]Release, 0, res.Len())
		for _, x := range slices.Concat(res.IPv4, res.IPv6) {
			rels = append(rels, Release{Addr: x.Addr, Seq: x.Seq})
		}
		if _, err := a.releaseIPs(ctx, false, o.cooled, rels, &o.h); err != nil {
			errs = append(errs, err)
		}
	}
	if len(o.h.unsettled) > 0 {
		if err := a.settleUnsettled(ctx, o); err != nil {
			errs = append(errs, err)
		}
	}
	// A block given up and claimed again within the request is listed
	// twice: searching the list at every claim would be quadratic in an
	// AssignIPs of /32 blocks.
	claimed := slices.Clone(o.claimed)
	slices.SortFunc(claimed, comparePrefix)
	for _, blk := range slices.Compact(claimed) {
		err := a.releaseAffinity(ctx, o.aff, blk, true)
		if err != nil && !errors.Is(err, ErrBlockNotEmpty) && !errors.Is(err, ErrAffinityConflict) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// settleUnsettled settles, for a rollback, o's block writes whose outcome
// stayed unknown: each is settled again as settleWrite settles a write (a
// fresh read, and a fence when the block is still at the revision the
// write expected, after which it can never land), and its address is
// released if it landed. It fails, naming the addresses, when some write
// stays unknown or a release fails: those addresses may stay assigned,
// counted under the handle.
func (a *Allocator) settleUnsettled(ctx context.Context, o *assignOp) error {
	var rels []Release
	var unknown []string
	var err error
	for _, u := range o.h.unsettled {
		e := a.entry(u.blk)
		e.lock()
		landed, never := a.settleWrite(ctx, e, u.r0, errUnsettled, u.addr, o.h.id, u.seq)
		e.unlock()
		switch {
		case landed:
			rels = append(rels, Release{Addr: u.addr, Handle: o.h.id, Seq: u.seq})
		case never && u.raised:
			// The count raised for it goes back down; if that fails it
			// stays too high, as after a crash.
			_ = o.h.add(ctx, u.blk, -1)
		case !never:
			unknown = append(unknown, u.addr.String())
		}
	}
	o.h.unsettled = nil
	if len(rels) > 0 {
		// The counts go down through a transaction of their own, not o's:
		// a write that landed unseen may have created or changed the
		// handle's record in its commit, which o then does not know as its
		// own, and with NewHandle refuses to change. What the blocks
		// released is what the counts lose, whoever wrote the record.
		if _, rerr := a.releaseIPs(ctx, false, o.cooled, rels, nil); rerr != nil && !errors.Is(rerr, ErrSeqMismatch) && !errors.Is(rerr, ErrHandleMismatch) {
			for _, r := range rels {
				unknown = append(unknown, r.Addr.String())
			}
			err = rerr
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	return fmt.Errorf("ipam: the outcome of the write that assigned %s under %q could not be settled: it may stay assigned, counted under the handle, where ReleaseByHandle finds it: %w",
		strings.Join(unknown, ", "), o.h.id, cmp.Or(err, errUnsettled))
}

// errUnsettled stands for the unknown outcome of a write that settleWrite
// is asked to settle again.
var errUnsettled = errors.New("outcome of a write not known")

// assignFamily assigns up to n addresses of one family from pools, in
// Calico's order. It returns what it got and, when that is less than n, why.
func (a *Allocator) assignFamily(ctx context.Context, o *assignOp, fam pool.Family, n int, pools []*pool.Pool) ([]Assigned, string, error) {
	out := make([]Assigned, 0, n)

	// 1. Blocks affine to the node, in pool order.
	affine, err := a.affineBlocks(ctx, o.aff, o.nc)
	if err != nil {
		return out, "", err
	}
	var heldBuf [4]heldBlock
	held, unselected := heldIn(heldBuf[:0], affine, fam, pools)
	if o.unselected == nil {
		o.unselected = unselected // no copy: heldIn made it
	} else {
		o.unselected = append(o.unselected, unselected...)
	}
	return a.assignHeld(ctx, o, fam, n, pools, held, out, nil)
}

// heldIn appends to held the blocks of affine (the node's, per the index)
// of family fam that pools hold, each with the index of its pool, in pool
// order; it returns them, and the blocks of the family that no pool of
// pools holds. The second slice is nil when there are none.
func heldIn(held []heldBlock, affine []netip.Prefix, fam pool.Family, pools []*pool.Pool) ([]heldBlock, []netip.Prefix) {
	var unselected []netip.Prefix
	for _, blk := range affine {
		if !sameAddrFamily(blk, fam) {
			continue
		}
		if i := poolOf(pools, blk); i >= 0 {
			held = append(held, heldBlock{blk, i})
			continue
		}
		unselected = append(unselected, blk)
	}
	if len(held) > 1 { // usually one: no call
		slices.SortStableFunc(held, func(x, y heldBlock) int { return x.pool - y.pool })
	}
	return held, unselected
}

// assignHeld is assignFamily once it knows held, the node's blocks of the
// eligible pools with each one's pool, in pool order: it assigns up to n
// addresses, appending them to out, from those blocks, then new blocks,
// then borrowed ones. first, when not nil, is the lane's attempt on
// held[0] (see autoAssignLane), which out holds the result of already: it
// stands for the attempt the loop would make there.
func (a *Allocator) assignHeld(ctx context.Context, o *assignOp, fam pool.Family, n int, pools []*pool.Pool, held []heldBlock, out []Assigned, first *laneTry) ([]Assigned, string, error) {
	cfg := o.v.config
	if n > 1 && len(held) > 1 {
		if err := a.reserveHeld(ctx, o, held, n); err != nil {
			return out, "", err
		}
	}
	// The cached copy of a block may call it full when another allocator has
	// since freed addresses; such blocks get a fresh read before the node
	// claims a new block.
	var stale []heldBlock
	var gone []netip.Prefix
	for j, h := range held {
		var r fromResult
		var err error
		if j == 0 && first != nil {
			// The lane made this attempt, with out empty before it.
			r, err = first.r, first.err
		} else {
			if len(out) == n {
				return out, "", nil
			}
			r, err = a.assignFrom(ctx, o, &out, pools[h.pool].Name, h.blk, n-len(out), true, false)
		}
		if err != nil {
			return out, "", err
		}
		switch r {
		case fromFull:
			stale = append(stale, h)
		case fromNotMine:
			gone = append(gone, h.blk)
		}
	}
	for _, h := range stale {
		if len(out) == n {
			return out, "", nil
		}
		r, err := a.assignFrom(ctx, o, &out, pools[h.pool].Name, h.blk, n-len(out), true, true)
		if err != nil {
			return out, "", err
		}
		if r == fromNotMine {
			gone = append(gone, h.blk)
		}
	}
	mine := make([]netip.Prefix, 0, len(held))
	for _, h := range held {
		mine = append(mine, h.blk)
	}
	// Index entries whose block is gone or not the node's (a crash in the
	// middle of a claim or a release leaves them) do not count as held
	// blocks, and are removed.
	for _, blk := range gone {
		mine = slices.DeleteFunc(mine, func(p netip.Prefix) bool { return p == blk })
		_ = a.dropIndex(ctx, o.aff, blk, 0) // best effort: Repair finds what is left
	}

	// 2. New blocks claimed for the node.
	var why []string
	var capped bool
	var gonePools []*pool.Pool
	var full []*pool.Pool // pools whose walk found no block to claim
	switch {
	case len(out) == n:
		return out, "", nil
	case !cfg.AutoAllocateBlocks && len(mine) == 0:
		why = append(why, fmt.Sprintf("autoAllocateBlocks is off and %s holds no block of %s", o.holder(), poolNames(pools)))
	case !cfg.AutoAllocateBlocks:
		why = append(why, fmt.Sprintf("autoAllocateBlocks is off and the blocks of %s are full", o.holder()))
	default:
	claims:
		for _, p := range pools {
			var w *pool.Walker // made at the pool's first claim
			size := 1 << (p.CIDR.Addr().BitLen() - p.BlockSize)
			per := size - o.rsv.first - o.rsv.last // the most a new block gives
			for len(out) < n {
				// Claim the blocks the rest needs at the least, then raise
				// the handle's counts for all of them in one write: a
				// write per block would encode every entry the record has
				// by then, quadratic in a node's first large batch.
				var run []netip.Prefix
				var stop int // after the run: 1 the next pool, 2 no more claims
				for len(run)*per < n-len(out) {
					// The cap is per node: the virtual owner has none.
					if cfg.MaxBlocksPerHost > 0 && len(mine) >= cfg.MaxBlocksPerHost && o.aff.Kind == block.HostAffinity {
						why = append(why, fmt.Sprintf("node holds %d of maxBlocksPerHost %d blocks", len(mine), cfg.MaxBlocksPerHost))
						capped, stop = true, 2
						break
					}
					if !o.rsv.fits(size) {
						why = append(why, o.rsv.tooSmall(p))
						stop = 1
						break
					}
					if w == nil {
						w = newWalker(o.v, p, mine)
					}
					blk, made, got, err := a.claimFor(ctx, o, p, w, mine)
					if err != nil {
						return out, "", err
					}
					switch got {
					case poolChanged:
						why = append(why, changedReason(p))
						gonePools = append(gonePools, p)
						stop = 1
					case poolFull:
						full = append(full, p)
						stop = 1
					}
					if stop != 0 {
						break
					}
					mine = append(mine, blk)
					w.Skip(blk)
					run = append(run, blk)
					if !made {
						// Found the node's already, perhaps with more room
						// than per (claimed with other reservations) or
						// less: the run ends here, and what the block
						// gives decides what more to claim.
						break
					}
				}
				if len(run) > 1 {
					plan := make([]handleCount, 0, len(run))
					left := n - len(out)
					for _, blk := range run {
						k := min(per, left)
						plan = append(plan, handleCount{blk, k})
						left -= k
					}
					if err := o.h.reserve(ctx, plan); err != nil {
						return out, "", err
					}
				}
				for _, blk := range run {
					if len(out) == n {
						break
					}
					if _, err := a.assignFrom(ctx, o, &out, p.Name, blk, n-len(out), true, false); err != nil {
						return out, "", err
					}
				}
				if stop == 2 {
					break claims
				}
				if stop == 1 {
					break
				}
			}
		}
		if len(out) < n && len(full) > 0 {
			why = append(why, "no unclaimed block left in "+poolNames(full))
		}
	}

	// 3. Borrowing from other nodes' blocks.
	if len(out) < n {
		if cfg.StrictAffinity {
			why = append(why, "strictAffinity forbids borrowing")
		} else {
			for _, p := range pools {
				if slices.Contains(gonePools, p) {
					continue
				}
				if err := a.borrow(ctx, o, &out, p, n-len(out)); err != nil {
					return out, "", err
				}
				if len(out) == n {
					return out, "", nil
				}
			}
			why = append(why, "no free address to borrow in "+poolNames(pools))
		}
	}
	if len(out) == n {
		return out, "", nil
	}
	if capped || cfg.StrictAffinity {
		room, unclaimed := a.roomOutOfReach(ctx, o, pools, gonePools)
		o.capped = o.capped || capped && unclaimed
		o.strict = o.strict || cfg.StrictAffinity && room
	}
	// What else holds addresses back, so that a pool that looks half empty
	// is not taken for a fault.
	if o.cooling {
		why = append(why, fmt.Sprintf("addresses released in the last %v are held back by releaseCooldown", cfg.ReleaseCooldown))
	}
	if o.reserved || o.v.reservesIn(full) {
		why = append(why, "addresses in reservations are never assigned automatically")
	}
	if r := o.corruptReason(fam); r != "" {
		why = append(why, r)
	}
	return out, fmt.Sprintf("%s: %s", fam, joinReasons(why)), nil
}

// corruptReason says, for the reasons of a request that falls short in
// family fam, which blocks of that family its claims passed over because
// their records are corrupt (see passOver); "" when none.
func (o *assignOp) corruptReason(fam pool.Family) string {
	var blks []netip.Prefix
	for _, blk := range o.corrupt {
		if sameAddrFamily(blk, fam) {
			blks = append(blks, blk)
		}
	}
	if len(blks) == 0 {
		return ""
	}
	// A request that walks a pool again (after a reservation made meanwhile
	// took back what it had assigned) meets them again.
	slices.SortFunc(blks, comparePrefix)
	return fmt.Sprintf("blocks %v were passed over: their records are corrupt (Check reports them)", slices.Compact(blks))
}

// claimOutcome says what claimFor did.
type claimOutcome int

const (
	claimed     claimOutcome = iota // it claimed a block
	poolChanged                     // the pool was disabled, deleted or re-made since the request read it
	poolFull                        // the pool's walk found no block to claim
)

// claimFor claims the next block of p's walk w for o's owner (see claim).
// It records in o a block this claim made the owner's, for rollback, and
// the pool's blocks if the claim listed them, for borrowing.
func (a *Allocator) claimFor(ctx context.Context, o *assignOp, p *pool.Pool, w *pool.Walker, mine []netip.Prefix) (blk netip.Prefix, made bool, got claimOutcome, err error) {
	blk, ok, made, listed, corrupt, err := a.claim(ctx, o.v, p, w, o.aff, o.rsv, mine)
	if corrupt != nil {
		o.corrupt = append(o.corrupt, corrupt...)
	}
	switch {
	case errors.Is(err, ErrNotInPool):
		return blk, false, poolChanged, nil
	case err != nil:
		return blk, false, claimed, err
	}
	if listed != nil {
		if o.listed == nil {
			o.listed = map[string][]Record{}
		}
		o.listed[p.Name] = listed
	}
	if !ok {
		return blk, false, poolFull, nil
	}
	if made { // not one found the owner's already: see claim
		o.claimed = append(o.claimed, blk)
	}
	return blk, made, claimed, nil
}

// changedReason says, for a request's reasons, that p changed under it.
func changedReason(p *pool.Pool) string {
	return fmt.Sprintf("pool %q changed during the request", p.Name)
}

// roomOutOfReach tells, for a family that came out short, whether its
// pools had room that the limits kept from the request: free addresses in
// blocks of other owners (what StrictAffinity forbids borrowing), and a
// block nobody has claimed (what MaxBlocksPerHost forbids claiming). It
// lists each pool's blocks, as borrowing does (reusing a claim's listing),
// and reads their headers; it runs only on this failure path. A listing
// that fails counts as no room: the answer only adds to the error.
func (a *Allocator) roomOutOfReach(ctx context.Context, o *assignOp, pools, gone []*pool.Pool) (room, unclaimed bool) {
	for _, p := range pools {
		if slices.Contains(gone, p) {
			continue
		}
		recs, ok := o.listed[p.Name]
		if !ok {
			var err error
			if recs, err = a.store.List(ctx, KindBlock, blockRange(p.CIDR)); err != nil {
				continue
			}
		}
		existing := make([]netip.Prefix, 0, len(recs))
		for _, r := range recs {
			sum, err := a.peek(r)
			if err != nil {
				continue
			}
			existing = append(existing, sum.Prefix)
			if sum.Prefix.Bits() == p.BlockSize && sum.Free() > 0 && sum.Affinity != o.aff {
				room = true
			}
		}
		unclaimed = unclaimed || hasUnclaimed(o.v, p, existing, o.aff.Name)
	}
	return room, unclaimed
}

// hasUnclaimed reports whether p has a block outside existing that no
// reservation covers whole. (Apart from roomOutOfReach, so that the walk's
// closure does not take the request's assignOp to the heap.)
func hasUnclaimed(v *view, p *pool.Pool, existing []netip.Prefix, owner string) bool {
	for blk := range newWalker(v, p, existing).Walk(owner) {
		if !v.hasReserved || !v.reserved.ContainsPrefix(blk) {
			return true
		}
	}
	return false
}

// holder names who the request's blocks belong to, for messages.
func (o *assignOp) holder() string {
	if o.aff.Kind == block.HostAffinity {
		return "the node"
	}
	return o.aff.String()
}

// heldBlock is one of the node's blocks, with the index of its pool.
type heldBlock struct {
	blk  netip.Prefix
	pool int
}

// reserveHeld raises the handle's counts, in one write, for the node's
// blocks that a request for n addresses will take them from, going by the
// blocks as cached or read (see handleTx.reserve). A request that one
// block can serve raises its count as it writes that block instead.
func (a *Allocator) reserveHeld(ctx context.Context, o *assignOp, held []heldBlock, n int) error {
	var buf [8]handleCount
	plan := buf[:0]
	for _, h := range held {
		if n == 0 {
			break
		}
		if free := a.freeIn(ctx, h.blk, o.aff); free > 0 {
			k := min(free, n)
			plan = append(plan, handleCount{h.blk, k})
			n -= k
		}
	}
	if len(plan) < 2 {
		return nil
	}
	return o.h.reserve(ctx, plan)
}

func joinReasons(why []string) string {
	s := ""
	for i, w := range why {
		if i > 0 {
			s += ", "
		}
		s += w
	}
	return s
}

func poolNames(pools []*pool.Pool) string {
	names := make([]string, len(pools))
	for i, p := range pools {
		names[i] = p.Name
	}
	return fmt.Sprintf("pools %q", names)
}

// poolOf returns the index of the pool that carves blk (holds it, with
// blk's size as its block size), or -1. A block of another size inside a
// pool is one that a claim which read the pools before the pool was
// replaced (DeletePool, then CreatePool with another block size) made,
// and is about to give up: no request may use it, or the new pool's own
// block over the same addresses could assign them again.
func poolOf(pools []*pool.Pool, blk netip.Prefix) int {
	for i, p := range pools {
		if p.BlockSize == blk.Bits() && p.CIDR.Contains(blk.Addr()) && p.CIDR.Bits() <= blk.Bits() {
			return i
		}
	}
	return -1
}

// fromResult says what assignFrom found.
type fromResult int

const (
	fromTook    fromResult = iota // took what it could (perhaps fewer than asked, perhaps none)
	fromFull                      // the cached copy has no free address: confirm with fresh set
	fromNotMine                   // mine was set and the block, read fresh, is gone or not the node's
)

// assignFrom assigns up to want addresses from one block, appending them
// to out. With mine set the block must be affine to the node (else nothing
// is taken); fresh forces a read of the block first.
func (a *Allocator) assignFrom(ctx context.Context, o *assignOp, out *[]Assigned, poolName string, blk netip.Prefix, want int, mine, fresh bool) (fromResult, error) {
	e := a.entry(blk)
	e.lock()
	defer e.unlock()
	if fresh {
		e.loaded = false
	}
	// The first attempt is made here, as retry would make it, and the
	// closure for the others only when it fails: the closure captures
	// the whole request, which costs as much to build as to run.
	res, err := a.assignOnce(ctx, o, e, out, poolName, want, mine)
	if err != nil {
		err = a.retryAgain(ctx, "assign from block", e.name, func() error {
			var err error
			res, err = a.assignOnce(ctx, o, e, out, poolName, want, mine)
			return err
		}, err)
	}
	return res, err
}

// assignOnce is one attempt of assignFrom on e, whose lock the caller
// holds.
func (a *Allocator) assignOnce(ctx context.Context, o *assignOp, e *blockEntry, out *[]Assigned, poolName string, want int, mine bool) (fromResult, error) {
	if err := a.ensure(ctx, e); err != nil {
		return fromTook, err
	}
	if e.blk == nil || (mine && e.blk.Affinity() != o.aff) {
		if err := e.confirm(); err != nil {
			return fromTook, err // a cached copy: read it and look again
		}
		if mine {
			return fromNotMine, nil
		}
		return fromTook, nil
	}
	if e.blk.Free() == 0 {
		return fromFull, nil
	}
	blk := e.prefix
	next := e.stage()
	// Up to 8 addresses on the stack; a batch reuses one buffer for all
	// its blocks. The two are kept apart, so that buf never flows into o
	// and stays on the stack.
	var buf [8]netip.Addr
	var addrs []netip.Addr
	var seq uint64
	opts := o.v.allocOptions(blk, a.now)
	if want <= len(buf) {
		addrs, seq = next.AllocateWith(buf[:0], want, o.owner, opts)
	} else {
		o.addrs, seq = next.AllocateWith(o.addrs[:0], want, o.owner, opts)
		addrs = o.addrs
	}
	k := len(addrs)
	if k < want && next.Free() > 0 {
		o.heldBack(next, opts)
	}
	if k == 0 {
		return fromFull, nil
	}
	if err := a.writeAssign(ctx, &o.h, e, addrs[0], seq, k); err != nil {
		return fromTook, err
	}
	if !e.carved.Load() {
		o.uncarved = true // stillCarved reads the pools
	}
	for _, addr := range addrs {
		*out = append(*out, Assigned{Addr: addr, Block: blk, Pool: poolName, Seq: seq})
	}
	return fromTook, nil
}

// commitAssign writes e's staged block, which assigns k addresses, the
// first addr at seq, to h's handle, whose count for the block is raised
// already: the second write of the pair, made even if ctx ends before it
// (see carryOn). A failed write is settled by failedAssign.
func (a *Allocator) commitAssign(ctx context.Context, h *handleTx, e *blockEntry, addr netip.Addr, seq uint64, k int) error {
	r0 := e.rev
	wctx, stop := carryOn(ctx)
	err := a.commit(wctx, e)
	stop()
	if err == nil {
		return nil
	}
	return a.failedAssign(ctx, h, e, r0, err, addr, seq, k)
}

// failedAssign handles the failure (err) of a block write at revision r0
// that assigned k addresses, the first addr at seq, to h's handle, whose
// count for the block was raised before: it returns nil if the write
// happened after all, and otherwise err, with the count lowered again when
// the write certainly never happens. It works on a detached context if
// ctx has ended, since the caller may have given up during the write.
func (a *Allocator) failedAssign(ctx context.Context, h *handleTx, e *blockEntry, r0 Revision, err error, addr netip.Addr, seq uint64, k int) error {
	ctx, stop := carryOn(ctx)
	defer stop()
	landed, never := a.settleWrite(ctx, e, r0, err, addr, h.id, seq)
	if landed {
		return nil
	}
	if !never {
		h.unknownWrite(e.prefix, r0, addr, seq, k, true)
	}
	return h.undo(ctx, e.prefix, k, err, never)
}

// settleWrite finds out what became of a block write, a compare-and-swap
// at revision r0 that should have allocated addr to handle at seq and
// failed with err. A refusal changed nothing (never). After any other
// failure (a reply lost to a timeout, a context that ended) the write may
// have happened or may still happen, so a fresh read looks: landed when
// it shows addr allocated to handle at seq, the sequence number that
// write gave it, which the block never gives twice (the assignment then
// stands); never when it does not and the write cannot land any more,
// because the block has been written since r0 (revisions never repeat) or
// a write of it unchanged at r0 now succeeds, fencing the lost one off.
// When the read or the fence fails, the outcome stays unknown (neither).
func (a *Allocator) settleWrite(ctx context.Context, e *blockEntry, r0 Revision, err error, addr netip.Addr, handle string, seq uint64) (landed, never bool) {
	if refused(err) {
		return false, true
	}
	if err := a.load(ctx, e); err != nil {
		return false, false
	}
	if e.blk != nil {
		if al, ok := e.blk.Owner(addr); ok && al.Seq == seq && al.Owner.Handle == handle {
			return true, false
		}
	}
	if e.rev != r0 || e.blk == nil {
		return false, true
	}
	e.stage()
	return false, a.commit(ctx, e) == nil
}

// heldBack notes why b, which gave fewer addresses than wanted, kept the
// free ones it has: released too recently, or in a reservation.
func (o *assignOp) heldBack(b *block.Block, opts block.AllocOptions) {
	if !opts.ReleasedBefore.IsZero() && b.CoolingSince(opts.ReleasedBefore) > 0 {
		o.cooling = true
	}
	if opts.Skip != nil {
		o.reserved = true
	}
}

// dropUnselected gives up the node's affinity to the blocks o found whose
// pool, still enabled, no longer selects the node, when they are empty
// (Calico does this as it assigns). A LoadBalancer pool selects no node
// here, though its nodeSelector is all(): a node's blocks in it are left
// from before UpdatePool made it one, and no node assigns from it again.
// A non-empty block keeps its affinity.
// It runs only after a successful assignment, so that a failed one changes
// nothing, and is best effort: a block it cannot release now is tried again
// next time.
func (a *Allocator) dropUnselected(ctx context.Context, o *assignOp) {
	for _, blk := range o.unselected {
		p, ok := o.v.pools.ByAddr(blk.Addr())
		if !ok || p.Disabled {
			continue
		}
		if p.SelectsNode(o.node, o.labels) && p.Allows(pool.UseLoadBalancer) == (o.aff == loadBalancerOwner) {
			continue // it still serves the owner
		}
		_ = a.releaseAffinity(ctx, o.aff, blk, true)
	}
}
