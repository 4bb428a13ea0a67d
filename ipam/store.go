package ipam

import (
	"context"
	"errors"
	"fmt"

	"github.com/carve-ipam/carve/block"
)

// Errors a Store returns. Backends may wrap them with context; callers match
// them with errors.Is.
var (
	// ErrNotFound: the record does not exist.
	ErrNotFound = errors.New("record not found")
	// ErrExists: Create found a record under the key already.
	ErrExists = errors.New("record already exists")
	// ErrConflict: Update or Delete named a revision that is no longer the
	// record's current one; someone else wrote it first.
	ErrConflict = errors.New("revision conflict")
)

// Kind names a family of records. Each kind is its own key space.
type Kind uint8

// The kinds of record carve keeps. The zero Kind is not a valid kind.
const (
	// KindPool holds the whole pool set in one record under the key
	// "default" (JSON, Calico's IPPool fields), so that every pool change
	// is checked against every other pool and written at once.
	KindPool Kind = iota + 1
	// KindBlock records hold one block each (allocations, owners, affinity,
	// binary, see block.Block.MarshalBinary), keyed by the block's first
	// address in fixed-width hex and its prefix length: "v4:0af40040/26"
	// for 10.244.0.64/26, "v6:" and 32 hex digits for IPv6. Key order is
	// address order, so the blocks of a pool are one key range.
	KindBlock
	// KindAffinity records index blocks by owner, keyed by the owner, "/"
	// and the block's key: "host:node-1/v4:0af40040/26". Their values are
	// empty; the block itself is the authority on its affinity.
	KindAffinity
	// KindHandle records count, per block, the addresses one owner handle
	// holds, keyed by handle ID.
	KindHandle
	// KindConfig holds the allocator configuration under the key "default".
	KindConfig
	// KindReservation records hold address ranges excluded from automatic
	// assignment, keyed by reservation name (JSON, Calico's IPReservation
	// spec).
	KindReservation
	// KindNode records hold one node's labels each, keyed by node name
	// (JSON: {"labels": {...}}), as SetNodeLabels writes them.
	KindNode
)

// numKinds is one more than the largest Kind.
const numKinds = KindNode + 1

// Kinds lists every valid Kind, in order.
var Kinds = []Kind{KindPool, KindBlock, KindAffinity, KindHandle, KindConfig, KindReservation, KindNode}

var kindNames = [...]string{"", "pool", "block", "affinity", "handle", "config", "reservation", "node"}

// String returns the kind's name, as used in store keys and error messages:
// "pool", "block", "affinity", "handle", "config", "reservation" or
// "node".
func (k Kind) String() string {
	if k.Valid() {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// MarshalText returns the kind's name, so kinds read well in JSON and logs.
func (k Kind) MarshalText() ([]byte, error) {
	if !k.Valid() {
		return nil, fmt.Errorf("ipam: invalid record kind %d", uint8(k))
	}
	return []byte(kindNames[k]), nil
}

// UnmarshalText reads a kind's name as String writes it.
func (k *Kind) UnmarshalText(text []byte) error {
	for _, c := range Kinds {
		if kindNames[c] == string(text) {
			*k = c
			return nil
		}
	}
	return fmt.Errorf("ipam: unknown record kind %q", text)
}

// Valid reports whether k is one of the kinds in [Kinds].
func (k Kind) Valid() bool { return k >= KindPool && k < numKinds }

// Revision identifies one version of a record. The store assigns it; carve
// only compares revisions for equality and never interprets them otherwise.
// Zero means "no record".
type Revision uint64

// Record is one stored record.
type Record struct {
	Key      string
	Value    []byte
	Revision Revision
}

// KeyRange selects keys k with Start <= k < End in byte order. An empty End
// means no upper bound, so the zero KeyRange selects every key.
type KeyRange struct {
	Start, End string
}

// Contains reports whether key lies in r.
func (r KeyRange) Contains(key string) bool {
	return key >= r.Start && (r.End == "" || key < r.End)
}

// PrefixRange returns the range of keys that begin with prefix.
func PrefixRange(prefix string) KeyRange {
	// The first string after every string with the prefix: increment the last
	// byte that is not 0xff and drop what follows it.
	for i := len(prefix) - 1; i >= 0; i-- {
		if c := prefix[i]; c != 0xff {
			return KeyRange{Start: prefix, End: prefix[:i] + string([]byte{c + 1})}
		}
	}
	return KeyRange{Start: prefix}
}

// Store is where carve keeps its state: a key-value store with
// compare-and-swap on a per-record revision. Implement it to run carve on
// your own datastore, and prove the implementation with
// storetest.RunConformanceTests.
//
// The contract, for every method:
//   - kind is always one of [Kinds] and key a non-empty string of at most
//     [MaxKeyLen] bytes of valid UTF-8 without control characters; carve
//     never passes anything else.
//   - Values are opaque bytes, possibly empty, that carve encodes and
//     decodes itself. The store may keep the slice it is given and may
//     return the same slice from later reads: carve never modifies a value
//     after passing it in, and never modifies a value it reads. Nor may the
//     store modify a value once it has been passed in or returned, and the
//     slice List returns is the caller's.
//   - Keys are compared byte for byte: keys that differ only in letter
//     case, in trailing spaces, or in how a path would be cleaned
//     ("p//q", "p/q") name different records.
//   - Every successful Create or Update gives the record a new non-zero
//     revision. A key's revisions never repeat, not even after the record is
//     deleted and created again, so a stale revision can never match a newer
//     record. (A store-wide counter, as etcd's, satisfies this.)
//   - Errors: ErrNotFound, ErrExists and ErrConflict as documented below,
//     possibly wrapped; a cancelled or expired ctx gives an error that
//     matches ctx.Err(); any other error is a failure of the backend, and
//     then the write may or may not have happened.
//   - A Store is safe for concurrent use, and operations on one record are
//     linearizable: of two writers holding the same revision, exactly one
//     succeeds, and a List that starts after a Get returned a record
//     includes that record or a later version of it (unless it was deleted
//     since).
//
// No operation spans several records; carve orders its writes so that the
// store stays consistent without transactions (see docs/ARCHITECTURE.md).
// A store that can write several records at once offers [Committer] too.
type Store interface {
	// Get returns the record of the given kind and key, or ErrNotFound.
	Get(ctx context.Context, kind Kind, key string) (Record, error)

	// List returns the records of the given kind whose keys lie in r,
	// ordered by key. No matching record gives an empty result and a nil
	// error.
	List(ctx context.Context, kind Kind, r KeyRange) ([]Record, error)

	// Create stores a new record and returns its revision. If a record
	// exists under the key it returns ErrExists and changes nothing.
	Create(ctx context.Context, kind Kind, key string, value []byte) (Revision, error)

	// Update replaces the value of the record whose current revision is rev
	// and returns the new revision. It returns ErrNotFound if there is no
	// record and ErrConflict if the record's revision is not rev; either way
	// it changes nothing.
	Update(ctx context.Context, kind Kind, key string, value []byte, rev Revision) (Revision, error)

	// Delete removes the record whose current revision is rev. It returns
	// ErrNotFound if there is no record and ErrConflict if the record's
	// revision is not rev; either way it changes nothing.
	Delete(ctx context.Context, kind Kind, key string, rev Revision) error
}

// MaxKeyLen is the longest key carve stores.
const MaxKeyLen = 1024

// Generations is an optional Store capability that lets an allocator cache
// pools, configuration, reservations, node affinities and node labels
// instead of reading them on every call: without it a steady-state
// AutoAssign costs eight round trips instead of two (it reads pools,
// configuration, reservations and the node's blocks, writes its handle and
// block, and reads the reservations and the pools again to see whether
// either changed meanwhile), and nine when a pool selects nodes by label
// and the request gives no NodeLabels (it reads the node's stored labels
// too); with [Committer], one fewer each.
//
// An allocator finds the capability by type assertion, so a wrapper around
// a store (for logging or metrics) must implement Generation itself,
// forwarding to the wrapped store, or the allocator stops caching. A
// wrapper type cannot both have the method and do without it, so offer two
// types and pick one when wrapping: storetest.NewCountingStore returns a
// Store with Generation when the store it wraps has it, and one without
// otherwise; storetest.FaultyStore leaves the choice to its caller
// (WithGenerations).
//
// Generation returns a number that changes whenever a record of the kind is
// created, updated or deleted, by anyone, without a round trip to the
// backend. It must change once the write is visible to readers, not
// before (memstore moves it under the lock that makes the write): an
// allocator that reads the number and then the records caches what it
// read under that number. It may also change when nothing did (that only costs a re-read).
// A backend whose view lags the datastore (for example one fed by a watch)
// must say so in its documentation: an allocator then sees other processes'
// pool and configuration changes after that lag, as Calico's own watch-based
// components do. A write made through the store itself, though, moves the
// generation by the time the write returns (etcdstore does), so that an
// allocator sees its own process's changes at once;
// storetest.RunConformanceTests checks this.
type Generations interface {
	Generation(kind Kind) uint64
}

// BlockKeeper is an optional Store capability for stores that live in the
// allocator's own process, such as memstore: the store keeps a written
// block as the [block.Block] itself and encodes it only when the record is
// read. Encoding a whole block is the largest cost of a write, and in the
// steady state nobody else reads the block before the next write replaces
// it, so most encodings never happen.
//
// CreateBlock and UpdateBlock are Create and Update of the KindBlock record
// key with b's encoding ([block.Block.AppendBinary]) as the value: the same
// checks, errors and revisions, and every later Get or List of the record
// returns that encoding, as if it had been written as bytes. The store must
// not modify b, nor Mirror from it (carve does: Mirror writes bookkeeping in
// its source that readers such as AppendBinary, Clone and CopyTo never
// touch). It may keep b until the record is next written or deleted,
// but must stop reading it by the time that write returns (memstore
// encodes under the lock that orders writes). carve, for its part, does not
// modify b after passing it in until a later write of the record by the
// same caller has succeeded. A write refused with ErrExists, ErrConflict or
// ErrNotFound has not kept b; after any other error carve assumes the store
// may have, and never modifies b again.
//
// An allocator finds the capability by type assertion, as it does
// [Generations]; a store without it gets bytes.
type BlockKeeper interface {
	CreateBlock(ctx context.Context, key string, b *block.Block) (Revision, error)
	UpdateBlock(ctx context.Context, key string, b *block.Block, rev Revision) (Revision, error)
}

// Committer is an optional Store capability: several writes, to different
// records, made at once, all or none, in one round trip. An allocator
// finds it by type assertion, as it does [Generations], and uses it where
// an operation writes two records that belong together: an assignment
// writes its handle record and its block in one Commit, and a release by
// handle its blocks (up to seven) and the handle record it lowers or
// deletes. That takes a steady-state AutoAssign from two round trips to
// one and the release after it from three to two (a dual-stack pod's from
// four to two), and no crash can come between the writes, so none leaves
// a handle count too high for Repair to remove.
// Without the capability carve writes the records one by one, in an order
// that keeps the store consistent.
//
// Commit makes the writes as Create (Rev zero), Update (Rev set) and
// Delete (Delete set, at Rev) would make them, with the same checks,
// revisions and BlockKeeper rules, but all or none, and no reader sees
// some of them without the others: once a read returns one of a commit's
// writes, every later read of another of its records returns that one's
// write too (or something written after it). On success revs[i] is the
// new revision of writes[i], 0 for a delete; writes of one commit may
// share a revision. If a check fails (a record exists for a create, is
// missing or at another revision for an update or a delete) Commit
// changes nothing and returns a [*CommitError] naming the write, whose
// error matches ErrExists, ErrNotFound or ErrConflict as the single
// operation's would. A cancelled or expired ctx gives an error that
// matches ctx.Err(); after any other error all of the writes, or none of
// them, may have happened.
//
// carve passes 1 to [MaxCommitWrites] writes, each to a different record,
// of any kinds, with a revs slice at least as long; a Write whose Block is
// set goes only to a store that is also a [BlockKeeper]. The store may
// keep the writes' values and blocks, as the single operations may, but
// not the writes and revs slices themselves: carve reuses them once
// Commit returns. Each written kind's [Generations] counter moves, as for
// single writes.
type Committer interface {
	Commit(ctx context.Context, writes []Write, revs []Revision) error
}

// MaxCommitWrites is the most writes carve passes to one Commit.
const MaxCommitWrites = 8

// Write is one write of a [Committer]'s Commit: a create when Rev is zero,
// otherwise an update, or with Delete set a delete, of the record whose
// current revision is Rev.
type Write struct {
	Kind Kind
	Key  string
	// Value is the record's new value; nil for a delete, and when Block
	// is set.
	Value []byte
	// Block, set only for a KindBlock create or update to a store that
	// is also a BlockKeeper, is the value as CreateBlock and UpdateBlock
	// take it: the store keeps it and encodes it when the record is read,
	// under the same rules.
	Block  *block.Block
	Rev    Revision
	Delete bool
}

// String describes the write, as "create handle \"h\"", "update block
// \"v4:0a000000/26\" at 7" or "delete handle \"h\" at 9", with " (block)"
// after a write that carries a block.
func (w Write) String() string {
	var s string
	switch {
	case w.Delete:
		s = fmt.Sprintf("delete %s %q at %d", w.Kind, w.Key, w.Rev)
	case w.Rev == 0:
		s = fmt.Sprintf("create %s %q", w.Kind, w.Key)
	default:
		s = fmt.Sprintf("update %s %q at %d", w.Kind, w.Key, w.Rev)
	}
	if w.Block != nil {
		s += " (block)"
	}
	return s
}

// CommitError is the error of a Commit that changed nothing because the
// check of writes[Index] failed (the first that did, if several failed).
// Err matches ErrExists, ErrNotFound or ErrConflict, and should name the
// record, as the single operation's error would.
type CommitError struct {
	Index int
	Err   error
}

func (e *CommitError) Error() string {
	return fmt.Sprintf("commit refused at write %d: %v", e.Index, e.Err)
}

// Unwrap returns Err, so that errors.Is matches the refusal.
func (e *CommitError) Unwrap() error { return e.Err }
