package memstore_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
)

// TestReadsLinearizable: with writers creating records that stay
// (handles, whose key order is rebuilt lazily, and kept blocks, encoded on
// the first read) and others churning records of both kinds (so that
// deleted entries are reused by creates of the other kind), a record a
// Get has returned is in every List that starts after it, and every
// record a read returns holds its own value. Run it with -race.
func TestReadsLinearizable(t *testing.T) {
	s := memstore.New()
	ctx := t.Context()
	const n = 300
	blk := func(i int) *block.Block {
		b, err := block.New(netip.MustParsePrefix("10.0.0.0/26"))
		if err != nil {
			t.Fatal(err)
		}
		b.Allocate(nil, i%60+1, block.Owner{Handle: fmt.Sprintf("stay-%d", i)})
		return b
	}
	encs := make([][]byte, n)
	blocks := make([]*block.Block, n)
	for i := range n {
		blocks[i] = blk(i)
		encs[i], _ = blocks[i].MarshalBinary()
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	fail := func(err error) {
		select {
		case errs <- err:
		default:
		}
		stop.Store(true)
	}
	// Writers of records that stay.
	var created atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range n {
			if _, err := s.Create(ctx, ipam.KindHandle, fmt.Sprintf("stay-%03d", i), []byte(fmt.Sprintf("stay-%03d", i))); err != nil {
				fail(err)
				return
			}
			if _, err := s.CreateBlock(ctx, fmt.Sprintf("stay-%03d", i), blocks[i]); err != nil {
				fail(err)
				return
			}
			created.Store(int64(i + 1))
		}
	}()
	// Churners.
	for c := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load() && created.Load() < n; i++ {
				k := fmt.Sprintf("churn-%d-%d", c, i%7)
				kind := ipam.KindHandle
				if i%2 == 1 {
					kind = ipam.KindBlock
				}
				rev, err := s.Create(ctx, kind, k, []byte(k))
				if err != nil {
					fail(err)
					return
				}
				if err := s.Delete(ctx, kind, k, rev); err != nil {
					fail(err)
					return
				}
			}
		}()
	}
	// Readers.
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			kind := []ipam.Kind{ipam.KindHandle, ipam.KindBlock}[r]
			for i := 0; !stop.Load() && created.Load() < n; i++ {
				k := fmt.Sprintf("stay-%03d", i%n)
				_, err := s.Get(ctx, kind, k)
				found := err == nil
				recs, err := s.List(ctx, kind, ipam.KeyRange{})
				if err != nil {
					fail(err)
					return
				}
				keys := make([]string, 0, len(recs))
				for _, rec := range recs {
					keys = append(keys, rec.Key)
					var want []byte
					switch {
					case kind == ipam.KindBlock && rec.Key[:5] == "stay-":
						var j int
						fmt.Sscanf(rec.Key, "stay-%d", &j)
						want = encs[j]
					default:
						want = []byte(rec.Key)
					}
					if !bytes.Equal(rec.Value, want) {
						fail(fmt.Errorf("List(%s) returned %q with another record's value", kind, rec.Key))
						return
					}
				}
				if !slices.IsSorted(keys) {
					fail(fmt.Errorf("List(%s) out of order", kind))
					return
				}
				if found && !slices.Contains(keys, k) {
					fail(fmt.Errorf("Get(%s, %q) found the record, and a List after it did not", kind, k))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
