package etcdstore_test

// Multi-process tests: the test binary runs itself again as child
// processes (TestMain dispatches on childEnv), each with its own etcd client
// and its own allocator, all working on the etcd member of the parent.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/carve-ipam/carve/ipam"
	"github.com/carve-ipam/carve/ipam/etcdstore"
	"github.com/carve-ipam/carve/pool"
)

// childSpec tells a child process what to do.
type childSpec struct {
	Endpoint string
	Prefix   string
	// Name starts every handle the child creates.
	Name string
	// Nodes are the nodes the child's workers assign for, one per worker
	// (workers share one allocator, as the pods of one node share its
	// IPAM plugin's datastore).
	Nodes []string
	// Ops is how many operations each worker does; 0 means until killed.
	Ops  int
	Seed uint64
	// MaxHeld caps the handles one worker holds at once.
	MaxHeld int
}

// The child's report, one line per event on stdout:
//
//	A <handle> <addr>,...   AutoAssign returned these addresses
//	N <handle>              AutoAssign found no space (and kept nothing)
//	r <handle>              ReleaseByHandle starts
//	R <handle> <addr>,...   ReleaseByHandle released these addresses
//	E <message>             a failure; the child exits with status 1

// runChild is the main function of a child process.
func runChild(specJSON string) int {
	var spec childSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Println("E bad spec:", err)
		return 1
	}
	if err := child(spec); err != nil {
		fmt.Println("E", strings.ReplaceAll(err.Error(), "\n", " "))
		return 1
	}
	return 0
}

func child(spec childSpec) error {
	ctx := context.Background()
	cli, err := dial(spec.Endpoint)
	if err != nil {
		return err
	}
	defer cli.Close()
	nctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := etcdstore.New(nctx, cli, etcdstore.Options{Prefix: spec.Prefix, RequestTimeout: 10 * time.Second})
	if err != nil {
		return err
	}
	defer s.Close()
	a, err := ipam.New(s, ipam.Options{ReclaimAge: 100 * time.Millisecond})
	if err != nil {
		return err
	}
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	errs := make(chan error, len(spec.Nodes))
	for w, node := range spec.Nodes {
		go func() {
			errs <- worker(ctx, a, spec, w, node, say)
		}()
	}
	var all []error
	for range spec.Nodes {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

// worker assigns and releases at random for one node.
func worker(ctx context.Context, a *ipam.Allocator, spec childSpec, w int, node string, say func(string, ...any)) error {
	rng := rand.New(rand.NewPCG(spec.Seed, uint64(w)))
	var held []string
	for i := 0; spec.Ops == 0 || i < spec.Ops; i++ {
		if len(held) < spec.MaxHeld && (len(held) == 0 || rng.IntN(3) > 0) {
			h := fmt.Sprintf("%s-w%d-%d", spec.Name, w, i)
			args := ipam.AutoAssignArgs{Num4: 1, Handle: h, Node: node, Attrs: map[string]string{"pod": h}}
			if rng.IntN(4) == 0 {
				args.Num4 = 2
			}
			if rng.IntN(3) == 0 {
				args.Num6 = 1
			}
			res, err := a.AutoAssign(ctx, args)
			var ae *ipam.AssignError
			switch {
			case errors.As(err, &ae) && errors.Is(err, ipam.ErrNoSpace):
				say("N %s", h)
				continue
			case err != nil:
				return fmt.Errorf("assign %s on %s: %w", h, node, err)
			}
			var addrs []netip.Addr
			for _, x := range slices.Concat(res.IPv4, res.IPv6) {
				addrs = append(addrs, x.Addr)
			}
			say("A %s %s", h, joinAddrs(addrs))
			held = append(held, h)
			continue
		}
		j := rng.IntN(len(held))
		h := held[j]
		held = slices.Delete(held, j, j+1)
		say("r %s", h)
		addrs, err := a.ReleaseByHandle(ctx, h)
		if err != nil {
			return fmt.Errorf("release %s: %w", h, err)
		}
		say("R %s %s", h, joinAddrs(addrs))
	}
	return nil
}

func joinAddrs(addrs []netip.Addr) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

// childLog is what the parent learned from a child's report.
type childLog struct {
	assigned  map[string][]netip.Addr // A lines, sorted addresses
	releasing map[string]bool         // r lines
	released  map[string][]netip.Addr // R lines
	noSpace   int
	failure   string
}

func newChildLog() *childLog {
	return &childLog{assigned: map[string][]netip.Addr{}, releasing: map[string]bool{}, released: map[string][]netip.Addr{}}
}

// ops counts the finished operations.
func (l *childLog) ops() int { return len(l.assigned) + len(l.released) + l.noSpace }

func (l *childLog) add(line string) error {
	kind, rest, _ := strings.Cut(line, " ")
	handle, list, _ := strings.Cut(rest, " ")
	parse := func() ([]netip.Addr, error) {
		var out []netip.Addr
		for _, f := range strings.Split(list, ",") {
			if f == "" {
				continue
			}
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, err
			}
			out = append(out, a)
		}
		slices.SortFunc(out, netip.Addr.Compare)
		return out, nil
	}
	var err error
	switch kind {
	case "A":
		l.assigned[handle], err = parse()
	case "R":
		l.released[handle], err = parse()
	case "r":
		l.releasing[handle] = true
	case "N":
		l.noSpace++
	case "E":
		l.failure = rest
	default:
		err = fmt.Errorf("unexpected line %q", line)
	}
	return err
}

// held returns the handles the child reported assigned and never started
// to release, with their addresses.
func (l *childLog) held() map[string][]netip.Addr {
	out := map[string][]netip.Addr{}
	for h, addrs := range l.assigned {
		if !l.releasing[h] {
			out[h] = addrs
		}
	}
	return out
}

// proc is a running child.
type proc struct {
	cmd    *exec.Cmd
	log    *childLog
	mu     sync.Mutex // guards log while the child runs
	done   chan struct{}
	stderr bytes.Buffer
	// progress receives the number of finished operations after each one.
	progress chan int
}

// startChild runs the test binary as a child with spec.
func startChild(t *testing.T, spec childSpec) *proc {
	t.Helper()
	js, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	p := &proc{cmd: cmd, log: newChildLog(), done: make(chan struct{}), progress: make(chan int, 1)}
	cmd.Stderr = &p.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.mu.Lock()
			if err := p.log.add(sc.Text()); err != nil && p.log.failure == "" {
				p.log.failure = err.Error()
			}
			n := p.log.ops()
			p.mu.Unlock()
			select {
			case p.progress <- n:
			default:
			}
		}
	}()
	return p
}

// wait waits for the child to exit, which must be cleanly unless killed,
// and returns its report.
func (p *proc) wait(t *testing.T, killed bool) *childLog {
	t.Helper()
	<-p.done
	err := p.cmd.Wait()
	if p.log.failure != "" {
		t.Fatalf("child %d failed: %s\n%s", p.cmd.Process.Pid, p.log.failure, p.stderr.String())
	}
	if !killed && err != nil {
		t.Fatalf("child exited with %v\n%s", err, p.stderr.String())
	}
	return p.log
}

// killAfter sends SIGKILL once the child finished n operations.
func (p *proc) killAfter(t *testing.T, n int) {
	t.Helper()
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case got := <-p.progress:
			if got >= n {
				if err := p.cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				return
			}
		case <-p.done:
			t.Fatalf("child ended before %d operations: %s\n%s", n, p.log.failure, p.stderr.String())
		case <-timeout:
			t.Fatalf("child did not finish %d operations in 2 minutes", n)
		}
	}
}

// The shared scene of the multi-process tests: small pools, so that nodes
// claim every block, reclaim empty ones and borrow from each other.
var (
	testPool4 = pool.Pool{Name: "v4", CIDR: netip.MustParsePrefix("10.10.0.0/26"), BlockSize: 29}   // 8 blocks of 8
	testPool6 = pool.Pool{Name: "v6", CIDR: netip.MustParsePrefix("fd00:10::/120"), BlockSize: 125} // 32 blocks of 8
	testNodes = []string{"node-a", "node-b", "node-c", "node-d", "node-e"}
)

// setupScene creates the pools and configuration under a fresh prefix and
// returns the prefix and an allocator on it.
func setupScene(t *testing.T) (string, *ipam.Allocator, ipam.Store) {
	t.Helper()
	prefix := freshPrefix()
	s := newStore(t, newClient(t), etcdstore.Options{Prefix: prefix})
	a, err := ipam.New(s, ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, p := range []pool.Pool{testPool4, testPool6} {
		if err := a.CreatePool(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	cfg := ipam.DefaultConfig()
	cfg.MaxBlocksPerHost = 2
	if err := a.SetConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	return prefix, a, s
}

var scenePools = []netip.Prefix{testPool4.CIDR, testPool6.CIDR}

// TestProcesses runs four child processes with two nodes each, assigning
// and releasing at once, then checks the store against their reports.
func TestProcesses(t *testing.T) {
	prefix, a, s := setupScene(t)
	const children = 4
	ops := 60
	if testing.Short() {
		ops = 20
	}
	var procs []*proc
	for i := range children {
		procs = append(procs, startChild(t, childSpec{
			Endpoint: endpoint, Prefix: prefix, Name: fmt.Sprintf("c%d", i),
			Nodes: []string{testNodes[(2*i)%len(testNodes)], testNodes[(2*i+1)%len(testNodes)]},
			Ops:   ops, Seed: uint64(i), MaxHeld: 8,
		}))
	}
	held := map[string][]netip.Addr{}
	var assigns, releases, noSpace int
	for _, p := range procs {
		l := p.wait(t, false)
		for h, addrs := range l.held() {
			held[h] = addrs
		}
		assigns += len(l.assigned)
		releases += len(l.released)
		noSpace += l.noSpace
		// A released handle gave back what it was assigned.
		for h, addrs := range l.released {
			if !slices.Equal(addrs, l.assigned[h]) {
				t.Errorf("handle %s released %v, was assigned %v", h, addrs, l.assigned[h])
			}
		}
	}
	t.Logf("%d processes: %d assigns, %d releases, %d without space, %d handles held at the end", children, assigns, releases, noSpace, len(held))

	st := readState(t, s, scenePools)
	st.check(t, checkMode{})
	checkHeld(t, a, st, held, true)

	// Blocks were claimed by several nodes and some addresses borrowed.
	owners := map[string]bool{}
	borrowed := 0
	use, err := a.Utilization(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var inUse uint64
	for _, pu := range use {
		inUse += pu.InUse
		for _, bu := range pu.Blocks {
			owners[bu.Affinity.String()] = true
			borrowed += bu.Borrowed
		}
	}
	if want := len(st.owner); inUse != uint64(want) {
		t.Errorf("Utilization counts %d addresses in use, the blocks hold %d", inUse, want)
	}
	t.Logf("blocks affine to %d owners, %d addresses borrowed", len(owners), borrowed)
}

// checkHeld checks the children's reports against the store: each handle
// they hold has exactly its addresses (through the allocator and in the
// decoded blocks) and, if exact, nothing else is allocated.
func checkHeld(t *testing.T, a *ipam.Allocator, st *storeState, held map[string][]netip.Addr, exact bool) {
	t.Helper()
	n := 0
	for h, want := range held {
		got, err := a.IPsByHandle(t.Context(), h)
		if err != nil {
			t.Errorf("IPsByHandle(%s): %v", h, err)
			continue
		}
		slices.SortFunc(got, netip.Addr.Compare)
		if !slices.Equal(got, want) {
			t.Errorf("handle %s holds %v, its process was assigned %v", h, got, want)
		}
		if fromBlocks := st.addrsOf(h); !slices.Equal(fromBlocks, want) {
			t.Errorf("the blocks give handle %s %v, its process was assigned %v", h, fromBlocks, want)
		}
		n += len(want)
	}
	if exact && n != len(st.owner) {
		t.Errorf("the processes hold %d addresses, the blocks %d", n, len(st.owner))
	}
}

// TestKill kills a child with SIGKILL in the middle of its work, three
// times, and checks that what is left is what the engine can repair; then
// another process assigns on the same nodes, and the leftovers are
// released.
func TestKill(t *testing.T) {
	prefix, a, s := setupScene(t)
	ctx := t.Context()
	direct := newClient(t)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for round := range 3 {
		p := startChild(t, childSpec{
			Endpoint: endpoint, Prefix: prefix, Name: fmt.Sprintf("killed%d", round),
			Nodes: testNodes[:4], Seed: uint64(round) + 100, MaxHeld: 4,
		})
		p.killAfter(t, 20+rng.IntN(40))
		l := p.wait(t, true)

		// The child's last requests may still be made after it died:
		// read the state and Check it where etcd stood still.
		st, rep := settledState(t, direct, s, a)
		left := st.check(t, checkMode{highCounts: true, staleIndex: true})
		t.Logf("kill %d after %d operations: %d handle counts too high, %d stale affinity index entries (cumulative)",
			round+1, l.ops(), left.highCounts, left.staleIndex)
		// The engine's own checker agrees, and calls all of it repairable.
		checkReportOf(t, rep, left)
		// Every assignment the child reported stays, unless it started to
		// release it; every release it reported is done.
		checkHeld(t, a, st, l.held(), false)
		for h := range l.released {
			if got := st.addrsOf(h); len(got) != 0 {
				t.Errorf("handle %s was released but the blocks still give it %v", h, got)
			}
		}
		for h := range l.releasing {
			if _, done := l.released[h]; !done {
				if got := st.addrsOf(h); len(got) > 0 && !isSubset(got, l.assigned[h]) {
					t.Errorf("handle %s, killed while releasing, holds %v; was assigned %v", h, got, l.assigned[h])
				}
			}
		}
	}

	// Another process carries on, on the killed child's nodes.
	p := startChild(t, childSpec{
		Endpoint: endpoint, Prefix: prefix, Name: "after",
		Nodes: testNodes[:4], Ops: 20, Seed: 7, MaxHeld: 3,
	})
	after := p.wait(t, false)
	if len(after.assigned) == 0 {
		t.Fatalf("no assignment succeeded after the kills (%d without space)", after.noSpace)
	}

	// Clean up after the killed children: release every handle of theirs
	// that holds addresses or has a record. ReleaseByHandle lowers a count
	// only by what it releases, so a count a kill left too high stays (it
	// cannot be told from an assignment in flight) and is Repair's; for a
	// record whose counts no block bears out, it reports ErrHandleNotFound.
	st := readState(t, s, scenePools)
	leftover := map[string]bool{} // true: the handle holds an address
	for _, h := range st.owner {
		leftover[h] = true
	}
	for h := range st.inHandles {
		if _, ok := leftover[h]; !ok {
			leftover[h] = false
		}
	}
	repaired := 0
	for h, holds := range leftover {
		if !strings.HasPrefix(h, "killed") {
			continue
		}
		_, err := a.ReleaseByHandle(ctx, h)
		if err != nil && (holds || !errors.Is(err, ipam.ErrHandleNotFound)) {
			t.Errorf("ReleaseByHandle(%s) after the kill: %v", h, err)
		}
		repaired++
	}
	st = readState(t, s, scenePools)
	left := st.check(t, checkMode{highCounts: true, staleIndex: true})
	checkHeld(t, a, st, after.held(), true)
	checkReport(t, a, left)
	// What is left, counts too high and stale index entries, is for Repair.
	actions, rep, err := a.Repair(ctx, ipam.RepairOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Clean() {
		t.Errorf("after Repair, Check reports %v", rep.Problems)
	}
	readState(t, s, scenePools).check(t, checkMode{})
	t.Logf("released %d handles left by the killed processes, Repair took %d actions; the store is consistent", repaired, len(actions))
}

// settledState reads s's state and runs a's Check on the same state: a
// killed child's last request may reach etcd after the child died (its
// bytes were on their way), so it reads until etcd's revision is the same
// before and after both.
func settledState(t *testing.T, c *clientv3.Client, s ipam.Store, a *ipam.Allocator) (*storeState, *ipam.Report) {
	t.Helper()
	revision := func() int64 {
		resp, err := c.Get(t.Context(), "/carve-test-revision")
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	for range 50 {
		before := revision()
		st := readState(t, s, scenePools)
		rep, err := a.Check(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if revision() == before {
			return st, rep
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("etcd kept changing after the child died")
	return nil, nil
}

// checkReport runs the allocator's Check and expects exactly the leftovers
// the independent check found, all repairable.
func checkReport(t *testing.T, a *ipam.Allocator, want leftovers) {
	t.Helper()
	rep, err := a.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	checkReportOf(t, rep, want)
}

// checkReportOf is checkReport with the report of a Check made already.
func checkReportOf(t *testing.T, rep *ipam.Report, want leftovers) {
	t.Helper()
	var got leftovers
	for _, p := range rep.Problems {
		switch {
		case !p.Repairable:
			t.Errorf("Check reports an unrepairable problem: %v", p)
		case p.Kind == ipam.ProblemHandleExcess:
			got.highCounts++
		case p.Kind == ipam.ProblemAffinityStale:
			got.staleIndex++
		default:
			t.Errorf("Check reports a problem a crash should not leave: %v", p)
		}
	}
	if got != want {
		t.Errorf("Check finds %+v, the independent check %+v", got, want)
	}
}

func isSubset(sub, of []netip.Addr) bool {
	for _, a := range sub {
		if !slices.Contains(of, a) {
			return false
		}
	}
	return true
}
