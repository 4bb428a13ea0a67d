package peers

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ipam/service/ipallocator"
	goipam "github.com/metal-stack/go-ipam"

	"github.com/carve-ipam/carve/benchmarks/internal/workload"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// TestGoipamFillIsAcquire checks the shortcut the go-ipam benchmarks fill
// with (goipamDump and Load) against filling by AcquireIP.
func TestGoipamFillIsAcquire(t *testing.T) {
	const n = 300
	p := workload.Pool{Name: "v4-22", CIDR: netip.MustParsePrefix("10.9.0.0/22")}
	ctx := context.Background()
	slow := goipam.New(ctx)
	prefix, err := slow.NewPrefix(ctx, p.CIDR.String())
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		if _, err := slow.AcquireIP(ctx, prefix.Cidr); err != nil {
			t.Fatal(err)
		}
	}
	fast, _ := goipamFilled(t, p, n)
	if got, want := goipamIPs(t, fast), goipamIPs(t, slow); !equalSets(got, want) {
		t.Errorf("Load gives %d addresses, AcquireIP %d, or different ones", len(got), len(want))
	}
}

func goipamIPs(t *testing.T, ipam goipam.Ipamer) map[string]bool {
	t.Helper()
	dump, err := ipam.Dump(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var prefixes []struct{ IPs map[string]bool }
	if err := json.Unmarshal([]byte(dump), &prefixes); err != nil {
		t.Fatal(err)
	}
	if len(prefixes) != 1 {
		t.Fatalf("%d prefixes", len(prefixes))
	}
	return prefixes[0].IPs
}

func equalSets(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// TestCiliumLimits records what cilium's ipallocator cannot do, as observed
// in this version; the README cites it.
func TestCiliumLimits(t *testing.T) {
	// An IPv6 /48 is capped to its first 65,536 addresses, less the
	// network address and the last one.
	r, err := ipallocator.NewCIDRRange(ipNet(workload.V6.CIDR))
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Free(); got != 1<<16-2 {
		t.Errorf("free in a /48: %d, want %d", got, 1<<16-2)
	}
	beyond := workload.V6.CIDR.Addr().As16()
	beyond[13] = 1 // fd00::1:0:0, well inside the /48
	var notInRange *ipallocator.ErrNotInRange
	if err := r.Allocate(netip.AddrFrom16(beyond).AsSlice()); !errors.As(err, &notInRange) {
		t.Errorf("Allocate(%s) in a /48: %v, want ErrNotInRange", netip.AddrFrom16(beyond), err)
	}

	// No owners: releasing an address twice (the second time on behalf
	// of nobody) goes unnoticed.
	ip, err := r.AllocateNext()
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := r.Release(ip); err != nil {
			t.Errorf("release of %s: %v", ip, err)
		}
	}
}

// TestGoipamLimits records what go-ipam cannot do, as observed in this
// version.
func TestGoipamLimits(t *testing.T) {
	ctx := context.Background()
	g := goipam.New(ctx)
	prefix, err := g.NewPrefix(ctx, "10.9.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	// No owners: anyone may release anyone's address, and a late release
	// frees the address's next holder.
	ip, err := g.AcquireIP(ctx, prefix.Cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.ReleaseIPFromPrefix(ctx, prefix.Cidr, ip.IP.String()); err != nil {
		t.Fatal(err)
	}
	again, err := g.AcquireIP(ctx, prefix.Cidr)
	if err != nil {
		t.Fatal(err)
	}
	if again.IP != ip.IP {
		t.Fatalf("go-ipam handed out %s, then %s: no longer the lowest free address first", ip.IP, again.IP)
	}
	// The first holder's late release frees the second holder's address.
	if err := g.ReleaseIPFromPrefix(ctx, prefix.Cidr, ip.IP.String()); err != nil {
		t.Errorf("stale release of %s: %v", ip.IP, err)
	}
}

// TestCarveRefusesStaleRelease is the counterpart of the peers' missing
// owner checks: carve refuses a release carrying another owner's handle or
// an old sequence number.
func TestCarveRefusesStaleRelease(t *testing.T) {
	ctx := context.Background()
	p := workload.V4
	a := workload.Filled(t, memstore.New(), p, 0)
	first, err := a.AutoAssign(ctx, p.Args(1, "pod-a", workload.Node))
	if err != nil {
		t.Fatal(err)
	}
	old := first.IPv4[0]
	if _, err := a.ReleaseByHandle(ctx, "pod-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: old.Addr, Handle: "pod-b", Node: workload.Node}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ReleaseIPs(ctx, ipam.Release{Addr: old.Addr, Handle: "pod-a"}); !errors.Is(err, ipam.ErrHandleMismatch) {
		t.Errorf("release under the old handle: %v, want ErrHandleMismatch", err)
	}
	if _, err := a.ReleaseIPs(ctx, ipam.Release{Addr: old.Addr, Seq: old.Seq}); !errors.Is(err, ipam.ErrSeqMismatch) {
		t.Errorf("release with the old sequence number: %v, want ErrSeqMismatch", err)
	}
}
