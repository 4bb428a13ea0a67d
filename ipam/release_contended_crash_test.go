package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

// trialCrashStore is a memstore whose next Commit is first overtaken by
// another writer (before, runs just before it), and which crashes after the
// first write that lands once that commit was refused: every later write
// fails without effect.
type trialCrashStore struct {
	*memstore.Store
	mu      sync.Mutex
	before  func()
	refused bool
	landed  bool
}

var errTrialCrash = errors.New("trial: the process died")

// write runs op unless the store has crashed, and crashes it after the first
// write that lands following the refused commit.
func (s *trialCrashStore) write(op func() error) error {
	s.mu.Lock()
	crashed := s.landed
	s.mu.Unlock()
	if crashed {
		return errTrialCrash
	}
	err := op()
	s.mu.Lock()
	if s.refused && err == nil {
		s.landed = true
	}
	s.mu.Unlock()
	return err
}

func (s *trialCrashStore) Create(ctx context.Context, k ipam.Kind, key string, v []byte) (r ipam.Revision, err error) {
	err = s.write(func() (err error) { r, err = s.Store.Create(ctx, k, key, v); return })
	return
}

func (s *trialCrashStore) Update(ctx context.Context, k ipam.Kind, key string, v []byte, rev ipam.Revision) (r ipam.Revision, err error) {
	err = s.write(func() (err error) { r, err = s.Store.Update(ctx, k, key, v, rev); return })
	return
}

func (s *trialCrashStore) Delete(ctx context.Context, k ipam.Kind, key string, rev ipam.Revision) error {
	return s.write(func() error { return s.Store.Delete(ctx, k, key, rev) })
}

func (s *trialCrashStore) CreateBlock(ctx context.Context, key string, b *block.Block) (r ipam.Revision, err error) {
	err = s.write(func() (err error) { r, err = s.Store.CreateBlock(ctx, key, b); return })
	return
}

func (s *trialCrashStore) UpdateBlock(ctx context.Context, key string, b *block.Block, rev ipam.Revision) (r ipam.Revision, err error) {
	err = s.write(func() (err error) { r, err = s.Store.UpdateBlock(ctx, key, b, rev); return })
	return
}

func (s *trialCrashStore) Commit(ctx context.Context, ws []ipam.Write, revs []ipam.Revision) error {
	s.mu.Lock()
	before := s.before
	s.before = nil
	s.mu.Unlock()
	if before != nil {
		before()
		err := s.Store.Commit(ctx, ws, revs)
		if err != nil {
			s.mu.Lock()
			s.refused = true
			s.mu.Unlock()
		}
		return err
	}
	return s.write(func() error { return s.Store.Commit(ctx, ws, revs) })
}

var (
	_ ipam.Committer   = (*trialCrashStore)(nil)
	_ ipam.BlockKeeper = (*trialCrashStore)(nil)
	_ ipam.Generations = (*trialCrashStore)(nil)
)

// The package documentation says: "With a store that offers Committer
// (memstore and the etcd backend do), an assignment's handle count and
// block, and a release by handle's blocks and handle count, are written in
// one commit, so no crash leaves a count too high there." (Committer's doc
// says the same: "no crash can come between the writes, so none leaves a
// handle count too high for Repair to remove".)
//
// A dual-stack VM NIC is released by handle while another VM is assigned an
// address in the same block: the joined commit is refused, ReleaseByHandle
// goes on block by block, and a crash after its first block write leaves
// the handle counting an address its block no longer holds
// (ProblemHandleExcess), which only Repair or a Collector removes.
func TestReleaseByHandleCrashUnderContentionLeavesNoExcess(t *testing.T) {
	ctx := context.Background()
	inner := memstore.New()
	s := &trialCrashStore{Store: inner}
	a, err := ipam.New(s, ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := ipam.New(inner, ipam.Options{}) // another provisioner worker
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []pool.Pool{
		{Name: "v4", CIDR: netip.MustParsePrefix("10.1.0.0/24"), BlockSize: 28},
		{Name: "v6", CIDR: netip.MustParsePrefix("fd00:77::/116")},
	} {
		if err := a.CreatePool(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: "vm.a.nic0", NewHandle: true, Node: "host-1"}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.before = func() {
		if _, err := other.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "vm.b.nic0", Node: "host-1"}); err != nil {
			t.Errorf("the other worker's AutoAssign: %v", err)
		}
	}
	s.mu.Unlock()
	// The process dies after the first write that lands once the commit
	// was refused: whatever that write is, the release is then done or
	// not at all, never half.
	if _, err = a.ReleaseByHandle(ctx, "vm.a.nic0"); err != nil && !errors.Is(err, errTrialCrash) {
		t.Fatalf("ReleaseByHandle: %v", err)
	}

	// After the crash, on the store as it was left.
	b, err := ipam.New(inner, ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := b.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rep.Problems {
		t.Errorf("after a crash of a release by handle on a Committer store: %v", p)
	}
}
