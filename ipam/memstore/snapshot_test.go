package memstore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/memstore"
	"github.com/carve-ipam/carve/ipam/storetest"
	"github.com/carve-ipam/carve/pool"
)

var snapNow = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

// populate gives s what a cluster's store holds: configuration with a
// cooldown, two pools, a reservation, addresses of several nodes (some
// released and cooling, some given), handles of one block and of several.
func populate(t testing.TB, s *memstore.Store) *ipam.Allocator {
	ctx := context.Background()
	a, err := ipam.New(s, ipam.Options{Now: func() time.Time { return snapNow }})
	require.NoError(t, err)
	cfg := ipam.DefaultConfig()
	cfg.ReleaseCooldown = time.Hour
	require.NoError(t, a.SetConfig(ctx, cfg))
	require.NoError(t, a.CreatePool(ctx, pool.Pool{Name: "v4", CIDR: netip.MustParsePrefix("10.244.0.0/20"), BlockSize: 28}))
	require.NoError(t, a.CreatePool(ctx, pool.Pool{Name: "v6", CIDR: netip.MustParsePrefix("fd00:10:244::/48")}))
	require.NoError(t, a.CreateReservation(ctx, ipam.Reservation{Name: "gw", CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.15.0/24")}}))
	for i := range 12 {
		_, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1 + i%3, Num6: 1, Handle: fmt.Sprintf("pod-%d", i), Node: fmt.Sprintf("node-%d", i%4)})
		require.NoError(t, err)
	}
	_, err = a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 40, Handle: "batch", Node: "node-0"})
	require.NoError(t, err)
	_, err = a.AssignIPs(ctx, ipam.AssignIPsArgs{Addrs: []netip.Addr{netip.MustParseAddr("10.244.14.5"), netip.MustParseAddr("fd00:10:244::5")}, Handle: "fixed", Node: "node-9"})
	require.NoError(t, err)
	for _, h := range []string{"pod-1", "pod-6"} {
		_, err := a.ReleaseByHandle(ctx, h)
		require.NoError(t, err)
	}
	return a
}

// records lists every record of s, all kinds.
func records(t testing.TB, s ipam.Store) map[ipam.Kind][]ipam.Record {
	out := map[ipam.Kind][]ipam.Record{}
	for _, k := range ipam.Kinds {
		recs, err := s.List(context.Background(), k, ipam.KeyRange{})
		require.NoError(t, err)
		out[k] = recs
	}
	return out
}

func snapshot(t testing.TB, s *memstore.Store) []byte {
	var buf bytes.Buffer
	n, err := s.WriteTo(&buf)
	require.NoError(t, err)
	require.Equal(t, int64(buf.Len()), n)
	return buf.Bytes()
}

// TestSnapshotRoundTrip: a loaded snapshot holds every record at its
// revision, an allocator on it finds every address as it was, and the
// store goes on with revisions after the snapshot's.
func TestSnapshotRoundTrip(t *testing.T) {
	ctx := t.Context()
	s := memstore.New()
	a := populate(t, s)
	data := snapshot(t, s)
	require.Equal(t, data, snapshot(t, s), "a snapshot of an unchanged store is the same")

	loaded, err := memstore.Load(bytes.NewReader(data))
	require.NoError(t, err)
	want := records(t, s)
	require.Equal(t, want, records(t, loaded))
	require.NotEmpty(t, want[ipam.KindBlock])
	require.NotEmpty(t, want[ipam.KindHandle])

	b, err := ipam.New(loaded, ipam.Options{Now: func() time.Time { return snapNow }})
	require.NoError(t, err)
	for _, x := range []*ipam.Allocator{a, b} {
		r, err := x.Check(ctx)
		require.NoError(t, err)
		require.True(t, r.Clean(), "%v", r.Problems)
	}
	all := netip.MustParsePrefix("::/0")
	for _, within := range []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), all} {
		wantAllocs, err := a.Allocations(ctx, within)
		require.NoError(t, err)
		gotAllocs, err := b.Allocations(ctx, within)
		require.NoError(t, err)
		require.Equal(t, wantAllocs, gotAllocs)
	}
	wantUse, err := a.Utilization(ctx)
	require.NoError(t, err)
	gotUse, err := b.Utilization(ctx)
	require.NoError(t, err)
	require.Equal(t, wantUse, gotUse, "cooling addresses cool on")

	// It goes on: new revisions come after the snapshot's.
	var last ipam.Revision
	for _, recs := range want {
		for _, r := range recs {
			last = max(last, r.Revision)
		}
	}
	rev, err := loaded.Create(ctx, ipam.KindHandle, "new", []byte{1})
	require.NoError(t, err)
	require.Greater(t, rev, last)
	require.NoError(t, loaded.Delete(ctx, ipam.KindHandle, "new", rev))
	got, err := b.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: "after", Node: "node-1"})
	require.NoError(t, err)
	require.Equal(t, 1, got.Len())
	_, err = b.ReleaseByHandle(ctx, "batch")
	require.NoError(t, err)
	r, err := b.Check(ctx)
	require.NoError(t, err)
	require.True(t, r.Clean(), "%v", r.Problems)
}

// TestSnapshotEmpty: an empty store's snapshot loads as an empty store
// that passes the conformance suite.
func TestSnapshotEmpty(t *testing.T) {
	data := snapshot(t, memstore.New())
	storetest.RunConformanceTests(t, func(t *testing.T) ipam.Store {
		s, err := memstore.Load(bytes.NewReader(data))
		require.NoError(t, err)
		return s
	})
}

// TestSnapshotRefusesDamage: a snapshot cut short anywhere, with a byte
// changed anywhere, or with data after its end is refused, with an error
// matching ErrSnapshot that says where.
func TestSnapshotRefusesDamage(t *testing.T) {
	s := memstore.New()
	populate(t, s)
	data := snapshot(t, s)
	for n := range len(data) {
		_, err := memstore.Load(bytes.NewReader(data[:n]))
		require.ErrorIs(t, err, memstore.ErrSnapshot, "cut at %d of %d", n, len(data))
	}
	step := max(1, len(data)/500)
	for i := 0; i < len(data); i += step {
		damaged := bytes.Clone(data)
		damaged[i] ^= 0x10
		_, err := memstore.Load(bytes.NewReader(damaged))
		require.ErrorIs(t, err, memstore.ErrSnapshot, "byte %d changed", i)
	}
	_, err := memstore.Load(bytes.NewReader(append(bytes.Clone(data), 0)))
	require.ErrorIs(t, err, memstore.ErrSnapshot)
	require.ErrorContains(t, err, "data after the snapshot's end")
	_, err = memstore.Load(bytes.NewReader([]byte("{\"pools\": []}\n....................")))
	require.ErrorIs(t, err, memstore.ErrSnapshot)
	require.ErrorContains(t, err, "not a memstore snapshot")
}

// TestSnapshotWhileAssigning takes snapshots while two allocators assign
// and release. Each is what a crash of both at that moment would leave:
// Repair on it, with nothing in flight any more, leaves a store that Check
// finds clean.
func TestSnapshotWhileAssigning(t *testing.T) {
	ctx := t.Context()
	s := memstore.New()
	populate(t, s)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 2 {
		a, err := ipam.New(s, ipam.Options{Now: func() time.Time { return snapNow }})
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// At most 400 requests each: with the hour's cooldown every
			// address they take stays taken, and the pool holds about
			// 3,800, of which these use about 2,400.
			for i := range 400 {
				select {
				case <-stop:
					return
				default:
				}
				h := fmt.Sprintf("w%d-%d", w, i)
				if _, err := a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1 + i%5, Num6: i % 2, Handle: h, Node: fmt.Sprintf("node-%d", i%3)}); err != nil {
					t.Error(err)
					return
				}
				if i%2 == 0 {
					if _, err := a.ReleaseByHandle(ctx, h); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	var snaps [][]byte
	for range 20 {
		snaps = append(snaps, snapshot(t, s))
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	for i, data := range snaps {
		loaded, err := memstore.Load(bytes.NewReader(data))
		require.NoError(t, err, "snapshot %d", i)
		a, err := ipam.New(loaded, ipam.Options{Now: func() time.Time { return snapNow }})
		require.NoError(t, err)
		_, _, err = a.Repair(ctx, ipam.RepairOptions{})
		require.NoError(t, err)
		r, err := a.Check(ctx)
		require.NoError(t, err)
		require.True(t, r.Clean(), "snapshot %d: %v", i, r.Problems)
	}
}

// TestSaveFile: SaveFile replaces the file whole, leaves no temporary
// file behind, and LoadFile reads it back; a missing file is
// fs.ErrNotExist, named.
func TestSaveFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ipam.snap")
	_, err := memstore.LoadFile(path)
	require.ErrorIs(t, err, fs.ErrNotExist)
	require.ErrorContains(t, err, path)

	s := memstore.New()
	require.NoError(t, s.SaveFile(path)) // empty
	populate(t, s)
	require.NoError(t, s.SaveFile(path)) // replaced
	loaded, err := memstore.LoadFile(path)
	require.NoError(t, err)
	require.Equal(t, records(t, s), records(t, loaded))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file left")

	require.NoError(t, os.WriteFile(path, []byte("carve memstore snapshot\n\x07"), 0o600))
	_, err = memstore.LoadFile(path)
	require.ErrorIs(t, err, memstore.ErrSnapshot)
	require.ErrorContains(t, err, path)
	require.ErrorContains(t, err, "version 7")

	err = s.SaveFile(filepath.Join(dir, "missing", "ipam.snap"))
	require.ErrorIs(t, err, fs.ErrNotExist)
}

// FuzzLoad: Load never panics, and what it accepts it writes back as a
// snapshot that loads to the same records. Each input is also tried with
// its last four bytes replaced by the checksum of the rest, so that
// mutations get past the checksum to the records.
func FuzzLoad(f *testing.F) {
	s := memstore.New()
	populate(f, s)
	f.Add(snapshot(f, s))
	f.Add(snapshot(f, memstore.New()))
	small := memstore.New()
	_, _ = small.Create(context.Background(), ipam.KindHandle, "h", []byte{1, 2})
	_, _ = small.Create(context.Background(), ipam.KindAffinity, "host:n/x", nil)
	f.Add(snapshot(f, small))
	f.Fuzz(func(t *testing.T, data []byte) {
		tries := [][]byte{data}
		if n := len(data) - 4; n >= 0 {
			fixed := binary.BigEndian.AppendUint32(bytes.Clone(data[:n]), crc32.Checksum(data[:n], crc32.MakeTable(crc32.Castagnoli)))
			tries = append(tries, fixed)
		}
		for _, in := range tries {
			loaded, err := memstore.Load(bytes.NewReader(in))
			if err != nil {
				if !errors.Is(err, memstore.ErrSnapshot) {
					t.Fatalf("Load: %v does not match ErrSnapshot", err)
				}
				continue
			}
			again, err := memstore.Load(bytes.NewReader(snapshot(t, loaded)))
			if err != nil {
				t.Fatalf("a snapshot of a loaded store: %v", err)
			}
			require.Equal(t, records(t, loaded), records(t, again))
		}
	})
}
