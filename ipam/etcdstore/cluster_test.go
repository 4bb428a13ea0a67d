package etcdstore_test

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// testCluster is an etcd cluster of several members inside the test
// binary, whose members can be stopped and started again on the same
// ports and data.
type testCluster struct {
	t       *testing.T
	names   []string
	dirs    []string
	client  []url.URL
	peer    []url.URL
	members []*embed.Etcd
}

// freePorts returns n loopback ports free at the time of the call.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var lns []net.Listener
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

func newCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	ports := freePorts(t, 2*n)
	c := &testCluster{t: t, members: make([]*embed.Etcd, n)}
	for i := range n {
		c.names = append(c.names, fmt.Sprintf("m%d", i))
		c.dirs = append(c.dirs, t.TempDir())
		c.client = append(c.client, url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[2*i])})
		c.peer = append(c.peer, url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[2*i+1])})
	}
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- c.start(i) }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for i := range c.members {
			c.stop(i)
		}
	})
	return c
}

// start starts member i, on its ports and data, and waits for it to be
// ready (which takes a leader).
func (c *testCluster) start(i int) error {
	var initial []string
	for j := range c.names {
		initial = append(initial, c.names[j]+"="+c.peer[j].String())
	}
	cfg := embed.NewConfig()
	cfg.Name = c.names[i]
	cfg.Dir = c.dirs[i]
	cfg.ListenClientUrls = []url.URL{c.client[i]}
	cfg.AdvertiseClientUrls = []url.URL{c.client[i]}
	cfg.ListenPeerUrls = []url.URL{c.peer[i]}
	cfg.AdvertisePeerUrls = []url.URL{c.peer[i]}
	cfg.InitialCluster = strings.Join(initial, ",")
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start %s: %w", c.names[i], err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("start %s: %w", c.names[i], err)
	case <-time.After(30 * time.Second):
		e.Close()
		return fmt.Errorf("start %s: not ready after 30s", c.names[i])
	}
	c.members[i] = e
	return nil
}

func (c *testCluster) stop(i int) {
	if c.members[i] != nil {
		// At once, without handing leadership over first.
		c.members[i].Server.HardStop()
		c.members[i].Close()
		c.members[i] = nil
	}
}

func (c *testCluster) endpoint(i int) string { return c.client[i].String() }
