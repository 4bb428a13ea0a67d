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
// written kinds must move past what they were after Commit returned. (The
// records are of two kinds the store watches; a commit of an assignment
// writes a block and a handle, whose generations change on every call.)
func TestCommitLostReply(t *testing.T) {
	p := newProxy(t)
	c := newClientTo(t, p.endpoint())
	prefix := freshPrefix()
	s := newStore(t, c, etcdstore.Options{Prefix: prefix, RequestTimeout: 300 * time.Millisecond})
	direct := newStore(t, newClient(t), etcdstore.Options{Prefix: prefix})
	ctx := t.Context()
	// Read before the write: the watch may deliver it before Create returns.
	g := s.Generation(ipam.KindAffinity)
	rev, err := direct.Create(ctx, ipam.KindAffinity, "b", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	// The watch is up.
	waitFor(t, "the watch delivers the create", func() bool { return s.Generation(ipam.KindAffinity) != g })

	p.freeze()
	writes := []ipam.Write{
		{Kind: ipam.KindAffinity, Key: "b", Value: []byte("v2"), Rev: rev},
		{Kind: ipam.KindNode, Key: "h", Value: []byte("h")},
	}
	err = s.Commit(ctx, writes, make([]ipam.Revision, 2))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Commit against a held etcd = %v, want DeadlineExceeded", err)
	}
	var ce *ipam.CommitError
	if errors.As(err, &ce) {
		t.Fatalf("a timeout reported as a refusal: %v", err)
	}
	gb, gh := s.Generation(ipam.KindAffinity), s.Generation(ipam.KindNode)
	p.unfreeze()
	// The held commit reaches etcd now, and may or may not be made. Give it
	// a moment (it lands about a third of the time), but decide nothing by
	// the clock: on a loaded machine it may land later still.
	landed := func() bool {
		b, err := direct.Get(ctx, ipam.KindAffinity, "b")
		return err == nil && string(b.Value) == "v2"
	}
	for end := time.Now().Add(300 * time.Millisecond); !landed() && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
	}
	// Settle its fate: an update of the block at the revision the commit
	// compares against either goes through, and then the commit can never
	// be made, or conflicts, because the commit was made (nothing else
	// writes the block).
	_, ferr := direct.Update(ctx, ipam.KindAffinity, "b", []byte("fence"), rev)
	if ferr != nil && !errors.Is(ferr, ipam.ErrConflict) {
		t.Fatal(ferr)
	}
	// One read of both records: all of the commit or none.
	got := dump(t, newClient(t), prefix)
	b, h := got[prefix+"affinity/b"], got[prefix+"node/h"]
	switch {
	case ferr != nil:
		if b.value != "v2" || h.value != "h" || h.mod != b.mod || h.create != b.mod {
			t.Fatalf("the fence conflicted, so the lost commit was made, but etcd has %v: not all of it", got)
		}
		t.Logf("the lost commit landed at %d", b.mod)
		waitFor(t, "the generations move once the landed commit is visible", func() bool {
			return s.Generation(ipam.KindAffinity) != gb && s.Generation(ipam.KindNode) != gh
		})
	case b.value != "fence" || len(got) != 1:
		t.Fatalf("the lost commit was never made, yet etcd has %v", got)
	default:
		t.Log("the lost commit never landed")
	}
	// A commit at the revision the store now holds goes through.
	cur, err := s.Get(ctx, ipam.KindAffinity, "b")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, []ipam.Write{{Kind: ipam.KindAffinity, Key: "b", Value: []byte("v3"), Rev: cur.Revision}}, make([]ipam.Revision, 1)); err != nil {
		t.Fatal(err)
	}
}
