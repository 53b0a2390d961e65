package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// These tests start an embedded server from deploy/nats/nats-server.conf,
// exactly the file the compose stack mounts, and show that the `janitor`
// user it defines is enough for the service and no more.

// deployEnv is a server from the deploy configuration, with a client
// connected as the backend.
func deployEnv(t *testing.T) (*confServer, *env) {
	t.Helper()
	srv := startConfServer(t, deployNATSConf)
	nc, js := natstest.Connect(t, srv.URL(), nats.UserInfo(backendUser, backendPassword))
	return srv, &env{t: t, url: srv.URL(), nc: nc, js: js, names: queue.DefaultNames()}
}

// janitorArgs runs the service as the janitor user.
func janitorArgs(url string) []string {
	return append(baseArgs(url), "--nats-user", janitorUser, "--nats-password", janitorPassword,
		"--nats-inbox-prefix", janitorInbox)
}

// syncBuffer is a bytes.Buffer safe for the service's log writes and the
// test's reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestPermissionsJanitorUserRunsTheService: as the least-privilege janitor
// user the service creates its event stream, consumer and bucket, cleans a
// revoked job, flushes a restart, dead-letters an invalid event, and binds
// to what exists after a restart of the process, without one permission
// violation on the server or one asynchronous error in its log.
func TestPermissionsJanitorUserRunsTheService(t *testing.T) {
	t.Parallel()
	srv, e := deployEnv(t)
	for _, id := range []queue.JobID{1, 2, 3} {
		e.provision(id, 20, events.Attempt(1))
	}
	cleaned := subscribe(t, e.nc, "job.queue.cleaned.*")
	flushed := subscribe(t, e.nc, "job.queue.flushed.*")
	dead := subscribe(t, e.nc, "job.deadletter.status")
	logs := &syncBuffer{}
	svc := startServe(t, e.js, janitorArgs(e.url), io.MultiWriter(zerolog.NewTestWriter(t), logs))
	for _, name := range []string{"JOB_EVENTS", "KV_queue_janitor_jobs"} {
		if !streamExists(t, e.js, name) {
			t.Fatalf("the service did not create %s", name)
		}
	}

	// Terminal cleanup.
	e.emit(events.StatusEvent{JobID: 1, Status: events.StatusRevoked, Attempt: events.Attempt(1)})
	eventually(t, 15*time.Second, "job 1 cleaned", func() bool { return cleaned.count() == 1 })
	if streamExists(t, e.js, "job_1") || consumerExists(t, e.js, "advisories", "job-1-dlq") {
		t.Error("job 1's stream or dead-letter consumer survived REVOKED")
	}

	// Restart flush, then the backend's new round.
	e.emit(events.StatusEvent{JobID: 2, Status: events.StatusRestartRequested, Attempt: events.Attempt(2)})
	eventually(t, 15*time.Second, "job 2 flushed", func() bool { return flushed.count() == 1 })
	if streamExists(t, e.js, "job_2") {
		t.Error("job 2's leftover stream survived restart_requested")
	}
	e.provision(2, 7, events.Attempt(2))

	// A second process start binds to the stream, consumer and bucket.
	if err := svc.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	startServe(t, e.js, janitorArgs(e.url), io.MultiWriter(zerolog.NewTestWriter(t), logs))

	// Dead letter, then a cleanup after it.
	bad := &nats.Msg{Subject: "job.status.revoked", Data: []byte(`{not json`),
		Header: nats.Header{"Content-Type": {events.ContentTypeCloudEventsJSON}}}
	if _, err := e.js.PublishMsg(t.Context(), bad); err != nil {
		t.Fatal(err)
	}
	e.emit(events.StatusEvent{JobID: 3, Status: events.StatusFailure, Attempt: events.Attempt(1)})
	eventually(t, 15*time.Second, "dead letter and job 3 cleaned", func() bool {
		return dead.count() == 1 && cleaned.count() == 2
	})
	if got := decodeEmitted(t, dead.all()[0]); got.DeadLetter.Reason != events.ReasonMalformed {
		t.Errorf("dead-letter reason %q, want %q", got.DeadLetter.Reason, events.ReasonMalformed)
	}
	assertConsumerSettled(t, e.js, 4)

	// The later run's stream and the shared streams are intact.
	info, err := e.js.Stream(t.Context(), "job_2")
	if err != nil {
		t.Fatalf("job 2's new round: %v", err)
	}
	if n := info.CachedInfo().State.Msgs; n != 7 {
		t.Errorf("job_2 holds %d tasks, want the new round's 7", n)
	}
	for _, keep := range []string{"advisories", "JOB_EVENTS", "KV_queue_janitor_jobs"} {
		if !streamExists(t, e.js, keep) {
			t.Errorf("stream %s is gone", keep)
		}
	}
	if v := srv.log.violations(); len(v) > 0 {
		t.Errorf("permission violations on the server:\n%s", strings.Join(v, "\n"))
	}
	if text := logs.String(); strings.Contains(text, "NATS asynchronous error") || strings.Contains(strings.ToLower(text), "permission") {
		t.Errorf("the service logged a NATS or permission error:\n%s", text)
	}
}

// TestPermissionsJanitorUserRunsTheReconciler: as the janitor user the
// reconciler cleans a stream the backend recreated after the job ended and
// sweeps an orphan, and the operator commands ls, sweep and flush work; no
// permission violation on the server.
func TestPermissionsJanitorUserRunsTheReconciler(t *testing.T) {
	t.Parallel()
	srv, e := deployEnv(t)
	for id := queue.JobID(1); id <= 3; id++ {
		e.provision(id, 10, events.Attempt(1))
	}
	e.provision(50, 3, nil) // a stream no event ever mentions
	logs := &syncBuffer{}
	startServe(t, e.js, append(janitorArgs(e.url), "--reconcile-interval", "300ms", "--reconcile-grace", "500ms",
		"--reconcile-lease", "5s", "--orphan-idle", "1s", "--sweep-orphans"), io.MultiWriter(zerolog.NewTestWriter(t), logs))
	for id := queue.JobID(2); id <= 3; id++ {
		e.emit(events.StatusEvent{JobID: id, Status: events.StatusStarted, Attempt: events.Attempt(1)})
	}
	e.emit(events.StatusEvent{JobID: 1, Status: events.StatusRevoked, Attempt: events.Attempt(1)})
	eventually(t, 15*time.Second, "job 1 cleaned", func() bool { return !streamExists(t, e.js, "job_1") })
	e.provision(1, 5, events.Attempt(1)) // the backend recreates it after the end
	eventually(t, 20*time.Second, "the recreated job_1 and the orphan job_50 removed by the reconciler", func() bool {
		return !streamExists(t, e.js, "job_1") && !streamExists(t, e.js, "job_50")
	})

	auth := []string{"--nats-url", e.url, "--nats-user", janitorUser, "--nats-password", janitorPassword,
		"--nats-inbox-prefix", janitorInbox}
	var out bytes.Buffer
	runCLI(t, &out, append([]string{"ls"}, auth...)...)
	assertContains(t, out.String(), "job_2", "job_3")
	out.Reset()
	runCLI(t, &out, append([]string{"sweep", "--dry-run"}, auth...)...)
	out.Reset()
	runCLI(t, &out, append([]string{"flush", "3", "--force"}, auth...)...)
	if streamExists(t, e.js, "job_3") {
		t.Error("flush 3 left job_3")
	}
	if !streamExists(t, e.js, "job_2") {
		t.Error("job_2, a running job, was removed")
	}
	if v := srv.log.violations(); len(v) > 0 {
		t.Errorf("permission violations on the server:\n%s", strings.Join(v, "\n"))
	}
	if text := logs.String(); strings.Contains(text, "NATS asynchronous error") || strings.Contains(strings.ToLower(text), "permission") {
		t.Errorf("the service logged a NATS or permission error:\n%s", text)
	}
}

// TestPermissionsEmitIsTheBackendsRight: `queue-janitor emit` publishes a
// status event as the backend user; as the janitor user it is refused, so
// the service cannot feed itself events.
func TestPermissionsEmitIsTheBackendsRight(t *testing.T) {
	t.Parallel()
	srv, e := deployEnv(t)
	ensureEventStream(t, e.js)
	emit := []string{"emit", "--job", "7", "--status", "revoked", "--nats-url", e.url, "--nats-connect-timeout", "2s"}
	var out bytes.Buffer
	runCLI(t, &out, append(emit, "--nats-user", backendUser, "--nats-password", backendPassword)...)
	out.Reset()
	if err := runCLIErr(t, &out, append(emit, "--nats-user", janitorUser, "--nats-password", janitorPassword, "--nats-inbox-prefix", janitorInbox)...); err == nil {
		t.Error("emit as the janitor user succeeded")
	}
	s, err := e.js.Stream(t.Context(), "JOB_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 1 {
		t.Errorf("JOB_EVENTS holds %d events, want the backend's 1", n)
	}
	if !loggedViolation(srv, "Publish", "job.status.revoked") {
		t.Error("no publish violation for the janitor's emit")
	}
}

// janitorClient connects as the janitor user, keeping the asynchronous
// errors the server sends it.
type janitorClient struct {
	nc *nats.Conn
	js jetstream.JetStream

	mu   sync.Mutex
	errs []error
}

func connectJanitor(t *testing.T, url string) *janitorClient {
	t.Helper()
	c := &janitorClient{}
	nc, err := nats.Connect(url, nats.UserInfo(janitorUser, janitorPassword), nats.CustomInboxPrefix(janitorInbox),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.errs = append(c.errs, err)
		}))
	if err != nil {
		t.Fatalf("connect as janitor: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	c.nc, c.js = nc, js
	return c
}

// permissionError is the asynchronous permission error naming subject, or
// nil.
func (c *janitorClient) permissionError(subject string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, err := range c.errs {
		if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+subject+`"`) {
			return err
		}
	}
	return nil
}

// TestPermissionsJanitorUserCannot: the same janitor user is refused what
// the service must never do. Each refusal is checked three ways: the call
// fails, the server logs a violation for the janitor on that subject, and
// the resource is unchanged. A control case shows that the user can delete
// a job's stream, so the refusals are not a blanket denial.
func TestPermissionsJanitorUserCannot(t *testing.T) {
	t.Parallel()
	srv, e := deployEnv(t)
	ctx := t.Context()
	e.provision(1, 10, nil)
	e.provision(2, 10, nil)
	ensureEventStream(t, e.js)
	e.emit(events.StatusEvent{JobID: 1, Status: events.StatusRevoked})
	if _, err := e.js.CreateOrUpdateConsumer(ctx, "JOB_EVENTS", jetstream.ConsumerConfig{Durable: "queue-janitor"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "queue_janitor_jobs"}); err != nil {
		t.Fatal(err)
	}
	j := connectJanitor(t, e.url)

	msgs := func(stream string) uint64 {
		t.Helper()
		s, err := e.js.Stream(ctx, stream)
		if err != nil {
			t.Fatalf("stream %s: %v", stream, err)
		}
		return s.CachedInfo().State.Msgs
	}
	purge := func(stream string) func(context.Context) error {
		return func(ctx context.Context) error {
			s, err := j.js.Stream(ctx, stream) // stream info is allowed
			if err != nil {
				return err
			}
			return s.Purge(ctx)
		}
	}
	tests := []struct {
		name    string
		subject string // the refused subject
		do      func(ctx context.Context) error
		intact  func(t *testing.T)
	}{
		{
			name: "delete advisories", subject: "$JS.API.STREAM.DELETE.advisories",
			do: func(ctx context.Context) error { return j.js.DeleteStream(ctx, "advisories") },
			intact: func(t *testing.T) {
				t.Helper()
				if !streamExists(t, e.js, "advisories") || !consumerExists(t, e.js, "advisories", "job-1-dlq") {
					t.Error("advisories or its consumer job-1-dlq is gone")
				}
			},
		},
		{
			name: "delete the event stream", subject: "$JS.API.STREAM.DELETE.JOB_EVENTS",
			do: func(ctx context.Context) error { return j.js.DeleteStream(ctx, "JOB_EVENTS") },
			intact: func(t *testing.T) {
				t.Helper()
				if !streamExists(t, e.js, "JOB_EVENTS") {
					t.Error("JOB_EVENTS is gone")
				}
			},
		},
		{
			name: "delete the bucket", subject: "$JS.API.STREAM.DELETE.KV_queue_janitor_jobs",
			do: func(ctx context.Context) error { return j.js.DeleteKeyValue(ctx, "queue_janitor_jobs") },
			intact: func(t *testing.T) {
				t.Helper()
				if !streamExists(t, e.js, "KV_queue_janitor_jobs") {
					t.Error("the bucket's stream is gone")
				}
			},
		},
		{
			name: "delete its event consumer", subject: "$JS.API.CONSUMER.DELETE.JOB_EVENTS.queue-janitor",
			do: func(ctx context.Context) error { return j.js.DeleteConsumer(ctx, "JOB_EVENTS", "queue-janitor") },
			intact: func(t *testing.T) {
				t.Helper()
				if !consumerExists(t, e.js, "JOB_EVENTS", "queue-janitor") {
					t.Error("the event consumer is gone")
				}
			},
		},
		{
			name: "publish a task", subject: "job.1.tasks",
			do: func(ctx context.Context) error {
				if err := j.nc.Publish("job.1.tasks", []byte(`{"task":99}`)); err != nil {
					return err
				}
				_, err := j.js.Publish(ctx, "job.1.tasks", []byte(`{"task":100}`))
				return err
			},
			intact: func(t *testing.T) {
				t.Helper()
				if n := msgs("job_1"); n != 10 {
					t.Errorf("job_1 holds %d tasks, want 10", n)
				}
			},
		},
		{
			name: "publish a status event", subject: "job.status.revoked",
			do: func(ctx context.Context) error {
				msg, err := events.StatusEvent{JobID: 2, Status: events.StatusRevoked}.Msg(ctx, "job.status.")
				if err != nil {
					return err
				}
				_, err = j.js.PublishMsg(ctx, msg)
				return err
			},
			intact: func(t *testing.T) {
				t.Helper()
				if n := msgs("JOB_EVENTS"); n != 1 {
					t.Errorf("JOB_EVENTS holds %d events, want 1", n)
				}
			},
		},
		{
			// A restart flush may purge a job's stream (before deleting it);
			// the shared ones never.
			name: "purge the advisory stream", subject: "$JS.API.STREAM.PURGE.advisories",
			do: purge("advisories"),
			intact: func(t *testing.T) {
				t.Helper()
				if !streamExists(t, j.js, "advisories") {
					t.Error("advisories is gone")
				}
			},
		},
		{
			name: "purge the event stream", subject: "$JS.API.STREAM.PURGE.JOB_EVENTS",
			do: purge("JOB_EVENTS"),
			intact: func(t *testing.T) {
				t.Helper()
				if n := msgs("JOB_EVENTS"); n != 1 {
					t.Errorf("JOB_EVENTS holds %d events, want 1", n)
				}
			},
		},
		{
			name: "create a task stream", subject: "$JS.API.STREAM.CREATE.job_9",
			do: func(ctx context.Context) error {
				_, err := j.js.CreateStream(ctx, e.names.TaskStreamConfig(9, nil))
				return err
			},
			intact: func(t *testing.T) {
				t.Helper()
				if streamExists(t, e.js, "job_9") {
					t.Error("the janitor created job_9")
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			if err := tt.do(ctx); err == nil {
				t.Errorf("%s succeeded as the janitor user", tt.name)
			}
			eventually(t, 5*time.Second, "the permission error for "+tt.subject, func() bool {
				return j.permissionError(tt.subject) != nil
			})
			if !loggedViolation(srv, "Publish", tt.subject) {
				t.Errorf("the server logged no publish violation by janitor on %s:\n%s",
					tt.subject, strings.Join(srv.log.violations(), "\n"))
			}
			tt.intact(t)
		})
	}
	t.Run("read tasks", func(t *testing.T) {
		t.Parallel()
		sub, err := j.nc.SubscribeSync("job.1.tasks")
		if err == nil {
			defer func() { _ = sub.Unsubscribe() }()
		}
		eventually(t, 5*time.Second, "the subscription violation", func() bool {
			return loggedViolation(srv, "Subscription", "job.1.tasks")
		})
	})
	t.Run("read other clients' replies", func(t *testing.T) {
		t.Parallel()
		sub, err := j.nc.SubscribeSync("_INBOX.>")
		if err == nil {
			defer func() { _ = sub.Unsubscribe() }()
		}
		eventually(t, 5*time.Second, "the subscription violation", func() bool {
			return loggedViolation(srv, "Subscription", "_INBOX.>")
		})
	})
	t.Run("control: delete a job stream", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		if err := j.js.DeleteConsumer(ctx, "advisories", "job-2-dlq"); err != nil {
			t.Errorf("delete job-2-dlq as janitor: %v", err)
		}
		if err := j.js.DeleteStream(ctx, "job_2"); err != nil {
			t.Errorf("delete job_2 as janitor: %v", err)
		}
		if streamExists(t, e.js, "job_2") {
			t.Error("job_2 still exists")
		}
	})
}

// loggedViolation reports whether the server logged a violation of kind
// ("Publish" or "Subscription") by the janitor user on subject.
func loggedViolation(srv *confServer, kind, subject string) bool {
	return loggedViolationBy(srv, janitorUser, kind, subject)
}

// loggedViolationBy reports whether the server logged a violation of kind
// by user on subject.
func loggedViolationBy(srv *confServer, user, kind, subject string) bool {
	for _, line := range srv.log.violations() {
		// The server writes "ACCOUNT/user:name" (with the quotes): the
		// name ends at the quote, so that "app" does not match "apple".
		if strings.Contains(line, "user:"+user+`"`) && strings.Contains(line, kind+" Violation - Subject \""+subject+"\"") {
			return true
		}
	}
	return false
}

// TestPermissionsOtherAccountIsOutOfReach: the account is the boundary.
// The backend's streams that are not job queues live in another account
// (APP): a billing stream, and even one named like a job queue. The
// service, run as the janitor user with the reconciler sweeping orphans,
// cleans a revoked job and sweeps an orphan in its own account, and leaves
// the other account's streams whole; asked directly, the janitor user
// cannot list, read, purge or delete them: to it they do not exist.
func TestPermissionsOtherAccountIsOutOfReach(t *testing.T) {
	t.Parallel()
	srv, e := deployEnv(t)
	ctx := t.Context()
	_, app := natstest.Connect(t, srv.URL(), nats.UserInfo(appUser, appPassword))
	appStreams := map[string]string{"BILLING": "billing.>", "job_50": "job.50.tasks"}
	for name, subject := range appStreams {
		if _, err := app.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subject}}); err != nil {
			t.Fatalf("create %s in the other account: %v", name, err)
		}
		publishTasks(t, app, strings.Replace(strings.TrimSuffix(subject, ">"), "billing.", "billing.invoice", 1), 0, 3)
	}
	e.provision(1, 10, events.Attempt(1))
	e.provision(50, 4, nil) // an orphan in the job account, with the same name
	cleaned := subscribe(t, e.nc, "job.queue.cleaned.*")
	logs := &syncBuffer{}
	startServe(t, e.js, append(janitorArgs(e.url), "--reconcile-interval", "300ms", "--orphan-idle", "1s",
		"--sweep-orphans"), io.MultiWriter(zerolog.NewTestWriter(t), logs))

	e.emit(events.StatusEvent{JobID: 1, Status: events.StatusRevoked, Attempt: events.Attempt(1)})
	eventually(t, 15*time.Second, "job 1 cleaned and the job account's orphan job_50 swept", func() bool {
		return cleaned.count() >= 1 && !streamExists(t, e.js, "job_1") && !streamExists(t, e.js, "job_50")
	})

	// Asked directly, as the janitor user.
	j := connectJanitor(t, e.url)
	list := j.js.ListStreams(ctx) // $JS.API.STREAM.LIST, which the service uses
	listed := 0
	for info := range list.Info() {
		listed++
		if _, other := appStreams[info.Config.Name]; other && info.Config.Name != "job_50" || info.Config.Name == "BILLING" {
			t.Errorf("the janitor user lists %s of the other account", info.Config.Name)
		}
		if info.Config.Name == "job_50" {
			t.Errorf("the janitor user lists a job_50 (the job account's was swept; the other account's must not show)")
		}
	}
	if err := list.Err(); err != nil {
		t.Fatalf("list streams as janitor: %v", err)
	}
	if listed == 0 {
		t.Fatal("the janitor user lists no stream at all: the listing proves nothing")
	}
	for name := range appStreams {
		if _, err := j.js.Stream(ctx, name); name != "job_50" && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Errorf("stream info %s as janitor: %v, want stream not found", name, err)
		}
		for _, op := range []string{"PURGE", "DELETE"} {
			subject := "$JS.API.STREAM." + op + "." + name
			msg, err := j.nc.RequestWithContext(ctx, subject, nil)
			if err != nil {
				t.Errorf("%s as janitor: %v", subject, err)
				continue
			}
			if !strings.Contains(string(msg.Data), `"code":404`) {
				t.Errorf("%s as janitor: %s, want stream not found (404)", subject, msg.Data)
			}
		}
	}

	// The other account's streams are whole.
	for name := range appStreams {
		s, err := app.Stream(ctx, name)
		if err != nil {
			t.Errorf("the other account's %s: %v", name, err)
			continue
		}
		if n := s.CachedInfo().State.Msgs; n != 3 {
			t.Errorf("the other account's %s holds %d messages, want 3", name, n)
		}
	}
	if v := srv.log.violations(); len(v) > 0 {
		t.Errorf("permission violations on the server:\n%s", strings.Join(v, "\n"))
	}
	if text := logs.String(); strings.Contains(text, "NATS asynchronous error") || strings.Contains(strings.ToLower(text), "permission") {
		t.Errorf("the service logged a NATS or permission error:\n%s", text)
	}
}

// TestPermissionsBackendWritesJobRecordsOnly: the backend user may write a
// job's record and lease in the service's bucket (its fallback flush takes
// the lease as a replica does), but not the service's other keys (the
// reconciler's lease, the rebuild's marker).
func TestPermissionsBackendWritesJobRecordsOnly(t *testing.T) {
	t.Parallel()
	srv, e := deployEnv(t)
	ctx := t.Context()
	kv, err := e.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "queue_janitor_jobs"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, queue.JobKey(7), []byte(`{"lease":"backend"}`)); err != nil {
		t.Errorf("the backend cannot write job 7's record: %v", err)
	}
	for _, key := range []string{handlers.SweeperLeaseKey, "rebuild"} {
		t.Run(key, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			if _, err := kv.Put(ctx, key, []byte("backend")); err == nil {
				t.Errorf("the backend wrote %s", key)
			}
			subject := "$KV.queue_janitor_jobs." + key
			eventually(t, 5*time.Second, "the violation on "+subject, func() bool {
				return loggedViolationBy(srv, backendUser, "Publish", subject)
			})
			if _, err := kv.Get(t.Context(), key); !errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Errorf("%s: %v, want no such key", key, err)
			}
		})
	}
}
