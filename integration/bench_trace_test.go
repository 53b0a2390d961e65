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

// stageSamples holds, per stage of a path, one duration per event.
type stageSamples struct {
	order  []string
	byName map[string][]time.Duration
	totals []time.Duration
}

func (s *stageSamples) add(total time.Duration, stages [][2]any) {
	if s.byName == nil {
		s.byName = map[string][]time.Duration{}
	}
	s.totals = append(s.totals, total)
	for _, st := range stages {
		name, d := st[0].(string), st[1].(time.Duration)
		if _, seen := s.byName[name]; !seen {
			s.order = append(s.order, name)
		}
		s.byName[name] = append(s.byName[name], d)
	}
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

// latencyStages splits one event's publish → stream-gone time along its
// critical path: until the service starts handling it (publish ack,
// delivery to the pull consumer), the record and fence before the delete,
// the delete itself, and until the test saw the server's stream-deleted
// advisory.
func latencyStages(published, seen time.Time, root sinkSpan, spans []sinkSpan) [][2]any {
	del, ok := first(spans, "jetstream.delete_stream")
	if !ok {
		return nil
	}
	info, _ := first(spans, "jetstream.stream_info")
	return [][2]any{
		{"publish and delivery to the service", root.start.Sub(published)},
		{"record read and lease (kv.get, kv.update)", info.start.Sub(root.start)},
		{"fence (stream info)", del.start.Sub(info.start)},
		{"delete stream", del.end.Sub(del.start)},
		{"advisory reaches the observer", seen.Sub(del.end)},
	}
}

// handshakeStages splits restart_requested published → flushed received.
func handshakeStages(published, received time.Time, root sinkSpan, spans []sinkSpan, answer string) [][2]any {
	pub, ok := first(spans, "publish "+answer)
	if !ok {
		return nil
	}
	info, _ := first(spans, "jetstream.stream_info")
	return [][2]any{
		{"publish and delivery to the service", root.start.Sub(published)},
		{"record read and lease (kv.get, kv.update)", info.start.Sub(root.start)},
		{"fence and flush (stream info, deletes)", pub.start.Sub(info.start)},
		{"publish flushed", pub.end.Sub(pub.start)},
		{"flushed reaches the backend", received.Sub(pub.end)},
	}
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
	for _, name := range s.order {
		ds := s.byName[name]
		var slow []time.Duration
		for _, i := range tail {
			slow = append(slow, ds[i])
		}
		fmt.Fprintf(&w, "| %s | %s | %s | %s | %s |\n", name, ms(percentile(ds, 50)), ms(percentile(ds, 90)), ms(percentile(ds, 99)), ms(median(slow)))
	}
	var slow []time.Duration
	for _, i := range tail {
		slow = append(slow, s.totals[i])
	}
	fmt.Fprintf(&w, "| **total** | %s | %s | %s | %s |\n", ms(percentile(s.totals, 50)), ms(percentile(s.totals, 90)),
		ms(percentile(s.totals, 99)), ms(median(slow)))
	return w.String()
}
