package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// TestCommitsMatchTwoStep: two stores, one used through allocators
// that see a Committer and one through allocators that do not, are given
// the same operations (sequentially: no interference), and must give the
// same answers and hold the same records (values, not revisions) after
// each.
func TestCommitsMatchTwoStep(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		cfg := ipam.Config{
			AutoAllocateBlocks: true,
			MaxBlocksPerHost:   rapid.IntRange(0, 3).Draw(t, "maxBlocks"),
			StrictAffinity:     rapid.Bool().Draw(t, "strict"),
		}
		if rapid.Bool().Draw(t, "cooldown") {
			cfg.ReleaseCooldown = 5 * time.Second
		}
		bytesCommit := rapid.Bool().Draw(t, "bytesCommit")
		var w [2]*laneWorld
		for i := range w {
			lw := &laneWorld{store: &laneStore{Store: memstore.New(), base: map[netip.Prefix]uint64{}}, clock: newClock()}
			var s ipam.Store = lw.store
			switch {
			case i == 1:
				s = withoutCommit{laneStore: lw.store}
			case bytesCommit:
				// A Committer without BlockKeeper, as etcdstore is.
				s = bytesCommitter{lw.store, lw.store, lw.store, lw.store}
			}
			for j := range lw.allocs {
				a, err := ipam.New(s, ipam.Options{Now: lw.clock.Now})
				require.NoError(t, err)
				lw.allocs[j] = a
			}
			w[i] = lw
		}
		var held [2][]ipam.Assigned
		do := func(what string, f func(k int, w *laneWorld) string) {
			var got [2]string
			for k := range w {
				got[k] = f(k, w[k])
			}
			require.Equal(t, got[1], got[0], "%s: with commits (first) and without", what)
			for _, kind := range ipam.Kinds {
				recs := [2][]ipam.Record{w[0].records(t, kind), w[1].records(t, kind)}
				for _, rs := range recs {
					for i := range rs {
						rs[i].Revision = 0
					}
				}
				require.Equal(t, recs[1], recs[0], "%s: the %s records differ with commits (first) and without", what, kind)
			}
		}
		do("setup", func(_ int, w *laneWorld) string {
			err := w.allocs[0].SetConfig(context.Background(), cfg)
			for _, p := range lanePools {
				if err == nil {
					err = w.allocs[0].CreatePool(context.Background(), p)
				}
			}
			return fmt.Sprint(err)
		})
		steps := rapid.IntRange(1, 60).Draw(t, "steps")
		for range steps {
			i := rapid.IntRange(0, 2).Draw(t, "alloc")
			node := rapid.SampledFrom(laneNodes).Draw(t, "node")
			handle := rapid.SampledFrom(laneHandles).Draw(t, "handle")
			switch rapid.IntRange(0, 6).Draw(t, "op") {
			case 0, 1, 2:
				args := ipam.AutoAssignArgs{
					Num4: rapid.IntRange(0, 3).Draw(t, "n4"), Num6: rapid.IntRange(0, 2).Draw(t, "n6"),
					Handle: handle, Node: node, NewHandle: rapid.Bool().Draw(t, "new"), Partial: rapid.Bool().Draw(t, "partial"),
				}
				if args.Num4+args.Num6 == 0 {
					args.Num4 = 1
				}
				do(fmt.Sprintf("AutoAssign(%+v) by %d", args, i), func(k int, w *laneWorld) string {
					res, err := w.allocs[i].AutoAssign(context.Background(), args)
					held[k] = append(held[k], res.IPv4...)
					held[k] = append(held[k], res.IPv6...)
					return w.show(res, err)
				})
			case 3:
				do(fmt.Sprintf("ReleaseByHandle(%q) by %d", handle, i), func(_ int, w *laneWorld) string {
					got, err := w.allocs[i].ReleaseByHandle(context.Background(), handle)
					slices.SortFunc(got, func(x, y netip.Addr) int { return x.Compare(y) })
					return w.show(got, err)
				})
			case 4:
				if len(held[0]) == 0 {
					continue
				}
				j := rapid.IntRange(0, len(held[0])-1).Draw(t, "which")
				do(fmt.Sprintf("ReleaseIPs(%d) by %d", j, i), func(k int, w *laneWorld) string {
					x := held[k][j]
					res, err := w.allocs[i].ReleaseIPs(context.Background(), ipam.Release{Addr: x.Addr})
					return w.show(res, err)
				})
			case 5:
				addr := netip.AddrFrom4([4]byte{10, 0, 0, byte(rapid.IntRange(0, 63).Draw(t, "addr"))})
				nh := rapid.Bool().Draw(t, "new")
				do(fmt.Sprintf("AssignIP(%s, %q, new=%t) by %d", addr, handle, nh, i), func(k int, w *laneWorld) string {
					x, err := w.allocs[i].AssignIP(context.Background(), ipam.AssignIPArgs{Addr: addr, Handle: handle, Node: node, NewHandle: nh})
					if err == nil {
						held[k] = append(held[k], x)
					}
					return w.show(x, err)
				})
			case 6:
				rel := rapid.Bool().Draw(t, "nonEmpty")
				do(fmt.Sprintf("ReleaseHostAffinities(%q, %t) by %d", node, rel, i), func(_ int, w *laneWorld) string {
					n, err := w.allocs[i].ReleaseHostAffinities(context.Background(), node, rel)
					return w.show(n, err)
				})
			}
			if rapid.Bool().Draw(t, "tick") {
				for _, lw := range w {
					lw.clock.Advance(2 * time.Second)
				}
			}
		}
	})
}

// bytesCommitter hides a store's BlockKeeper capability, keeping
// Generations and Committer.
type bytesCommitter struct {
	ipam.Store
	ipam.Generations
	ipam.Committer
	ls *laneStore
}

// Create records a created block's counter, as laneStore.CreateBlock does.
func (s bytesCommitter) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (ipam.Revision, error) {
	rev, err := s.Store.Create(ctx, kind, key, value)
	if err == nil && kind == ipam.KindBlock {
		var b block.Block
		if b.UnmarshalBinary(value) == nil {
			s.ls.base[b.Prefix()] = b.Seq()
		}
	}
	return rev, err
}
