package peers

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ipam/service/ipallocator"

	"github.com/carve-ipam/carve/benchmarks/internal/workload"
)

// ciliumLib is github.com/cilium/ipam/service/ipallocator: one bitmap over
// a CIDR (capped at 65,536 addresses), no owners, no store.
var ciliumLib = library{
	name: "cilium",
	allocRelease: func(tb testing.TB, p workload.Pool, fill int) func(int) error {
		r := ciliumFilled(tb, p, workload.FillCount(fill))
		return func(int) error {
			ip, err := r.AllocateNext()
			if err != nil {
				return err
			}
			return r.Release(ip)
		}
	},
	batch: func(tb testing.TB, p workload.Pool, n int) func() error {
		r := ciliumFilled(tb, p, 0)
		ips := make([]net.IP, n)
		return func() error {
			for i := range ips {
				ip, err := r.AllocateNext()
				if err != nil {
					return err
				}
				ips[i] = ip
			}
			for _, ip := range ips {
				if err := r.Release(ip); err != nil {
					return err
				}
			}
			return nil
		}
	},
	heapPerAddr: func(tb testing.TB, p workload.Pool, _ workload.Handles) float64 {
		grew := workload.HeapGrowth(func() any {
			return ciliumFilled(tb, p, workload.HeapAddrs)
		})
		return float64(grew) / workload.HeapAddrs
	},
	handles: []workload.Handles{noHandles},
}

// ciliumFilled returns a range over p with n addresses allocated by
// AllocateNext, which picks them at random.
func ciliumFilled(tb testing.TB, p workload.Pool, n int) *ipallocator.Range {
	tb.Helper()
	r, err := ipallocator.NewCIDRRange(ipNet(p.CIDR))
	if err != nil {
		tb.Fatal(err)
	}
	for range n {
		if _, err := r.AllocateNext(); err != nil {
			tb.Fatalf("cilium: fill %s with %d addresses: %v", p.CIDR, n, err)
		}
	}
	return r
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
