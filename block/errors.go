package block

import "errors"

// The sentinel errors. Every error the package returns wraps one of them (a
// refused release of a reserved address wraps two: ErrNotAllocated and
// ErrReserved) together with the block, the operation and the input, so
// callers match with errors.Is and print the error for people.
var (
	// ErrInvalidPrefix reports a prefix that cannot be a block: invalid, not
	// masked, or of a size outside /20../32 (IPv4) or /116../128 (IPv6). It
	// is also returned when encoding the zero Block.
	ErrInvalidPrefix = errors.New("invalid block prefix")

	// ErrOutOfBlock reports an address that the block does not contain.
	ErrOutOfBlock = errors.New("address not in block")

	// ErrInUse reports an address that is already allocated.
	ErrInUse = errors.New("address in use")

	// ErrReserved reports an address that is reserved and so cannot be
	// assigned or released.
	ErrReserved = errors.New("address reserved")

	// ErrNotAllocated reports a release of an address that is not allocated.
	ErrNotAllocated = errors.New("address not allocated")

	// ErrHandleMismatch reports a release whose handle differs from the
	// address's owner handle.
	ErrHandleMismatch = errors.New("handle mismatch")

	// ErrSeqMismatch reports a release whose sequence number differs from the
	// one recorded when the address was allocated: the caller's view is
	// stale, the address may have been released and handed out again.
	ErrSeqMismatch = errors.New("sequence number mismatch")

	// ErrInvalidAffinity reports an affinity that is not the zero Affinity,
	// host:<node> or virtual:<name>.
	ErrInvalidAffinity = errors.New("invalid affinity")

	// ErrCorrupt reports encoded data that is malformed or describes an
	// inconsistent block, and a block that cannot be encoded faithfully.
	ErrCorrupt = errors.New("corrupt block data")
)
