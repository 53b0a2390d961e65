package integration

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/example/queue-janitor/cmd/queue-janitor/cli"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// reconcileArgs run the reconciler every 300ms with a one-second grace.
func (e *env) startReconciling(extra ...string) *service {
	e.t.Helper()
	return e.startService(append([]string{"--reconcile-interval", "300ms", "--reconcile-grace", "1s",
		"--reconcile-lease", "5s"}, extra...)...)
}

func (e *env) store(t *testing.T) *queue.Store {
	t.Helper()
	s, err := queue.OpenStore(t.Context(), e.js, queue.StoreConfig{Bucket: "queue_janitor_jobs", Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestReconcilerCleansWhatEventsMissed: a job the service knows is
// terminal, whose event it never handled (the record was written by another
// way: a replica that crashed before deleting, an event skipped), is cleaned
// by the reconciler; a running job's stream is never touched.
func TestReconcilerCleansWhatEventsMissed(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(1, 30, events.Attempt(1))
	e.provision(2, 40, events.Attempt(1))
	store := e.store(t)
	one := int64(1)
	if _, err := store.Put(t.Context(), 1, queue.Record{Attempt: &one, Time: time.Now(), EventID: "missed",
		Status: "revoked", State: queue.StateTerminal, Done: false}, 0); err != nil {
		t.Fatal(err)
	}
	ensureEventStream(t, e.js)
	e.emit(events.StatusEvent{JobID: 2, Status: events.StatusStarted, Attempt: events.Attempt(1)})
	cleaned := subscribe(t, e.nc, "job.queue.cleaned.1")
	e.startReconciling()

	eventually(t, 20*time.Second, "job_1 cleaned by the reconciler", func() bool { return !streamExists(t, e.js, "job_1") })
	eventually(t, 5*time.Second, "its cleaned event", func() bool { return cleaned.count() == 1 })
	got := decodeEmitted(t, cleaned.all()[0])
	if got.Data.Trigger != handlers.TriggerReconciler || got.Data.MessagesDiscarded != 30 || got.Data.CauseEventID != "missed" {
		t.Errorf("cleaned = %+v", got.Data)
	}
	rec, _, err := store.Get(t.Context(), 1)
	if err != nil || !rec.Done || rec.CleanedAt.IsZero() || rec.Lease != nil {
		t.Errorf("record after the sweep = %+v (%v)", rec, err)
	}
	time.Sleep(time.Second) // several more passes
	e.assertRun(t, 2, 40)
}

// TestReconcilerCleansStreamRecreatedAfterTheEnd: the backend recreated the
// stream after the job was revoked (a publish racing the cancel): it stays
// through the grace period, then goes.
func TestReconcilerCleansStreamRecreatedAfterTheEnd(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startReconciling("--reconcile-grace", "2s")
	e.provision(3, 10, nil)
	e.emit(events.StatusEvent{JobID: 3, Status: events.StatusRevoked})
	eventually(t, 10*time.Second, "cleaned by the event", func() bool { return !streamExists(t, e.js, "job_3") })

	e.provision(3, 15, nil) // a late publish recreates it
	info, err := e.js.Stream(t.Context(), "job_3")
	if err != nil {
		t.Fatalf("recreation failed: %v", err)
	}
	recreated := info.CachedInfo().Created // the grace counts from the server's creation time
	eventually(t, 20*time.Second, "cleaned by the reconciler after the grace", func() bool { return !streamExists(t, e.js, "job_3") })
	if took := time.Since(recreated); took < 2*time.Second {
		t.Errorf("removed %s after recreation, inside the 2s grace", took)
	}
}

// TestOrphansAreReportedThenSweptWhenEnabled.
func TestOrphansAreReportedThenSweptWhenEnabled(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(4, 12, nil) // no event ever: unknown to the service
	e.provision(5, 12, nil)
	e.startService() // creates the bucket and the event stream
	time.Sleep(1500 * time.Millisecond)

	var out bytesBuffer
	runCLI(t, &out, "sweep", "--nats-url", e.url, "--orphan-idle", "1s")
	if !streamExists(t, e.js, "job_4") || !streamExists(t, e.js, "job_5") {
		t.Fatal("an orphan was deleted without --orphans")
	}
	assertContains(t, out.String(), "job 4 (job_4): orphan, reported only", "orphans 2 (deleted 0)")

	out.Reset()
	runCLI(t, &out, "sweep", "--nats-url", e.url, "--orphan-idle", "1s", "--orphans")
	assertContains(t, out.String(), "job 4 (job_4): delete orphan", "orphans 2 (deleted 2)")
	if streamExists(t, e.js, "job_4") || streamExists(t, e.js, "job_5") {
		t.Error("orphans still there after sweep --orphans")
	}
	if !streamExists(t, e.js, "advisories") {
		t.Error("the advisories stream was deleted")
	}
}

// TestDryRunChangesNothing.
func TestDryRunChangesNothing(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startService()
	e.provision(6, 9, nil)
	if _, err := e.store(t).Put(t.Context(), 6, queue.Record{Time: time.Now().Add(-time.Hour), EventID: "old",
		Status: "failure", State: queue.StateTerminal}, 0); err != nil {
		t.Fatal(err)
	}
	var out bytesBuffer
	runCLI(t, &out, "sweep", "--dry-run", "--nats-url", e.url, "--reconcile-grace", "0s")
	assertContains(t, out.String(), "job 6 (job_6): would clean", "dry run, nothing changed", "would clean 1")
	e.assertRun(t, 6, 9)
}

// countingLister counts the passes of one reconciler.
type countingLister struct {
	handlers.Lister
	passes atomic.Int64
}

func (c *countingLister) JobStreams(ctx context.Context, fn func(queue.JobStream) error) error {
	c.passes.Add(1)
	return c.Lister.JobStreams(ctx, fn)
}

// TestOneSweeperAtATime: two replicas run the reconciler; only one sweeps
// per interval; when the holder dies without releasing the lease, the other
// takes over once the lease runs out. The lease (5 s) is 50 intervals: a
// holder starved of the CPU for less than that keeps it, so that a busy
// machine does not hand it over while the holder lives.
func TestOneSweeperAtATime(t *testing.T) {
	t.Parallel()
	srv := natstest.RunServer(t)
	type replica struct {
		lister *countingLister
		cancel context.CancelFunc
		done   chan struct{}
	}
	const interval, ttl = 100 * time.Millisecond, 5 * time.Second
	start := func(owner string) *replica {
		_, js := natstest.Connect(t, srv.URL())
		store, err := queue.OpenStore(t.Context(), js, queue.StoreConfig{Bucket: "queue_janitor_jobs", Replicas: 1})
		if err != nil {
			t.Fatal(err)
		}
		j := queue.NewJanitor(js, queue.DefaultNames())
		cfg := handlers.DefaultConfig(owner)
		cfg.Quarantine = 0 // the test's server started empty
		h := handlers.New(j, store, nopEmitter{}, cfg)
		r := &replica{lister: &countingLister{Lister: j}, done: make(chan struct{})}
		rec := handlers.NewReconciler(h, r.lister, store, store, handlers.SweepConfig{Grace: time.Minute, OrphanIdle: time.Hour},
			handlers.ReconcilerDeps{Logger: zerolog.New(zerolog.NewTestWriter(t))})
		ctx, cancel := context.WithCancel(context.Background())
		r.cancel = cancel
		go func() { defer close(r.done); rec.Run(ctx, interval, ttl) }()
		t.Cleanup(func() { cancel(); <-r.done })
		return r
	}
	a, b := start("replica-a"), start("replica-b")
	// Through ten passes of the first to sweep, the other never sweeps.
	const passes = 10
	eventually(t, time.Minute, "a replica's first passes", func() bool {
		return a.lister.passes.Load() >= passes || b.lister.passes.Load() >= passes
	})
	pa, pb := a.lister.passes.Load(), b.lister.passes.Load()
	if (pa == 0) == (pb == 0) {
		t.Fatalf("passes: a=%d b=%d; exactly one replica must sweep", pa, pb)
	}
	holder, other := a, b
	if pb > 0 {
		holder, other = b, a
	}
	holder.cancel() // dies holding the lease
	<-holder.done
	before := other.lister.passes.Load()
	eventually(t, time.Minute, "the other replica to take over", func() bool { return other.lister.passes.Load() > before })
	t.Logf("handover after the holder died: passes a=%d b=%d", a.lister.passes.Load(), b.lister.passes.Load())
}

type nopEmitter struct{}

func (nopEmitter) Cleaned(context.Context, events.QueueResult) error { return nil }
func (nopEmitter) Flushed(context.Context, events.QueueResult) error { return nil }

// TestReconcilerIsObserved: what the reconciler does is seen as an event's
// cleanup is. Its removal has a span with the JetStream actions under it,
// a log line naming what was deleted and why, and the same metrics; an
// orphan it leaves is logged and counted; the triage gauges split the
// streams it saw by job state.
func TestReconcilerIsObserved(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(1, 30, events.Attempt(1)) // terminal, its event missed
	e.provision(2, 40, events.Attempt(1)) // running
	e.provision(7, 12, nil)               // never heard of: an orphan
	one := int64(1)
	if _, err := e.store(t).Put(t.Context(), 1, queue.Record{Attempt: &one, Time: time.Now(), EventID: "missed",
		Status: "revoked", State: queue.StateTerminal}, 0); err != nil {
		t.Fatal(err)
	}
	ensureEventStream(t, e.js)
	e.emit(events.StatusEvent{JobID: 2, Status: events.StatusStarted, Attempt: events.Attempt(1)})

	addr := freeAddr(t)
	rec := tracetest.NewSpanRecorder()
	logs := &syncBuffer{}
	startServeHooks(t, e.js, append(baseArgs(e.url), "--http-addr", addr, "--reconcile-interval", "300ms",
		"--reconcile-grace", "1s", "--reconcile-lease", "5s", "--orphan-idle", "1s"),
		io.MultiWriter(zerolog.NewTestWriter(t), logs), cli.Hooks{SpanProcessors: []sdktrace.SpanProcessor{rec}})

	eventually(t, 20*time.Second, "job_1 cleaned by the reconciler", func() bool { return !streamExists(t, e.js, "job_1") })
	var text string
	eventually(t, 10*time.Second, "a pass after the cleanup in the gauges", func() bool {
		_, text = httpGet(t, "http://"+addr+"/metrics")
		n, ok := metricValue(text, `queue_janitor_job_streams{job_state="terminal"}`)
		orphans, seen := metricValue(text, "queue_janitor_reconciler_orphans_total")
		return (!ok || n == 0) && strings.Contains(text, `queue_janitor_job_streams{job_state="live"}`) && seen && orphans >= 1
	})
	for series, want := range map[string]float64{
		`queue_janitor_reconciler_actions_total{verdict="clean"}`:  1,
		`queue_janitor_messages_discarded_total{action="cleanup"}`: 30,
		`queue_janitor_job_streams{job_state="live"}`:              1,
		`queue_janitor_job_streams{job_state="unknown"}`:           1,
		`queue_janitor_job_messages{job_state="live"}`:             40,
		`queue_janitor_job_messages{job_state="unknown"}`:          12,
		`queue_janitor_job_messages_pending{job_state="live"}`:     40,
		`queue_janitor_job_messages_pending{job_state="unknown"}`:  12,
	} {
		if got, ok := metricValue(text, series); !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	if got, ok := metricValue(text, `queue_janitor_reconciler_orphans_total`); !ok || got < 1 {
		t.Errorf("queue_janitor_reconciler_orphans_total = %v (present %v), want at least 1", got, ok)
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", grepLines(text, "queue_janitor"))
	}

	acted := logLines(t, logs.String(), "reconciler acted")
	if len(acted) != 1 || acted[0]["job_id"] != float64(1) || acted[0]["verdict"] != "clean" ||
		acted[0]["messages_discarded"] != float64(30) || acted[0]["reason"] == "" || acted[0]["trace_id"] == nil {
		t.Errorf("reconciler acted lines = %v, want one for job 1 with its verdict, reason, discarded 30 and trace id", acted)
	}
	orphans := logLines(t, logs.String(), "orphan job stream")
	if len(orphans) == 0 || orphans[0]["job_id"] != float64(7) || orphans[0]["messages"] != float64(12) {
		t.Errorf("orphan lines = %v, want job 7's with its 12 messages", orphans)
	}

	span := findSpan(rec.Ended(), "reconcile job_1")
	if span == nil {
		t.Fatalf("no reconcile job_1 span; spans: %v", spanNames(rec.Ended()))
	}
	assertAttrs(t, span, map[string]string{"job.id": "1", "queue_janitor.verdict": "clean", "queue_janitor.result": "removed"})
	// The JetStream calls are events on the reconciler's span for the job;
	// the answer's publish is a span of its own under it.
	events := map[string]bool{}
	for _, ev := range span.Events() {
		events[ev.Name] = true
	}
	for _, name := range []string{"jetstream.stream_info", "jetstream.delete_stream", "kv.update"} {
		if !events[name] {
			t.Errorf("no %q event on the reconciler's span; its events: %v", name, events)
		}
	}
	if below := descendants(rec.Ended(), span); findSpan(below, "publish job.queue.cleaned.1") == nil {
		t.Errorf("no answer's publish span under the reconciler's span; under it: %v", spanNames(below))
	}
	e.assertRun(t, 2, 40)
	if !streamExists(t, e.js, "job_7") {
		t.Error("the orphan job_7 was deleted without --sweep-orphans")
	}
}

// logLines decodes the JSON log lines whose message starts with msg.
func logLines(t *testing.T, text, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(text, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		if text, _ := m["message"].(string); strings.HasPrefix(text, msg) {
			out = append(out, m)
		}
	}
	return out
}

// firstLogLine is the first JSON log line whose message starts with msg.
func firstLogLine(t *testing.T, text, msg string) map[string]any {
	t.Helper()
	lines := logLines(t, text, msg)
	if len(lines) == 0 {
		t.Fatalf("no log line %q in:\n%s", msg, text)
	}
	return lines[0]
}
