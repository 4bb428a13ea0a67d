package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// corruptStore is a store with a little of everything: two pools, blocks
// of three nodes (one of them a LoadBalancer block), handles, a
// reservation, node labels and a configuration.
func corruptStore(t testing.TB) *memstore.Store {
	ctx := context.Background()
	s := memstore.New()
	a, err := ipam.New(s, ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.CreatePool(ctx, v4pool("p", "10.0.0.0/24", 26)))
	must(a.CreatePool(ctx, v4pool("q", "10.1.0.0/24", 28)))
	cfg := ipam.DefaultConfig()
	cfg.ReleaseCooldown = time.Minute
	must(a.SetConfig(ctx, cfg))
	for i, node := range []string{"node-1", "node-2"} {
		_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 2 + i, Handle: "h" + node, Node: node, IPv4Pools: []string{"p"}})
		must(err)
	}
	_, err = a.AssignIP(ctx, ipam.AssignIPArgs{Addr: netip.MustParseAddr("10.1.0.5"), Handle: "fixed", Node: "node-1"})
	must(err)
	_, err = a.ReleaseIPs(ctx, ipam.Release{Addr: netip.MustParseAddr("10.1.0.5")})
	must(err)
	_, err = a.AssignIP(ctx, ipam.AssignIPArgs{Addr: netip.MustParseAddr("10.1.0.6"), Handle: "fixed", Node: "node-1"})
	must(err)
	must(a.CreateReservation(ctx, ipam.Reservation{Name: "r1", CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.200/30")}}))
	must(a.SetNodeLabels(ctx, "node-1", map[string]string{"rack": "a"}))
	return s
}

// FuzzCorruptStore overwrites one record of a consistent store
// (chosen by kind and index) with the fuzzer's bytes, whole or as bit
// flips of its old value, or writes a new record under a key of the
// fuzzer's, and drives the allocator: nothing panics, an error about a
// record is ErrCorrupt, and a store whose problems Check calls
// repairable is clean after Repair.
func FuzzCorruptStore(f *testing.F) {
	for k := range ipam.Kinds {
		f.Add(byte(k), byte(0), byte(0), []byte("junk"))
		f.Add(byte(k), byte(1), byte(1), []byte{3, 17, 40, 41})
	}
	f.Add(byte(1), byte(0), byte(2), []byte("v4:0a000000/25"))
	f.Fuzz(func(t *testing.T, kindIdx, recIdx, mode byte, data []byte) {
		ctx := context.Background()
		s := corruptStore(t)
		kind := ipam.Kinds[int(kindIdx)%len(ipam.Kinds)]
		recs, err := s.List(ctx, kind, ipam.KeyRange{})
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case mode%3 == 2 || len(recs) == 0:
			// A new record: data is its key, and the value the first
			// record's of the kind, if any.
			if len(data) == 0 || len(data) > 200 {
				return
			}
			var value []byte
			if len(recs) > 0 {
				value = recs[0].Value
			}
			if _, err := s.Create(ctx, kind, string(data), value); err != nil {
				return
			}
		default:
			rec := recs[int(recIdx)%len(recs)]
			value := slices.Clone(data)
			if mode%3 == 1 {
				value = slices.Clone(rec.Value)
				for _, at := range data {
					if len(value) > 0 {
						i := int(at) % (len(value) * 8)
						value[i/8] ^= 1 << (i % 8)
					}
				}
			}
			if _, err := s.Update(ctx, kind, rec.Key, value, rec.Revision); err != nil {
				t.Fatal(err)
			}
		}
		a, err := ipam.New(s, ipam.Options{})
		if err != nil {
			t.Fatal(err)
		}
		before, err := a.Check(ctx)
		if err != nil {
			t.Fatal(err)
		}
		step := func(name string, f func() error) {
			t.Helper()
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("%s panicked: %v", name, r)
				}
			}()
			_ = f()
		}
		step("AutoAssign", func() error {
			_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 3, Handle: "new", Node: "node-1"})
			return err
		})
		step("AutoAssign node-3", func() error {
			_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 70, Handle: "new3", Node: "node-3", Partial: true})
			return err
		})
		step("AssignIP", func() error {
			_, err := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: netip.MustParseAddr("10.1.0.5"), Handle: "fixed", Node: "node-2", IgnoreCooldown: true})
			return err
		})
		step("ReleaseIPs", func() error {
			_, err := a.ReleaseIPs(ctx, ipam.Release{Addr: netip.MustParseAddr("10.0.0.1")}, ipam.Release{Addr: netip.MustParseAddr("10.1.0.6"), Handle: "fixed"})
			return err
		})
		step("ReleaseByHandle", func() error { _, err := a.ReleaseByHandle(ctx, "hnode-2"); return err })
		step("IPsByHandle", func() error { _, err := a.IPsByHandle(ctx, "hnode-1"); return err })
		step("AssignedByHandle", func() error { _, err := a.AssignedByHandle(ctx, "fixed"); return err })
		step("Utilization", func() error { _, err := a.Utilization(ctx); return err })
		step("EnsureBlock", func() error {
			_, _, err := a.EnsureBlock(ctx, ipam.EnsureBlockArgs{Node: "node-4", IPv4: true})
			return err
		})
		step("ReleaseHostAffinities", func() error { _, err := a.ReleaseHostAffinities(ctx, "node-2", false); return err })
		step("Collect", func() error {
			c, err := ipam.NewCollector(a, func(context.Context, ipam.Allocation) (bool, error) { return false, nil },
				ipam.CollectorOptions{Grace: time.Nanosecond, Nodes: func(_ context.Context, n string) (bool, error) { return n != "node-1", nil }})
			if err != nil {
				return err
			}
			if _, err := c.Collect(ctx); err != nil {
				return err
			}
			_, err = c.Collect(ctx)
			return err
		})
		step("Allocations", func() error { _, err := a.Allocations(ctx, netip.MustParsePrefix("10.0.0.0/8")); return err })
		step("SplitPool", func() error { _, err := a.SplitPool(ctx, "p", "p1", "p2"); return err })
		step("DeletePool", func() error { return a.DeletePool(ctx, "q") })
		// No address is held by two blocks, unless the damage was blocks
		// over each other to start with: claims do not look for a block
		// of another size over the one they make (that would cost a
		// listing per claim), so the pool's own blocks are made over it,
		// and Check reports the overlap (not repairable).
		overlapped := slices.ContainsFunc(before.Problems, func(p ipam.Problem) bool {
			return p.Kind == ipam.ProblemBlockOverlap || p.Kind == ipam.ProblemBlockOutsidePools
		})
		if !overlapped {
			blocks, err := s.List(ctx, ipam.KindBlock, ipam.KeyRange{})
			if err != nil {
				t.Fatal(err)
			}
			owner := map[netip.Addr]string{}
			for _, r := range blocks {
				var b block.Block
				if b.UnmarshalBinary(r.Value) != nil {
					continue
				}
				for addr, al := range b.All() {
					if prev, ok := owner[addr]; ok {
						t.Fatalf("%s held twice: by %s and by %s in %s", addr, prev, al.Owner.Handle, r.Key)
					}
					owner[addr] = al.Owner.Handle + " in " + r.Key
				}
			}
		}

		// Repair settles what it calls repairable.
		var acts []ipam.RepairAction
		var after *ipam.Report
		step("Repair", func() error {
			var err error
			acts, after, err = a.Repair(ctx, ipam.RepairOptions{})
			return err
		})
		if after == nil {
			return
		}
		for _, act := range acts {
			if act.Problem.Repairable && !act.Done {
				t.Fatalf("a repairable problem left on a quiet store: %v: %s", act.Problem, act.Note)
			}
		}
		fixed := map[string]bool{}
		for _, act := range acts {
			if act.Done {
				fixed[fmt.Sprint(act.Problem.Kind, act.Problem.Record, act.Problem.Block)] = true
			}
		}
		for _, p := range after.Problems {
			if fixed[fmt.Sprint(p.Kind, p.Record, p.Block)] {
				t.Fatalf("Repair fixed %v, and it is back", p)
			}
			if p.Repairable {
				t.Fatalf("after Repair, a repairable problem: %v (actions %v)", p, acts)
			}
		}
	})
}
