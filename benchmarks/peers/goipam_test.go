package peers

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"

	goipam "github.com/metal-stack/go-ipam"

	"github.com/carve-ipam/carve/benchmarks/internal/workload"
)

// goipamLib is github.com/metal-stack/go-ipam with its memory storage. It
// has no nodes or owners: one prefix per pool, addresses acquired and
// released by value.
var goipamLib = library{
	name: "goipam",
	allocRelease: func(tb testing.TB, p workload.Pool, fill int) func(int) error {
		ipam, cidr := goipamFilled(tb, p, workload.FillCount(fill))
		ctx := context.Background()
		return func(int) error {
			ip, err := ipam.AcquireIP(ctx, cidr)
			if err != nil {
				return err
			}
			return ipam.ReleaseIPFromPrefix(ctx, cidr, ip.IP.String())
		}
	},
	batch: func(tb testing.TB, p workload.Pool, n int) func() error {
		ipam, cidr := goipamFilled(tb, p, 0)
		ctx := context.Background()
		ips := make([]string, n)
		return func() error {
			for i := range ips {
				ip, err := ipam.AcquireIP(ctx, cidr)
				if err != nil {
					return err
				}
				ips[i] = ip.IP.String()
			}
			for _, ip := range ips {
				if err := ipam.ReleaseIPFromPrefix(ctx, cidr, ip); err != nil {
					return err
				}
			}
			return nil
		}
	},
	// A block is a child prefix: go-ipam's way to hand a range to an owner.
	claim: func(tb testing.TB, p workload.Pool, fill int) func(int) error {
		ctx := context.Background()
		ipam := goipam.New(ctx)
		parent, err := ipam.NewPrefix(ctx, p.CIDR.String())
		if err != nil {
			tb.Fatal(err)
		}
		bits := uint8(p.CIDR.Addr().BitLen() - bitsLog2(p.BlockAddrs()))
		for range workload.FillCount(fill) / p.BlockAddrs() {
			if _, err := ipam.AcquireChildPrefix(ctx, parent.Cidr, bits); err != nil {
				tb.Fatal(err)
			}
		}
		return func(int) error {
			child, err := ipam.AcquireChildPrefix(ctx, parent.Cidr, bits)
			if err != nil {
				return err
			}
			return ipam.ReleaseChildPrefix(ctx, child)
		}
	},
	heapPerAddr: func(tb testing.TB, p workload.Pool, _ workload.Handles) float64 {
		ctx := context.Background()
		ipam := goipam.New(ctx)
		prefix, err := ipam.NewPrefix(ctx, p.CIDR.String())
		if err != nil {
			tb.Fatal(err)
		}
		dump := goipamDump(tb, ipam, prefix.Cidr, workload.HeapAddrs)
		if _, err := ipam.DeletePrefix(ctx, prefix.Cidr); err != nil {
			tb.Fatal(err)
		}
		grew := workload.HeapGrowth(func() any {
			if err := ipam.Load(ctx, dump); err != nil {
				tb.Fatal(err)
			}
			return ipam
		})
		return float64(grew) / workload.HeapAddrs
	},
	handles: []workload.Handles{noHandles},
}

// goipamFilled returns a go-ipam with pool p holding n acquired addresses,
// and p's prefix as go-ipam spells it.
func goipamFilled(tb testing.TB, p workload.Pool, n int) (goipam.Ipamer, string) {
	tb.Helper()
	ctx := context.Background()
	ipam := goipam.New(ctx)
	prefix, err := ipam.NewPrefix(ctx, p.CIDR.String())
	if err != nil {
		tb.Fatal(err)
	}
	if n > 0 {
		dump := goipamDump(tb, ipam, prefix.Cidr, n)
		if _, err := ipam.DeletePrefix(ctx, prefix.Cidr); err != nil {
			tb.Fatal(err)
		}
		if err := ipam.Load(ctx, dump); err != nil {
			tb.Fatal(err)
		}
	}
	return ipam, prefix.Cidr
}

// goipamDump returns a dump of ipam (which must hold the single, empty
// prefix cidr) in which the first n addresses after cidr's network address
// are acquired: the state n AcquireIP calls leave, since go-ipam hands out
// the lowest free address. Acquiring them one by one would take minutes,
// because every AcquireIP copies the whole prefix twice;
// TestGoipamFillIsAcquire checks the shortcut against the real thing.
func goipamDump(tb testing.TB, ipam goipam.Ipamer, cidr string, n int) string {
	tb.Helper()
	dump, err := ipam.Dump(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	var prefixes []map[string]json.RawMessage
	if err := json.Unmarshal([]byte(dump), &prefixes); err != nil {
		tb.Fatal(err)
	}
	if len(prefixes) != 1 {
		tb.Fatalf("go-ipam dump holds %d prefixes, want 1", len(prefixes))
	}
	var ips map[string]bool
	if err := json.Unmarshal(prefixes[0]["IPs"], &ips); err != nil {
		tb.Fatalf("go-ipam dump: IPs: %v", err)
	}
	addr := netip.MustParsePrefix(cidr).Addr()
	for range n {
		addr = addr.Next()
		ips[addr.String()] = true
	}
	if prefixes[0]["IPs"], err = json.Marshal(ips); err != nil {
		tb.Fatal(err)
	}
	out, err := json.Marshal(prefixes)
	if err != nil {
		tb.Fatal(err)
	}
	return string(out)
}

// bitsLog2 returns log2(n) for a power of two n.
func bitsLog2(n int) int {
	b := 0
	for 1<<b < n {
		b++
	}
	if 1<<b != n {
		panic(fmt.Sprintf("%d is not a power of two", n))
	}
	return b
}
