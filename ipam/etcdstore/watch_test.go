package etcdstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
)

// cut closes every connection through the proxy; new ones are accepted.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// isBlind reports whether s's generations move on every call, as they
// do while its watch is down.
func isBlind(s *etcdstore.Store) bool {
	g := s.Generation(ipam.KindPool)
	return s.Generation(ipam.KindPool) != g
}

// isSteady reports whether s's generation of kind holds still for a
// while.
func isSteady(s *etcdstore.Store, kind ipam.Kind) bool {
	g := s.Generation(kind)
	time.Sleep(30 * time.Millisecond)
	return s.Generation(kind) == g
}

// TestGenerationsCompactedWhileAway cuts a store's connection,
// changes a pool and compacts etcd past the change while it is away: the
// client's own resume of the watch then finds its history gone, and the
// store must count every kind as changed (the pool change among them),
// resume, and follow later writes.
func TestGenerationsCompactedWhileAway(t *testing.T) {
	p := newProxy(t)
	prefix := freshPrefix()
	s := newStore(t, newClientTo(t, p.endpoint()), etcdstore.Options{Prefix: prefix})
	direct := newClient(t)
	other := newStore(t, direct, etcdstore.Options{Prefix: prefix})
	ctx := t.Context()
	g := s.Generation(ipam.KindConfig)
	if _, err := other.Create(ctx, ipam.KindConfig, "default", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the watch is up", func() bool { return s.Generation(ipam.KindConfig) != g })

	// Away: held, and its connections cut, so the client resumes the
	// watch when it is back.
	p.freeze()
	p.cut()
	gp, gr := s.Generation(ipam.KindPool), s.Generation(ipam.KindReservation)
	if _, err := other.Create(ctx, ipam.KindPool, "default", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	resp, err := direct.Put(ctx, "/unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	p.unfreeze()
	waitFor(t, "Generation(pool) moves after a change the compaction dropped from the watch's history", func() bool {
		return s.Generation(ipam.KindPool) != gp
	})
	// Every kind counts as changed: the store cannot tell what the
	// compaction dropped.
	waitFor(t, "Generation(reservation) moves too", func() bool { return s.Generation(ipam.KindReservation) != gr })
	waitFor(t, "the watch settles", func() bool { return isSteady(s, ipam.KindNode) })
	gn := s.Generation(ipam.KindNode)
	if _, err := other.Create(ctx, ipam.KindNode, "n1", []byte(`{"labels":{}}`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Generation(node) follows a write after the resume", func() bool { return s.Generation(ipam.KindNode) != gn })
}

// TestCloseWhileEtcdHangs: Close returns at once although etcd does
// not answer, and the store is blind from then on.
func TestCloseWhileEtcdHangs(t *testing.T) {
	p := newProxy(t)
	s := newStore(t, newClientTo(t, p.endpoint()), etcdstore.Options{})
	p.freeze()
	defer p.unfreeze()
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs while etcd does not answer")
	}
	if !isBlind(s) {
		t.Fatal("after Close, Generation holds still")
	}
}

// TestGenerationsLeaderLoss runs a store on one member of a
// three-member cluster and stops the two others: its member loses its
// leader, which cancels the store's watch (WithRequireLeader), and the
// store must go blind (a new number on every call). The cluster then goes
// on without that member (it is stopped, the others started) and changes a
// pool. When the member is back, the store must have counted the change,
// hold still, and follow later writes.
func TestGenerationsLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-member cluster")
	}
	c := newCluster(t, 3)
	prefix := freshPrefix()
	s := newStore(t, newClientTo(t, c.endpoint(0)), etcdstore.Options{Prefix: prefix, RequestTimeout: 5 * time.Second})
	ctx := t.Context()
	// Other processes' writes, each through a new client of a member that
	// is up (a client of a stopped member may take seconds to reconnect).
	put := func(member int, kind ipam.Kind, value string) {
		t.Helper()
		cl := newClientTo(t, c.endpoint(member))
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := cl.Put(pctx, prefix+kind.String()+"/default", value); err != nil {
			t.Fatal(err)
		}
		cl.Close()
	}
	g := s.Generation(ipam.KindConfig)
	put(1, ipam.KindConfig, "{}")
	waitFor(t, "the watch is up", func() bool { return s.Generation(ipam.KindConfig) != g })
	if isBlind(s) {
		t.Fatal("blind with the watch up")
	}

	c.stop(1)
	c.stop(2)
	waitFor(t, "the store goes blind once its member has no leader", func() bool { return isBlind(s) })
	gp := s.Generation(ipam.KindPool)

	// The cluster goes on without member 0.
	c.stop(0)
	startAll(t, c, 1, 2)
	put(2, ipam.KindPool, "{}")
	startAll(t, c, 0)
	waitFor(t, "the watch is back", func() bool { return !isBlind(s) && isSteady(s, ipam.KindPool) })
	if s.Generation(ipam.KindPool) == gp {
		t.Fatal("Generation(pool) is where it was before the member lost its leader, though the pool changed meanwhile")
	}
	gp = s.Generation(ipam.KindPool)
	put(1, ipam.KindPool, `{"x":1}`)
	waitFor(t, "Generation(pool) follows a write after the member is back", func() bool { return s.Generation(ipam.KindPool) != gp })
	if rec, err := s.Get(ctx, ipam.KindPool, "default"); err != nil || string(rec.Value) != `{"x":1}` {
		t.Fatalf("Get(pool) after the member is back = %q, %v", rec.Value, err)
	}
}

// startAll starts the given members of c at once (a member is ready once
// the cluster has a leader).
func startAll(t *testing.T, c *testCluster, members ...int) {
	t.Helper()
	errs := make(chan error, len(members))
	for _, i := range members {
		go func() { errs <- c.start(i) }()
	}
	for range members {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
