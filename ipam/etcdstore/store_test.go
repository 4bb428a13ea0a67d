package etcdstore_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
	"github.com/carve-ipam/carve/ipam/storetest"
)

func TestConformance(t *testing.T) {
	c := newClient(t)
	storetest.RunConformanceTests(t, func(t *testing.T) ipam.Store {
		return newStore(t, c, etcdstore.Options{})
	})
}

// TestConformanceWithTimeout runs the suite again with a request timeout
// generous enough never to fire: the timeout path must not change results.
func TestConformanceWithTimeout(t *testing.T) {
	c := newClient(t)
	storetest.RunConformanceTests(t, func(t *testing.T) ipam.Store {
		return newStore(t, c, etcdstore.Options{RequestTimeout: 30 * time.Second})
	})
}

// TestKeyLayout checks where records live in etcd and that revisions are
// etcd's mod revisions.
func TestKeyLayout(t *testing.T) {
	c := newClient(t)
	prefix := freshPrefix()
	s := newStore(t, c, etcdstore.Options{Prefix: prefix})
	ctx := t.Context()

	rev, err := s.Create(ctx, ipam.KindBlock, "v4:0a000000/26", []byte("blk"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Get(ctx, prefix+"block/v4:0a000000/26")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "blk" {
		t.Fatalf("etcd key %sblock/v4:0a000000/26 = %v, want the record", prefix, resp.Kvs)
	}
	if kv := resp.Kvs[0]; ipam.Revision(kv.ModRevision) != rev || kv.CreateRevision != kv.ModRevision {
		t.Fatalf("etcd mod revision %d, create revision %d; Create returned %d", kv.ModRevision, kv.CreateRevision, rev)
	}
	rev2, err := s.Update(ctx, ipam.KindBlock, "v4:0a000000/26", []byte("blk2"), rev)
	if err != nil {
		t.Fatal(err)
	}
	resp, err = c.Get(ctx, prefix+"block/v4:0a000000/26")
	if err != nil {
		t.Fatal(err)
	}
	if ipam.Revision(resp.Kvs[0].ModRevision) != rev2 || resp.Kvs[0].Version != 2 {
		t.Fatalf("after Update: etcd mod revision %d version %d, Update returned %d", resp.Kvs[0].ModRevision, resp.Kvs[0].Version, rev2)
	}

	// Keys of other kinds and foreign keys next to the kind's range stay
	// out of List, even where their bytes sort inside a naive range.
	for _, k := range []string{prefix + "block", prefix + "block0", prefix + "blocks/x", prefix + "bloc/x", prefix + "handle/v4:0a000000/26"} {
		if _, err := c.Put(ctx, k, "foreign"); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := s.List(ctx, ipam.KindBlock, ipam.KeyRange{})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Key != "v4:0a000000/26" || string(recs[0].Value) != "blk2" || recs[0].Revision != rev2 {
		t.Fatalf("List(block) = %+v, want only the block record", recs)
	}
	recs, err = s.List(ctx, ipam.KindBlock, ipam.KeyRange{Start: "v4:", End: "v5"})
	if err != nil || len(recs) != 1 {
		t.Fatalf("List(block, v4:..v5) = %+v, %v; want the block record", recs, err)
	}
}

// TestPrefixesAreSeparate checks that stores under sibling prefixes share
// nothing, not even keys.
func TestPrefixesAreSeparate(t *testing.T) {
	c := newClient(t)
	ctx := t.Context()
	p1, p2 := freshPrefix(), freshPrefix()
	s1 := newStore(t, c, etcdstore.Options{Prefix: p1})
	s2 := newStore(t, c, etcdstore.Options{Prefix: p2})
	for _, k := range ipam.Kinds {
		if _, err := s1.Create(ctx, k, "same", []byte("1")); err != nil {
			t.Fatal(err)
		}
		if _, err := s2.Create(ctx, k, "same", []byte("2")); err != nil {
			t.Fatalf("Create in a second prefix: %v", err)
		}
		rec, err := s2.Get(ctx, k, "same")
		if err != nil || string(rec.Value) != "2" {
			t.Fatalf("s2.Get(%s) = %+v, %v", k, rec, err)
		}
		recs, err := s1.List(ctx, k, ipam.KeyRange{})
		if err != nil || len(recs) != 1 || string(recs[0].Value) != "1" {
			t.Fatalf("s1.List(%s) = %+v, %v; want its own record only", k, recs, err)
		}
	}
}

func TestNewRefuses(t *testing.T) {
	c := newClient(t)
	ctx := t.Context()
	for _, tt := range []struct {
		name string
		c    *clientv3.Client
		opts etcdstore.Options
		want string
	}{
		{"nil client", nil, etcdstore.Options{}, "nil client"},
		{"prefix without slash", c, etcdstore.Options{Prefix: "/carve"}, `prefix "/carve" does not end with /`},
		{"negative timeout", c, etcdstore.Options{RequestTimeout: -time.Second}, "negative request timeout"},
	} {
		s, err := etcdstore.New(ctx, tt.c, tt.opts)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: New = %v, %v; want an error saying %q", tt.name, s, err, tt.want)
		}
	}
}

func TestDefaultPrefix(t *testing.T) {
	c := newClient(t)
	s := newStore(t, c, etcdstore.Options{Prefix: etcdstore.DefaultPrefix})
	if s.Prefix() != "/carve/" {
		t.Fatalf("Prefix() = %q", s.Prefix())
	}
	ctx := t.Context()
	rev, err := s.Create(ctx, ipam.KindConfig, "default-prefix-test", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Delete(context.Background(), ipam.KindConfig, "default-prefix-test", rev) })
	resp, err := c.Get(ctx, "/carve/config/default-prefix-test")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("record not under /carve/: %v, %v", resp, err)
	}
	ctx2, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s2, err := etcdstore.New(ctx2, c, etcdstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.Prefix() != etcdstore.DefaultPrefix {
		t.Fatalf("zero Options give prefix %q, want %q", s2.Prefix(), etcdstore.DefaultPrefix)
	}
}

func TestInvalidKind(t *testing.T) {
	s := newStore(t, newClient(t), etcdstore.Options{})
	ctx := t.Context()
	for _, k := range []ipam.Kind{0, 200} {
		if _, err := s.Create(ctx, k, "x", nil); err == nil {
			t.Errorf("Create with kind %d succeeded", k)
		}
		if _, err := s.Get(ctx, k, "x"); err == nil || errors.Is(err, ipam.ErrNotFound) {
			t.Errorf("Get with kind %d = %v, want an invalid-kind error", k, err)
		}
		if _, err := s.List(ctx, k, ipam.KeyRange{}); err == nil {
			t.Errorf("List with kind %d succeeded", k)
		}
		if _, err := s.Update(ctx, k, "x", nil, 1); err == nil {
			t.Errorf("Update with kind %d succeeded", k)
		}
		if err := s.Delete(ctx, k, "x", 1); err == nil {
			t.Errorf("Delete with kind %d succeeded", k)
		}
		if g := s.Generation(k); g != 0 {
			t.Errorf("Generation(%d) = %d", k, g)
		}
	}
}

// TestErrorsNameOperationAndKey checks the text of the sentinel errors.
func TestErrorsNameOperationAndKey(t *testing.T) {
	s := newStore(t, newClient(t), etcdstore.Options{})
	ctx := t.Context()
	rev, err := s.Create(ctx, ipam.KindHandle, "pod-1", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	_, errExists := s.Create(ctx, ipam.KindHandle, "pod-1", nil)
	_, errMissing := s.Get(ctx, ipam.KindBlock, "v4:0a000000/26")
	_, errConflict := s.Update(ctx, ipam.KindHandle, "pod-1", nil, rev+1000)
	errDelMissing := s.Delete(ctx, ipam.KindAffinity, "host:n/v4:0a000000/26", rev)
	_, errUpdZero := s.Update(ctx, ipam.KindHandle, "nothing", nil, 0)
	for _, tt := range []struct {
		err    error
		target error
		text   string
	}{
		{errExists, ipam.ErrExists, `etcdstore: create handle "pod-1": record already exists`},
		{errMissing, ipam.ErrNotFound, `etcdstore: get block "v4:0a000000/26": record not found`},
		{errConflict, ipam.ErrConflict, `etcdstore: update handle "pod-1" at revision`},
		{errDelMissing, ipam.ErrNotFound, `etcdstore: delete affinity "host:n/v4:0a000000/26": record not found`},
		// Revision 0 is what a missing key has in etcd: it must not match.
		{errUpdZero, ipam.ErrNotFound, `etcdstore: update handle "nothing": record not found`},
	} {
		if !errors.Is(tt.err, tt.target) || !strings.Contains(tt.err.Error(), tt.text) {
			t.Errorf("error %q: want one matching %v and containing %q", tt.err, tt.target, tt.text)
		}
	}
	if _, err := s.Get(ctx, ipam.KindHandle, "nothing"); !errors.Is(err, ipam.ErrNotFound) {
		t.Fatalf("Update at revision 0 created the record: %v", err)
	}
}

// TestRequestTimeout makes etcd hang for one client: each request then
// fails after the request timeout with an error matching
// context.DeadlineExceeded, while the caller's context is still live.
func TestRequestTimeout(t *testing.T) {
	p := newProxy(t)
	c := newClientTo(t, p.endpoint())
	const timeout = 300 * time.Millisecond
	s := newStore(t, c, etcdstore.Options{RequestTimeout: timeout})
	ctx := t.Context()
	rev, err := s.Create(ctx, ipam.KindBlock, "b", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	p.freeze()
	defer p.unfreeze()
	calls := map[string]func() error{
		"get":    func() error { _, err := s.Get(ctx, ipam.KindBlock, "b"); return err },
		"list":   func() error { _, err := s.List(ctx, ipam.KindBlock, ipam.KeyRange{}); return err },
		"create": func() error { _, err := s.Create(ctx, ipam.KindBlock, "c", nil); return err },
		"update": func() error { _, err := s.Update(ctx, ipam.KindBlock, "b", nil, rev); return err },
		"delete": func() error { return s.Delete(ctx, ipam.KindBlock, "b", rev) },
	}
	for name, call := range calls {
		start := time.Now()
		err := call()
		took := time.Since(start)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "request timeout 300ms") {
			t.Errorf("%s against a hung etcd: %v, want a request timeout matching context.DeadlineExceeded", name, err)
		}
		if took < timeout || took > timeout+5*time.Second {
			t.Errorf("%s returned after %v, want about %v", name, took, timeout)
		}
	}
	if ctx.Err() != nil {
		t.Fatal("the caller's context ended")
	}
}

// TestCancelWhileWaiting cancels the caller's context while etcd hangs:
// the call returns with an error matching context.Canceled.
func TestCancelWhileWaiting(t *testing.T) {
	p := newProxy(t)
	c := newClientTo(t, p.endpoint())
	s := newStore(t, c, etcdstore.Options{})
	rev, err := s.Create(t.Context(), ipam.KindBlock, "b", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	p.freeze()
	defer p.unfreeze()
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(200*time.Millisecond, cancel)
	_, err = s.Update(ctx, ipam.KindBlock, "b", []byte("w"), rev)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), `update block "b"`) {
		t.Fatalf("Update cancelled while etcd hangs: %v, want an error matching context.Canceled naming the operation", err)
	}
	ctx, cancel = context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, err := s.List(ctx, ipam.KindBlock, ipam.KeyRange{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("List past the caller's deadline: %v, want context.DeadlineExceeded", err)
	}
}

// TestNewUnreachable checks that New fails, rather than hangs, when etcd
// does not answer before the context's deadline.
func TestNewUnreachable(t *testing.T) {
	p := newProxy(t)
	p.freeze()
	defer p.unfreeze()
	c := newClientTo(t, p.endpoint())
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	s, err := etcdstore.New(ctx, c, etcdstore.Options{Prefix: freshPrefix()})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("New against a hung etcd = %v, %v; want context.DeadlineExceeded", s, err)
	}
}
