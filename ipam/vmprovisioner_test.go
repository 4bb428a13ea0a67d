package ipam_test

// A new user's trial of carve: the IP address layer of a small bare-metal /
// VM provisioner, written against the public API and documentation only
// (README.md, go doc, examples/). Each step asserts what the provisioner
// relies on.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/big"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

// nic is what the provisioner keeps about one VM interface.
type trialNIC struct {
	handle string
	host   string
	v4, v6 ipam.Assigned
}

// provisioner is the IP layer of the trial provisioner.
type trialProvisioner struct {
	t   *testing.T
	ctx context.Context
	a   *ipam.Allocator
	// vms: VM name -> its NICs (nic0, nic1).
	vms map[string][]trialNIC
}

const (
	trialCooldown = 10 * time.Minute
	trialRackA    = "rack-a"
	trialRackB    = "rack-b"
	trialV6       = "vm-v6"
)

var (
	trialRackACIDR = netip.MustParsePrefix("10.1.0.0/25")
	trialRackBCIDR = netip.MustParsePrefix("10.2.0.0/25")
	trialV6CIDR    = netip.MustParsePrefix("fd00:77::/116")
	// Gateways: the first eight addresses of each rack.
	trialGwA = netip.MustParsePrefix("10.1.0.0/29")
	trialGwB = netip.MustParsePrefix("10.2.0.0/29")

	trialHosts = map[string]map[string]string{
		"host-a1": {"rack": "a"},
		"host-a2": {"rack": "a"},
		"host-b1": {"rack": "b"},
	}
)

func trialHandle(vm string, nic int) string { return fmt.Sprintf("vm.%s.nic%d", vm, nic) }

// createVM gives a VM two NICs, each an IPv4 and an IPv6 address chosen by
// the allocator from its host's blocks.
func (p *trialProvisioner) createVM(vm, host string) []trialNIC {
	p.t.Helper()
	var nics []trialNIC
	for i := range 2 {
		h := trialHandle(vm, i)
		res, err := p.a.AutoAssign(p.ctx, ipam.AutoAssignArgs{
			Num4: 1, Num6: 1,
			Handle:    h,
			NewHandle: true,
			Node:      host,
			Attrs:     map[string]string{"vm": vm, "nic": fmt.Sprintf("nic%d", i)},
		})
		if err != nil {
			p.t.Fatalf("AutoAssign %s on %s: %v", h, host, err)
		}
		if len(res.IPv4) != 1 || len(res.IPv6) != 1 {
			p.t.Fatalf("AutoAssign %s: got %+v, want one address of each family", h, res)
		}
		nics = append(nics, trialNIC{handle: h, host: host, v4: res.IPv4[0], v6: res.IPv6[0]})
	}
	p.vms[vm] = nics
	return nics
}

// createFixedVM gives a VM two NICs with operator-chosen addresses: each
// NIC's pair all or none.
func (p *trialProvisioner) createFixedVM(vm, host string, addrs [2][2]netip.Addr, ignoreCooldown bool) ([]trialNIC, error) {
	p.t.Helper()
	var nics []trialNIC
	for i := range 2 {
		h := trialHandle(vm, i)
		res, err := p.a.AssignIPs(p.ctx, ipam.AssignIPsArgs{
			Addrs:          addrs[i][:],
			Handle:         h,
			NewHandle:      true,
			Node:           host,
			Attrs:          map[string]string{"vm": vm, "nic": fmt.Sprintf("nic%d", i)},
			IgnoreCooldown: ignoreCooldown,
		})
		if err != nil {
			// Undo the NICs assigned so far: the VM is all or none too.
			for _, n := range nics {
				if _, rerr := p.a.ReleaseByHandle(p.ctx, n.handle); rerr != nil {
					p.t.Fatalf("undo %s: %v", n.handle, rerr)
				}
			}
			return nil, err
		}
		nics = append(nics, trialNIC{handle: h, host: host, v4: res.IPv4[0], v6: res.IPv6[0]})
	}
	p.vms[vm] = nics
	return nics, nil
}

// deleteVM releases every address of the VM, by handle.
func (p *trialProvisioner) deleteVM(vm string) []netip.Addr {
	p.t.Helper()
	var out []netip.Addr
	for _, n := range p.vms[vm] {
		got, err := p.a.ReleaseByHandle(p.ctx, n.handle)
		if err != nil {
			p.t.Fatalf("ReleaseByHandle %s: %v", n.handle, err)
		}
		out = append(out, got...)
	}
	delete(p.vms, vm)
	return out
}

// allAllocations lists every allocation in the three pools.
func trialAllocations(t *testing.T, ctx context.Context, a *ipam.Allocator) []ipam.Allocation {
	t.Helper()
	var all []ipam.Allocation
	for _, c := range []netip.Prefix{trialRackACIDR, trialRackBCIDR, trialV6CIDR} {
		got, err := a.Allocations(ctx, c)
		if err != nil {
			t.Fatalf("Allocations %s: %v", c, err)
		}
		all = append(all, got...)
	}
	return all
}

func trialCheckClean(t *testing.T, ctx context.Context, a *ipam.Allocator, step string) *ipam.Report {
	t.Helper()
	rep, err := a.Check(ctx)
	if err != nil {
		t.Fatalf("%s: Check: %v", step, err)
	}
	if !rep.Clean() {
		t.Fatalf("%s: Check found problems: %v", step, rep.Problems)
	}
	return rep
}

// utilByName indexes Utilization by pool name.
func trialUtil(t *testing.T, ctx context.Context, a *ipam.Allocator) map[string]ipam.PoolUtilization {
	t.Helper()
	u, err := a.Utilization(ctx)
	if err != nil {
		t.Fatalf("Utilization: %v", err)
	}
	m := map[string]ipam.PoolUtilization{}
	for _, p := range u {
		m[p.Name] = p
		sum := new(big.Int).SetUint64(p.InUse)
		sum.Add(sum, p.Reserved)
		sum.Add(sum, new(big.Int).SetUint64(p.Cooling))
		sum.Add(sum, p.Free)
		if sum.Cmp(p.Capacity) != 0 {
			t.Errorf("pool %q: InUse %d + Reserved %s + Cooling %d + Free %s != Capacity %s",
				p.Name, p.InUse, p.Reserved, p.Cooling, p.Free, p.Capacity)
		}
	}
	return m
}

func trialReport(t *testing.T, ctx context.Context, a *ipam.Allocator, title string) {
	t.Helper()
	u, err := a.Utilization(ctx)
	if err != nil {
		t.Fatalf("Utilization: %v", err)
	}
	t.Logf("utilization: %s", title)
	for _, p := range u {
		t.Logf("  %-8q %-16s cap %-5s in use %-3d borrowed %d reserved %-3s cooling %-3d free %s disabled %t",
			p.Name, p.CIDR, p.Capacity, p.InUse, p.Borrowed, p.Reserved, p.Cooling, p.Free, p.Disabled)
		for _, b := range p.Blocks {
			t.Logf("      %-20s %-14s in use %d reserved %d cooling %d free %d borrowed %d",
				b.Prefix, b.Affinity, b.InUse, b.Reserved, b.Cooling, b.Free, b.Borrowed)
		}
	}
}

func TestVMProvisioner(t *testing.T) {
	ctx := context.Background()
	clk := &clock{now: time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)} // the provisioner's time, advanced by hand
	store := memstore.New()
	a, err := ipam.New(store, ipam.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	p := &trialProvisioner{t: t, ctx: ctx, a: a, vms: map[string][]trialNIC{}}

	// ---- Step 1: configuration, pools by rack, one IPv6 pool, labels.
	cfg := ipam.DefaultConfig()
	cfg.ReleaseCooldown = trialCooldown
	if err := a.SetConfig(ctx, cfg); err != nil {
		t.Fatalf("SetConfig: %v", err)
	}
	for _, pl := range []pool.Pool{
		{Name: trialRackA, CIDR: trialRackACIDR, BlockSize: 28, NodeSelector: `rack == "a"`},
		{Name: trialRackB, CIDR: trialRackBCIDR, BlockSize: 28, NodeSelector: `rack == "b"`},
		{Name: trialV6, CIDR: trialV6CIDR},
	} {
		if err := a.CreatePool(ctx, pl); err != nil {
			t.Fatalf("CreatePool %s: %v", pl.Name, err)
		}
	}
	for _, h := range slices.Sorted(maps.Keys(trialHosts)) {
		if err := a.SetNodeLabels(ctx, h, trialHosts[h]); err != nil {
			t.Fatalf("SetNodeLabels %s: %v", h, err)
		}
	}
	for name, c := range map[string]netip.Prefix{"gateways-rack-a": trialGwA, "gateways-rack-b": trialGwB} {
		if err := a.CreateReservation(ctx, ipam.Reservation{Name: name, CIDRs: []netip.Prefix{c}}); err != nil {
			t.Fatalf("CreateReservation %s: %v", name, err)
		}
	}
	got, err := a.Config(ctx)
	if err != nil || got.ReleaseCooldown != trialCooldown {
		t.Fatalf("Config = %+v, %v; want the cooldown set", got, err)
	}

	// ---- Step 2: VMs with two NICs, each an IPv4 and an IPv6 address from
	// its host's blocks, with attributes naming VM and NIC.
	placements := [][2]string{{"vm-1", "host-a1"}, {"vm-2", "host-a2"}, {"vm-3", "host-b1"}, {"vm-4", "host-a1"}}
	for _, pl := range placements {
		p.createVM(pl[0], pl[1])
	}
	rackOf := func(host string) (string, netip.Prefix) {
		if trialHosts[host]["rack"] == "a" {
			return trialRackA, trialRackACIDR
		}
		return trialRackB, trialRackBCIDR
	}
	seen := map[netip.Addr]string{}
	for vm, nics := range p.vms {
		for i, n := range nics {
			wantPool, wantCIDR := rackOf(n.host)
			if n.v4.Pool != wantPool || !wantCIDR.Contains(n.v4.Addr) {
				t.Errorf("%s nic%d on %s: IPv4 %s from pool %q, want from %s", vm, i, n.host, n.v4.Addr, n.v4.Pool, wantPool)
			}
			if n.v6.Pool != trialV6 || !trialV6CIDR.Contains(n.v6.Addr) {
				t.Errorf("%s nic%d: IPv6 %s from pool %q, want from %s", vm, i, n.v6.Addr, n.v6.Pool, trialV6)
			}
			for _, x := range []ipam.Assigned{n.v4, n.v6} {
				if prev, dup := seen[x.Addr]; dup {
					t.Errorf("%s given to both %s and %s", x.Addr, prev, n.handle)
				}
				seen[x.Addr] = n.handle
				if !x.Block.Contains(x.Addr) {
					t.Errorf("%s: block %s does not hold address", n.handle, x.Block)
				}
				if trialGwA.Contains(x.Addr) || trialGwB.Contains(x.Addr) {
					t.Errorf("%s: automatic address %s inside a gateway reservation", n.handle, x.Addr)
				}
				// From the host's blocks: the block is affine to the host.
				own, err := a.Owner(ctx, x.Addr)
				if err != nil {
					t.Fatalf("Owner %s: %v", x.Addr, err)
				}
				if own.Handle != n.handle || own.Attrs["vm"] != vm || own.Attrs["nic"] != fmt.Sprintf("nic%d", i) ||
					own.Attrs[ipam.AttrNode] != n.host || own.Seq != x.Seq || own.Block != x.Block {
					t.Errorf("Owner(%s) = %+v, want handle %s vm %s nic%d node %s seq %d", x.Addr, own, n.handle, vm, i, n.host, x.Seq)
				}
				if own.BlockAffinity != block.Host(n.host) || own.Borrowed() {
					t.Errorf("%s: block %s affinity %s (borrowed %t), want the host's own block", x.Addr, own.Block, own.BlockAffinity, own.Borrowed())
				}
			}
		}
	}
	// A retried create (NewHandle) assigns nothing more, and the first
	// answer can be read back.
	_, err = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: trialHandle("vm-1", 0), NewHandle: true, Node: "host-a1"})
	if !errors.Is(err, ipam.ErrHandleExists) {
		t.Fatalf("retried create of vm-1 nic0: err %v, want ErrHandleExists", err)
	}
	first, err := a.AssignedByHandle(ctx, trialHandle("vm-1", 0))
	if err != nil || len(first.IPv4) != 1 || first.IPv4[0] != p.vms["vm-1"][0].v4 || len(first.IPv6) != 1 || first.IPv6[0] != p.vms["vm-1"][0].v6 {
		t.Fatalf("AssignedByHandle vm-1 nic0 = %+v, %v; want %+v %+v", first, err, p.vms["vm-1"][0].v4, p.vms["vm-1"][0].v6)
	}
	trialCheckClean(t, ctx, a, "after step 2")

	// ---- Step 3: fixed addresses, and gateways kept out.
	// The operator picks addresses in rack b's pool and the IPv6 pool; the
	// provisioner places the VM on host-b1.
	fixed := [2][2]netip.Addr{
		{netip.MustParseAddr("10.2.0.100"), netip.MustParseAddr("fd00:77::f00")},
		{netip.MustParseAddr("10.2.0.101"), netip.MustParseAddr("fd00:77::f01")},
	}
	fnics, err := p.createFixedVM("vm-fixed", "host-b1", fixed, false)
	if err != nil {
		t.Fatalf("fixed VM: %v", err)
	}
	for i, n := range fnics {
		if n.v4.Addr != fixed[i][0] || n.v6.Addr != fixed[i][1] || n.v4.Pool != trialRackB || n.v6.Pool != trialV6 {
			t.Errorf("fixed nic%d: got %s (%s) %s (%s), want %s %s", i, n.v4.Addr, n.v4.Pool, n.v6.Addr, n.v6.Pool, fixed[i][0], fixed[i][1])
		}
		own, err := a.Owner(ctx, n.v4.Addr)
		if err != nil || own.Handle != n.handle || own.Attrs["vm"] != "vm-fixed" || own.Attrs[ipam.AttrNode] != "host-b1" {
			t.Errorf("Owner(%s) = %+v, %v", n.v4.Addr, own, err)
		}
	}
	// A second VM asking for a taken address gets nothing, not even its
	// free IPv6 one (all or none).
	_, err = a.AssignIPs(ctx, ipam.AssignIPsArgs{
		Addrs: []netip.Addr{netip.MustParseAddr("fd00:77::f10"), fixed[0][0]}, Handle: "vm.clash.nic0", NewHandle: true, Node: "host-b1",
	})
	if !errors.Is(err, ipam.ErrInUse) {
		t.Fatalf("AssignIPs of a taken address: %v, want ErrInUse", err)
	}
	var ae *ipam.AddrError
	if !errors.As(err, &ae) || ae.Addr != fixed[0][0] {
		t.Errorf("AssignIPs error %v does not name %s in an *AddrError", err, fixed[0][0])
	}
	if _, err := a.Owner(ctx, netip.MustParseAddr("fd00:77::f10")); !errors.Is(err, ipam.ErrNotAllocated) {
		t.Errorf("the clash's IPv6 address stayed assigned: %v", err)
	}
	if _, err := a.IPsByHandle(ctx, "vm.clash.nic0"); !errors.Is(err, ipam.ErrHandleNotFound) {
		t.Errorf("the clash's handle stayed: %v", err)
	}
	// The operator puts rack a's gateway at 10.1.0.1 on purpose: AssignIP
	// does not consult reservations.
	gw, err := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: netip.MustParseAddr("10.1.0.1"), Handle: "gateway.rack-a", Node: "host-a1",
		Attrs: map[string]string{"role": "gateway"}})
	if err != nil {
		t.Fatalf("AssignIP gateway: %v", err)
	}
	t.Logf("gateway %s in block %s seq %d", gw.Addr, gw.Block, gw.Seq)
	trialCheckClean(t, ctx, a, "after step 3")
	trialReport(t, ctx, a, "after step 3")

	// ---- Step 4: VMs deleted; cooldown; late releases.
	vm1 := p.vms["vm-1"]
	released := p.deleteVM("vm-1")
	if len(released) != 4 {
		t.Fatalf("deleting vm-1 released %v, want 4 addresses", released)
	}
	for _, n := range vm1 {
		for _, x := range []ipam.Assigned{n.v4, n.v6} {
			if _, err := a.Owner(ctx, x.Addr); !errors.Is(err, ipam.ErrNotAllocated) {
				t.Errorf("%s still assigned after vm-1's deletion: %v", x.Addr, err)
			}
			// Not to be reused for a while, even on purpose.
			_, err := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: x.Addr, Handle: "vm.thief.nic0", Node: n.host})
			if !errors.Is(err, ipam.ErrCoolingDown) {
				t.Errorf("AssignIP of %s just released: %v, want ErrCoolingDown", x.Addr, err)
			}
		}
	}
	u := trialUtil(t, ctx, a)
	if u[trialRackA].Cooling != 2 || u[trialV6].Cooling != 2 {
		t.Errorf("cooling: rack-a %d, v6 %d; want 2 and 2", u[trialRackA].Cooling, u[trialV6].Cooling)
	}
	// New VMs on the same host do not get them.
	cooling := map[netip.Addr]bool{}
	for _, n := range vm1 {
		cooling[n.v4.Addr] = true
		cooling[n.v6.Addr] = true
	}
	for i := range 3 {
		vm := fmt.Sprintf("vm-new-%d", i)
		for _, n := range p.createVM(vm, "host-a1") {
			if cooling[n.v4.Addr] || cooling[n.v6.Addr] {
				t.Errorf("%s got a cooling address: %s %s", vm, n.v4.Addr, n.v6.Addr)
			}
		}
	}

	// vm-fixed is deleted and re-created with its own fixed addresses at
	// once (IgnoreCooldown); a duplicate of the old deletion's release of
	// nic0 arrives late and must not free the new assignment.
	oldFixed := p.vms["vm-fixed"]
	p.deleteVM("vm-fixed")
	if _, err := p.createFixedVM("vm-fixed", "host-b1", fixed, false); !errors.Is(err, ipam.ErrCoolingDown) {
		t.Errorf("re-create without IgnoreCooldown: %v, want ErrCoolingDown", err)
	}
	newFixed, err := p.createFixedVM("vm-fixed", "host-b1", fixed, true)
	if err != nil {
		t.Fatalf("re-create vm-fixed with IgnoreCooldown: %v", err)
	}
	if newFixed[0].v4.Seq == oldFixed[0].v4.Seq {
		t.Fatalf("the new assignment of %s has the old sequence number %d", newFixed[0].v4.Addr, newFixed[0].v4.Seq)
	}
	late := []ipam.Release{
		{Addr: oldFixed[0].v4.Addr, Handle: oldFixed[0].handle, Seq: oldFixed[0].v4.Seq},
		{Addr: oldFixed[0].v6.Addr, Handle: oldFixed[0].handle, Seq: oldFixed[0].v6.Seq},
	}
	rr, err := a.ReleaseIPs(ctx, late...)
	if !errors.Is(err, ipam.ErrSeqMismatch) || len(rr.Released) != 0 {
		t.Errorf("late release of the old vm-fixed nic0: released %v, err %v; want nothing, ErrSeqMismatch", rr.Released, err)
	}
	for _, x := range []ipam.Assigned{newFixed[0].v4, newFixed[0].v6} {
		own, err := a.Owner(ctx, x.Addr)
		if err != nil || own.Seq != x.Seq || own.Handle != newFixed[0].handle {
			t.Errorf("after the late release, Owner(%s) = %+v, %v; want the new assignment", x.Addr, own, err)
		}
	}
	// After the cooldown, vm-1's old IPv4 address goes to a new VM; the old
	// VM's late release (handle and seq) must not free it.
	clk.Advance(trialCooldown + time.Second)
	old := vm1[0]
	res, err := a.AssignIPs(ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{old.v4.Addr, old.v6.Addr}, Handle: "vm.heir.nic0", NewHandle: true, Node: "host-a1",
		Attrs: map[string]string{"vm": "heir", "nic": "nic0"}})
	if err != nil {
		t.Fatalf("AssignIPs of vm-1's addresses after the cooldown: %v", err)
	}
	p.vms["heir"] = []trialNIC{{handle: "vm.heir.nic0", host: "host-a1", v4: res.IPv4[0], v6: res.IPv6[0]}}
	rr, err = a.ReleaseIPs(ctx, ipam.Release{Addr: old.v4.Addr, Handle: old.handle, Seq: old.v4.Seq},
		ipam.Release{Addr: old.v6.Addr, Seq: old.v6.Seq})
	if err == nil || len(rr.Released) != 0 {
		t.Errorf("late release of vm-1's addresses: released %v, err %v; want refused", rr.Released, err)
	}
	if !errors.Is(err, ipam.ErrHandleMismatch) || !errors.Is(err, ipam.ErrSeqMismatch) {
		t.Errorf("late release error %v: want ErrHandleMismatch (v4, wrong handle) and ErrSeqMismatch (v6, seq only)", err)
	}
	for _, x := range res.IPv4 {
		if own, err := a.Owner(ctx, x.Addr); err != nil || own.Handle != "vm.heir.nic0" {
			t.Errorf("Owner(%s) = %+v, %v; want the heir", x.Addr, own, err)
		}
	}
	trialCheckClean(t, ctx, a, "after step 4")

	// Delete vm-3 now so that some addresses cool across the restart.
	vm3 := p.vms["vm-3"]
	p.deleteVM("vm-3")

	// ---- Step 5: restart: save, load into a new allocator.
	snap := filepath.Join(t.TempDir(), "ipam.snap")
	// On its very first start the provisioner finds no snapshot, and can
	// tell that from a damaged one.
	if _, err := memstore.LoadFile(snap); !errors.Is(err, fs.ErrNotExist) || errors.Is(err, memstore.ErrSnapshot) {
		t.Fatalf("LoadFile of a missing file: %v, want fs.ErrNotExist", err)
	}
	beforeAllocs := trialAllocations(t, ctx, a)
	beforeUtil, err := a.Utilization(ctx)
	if err != nil {
		t.Fatal(err)
	}
	beforeRes, _ := a.Reservations(ctx)
	beforeLabels, _ := a.AllNodeLabels(ctx)
	beforePools, _ := a.Pools(ctx)
	if err := store.SaveFile(snap); err != nil {
		t.Fatalf("SaveFile: %v", err)
	}
	store2, err := memstore.LoadFile(snap)
	if err != nil {
		t.Fatalf("LoadFile: %v", err)
	}
	a2, err := ipam.New(store2, ipam.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	a = a2
	p.a = a2
	trialCheckClean(t, ctx, a, "after restart")
	if got := trialAllocations(t, ctx, a); !slices.EqualFunc(got, beforeAllocs, func(x, y ipam.Allocation) bool {
		return x.Addr == y.Addr && x.Handle == y.Handle && x.Seq == y.Seq && x.Block == y.Block &&
			x.BlockAffinity == y.BlockAffinity && maps.Equal(x.Attrs, y.Attrs)
	}) {
		t.Errorf("allocations after restart:\n%+v\nwant\n%+v", got, beforeAllocs)
	}
	afterUtil, err := a.Utilization(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(afterUtil) != fmt.Sprint(beforeUtil) {
		t.Errorf("utilization after restart:\n%v\nwant\n%v", afterUtil, beforeUtil)
	}
	if c, err := a.Config(ctx); err != nil || c != cfg {
		t.Errorf("config after restart %+v, %v; want %+v", c, err, cfg)
	}
	if r, _ := a.Reservations(ctx); fmt.Sprint(r) != fmt.Sprint(beforeRes) {
		t.Errorf("reservations after restart %v, want %v", r, beforeRes)
	}
	if l, _ := a.AllNodeLabels(ctx); fmt.Sprint(l) != fmt.Sprint(beforeLabels) {
		t.Errorf("labels after restart %v, want %v", l, beforeLabels)
	}
	if ps, _ := a.Pools(ctx); fmt.Sprint(ps) != fmt.Sprint(beforePools) {
		t.Errorf("pools after restart %v, want %v", ps, beforePools)
	}
	// vm-3's addresses still cool after the restart.
	for _, n := range vm3 {
		if _, err := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: n.v4.Addr, Handle: "vm.thief.nic0", Node: n.host}); !errors.Is(err, ipam.ErrCoolingDown) {
			t.Errorf("after restart, AssignIP of cooling %s: %v, want ErrCoolingDown", n.v4.Addr, err)
		}
	}
	// Sequence numbers from before the restart still guard releases, and
	// still release what they name.
	heir := p.vms["heir"][0]
	if _, err := a.ReleaseIPs(ctx, ipam.Release{Addr: heir.v4.Addr, Handle: heir.handle, Seq: heir.v4.Seq + 1}); !errors.Is(err, ipam.ErrSeqMismatch) {
		t.Errorf("after restart, release with a wrong seq: %v, want ErrSeqMismatch", err)
	}
	rr, err = a.ReleaseIPs(ctx, ipam.Release{Addr: heir.v6.Addr, Handle: heir.handle, Seq: heir.v6.Seq})
	if err != nil || !slices.Equal(rr.Released, []netip.Addr{heir.v6.Addr}) {
		t.Errorf("after restart, release of %s with its seq from before: %+v, %v", heir.v6.Addr, rr, err)
	}
	// The NewHandle guard survives: vm-2's create retried after the
	// restart assigns nothing.
	if _, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: trialHandle("vm-2", 0), NewHandle: true, Node: "host-a2"}); !errors.Is(err, ipam.ErrHandleExists) {
		t.Errorf("after restart, retried create of vm-2: %v, want ErrHandleExists", err)
	}
	// New VMs after the restart get fresh addresses, from the same blocks.
	taken := map[netip.Addr]bool{}
	for _, x := range beforeAllocs {
		taken[x.Addr] = true
	}
	for _, n := range p.createVM("vm-5", "host-a2") {
		if taken[n.v4.Addr] || taken[n.v6.Addr] {
			t.Errorf("after restart vm-5 got an address in use: %s %s", n.v4.Addr, n.v6.Addr)
		}
		if own, _ := a.Owner(ctx, n.v4.Addr); own.BlockAffinity != block.Host("host-a2") {
			t.Errorf("after restart vm-5's %s is in a block of %s", n.v4.Addr, own.BlockAffinity)
		}
	}
	trialCheckClean(t, ctx, a, "after restart and new VMs")

	// ---- Step 6: host-a2 is decommissioned.
	// Before that, the operator pinned a VM of host-a1 to an address that
	// lies in host-a2's IPv4 block: AssignIP does not mind (it borrows).
	a2Block := p.vms["vm-2"][0].v4.Block
	pinnedAddr := a2Block.Addr()
	for range 14 { // the block's fifteenth address
		pinnedAddr = pinnedAddr.Next()
	}
	pinned, err := a.AssignIP(ctx, ipam.AssignIPArgs{Addr: pinnedAddr, Handle: "vm.pinned.nic0", NewHandle: true, Node: "host-a1",
		Attrs: map[string]string{"vm": "pinned", "nic": "nic0"}})
	if err != nil {
		t.Fatalf("AssignIP pinned %s: %v", pinnedAddr, err)
	}
	if own, _ := a.Owner(ctx, pinned.Addr); !own.Borrowed() || own.BlockAffinity != block.Host("host-a2") {
		t.Errorf("pinned %s: %+v, want borrowed from host-a2's block", pinned.Addr, own)
	}
	var a2VMs []string
	for vm, nics := range p.vms {
		if nics[0].host == "host-a2" {
			a2VMs = append(a2VMs, vm)
		}
	}
	// What does the store say is on host-a2? (Everything assigned for it.)
	var onHost []netip.Addr
	for _, x := range trialAllocations(t, ctx, a) {
		if x.Attrs[ipam.AttrNode] == "host-a2" {
			onHost = append(onHost, x.Addr)
		}
	}
	var freed []netip.Addr
	for _, vm := range a2VMs {
		freed = append(freed, p.deleteVM(vm)...)
	}
	slices.SortFunc(freed, netip.Addr.Compare)
	if !slices.Equal(freed, onHost) {
		t.Errorf("released on host-a2 %v, want %v", freed, onHost)
	}
	// Give up its blocks, asking for empty ones: the pinned address keeps
	// the IPv4 block, and the error says which.
	blocks, err := a.ReleaseHostAffinities(ctx, "host-a2", true)
	var blockErr *ipam.AddrError
	if !errors.Is(err, ipam.ErrBlockNotEmpty) || !errors.As(err, &blockErr) || blockErr.Addr != a2Block.Addr() {
		t.Fatalf("ReleaseHostAffinities host-a2 (require empty): %v, want ErrBlockNotEmpty naming %s", err, a2Block)
	}
	if len(blocks) != 1 || !blocks[0].Addr().Is6() {
		t.Errorf("ReleaseHostAffinities host-a2 (require empty) gave up %v, want its IPv6 block only", blocks)
	}
	// The provisioner decides the pinned VM stays: the block loses its
	// affinity and keeps the address.
	more, err := a.ReleaseHostAffinities(ctx, "host-a2", false)
	if err != nil || !slices.Equal(more, []netip.Prefix{a2Block}) {
		t.Fatalf("ReleaseHostAffinities host-a2: %v, %v; want %s", more, err, a2Block)
	}
	blocks = append(more, blocks...)
	if own, err := a.Owner(ctx, pinned.Addr); err != nil || own.Handle != "vm.pinned.nic0" || !own.BlockAffinity.IsZero() {
		t.Errorf("pinned address after host-a2's removal: %+v, %v", own, err)
	}
	if err := a.SetNodeLabels(ctx, "host-a2", nil); err != nil {
		t.Fatal(err)
	}
	rep := trialCheckClean(t, ctx, a, "after decommission")
	// The blocks still cool (their addresses were just released): kept,
	// without affinity.
	if !slices.Equal(rep.Cooling, blocks[1:]) {
		t.Errorf("Report.Cooling %v, want host-a2's IPv6 block %v", rep.Cooling, blocks[1:])
	}
	for _, pu := range trialUtil(t, ctx, a) {
		for _, b := range pu.Blocks {
			if b.Affinity == block.Host("host-a2") {
				t.Errorf("block %s still affine to host-a2", b.Prefix)
			}
		}
	}
	if l, _ := a.NodeLabels(ctx, "host-a2"); l != nil {
		t.Errorf("host-a2 labels still stored: %v", l)
	}

	// ---- Step 7: utilization per pool.
	trialReport(t, ctx, a, "after decommission")
	u = trialUtil(t, ctx, a)
	all := trialAllocations(t, ctx, a)
	count := map[string]uint64{}
	for _, x := range all {
		switch {
		case trialRackACIDR.Contains(x.Addr):
			count[trialRackA]++
		case trialRackBCIDR.Contains(x.Addr):
			count[trialRackB]++
		default:
			count[trialV6]++
		}
	}
	for _, name := range []string{trialRackA, trialRackB, trialV6} {
		if u[name].InUse != count[name] {
			t.Errorf("pool %s: InUse %d, Allocations lists %d", name, u[name].InUse, count[name])
		}
	}
	// The gateway reservations count as reserved (8 each; in rack a one of
	// them is the gateway, in use).
	if u[trialRackB].Reserved.Int64() != 8 || u[trialRackA].Reserved.Int64() != 7 {
		t.Errorf("reserved: rack-a %s, rack-b %s; want 7 and 8", u[trialRackA].Reserved, u[trialRackB].Reserved)
	}

	// ---- Finally: fill rack a; automatic assignment never hands out the
	// gateways, nor a cooling address.
	clk.Advance(time.Minute)
	coolingNow := slices.Clone(freed)
	fill, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1000, Handle: "filler", Node: "host-a1", Partial: true})
	var fillErr *ipam.AssignError
	if !errors.As(err, &fillErr) || !errors.Is(err, ipam.ErrNoSpace) {
		t.Fatalf("fill: %v, want an *AssignError matching ErrNoSpace", err)
	}
	for _, x := range fill.IPv4 {
		if trialGwA.Contains(x.Addr) {
			t.Errorf("fill got gateway address %s", x.Addr)
		}
		if slices.Contains(coolingNow, x.Addr) {
			t.Errorf("fill got cooling address %s", x.Addr)
		}
	}
	u = trialUtil(t, ctx, a)
	if u[trialRackA].Free.Sign() != 0 {
		t.Errorf("after the fill rack a has %s free", u[trialRackA].Free)
	}
	t.Logf("fill got %d, short %d; rack a: in use %d, reserved %s, cooling %d", len(fill.IPv4), fillErr.Short4, u[trialRackA].InUse, u[trialRackA].Reserved, u[trialRackA].Cooling)
	trialCheckClean(t, ctx, a, "after fill")

	// ---- Later: the cooldown is over. host-a2's empty IPv6 block, kept
	// while it cooled, is no problem, and a collector pass deletes it (the
	// provisioner has no leaks to find: every owner is alive).
	clk.Advance(trialCooldown)
	rep = trialCheckClean(t, ctx, a, "after the cooldown")
	if !slices.Equal(rep.Cooled, blocks[1:]) || len(rep.Cooling) != 0 {
		t.Errorf("after the cooldown: Cooling %v, Cooled %v; want host-a2's IPv6 block cooled", rep.Cooling, rep.Cooled)
	}
	col, err := ipam.NewCollector(a, func(context.Context, ipam.Allocation) (bool, error) { return true, nil },
		ipam.CollectorOptions{KeepEmptyBlocks: true})
	if err != nil {
		t.Fatal(err)
	}
	cr, err := col.Collect(ctx)
	if err != nil || !slices.Equal(cr.DeletedBlocks, blocks[1:]) || len(cr.Released) != 0 {
		t.Errorf("collect: %+v, %v; want only %v deleted", cr, err, blocks[1:])
	}
	rep = trialCheckClean(t, ctx, a, "after the collector")
	if len(rep.Cooled) != 0 {
		t.Errorf("after the collector, Cooled %v", rep.Cooled)
	}
	trialReport(t, ctx, a, "at the end")
}
