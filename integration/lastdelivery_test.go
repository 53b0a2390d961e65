package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// These tests take an event past its last allowed delivery while what it
// needs is refused by the server's permissions (changed by a configuration
// reload, as an operator would), and check that it is never lost: it is
// acked only after its effect, or after its dead letter was kept.

// permConf writes a server configuration with an admin user and the
// service's user, whose publish permission denies the given subjects.
func permConf(t *testing.T, path string, deny ...string) {
	t.Helper()
	denied := ""
	for _, d := range deny {
		denied += fmt.Sprintf("%q, ", d)
	}
	conf := fmt.Sprintf(`jetstream: enabled
accounts: {
  APP: {
    jetstream: enabled
    users: [
      {user: admin, password: admin}
      {user: svc, password: svc, permissions: {publish: {allow: [">"], deny: [%s]}}}
    ]
  }
}
`, denied)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
}

// reload rewrites the configuration and has the server apply it.
func (s *confServer) reload(t *testing.T, path string, deny ...string) {
	t.Helper()
	permConf(t, path, deny...)
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Keep where it listens and stores, as startConfServer set them.
	addr, ok := s.srv.Addr().(*net.TCPAddr)
	if !ok {
		t.Fatalf("server address %v", s.srv.Addr())
	}
	opts.Host, opts.Port, opts.HTTPHost, opts.HTTPPort = "127.0.0.1", addr.Port, "", 0
	opts.StoreDir, opts.NoSigs = s.storeDir, true
	if err := s.srv.ReloadOptions(opts); err != nil {
		t.Fatalf("reload: %v", err)
	}
}

// settledPast reports whether the event consumer's ack floor is at or past
// seq: the event was acked or terminated.
func settledPast(t *testing.T, js jetstream.JetStream, seq uint64) bool {
	t.Helper()
	c, err := js.Consumer(context.Background(), "JOB_EVENTS", "queue-janitor")
	if err != nil {
		return false
	}
	info, err := c.Info(context.Background())
	return err == nil && info.AckFloor.Stream >= seq
}

func lastDeliveryEnv(t *testing.T, deny ...string) (*confServer, string, *env) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "nats.conf")
	permConf(t, path, deny...)
	srv := startConfServer(t, path)
	nc, js := natstest.Connect(t, srv.URL(), nats.UserInfo("admin", "admin"))
	return srv, path, &env{t: t, url: srv.URL(), nc: nc, js: js, names: queue.DefaultNames()}
}

func svcArgs(url string) []string {
	return append(baseArgs(url), "--nats-user", "svc", "--nats-password", "svc", "--max-deliver", "2",
		"--ack-wait", "1s", "--retry-max-elapsed", "1s", "--retry-attempt-timeout", "300ms", "--log-level", "info")
}

// TestDeadLetterRefusedIsNotLost: a malformed event must be dead-lettered,
// but the service may not publish on the dead-letter subject, which a stream
// captures. The event is not terminated (it would be lost); once the
// permission is granted, it is dead-lettered into the stream and settled.
func TestDeadLetterRefusedIsNotLost(t *testing.T) {
	t.Parallel()
	srv, path, e := lastDeliveryEnv(t, "job.deadletter.status")
	if _, err := e.js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "DEADLETTERS", Subjects: []string{"job.deadletter.status"}}); err != nil {
		t.Fatal(err)
	}
	startServe(t, e.js, svcArgs(e.url), zerolog.NewTestWriter(t))
	ack, err := e.js.Publish(t.Context(), "job.status.revoked", []byte(`{"not": "a cloudevent"`))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // several deliveries, past --max-deliver 2
	if settledPast(t, e.js, ack.Sequence) {
		t.Fatal("the event was settled although its dead letter could not be kept: it is lost")
	}
	if n := streamMsgs(t, e.js, "DEADLETTERS"); n != 0 {
		t.Fatalf("DEADLETTERS holds %d messages while publishing there is denied", n)
	}
	srv.reload(t, path)
	eventually(t, 30*time.Second, "the dead letter kept and the event settled", func() bool {
		return streamMsgs(t, e.js, "DEADLETTERS") == 1 && settledPast(t, e.js, ack.Sequence)
	})
}

// TestBucketDownPastLastDeliveryIsNotLost: the records cannot be read or
// written (denied) while a terminal event goes past its last allowed
// delivery. It is neither dead-lettered nor dropped: once the bucket is
// back, the job is cleaned and answered.
func TestBucketDownPastLastDeliveryIsNotLost(t *testing.T) {
	t.Parallel()
	srv, path, e := lastDeliveryEnv(t)
	e.provision(5, 9, nil)
	dead := subscribe(t, e.nc, "job.deadletter.status")
	cleaned := subscribe(t, e.nc, "job.queue.cleaned.5")
	startServe(t, e.js, svcArgs(e.url), zerolog.NewTestWriter(t))
	bucketDenied := []string{"$JS.API.DIRECT.GET.KV_queue_janitor_jobs.>", "$JS.API.STREAM.MSG.GET.KV_queue_janitor_jobs",
		"$KV.queue_janitor_jobs.>", "$JS.API.STREAM.INFO.KV_queue_janitor_jobs"}
	srv.reload(t, path, bucketDenied...)
	e.emit(events.StatusEvent{JobID: 5, Status: events.StatusRevoked})
	time.Sleep(6 * time.Second) // several deliveries, past --max-deliver 2
	if dead.count() != 0 {
		t.Fatalf("the event was dead-lettered while only NATS was in the way: %s", dead.all()[0].Data)
	}
	if !streamExists(t, e.js, "job_5") {
		t.Fatal("job 5's stream went without its record")
	}
	srv.reload(t, path)
	answerFor(t, cleaned, 60*time.Second, "job 5 cleaned once the bucket is back", func(a emitted) bool {
		return a.Data.Outcome == events.OutcomeRemoved
	})
	if streamExists(t, e.js, "job_5") {
		t.Fatal("job 5's stream is still there")
	}
}

func streamMsgs(t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	return info.State.Msgs
}
