package natstest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// ServerBinEnv is the environment variable that switches RunServer to
// external mode: it names a nats-server binary (for example the 2.10 that
// `make nats-server-2.10` builds into bin/nats210/nats-server), which each
// test then starts as a subprocess on a free loopback port with its
// JetStream store in t.TempDir(). Stop and Restart work as in-process, on
// the same port and store. Clusters, and server options other than the
// server name, the maximum payload, a token or a user and password, run
// in-process only: such a test is skipped in external mode, saying why.
const ServerBinEnv = "QJ_NATS_SERVER_BIN"

// ExternalBin is the nats-server binary named by [ServerBinEnv], or "" when
// the servers run in-process.
func ExternalBin() string { return os.Getenv(ServerBinEnv) }

// external is a nats-server subprocess.
type external struct {
	bin  string
	dir  string // configuration and log
	opts server.Options

	mu     sync.Mutex
	cmd    *exec.Cmd
	log    *os.File
	exited chan struct{}
}

// runExternal starts bin with the options o (after the test's options) and
// stops it at the end of the test.
func runExternal(tb testing.TB, bin string, o *server.Options) *Server {
	tb.Helper()
	if err := externalSupports(o); err != nil {
		tb.Skipf("natstest: %s=%s (external mode): %v; this test runs in-process only", ServerBinEnv, bin, err)
	}
	if o.ServerName == "" {
		o.ServerName = "qj-external-" + strconv.Itoa(os.Getpid())
	}
	e := &external{bin: bin, dir: tb.TempDir(), opts: *o}
	s := &Server{opts: o, name: o.ServerName, ext: e}
	var err error
	for range 5 { // a free port can be taken by a parallel test before the server binds it
		e.opts.Port = freePorts(tb, 1)[0]
		if err = e.start(); err == nil {
			break
		}
	}
	if err != nil {
		tb.Fatal(err)
	}
	s.opts.Port = e.opts.Port
	tb.Cleanup(s.Stop)
	return s
}

// externalSupports says which option the subprocess cannot be given, if
// any: everything but what the generated configuration file sets must be
// left as RunServer sets it.
func externalSupports(o *server.Options) error {
	got, want := *o, *singleOptions(o.StoreDir)
	got.ServerName, got.MaxPayload, got.Authorization, got.Username, got.Password = "", want.MaxPayload, "", "", ""
	if reflect.DeepEqual(&got, &want) {
		return nil
	}
	var fields []string
	gv, wv := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := range gv.NumField() {
		f := gv.Type().Field(i)
		if f.IsExported() && !reflect.DeepEqual(gv.Field(i).Interface(), wv.Field(i).Interface()) {
			fields = append(fields, f.Name)
		}
	}
	if len(fields) == 0 {
		fields = []string{"an unexported field"}
	}
	return fmt.Errorf("server option(s) %s cannot be passed to an external server", strings.Join(fields, ", "))
}

// config is the subprocess's configuration file.
func (e *external) config() string {
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: %q\nlisten: \"127.0.0.1:%d\"\n", e.opts.ServerName, e.opts.Port)
	if e.opts.MaxPayload > 0 {
		fmt.Fprintf(&b, "max_payload: %d\n", e.opts.MaxPayload)
	}
	if e.opts.JetStream {
		fmt.Fprintf(&b, "jetstream {\n  store_dir: %q\n}\n", e.opts.StoreDir)
	}
	switch {
	case e.opts.Authorization != "":
		fmt.Fprintf(&b, "authorization {\n  token: %q\n}\n", e.opts.Authorization)
	case e.opts.Username != "":
		fmt.Fprintf(&b, "authorization {\n  user: %q\n  password: %q\n}\n", e.opts.Username, e.opts.Password)
	}
	return b.String()
}

// start runs the binary and waits until it accepts connections (JetStream
// is up by then: the server enables it before it listens for clients).
func (e *external) start() error {
	conf := filepath.Join(e.dir, "nats-server.conf")
	if err := os.WriteFile(conf, []byte(e.config()), 0o600); err != nil {
		return fmt.Errorf("natstest: external server configuration: %w", err)
	}
	logPath := filepath.Join(e.dir, "nats-server.log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600) //nolint:gosec // a file in the test's own directory
	if err != nil {
		return fmt.Errorf("natstest: external server log: %w", err)
	}
	cmd := exec.Command(e.bin, "-c", conf) //nolint:gosec // the test runner names the binary
	// An *os.File: no copying goroutine that could outlive the test.
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return fmt.Errorf("natstest: start %s (%s): %w", e.bin, ServerBinEnv, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	e.mu.Lock()
	e.cmd, e.log, e.exited = cmd, log, exited
	e.mu.Unlock()

	url := fmt.Sprintf("nats://127.0.0.1:%d", e.opts.Port)
	var auth []nats.Option
	switch {
	case e.opts.Authorization != "":
		auth = append(auth, nats.Token(e.opts.Authorization))
	case e.opts.Username != "":
		auth = append(auth, nats.UserInfo(e.opts.Username, e.opts.Password))
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-exited:
			e.stop()
			return fmt.Errorf("natstest: %s exited before accepting connections on %s:\n%s", e.bin, url, tail(logPath))
		default:
		}
		nc, err := nats.Connect(url, append(auth, nats.Timeout(time.Second), nats.NoReconnect())...)
		if err == nil {
			nc.Close()
			return nil
		}
		if time.Now().After(deadline) {
			e.stop()
			return fmt.Errorf("natstest: %s not accepting connections on %s after 20s (%w):\n%s", e.bin, url, err, tail(logPath))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// running reports whether the subprocess is up.
func (e *external) running() bool {
	e.mu.Lock()
	exited := e.exited
	e.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// stop ends the subprocess as an operator would (SIGTERM: the server shuts
// down cleanly, as an in-process Shutdown does), kills it after 30s, and
// waits; stopping twice is harmless.
func (e *external) stop() {
	e.mu.Lock()
	cmd, log, exited := e.cmd, e.log, e.exited
	e.cmd, e.log, e.exited = nil, nil, nil
	e.mu.Unlock()
	if cmd == nil {
		return
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		_ = cmd.Process.Kill()
	}
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
	_ = log.Close()
}

// tail is the end of a log file, for an error message.
func tail(path string) string {
	data, err := os.ReadFile(path) //nolint:gosec // a file this package wrote
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const maxTail = 4000
	if len(data) > maxTail {
		data = data[len(data)-maxTail:]
	}
	return string(data)
}
