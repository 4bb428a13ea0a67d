package memstore_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/pool"
)

// A program that embeds carve keeps its addresses across restarts by
// saving a snapshot (on shutdown, or after each change) and loading it at
// start.
func ExampleStore_SaveFile() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "carve")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "ipam.snap")

	s, err := memstore.LoadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist): // the first start: no snapshot yet
		s = memstore.New()
	case err != nil: // a damaged snapshot: stop rather than start empty
		fmt.Println(err)
		return
	}
	a, _ := ipam.New(s, ipam.Options{})
	_ = a.CreatePool(ctx, pool.Pool{Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("10.244.0.0/18")})
	_, _ = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "default/web-0", Node: "node-1"})
	if err := s.SaveFile(path); err != nil {
		fmt.Println(err)
	}

	// After a restart.
	s, err = memstore.LoadFile(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	a, _ = ipam.New(s, ipam.Options{})
	addrs, _ := a.IPsByHandle(ctx, "default/web-0")
	fmt.Println(addrs)
	// Output:
	// [10.244.4.64]
}
