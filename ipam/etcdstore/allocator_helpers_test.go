package etcdstore_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
)

// revEAllocators returns n allocators on one fresh prefix, each with its
// own etcd client and store, as n processes would have.
func revEAllocators(t *testing.T, n int, opts etcdstore.Options) (string, []*ipam.Allocator, []*etcdstore.Store) {
	t.Helper()
	prefix := freshPrefix()
	opts.Prefix = prefix
	as := make([]*ipam.Allocator, n)
	ss := make([]*etcdstore.Store, n)
	for i := range as {
		s := newStore(t, newClient(t), opts)
		a, err := ipam.New(s, ipam.Options{})
		if err != nil {
			t.Fatal(err)
		}
		as[i], ss[i] = a, s
	}
	return prefix, as, ss
}

// revECheckClean runs Check and fails the test on any problem.
func revECheckClean(t *testing.T, ctx context.Context, a *ipam.Allocator, what string) *ipam.Report {
	t.Helper()
	r, err := a.Check(ctx)
	if err != nil {
		t.Fatalf("%s: Check: %v", what, err)
	}
	if !r.Clean() {
		t.Errorf("%s: Check finds %d problems:", what, len(r.Problems))
		for i, p := range r.Problems {
			if i == 20 {
				break
			}
			t.Errorf("  %+v", p)
		}
	}
	return r
}

func revESorted(s []netip.Addr) []netip.Addr {
	s = slices.Clone(s)
	slices.SortFunc(s, func(a, b netip.Addr) int { return a.Compare(b) })
	return s
}
