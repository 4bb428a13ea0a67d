package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/carve-ipam/carve/block"
	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
	"github.com/carve-ipam/carve/pool"
	"github.com/carve-ipam/carve/selector"
)

// This file is a new user's trial of carve as the cluster-wide IPAM of a
// Kubernetes-like cluster on etcd: one node agent per node (a long-running
// process with its own etcd client, Store and Allocator) that assigns pod
// addresses (dual-stack, with the pod's attributes) and releases them when
// pods die, and a central controller that creates the pools, sets node
// labels, runs a Collector and decommissions nodes. It uses only the public
// API of ipam, etcdstore and pool.

// trialPod is a pod as the orchestrator knows it.
type trialPod struct {
	ns, name, node string
	handle         string // "k8s-pod-network.<container id>"
	ips            []netip.Addr
}

// trialCluster stands in for the Kubernetes API server: the pods, services
// and nodes that exist, with the nodes' labels. It also keeps a ledger of
// who holds each address as the agents report it, to catch an address
// handed out twice.
type trialCluster struct {
	mu       sync.Mutex
	pods     map[string]*trialPod // by handle
	services map[string]bool      // by handle
	nodes    map[string]map[string]string
	byAddr   map[netip.Addr]string // address -> handle, as reported by agents
	dup      []string              // addresses reported for a second handle
	seq      atomic.Int64
}

func newTrialCluster() *trialCluster {
	return &trialCluster{pods: map[string]*trialPod{}, services: map[string]bool{}, nodes: map[string]map[string]string{}, byAddr: map[netip.Addr]string{}}
}

func (c *trialCluster) newPod(ns, node string) *trialPod {
	n := c.seq.Add(1)
	p := &trialPod{ns: ns, name: fmt.Sprintf("pod-%d", n), node: node, handle: fmt.Sprintf("k8s-pod-network.c%06d", n)}
	c.mu.Lock()
	c.pods[p.handle] = p
	c.mu.Unlock()
	return p
}

func (c *trialCluster) hold(h string, addrs []netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, x := range addrs {
		if o, ok := c.byAddr[x]; ok && o != h {
			c.dup = append(c.dup, fmt.Sprintf("%s given to %s while %s holds it", x, h, o))
		}
		c.byAddr[x] = h
	}
	if p := c.pods[h]; p != nil {
		p.ips = append([]netip.Addr(nil), addrs...)
	}
}

// unhold forgets h's addresses in the ledger before they are released, so
// that an agent that gets one of them a moment later is no double.
func (c *trialCluster) unhold(h string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for x, o := range c.byAddr {
		if o == h {
			delete(c.byAddr, x)
		}
	}
}

func (c *trialCluster) deletePod(h string) {
	c.mu.Lock()
	delete(c.pods, h)
	c.mu.Unlock()
}

func (c *trialCluster) podsOn(node string) []*trialPod {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*trialPod
	for _, p := range c.pods {
		if p.node == node {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].handle < out[j].handle })
	return out
}

// alive is the Collector's liveness oracle: a pod's address lives while a
// pod with that handle exists on the node the address was assigned for; a
// Service's while the Service exists.
func (c *trialCluster) alive(_ context.Context, al ipam.Allocation) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if al.Attrs["service"] != "" {
		return c.services[al.Handle], nil
	}
	p := c.pods[al.Handle]
	return p != nil && p.node == al.Attrs[ipam.AttrNode], nil
}

func (c *trialCluster) nodeExists(_ context.Context, node string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.nodes[node]
	return ok, nil
}

// trialAgent is a node agent: a process with its own etcd client, Store and
// Allocator, that runs the pods of one node.
type trialAgent struct {
	t    *testing.T
	node string
	cli  *clientv3.Client
	st   *etcdstore.Store
	cs   *trialCrashStore
	a    *ipam.Allocator
}

// trialCrashStore is the agent's etcd Store, through which the test can
// kill the agent's process right after a commit reached etcd: the commit
// is made, its caller gets an error, and so does every later call.
type trialCrashStore struct {
	*etcdstore.Store
	armed, dead atomic.Bool
}

var errTrialDead = errors.New("the agent's process died")

func (s *trialCrashStore) Get(ctx context.Context, kind ipam.Kind, key string) (ipam.Record, error) {
	if s.dead.Load() {
		return ipam.Record{}, errTrialDead
	}
	return s.Store.Get(ctx, kind, key)
}

func (s *trialCrashStore) List(ctx context.Context, kind ipam.Kind, r ipam.KeyRange) ([]ipam.Record, error) {
	if s.dead.Load() {
		return nil, errTrialDead
	}
	return s.Store.List(ctx, kind, r)
}

func (s *trialCrashStore) Create(ctx context.Context, kind ipam.Kind, key string, value []byte) (ipam.Revision, error) {
	if s.dead.Load() {
		return 0, errTrialDead
	}
	return s.Store.Create(ctx, kind, key, value)
}

func (s *trialCrashStore) Update(ctx context.Context, kind ipam.Kind, key string, value []byte, rev ipam.Revision) (ipam.Revision, error) {
	if s.dead.Load() {
		return 0, errTrialDead
	}
	return s.Store.Update(ctx, kind, key, value, rev)
}

func (s *trialCrashStore) Delete(ctx context.Context, kind ipam.Kind, key string, rev ipam.Revision) error {
	if s.dead.Load() {
		return errTrialDead
	}
	return s.Store.Delete(ctx, kind, key, rev)
}

func (s *trialCrashStore) Commit(ctx context.Context, ws []ipam.Write, revs []ipam.Revision) error {
	if s.dead.Load() {
		return errTrialDead
	}
	err := s.Store.Commit(ctx, ws, revs)
	if err == nil && s.armed.Load() {
		s.dead.Store(true)
		return errTrialDead
	}
	return err
}

const trialRequestTimeout = 500 * time.Millisecond

func startTrialAgent(t *testing.T, ctx context.Context, node, prefix, ep string) *trialAgent {
	t.Helper()
	cli, err := dial(ep)
	if err != nil {
		t.Fatal(err)
	}
	st, err := etcdstore.New(ctx, cli, etcdstore.Options{Prefix: prefix, RequestTimeout: trialRequestTimeout})
	if err != nil {
		cli.Close()
		t.Fatal(err)
	}
	cs := &trialCrashStore{Store: st}
	a, err := ipam.New(cs, ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ag := &trialAgent{t: t, node: node, cli: cli, st: st, cs: cs, a: a}
	t.Cleanup(ag.stop)
	return ag
}

// stop ends the agent's process: its store and client go.
func (ag *trialAgent) stop() {
	ag.st.Close()
	ag.cli.Close()
}

func (p *trialPod) attrs() map[string]string {
	return map[string]string{"namespace": p.ns, "pod": p.name}
}

// add is CNI ADD: one address of each family, safe to repeat.
func (ag *trialAgent) add(ctx context.Context, c *trialCluster, p *trialPod) (ipam.AutoAssignResult, error) {
	res, err := ag.a.AutoAssign(ctx, ipam.AutoAssignArgs{
		Num4: 1, Num6: 1, Handle: p.handle, NewHandle: true, Node: ag.node, Attrs: p.attrs(),
	})
	if errors.Is(err, ipam.ErrHandleExists) {
		// An earlier ADD of this container got there: answer as it did.
		res, err = ag.a.AssignedByHandle(ctx, p.handle)
		if err == nil && (len(res.IPv4) != 1 || len(res.IPv6) != 1) {
			err = fmt.Errorf("ADD %s: an earlier ADD holds %d+%d addresses", p.handle, len(res.IPv4), len(res.IPv6))
		}
	}
	if err != nil {
		return res, err
	}
	c.hold(p.handle, trialAddrs(res))
	return res, nil
}

// del is CNI DEL: releasing what is gone already is success.
func (ag *trialAgent) del(ctx context.Context, c *trialCluster, p *trialPod) error {
	c.unhold(p.handle)
	_, err := ag.a.ReleaseByHandle(ctx, p.handle)
	if errors.Is(err, ipam.ErrHandleNotFound) {
		err = nil
	}
	return err
}

func trialAddrs(res ipam.AutoAssignResult) []netip.Addr {
	var out []netip.Addr
	for _, x := range append(slices.Clone(res.IPv4), res.IPv6...) {
		out = append(out, x.Addr)
	}
	return out
}

// nodeAllocations is what the node holds in carve: every allocation whose
// AttrNode is the node. There is no query by node, so it reads every block
// of both families.
func nodeAllocations(ctx context.Context, a *ipam.Allocator, node string) ([]ipam.Allocation, error) {
	var out []ipam.Allocation
	for _, all := range []string{"0.0.0.0/0", "::/0"} {
		als, err := a.Allocations(ctx, netip.MustParsePrefix(all))
		if err != nil {
			return nil, err
		}
		for _, al := range als {
			if al.Attrs[ipam.AttrNode] == node {
				out = append(out, al)
			}
		}
	}
	return out, nil
}

// reconcile is what an agent does when it starts: it compares what carve
// holds for its node with the pods the node runs, releases what belongs to
// no pod (a DEL that never ran, a sandbox given up) or to a pod whose ADD
// never answered (the process died during it: the kubelet will send it
// again, and no request of this node is in flight now), and returns the
// handles released.
func (ag *trialAgent) reconcile(ctx context.Context, c *trialCluster) ([]string, error) {
	known := map[string]bool{}
	for _, p := range c.podsOn(ag.node) {
		c.mu.Lock()
		known[p.handle] = len(p.ips) > 0
		c.mu.Unlock()
	}
	als, err := nodeAllocations(ctx, ag.a, ag.node)
	if err != nil {
		return nil, err
	}
	var rels []ipam.Release
	var gone []string
	for _, al := range als {
		if !known[al.Handle] {
			rels = append(rels, al.Release())
			if !slices.Contains(gone, al.Handle) {
				gone = append(gone, al.Handle)
			}
		}
	}
	if len(rels) == 0 {
		return nil, nil
	}
	for _, h := range gone {
		c.unhold(h)
	}
	_, err = ag.a.ReleaseIPs(ctx, rels...)
	return gone, err
}

var (
	trialRackA4 = pool.Pool{Name: "rack-a-v4", CIDR: netip.MustParsePrefix("10.20.0.0/22"), BlockSize: 27, NodeSelector: `rack == "a"`}
	trialRackA6 = pool.Pool{Name: "rack-a-v6", CIDR: netip.MustParsePrefix("fd00:20:a::/112"), BlockSize: 122, NodeSelector: `rack == "a"`}
	trialRackB4 = pool.Pool{Name: "rack-b-v4", CIDR: netip.MustParsePrefix("10.20.4.0/22"), BlockSize: 27, NodeSelector: `rack == "b"`}
	trialRackB6 = pool.Pool{Name: "rack-b-v6", CIDR: netip.MustParsePrefix("fd00:20:b::/112"), BlockSize: 122, NodeSelector: `rack == "b"`}
	trialLB     = pool.Pool{Name: "services", CIDR: netip.MustParsePrefix("192.0.2.0/27"), BlockSize: 29, AllowedUses: []pool.Use{pool.UseLoadBalancer}}
	// trialRackA4New replaces rack-a-v4 in the migration, with /26 blocks.
	trialRackA4New = pool.Pool{Name: "rack-a-v4-new", CIDR: netip.MustParsePrefix("10.20.8.0/22"), BlockSize: 26, NodeSelector: `rack == "a"`}
)

// trialClock is the controller's clock, advanced by hand to run the
// Collector's grace periods.
type trialClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *trialClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *trialClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func selectorSet(m map[string]string) selector.Set { return selector.Set(m) }

func trialPoolOf(addr netip.Addr, pools ...pool.Pool) string {
	for _, p := range pools {
		if p.CIDR.Contains(addr) {
			return p.Name
		}
	}
	return ""
}

// churn runs ops random ADDs and DELs on the agent, keeping at least keep
// pods, and reports the first error.
func (ag *trialAgent) churn(ctx context.Context, c *trialCluster, seed uint64, ops, keep int) error {
	r := rand.New(rand.NewPCG(seed, 7))
	for i := range ops {
		mine := c.podsOn(ag.node)
		if len(mine) <= keep || r.IntN(2) == 0 {
			p := c.newPod("default", ag.node)
			if _, err := ag.add(ctx, c, p); err != nil {
				return fmt.Errorf("%s op %d: ADD %s: %w", ag.node, i, p.handle, err)
			}
			continue
		}
		p := mine[r.IntN(len(mine))]
		if err := ag.del(ctx, c, p); err != nil {
			return fmt.Errorf("%s op %d: DEL %s: %w", ag.node, i, p.handle, err)
		}
		c.deletePod(p.handle)
	}
	return nil
}

// TestTrialCluster is the whole trial.
func TestTrialCluster(t *testing.T) {
	ctx := t.Context()
	prefix := freshPrefix()
	clk := &trialClock{now: time.Now()}
	ctl, err := ipam.New(newStore(t, newClient(t), etcdstore.Options{Prefix: prefix, RequestTimeout: 5 * time.Second}), ipam.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	c := newTrialCluster()

	// The controller: pools and node labels.
	for _, p := range []pool.Pool{trialRackA4, trialRackA6, trialRackB4, trialRackB6, trialLB} {
		if err := ctl.CreatePool(ctx, p); err != nil {
			t.Fatalf("CreatePool %s: %v", p.Name, err)
		}
	}
	racks := map[string]string{"n1": "a", "n2": "a", "n3": "b", "n4": "b"}
	for n, rack := range racks {
		labels := map[string]string{"rack": rack, "kubernetes.io/hostname": n}
		c.nodes[n] = labels
		if err := ctl.SetNodeLabels(ctx, n, labels); err != nil {
			t.Fatal(err)
		}
	}

	// The agents: n1 reaches etcd through a proxy that can cut it off.
	px := newProxy(t)
	agents := map[string]*trialAgent{}
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		ep := endpoint
		if n == "n1" {
			ep = px.endpoint()
		}
		agents[n] = startTrialAgent(t, ctx, n, prefix, ep)
	}

	// The controller's Collector, with both oracles. Its grace periods
	// run on the controller's clock, which the test advances by hand.
	const grace = 10 * time.Minute
	col, err := ipam.NewCollector(ctl, c.alive, ipam.CollectorOptions{Grace: grace, Nodes: c.nodeExists})
	if err != nil {
		t.Fatal(err)
	}

	// 1. Pod churn on every node at once, and Services' addresses from
	// the controller meanwhile, while the Collector runs pass after pass
	// (each a grace period after the last): with every owner alive it
	// must release nothing but empty blocks.
	t.Log("phase 1: churn")
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	report := func(err error) {
		select {
		case errs <- err:
		default: // enough said
		}
	}
	churnDone := make(chan struct{})
	colDone := make(chan struct{})
	go func() {
		defer close(colDone)
		for {
			r, err := col.Collect(ctx)
			if err != nil {
				report(fmt.Errorf("Collect during churn: %w", err))
			}
			for _, al := range r.Released {
				report(fmt.Errorf("Collect during churn released %s of live %s", al.Addr, al.Handle))
			}
			if len(r.GoneNodes) > 0 || len(r.RepairedHandles) > 0 {
				report(fmt.Errorf("Collect during churn: gone nodes %v, repaired handles %v", r.GoneNodes, r.RepairedHandles))
			}
			clk.advance(grace + time.Second)
			select {
			case <-churnDone:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	for i, n := range []string{"n1", "n2", "n3", "n4"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := agents[n].churn(ctx, c, uint64(i), 30, 3); err != nil {
				report(err)
			}
		}()
	}
	for _, svc := range []string{"web", "api", "legacy"} {
		h := "svc.default." + svc
		res, err := ctl.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Handle: h, NewHandle: true, Use: pool.UseLoadBalancer,
			Attrs: map[string]string{"namespace": "default", "service": svc}})
		if err != nil {
			t.Fatalf("LoadBalancer address for %s: %v", svc, err)
		}
		if !trialLB.CIDR.Contains(res.IPv4[0].Addr) {
			t.Errorf("Service %s got %s, outside %s", svc, res.IPv4[0].Addr, trialLB.CIDR)
		}
		c.mu.Lock()
		c.services[h] = true
		c.mu.Unlock()
		c.hold(h, trialAddrs(res))
	}
	wg.Wait()
	close(churnDone)
	<-colDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	for n, rack := range racks {
		for _, p := range c.podsOn(n) {
			for _, x := range p.ips {
				got := trialPoolOf(x, trialRackA4, trialRackA6, trialRackB4, trialRackB6)
				if got == "" || got[5:6] != rack {
					t.Errorf("pod %s on %s (rack %s) has %s from %q", p.handle, n, rack, x, got)
				}
			}
		}
	}
	trialVerify(t, ctx, ctl, c, "after churn")

	// 2. n3's agent restarts. Before it stops, an ADD of a sandbox that the
	// runtime then gave up (the agent crashed before answering) leaves an
	// address under a handle no pod has; while it is down, one of its pods
	// is deleted, so that DEL never runs. The new agent, on a new client,
	// Store and Allocator on the same prefix, reconciles.
	t.Log("phase 2: agent restart")
	// Then the process dies in the middle of a dual-stack ADD, right after
	// its IPv4 commit reached etcd: the pod exists, its ADD never answered.
	n3 := agents["n3"]
	orphan := &trialPod{ns: "default", name: "sandbox-lost", node: "n3", handle: "k8s-pod-network.lost-sandbox"}
	if _, err := n3.a.AutoAssign(ctx, ipam.AutoAssignArgs{Num4: 1, Num6: 1, Handle: orphan.handle, NewHandle: true, Node: "n3", Attrs: orphan.attrs()}); err != nil {
		t.Fatal(err)
	}
	half := c.newPod("default", "n3")
	n3.cs.armed.Store(true)
	if _, err := n3.add(ctx, c, half); !errors.Is(err, errTrialDead) {
		t.Fatalf("ADD in a dying agent: %v", err)
	}
	if got, err := ctl.AssignedByHandle(ctx, half.handle); err != nil || len(got.IPv4) != 1 || len(got.IPv6) != 0 {
		t.Fatalf("the ADD cut short holds %v, %v; want its IPv4 address only", got, err)
	}
	n3.stop()
	victim := c.podsOn("n3")[0]
	c.deletePod(victim.handle)
	c.unhold(victim.handle)
	n3 = startTrialAgent(t, ctx, "n3", prefix, endpoint)
	agents["n3"] = n3
	gone, err := n3.reconcile(ctx, c)
	if err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	slices.Sort(gone)
	if want := []string{half.handle, orphan.handle, victim.handle}; !slices.Equal(gone, slices.Sorted(slices.Values(want))) {
		t.Errorf("reconcile released %v, want %v", gone, want)
	}
	// The kubelet sends the ADD cut short again; it assigns afresh.
	if res, err := n3.add(ctx, c, half); err != nil || len(res.IPv4) != 1 || len(res.IPv6) != 1 {
		t.Errorf("the ADD sent again after the restart: %v, %v", res, err)
	}
	for _, p := range c.podsOn("n3") {
		res, err := n3.a.AssignedByHandle(ctx, p.handle)
		if err != nil || !slices.Equal(trialAddrs(res), p.ips) {
			t.Errorf("after the restart %s holds %v, %v; the pod has %v", p.handle, trialAddrs(res), err, p.ips)
		}
	}
	trialVerify(t, ctx, ctl, c, "after the restart")

	// 3. n2 moves to rack b: the controller changes its labels; n2's agent
	// serves new pods from rack b once its watch delivers the change.
	t.Log("phase 3: label change")
	n2 := agents["n2"]
	c.mu.Lock()
	c.nodes["n2"] = map[string]string{"rack": "b", "kubernetes.io/hostname": "n2"}
	racks["n2"] = "b"
	c.mu.Unlock()
	if err := ctl.SetNodeLabels(ctx, "n2", c.nodes["n2"]); err != nil {
		t.Fatal(err)
	}
	// NodeLabels on n2's agent returns the new labels at once (it reads
	// etcd), but its AutoAssign keeps serving the old ones until the
	// agent's watch delivers the change, and nothing public says when that
	// is. So the agent waits until a request served with the stored
	// labels picks the pools that its own view of the node (the labels
	// given in the request) picks, without assigning anything: EnsureBlock
	// answers with the node's first block in the pools its labels choose.
	waitFor(t, "n2's agent serves the new labels", func() bool {
		stored, _, err1 := n2.a.EnsureBlock(ctx, ipam.EnsureBlockArgs{Node: "n2", IPv4: true})
		given, _, err2 := n2.a.EnsureBlock(ctx, ipam.EnsureBlockArgs{Node: "n2", IPv4: true, NodeLabels: selectorSet(c.nodes["n2"])})
		return err1 == nil && err2 == nil && stored == given
	})
	p := c.newPod("default", "n2")
	res, err := n2.add(ctx, c, p)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.IPv4[0].Pool + "," + res.IPv6[0].Pool; got != "rack-b-v4,rack-b-v6" {
		t.Errorf("the next pod of n2 came from %s", got)
	}

	// 4. Migration: rack-a-v4 is replaced by rack-a-v4-new (other block
	// size). Create the new pool, disable the old one, recreate every pod
	// still on the old pool, delete it.
	t.Log("phase 4: migration")
	if err := ctl.CreatePool(ctx, trialRackA4New); err != nil {
		t.Fatal(err)
	}
	if err := ctl.DisablePool(ctx, trialRackA4.Name); err != nil {
		t.Fatal(err)
	}
	for n, ag := range agents {
		waitFor(t, n+"'s agent sees rack-a-v4 disabled", func() bool {
			p, err := ag.a.Pool(ctx, trialRackA4.Name)
			return err == nil && p.Disabled
		})
	}
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		for _, old := range c.podsOn(n) {
			if len(old.ips) == 0 || !trialRackA4.CIDR.Contains(old.ips[0]) {
				continue
			}
			np := c.newPod(old.ns, n)
			res, err := agents[n].add(ctx, c, np)
			if err != nil {
				t.Fatalf("recreate %s on %s: %v", old.handle, n, err)
			}
			if racks[n] == "a" && res.IPv4[0].Pool != trialRackA4New.Name {
				t.Errorf("recreated pod on %s got %s from %s", n, res.IPv4[0].Addr, res.IPv4[0].Pool)
			}
			if err := agents[n].del(ctx, c, old); err != nil {
				t.Fatal(err)
			}
			c.deletePod(old.handle)
		}
	}
	left, err := ctl.Allocations(ctx, trialRackA4.CIDR)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("after the migration %d addresses are left in %s: %v", len(left), trialRackA4.Name, left)
	}
	if err := ctl.DeletePool(ctx, trialRackA4.Name); err != nil {
		t.Fatalf("DeletePool: %v", err)
	}
	rep, err := ctl.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Leftovers) > 0 {
		t.Errorf("Leftovers after the migration: %v", rep.Leftovers)
	}
	trialVerify(t, ctx, ctl, c, "after the migration")

	// 5. etcd is unreachable for n1's agent for a while: a pod's ADD there
	// fails, the other nodes go on, and once etcd is back the kubelet's
	// retried ADD succeeds.
	t.Log("phase 5: n1 cut off")
	n1 := agents["n1"]
	px.freeze()
	errs = make(chan error, 16)
	for i, n := range []string{"n2", "n3", "n4"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := agents[n].churn(ctx, c, uint64(100+i), 20, 2); err != nil {
				errs <- err
			}
		}()
	}
	stuck := c.newPod("default", "n1")
	addCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
	start := time.Now()
	_, err = n1.add(addCtx, c, stuck)
	took := time.Since(start)
	cancel()
	t.Logf("ADD while cut off: after %v: %v", took.Round(time.Millisecond), err)
	if err == nil {
		t.Errorf("ADD on n1 succeeded while etcd was unreachable")
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ADD while cut off: %v, does not match context.DeadlineExceeded", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The agent restarts while still cut off: its Store cannot be made
	// until etcd answers.
	n1.stop()
	cli, err := dial(px.endpoint())
	if err != nil {
		t.Fatal(err)
	}
	newCtx, cancel := context.WithTimeout(ctx, time.Second)
	_, err = etcdstore.New(newCtx, cli, etcdstore.Options{Prefix: prefix, RequestTimeout: trialRequestTimeout})
	cancel()
	cli.Close()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("etcdstore.New while cut off: %v, want an error matching context.DeadlineExceeded", err)
	}
	px.unfreeze()
	n1 = startTrialAgent(t, ctx, "n1", prefix, px.endpoint())
	agents["n1"] = n1
	if gone, err := n1.reconcile(ctx, c); err != nil || len(gone) > 0 {
		t.Errorf("n1's reconcile after the outage released %v: %v", gone, err)
	}
	var got ipam.AutoAssignResult
	waitFor(t, "the retried ADD on n1 succeeds", func() bool {
		got, err = n1.add(ctx, c, stuck)
		if err != nil {
			t.Logf("retried ADD: %v", err)
		}
		return err == nil
	})
	if len(got.IPv4) != 1 || len(got.IPv6) != 1 {
		t.Errorf("retried ADD: %v", got)
	}
	trialVerify(t, ctx, ctl, c, "after n1 is back")

	// 6. n4 disappears with its pods (the machine died; DEL never ran),
	// and a Service is deleted while its controller is down. The
	// controller's Collector, with a node oracle, cleans up after the
	// grace period.
	t.Log("phase 6: n4 gone")
	agents["n4"].stop()
	delete(agents, "n4")
	c.mu.Lock()
	delete(c.nodes, "n4")
	for h, p := range c.pods {
		if p.node == "n4" {
			delete(c.pods, h)
			for _, x := range p.ips {
				delete(c.byAddr, x)
			}
		}
	}
	delete(c.services, "svc.default.legacy")
	for x, h := range c.byAddr {
		if h == "svc.default.legacy" {
			delete(c.byAddr, x)
		}
	}
	c.mu.Unlock()
	r1, err := col.Collect(ctx)
	if err != nil {
		t.Fatalf("Collect: %v", err)
	}
	if len(r1.GoneNodes) != 1 || r1.GoneNodes[0].Name != "n4" || !r1.GoneNodes[0].Labels {
		t.Errorf("first pass: gone nodes %+v, want n4 with labels", r1.GoneNodes)
	}
	if len(r1.Released) > 0 || len(r1.GoneNodeBlocks) > 0 {
		t.Errorf("first pass released %v and blocks %v before the grace period", r1.Released, r1.GoneNodeBlocks)
	}
	clk.advance(grace + time.Second)
	r2, err := col.Collect(ctx)
	if err != nil {
		t.Fatalf("Collect: %v", err)
	}
	if !slices.Equal(r2.GoneNodeLabels, []string{"n4"}) {
		t.Errorf("second pass deleted labels of %v, want n4", r2.GoneNodeLabels)
	}
	if len(r2.GoneNodeBlocks) == 0 {
		t.Errorf("second pass released no block of n4")
	}
	var svcGone bool
	for _, al := range r2.Released {
		if al.Handle == "svc.default.legacy" {
			svcGone = true
		} else if al.Attrs[ipam.AttrNode] != "n4" {
			t.Errorf("second pass released %s of %s on %s", al.Addr, al.Handle, al.Attrs[ipam.AttrNode])
		}
	}
	if !svcGone {
		t.Errorf("the deleted Service's address was not released: %v", r2.Released)
	}
	if _, err := ctl.NodeLabels(ctx, "n4"); err != nil {
		t.Error(err)
	}
	trialVerify(t, ctx, ctl, c, "after the Collector")

	// n4 comes back under the same name (a new machine), in rack a: its
	// labels are set again, its agent starts and runs pods; the Collector
	// keeps all of it.
	c.mu.Lock()
	c.nodes["n4"] = map[string]string{"rack": "a", "kubernetes.io/hostname": "n4"}
	racks["n4"] = "a"
	c.mu.Unlock()
	if err := ctl.SetNodeLabels(ctx, "n4", c.nodes["n4"]); err != nil {
		t.Fatal(err)
	}
	agents["n4"] = startTrialAgent(t, ctx, "n4", prefix, endpoint)
	if err := agents["n4"].churn(ctx, c, 200, 10, 2); err != nil {
		t.Fatal(err)
	}
	for _, p := range c.podsOn("n4") {
		if pn := trialPoolOf(p.ips[0], trialRackA4New); pn == "" {
			t.Errorf("the new n4 (rack a) got %s for %s", p.ips[0], p.handle)
		}
	}
	for range 2 {
		r, err := col.Collect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Released) > 0 || len(r.GoneNodes) > 0 {
			t.Errorf("Collect after n4 came back: released %v, gone %v", r.Released, r.GoneNodes)
		}
		clk.advance(grace + time.Second)
	}
	trialVerify(t, ctx, ctl, c, "after n4 came back")

	// 7. n3 is decommissioned: drained (its pods' DELs run), its agent
	// stopped, then the controller releases its blocks and labels.
	t.Log("phase 7: n3 decommissioned")
	n3 = agents["n3"]
	for _, p := range c.podsOn("n3") {
		if err := n3.del(ctx, c, p); err != nil {
			t.Fatal(err)
		}
		c.deletePod(p.handle)
	}
	n3.stop()
	delete(agents, "n3")
	blocks, err := ctl.ReleaseHostAffinities(ctx, "n3", true)
	if err != nil {
		t.Fatalf("ReleaseHostAffinities n3: %v", err)
	}
	if len(blocks) == 0 {
		t.Errorf("n3 held no blocks")
	}
	if err := ctl.SetNodeLabels(ctx, "n3", nil); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	delete(c.nodes, "n3")
	c.mu.Unlock()
	all, err := ctl.AllNodeLabels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || all["n1"] == nil || all["n2"]["rack"] != "b" || all["n4"]["rack"] != "a" {
		t.Errorf("labels left: %v", all)
	}
	us, err := ctl.Utilization(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range us {
		for _, b := range u.Blocks {
			if b.Affinity == block.Host("n3") {
				t.Errorf("block %s still %s", b.Prefix, b.Affinity)
			}
		}
	}

	// The end: everything the cluster runs, and nothing else, is held,
	// once; Check is clean.
	trialVerify(t, ctx, ctl, c, "at the end")
}

// trialVerify checks that carve holds exactly what the cluster's live pods
// and Services hold, that no address was handed out twice, and that Check
// is clean.
func trialVerify(t *testing.T, ctx context.Context, a *ipam.Allocator, c *trialCluster, when string) {
	t.Helper()
	c.mu.Lock()
	if len(c.dup) > 0 {
		t.Errorf("%s: addresses held twice: %v", when, c.dup)
	}
	want := map[netip.Addr]string{}
	for h, p := range c.pods {
		for _, x := range p.ips {
			if o, ok := want[x]; ok {
				t.Errorf("%s: %s held by pods %s and %s", when, x, o, h)
			}
			want[x] = h
		}
	}
	for x, h := range c.byAddr {
		if c.services[h] {
			want[x] = h
		}
	}
	c.mu.Unlock()
	got := map[netip.Addr]string{}
	for _, all := range []string{"0.0.0.0/0", "::/0"} {
		als, err := a.Allocations(ctx, netip.MustParsePrefix(all))
		if err != nil {
			t.Fatalf("%s: Allocations: %v", when, err)
		}
		for _, al := range als {
			got[al.Addr] = al.Handle
		}
	}
	for x, h := range want {
		if got[x] != h {
			t.Errorf("%s: %s should be %s's, carve says %q", when, x, h, got[x])
		}
	}
	for x, h := range got {
		if want[x] != h {
			t.Errorf("%s: carve holds %s for %s, which the cluster does not know", when, x, h)
		}
	}
	r, err := a.Check(ctx)
	if err != nil {
		t.Fatalf("%s: Check: %v", when, err)
	}
	if !r.Clean() {
		for _, p := range r.Problems {
			t.Errorf("%s: Check: %s", when, p)
		}
	}
}

// TestTrialFreezeMidFlight cuts one agent off from etcd again and
// again while it runs pods, as a flaky link would, with the kubelet's
// behaviour: a sandbox whose ADD fails is torn down (DEL) and made again
// under a new container ID; a DEL that fails is sent again. Another agent
// runs pods meanwhile. Once the link is back and every retry went through,
// carve holds exactly the pods' addresses, none twice.
//
// A request whose commit reached etcd while its reply was lost can leave a
// handle record counting an address no block holds (see
// TestLostCommitReplyLeavesHandle), which makes Check unclean. The
// agent cannot remove it (ReleaseByHandle says ErrHandleNotFound), so the
// controller runs Repair, with a settle time since the agents keep
// working, before the final check.
func TestTrialFreezeMidFlight(t *testing.T) {
	ctx := t.Context()
	prefix := freshPrefix()
	ctl, err := ipam.New(newStore(t, newClient(t), etcdstore.Options{Prefix: prefix}), ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []pool.Pool{trialRackA4, trialRackA6} {
		if err := ctl.CreatePool(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	c := newTrialCluster()
	for _, n := range []string{"n1", "n2"} {
		c.nodes[n] = map[string]string{"rack": "a"}
		if err := ctl.SetNodeLabels(ctx, n, c.nodes[n]); err != nil {
			t.Fatal(err)
		}
	}
	px := newProxy(t)
	n1 := startTrialAgent(t, ctx, "n1", prefix, px.endpoint())
	n2 := startTrialAgent(t, ctx, "n2", prefix, endpoint)

	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := uint64(0); !stop.Load(); i++ {
			if err := n2.churn(ctx, c, 1000+i, 5, 2); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	// sandbox runs a pod's sandbox on n1: ADD, and when that fails, DEL
	// and a new sandbox (a new container ID) until one gets its addresses
	// or the time is up; the DELs that fail are left in dels.
	var dels []*trialPod
	var failures []string
	var slowest time.Duration
	timed := func(f func(context.Context) error) error {
		opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		start := time.Now()
		err := f(opCtx)
		slowest = max(slowest, time.Since(start))
		if err != nil {
			failures = append(failures, err.Error())
		}
		return err
	}
	sandbox := func(p *trialPod) {
		for {
			if timed(func(ctx context.Context) error { _, err := n1.add(ctx, c, p); return err }) == nil {
				return
			}
			c.deletePod(p.handle)
			if timed(func(ctx context.Context) error { return n1.del(ctx, c, p) }) != nil {
				dels = append(dels, p)
			}
			p = c.newPod("default", "n1")
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	deadline := time.Now().Add(3 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		if i%15 == 5 {
			px.freeze()
			time.AfterFunc(time.Duration(300+r.IntN(700))*time.Millisecond, px.unfreeze)
		}
		var again []*trialPod
		for _, p := range dels {
			if timed(func(ctx context.Context) error { return n1.del(ctx, c, p) }) != nil {
				again = append(again, p)
			}
		}
		dels = again
		if mine := c.podsOn("n1"); len(mine) < 3 || r.IntN(2) == 0 {
			sandbox(c.newPod("default", "n1"))
		} else {
			p := mine[r.IntN(len(mine))]
			c.deletePod(p.handle)
			if timed(func(ctx context.Context) error { return n1.del(ctx, c, p) }) != nil {
				dels = append(dels, p)
			}
		}
	}
	stop.Store(true)
	wg.Wait()
	px.unfreeze()
	for _, p := range dels {
		waitFor(t, "a DEL sent again on n1 succeeds", func() bool { return n1.del(ctx, c, p) == nil })
	}
	t.Logf("%d failed calls; slowest call %v", len(failures), slowest.Round(time.Millisecond))
	for i, f := range failures {
		if i == 10 {
			break
		}
		t.Logf("  %s", f)
	}
	acts, rep, err := ctl.Repair(ctx, ipam.RepairOptions{Settle: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range acts {
		t.Logf("Repair (the lost-reply fault): %s done=%v %s", a.Problem, a.Done, a.Note)
	}
	if !rep.Clean() {
		t.Errorf("Repair left problems: %v", rep.Problems)
	}
	trialVerify(t, ctx, ctl, c, "after the flaky link")
}
