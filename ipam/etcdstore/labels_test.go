package etcdstore_test

import (
	"net/netip"
	"testing"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
	"github.com/carve-ipam/carve/pool"
)

// TestStoredLabelsAcrossClients: labels one process stores serve another
// process's requests that give none, and a change reaches them once the
// watch delivers it (the other process caches the labels under the
// store's generation of node records).
func TestStoredLabelsAcrossClients(t *testing.T) {
	prefix := freshPrefix()
	ctx := t.Context()
	newAlloc := func() *ipam.Allocator {
		a, err := ipam.New(newStore(t, newClient(t), etcdstore.Options{Prefix: prefix}), ipam.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	controller, agent := newAlloc(), newAlloc()
	for _, p := range []pool.Pool{
		{Name: "rack-a", CIDR: netip.MustParsePrefix("10.0.0.0/24"), BlockSize: 28, NodeSelector: `rack == "a"`},
		{Name: "rack-b", CIDR: netip.MustParsePrefix("10.0.1.0/24"), BlockSize: 28, NodeSelector: `rack == "b"`},
	} {
		if err := controller.CreatePool(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	poolOf := func() string {
		res, err := agent.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "pod", Node: "n1"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := agent.ReleaseByHandle(ctx, "pod"); err != nil {
			t.Fatal(err)
		}
		return res.IPv4[0].Pool
	}
	if err := controller.SetNodeLabels(ctx, "n1", map[string]string{"rack": "a"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the agent serves n1 from rack-a", func() bool { return poolOf() == "rack-a" })
	if err := controller.SetNodeLabels(ctx, "n1", map[string]string{"rack": "b"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the agent follows n1 to rack-b", func() bool { return poolOf() == "rack-b" })
	for range 5 {
		if got := poolOf(); got != "rack-b" {
			t.Fatalf("after the change reached it, the agent served n1 from %s", got)
		}
	}
}
