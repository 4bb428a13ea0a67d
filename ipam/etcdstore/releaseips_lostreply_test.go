package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
	"github.com/carve-ipam/carve/pool"
)

// replyLosingStore is an etcd Store that, once armed with n, makes the n-th
// write after it (Create, Update, Delete or Commit) in etcd and then
// reports a timeout, as a request delivered late over a link that froze
// would; every other call works.
type replyLosingStore struct {
	*etcdstore.Store
	n    atomic.Int64
	lost atomic.Bool
}

func (s *replyLosingStore) lose(err error) error {
	if s.n.Load() > 0 && s.n.Add(-1) == 0 && err == nil {
		s.lost.Store(true)
		return fmt.Errorf("etcdstore: request timeout 500ms: %w", context.DeadlineExceeded)
	}
	return err
}

func (s *replyLosingStore) Create(ctx context.Context, k ipam.Kind, key string, v []byte) (ipam.Revision, error) {
	r, err := s.Store.Create(ctx, k, key, v)
	return r, s.lose(err)
}

func (s *replyLosingStore) Update(ctx context.Context, k ipam.Kind, key string, v []byte, rev ipam.Revision) (ipam.Revision, error) {
	r, err := s.Store.Update(ctx, k, key, v, rev)
	return r, s.lose(err)
}

func (s *replyLosingStore) Delete(ctx context.Context, k ipam.Kind, key string, rev ipam.Revision) error {
	return s.lose(s.Store.Delete(ctx, k, key, rev))
}

func (s *replyLosingStore) Commit(ctx context.Context, ws []ipam.Write, revs []ipam.Revision) error {
	return s.lose(s.Store.Commit(ctx, ws, revs))
}

// TestReleaseIPsLostReply: an agent reconciling after a restart releases a
// dead pod's addresses (IPv4 and IPv6, two blocks) with ReleaseIPs
// (Allocation.Release: handle and sequence number). The commit reaches
// etcd but its reply is lost; etcd works again at once. Released again,
// as ReleaseIPs's documentation says, both addresses are free and the
// handle counts nothing: the blocks and the handle's counts went in one
// commit, so the lost reply left all of it done. (When the counts were
// lowered in a write of their own after the blocks', the lost reply left
// the handle counting an address no block held: handle-excess, and the
// handle refused NewHandle.)
func TestReleaseIPsLostReply(t *testing.T) {
	ctx := t.Context()
	es := newStore(t, newClient(t), etcdstore.Options{})
	ls := &replyLosingStore{Store: es}
	a, err := ipam.New(ls, ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	createOpenRackPools(t, a)
	const h = "k8s-pod-network.dead"
	res, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: h, Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	var rels []ipam.Release
	for _, x := range append(res.IPv4, res.IPv6...) {
		rels = append(rels, ipam.Release{Addr: x.Addr, Handle: h, Seq: x.Seq})
	}
	ls.n.Store(1)
	_, err = a.ReleaseIPs(ctx, rels...)
	if !ls.lost.Load() || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ReleaseIPs with its first write's reply lost: %v", err)
	}
	// Release again, as the documentation says.
	again, err := a.ReleaseIPs(ctx, rels...)
	if err != nil {
		t.Fatalf("ReleaseIPs again: %v", err)
	}
	t.Logf("released again: %v, not allocated: %v", again.Released, again.NotAllocated)
	if _, err := a.AssignedByHandle(ctx, h); !errors.Is(err, ipam.ErrHandleNotFound) {
		t.Fatalf("AssignedByHandle after the releases: %v", err)
	}
	for _, x := range rels {
		if _, err := a.Owner(ctx, x.Addr); !errors.Is(err, ipam.ErrNotAllocated) {
			t.Fatalf("Owner(%s) after the releases: %v", x.Addr, err)
		}
	}
	if rep, err := a.Check(ctx); err != nil || !rep.Clean() {
		t.Fatalf("Check after a lost reply and a second release: %v, %v", rep, err)
	}
	if _, err := a.ReleaseByHandle(ctx, h); err != nil && !errors.Is(err, ipam.ErrHandleNotFound) {
		t.Errorf("ReleaseByHandle: %v", err)
	}
	if _, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: h, NewHandle: true, Node: "n1"}); err != nil {
		t.Errorf("a new request under the handle, which holds nothing: %v", err)
	}
}

// createOpenRackPools creates rack a's pools in a, open to every node (no
// nodeSelector).
func createOpenRackPools(t *testing.T, a *ipam.Allocator) {
	t.Helper()
	for _, p := range []pool.Pool{trialRackA4, trialRackA6} {
		p.NodeSelector = ""
		if err := a.CreatePool(t.Context(), p); err != nil {
			t.Fatal(err)
		}
	}
}
