package ipam_test

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

// bytesIn hands out fuzz input piece by piece; past the end it gives zeros.
type bytesIn struct{ b []byte }

func (in *bytesIn) byte() byte {
	if len(in.b) == 0 {
		return 0
	}
	c := in.b[0]
	in.b = in.b[1:]
	return c
}

func (in *bytesIn) pick(n int) int { return int(in.byte()) % n }

func (in *bytesIn) take(n int) []byte {
	n = min(n, len(in.b))
	out := in.b[:n]
	in.b = in.b[n:]
	return out
}

// str returns a short string: a familiar one, raw bytes (odd ones
// included), or one at the limits.
func (in *bytesIn) str(familiar ...string) string {
	switch in.pick(6) {
	case 0:
		return ""
	case 1:
		return string(in.take(in.pick(12)))
	case 2:
		return strings.Repeat("n", ipam.MaxNameLen+in.pick(3)-1)
	}
	if len(familiar) == 0 {
		return "x"
	}
	return familiar[in.pick(len(familiar))]
}

func (in *bytesIn) count() int {
	return []int{-1, 0, 1, 2, 3, 7, ipam.MaxAssign, ipam.MaxAssign + 1, 1 << 40}[in.pick(9)]
}

func (in *bytesIn) addr() netip.Addr {
	switch in.pick(5) {
	case 0:
		return netip.Addr{}
	case 1:
		return netip.AddrFrom16([16]byte(append([]byte{0xfd}, make([]byte, 15)...))).Next().WithZone("eth0")
	case 2:
		return netip.AddrFrom4([4]byte{10, 0, 0, in.byte()})
	case 3:
		return netip.AddrFrom16([16]byte{0xfd, 15: in.byte()})
	}
	a, ok := netip.AddrFromSlice(in.take(4 + 12*in.pick(2)))
	if !ok {
		return netip.Addr{}
	}
	return a
}

func (in *bytesIn) prefix() netip.Prefix {
	a := in.addr()
	if !a.IsValid() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(a.WithZone(""), in.pick(140)-2)
}

func (in *bytesIn) labels() selector.Labels {
	if in.pick(3) == 0 {
		return nil
	}
	return selector.Set{in.str("rack", "zone"): in.str("0", "1", "a")}
}

var fuzzNodes = []string{"node-1", "node-2", "n/3", "node\x00", "ñode", ""}
var fuzzHandles = []string{"h1", "h2", "h3", "", "h\n"}
var fuzzPoolNames = []string{"v4", "v6", "extra", "", "Bad_Name"}
var fuzzSelectors = []string{"", "all()", `rack == "0"`, "global()", "has(", `rack in {"0","1"}`, strings.Repeat("(", 200) + "all()" + strings.Repeat(")", 200)}

// state is what a store means: who holds what, which blocks belong to
// whom, handle counts, pools, configuration and reservations. Block
// counters and cursors are left out: they may move without meaning.
func state(ctx context.Context, s *memstore.Store) (string, error) {
	var b strings.Builder
	for _, kind := range ipam.Kinds {
		recs, err := s.List(ctx, kind, ipam.KeyRange{})
		if err != nil {
			return "", err
		}
		for _, r := range recs {
			switch kind {
			case ipam.KindBlock:
				var blk block.Block
				if err := blk.UnmarshalBinary(r.Value); err != nil {
					return "", err
				}
				fmt.Fprintf(&b, "block %s %s:", blk.Prefix(), blk.Affinity())
				for a, al := range blk.All() {
					attrs := slices.Sorted(maps.Keys(al.Owner.Attrs))
					fmt.Fprintf(&b, " %s=%q%v/%d", a, al.Owner.Handle, attrs, al.Seq)
				}
				b.WriteString("\n")
			case ipam.KindHandle:
				counts, err := ipam.DecodeHandle(r.Value)
				if err != nil {
					return "", err
				}
				fmt.Fprintf(&b, "handle %q %v\n", r.Key, counts)
			default:
				fmt.Fprintf(&b, "%s %q %q\n", kind, r.Key, r.Value)
			}
		}
	}
	return b.String(), nil
}

// FuzzAPI calls the allocator's public entry points with arguments made
// from the fuzz input: invalid prefixes, zero values, huge counts, empty
// and odd handles and node names, odd labels, selectors at the limits. No
// call may panic; every error must say it comes from ipam; and a call that
// fails must leave the store meaning what it meant (ReleaseIPs excepted,
// which releases each address on its own: there, only the refused
// addresses must be untouched).
func FuzzAPI(f *testing.F) {
	f.Add([]byte{3, 2, 2, 0, 3, 0, 4, 2, 5})
	f.Add([]byte{0, 1, 4, 2, 200, 1, 3, 3, 2, 2, 2, 0, 6, 0})
	f.Add([]byte{3, 5, 1, 2, 3, 0, 9, 1, 9, 0, 8, 2, 1, 7})
	f.Add([]byte{2, 1, 0, 3, 3, 3, 3, 8, 0, 0, 0, 5, 1, 1, 1, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := t.Context()
		store := memstore.New()
		a, err := ipam.New(store, ipam.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []pool.Pool{
			{Name: "v4", CIDR: netip.MustParsePrefix("10.0.0.0/27"), BlockSize: 29},
			{Name: "v6", CIDR: netip.MustParsePrefix("fd00::/124"), BlockSize: 126},
		} {
			if err := a.CreatePool(ctx, p); err != nil {
				t.Fatal(err)
			}
		}
		in := &bytesIn{b: data}
		for step := 0; step < 24 && len(in.b) > 0; step++ {
			before, err := state(ctx, store)
			if err != nil {
				t.Fatal(err)
			}
			op, err := fuzzCall(ctx, a, in)
			if err == nil {
				continue
			}
			if !strings.HasPrefix(err.Error(), "ipam: ") {
				t.Fatalf("%s: error does not say where it comes from: %v", op, err)
			}
			if strings.HasPrefix(op, "release ") {
				continue // checked inside fuzzCall
			}
			after, serr := state(ctx, store)
			if serr != nil {
				t.Fatal(serr)
			}
			if after != before {
				t.Fatalf("%s failed (%v) but changed the store:\nbefore:\n%s\nafter:\n%s", op, err, before, after)
			}
		}
		r, err := a.Check(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range r.Problems {
			if p.Kind != ipam.ProblemBlockOutsidePools {
				t.Fatalf("store inconsistent after the calls: %v", p)
			}
		}
	})
}

// fuzzCall makes one call and returns its name and error.
func fuzzCall(ctx context.Context, a *ipam.Allocator, in *bytesIn) (string, error) {
	switch in.pick(12) {
	case 0:
		p := pool.Pool{Name: in.str(fuzzPoolNames...), CIDR: in.prefix(), BlockSize: in.pick(140),
			NodeSelector: in.str(fuzzSelectors...), NamespaceSelector: in.str(fuzzSelectors...), Disabled: in.pick(4) == 0}
		if in.pick(2) == 0 {
			p.AllowedUses = []pool.Use{pool.Use(in.str("Workload", "Tunnel", "LoadBalancer"))}
		}
		return "create pool", a.CreatePool(ctx, p)
	case 1:
		name := in.str(fuzzPoolNames...)
		switch in.pick(4) {
		case 0:
			return "disable pool", a.DisablePool(ctx, name)
		case 1:
			return "enable pool", a.EnablePool(ctx, name)
		case 2:
			return "delete pool", a.DeletePool(ctx, name)
		}
		return "update pool", a.UpdatePool(ctx, pool.Pool{Name: name, CIDR: in.prefix(), NodeSelector: in.str(fuzzSelectors...)})
	case 2:
		c := ipam.Config{StrictAffinity: in.pick(2) == 0, AutoAllocateBlocks: in.pick(2) == 0, MaxBlocksPerHost: in.count(),
			ReleaseCooldown: time.Duration(in.count()) * time.Second}
		return "set config", a.SetConfig(ctx, c)
	case 3, 4:
		args := ipam.AutoAssignArgs{Num4: in.count(), Num6: in.count(), Handle: in.str(fuzzHandles...), Node: in.str(fuzzNodes...),
			NodeLabels: in.labels(), NamespaceLabels: in.labels(), Use: pool.Use(in.str("", "Workload", "Tunnel", "Pods", "LoadBalancer")),
			Partial: in.pick(3) == 0}
		if in.pick(3) == 0 {
			args.Attrs = map[string]string{in.str("pod"): in.str("a")}
		}
		if in.pick(3) == 0 {
			args.IPv4Pools = []string{in.str(fuzzPoolNames...)}
		}
		if in.pick(4) == 0 {
			args.ReserveFirst, args.ReserveLast = in.count(), in.pick(3)
		}
		_, err := a.AutoAssign(ctx, args)
		if args.Partial {
			return "release auto-assign partial", err // a partial result is kept with its error
		}
		return "auto-assign", err
	case 5:
		_, err := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: in.addr(), Handle: in.str(fuzzHandles...), Node: in.str(fuzzNodes...),
			Use: pool.Use(in.str("", "Tunnel", "x", "LoadBalancer"))})
		return "assign", err
	case 6:
		var rels []ipam.Release
		for range in.pick(4) {
			rels = append(rels, ipam.Release{Addr: in.addr(), Handle: in.str(fuzzHandles...), Seq: uint64(in.pick(3))})
		}
		owners := map[netip.Addr]string{}
		for _, r := range rels {
			if o, err := a.Owner(ctx, r.Addr); err == nil {
				owners[r.Addr] = fmt.Sprint(o)
			}
		}
		res, err := a.ReleaseIPs(ctx, rels...)
		if err != nil {
			// Each address on its own: those not released are untouched.
			for _, r := range rels {
				if r.Addr.IsValid() && !slices.Contains(res.Released, r.Addr) {
					o, oerr := a.Owner(ctx, r.Addr)
					if was, ok := owners[r.Addr]; ok && (oerr != nil || fmt.Sprint(o) != was) {
						return "release ips", fmt.Errorf("a refused release changed %s: %v -> %v %v", r.Addr, was, o, oerr)
					}
				}
			}
		}
		return "release ips", err
	case 7:
		_, err := a.ReleaseByHandle(ctx, in.str(fuzzHandles...))
		return "release by handle", err
	case 8:
		switch in.pick(4) {
		case 0:
			_, err := a.IPsByHandle(ctx, in.str(fuzzHandles...))
			return "ips by handle", err
		case 1:
			_, err := a.Owner(ctx, in.addr())
			return "owner", err
		case 2:
			_, err := a.Block(ctx, in.prefix())
			return "block", err
		}
		_, err := a.Utilization(ctx)
		return "utilization", err
	case 9:
		node, cidr := in.str(fuzzNodes...), in.prefix()
		switch in.pick(6) {
		case 4:
			args := ipam.EnsureBlockArgs{Node: node, NodeLabels: in.labels(), IPv4: in.pick(2) == 0, IPv6: in.pick(2) == 0}
			if in.pick(3) == 0 {
				args.IPv6Pools = []string{in.str(fuzzPoolNames...)}
			}
			if in.pick(4) == 0 {
				args.ReserveFirst, args.ReserveLast = in.count(), in.pick(3)
			}
			_, _, err := a.EnsureBlock(ctx, args)
			return "ensure block", err
		case 0:
			_, err := a.ClaimAffinity(ctx, node, cidr)
			return "release claim affinity", err // claims what it can, reports the rest
		case 1:
			return "release affinity", a.ReleaseAffinity(ctx, node, cidr, in.pick(2) == 0)
		case 2:
			_, err := a.ClaimLoadBalancerAffinity(ctx, cidr)
			return "release claim load-balancer affinity", err
		case 3:
			return "release load-balancer affinity", a.ReleaseLoadBalancerAffinity(ctx, cidr, in.pick(2) == 0)
		}
		_, err := a.ReleaseHostAffinities(ctx, node, in.pick(2) == 0)
		return "release host affinities", err
	case 10:
		if in.pick(3) == 0 {
			var labels map[string]string
			for range in.pick(3) {
				if labels == nil {
					labels = map[string]string{}
				}
				labels[in.str("rack", "zone", "", "\xff")] = in.str("0", "1", "a", strings.Repeat("v", ipam.MaxAttrLen+1))
			}
			return "set node labels", a.SetNodeLabels(ctx, in.str(fuzzNodes...), labels)
		}
		var cidrs []netip.Prefix
		for range in.pick(3) {
			cidrs = append(cidrs, in.prefix())
		}
		return "create reservation", a.CreateReservation(ctx, ipam.Reservation{Name: in.str("r1", "r2"), CIDRs: cidrs})
	}
	return "delete reservation", a.DeleteReservation(ctx, in.str("r1", "r2"))
}
