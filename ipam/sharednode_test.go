package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
)

// TestSharedNodeChurn has several allocators act for the same nodes at
// once (as two processes serving one node would), assigning and releasing
// from a pool small enough that blocks are claimed, borrowed and reclaimed
// all the time. Afterwards the store must be consistent: in particular,
// every block affine to a node is in that node's index, however the claims,
// index clean-ups and reclaims of the allocators interleaved.
func TestSharedNodeChurn(t *testing.T) {
	rounds := 20
	if testing.Short() {
		rounds = 5
	}
	for round := range rounds {
		e := newEnv(t, v4pool("small", "10.10.0.0/26", 29)) // 8 blocks of 8
		cfg := ipam.DefaultConfig()
		cfg.MaxBlocksPerHost = 2
		e.config(cfg)
		nodes := []string{"node-a", "node-b", "node-c"}
		const workers, ops = 6, 150
		var wg sync.WaitGroup
		for w := range workers {
			a, err := ipam.New(e.store, ipam.Options{ReclaimAge: time.Nanosecond})
			require.NoError(t, err)
			rng := rand.New(rand.NewPCG(uint64(round), uint64(w)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				var held []string
				for i := range ops {
					if len(held) > 0 && (len(held) >= 6 || rng.IntN(2) == 0) {
						k := rng.IntN(len(held))
						if _, err := a.ReleaseByHandle(e.ctx, held[k]); err != nil {
							t.Errorf("release %s: %v", held[k], err)
							return
						}
						held = append(held[:k], held[k+1:]...)
						continue
					}
					h := fmt.Sprintf("w%d-%d", w, i)
					node := nodes[(w+rng.IntN(2))%len(nodes)]
					_, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1 + rng.IntN(2), Handle: h, Node: node})
					switch {
					case err == nil:
						held = append(held, h)
					case errors.Is(err, ipam.ErrNoSpace):
					default:
						t.Errorf("assign %s: %v", h, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		r, err := e.a.Check(e.ctx)
		require.NoError(t, err)
		for _, p := range r.Problems {
			t.Errorf("round %d: %s: %s %s", round, p.Kind, p.Record, p.Detail)
		}
		if t.Failed() {
			return
		}
	}
}

// hookStore runs hook before each operation on the store it wraps; the
// hook may itself use the wrapped store, as another allocator would.
type hookStore struct {
	ipam.Store
	hook func(op string, kind ipam.Kind, key string)
}

func (h *hookStore) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (ipam.Revision, error) {
	h.hook("create", kind, key)
	return h.Store.Create(ctx, kind, key, value)
}

func (h *hookStore) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	h.hook("update", kind, key)
	return h.Store.Update(ctx, kind, key, value, rev)
}

func (h *hookStore) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	h.hook("delete", kind, key)
	return h.Store.Delete(ctx, kind, key, rev)
}

// The index keys of these tests (see ipam.KindAffinity).
const (
	blockKey0 = "v4:0a0a0000/29"           // 10.10.0.0/29
	indexC0   = "host:node-c/" + blockKey0 // node-c holds 10.10.0.0/29
)

// TestClaimRestoresIndex: another allocator serving the same node deletes
// the node's index record for a block (believing, from a read made before
// the block existed, that the record is stale) just before this allocator
// creates the block. The claim must leave the block in the node's index.
func TestClaimRestoresIndex(t *testing.T) {
	e := newEnv(t, v4pool("small", "10.10.0.0/29", 29))
	once := sync.Once{}
	hs := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if op == "create" && kind == ipam.KindBlock && key == blockKey0 {
			once.Do(func() {
				rec, err := e.store.Get(e.ctx, ipam.KindAffinity, indexC0)
				require.NoError(t, err, "the claim wrote its index record first")
				require.NoError(t, e.store.Delete(e.ctx, ipam.KindAffinity, indexC0, rec.Revision))
			})
		}
	}}
	a, err := ipam.New(hs, ipam.Options{})
	require.NoError(t, err)
	res, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod", Node: "node-c"})
	require.NoError(t, err)
	require.Equal(t, mustPrefix("10.10.0.0/29"), res.IPv4[0].Block)
	_, err = e.store.Get(e.ctx, ipam.KindAffinity, indexC0)
	require.NoError(t, err, "the block is in node-c's index")
	requireClean(t, e)
}

// TestDropIndexRestores: an allocator removes node-c's index record for a
// block that, when it looked, was another node's; just before the delete,
// another allocator serving node-c took the block over for node-c (and saw
// the record still there). The removal must put the record back.
func TestDropIndexRestores(t *testing.T) {
	e := newEnv(t, v4pool("small", "10.10.0.0/29", 29))
	e.mustAssign4("node-a", "pod-a", 1)
	_, err := e.a.ReleaseByHandle(e.ctx, "pod-a") // empty, still node-a's
	require.NoError(t, err)
	_, err = e.store.Create(e.ctx, ipam.KindAffinity, indexC0, nil) // left by an earlier claim
	require.NoError(t, err)

	once := sync.Once{}
	hs := &hookStore{Store: e.store, hook: func(op string, kind ipam.Kind, key string) {
		if op == "delete" && kind == ipam.KindAffinity && key == indexC0 {
			once.Do(func() {
				rec, err := e.store.Get(e.ctx, ipam.KindBlock, blockKey0)
				require.NoError(t, err)
				var b block.Block
				require.NoError(t, b.UnmarshalBinary(rec.Value))
				b.SetAffinity(block.Host("node-c"), e.clock.Now())
				v, err := b.MarshalBinary()
				require.NoError(t, err)
				_, err = e.store.Update(e.ctx, ipam.KindBlock, blockKey0, v, rec.Revision)
				require.NoError(t, err)
				old, err := e.store.Get(e.ctx, ipam.KindAffinity, "host:node-a/"+blockKey0)
				require.NoError(t, err)
				require.NoError(t, e.store.Delete(e.ctx, ipam.KindAffinity, old.Key, old.Revision))
			})
		}
	}}
	a, err := ipam.New(hs, ipam.Options{})
	require.NoError(t, err)
	require.NoError(t, a.ReleaseAffinity(e.ctx, "node-c", mustPrefix("10.10.0.0/29"), false), "not node-c's block when read: skipped")
	_, err = e.store.Get(e.ctx, ipam.KindAffinity, indexC0)
	require.NoError(t, err, "the block is in node-c's index")
	requireClean(t, e)
}

func requireClean(t *testing.T, e *env) {
	t.Helper()
	r, err := e.a.Check(e.ctx)
	require.NoError(t, err)
	require.Empty(t, r.Problems)
}
