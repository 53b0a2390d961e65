package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// bucketStream is the stream behind the service's default bucket.
const bucketStream = "KV_queue_janitor_jobs"

// streamNames lists every stream on the server.
func streamNames(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	var names []string
	lister := js.StreamNames(t.Context())
	for name := range lister.Name() {
		names = append(names, name)
	}
	if err := lister.Err(); err != nil {
		t.Fatalf("list streams: %v", err)
	}
	return names
}

// flushNATS deletes every stream on the server, as the backend's
// `chaos_monkey flush nats` does.
func flushNATS(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	for _, name := range streamNames(t, js) {
		if err := js.DeleteStream(t.Context(), name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Fatalf("delete stream %s: %v", name, err)
		}
	}
}

func streamConfig(t *testing.T, js jetstream.JetStream, name string) jetstream.StreamConfig {
	t.Helper()
	s, err := js.Stream(t.Context(), name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	return s.CachedInfo().Config
}

// sameStreamConfig compares what the service sets when it creates a stream.
func sameStreamConfig(a, b jetstream.StreamConfig) bool {
	return strings.Join(a.Subjects, ",") == strings.Join(b.Subjects, ",") && a.Storage == b.Storage &&
		a.Retention == b.Retention && a.MaxAge == b.MaxAge && a.Replicas == b.Replicas &&
		a.MaxMsgsPerSubject == b.MaxMsgsPerSubject && a.Duplicates == b.Duplicates && a.Description == b.Description
}

// hasRecord reports whether the service recorded job id in its bucket.
func hasRecord(t *testing.T, js jetstream.JetStream, id queue.JobID) bool {
	t.Helper()
	kv, err := js.KeyValue(t.Context(), "queue_janitor_jobs")
	if err != nil {
		return false
	}
	_, err = kv.Get(t.Context(), queue.JobKey(id))
	return err == nil
}

// TestServeHealsAfterDeletions: the backend's tooling deletes the event
// stream, the durable consumer, the bucket's stream, or every stream at
// once. The running service notices within seconds, recreates what it
// created with the configuration it had, logs what was lost, is ready
// again, and cleans a job revoked afterwards (recording it in the bucket),
// without a restart.
func TestServeHealsAfterDeletions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		delete   func(t *testing.T, js jetstream.JetStream)
		wantLogs []string
	}{
		{"event stream", func(t *testing.T, js jetstream.JetStream) {
			t.Helper()
			if err := js.DeleteStream(t.Context(), "JOB_EVENTS"); err != nil {
				t.Fatal(err)
			}
		}, []string{"event stream JOB_EVENTS was deleted; events not yet handled are lost; recreated"}},
		{"consumer", func(t *testing.T, js jetstream.JetStream) {
			t.Helper()
			if err := js.DeleteConsumer(t.Context(), "JOB_EVENTS", "queue-janitor"); err != nil {
				t.Fatal(err)
			}
		}, []string{"event consumer was deleted on the server; recreated"}},
		{"bucket", func(t *testing.T, js jetstream.JetStream) {
			t.Helper()
			if err := js.DeleteStream(t.Context(), bucketStream); err != nil {
				t.Fatal(err)
			}
		}, []string{"key-value bucket queue_janitor_jobs was deleted; the per-job records it held are lost; recreated"}},
		{"every stream", flushNATS, []string{
			"event stream JOB_EVENTS was deleted; events not yet handled are lost; recreated",
			"key-value bucket queue_janitor_jobs was deleted; the per-job records it held are lost; recreated",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			addr := freeAddr(t)
			logs := &syncBuffer{}
			svc := startServe(t, e.js, append(baseArgs(e.url), "--http-addr", addr, "--kv-ttl", "720h"),
				io.MultiWriter(zerolog.NewTestWriter(t), logs))
			ready := func() bool { code, _ := httpGet(t, "http://"+addr+"/readyz"); return code == http.StatusOK }
			eventually(t, 10*time.Second, "ready", ready)
			e.provision(1, 5, nil)
			e.emit(events.StatusEvent{JobID: 1, Status: events.StatusRevoked})
			eventually(t, 10*time.Second, "job 1 recorded", func() bool { return hasRecord(t, e.js, 1) })
			events0, bucket0 := streamConfig(t, e.js, "JOB_EVENTS"), streamConfig(t, e.js, bucketStream)

			tc.delete(t, e.js)

			// Noticed within seconds, with no event to handle: the intake's
			// and the bucket's own checks.
			eventually(t, 15*time.Second, "the service's streams to be back", func() bool {
				return streamExists(t, e.js, "JOB_EVENTS") && streamExists(t, e.js, bucketStream) &&
					consumerExists(t, e.js, "JOB_EVENTS", "queue-janitor")
			})
			eventually(t, 15*time.Second, "ready again", ready)
			if got := streamConfig(t, e.js, "JOB_EVENTS"); !sameStreamConfig(got, events0) {
				t.Errorf("recreated event stream = %+v\nwant as at start: %+v", got, events0)
			}
			if got := streamConfig(t, e.js, bucketStream); !sameStreamConfig(got, bucket0) {
				t.Errorf("recreated bucket stream = %+v\nwant as at start: %+v", got, bucket0)
			}

			e.provision(2, 5, nil)
			e.emit(events.StatusEvent{JobID: 2, Status: events.StatusRevoked})
			eventually(t, 15*time.Second, "job 2 cleaned after the deletion", func() bool { return !streamExists(t, e.js, "job_2") })
			eventually(t, 15*time.Second, "job 2 recorded", func() bool { return hasRecord(t, e.js, 2) })
			for _, want := range tc.wantLogs {
				if !strings.Contains(logs.String(), want) {
					t.Errorf("the service's log lacks %q", want)
				}
			}
			if err := svc.stop(); err != nil {
				t.Errorf("serve: %v", err)
			}
		})
	}
}

// TestServeBindWaitsForDeletedEventStream: with --bind-event-stream the
// service does not recreate a deleted event stream: it stays up, /readyz is
// 503 naming the stream and what it is doing, and once the backend creates
// the stream again it binds and takes events.
func TestServeBindWaitsForDeletedEventStream(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ensureEventStream(t, e.js)
	addr := freeAddr(t)
	svc := e.startService("--bind-event-stream", "--http-addr", addr)
	eventually(t, 10*time.Second, "ready", func() bool { code, _ := httpGet(t, "http://"+addr+"/readyz"); return code == http.StatusOK })

	if err := e.js.DeleteStream(t.Context(), "JOB_EVENTS"); err != nil {
		t.Fatal(err)
	}
	var body string
	eventually(t, 15*time.Second, "/readyz to name the missing stream", func() bool {
		var code int
		code, body = httpGet(t, "http://"+addr+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, `event stream \"JOB_EVENTS\" was deleted`)
	})
	t.Logf("/readyz while the bound stream is missing: %s", strings.TrimSpace(body))
	time.Sleep(2 * time.Second) // several recovery attempts
	if streamExists(t, e.js, "JOB_EVENTS") {
		t.Fatal("with --bind-event-stream the service recreated the event stream")
	}
	select {
	case err := <-svc.done:
		t.Fatalf("serve exited when the bound event stream was deleted: %v", err)
	default:
	}

	ensureEventStream(t, e.js)
	eventually(t, 15*time.Second, "ready again", func() bool { code, _ := httpGet(t, "http://"+addr+"/readyz"); return code == http.StatusOK })
	e.provision(3, 5, nil)
	e.emit(events.StatusEvent{JobID: 3, Status: events.StatusRevoked})
	eventually(t, 15*time.Second, "job 3 cleaned", func() bool { return !streamExists(t, e.js, "job_3") })
}

// TestReadyzAnswersAtOnceWhenNATSDown: with the server down, /readyz
// answers 503 without any check running out of its time, so well under a
// probe's 1 s timeout (the slowest of five answers is logged).
func TestReadyzAnswersAtOnceWhenNATSDown(t *testing.T) {
	t.Parallel()
	e := setup(t)
	addr := freeAddr(t)
	e.startService("--http-addr", addr)
	eventually(t, 10*time.Second, "ready", func() bool { code, _ := httpGet(t, "http://"+addr+"/readyz"); return code == http.StatusOK })
	e.srv.Stop()
	eventually(t, 10*time.Second, "unready", func() bool {
		code, _ := httpGet(t, "http://"+addr+"/readyz")
		return code == http.StatusServiceUnavailable
	})
	var slowest time.Duration
	for range 5 {
		start := time.Now()
		code, body := httpGet(t, "http://"+addr+"/readyz")
		took := time.Since(start)
		slowest = max(slowest, took)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, `"nats"`) {
			t.Errorf("/readyz with NATS down = %d %s", code, body)
		}
		// Every check answers from what the service knows, none waits
		// for the server: none runs out of its time (telemetry.CheckTimeout).
		// Before, each answer took 2.0 s.
		if strings.Contains(body, "no answer within") {
			t.Errorf("/readyz with NATS down waited for a check (%s): %s", took, body)
		}
	}
	t.Logf("/readyz with NATS down: slowest of 5 answers %s", slowest)
}

// TestReadOnlyCommandsCreateNothing: ls and sweep --dry-run on a server
// where the service never ran create no bucket (nor anything else), say
// that there are no records yet, and still list the job streams as jobs
// unknown to the service.
func TestReadOnlyCommandsCreateNothing(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(5, 3, nil)
	before := streamNames(t, e.js)

	for _, args := range [][]string{
		{"ls"},
		{"ls", "--json"},
		{"sweep", "--dry-run"},
	} {
		var out bytes.Buffer
		runCLI(t, &out, append(args, "--nats-url", e.url)...)
		text := out.String()
		switch args[len(args)-1] {
		case "--json":
			var rows []struct {
				JobID    int64  `json:"job_id"`
				JobState string `json:"job_state"`
			}
			if err := json.Unmarshal(out.Bytes(), &rows); err != nil || len(rows) != 1 || rows[0].JobID != 5 || rows[0].JobState != "unknown" {
				t.Errorf("ls --json = %v, %s; want job 5, unknown", err, text)
			}
		case "ls":
			assertContains(t, text, "no records yet", "job_5", "unknown", "1 job stream")
		default:
			assertContains(t, text, "no records yet", "dry run, nothing changed: streams seen 1")
		}
	}
	after := streamNames(t, e.js)
	for _, name := range after {
		if strings.HasPrefix(name, "KV_") {
			t.Errorf("a read-only command created the bucket's stream %s", name)
		}
	}
	if strings.Join(after, ",") != strings.Join(before, ",") {
		t.Errorf("streams before the read-only commands %v, after %v", before, after)
	}

	// With the bucket there, ls reads it and says nothing about records.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := queue.OpenStore(ctx, e.js, queue.StoreConfig{Bucket: "queue_janitor_jobs", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	runCLI(t, &out, "ls", "--nats-url", e.url)
	if strings.Contains(out.String(), "no records yet") {
		t.Errorf("ls says no records yet with the bucket there:\n%s", out.String())
	}
}
