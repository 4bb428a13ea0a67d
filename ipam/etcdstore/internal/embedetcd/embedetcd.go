// Package embedetcd runs a single-member etcd server inside the process, on
// loopback ports chosen by the kernel, for the tests, the benchmarks and the
// example of package etcdstore.
//
// It is tuned for tests, not for keeping data: raft ticks every 10ms instead
// of 100ms so the member elects itself at once, fsync is off, and the server
// logs nothing.
package embedetcd

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is a running embedded etcd member.
type Server struct {
	etcd     *embed.Etcd
	endpoint string
}

// Start starts a member that keeps its data in dir (which should be empty,
// for example from t.TempDir) and returns once it serves clients, or fails
// after timeout.
func Start(dir string, timeout time.Duration) (*Server, error) {
	cfg := embed.NewConfig()
	cfg.Name = "carve-test"
	cfg.Dir = dir
	// Port 0 everywhere: the kernel picks free ports, so parallel test
	// binaries never collide. A single member never dials its own peer URL,
	// so the peer address need not be known in advance.
	loopback := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg.ListenClientUrls = []url.URL{loopback}
	cfg.AdvertiseClientUrls = []url.URL{loopback}
	cfg.ListenPeerUrls = []url.URL{loopback}
	cfg.AdvertisePeerUrls = []url.URL{loopback}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedetcd: start in %s: %w", dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedetcd: start in %s: %w", dir, err)
	case <-time.After(timeout):
		e.Close()
		return nil, fmt.Errorf("embedetcd: start in %s: not ready after %v", dir, timeout)
	}
	if len(e.Clients) == 0 {
		e.Close()
		return nil, errors.New("embedetcd: the server has no client listener")
	}
	return &Server{etcd: e, endpoint: "http://" + e.Clients[0].Addr().String()}, nil
}

// Endpoint returns the URL clients connect to, such as
// "http://127.0.0.1:40123".
func (s *Server) Endpoint() string { return s.endpoint }

// Close stops the member and waits for it to shut down.
func (s *Server) Close() { s.etcd.Close() }
