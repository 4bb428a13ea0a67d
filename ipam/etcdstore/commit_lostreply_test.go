package etcdstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
)

// TestCommitLostReply makes a commit whose request times out
// (Options.RequestTimeout) while etcd is cut off, then lets the held
// request through: etcd may still make the commit, all of it or none, and
// once it is visible to another client the store's generations of the
// written kinds must move past what they were after Commit returned.
func TestCommitLostReply(t *testing.T) {
	p := newProxy(t)
	c := newClientTo(t, p.endpoint())
	prefix := freshPrefix()
	s := newStore(t, c, etcdstore.Options{Prefix: prefix, RequestTimeout: 300 * time.Millisecond})
	direct := newStore(t, newClient(t), etcdstore.Options{Prefix: prefix})
	ctx := t.Context()
	// Read before the write: the watch may deliver it before Create returns.
	g := s.Generation(ipam.KindBlock)
	rev, err := direct.Create(ctx, ipam.KindBlock, "b", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	// The watch is up.
	waitFor(t, "the watch delivers the create", func() bool { return s.Generation(ipam.KindBlock) != g })

	p.freeze()
	writes := []ipam.Write{
		{Kind: ipam.KindBlock, Key: "b", Value: []byte("v2"), Rev: rev},
		{Kind: ipam.KindHandle, Key: "h", Value: []byte("h")},
	}
	err = s.Commit(ctx, writes, make([]ipam.Revision, 2))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Commit against a held etcd = %v, want DeadlineExceeded", err)
	}
	var ce *ipam.CommitError
	if errors.As(err, &ce) {
		t.Fatalf("a timeout reported as a refusal: %v", err)
	}
	gb, gh := s.Generation(ipam.KindBlock), s.Generation(ipam.KindHandle)
	p.unfreeze()
	// The held commit reaches etcd now (or never): wait to see.
	time.Sleep(300 * time.Millisecond)
	b, berr := direct.Get(ctx, ipam.KindBlock, "b")
	h, herr := direct.Get(ctx, ipam.KindHandle, "h")
	switch {
	case berr == nil && string(b.Value) == "v2":
		if herr != nil || h.Revision != b.Revision {
			t.Fatalf("the block is written (rev %d), the handle: %v, %v: not all or none", b.Revision, h, herr)
		}
		t.Logf("the lost commit landed at %d", b.Revision)
		waitFor(t, "the generations move once the landed commit is visible", func() bool {
			return s.Generation(ipam.KindBlock) != gb && s.Generation(ipam.KindHandle) != gh
		})
	case !errors.Is(herr, ipam.ErrNotFound):
		t.Fatalf("block %q (%v), handle %v, %v: not all or none", b.Value, berr, h, herr)
	default:
		t.Log("the lost commit never landed")
	}
	// A commit at the revision the store now holds goes through.
	cur, err := s.Get(ctx, ipam.KindBlock, "b")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, []ipam.Write{{Kind: ipam.KindBlock, Key: "b", Value: []byte("v3"), Rev: cur.Revision}}, make([]ipam.Revision, 1)); err != nil {
		t.Fatal(err)
	}
}
