package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
)

// lossyStore is an etcd Store whose next Commit that creates a handle
// record lands in etcd but reports a timeout, as when etcd is unreachable
// for a moment while the request is already on its way (the agent's link
// froze, the request was delivered when it came back). What happens to the
// next read of the block is set by staleRead: with it the read returns the
// block as it was before the commit (a read served before the late commit
// applied), without it the read times out too.
type lossyStore struct {
	*etcdstore.Store
	staleRead bool

	mu    sync.Mutex
	armed bool   // the next handle-creating commit loses its reply
	block string // the key of that commit's block, until its next read
	old   ipam.Record
}

func (s *lossyStore) Commit(ctx context.Context, ws []ipam.Write, revs []ipam.Revision) error {
	s.mu.Lock()
	lose := s.armed && len(ws) == 2 && ws[0].Kind == ipam.KindHandle && ws[0].Rev == 0 && ws[1].Kind == ipam.KindBlock
	if lose {
		s.armed = false
		s.block = ws[1].Key
		s.old, _ = s.Store.Get(ctx, ipam.KindBlock, ws[1].Key)
	}
	s.mu.Unlock()
	err := s.Store.Commit(ctx, ws, revs)
	if lose && err == nil {
		return fmt.Errorf("etcdstore: commit: request timeout 500ms: %w", context.DeadlineExceeded)
	}
	return err
}

func (s *lossyStore) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	s.mu.Lock()
	first := kind == ipam.KindBlock && key == s.block
	if first {
		s.block = ""
	}
	old := s.old
	s.mu.Unlock()
	if first {
		if s.staleRead {
			return old, nil
		}
		return ipam.Record{}, fmt.Errorf("etcdstore: get block %q: request timeout 500ms: %w", key, context.DeadlineExceeded)
	}
	return s.Store.Get(ctx, kind, key)
}

// TestLostCommitReplyLeavesHandle: a node agent's CNI ADD (dual-stack,
// NewHandle) whose commit of handle and block landed in etcd while its
// reply was lost, and whose next read of the block failed, fails, as it
// should; etcd works again at once. The documentation says that a failed
// AutoAssign leaves nothing behind, and that only when the store can be
// neither read nor written may a handle count stay too high. Here the
// store works for the whole rollback, yet the handle record is left
// counting an address no block holds: Check reports handle-excess, the
// kubelet's retried ADD under the same handle gets ErrHandleExists while
// AssignedByHandle and ReleaseByHandle both say ErrHandleNotFound, so the
// pod cannot get an address until Repair or a Collector's grace period
// (15 minutes by default) removes the count. (Without NewHandle the same
// failure leaves nothing: the rollback's lowering of the count goes through
// the request's exclusive handle transaction, whose read refuses the
// record that the lost commit created, as not its own.)
func TestLostCommitReplyLeavesHandle(t *testing.T) {
	for _, stale := range []bool{false, true} {
		t.Run(fmt.Sprintf("staleRead=%v", stale), func(t *testing.T) {
			ctx := t.Context()
			prefix := freshPrefix()
			es := newStore(t, newClient(t), etcdstore.Options{Prefix: prefix})
			ls := &lossyStore{Store: es, staleRead: stale}
			a, err := ipam.New(ls, ipam.Options{})
			if err != nil {
				t.Fatal(err)
			}
			createOpenRackPools(t, a)
			args := func(h string) ipam.AutoAssignArgs {
				return ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: h, NewHandle: true, Node: "n1",
					Attrs: map[string]string{"namespace": "default", "pod": h}}
			}
			// A warm agent: the node has its blocks, the caches are filled.
			if _, err := a.AutoAssign(ctx, args("k8s-pod-network.warm")); err != nil {
				t.Fatal(err)
			}
			ls.mu.Lock()
			ls.armed = true
			ls.mu.Unlock()
			const h = "k8s-pod-network.lost"
			_, err = a.AutoAssign(ctx, args(h))
			t.Logf("ADD: %v", err)
			if err == nil {
				t.Fatal("the ADD whose reply was lost succeeded")
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("ADD: %v, does not match context.DeadlineExceeded", err)
			}
			// etcd works from here on. What did the failed ADD leave?
			rep, err := a.Check(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range rep.Problems {
				t.Errorf("after the failed ADD, with etcd working: Check: %s", p)
			}
			// The kubelet retries the ADD, under the same container ID.
			res, err := a.AutoAssign(ctx, args(h))
			if errors.Is(err, ipam.ErrHandleExists) {
				res, err = a.AssignedByHandle(ctx, h)
			}
			if err != nil || len(res.IPv4) != 1 || len(res.IPv6) != 1 {
				t.Errorf("retried ADD: %v, %v", res, err)
			}
			// Or it gives up and sends DEL; a later ADD must work.
			_, err = a.ReleaseByHandle(ctx, h)
			if err != nil && !errors.Is(err, ipam.ErrHandleNotFound) {
				t.Errorf("DEL: %v", err)
			}
			if _, err := a.AutoAssign(ctx, args(h)); err != nil && strings.Contains(err.Error(), "holds addresses") {
				t.Errorf("ADD after DEL: %v", err)
			}
		})
	}
}
