package ipam_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
)

func faultEnv(t *testing.T) *env {
	e := newEnv(t, v4pool("v4", "10.0.0.0/24", 28),
		pool.Pool{Name: "v6", CIDR: mustPrefix("fd00::/120"), BlockSize: 124},
		pool.Pool{Name: "lb", CIDR: mustPrefix("10.1.0.0/24"), BlockSize: 28, AllowedUses: []pool.Use{pool.UseLoadBalancer}})
	return e
}

// TestSettleFailureThenShort: a batch whose reservation outruns the
// blocks (stale cache) must lower its spare (settle); if that write fails
// and the request then comes up short, the rollback leaves the spare in
// the record. The request must report its shortfall, not ErrHandleExists
// about its own record.
func TestSettleFailureThenShort(t *testing.T) {
	var failed string
	setup := func(f storetest.Fault) (*env, *ipam.Allocator, *storetest.FaultyStore) {
		e := newEnv(t, v4pool("v4", "10.0.0.0/26", 28))
		fs := storetest.NewFaultyStore(e.store, f)
		// Names the failed operation (the hook runs before fs counts it).
		hs := &hookStore{Store: fs, hook: func(op string, kind ipam.Kind, key string) {
			if f.At != 0 && fs.Ops()+1 == f.At {
				failed = fmt.Sprintf("%s %s %q", op, kind, key)
			}
		}}
		a, err := ipam.New(hs, ipam.Options{}) // no Generations: cached blocks may be stale
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 40, Handle: "warm", Node: "node-1"}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.ReleaseByHandle(e.ctx, "warm"); err != nil {
			t.Fatal(err)
		}
		// Another allocator takes some of node-1's free addresses.
		if _, err := e.a.AutoAssign(e.ctx, ipam.AutoAssignArgs{Num4: 20, Handle: "other", Node: "node-1"}); err != nil {
			t.Fatal(err)
		}
		return e, a, fs
	}
	args := ipam.AutoAssignArgs{Num4: 60, Handle: "h", Node: "node-1", NewHandle: true}
	_, a0, fs0 := setup(storetest.Fault{})
	base := fs0.Ops()
	_, err := a0.AutoAssign(t.Context(), args)
	t.Logf("clean run: %v, %d ops", err, fs0.Ops()-base)
	n := fs0.Ops() - base
	for at := int64(1); at <= n; at++ {
		e, a, _ := setup(storetest.Fault{At: base + at, Mode: storetest.FailOnce})
		_, err := a.AutoAssign(e.ctx, args)
		if errors.Is(err, ipam.ErrHandleExists) {
			rec, _ := e.store.Get(e.ctx, ipam.KindHandle, "h")
			cnt, _ := ipam.DecodeHandle(rec.Value)
			t.Fatalf("one failed write (op +%d, %s): alone on the store, the request reports ErrHandleExists about its own leftover record %v: %v", at, failed, cnt, err)
		}
	}
}
