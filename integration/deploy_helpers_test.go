package integration

// Helpers for the deployment tests (auth_test.go, permissions_test.go): a
// server started from a nats-server configuration file, a server log that
// collects permission violations, a test PKI for mutual TLS, and a way to run
// `queue-janitor serve` once and get its error.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/example/queue-janitor/cmd/queue-janitor/cli"
)

// deployNATSConf is the server configuration the compose stack mounts.
var deployNATSConf = filepath.Join("..", "deploy", "nats", "nats-server.conf")

// The users of deploy/nats/nats-server.conf and their development passwords.
const (
	backendUser     = "backend"
	backendPassword = "backend-dev-password"
	janitorUser     = "janitor"
	janitorPassword = "janitor-dev-password"
	// janitorInbox is the inbox prefix the janitor user may read.
	janitorInbox = "_INBOX_janitor"
	// appUser is the backend's user in the other account (APP), which
	// holds its streams that are not job queues.
	appUser     = "app"
	appPassword = "app-dev-password"
)

// confServer is a nats-server started from a configuration file.
type confServer struct {
	srv *server.Server
	log *serverLog
	// storeDir is where its JetStream data is, for a reload.
	storeDir string
}

// URL is the client URL.
func (s *confServer) URL() string { return s.srv.ClientURL() }

// startConfServer starts a server from the configuration file at path, as
// `nats-server -c path` would, except that it listens on a free loopback
// port with monitoring off and keeps its JetStream data in t.TempDir(). It
// stops at the end of the test.
func startConfServer(t *testing.T, path string) *confServer {
	t.Helper()
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server config %s: %v", path, err)
	}
	if !opts.JetStream {
		t.Fatalf("nats-server config %s does not enable JetStream", path)
	}
	opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
	opts.HTTPHost, opts.HTTPPort = "", 0
	opts.StoreDir = t.TempDir()
	opts.NoSigs = true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats-server from %s: %v", path, err)
	}
	log := &serverLog{}
	srv.SetLoggerV2(log, false, false, false)
	srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.ReadyForConnections(20 * time.Second) {
		t.Fatalf("nats-server from %s not ready", path)
	}
	return &confServer{srv: srv, log: log, storeDir: opts.StoreDir}
}

// serverLog is a server.Logger that keeps the server's errors and warnings,
// where it reports permission violations ("Publish Violation - Subject ...",
// "Subscription Violation - Subject ...").
type serverLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *serverLog) add(format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, v...))
}

func (l *serverLog) Noticef(string, ...any)         {}
func (l *serverLog) Debugf(string, ...any)          {}
func (l *serverLog) Tracef(string, ...any)          {}
func (l *serverLog) Warnf(format string, v ...any)  { l.add(format, v...) }
func (l *serverLog) Errorf(format string, v ...any) { l.add(format, v...) }
func (l *serverLog) Fatalf(format string, v ...any) { l.add(format, v...) }

// violations are the logged permission violations so far.
func (l *serverLog) violations() []string { return l.matching("Violation") }

// matching are the logged lines containing substr.
func (l *serverLog) matching(substr string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range l.lines {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return out
}

// serveOnce runs `queue-janitor serve` with args until it returns or the
// timeout passes, and returns its error: for configurations that must fail
// at start.
func serveOnce(t *testing.T, args []string, timeout time.Duration) error {
	t.Helper()
	return serveOnceEnv(t, args, func(string) string { return "" }, timeout)
}

// serveOnceEnv is serveOnce with an environment; the service's log is
// shown when the test fails.
func serveOnceEnv(t *testing.T, args []string, getenv func(string) string, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	logs := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("serve log:\n%s", logs.String())
		}
	})
	done := make(chan error, 1)
	go func() { done <- cli.Run(ctx, args, getenv, io.Discard, logs) }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout + 30*time.Second):
		t.Fatal("serve did not return after its context ended")
		return nil
	}
}

// pki is a certificate authority with a server and a client certificate, in
// PEM files.
type pki struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
}

// writePKI generates a CA, a server certificate for 127.0.0.1 and
// localhost, and a client certificate, all signed by the CA, into dir.
func writePKI(t *testing.T, dir string) pki {
	t.Helper()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "queue-janitor test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	p := pki{
		CA:         filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "server-cert.pem"),
		ServerKey:  filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client-cert.pem"),
		ClientKey:  filepath.Join(dir, "client-key.pem"),
	}
	writePEM(t, p.CA, "CERTIFICATE", caDER)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, certPath, keyPath string) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.DNSNames = []string{"localhost"}
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		writePEM(t, certPath, "CERTIFICATE", der)
		writePEM(t, keyPath, "PRIVATE KEY", keyDER)
	}
	leaf(2, "nats-server", x509.ExtKeyUsageServerAuth, p.ServerCert, p.ServerKey)
	leaf(3, "queue-janitor", x509.ExtKeyUsageClientAuth, p.ClientCert, p.ClientKey)
	return p
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
