package integration

import (
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/example/queue-janitor/queue"
)

// The latency and handshake figures are explained by the service's own
// traces: the OTLP sink decodes what the service exports while those
// phases run, and each event's time is split along its critical path.
// The stages add up to the measured time of the event, so the table says
// where the tail comes from.

// otlpSink is an OTLP/HTTP endpoint that accepts every export, as a
// collector would. While collecting is on, it decodes the spans and keeps
// those it needs; otherwise it discards them without decoding, so that it
// costs the machine little during the storm.
type otlpSink struct {
	*httptest.Server
	received   atomic.Int64
	collecting atomic.Bool

	mu    sync.Mutex
	spans map[string][]sinkSpan // trace id → spans
	roots map[string]sinkSpan   // "process <subject>/<job id>" → the event's span
}

// sinkSpan is the little the breakdown needs of one span.
type sinkSpan struct {
	name       string
	trace      string
	start, end time.Time
}

func newOTLPSink(b *testing.B) *otlpSink {
	b.Helper()
	s := &otlpSink{spans: map[string][]sinkSpan{}, roots: map[string]sinkSpan{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			if gz, err := gzip.NewReader(r.Body); err == nil {
				body = gz
			}
		}
		data, _ := io.ReadAll(body)
		s.received.Add(int64(len(data)))
		if s.collecting.Load() {
			s.collect(data)
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	}))
	b.Cleanup(func() {
		s.Close()
		b.Logf("OTLP sink received %d bytes of spans", s.received.Load())
	})
	return s
}

func (s *otlpSink) collect(data []byte) {
	var req coltracepb.ExportTraceServiceRequest
	if proto.Unmarshal(data, &req) != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				v := sinkSpan{name: sp.GetName(), trace: fmt.Sprintf("%x", sp.GetTraceId()),
					start: time.Unix(0, int64(sp.GetStartTimeUnixNano())), end: time.Unix(0, int64(sp.GetEndTimeUnixNano()))}
				s.spans[v.trace] = append(s.spans[v.trace], v)
				// A JetStream call made inside a span is an event on it,
				// stamped when the call ended, with its duration: the
				// breakdown reads it as a span of its own.
				for _, ev := range sp.GetEvents() {
					end := time.Unix(0, int64(ev.GetTimeUnixNano()))
					for _, a := range ev.GetAttributes() {
						if a.GetKey() == "duration_ms" {
							d := time.Duration(a.GetValue().GetDoubleValue() * float64(time.Millisecond))
							s.spans[v.trace] = append(s.spans[v.trace], sinkSpan{name: ev.GetName(), trace: v.trace, start: end.Add(-d), end: end})
						}
					}
				}
				if strings.HasPrefix(v.name, "process ") {
					for _, a := range sp.GetAttributes() {
						if a.GetKey() == "job.id" {
							s.roots[fmt.Sprintf("%s/%d", v.name, a.GetValue().GetIntValue())] = v
						}
					}
				}
			}
		}
	}
}

// event returns the spans of the trace of the event span name for job id,
// waiting for the batch exporter to send them.
func (s *otlpSink) event(b *testing.B, name string, id queue.JobID) (root sinkSpan, spans []sinkSpan) {
	b.Helper()
	key := fmt.Sprintf("%s/%d", name, id)
	deadline := time.Now().Add(20 * time.Second)
	for {
		s.mu.Lock()
		root, ok := s.roots[key]
		spans := s.spans[root.trace]
		s.mu.Unlock()
		if ok {
			return root, spans
		}
		if time.Now().After(deadline) {
			b.Fatalf("no %q span for job %d reached the OTLP sink", name, id)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stagePath is the critical path of one kind of event: the span whose end
// the observer waits for, and the names of its five stages.
type stagePath struct {
	step  func(id queue.JobID) string
	names [5]string
}

var (
	// goneStages: event published → the server's stream-deleted advisory
	// seen by the benchmark.
	goneStages = stagePath{
		step: func(queue.JobID) string { return "jetstream.delete_stream" },
		names: [5]string{"publish and delivery to the service", "record read and claim (kv.get, kv.create)",
			"fence (stream info)", "delete stream", "advisory reaches the observer"},
	}
)

// flushedStages: restart_requested published → flushed received, the
// answer's subject being prefix+id.
func flushedStages(prefix string) stagePath {
	return stagePath{
		step: func(id queue.JobID) string { return fmt.Sprintf("publish %s%d", prefix, id) },
		names: [5]string{"publish and delivery to the service", "record read and claim (kv.get, kv.create)",
			"fence and flush (stream info, purge, deletes), record (kv.update)", "publish flushed", "flushed reaches the backend"},
	}
}

// stageSamples holds, per stage of one path, one duration per event.
type stageSamples struct {
	names  [5]string
	stages [5][]time.Duration
	totals []time.Duration
}

// record splits the time of the event span named event for job id, from
// published to seen, along path: until the service starts handling it
// (publish ack, delivery to the pull consumer), the record and lease, from
// the fence to the step, the step, and from the step's end until the
// observer saw its effect. The stages add up to the measured time.
func (s *stageSamples) record(b *testing.B, sink *otlpSink, event string, id queue.JobID, published, seen time.Time, path stagePath) {
	b.Helper()
	root, spans := sink.event(b, event, id)
	step, ok := first(spans, path.step(id))
	if !ok {
		b.Fatalf("job %d: no %q span under %q", id, path.step(id), event)
	}
	info, _ := first(spans, "jetstream.stream_info")
	s.names = path.names
	for i, d := range []time.Duration{root.start.Sub(published), info.start.Sub(root.start),
		step.start.Sub(info.start), step.end.Sub(step.start), seen.Sub(step.end)} {
		s.stages[i] = append(s.stages[i], d)
	}
	s.totals = append(s.totals, seen.Sub(published))
}

// first returns the earliest-starting span named name, or false.
func first(spans []sinkSpan, name string) (sinkSpan, bool) {
	var out sinkSpan
	found := false
	for _, sp := range spans {
		if sp.name == name && (!found || sp.start.Before(out.start)) {
			out, found = sp, true
		}
	}
	return out, found
}

// markdown prints p50/p90/p99 per stage, and the stages of the slowest 1%
// of events (by total) as medians, which shows where the tail comes from.
func (s *stageSamples) markdown(title string) string {
	if len(s.totals) == 0 {
		return ""
	}
	var w strings.Builder
	idx := make([]int, len(s.totals))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return s.totals[idx[a]] > s.totals[idx[b]] })
	tail := idx[:max(1, len(idx)/100)]
	fmt.Fprintf(&w, "\n%s (%d events, all rounds; from the service's exported spans):\n\n", title, len(s.totals))
	fmt.Fprintf(&w, "| stage | p50 | p90 | p99 | median in the slowest 1%% (%d events) |\n|---|---|---|---|---|\n", len(tail))
	row := func(name string, ds []time.Duration) {
		var slow []time.Duration
		for _, i := range tail {
			slow = append(slow, ds[i])
		}
		fmt.Fprintf(&w, "| %s | %s | %s | %s | %s |\n", name, ms(percentile(ds, 50)), ms(percentile(ds, 90)), ms(percentile(ds, 99)), ms(median(slow)))
	}
	for n, name := range s.names {
		row(name, s.stages[n])
	}
	row("**total**", s.totals)
	return w.String()
}
