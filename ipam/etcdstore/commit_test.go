package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
)

// etcdRecord is what etcd holds under one key.
type etcdRecord struct {
	value       string
	mod, create int64
}

// dump returns every key under prefix, read straight from etcd.
func dump(t *testing.T, c *clientv3.Client, prefix string) map[string]etcdRecord {
	t.Helper()
	resp, err := c.Get(t.Context(), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]etcdRecord{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = etcdRecord{string(kv.Value), kv.ModRevision, kv.CreateRevision}
	}
	return out
}

// unchanged fails the test if etcd's keys under prefix are not before.
func unchanged(t *testing.T, c *clientv3.Client, prefix string, before map[string]etcdRecord, what string) {
	t.Helper()
	if after := dump(t, c, prefix); !maps.Equal(before, after) {
		t.Fatalf("%s changed etcd:\nbefore %v\nafter  %v", what, before, after)
	}
}

// TestCommitMixed commits a create, an update and a delete, of two kinds,
// and checks that they all happened in one etcd transaction: the puts share
// one revision, the one etcd moved to.
func TestCommitMixed(t *testing.T) {
	c := newClient(t)
	prefix := freshPrefix()
	s := newStore(t, c, etcdstore.Options{Prefix: prefix})
	ctx := t.Context()
	blkRev, err := s.Create(ctx, ipam.KindBlock, "v4:0a000000/26", []byte("blk1"))
	if err != nil {
		t.Fatal(err)
	}
	oldRev, err := s.Create(ctx, ipam.KindHandle, "old", []byte("h-old"))
	if err != nil {
		t.Fatal(err)
	}
	writes := []ipam.Write{
		{Kind: ipam.KindHandle, Key: "new", Value: []byte("h-new")},
		{Kind: ipam.KindBlock, Key: "v4:0a000000/26", Value: []byte("blk2"), Rev: blkRev},
		{Kind: ipam.KindHandle, Key: "old", Rev: oldRev, Delete: true},
	}
	revs := []ipam.Revision{7, 7, 7}
	if err := s.Commit(ctx, writes, revs); err != nil {
		t.Fatal(err)
	}
	if revs[0] == 0 || revs[1] != revs[0] || revs[2] != 0 {
		t.Fatalf("Commit revisions %v, want the create and the update at one revision and 0 for the delete", revs)
	}
	got := dump(t, c, prefix)
	want := map[string]etcdRecord{
		prefix + "handle/new":           {"h-new", int64(revs[0]), int64(revs[0])},
		prefix + "block/v4:0a000000/26": {"blk2", int64(revs[0]), int64(blkRev)},
	}
	if !maps.Equal(got, want) {
		t.Fatalf("etcd after Commit:\n got %v\nwant %v", got, want)
	}
	// One transaction: the delete happened at the puts' revision too.
	for _, at := range []int64{int64(revs[0]) - 1, int64(revs[0])} {
		resp, err := c.Get(ctx, prefix+"handle/old", clientv3.WithRev(at))
		if err != nil {
			t.Fatal(err)
		}
		if exists, want := len(resp.Kvs) == 1, at < int64(revs[0]); exists != want {
			t.Fatalf("at revision %d the deleted handle exists: %v, want %v", at, exists, want)
		}
	}
	// The records read back through the store as written.
	for i, w := range writes[:2] {
		rec, err := s.Get(ctx, w.Kind, w.Key)
		if err != nil || string(rec.Value) != string(w.Value) || rec.Revision != revs[i] {
			t.Errorf("Get(%s %q) = %+v, %v; want %q at revision %d", w.Kind, w.Key, rec, err, w.Value, revs[i])
		}
	}
	if _, err := s.Get(ctx, ipam.KindHandle, "old"); !errors.Is(err, ipam.ErrNotFound) {
		t.Errorf("Get of the deleted handle: %v, want ErrNotFound", err)
	}
	// The new revisions work for the next writes.
	if _, err := s.Update(ctx, ipam.KindBlock, "v4:0a000000/26", []byte("blk3"), revs[1]); err != nil {
		t.Errorf("Update at the commit's revision: %v", err)
	}
	if err := s.Delete(ctx, ipam.KindHandle, "new", revs[0]); err != nil {
		t.Errorf("Delete at the commit's revision: %v", err)
	}
}

// TestCommitMaxWrites commits MaxCommitWrites creates at once.
func TestCommitMaxWrites(t *testing.T) {
	c := newClient(t)
	prefix := freshPrefix()
	s := newStore(t, c, etcdstore.Options{Prefix: prefix})
	var writes []ipam.Write
	for i := range ipam.MaxCommitWrites {
		writes = append(writes, ipam.Write{Kind: ipam.Kinds[i%len(ipam.Kinds)], Key: fmt.Sprintf("k%d", i), Value: []byte("v")})
	}
	revs := make([]ipam.Revision, len(writes))
	if err := s.Commit(t.Context(), writes, revs); err != nil {
		t.Fatal(err)
	}
	got := dump(t, c, prefix)
	if len(got) != len(writes) {
		t.Fatalf("%d keys after the commit, want %d", len(got), len(writes))
	}
	for i, w := range writes {
		if r := got[prefix+w.Kind.String()+"/"+w.Key]; r.mod != int64(revs[0]) || revs[i] != revs[0] {
			t.Errorf("write %d at revision %d, etcd has %d; want all at %d", i, revs[i], r.mod, revs[0])
		}
	}
}

// TestCommitRefusals checks each way a write's check can fail, placed
// after a write that would succeed and before one that would fail too: the
// commit changes nothing and reports the first failing write, with the
// error its single operation gives.
func TestCommitRefusals(t *testing.T) {
	c := newClient(t)
	prefix := freshPrefix()
	s := newStore(t, c, etcdstore.Options{Prefix: prefix})
	ctx := t.Context()
	rev, err := s.Create(ctx, ipam.KindHandle, "h", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	stale := rev
	if rev, err = s.Update(ctx, ipam.KindHandle, "h", []byte("v2"), rev); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		w      ipam.Write
		target error
		single func() error // the single operation the write stands for
	}{
		{
			"create of an existing record", ipam.Write{Kind: ipam.KindHandle, Key: "h", Value: []byte("x")}, ipam.ErrExists,
			func() error { _, err := s.Create(ctx, ipam.KindHandle, "h", []byte("x")); return err },
		},
		{
			"update of a missing record", ipam.Write{Kind: ipam.KindBlock, Key: "missing", Value: []byte("x"), Rev: rev}, ipam.ErrNotFound,
			func() error { _, err := s.Update(ctx, ipam.KindBlock, "missing", []byte("x"), rev); return err },
		},
		{
			"update at a stale revision", ipam.Write{Kind: ipam.KindHandle, Key: "h", Value: []byte("x"), Rev: stale}, ipam.ErrConflict,
			func() error { _, err := s.Update(ctx, ipam.KindHandle, "h", []byte("x"), stale); return err },
		},
		{
			"update at a revision etcd cannot hold", ipam.Write{Kind: ipam.KindHandle, Key: "h", Value: []byte("x"), Rev: 1 << 63}, ipam.ErrConflict,
			func() error { _, err := s.Update(ctx, ipam.KindHandle, "h", []byte("x"), 1<<63); return err },
		},
		{
			"delete of a missing record", ipam.Write{Kind: ipam.KindAffinity, Key: "missing", Rev: rev, Delete: true}, ipam.ErrNotFound,
			func() error { return s.Delete(ctx, ipam.KindAffinity, "missing", rev) },
		},
		{
			"delete at a stale revision", ipam.Write{Kind: ipam.KindHandle, Key: "h", Rev: stale, Delete: true}, ipam.ErrConflict,
			func() error { return s.Delete(ctx, ipam.KindHandle, "h", stale) },
		},
		{
			"delete at revision 0", ipam.Write{Kind: ipam.KindHandle, Key: "h", Delete: true}, ipam.ErrConflict,
			func() error { return s.Delete(ctx, ipam.KindHandle, "h", 0) },
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			writes := []ipam.Write{
				{Kind: ipam.KindBlock, Key: "fresh", Value: []byte("x")},
				tt.w,
				// Fails too, but comes later.
				{Kind: ipam.KindConfig, Key: "missing", Value: []byte("x"), Rev: rev},
			}
			before := dump(t, c, prefix)
			revs := make([]ipam.Revision, len(writes))
			err := s.Commit(ctx, writes, revs)
			var ce *ipam.CommitError
			if !errors.As(err, &ce) || ce.Index != 1 || !errors.Is(err, tt.target) {
				t.Fatalf("Commit = %v, want a *ipam.CommitError at write 1 matching %v", err, tt.target)
			}
			unchanged(t, c, prefix, before, "a refused commit")
			want := tt.single()
			unchanged(t, c, prefix, before, "the refused single write")
			if ce.Err.Error() != want.Error() {
				t.Errorf("commit refused write 1 with %q, the single operation with %q", ce.Err, want)
			}
		})
	}
}

// TestCommitStaleAmongMany commits several writes, one of them stale: none
// of them happens.
func TestCommitStaleAmongMany(t *testing.T) {
	c := newClient(t)
	prefix := freshPrefix()
	s := newStore(t, c, etcdstore.Options{Prefix: prefix})
	ctx := t.Context()
	revs := map[string]ipam.Revision{}
	for _, k := range []string{"a", "b", "c", "d"} {
		rev, err := s.Create(ctx, ipam.KindBlock, k, []byte(k))
		if err != nil {
			t.Fatal(err)
		}
		revs[k] = rev
	}
	// Someone else moves c on.
	newC, err := s.Update(ctx, ipam.KindBlock, "c", []byte("c2"), revs["c"])
	if err != nil {
		t.Fatal(err)
	}
	writes := []ipam.Write{
		{Kind: ipam.KindHandle, Key: "h1", Value: []byte("h")},
		{Kind: ipam.KindBlock, Key: "a", Value: []byte("a2"), Rev: revs["a"]},
		{Kind: ipam.KindBlock, Key: "b", Rev: revs["b"], Delete: true},
		{Kind: ipam.KindHandle, Key: "h2", Value: []byte("h")},
		{Kind: ipam.KindBlock, Key: "c", Value: []byte("c3"), Rev: revs["c"]}, // stale
		{Kind: ipam.KindBlock, Key: "d", Value: []byte("d2"), Rev: revs["d"]},
		{Kind: ipam.KindAffinity, Key: "x", Value: []byte("x")},
	}
	before := dump(t, c, prefix)
	out := make([]ipam.Revision, len(writes))
	err = s.Commit(ctx, writes, out)
	var ce *ipam.CommitError
	if !errors.As(err, &ce) || ce.Index != 4 || !errors.Is(err, ipam.ErrConflict) {
		t.Fatalf("Commit with a stale write 4 = %v, want a *ipam.CommitError at write 4 matching ErrConflict", err)
	}
	if want := fmt.Sprintf(`etcdstore: update block "c" at revision %d (now %d): revision conflict`, revs["c"], newC); ce.Err.Error() != want {
		t.Errorf("refusal %q, want %q", ce.Err, want)
	}
	unchanged(t, c, prefix, before, "a commit with a stale write")
	// With the current revision the same commit goes through.
	writes[4].Rev = newC
	if err := s.Commit(ctx, writes, out); err != nil {
		t.Fatalf("Commit at the current revisions: %v", err)
	}
}

// TestCommitContext checks that a commit under a done context, or one that
// ends while etcd hangs, fails with an error matching the context's.
func TestCommitContext(t *testing.T) {
	p := newProxy(t)
	c := newClientTo(t, p.endpoint())
	prefix := freshPrefix()
	s := newStore(t, c, etcdstore.Options{Prefix: prefix})
	rev, err := s.Create(t.Context(), ipam.KindBlock, "b", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	writes := []ipam.Write{
		{Kind: ipam.KindBlock, Key: "b", Value: []byte("w"), Rev: rev},
		{Kind: ipam.KindHandle, Key: "h", Value: []byte("h")},
	}
	revs := make([]ipam.Revision, len(writes))
	check := func(err, target error, what string) {
		t.Helper()
		if !errors.Is(err, target) || !strings.Contains(err.Error(), `commit of 2 writes, the first update block "b"`) {
			t.Errorf("Commit %s: %v, want an error matching %v naming the commit", what, err, target)
		}
		var ce *ipam.CommitError
		if errors.As(err, &ce) {
			t.Errorf("Commit %s: %v is a refusal", what, err)
		}
	}
	direct := newClient(t)
	before := dump(t, direct, prefix)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	check(s.Commit(ctx, writes, revs), context.Canceled, "with a cancelled context")
	ctx, cancel = context.WithTimeout(t.Context(), -time.Second)
	defer cancel()
	check(s.Commit(ctx, writes, revs), context.DeadlineExceeded, "past its deadline")
	// A context done before the call sends nothing.
	unchanged(t, direct, prefix, before, "a commit with a done context")

	p.freeze()
	ctx, cancel = context.WithCancel(t.Context())
	time.AfterFunc(200*time.Millisecond, cancel)
	check(s.Commit(ctx, writes, revs), context.Canceled, "cancelled while etcd hangs")
	ctx, cancel = context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	check(s.Commit(ctx, writes, revs), context.DeadlineExceeded, "past its deadline while etcd hangs")
	p.unfreeze()

	// The proxy held the hung requests and forwards them now: etcd may
	// still make one of those commits, but all of it or none.
	after := dump(t, direct, prefix)
	if maps.Equal(after, before) {
		return
	}
	b, h := after[prefix+"block/b"], after[prefix+"handle/h"]
	if len(after) != 2 || b.value != "w" || h.value != "h" || b.mod != h.mod || h.create != h.mod {
		t.Fatalf("after cancelled commits etcd has %v, want it unchanged or both writes at one revision", after)
	}
}

// TestCommitRequestTimeout checks that a commit against a hung etcd fails
// after the request timeout, matching context.DeadlineExceeded.
func TestCommitRequestTimeout(t *testing.T) {
	p := newProxy(t)
	c := newClientTo(t, p.endpoint())
	const timeout = 300 * time.Millisecond
	s := newStore(t, c, etcdstore.Options{RequestTimeout: timeout})
	p.freeze()
	defer p.unfreeze()
	start := time.Now()
	err := s.Commit(t.Context(), []ipam.Write{{Kind: ipam.KindHandle, Key: "h", Value: []byte("h")}}, make([]ipam.Revision, 1))
	if took := time.Since(start); took < timeout || took > timeout+5*time.Second {
		t.Errorf("Commit returned after %v, want about %v", took, timeout)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "request timeout 300ms") {
		t.Fatalf("Commit against a hung etcd: %v, want a request timeout matching context.DeadlineExceeded", err)
	}
}

// TestCommitGenerations checks that a commit moves the generation of every
// kind it writes, at once, refused or not, and no other.
func TestCommitGenerations(t *testing.T) {
	s := newStore(t, newClient(t), etcdstore.Options{})
	ctx := t.Context()
	written := map[ipam.Kind]bool{ipam.KindHandle: true, ipam.KindBlock: true}
	gens := func() map[ipam.Kind]uint64 {
		g := map[ipam.Kind]uint64{}
		for _, k := range ipam.Kinds {
			g[k] = s.Generation(k)
		}
		return g
	}
	check := func(before map[ipam.Kind]uint64, what string) {
		t.Helper()
		after := gens()
		for _, k := range ipam.Kinds {
			if moved := after[k] != before[k]; moved != written[k] {
				t.Errorf("%s: Generation(%s) moved %v, want %v", what, k, moved, written[k])
			}
		}
	}
	writes := []ipam.Write{
		{Kind: ipam.KindHandle, Key: "h", Value: []byte("h")},
		{Kind: ipam.KindBlock, Key: "b", Value: []byte("b")},
	}
	revs := make([]ipam.Revision, len(writes))
	before := gens()
	if err := s.Commit(ctx, writes, revs); err != nil {
		t.Fatal(err)
	}
	// Read at once: the store moves them when Commit returns, without
	// waiting for the watch.
	check(before, "a commit")

	before = gens()
	if err := s.Commit(ctx, writes, revs); !errors.Is(err, ipam.ErrExists) {
		t.Fatalf("the same creates again: %v, want ErrExists", err)
	}
	check(before, "a refused commit")
}

// TestCommitChecksInput checks the commits carve never makes: they are
// refused before anything is sent, with an error that is not a refusal.
func TestCommitChecksInput(t *testing.T) {
	c := newClient(t)
	prefix := freshPrefix()
	s := newStore(t, c, etcdstore.Options{Prefix: prefix})
	ctx := t.Context()
	b, err := block.New(netip.MustParsePrefix("10.0.0.0/26"))
	if err != nil {
		t.Fatal(err)
	}
	h := ipam.Write{Kind: ipam.KindHandle, Key: "h", Value: []byte("h")}
	nine := make([]ipam.Write, ipam.MaxCommitWrites+1)
	for i := range nine {
		nine[i] = ipam.Write{Kind: ipam.KindHandle, Key: fmt.Sprintf("h%d", i)}
	}
	for _, tt := range []struct {
		name   string
		writes []ipam.Write
		revs   int
		want   string
	}{
		{"no writes", nil, 1, "commit of 0 writes: want 1 to 8"},
		{"too many writes", nine, len(nine), "commit of 9 writes: want 1 to 8"},
		{"short revs", []ipam.Write{h, {Kind: ipam.KindBlock, Key: "b"}}, 1, "commit of 2 writes with room for 1 revisions"},
		{"invalid kind", []ipam.Write{h, {Kind: 200, Key: "x"}}, 2, `write 1 ("x") has invalid record kind 200`},
		{"kind zero", []ipam.Write{{Key: "x"}}, 1, "invalid record kind 0"},
		{"same record twice", []ipam.Write{h, {Kind: ipam.KindBlock, Key: "h"}, {Kind: ipam.KindHandle, Key: "h", Rev: 3, Delete: true}}, 3, `writes 0 and 2 both write handle "h"`},
		{"a block", []ipam.Write{h, {Kind: ipam.KindBlock, Key: "v4:0a000000/26", Block: b}}, 2, `write 1 (block "v4:0a000000/26") carries a block, but the store is not an ipam.BlockKeeper`},
	} {
		revs := make([]ipam.Revision, tt.revs)
		err := s.Commit(ctx, tt.writes, revs)
		var ce *ipam.CommitError
		if err == nil || errors.As(err, &ce) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Commit = %v, want an error saying %q", tt.name, err, tt.want)
		}
	}
	if got := dump(t, c, prefix); len(got) != 0 {
		t.Fatalf("refused commits wrote %v", got)
	}
}
