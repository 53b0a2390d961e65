package integration

// End-to-end tests of `serve --embedded-nats` (the in-process JetStream
// server: its listen address, its store directory, its restart) and of
// `serve --bind-event-stream` (binding to an event stream someone else owns).

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/cmd/queue-janitor/cli"
	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// embServeArgs are baseArgs with the embedded server instead of --nats-url.
func embServeArgs(t *testing.T, listen, storeDir string) []string {
	t.Helper()
	base := baseArgs("nats://unused.invalid:1")
	var args []string
	for i := 0; i < len(base); i++ {
		if base[i] == "--nats-url" {
			i++ // and its value
			continue
		}
		args = append(args, base[i])
	}
	if len(args) != len(base)-2 || args[0] != "serve" {
		t.Fatalf("baseArgs changed shape: %q", base)
	}
	return append(args, "--embedded-nats", "--embedded-listen", listen, "--embedded-store-dir", storeDir)
}

// embRecord reads job id's record from the service's bucket.
func embRecord(t *testing.T, js jetstream.JetStream, id queue.JobID) queue.Record {
	t.Helper()
	kv, err := js.KeyValue(t.Context(), "queue_janitor_jobs")
	if err != nil {
		t.Fatalf("bucket queue_janitor_jobs: %v", err)
	}
	entry, err := kv.Get(t.Context(), queue.JobKey(id))
	if err != nil {
		t.Fatalf("record of job %d: %v", id, err)
	}
	var rec queue.Record
	if err := json.Unmarshal(entry.Value(), &rec); err != nil {
		t.Fatalf("record of job %d: %v: %s", id, err, entry.Value())
	}
	return rec
}

func embCheckTerminal(t *testing.T, rec queue.Record, id queue.JobID, eventID string) {
	t.Helper()
	if rec.EventID != eventID || rec.Status != "revoked" || rec.State != queue.StateTerminal || !rec.Done {
		t.Errorf("record of job %d = %+v; want event %s, revoked, terminal, done", id, rec, eventID)
	}
}

// TestServeEmbeddedNATS: `serve --embedded-nats` listens where
// --embedded-listen says, serves a backend that connects there end to end,
// keeps its JetStream data in --embedded-store-dir, and after a restart on
// the same directory finds the event stream, its consumer's position, the
// job records and the task streams again, and handles an event that was
// published before the stop but never delivered. A bad --embedded-listen
// fails with an error naming the flag.
func TestServeEmbeddedNATS(t *testing.T) {
	t.Parallel()

	t.Run("bad listen address", func(t *testing.T) {
		t.Parallel()
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = taken.Close() })
		for _, tc := range []struct {
			name, listen string
			usage        bool // must be a usage error (exit status 2)
			wants        []string
		}{
			{"no port", "127.0.0.1", true, []string{`--embedded-listen "127.0.0.1"`, "host:port"}},
			{"port not a number", "127.0.0.1:nats", true, []string{`--embedded-listen "127.0.0.1:nats"`, "bad port"}},
			{"port taken", taken.Addr().String(), false,
				[]string{taken.Addr().String(), "is the port taken", "--embedded-listen 127.0.0.1:0"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				start := time.Now()
				err := serveOnceEnv(t, embServeArgs(t, tc.listen, t.TempDir()), func(string) string { return "" }, 40*time.Second)
				if err == nil {
					t.Fatalf("serve --embedded-listen %q returned no error", tc.listen)
				}
				for _, want := range tc.wants {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not contain %q", err, want)
					}
				}
				usage := errors.Is(err, cli.ErrUsage)
				if tc.usage && !usage {
					t.Errorf("error is not a usage error (exit status 2): %v", err)
				}
				t.Logf("%s: usage error %v: %v (after %s)", tc.listen, usage, err, time.Since(start).Round(time.Millisecond))
			})
		}
	})

	t.Run("serves, persists and restarts", func(t *testing.T) {
		t.Parallel()
		listen := freeAddr(t)
		storeDir := t.TempDir()
		url := "nats://" + listen
		args := embServeArgs(t, listen, storeDir)

		// The backend's connection, to the address given to the service; it
		// waits for the server to come up, and reconnects after a restart.
		nc, js := natstest.Connect(t, url, nats.RetryOnFailedConnect(true))
		e := &env{t: t, url: url, nc: nc, js: js, names: queue.DefaultNames()}

		logs1 := &syncBuffer{}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("first serve log:\n%s", logs1.String())
			}
		})
		svc := startServe(t, js, args, logs1)

		// The listen address is honored: the client is connected there, a
		// plain client can connect there, and the service says so.
		if got := nc.ConnectedUrl(); got != url {
			t.Errorf("backend client connected to %q, want %q", got, url)
		}
		plain, err := nats.Connect(url, nats.Timeout(2*time.Second))
		if err != nil {
			t.Fatalf("a plain client cannot connect to --embedded-listen %s: %v", listen, err)
		}
		plain.Close()
		started := firstLogLine(t, logs1.String(), "embedded NATS JetStream server started")
		if started["url"] != url {
			t.Errorf("log says the embedded server is at %v, want %s", started["url"], url)
		}
		if dir, _ := started["store_dir"].(string); dir != storeDir && !strings.HasPrefix(dir, storeDir+string(filepath.Separator)) {
			t.Errorf("log says the store dir is %q, want %q or under it", dir, storeDir)
		}

		// What the service emits is also kept in a stream, so that it can be
		// read after the restart whenever the client reconnects.
		if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{
			Name: "EMB_CAPTURE", Subjects: []string{"job.queue.cleaned.>"}, Storage: jetstream.FileStorage,
		}); err != nil {
			t.Fatal(err)
		}
		cleaned := subscribe(t, nc, "job.queue.cleaned.>")
		e.provision(1, 50, events.Attempt(1))
		e.provision(2, 30, events.Attempt(1))

		e.emit(events.StatusEvent{JobID: 1, Status: events.StatusRevoked, Attempt: events.Attempt(1), ID: "emb-revoke-1"})
		eventually(t, 10*time.Second, "job_1 gone", func() bool { return !streamExists(t, js, "job_1") })
		eventually(t, 10*time.Second, "cleaned event", func() bool { return cleaned.count() == 1 })
		got := decodeEmitted(t, cleaned.all()[0])
		if got.NATSSubjectName != "job.queue.cleaned.1" || got.Data.JobID != 1 ||
			got.Data.Outcome != events.OutcomeRemoved || got.Data.MessagesDiscarded != 50 {
			t.Errorf("cleaned event = %s %+v; want job 1 removed, 50 messages", got.NATSSubjectName, got.Data)
		}
		if consumerExists(t, js, "advisories", "job-1-dlq") {
			t.Error("dead-letter consumer job-1-dlq still exists")
		}
		e.assertRun(t, 2, 30)
		e.waitSettled(t)
		embCheckTerminal(t, embRecord(t, js, 1), 1, "emb-revoke-1")

		// An event the service will not see before it stops: the test
		// pauses the consumer, then publishes job 2's REVOKED.
		evStream, err := js.Stream(t.Context(), "JOB_EVENTS")
		if err != nil {
			t.Fatal(err)
		}
		evInfo := evStream.CachedInfo()
		if evInfo.Config.Storage != jetstream.FileStorage {
			t.Errorf("JOB_EVENTS storage = %v, want file", evInfo.Config.Storage)
		}
		cons, err := js.Consumer(t.Context(), "JOB_EVENTS", "queue-janitor")
		if err != nil {
			t.Fatal(err)
		}
		consCreated := cons.CachedInfo().Created
		if _, err := js.PauseConsumer(t.Context(), "JOB_EVENTS", "queue-janitor", time.Now().Add(time.Hour)); err != nil {
			t.Fatalf("pause the event consumer: %v", err)
		}
		e.emit(events.StatusEvent{JobID: 2, Status: events.StatusRevoked, Attempt: events.Attempt(1), ID: "emb-revoke-2"})
		time.Sleep(time.Second)
		info, err := cons.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending != 1 || info.NumAckPending != 0 || !streamExists(t, js, "job_2") {
			t.Fatalf("job 2's REVOKED was delivered to a paused consumer: pending %d, ack pending %d",
				info.NumPending, info.NumAckPending)
		}

		if err := svc.stop(); err != nil {
			t.Fatalf("serve returned %v after its context was cancelled, want nil", err)
		}
		// The embedded server went with the service; its data stayed.
		if c, err := nats.Connect(url, nats.Timeout(time.Second)); err == nil {
			c.Close()
			t.Fatalf("something still answers on %s after serve stopped", listen)
		}
		for _, sub := range []string{"JOB_EVENTS", "KV_queue_janitor_jobs", "job_2", "EMB_CAPTURE"} {
			p := filepath.Join(storeDir, "jetstream", "$G", "streams", sub)
			if _, err := os.Stat(p); err != nil {
				t.Errorf("stream %s is not in the store dir: %v", sub, err)
			}
		}

		// Restart on the same store dir and address.
		logs2 := &syncBuffer{}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("second serve log:\n%s", logs2.String())
			}
		})
		svc2 := startServe(t, js, args, logs2)
		if info, err := cons.Info(t.Context()); err == nil {
			t.Logf("after the restart the event consumer is paused: %v", info.Paused)
		}
		// Resume in case the restart did not (pausing is the test's doing).
		if _, err := js.ResumeConsumer(t.Context(), "JOB_EVENTS", "queue-janitor"); err != nil {
			t.Fatalf("resume the event consumer: %v", err)
		}

		eventually(t, 15*time.Second, "job_2 gone after the restart", func() bool { return !streamExists(t, js, "job_2") })
		e.waitSettled(t)
		capture, err := js.Stream(t.Context(), "EMB_CAPTURE")
		if err != nil {
			t.Fatalf("capture stream after the restart: %v", err)
		}
		eventually(t, 10*time.Second, "cleaned event of job 2", func() bool {
			_, err := capture.GetLastMsgForSubject(t.Context(), "job.queue.cleaned.2")
			return err == nil
		})
		raw, err := capture.GetLastMsgForSubject(t.Context(), "job.queue.cleaned.2")
		if err != nil {
			t.Fatal(err)
		}
		got = decodeEmitted(t, &nats.Msg{Subject: raw.Subject, Data: raw.Data, Header: raw.Header})
		if got.Data.JobID != 2 || got.Data.Outcome != events.OutcomeRemoved || got.Data.MessagesDiscarded != 30 ||
			got.Data.CauseEventID != "emb-revoke-2" {
			t.Errorf("cleaned event of job 2 = %+v; want removed, 30 messages, cause emb-revoke-2", got.Data)
		}
		ci, err := capture.Info(t.Context(), jetstream.WithSubjectFilter("job.queue.cleaned.>"))
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]uint64{"job.queue.cleaned.1": 1, "job.queue.cleaned.2": 1}; !reflect.DeepEqual(ci.State.Subjects, want) {
			t.Errorf("cleaned events over both runs = %v, want %v (job 1's event handled again?)", ci.State.Subjects, want)
		}

		// The same stream, consumer and records, not new ones.
		evAfter, err := js.Stream(t.Context(), "JOB_EVENTS")
		if err != nil {
			t.Fatal(err)
		}
		if !evAfter.CachedInfo().Created.Equal(evInfo.Created) || evAfter.CachedInfo().State.Msgs != 2 {
			t.Errorf("JOB_EVENTS after the restart: created %s (was %s), %d messages (want 2)",
				evAfter.CachedInfo().Created, evInfo.Created, evAfter.CachedInfo().State.Msgs)
		}
		info, err = cons.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if !info.Created.Equal(consCreated) || info.NumRedelivered != 0 || info.AckFloor.Stream != 2 {
			t.Errorf("event consumer after the restart: created %s (was %s), redelivered %d, ack floor %d (want 2)",
				info.Created, consCreated, info.NumRedelivered, info.AckFloor.Stream)
		}
		embCheckTerminal(t, embRecord(t, js, 1), 1, "emb-revoke-1")
		embCheckTerminal(t, embRecord(t, js, 2), 2, "emb-revoke-2")

		if err := svc2.stop(); err != nil {
			t.Fatalf("restarted serve returned %v after its context was cancelled, want nil", err)
		}
	})
}

// TestBindEventStream: with --bind-event-stream (or its variable) serve
// refuses to start without the event stream, naming it and saying what to
// do, and creates nothing in its place; given a stream the backend created
// with its own settings, it binds to it, changes none of them (not even
// with --event-max-age set), and handles an event end to end.
func TestBindEventStream(t *testing.T) {
	t.Parallel()

	t.Run("missing stream", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name   string
			stream string
			extra  []string
			env    map[string]string
		}{
			{"flag", "JOB_EVENTS", []string{"--bind-event-stream"}, nil},
			{"variable", "JOB_EVENTS", nil, map[string]string{"QUEUE_JANITOR_BIND_EVENT_STREAM": "true"}},
			{"other stream name", "BACKEND_EVENTS", []string{"--bind-event-stream", "--event-stream", "BACKEND_EVENTS"}, nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				e := setup(t)
				args := append(baseArgs(e.url), tc.extra...)
				// A start-up failure ends serve at once: it does not sit there,
				// unready and silent, until it is stopped (here by the end of
				// its context, far beyond the second or so it takes).
				const timeout = 2 * time.Minute
				start := time.Now()
				err := serveOnceEnv(t, args, func(k string) string { return tc.env[k] }, timeout)
				took := time.Since(start)
				if err == nil {
					t.Fatal("serve --bind-event-stream without the event stream returned no error")
				}
				if took >= timeout {
					t.Errorf("serve returned its start-up error only when its context ended (timeout %s)", timeout)
				}
				for _, want := range []string{`event stream "` + tc.stream + `" does not exist`, "create it", "--bind-event-stream"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not contain %q", err, want)
					}
				}
				if streamExists(t, e.js, tc.stream) {
					t.Errorf("serve created %s although told to bind", tc.stream)
				}
				t.Logf("%v", err)
			})
		}
	})

	t.Run("existing stream", func(t *testing.T) {
		t.Parallel()
		e := setup(t)
		// The backend's own event stream: memory storage, interest retention,
		// more subjects, its own limits; nothing like what serve would create.
		created, err := e.js.CreateStream(t.Context(), jetstream.StreamConfig{
			Name:        "JOB_EVENTS",
			Description: "owned by the backend",
			Subjects:    []string{"job.status.*", "job.audit.>"},
			Storage:     jetstream.MemoryStorage,
			Retention:   jetstream.InterestPolicy,
			MaxAge:      3 * time.Hour,
			MaxMsgs:     100_000,
			Duplicates:  30 * time.Second,
			Replicas:    1,
		})
		if err != nil {
			t.Fatal(err)
		}
		before := created.CachedInfo()
		e.provision(7, 40, events.Attempt(2))
		cleaned := subscribe(t, e.nc, "job.queue.cleaned.>")
		svc := e.startService("--bind-event-stream", "--event-max-age", "5m")

		e.emit(events.StatusEvent{JobID: 7, Status: events.StatusRevoked, Attempt: events.Attempt(2), ID: "bind-revoke-7"})
		eventually(t, 10*time.Second, "job_7 gone", func() bool { return !streamExists(t, e.js, "job_7") })
		eventually(t, 10*time.Second, "cleaned event", func() bool { return cleaned.count() == 1 })
		got := decodeEmitted(t, cleaned.all()[0])
		if got.NATSSubjectName != "job.queue.cleaned.7" || got.Data.Outcome != events.OutcomeRemoved ||
			got.Data.MessagesDiscarded != 40 || got.Data.CauseEventID != "bind-revoke-7" {
			t.Errorf("cleaned event = %s %+v; want job 7 removed, 40 messages", got.NATSSubjectName, got.Data)
		}
		e.waitSettled(t)

		s, err := e.js.Stream(t.Context(), "JOB_EVENTS")
		if err != nil {
			t.Fatal(err)
		}
		after := s.CachedInfo()
		if !reflect.DeepEqual(before.Config, after.Config) {
			t.Errorf("serve --bind-event-stream changed the event stream's config:\nbefore %+v\nafter  %+v",
				before.Config, after.Config)
		}
		if !after.Created.Equal(before.Created) {
			t.Errorf("the event stream was recreated: created %s, was %s", after.Created, before.Created)
		}
		c, err := e.js.Consumer(t.Context(), "JOB_EVENTS", "queue-janitor")
		if err != nil {
			t.Fatalf("serve's consumer on the bound stream: %v", err)
		}
		if f := c.CachedInfo().Config.FilterSubjects; !reflect.DeepEqual(f, []string{"job.status.*"}) {
			t.Errorf("consumer filter = %q, want [job.status.*]", f)
		}
		if err := svc.stop(); err != nil {
			t.Fatalf("serve returned %v after its context was cancelled, want nil", err)
		}
	})
}
