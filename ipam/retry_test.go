package ipam_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
)

// conflictStore loses every write of records of one kind, as if other
// writers always got there first (and, for a create, removed the record
// again before the loser looked).
type conflictStore struct {
	ipam.Store
	kind  ipam.Kind
	calls atomic.Int64
}

func (s *conflictStore) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	if kind == s.kind {
		s.calls.Add(1)
		return 0, ipam.ErrConflict
	}
	return s.Store.Update(ctx, kind, key, value, rev)
}

func (s *conflictStore) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (ipam.Revision, error) {
	// An index entry's create is trusted when it reports the entry there
	// (the entry decides nothing), so only other kinds lose it.
	if kind == s.kind && kind != ipam.KindAffinity {
		s.calls.Add(1)
		return 0, ipam.ErrExists
	}
	return s.Store.Create(ctx, kind, key, value)
}

func (s *conflictStore) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	if kind == s.kind {
		s.calls.Add(1)
		return ipam.ErrConflict
	}
	return s.Store.Delete(ctx, kind, key, rev)
}

// TestConflictsGiveUp: an operation that keeps losing the race on one
// kind of record gives up with ErrTooManyConflicts, after MaxRetries
// attempts of the write, or MaxRetries² of a handle's count written
// within a block's attempts (see Options.MaxRetries; TestBatchRaiseConflicts
// shows why the block is tried again), and leaves the store consistent.
func TestConflictsGiveUp(t *testing.T) {
	const retries = 5
	for _, kind := range []ipam.Kind{ipam.KindBlock, ipam.KindHandle, ipam.KindAffinity} {
		for _, op := range []string{"assign", "release", "claim", "delete pool"} {
			t.Run(kind.String()+"/"+op, func(t *testing.T) {
				e := newEnv(t, v4pool("p", "10.0.0.0/24", 28))
				e.mustAssign4("node-1", "first", 1)
				e.mustAssign4("node-1", "second", 1)
				s := &conflictStore{Store: e.store, kind: kind}
				a, err := ipam.New(s, ipam.Options{MaxRetries: retries})
				require.NoError(t, err)
				switch op {
				case "assign":
					_, err = a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-1"})
				case "release":
					_, err = a.ReleaseByHandle(e.ctx, "second")
				case "claim":
					_, err = a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "h", Node: "node-2"})
				case "delete pool":
					err = a.DeletePool(e.ctx, "p")
				}
				bound := int64(retries)
				if kind == ipam.KindHandle && op != "release" {
					bound = retries * retries
				}
				require.LessOrEqual(t, s.calls.Load(), bound, "%v", err)
				if s.calls.Load() >= retries {
					require.ErrorIs(t, err, ipam.ErrTooManyConflicts)
				}
				r, cerr := e.a.Check(e.ctx)
				require.NoError(t, cerr)
				for _, p := range r.Problems {
					require.Contains(t, []ipam.ProblemKind{ipam.ProblemHandleExcess, ipam.ProblemAffinityStale}, p.Kind, "%v", p)
				}
			})
		}
	}
}
