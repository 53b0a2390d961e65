package natstest

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// TestRestartKeepsStreams: a stopped server is down, and comes back on the
// same URL with its streams and messages (in-process, and in external mode
// the subprocess).
func TestRestartKeepsStreams(t *testing.T) {
	t.Parallel()
	s := RunServer(t)
	url := s.URL()
	nc, js := Connect(t, url)
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := js.Publish(t.Context(), "s.1", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	s.Stop()
	if s.Running() {
		t.Fatal("running after Stop")
	}
	// A request written before the client has seen its connection drop is
	// lost with the old socket: wait for the client to see the outage, and
	// after the restart to be back, before asking.
	waitFor(t, "the client to see the server gone", func() bool { return !nc.IsConnected() })
	s.Restart(t)
	if !s.Running() || s.URL() != url || !s.JetStreamIsLeader() {
		t.Fatalf("after Restart: running %v, URL %s (was %s), leader %v", s.Running(), s.URL(), url, s.JetStreamIsLeader())
	}
	waitFor(t, "the client to reconnect", func() bool { return nc.IsConnected() && nc.Stats().Reconnects >= 1 })
	st, err := js.Stream(t.Context(), "S")
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n != 3 {
		t.Errorf("%d messages after the restart, want 3", n)
	}
}

// TestExternalServerIsTheBinary: in external mode the tests talk to the
// binary QJ_NATS_SERVER_BIN names, whose version the server reports.
func TestExternalServerIsTheBinary(t *testing.T) {
	t.Parallel()
	bin := ExternalBin()
	if bin == "" {
		t.Skipf("%s is not set: servers run in-process", ServerBinEnv)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput() //nolint:gosec // the test runner names the binary
	if err != nil {
		t.Fatalf("%s --version: %v\n%s", bin, err, out)
	}
	s := RunServer(t)
	nc, _ := Connect(t, s.URL())
	if v := nc.ConnectedServerVersion(); v == "" || !strings.Contains(string(out), "v"+v) {
		t.Errorf("the server reports version %q; %s --version says %q", v, bin, strings.TrimSpace(string(out)))
	}
	t.Logf("external nats-server %s", nc.ConnectedServerVersion())
}

// TestExternalSupports: options the configuration file can carry pass, the
// others are named.
func TestExternalSupports(t *testing.T) {
	t.Parallel()
	base := func() *server.Options { return singleOptions(t.TempDir()) }
	ok := []func(*server.Options){
		func(*server.Options) {},
		func(o *server.Options) { o.Authorization = "token" },
		func(o *server.Options) { o.Username, o.Password = "u", "p" },
		func(o *server.Options) { o.ServerName, o.MaxPayload = "n", 1<<20 },
	}
	for i, edit := range ok {
		o := base()
		edit(o)
		if err := externalSupports(o); err != nil {
			t.Errorf("case %d: %v", i, err)
		}
	}
	o := base()
	o.Accounts = []*server.Account{server.NewAccount("A")}
	o.Users = []*server.User{{Username: "u"}}
	if err := externalSupports(o); err == nil || !strings.Contains(err.Error(), "Users, Accounts") {
		t.Errorf("accounts and users: %v, want them named", err)
	}
}

// waitFor polls cond until it holds; the minute only guards against a hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited a minute for %s", what)
		}
	}
}
