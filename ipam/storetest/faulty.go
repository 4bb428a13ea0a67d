package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
)

// ErrInjected is the error FaultyStore returns for an injected fault.
var ErrInjected = errors.New("injected store fault")

// FaultMode says what happens at the faulty operation.
type FaultMode int

const (
	// FailOnce makes the operation fail without effect; the store works
	// again afterwards.
	FailOnce FaultMode = iota
	// Crash makes the operation fail without effect, and every later one
	// too, as if the process died before sending it.
	Crash
	// CrashAfter applies the operation, then reports it failed, and fails
	// every later one: the process died after its write reached the store,
	// before it learned the outcome.
	CrashAfter
	// LostReply applies the operation, then reports it failed; the store
	// works again afterwards: the write reached the store, its reply was
	// lost (a timeout), and the process goes on.
	LostReply
)

func (m FaultMode) String() string {
	switch m {
	case FailOnce:
		return "fail-once"
	case Crash:
		return "crash"
	case CrashAfter:
		return "crash-after"
	case LostReply:
		return "lost-reply"
	}
	return fmt.Sprintf("fault-mode(%d)", int(m))
}

// Fault says where a FaultyStore fails: at operation At (counting every
// call from 1; 0 means never), in Mode.
type Fault struct {
	At   int64
	Mode FaultMode
}

// FaultyStore wraps a Store and fails one operation, or every operation
// from one on, to test what a failure or a crash at that point leaves
// behind. It is safe for concurrent use. Use WithGenerations to hand it to
// an allocator with the wrapped store's [ipam.Generations] passed through,
// and WithCommits for its [ipam.Committer] too.
// It always offers [ipam.BlockKeeper], writing encodings to a store
// without it, so faults strike the allocator's block writes the same way
// over either kind of store; pass any of its views through
// [WithoutBlockKeeper] to test an allocator that writes blocks as bytes,
// as over a store in another process.
type FaultyStore struct {
	ipam.Store
	fault   Fault
	n       atomic.Int64
	crashed atomic.Bool
}

// NewFaultyStore returns a FaultyStore around s that fails as f says.
func NewFaultyStore(s ipam.Store, f Fault) *FaultyStore {
	return &FaultyStore{Store: s, fault: f}
}

// WithGenerations returns the store as an ipam.Store that also offers the
// wrapped store's Generations, if it has them.
func (f *FaultyStore) WithGenerations() ipam.Store {
	if g, ok := f.Store.(ipam.Generations); ok {
		return &faultyGens{FaultyStore: f, gens: g}
	}
	return f
}

type faultyGens struct {
	*FaultyStore
	gens ipam.Generations
}

func (f *faultyGens) Generation(kind ipam.Kind) uint64 { return f.gens.Generation(kind) }

// WithCommits returns the store as an ipam.Store that also offers the
// wrapped store's Generations and [ipam.Committer], where it has them. A
// commit is one operation: a fault there strikes all of its writes, or
// (after the fact) none.
func (f *FaultyStore) WithCommits() ipam.Store {
	cm, ok := f.Store.(ipam.Committer)
	if !ok {
		return f.WithGenerations()
	}
	if g, ok := f.Store.(ipam.Generations); ok {
		return &faultyGensCommit{faultyGens{f, g}, cm}
	}
	return &faultyCommit{f, cm}
}

type faultyCommit struct {
	*FaultyStore
	cm ipam.Committer
}

// Commit implements [ipam.Committer] as one operation.
func (f *faultyCommit) Commit(ctx context.Context, writes []ipam.Write, revs []ipam.Revision) error {
	return f.commit(ctx, f.cm, writes, revs)
}

type faultyGensCommit struct {
	faultyGens
	cm ipam.Committer
}

// Commit implements [ipam.Committer] as one operation.
func (f *faultyGensCommit) Commit(ctx context.Context, writes []ipam.Write, revs []ipam.Revision) error {
	return f.commit(ctx, f.cm, writes, revs)
}

func (f *FaultyStore) commit(ctx context.Context, cm ipam.Committer, writes []ipam.Write, revs []ipam.Revision) error {
	var kind ipam.Kind
	var key string
	if len(writes) > 0 {
		kind, key = writes[0].Kind, writes[0].Key
	}
	op := fmt.Sprintf("commit of %d writes from", len(writes))
	after, err := f.before(op, kind, key)
	if err != nil {
		return err
	}
	err = commitTo(ctx, f.Store, cm, writes, revs)
	if after {
		return f.afterErr(op, kind, key)
	}
	return err
}

// Ops returns how many operations the store has been asked to perform.
func (f *FaultyStore) Ops() int64 { return f.n.Load() }

// Crashed reports whether a Crash or CrashAfter fault has struck.
func (f *FaultyStore) Crashed() bool { return f.crashed.Load() }

// before decides the fate of the next operation: fail it now (err), or run
// it and then fail (after).
func (f *FaultyStore) before(op string, kind ipam.Kind, key string) (after bool, err error) {
	n := f.n.Add(1)
	if f.crashed.Load() {
		return false, fmt.Errorf("faulty store: %s %s %q (operation %d, after the crash): %w", op, kind, key, n, ErrInjected)
	}
	if n != f.fault.At {
		return false, nil
	}
	switch f.fault.Mode {
	case Crash:
		f.crashed.Store(true)
	case CrashAfter:
		f.crashed.Store(true)
		return true, nil
	case LostReply:
		return true, nil
	}
	return false, fmt.Errorf("faulty store: %s %s %q (operation %d): %w", op, kind, key, n, ErrInjected)
}

func (f *FaultyStore) afterErr(op string, kind ipam.Kind, key string) error {
	if f.fault.Mode == LostReply {
		return fmt.Errorf("faulty store: %s %s %q (operation %d) applied, then its reply was lost: %w", op, kind, key, f.fault.At, ErrInjected)
	}
	return fmt.Errorf("faulty store: %s %s %q (operation %d) applied, then crashed: %w", op, kind, key, f.fault.At, ErrInjected)
}

// Get implements [ipam.Store].
func (f *FaultyStore) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	after, err := f.before("get", kind, key)
	if err != nil {
		return ipam.Record{}, err
	}
	rec, err := f.Store.Get(ctx, kind, key)
	if after {
		return ipam.Record{}, f.afterErr("get", kind, key)
	}
	return rec, err
}

// List implements [ipam.Store].
func (f *FaultyStore) List(ctx context.Context, kind ipam.Kind, r ipam.KeyRange) ([]ipam.Record, error) {
	after, err := f.before("list", kind, r.Start)
	if err != nil {
		return nil, err
	}
	recs, err := f.Store.List(ctx, kind, r)
	if after {
		return nil, f.afterErr("list", kind, r.Start)
	}
	return recs, err
}

// Create implements [ipam.Store].
func (f *FaultyStore) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (ipam.Revision, error) {
	after, err := f.before("create", kind, key)
	if err != nil {
		return 0, err
	}
	rev, err := f.Store.Create(ctx, kind, key, value)
	if after {
		return 0, f.afterErr("create", kind, key)
	}
	return rev, err
}

// Update implements [ipam.Store].
func (f *FaultyStore) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	after, err := f.before("update", kind, key)
	if err != nil {
		return 0, err
	}
	newRev, err := f.Store.Update(ctx, kind, key, value, rev)
	if after {
		return 0, f.afterErr("update", kind, key)
	}
	return newRev, err
}

// Delete implements [ipam.Store].
func (f *FaultyStore) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	after, err := f.before("delete", kind, key)
	if err != nil {
		return err
	}
	err = f.Store.Delete(ctx, kind, key, rev)
	if after {
		return f.afterErr("delete", kind, key)
	}
	return err
}

// CreateBlock implements [ipam.BlockKeeper] as Create does [ipam.Store]: it
// passes the block to the wrapped store's BlockKeeper, or writes its
// encoding when the wrapped store has none.
func (f *FaultyStore) CreateBlock(ctx context.Context, key string, b *block.Block) (ipam.Revision, error) {
	after, err := f.before("create", ipam.KindBlock, key)
	if err != nil {
		return 0, err
	}
	rev, err := putBlock(ctx, f.Store, key, b, 0)
	if after {
		return 0, f.afterErr("create", ipam.KindBlock, key)
	}
	return rev, err
}

// UpdateBlock implements [ipam.BlockKeeper] as Update does [ipam.Store].
func (f *FaultyStore) UpdateBlock(ctx context.Context, key string, b *block.Block, rev ipam.Revision) (ipam.Revision, error) {
	after, err := f.before("update", ipam.KindBlock, key)
	if err != nil {
		return 0, err
	}
	newRev, err := putBlock(ctx, f.Store, key, b, rev)
	if after {
		return 0, f.afterErr("update", ipam.KindBlock, key)
	}
	return newRev, err
}
