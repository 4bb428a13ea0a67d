// Command example runs carve on etcd: two allocators, standing for two
// nodes each with its own etcd client, share one pool kept in etcd. They
// assign and release addresses for pods, and the example prints who holds
// which block and how full the pool is; then it cleans up after itself.
//
//	cd ipam/etcdstore && go run ./example
//	go run ./example -endpoints http://127.0.0.1:2379
//
// With no endpoint it starts an etcd member inside the process, with its
// data in a temporary directory that it removes at the end.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
	"github.com/carve-ipam/carve/ipam/etcdstore/internal/embedetcd"
	"github.com/carve-ipam/carve/pool"
)

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated etcd client URLs; empty starts an embedded etcd")
	prefix := flag.String("prefix", "/carve-example/", "key prefix of the example's records")
	flag.Parse()
	cfg := config{prefix: *prefix}
	if *endpoints != "" {
		cfg.endpoints = strings.Split(*endpoints, ",")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

type config struct {
	endpoints []string // empty: start an embedded etcd
	dataDir   string   // of the embedded etcd; empty: a temporary directory
	prefix    string
}

var examplePool = pool.Pool{Name: "example", CIDR: netip.MustParsePrefix("10.42.0.0/24"), BlockSize: 28}

func run(ctx context.Context, w io.Writer, cfg config) error {
	endpoints := cfg.endpoints
	if len(endpoints) == 0 {
		dir := cfg.dataDir
		if dir == "" {
			tmp, err := os.MkdirTemp("", "carve-etcd-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			dir = tmp
		}
		srv, err := embedetcd.Start(dir, 30*time.Second)
		if err != nil {
			return err
		}
		defer srv.Close()
		endpoints = []string{srv.Endpoint()}
		fmt.Fprintln(w, "etcd: an embedded member in a temporary directory")
	} else {
		fmt.Fprintln(w, "etcd:", strings.Join(endpoints, ","))
	}

	// Two nodes, each with its own client, store and allocator, as two
	// machines of a cluster would have.
	nodes := []string{"node-1", "node-2"}
	allocs := make(map[string]*ipam.Allocator)
	for _, node := range nodes {
		cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return err
		}
		defer cli.Close()
		s, err := etcdstore.New(ctx, cli, etcdstore.Options{Prefix: cfg.prefix, RequestTimeout: 5 * time.Second})
		if err != nil {
			return err
		}
		defer s.Close()
		if allocs[node], err = ipam.New(s, ipam.Options{}); err != nil {
			return err
		}
	}
	a1, a2 := allocs["node-1"], allocs["node-2"]

	// One pool for the cluster: /28 blocks of 16 addresses. A pool left by
	// an earlier run that stopped half way is used as it is.
	if err := a1.CreatePool(ctx, examplePool); err != nil && !errors.Is(err, ipam.ErrPoolExists) {
		return err
	}
	fmt.Fprintf(w, "pool %s: %s in /%d blocks\n", examplePool.Name, examplePool.CIDR, examplePool.BlockSize)

	fmt.Fprintln(w, "\nassign")
	pods := map[string]int{"node-1": 3, "node-2": 18} // node-2 outgrows its first block
	for _, node := range nodes {
		for i := range pods[node] {
			handle := fmt.Sprintf("%s/pod-%d", node, i)
			res, err := allocs[node].AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: handle, Node: node})
			if err != nil {
				return err
			}
			if i < 3 || i == pods[node]-1 {
				fmt.Fprintf(w, "  %-14s %s\n", handle, res.IPv4[0].Prefix())
			} else if i == 3 {
				fmt.Fprintln(w, "  ...")
			}
		}
	}
	if err := utilization(ctx, w, a1); err != nil {
		return err
	}

	// Pods end; node-1 releases a pod of node-2 (any allocator may).
	fmt.Fprintln(w, "\nrelease")
	for _, h := range []string{"node-1/pod-1", "node-2/pod-0", "node-2/pod-17"} {
		got, err := a1.ReleaseByHandle(ctx, h)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "  %-14s %v\n", h, got)
	}
	if err := utilization(ctx, w, a2); err != nil {
		return err
	}

	// Clean up, so that the next run against the same etcd starts afresh.
	for _, node := range nodes {
		for i := range pods[node] {
			if _, err := a1.ReleaseByHandle(ctx, fmt.Sprintf("%s/pod-%d", node, i)); err != nil && !errors.Is(err, ipam.ErrHandleNotFound) {
				return err
			}
		}
		if _, err := a1.ReleaseHostAffinities(ctx, node, false); err != nil {
			return err
		}
	}
	if err := a1.DeletePool(ctx, examplePool.Name); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nreleased everything and deleted the pool")
	return nil
}

// utilization prints the pool's blocks: who holds each and how full it is.
func utilization(ctx context.Context, w io.Writer, a *ipam.Allocator) error {
	u, err := a.Utilization(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "\nutilization")
	for _, p := range u {
		fmt.Fprintf(w, "  pool %s: %d in use, %d borrowed, %s free\n", p.Name, p.InUse, p.Borrowed, p.Free)
		for _, b := range p.Blocks {
			fmt.Fprintf(w, "    %-15s %-12s %2d/%d in use\n", b.Prefix, b.Affinity, b.InUse, b.Capacity)
		}
	}
	return nil
}
