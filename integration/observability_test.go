package integration

import (
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/example/queue-janitor/cmd/queue-janitor/cli"
	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// TestOneTraceFromTransitionToAnswer: the backend's span publishes REVOKED
// with its traceparent, in each content mode; the service's spans continue
// that trace down to every JetStream action and the emitted cleaned event,
// which carries the same trace.
func TestOneTraceFromTransitionToAnswer(t *testing.T) {
	t.Parallel()
	for _, binary := range []bool{false, true} {
		t.Run(map[bool]string{false: "structured", true: "binary"}[binary], func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			rec := tracetest.NewSpanRecorder()
			startServeHooks(t, e.js, baseArgs(e.url), zerolog.NewTestWriter(t), cli.Hooks{SpanProcessors: []sdktrace.SpanProcessor{rec}})
			e.provision(1, 10, events.Attempt(1))
			cleaned, err := e.nc.SubscribeSync("job.queue.cleaned.1")
			if err != nil {
				t.Fatal(err)
			}

			backend := sdktrace.NewTracerProvider()
			ctx, producer := backend.Tracer("backend").Start(t.Context(), "revoke job 1", trace.WithSpanKind(trace.SpanKindProducer))
			msg, err := events.StatusEvent{ID: "ev-1", JobID: 1, Status: events.StatusRevoked, Attempt: events.Attempt(1), Binary: binary}.Msg(ctx, "job.status.")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.js.PublishMsg(ctx, msg); err != nil {
				t.Fatal(err)
			}
			producer.End()
			want := producer.SpanContext()

			answer, err := cleaned.NextMsg(15 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			got := decodeEmitted(t, answer)
			if !strings.Contains(got.TraceParent, want.TraceID().String()) {
				t.Errorf("cleaned event traceparent %q does not continue trace %s", got.TraceParent, want.TraceID())
			}

			var spans []sdktrace.ReadOnlySpan
			eventually(t, 10*time.Second, "the event span to end", func() bool {
				spans = rec.Ended()
				return findSpan(spans, "process job.status.revoked") != nil
			})
			process := findSpan(spans, "process job.status.revoked")
			if process.Parent().SpanID() != want.SpanID() || process.SpanContext().TraceID() != want.TraceID() {
				t.Fatalf("event span's parent %s/%s, want the producer %s/%s", process.Parent().TraceID(), process.Parent().SpanID(),
					want.TraceID(), want.SpanID())
			}
			if process.SpanKind() != trace.SpanKindConsumer {
				t.Errorf("event span kind %s, want consumer", process.SpanKind())
			}
			wantAttrs := map[string]string{
				"messaging.system": "nats", "messaging.destination.name": "job.status.revoked",
				"messaging.operation.type": "process", "messaging.message.id": "ev-1",
				"messaging.consumer.group.name": "queue-janitor", "messaging.nats.message.delivery_count": "1",
				"job.id": "1", "job.status": "revoked", "job.attempt": "1", "cloudevents.event_id": "ev-1",
				"cloudevents.event_type": "job.status.revoked", "queue_janitor.decision": "cleanup", "queue_janitor.result": "removed",
				"queue_janitor.messages_discarded": "10",
			}
			assertAttrs(t, process, wantAttrs)
			if !spanHasAttr(process, "queue_janitor.deleted", "stream job_1") {
				t.Errorf("the event span does not say what was deleted: %v", process.Attributes())
			}

			// Every JetStream call of the effect is an event on the event's
			// span; the answer's publish is the only span under it.
			calls := map[string]int{}
			for _, ev := range process.Events() {
				calls[ev.Name]++
			}
			for _, name := range []string{"jetstream.stream_info", "jetstream.delete_consumer", "jetstream.delete_stream", "kv.update"} {
				if calls[name] == 0 {
					t.Errorf("no %q event on the event span; its events: %v", name, calls)
				}
			}
			if n := calls["jetstream.delete_consumer"]; n != 1 {
				t.Errorf("%d delete_consumer events, want 1 (the dead-letter consumer; the task consumer goes with its stream)", n)
			}
			below := descendants(spans, process)
			if names := spanNames(below); len(names) != 1 {
				t.Errorf("spans under the event span: %v; want the answer's publish alone", names)
			}
			pub := findSpan(below, "publish job.queue.cleaned.1")
			if !strings.Contains(got.TraceParent, pub.SpanContext().SpanID().String()) {
				t.Errorf("cleaned event traceparent %q is not the publish span %s", got.TraceParent, pub.SpanContext().SpanID())
			}
			for _, s := range below {
				if s.SpanContext().TraceID() != want.TraceID() {
					t.Errorf("span %q is in trace %s, want %s", s.Name(), s.SpanContext().TraceID(), want.TraceID())
				}
			}
		})
	}
}

// spanHasAttr reports whether s has attribute key holding want (a string,
// or one element of a string slice).
func spanHasAttr(s sdktrace.ReadOnlySpan, key, want string) bool {
	for _, kv := range s.Attributes() {
		if string(kv.Key) != key {
			continue
		}
		if kv.Value.AsString() == want {
			return true
		}
		for _, v := range kv.Value.AsStringSlice() {
			if v == want {
				return true
			}
		}
	}
	return false
}

func findSpan(spans []sdktrace.ReadOnlySpan, name string) sdktrace.ReadOnlySpan {
	for _, s := range spans {
		if s.Name() == name {
			return s
		}
	}
	return nil
}

func spanNames(spans []sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name())
	}
	return out
}

// descendants are the spans below root, at any depth.
func descendants(spans []sdktrace.ReadOnlySpan, root sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	under := map[trace.SpanID]bool{root.SpanContext().SpanID(): true}
	var out []sdktrace.ReadOnlySpan
	for changed := true; changed; {
		changed = false
		for _, s := range spans {
			id := s.SpanContext().SpanID()
			if !under[id] && under[s.Parent().SpanID()] {
				under[id], changed = true, true
				out = append(out, s)
			}
		}
	}
	return out
}

func assertAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	for _, kv := range s.Attributes() {
		got[string(kv.Key)] = kv.Value.String()
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("span %q attribute %s = %q, want %q", s.Name(), k, got[k], v)
		}
	}
}

// freeAddr is a loopback address with a port nobody listens on.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestMetricsAfterAScenario reads /metrics after two cleanups, a flush of a
// leftover, an ignored status and an invalid event.
func TestMetricsAfterAScenario(t *testing.T) {
	t.Parallel()
	e := setup(t)
	addr := freeAddr(t)
	e.startService("--http-addr", addr)
	for id := queue.JobID(1); id <= 3; id++ {
		e.provision(id, int(10*id), nil)
	}
	e.emit(events.StatusEvent{JobID: 1, Status: events.StatusRevoked})
	e.emit(events.StatusEvent{JobID: 2, Status: events.StatusCancelled})
	e.emit(events.StatusEvent{JobID: 3, Status: events.StatusRestartRequested, Attempt: events.Attempt(2)})
	e.emit(events.StatusEvent{JobID: 4, Status: events.StatusStarted})
	if _, err := e.js.PublishMsg(t.Context(), &nats.Msg{Subject: "job.status.revoked", Data: []byte("{"),
		Header: nats.Header{"Content-Type": {events.ContentTypeCloudEventsJSON}}}); err != nil {
		t.Fatal(err)
	}
	e.waitSettled(t)

	var text string
	eventually(t, 10*time.Second, "metrics", func() bool {
		_, text = httpGet(t, "http://"+addr+"/metrics")
		return strings.Contains(text, "queue_janitor_deadletters_total")
	})
	for series, want := range map[string]float64{
		`queue_janitor_events_total{decision="cleanup",result="removed",status="revoked"}`:         1,
		`queue_janitor_events_total{decision="cleanup",result="removed",status="cancelled"}`:       1,
		`queue_janitor_events_total{decision="flush",result="removed",status="restart_requested"}`: 1,
		`queue_janitor_events_total{decision="ignore",result="recorded",status="started"}`:         1,
		`queue_janitor_events_total{decision="dead-letter",result="malformed",status="invalid"}`:   1,
		`queue_janitor_messages_discarded_total{action="cleanup"}`:                                 30,
		`queue_janitor_messages_discarded_total{action="flush"}`:                                   30,
		`queue_janitor_deadletters_total{reason="malformed"}`:                                      1,
		`queue_janitor_action_duration_seconds_count{decision="cleanup",result="removed"}`:         2,
		`queue_janitor_event_lag_seconds_count{status="revoked"}`:                                  1,
	} {
		if got, ok := metricValue(text, series); !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", grepLines(text, "queue_janitor"))
	}
}

// metricValue finds one sample in Prometheus text by its exact series.
func metricValue(text, series string) (float64, bool) {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` ([0-9.e+-]+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestReadinessFollowsNATS: /readyz turns unready when the NATS server
// stops and ready when it returns; /healthz stays up throughout.
func TestReadinessFollowsNATS(t *testing.T) {
	t.Parallel()
	e := setup(t)
	addr := freeAddr(t)
	e.startService("--http-addr", addr)
	ready := func() int { code, _ := httpGet(t, "http://"+addr+"/readyz"); return code }
	eventually(t, 10*time.Second, "ready", func() bool { return ready() == http.StatusOK })

	e.srv.Stop()
	eventually(t, 10*time.Second, "unready while NATS is down", func() bool { return ready() == http.StatusServiceUnavailable })
	if code, body := httpGet(t, "http://"+addr+"/readyz"); !strings.Contains(body, `"nats"`) {
		t.Errorf("unready body (%d) does not name the nats check: %s", code, body)
	}
	if code, _ := httpGet(t, "http://"+addr+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d while NATS is down, want 200", code)
	}
	e.srv.Restart(t)
	eventually(t, 20*time.Second, "ready again", func() bool { return ready() == http.StatusOK })
	// And it works again.
	e.provision(9, 5, nil)
	e.emit(events.StatusEvent{JobID: 9, Status: events.StatusRevoked})
	eventually(t, 15*time.Second, "job 9 cleaned after the outage", func() bool { return !streamExists(t, e.js, "job_9") })
}

// TestTransientFailureIsRetriedAndTraced: the server refuses the service's
// delete of job_1 (a permission it lacks for a while: each attempt times
// out, as a request to an unresponsive server does) until a configuration
// reload grants it. The cleanup still happens, inside the event's trace:
// the delete_stream span records the first failure, each retry is a child
// span with its error, the last one succeeds; the retries are counted.
func TestTransientFailureIsRetriedAndTraced(t *testing.T) {
	t.Parallel()
	store := t.TempDir()
	opts := func(refuse bool) *server.Options {
		janitor := &server.Permissions{Publish: &server.SubjectPermission{Allow: []string{">"}}}
		if refuse {
			janitor.Publish.Deny = []string{"$JS.API.STREAM.DELETE.job_1"}
		}
		return &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, JetStream: true, StoreDir: store,
			Users: []*server.User{{Username: "janitor", Password: "pw", Permissions: janitor}, {Username: "backend", Password: "pw"}}}
	}
	srv, err := server.NewServer(opts(true))
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	nc, js := natstest.Connect(t, srv.ClientURL(), nats.UserInfo("backend", "pw"))
	e := &env{t: t, url: srv.ClientURL(), nc: nc, js: js, names: queue.DefaultNames()}
	e.provision(1, 10, events.Attempt(1))
	cleaned := subscribe(t, nc, "job.queue.cleaned.1")

	addr := freeAddr(t)
	rec := tracetest.NewSpanRecorder()
	startServeHooks(t, js, append(baseArgs(e.url), "--nats-user", "janitor", "--nats-password", "pw", "--http-addr", addr,
		"--retry-initial", "50ms", "--retry-max-interval", "200ms", "--retry-attempt-timeout", "300ms"),
		zerolog.NewTestWriter(t), cli.Hooks{SpanProcessors: []sdktrace.SpanProcessor{rec}})
	e.emit(events.StatusEvent{JobID: 1, Status: events.StatusRevoked, Attempt: events.Attempt(1)})

	retries := func() float64 {
		_, text := httpGet(t, "http://"+addr+"/metrics")
		n, _ := metricValue(text, `queue_janitor_retries_total{operation="jetstream.delete_stream"}`)
		return n
	}
	eventually(t, 15*time.Second, "the refused delete to be retried twice", func() bool { return retries() >= 2 })
	if !streamExists(t, js, "job_1") {
		t.Fatal("job_1 was deleted while the server refused it")
	}
	if err := srv.ReloadOptions(opts(false)); err != nil {
		t.Fatalf("reload: %v", err)
	}
	eventually(t, 15*time.Second, "job 1 cleaned once the delete is allowed", func() bool { return cleaned.count() == 1 })
	if streamExists(t, js, "job_1") {
		t.Error("job_1 survived")
	}

	var process sdktrace.ReadOnlySpan
	eventually(t, 10*time.Second, "the event span to end", func() bool {
		process = findSpan(rec.Ended(), "process job.status.revoked")
		return process != nil
	})
	// The delete is an event on the event's span, after its failed attempts,
	// each an event of its own with its error; no span per call.
	var failed, done int
	var attempts int64
	for _, ev := range process.Events() {
		switch ev.Name {
		case "jetstream.delete_stream failed":
			failed++
			if !eventHas(ev, "error") || !eventHas(ev, "retry.attempt") {
				t.Errorf("failed attempt event %d without its error or attempt: %v", failed, ev.Attributes)
			}
		case "jetstream.delete_stream":
			done++
			for _, kv := range ev.Attributes {
				if kv.Key == "retry.attempts" {
					attempts = kv.Value.AsInt64()
				}
			}
			if eventHas(ev, "error") {
				t.Errorf("the delete succeeded in the end, but its event carries an error: %v", ev.Attributes)
			}
		}
	}
	if failed < 2 || done != 1 || attempts != int64(failed+1) {
		t.Fatalf("on the event span: %d failed delete attempts, %d delete events with %d attempts; want at least 2 failures, then one delete counting them all",
			failed, done, attempts)
	}
	if below := descendants(rec.Ended(), process); len(spanNames(below)) > 1 {
		t.Errorf("spans under the event span: %v; want only the answer's publish", spanNames(below))
	}
	if got := retries(); got < float64(failed) {
		t.Errorf("queue_janitor_retries_total for delete_stream = %v, want at least the %d retries traced", got, failed)
	}
}

// eventHas reports whether a span event carries the attribute key.
func eventHas(ev sdktrace.Event, key string) bool {
	for _, kv := range ev.Attributes {
		if string(kv.Key) == key {
			return true
		}
	}
	return false
}
