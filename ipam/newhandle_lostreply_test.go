package ipam_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// lostCreateStore is a memstore whose next commit that creates a handle
// record with its block lands but reports a timeout, and whose next read
// of that block then fails too (stale: returns the block as it was before
// the commit, as a read served before a late commit applied does).
type lostCreateStore struct {
	*memstore.Store
	stale bool

	mu    sync.Mutex
	armed bool
	block string
	old   ipam.Record
}

func (s *lostCreateStore) Commit(ctx context.Context, ws []ipam.Write, revs []ipam.Revision) error {
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
		return fmt.Errorf("commit: request timeout: %w", context.DeadlineExceeded)
	}
	return err
}

func (s *lostCreateStore) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	s.mu.Lock()
	first := kind == ipam.KindBlock && key == s.block
	if first {
		s.block = ""
	}
	old := s.old
	s.mu.Unlock()
	switch {
	case first && s.stale:
		return old, nil
	case first:
		return ipam.Record{}, fmt.Errorf("get block %q: request timeout: %w", key, context.DeadlineExceeded)
	}
	return s.Store.Get(ctx, kind, key)
}

// TestNewHandleLostReplyThenUnreadable: a dual-stack AutoAssign with
// NewHandle whose commit of handle record and block lands while its reply
// is lost, and whose first read of the block after it fails or comes back
// stale, fails; the store works for its rollback. The rollback must then
// find the commit landed, release the address and take the count it made
// back down, leaving nothing behind (its own handle transaction, which did
// not know the record as its own, refused to lower it: the handle stayed
// counting an address no block held, and a retried request under it got
// ErrHandleExists).
func TestNewHandleLostReplyThenUnreadable(t *testing.T) {
	for _, stale := range []bool{false, true} {
		t.Run(fmt.Sprintf("stale=%t", stale), func(t *testing.T) {
			ctx := t.Context()
			ms := memstore.New()
			s := &lostCreateStore{Store: ms, stale: stale}
			a, err := ipam.New(s, ipam.Options{})
			require.NoError(t, err)
			require.NoError(t, a.CreatePool(ctx, v4pool("v4", "10.0.0.0/24", 28)))
			require.NoError(t, a.CreatePool(ctx, v6pool("v6", "fd00::/120", 124)))
			args := func(h string) ipam.AutoAssignArgs {
				return ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: h, NewHandle: true, Node: "n1"}
			}
			_, err = a.AutoAssign(ctx, args("warm")) // the node's blocks, the caches
			require.NoError(t, err)

			s.mu.Lock()
			s.armed = true
			s.mu.Unlock()
			_, err = a.AutoAssign(ctx, args("lost"))
			require.ErrorIs(t, err, context.DeadlineExceeded)

			checkedClean(t, ms)
			_, err = a.IPsByHandle(ctx, "lost")
			require.ErrorIs(t, err, ipam.ErrHandleNotFound)
			res, err := a.AutoAssign(ctx, args("lost"))
			require.NoError(t, err, "the retried request")
			require.Equal(t, 2, res.Len())
			checkedClean(t, ms)
		})
	}
}
