package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/pool"
)

// Errors of the allocator, matched with errors.Is. Errors also wrap the
// pool and block packages' sentinels where those say more (for example
// pool.ErrNoPool when no pool qualifies for a request).
var (
	// ErrInvalid: an argument is malformed (empty handle, negative count,
	// bad node name, invalid address...). Nothing was changed.
	ErrInvalid = errors.New("invalid argument")

	// ErrNoSpace: the eligible pools cannot supply the addresses asked for
	// (for EnsureBlock: the block; its message still says addresses).
	ErrNoSpace = errors.New("not enough free addresses")

	// ErrPoolNotFound: no pool has the given name. It is pool.ErrNotFound,
	// so either matches.
	ErrPoolNotFound = pool.ErrNotFound

	// ErrPoolExists: a pool with the given name exists already. It is
	// pool.ErrExists, so either matches.
	ErrPoolExists = pool.ErrExists

	// ErrLeftoverBlocks: a new pool's range holds blocks, left by a deleted
	// pool, of another block size.
	ErrLeftoverBlocks = errors.New("pool range holds blocks of another size")

	// ErrPoolEnabled: DeletePool found the pool enabled again by someone
	// else while it ran, and kept it. Calling DeletePool again finishes the
	// deletion.
	ErrPoolEnabled = errors.New("pool was enabled again during its deletion")

	// ErrPoolChanged: UpdatePool was given a pool whose Version is no
	// longer the stored pool's: it was changed since it was read. Nothing
	// was changed.
	ErrPoolChanged = errors.New("pool changed since it was read")

	// ErrReservationExists: a reservation with the given name exists.
	ErrReservationExists = errors.New("reservation already exists")

	// ErrReservationNotFound: no reservation has the given name.
	ErrReservationNotFound = errors.New("reservation not found")

	// ErrCoolingDown: AssignIP or AssignIPs asked for an address released
	// Config.ReleaseCooldown ago or less (see AssignIPArgs.IgnoreCooldown).
	ErrCoolingDown = errors.New("address released too recently")

	// ErrNotInPool: an address lies in no pool, or in a pool that cannot be
	// used for the request (disabled, or not allowing the use).
	ErrNotInPool = errors.New("address is not in a usable pool")

	// ErrNotAllocated: the address is not assigned.
	ErrNotAllocated = block.ErrNotAllocated

	// ErrInUse: AssignIP or AssignIPs found the address taken.
	ErrInUse = block.ErrInUse

	// ErrReserved: the address is reserved and cannot be assigned.
	ErrReserved = block.ErrReserved

	// ErrHandleMismatch: a release named a handle that does not hold the
	// address. Nothing was released.
	ErrHandleMismatch = block.ErrHandleMismatch

	// ErrSeqMismatch: a release carried a sequence number other than the
	// one recorded when the address was assigned, so the address has been
	// released and assigned again since. Nothing was released.
	ErrSeqMismatch = block.ErrSeqMismatch

	// ErrStrictAffinity: StrictAffinity forbids the operation (borrowing,
	// or assigning into a block of another owner). An *AssignError matches
	// it along with ErrNoSpace when StrictAffinity kept a short request
	// from free addresses in other owners' blocks.
	ErrStrictAffinity = errors.New("strict affinity forbids it")

	// ErrBlockLimit: Config.MaxBlocksPerHost kept the node from claiming a
	// block it needed, while its pools had one unclaimed (Calico's
	// ErrBlockLimit). An *AssignError matches it along with ErrNoSpace, and
	// so does EnsureBlock's error for a node whose blocks are all reserved
	// whole (checked before looking for one unclaimed).
	ErrBlockLimit = errors.New("the node holds maxBlocksPerHost blocks")

	// ErrAffinityConflict: the block is not the caller's: it is another
	// owner's (another node's, or VirtualLoadBalancer's), or no one's and
	// holds addresses. Messages say which.
	ErrAffinityConflict = errors.New("affinity conflict")

	// ErrBlockNotEmpty: an affinity release that required an empty block
	// found addresses in use.
	ErrBlockNotEmpty = errors.New("block is not empty")

	// ErrHandleNotFound: no address is recorded under the handle.
	ErrHandleNotFound = errors.New("handle not found")

	// ErrHandleExists: a request with NewHandle (AutoAssignArgs,
	// AssignIPArgs, AssignIPsArgs) found its handle holding addresses
	// already, being assigned to by another request, or counting addresses
	// that a failed write left (see AutoAssignArgs.NewHandle). Nothing was
	// assigned; AssignedByHandle returns what the handle's blocks hold.
	ErrHandleExists = errors.New("handle holds addresses already")

	// ErrTooManyConflicts: concurrent writers kept winning the
	// compare-and-swap race until the retry budget ran out. The write that
	// gave up had no effect, and the operation may be tried again. An
	// operation of several writes may have made those before it:
	// ReleaseIPs lists the addresses it released, and DeletePool called
	// again finishes.
	ErrTooManyConflicts = errors.New("too many concurrent updates")

	// ErrCorrupt: a stored record could not be decoded, or holds what
	// carve never writes (see ProblemCorrupt). The error names the record.
	ErrCorrupt = errors.New("corrupt record")
)

// AssignError reports an AutoAssign that could not assign everything it was
// asked for. It matches ErrNoSpace with errors.Is when the pools that
// qualify had too little room, and pool.ErrNoPool when a family had no pool
// that qualifies (a misspelt pool name, a nodeSelector that matches no
// label of the node: a configuration problem, not a full pool); a request
// short for both reasons, one per family, matches both.
//
// Unless the request set Partial, nothing was kept: the addresses assigned
// along the way were released again and Result is empty. With Partial,
// Result holds what was assigned and stays assigned.
type AssignError struct {
	// Node is the request's node: "" for LoadBalancer addresses, which
	// belong to VirtualLoadBalancer.
	Node   string
	Handle string
	// Want4 and Want6 are the counts asked for.
	Want4, Want6 int
	// Result is what stays assigned: empty unless the request set Partial.
	Result AutoAssignResult
	// Short4 and Short6 are how many addresses of each family were missing.
	Short4, Short6 int
	// Reasons says, per family, why the rest could not be assigned.
	Reasons []string
	// Err is the underlying cause: ErrNoSpace, an error wrapping
	// pool.ErrNoPool, or an error wrapping both. With ErrNoSpace it also
	// wraps ErrBlockLimit when MaxBlocksPerHost stopped a claim of a block
	// that was there, and ErrStrictAffinity when StrictAffinity stopped
	// borrowing free addresses that were there, for a family that came
	// out short: the pools had room the request was not allowed to use.
	Err error
}

func (e *AssignError) Error() string {
	var b strings.Builder
	if e.Node == "" {
		fmt.Fprintf(&b, "ipam: assign for %s handle %q: short of ", loadBalancerOwner, e.Handle)
	} else {
		fmt.Fprintf(&b, "ipam: assign for node %q handle %q: short of ", e.Node, e.Handle)
	}
	var parts []string
	if e.Short4 > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d IPv4", e.Short4, e.Want4))
	}
	if e.Short6 > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d IPv6", e.Short6, e.Want6))
	}
	b.WriteString(strings.Join(parts, " and "))
	if n := e.Result.Len(); n > 0 {
		fmt.Fprintf(&b, ", %d kept", n)
	} else {
		b.WriteString(", nothing kept")
	}
	for _, r := range e.Reasons {
		b.WriteString("; ")
		b.WriteString(r)
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *AssignError) Unwrap() error { return e.Err }

// AddrError is an error about one address: a release refused
// (ReleaseIPs), an address that could not be assigned (AssignIP,
// AssignIPs), a block an affinity operation could not release.
type AddrError struct {
	// Addr is the address (for a block, its first address).
	Addr netip.Addr
	// Err is the cause, matched with errors.Is through Unwrap.
	Err error
}

// Error returns the cause's text, after the address unless the cause names
// it already.
func (e *AddrError) Error() string {
	msg := e.Err.Error()
	if addr := e.Addr.String(); !strings.Contains(msg, addr) {
		return addr + ": " + msg
	}
	return msg
}

// Unwrap returns the cause.
func (e *AddrError) Unwrap() error { return e.Err }

// invalid returns an ErrInvalid error for op.
func invalid(op, format string, args ...any) error {
	return fmt.Errorf("ipam: %s: %w: %s", op, ErrInvalid, fmt.Sprintf(format, args...))
}
