package etcdstore_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/carve-ipam/carve/ipam/etcdstore"
	"github.com/carve-ipam/carve/ipam/etcdstore/internal/embedetcd"
)

// endpoint is the client URL of the etcd member every test of this binary
// shares; each test works under its own key prefix.
var endpoint string

// childEnv, when set, makes the test binary a child process of a
// multi-process test (see process_test.go) instead of running tests.
const childEnv = "CARVE_ETCDSTORE_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(runChild(spec))
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "etcdstore-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	srv, err := embedetcd.Start(dir, 30*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer srv.Close()
	endpoint = srv.Endpoint()
	return m.Run()
}

// dial returns a new client of etcd at ep.
func dial(ep string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{ep},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
}

// newClient returns a client of the shared etcd, closed when the test ends.
func newClient(t testing.TB) *clientv3.Client {
	t.Helper()
	return newClientTo(t, endpoint)
}

func newClientTo(t testing.TB, ep string) *clientv3.Client {
	t.Helper()
	c, err := dial(ep)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var prefixes atomic.Int64

// freshPrefix returns a key prefix no other test uses.
func freshPrefix() string { return fmt.Sprintf("/carve-test/%d/", prefixes.Add(1)) }

// newStore returns a store on c, closed when the test ends. An empty
// opts.Prefix gets a fresh one.
func newStore(t testing.TB, c *clientv3.Client, opts etcdstore.Options) *etcdstore.Store {
	t.Helper()
	if opts.Prefix == "" {
		opts.Prefix = freshPrefix()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := etcdstore.New(ctx, c, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// waitFor polls cond until it holds or 10 seconds pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// proxy forwards TCP connections to etcd and can stop forwarding, to make
// etcd look hung to a client without stopping it for the others.
type proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	frozen bool
	thaw   chan struct{} // closed when frozen ends
	conns  []net.Conn

	toClients atomic.Int64 // bytes forwarded from etcd to the clients
}

// newProxy starts a proxy to the shared etcd, stopped when the test ends.
func newProxy(t testing.TB) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := endpoint[len("http://"):]
	p := &proxy{ln: ln, target: u, thaw: make(chan struct{})}
	close(p.thaw)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

// endpoint returns the URL clients of the proxy use.
func (p *proxy) endpoint() string { return "http://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		go p.pipe(out, in, nil)
		go p.pipe(in, out, &p.toClients)
	}
}

// pipe copies from src to dst, holding every chunk while the proxy is
// frozen, and adds the bytes it copies to count unless it is nil.
func (p *proxy) pipe(dst, src net.Conn, count *atomic.Int64) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			thaw := p.thaw
			p.mu.Unlock()
			<-thaw
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			if count != nil {
				count.Add(int64(n))
			}
		}
		if err != nil {
			return
		}
	}
}

// freeze stops forwarding until unfreeze: requests through the proxy hang.
func (p *proxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.frozen {
		p.frozen = true
		p.thaw = make(chan struct{})
	}
}

func (p *proxy) unfreeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen {
		p.frozen = false
		close(p.thaw)
	}
}

func (p *proxy) close() {
	p.ln.Close()
	p.unfreeze()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}
