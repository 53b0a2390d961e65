// Package natstest runs real NATS JetStream servers in-process for tests:
// a single node, or a cluster of several, each with its own store directory
// under t.TempDir(), listening on free loopback ports. Servers can be
// stopped and restarted on the same port and store to simulate outages.
//
// When the environment variable QJ_NATS_SERVER_BIN names a nats-server
// binary, RunServer starts that binary as a subprocess instead (external
// mode: `make test-nats210` runs the tests against nats-server 2.10 this
// way); see [ServerBinEnv].
package natstest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is one embedded nats-server that can be restarted, also from a
// goroutine other than the test's.
type Server struct {
	mu   sync.Mutex
	srv  *server.Server
	opts *server.Options
	name string
	// ext is the subprocess in external mode, else nil.
	ext *external
}

// Option adjusts a server's options before it starts.
type Option func(*server.Options)

// RunServer starts a single JetStream node and stops it at the end of the
// test. In external mode (QJ_NATS_SERVER_BIN set) it runs that binary, and
// skips the test when an option cannot be given to it.
func RunServer(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	o := singleOptions(tb.TempDir())
	for _, opt := range opts {
		opt(o)
	}
	if bin := ExternalBin(); bin != "" {
		return runExternal(tb, bin, o)
	}
	s := &Server{opts: o, name: o.ServerName}
	s.start(tb)
	tb.Cleanup(s.Stop)
	return s
}

// singleOptions are a single node's options before the test's.
func singleOptions(storeDir string) *server.Options {
	return &server.Options{
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   storeDir,
		NoLog:      true,
		NoSigs:     true,
		MaxPayload: 8 << 20,
	}
}

func (s *Server) start(tb testing.TB) {
	tb.Helper()
	if err := s.boot(); err != nil {
		tb.Fatal(err)
	}
}

// boot starts the server without failing the test, so that it can run in a
// goroutine other than the test's.
func (s *Server) boot() error {
	// The server keeps and reads the options it is given: hand it a copy,
	// so that pinning the ports below does not race with it.
	opts := *s.opts
	srv, err := server.NewServer(&opts)
	if err != nil {
		return fmt.Errorf("natstest: new server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(20 * time.Second) {
		return fmt.Errorf("natstest: server %s not ready", s.opts.ServerName)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.srv = srv
	if s.name == "" {
		s.name = srv.Name()
	}
	// Pin the chosen ports so that a restart comes back where clients
	// reconnect to.
	s.opts.Port = srv.Addr().(*net.TCPAddr).Port
	if ca := srv.ClusterAddr(); ca != nil {
		s.opts.Cluster.Port = ca.Port
	}
	return nil
}

// current is the running in-process server, or nil (also in external mode).
func (s *Server) current() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv
}

// Name is the server's name (its cluster peer name).
func (s *Server) Name() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.name
}

// Running reports whether the server is up.
func (s *Server) Running() bool {
	if s.ext != nil {
		return s.ext.running()
	}
	srv := s.current()
	return srv != nil && srv.Running()
}

// JetStreamIsLeader reports whether the server leads the meta group (a
// single external server always does while it runs).
func (s *Server) JetStreamIsLeader() bool {
	if s.ext != nil {
		return s.ext.running()
	}
	srv := s.current()
	return srv != nil && srv.Running() && srv.JetStreamIsLeader()
}

// URL is the client URL.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("nats://127.0.0.1:%d", s.opts.Port)
}

// Stop shuts the server down and waits; stopping twice is harmless.
func (s *Server) Stop() {
	if s.ext != nil {
		s.ext.stop()
		return
	}
	if srv := s.current(); srv != nil && srv.Running() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

// Restart starts the server again on the same port and store.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if err := s.TryRestart(); err != nil {
		tb.Fatal(err)
	}
}

// TryRestart is Restart for goroutines other than the test's.
func (s *Server) TryRestart() error {
	s.Stop()
	if s.ext != nil {
		return s.ext.start()
	}
	return s.boot()
}

// Connect opens a client connection that reconnects forever, closed at the
// end of the test.
func Connect(tb testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		tb.Fatalf("natstest: connect %s: %v", url, err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(10*time.Second))
	if err != nil {
		tb.Fatalf("natstest: jetstream: %v", err)
	}
	return nc, js
}

// Cluster is an in-process JetStream cluster.
type Cluster struct {
	Servers []*Server
}

// RunCluster starts n routed JetStream nodes and waits for a meta leader.
// The cluster ports are picked free, then bound by the servers; should a
// parallel test take one in between, it starts over with new ports.
func RunCluster(tb testing.TB, n int, opts ...Option) *Cluster {
	tb.Helper()
	if bin := ExternalBin(); bin != "" {
		tb.Skipf("natstest: a cluster runs in-process only; %s=%s is set (external mode), so this test runs only without it", ServerBinEnv, bin)
	}
	var lastErr error
	for range 5 {
		c, err := tryCluster(tb, n, opts)
		if err == nil {
			tb.Cleanup(c.stop)
			c.WaitMetaLeader(tb, 30*time.Second)
			return c
		}
		lastErr = err
	}
	tb.Fatalf("natstest: cluster of %d: %v", n, lastErr)
	return nil
}

func tryCluster(tb testing.TB, n int, opts []Option) (*Cluster, error) {
	tb.Helper()
	ports := freePorts(tb, n)
	routes := make([]string, n)
	for i, p := range ports {
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", p)
	}
	c := &Cluster{}
	for i := range n {
		o := &server.Options{
			Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: tb.TempDir(),
			NoLog: true, NoSigs: true, MaxPayload: 8 << 20,
			ServerName: fmt.Sprintf("n%d", i+1),
			Cluster:    server.ClusterOpts{Name: "qj-test", Host: "127.0.0.1", Port: ports[i]},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		}
		for _, opt := range opts {
			opt(o)
		}
		s := &Server{opts: o, name: o.ServerName}
		if err := s.boot(); err != nil {
			c.stop()
			return nil, err
		}
		c.Servers = append(c.Servers, s)
	}
	return c, nil
}

func (c *Cluster) stop() {
	for _, s := range c.Servers {
		s.Stop()
	}
}

// URLs is every client URL, comma-separated, for nats.Connect.
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.Servers))
	for i, s := range c.Servers {
		urls[i] = s.URL()
	}
	return strings.Join(urls, ",")
}

// MetaLeader is the running node that leads the meta group, or nil.
func (c *Cluster) MetaLeader() *Server {
	for _, s := range c.Servers {
		if s.JetStreamIsLeader() {
			return s
		}
	}
	return nil
}

// WaitMetaLeader waits until some node leads the meta group.
func (c *Cluster) WaitMetaLeader(tb testing.TB, timeout time.Duration) *Server {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if l := c.MetaLeader(); l != nil {
			return l
		}
		time.Sleep(50 * time.Millisecond)
	}
	tb.Fatalf("natstest: no meta leader after %s", timeout)
	return nil
}

// StreamLeader is the node leading stream name, as js sees it, or nil.
func (c *Cluster) StreamLeader(ctx context.Context, js jetstream.JetStream, name string) *Server {
	s, err := js.Stream(ctx, name)
	if err != nil || s.CachedInfo().Cluster == nil {
		return nil
	}
	leader := s.CachedInfo().Cluster.Leader
	for _, srv := range c.Servers {
		if srv.Name() == leader {
			return srv
		}
	}
	return nil
}

func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	var ports []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("natstest: free port: %v", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		_ = ln.Close()
	}
	return ports
}
