package telemetry

// Tests of Setup against real local OTLP receivers (an httptest server for
// http/protobuf, a gRPC server for grpc), configured only through the OTEL_*
// environment.
//
// Setup reads the exporter *selection* through Config.Getenv, but the OTLP
// exporters read their endpoint, headers and compression, and the SDK reads
// OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES and OTEL_TRACES_SAMPLER(_ARG),
// from the process environment. So these tests have to use t.Setenv and
// cannot be parallel; they pass os.Getenv as Config.Getenv, as the binary
// does.

import (
	"compress/gzip"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	collmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	colltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// otelVars are cleared before each test so the machine's environment cannot
// leak into it.
var otelVars = []string{
	"OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
	"OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
	"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
	"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
	"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
	"OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
	"OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_METRICS_INSECURE",
	"OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
	"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
}

// setOTELEnv clears the OTEL_* variables, sets env, and returns the getenv
// to hand to Setup.
func setOTELEnv(t *testing.T, env map[string]string) func(string) string {
	t.Helper()
	for _, k := range otelVars {
		t.Setenv(k, "")
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	return os.Getenv
}

// receiver records what reaches a local OTLP collector.
type receiver struct {
	mu      sync.Mutex
	traces  []*colltracepb.ExportTraceServiceRequest
	metrics []*collmetricpb.ExportMetricsServiceRequest
	paths   []string
	headers []http.Header
	gzipped int
}

func (r *receiver) snapshot() (tr []*colltracepb.ExportTraceServiceRequest, mr []*collmetricpb.ExportMetricsServiceRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.traces), slices.Clone(r.metrics)
}

// startHTTPReceiver serves OTLP/HTTP protobuf: traces on tracesPath
// (normally /v1/traces) and metrics on /v1/metrics.
func startHTTPReceiver(t *testing.T, tracesPath string) (*receiver, *httptest.Server) {
	t.Helper()
	rec := &receiver{}
	read := func(w http.ResponseWriter, req *http.Request, msg proto.Message) bool {
		if ct := req.Header.Get("Content-Type"); ct != "application/x-protobuf" {
			t.Errorf("%s: Content-Type %q, want application/x-protobuf", req.URL.Path, ct)
			http.Error(w, "bad content type", http.StatusUnsupportedMediaType)
			return false
		}
		var body io.Reader = req.Body
		if req.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(req.Body)
			if err != nil {
				t.Errorf("%s: gzip: %v", req.URL.Path, err)
				http.Error(w, err.Error(), http.StatusBadRequest)
				return false
			}
			defer zr.Close()
			body = zr
			rec.mu.Lock()
			rec.gzipped++
			rec.mu.Unlock()
		}
		b, err := io.ReadAll(body)
		if err == nil {
			err = proto.Unmarshal(b, msg)
		}
		if err != nil {
			t.Errorf("%s: decoding the body: %v", req.URL.Path, err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return false
		}
		rec.mu.Lock()
		rec.paths = append(rec.paths, req.URL.Path)
		rec.headers = append(rec.headers, req.Header.Clone())
		rec.mu.Unlock()
		return true
	}
	reply := func(w http.ResponseWriter, msg proto.Message) {
		b, _ := proto.Marshal(msg)
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(b)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+tracesPath, func(w http.ResponseWriter, req *http.Request) {
		msg := &colltracepb.ExportTraceServiceRequest{}
		if read(w, req, msg) {
			rec.mu.Lock()
			rec.traces = append(rec.traces, msg)
			rec.mu.Unlock()
			reply(w, &colltracepb.ExportTraceServiceResponse{})
		}
	})
	mux.HandleFunc("POST /v1/metrics", func(w http.ResponseWriter, req *http.Request) {
		msg := &collmetricpb.ExportMetricsServiceRequest{}
		if read(w, req, msg) {
			rec.mu.Lock()
			rec.metrics = append(rec.metrics, msg)
			rec.mu.Unlock()
			reply(w, &collmetricpb.ExportMetricsServiceResponse{})
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		t.Errorf("unexpected OTLP request %s %s", req.Method, req.URL.Path)
		http.NotFound(w, req)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return rec, srv
}

type grpcTraces struct {
	colltracepb.UnimplementedTraceServiceServer
	rec *receiver
}

func (g grpcTraces) Export(_ context.Context, req *colltracepb.ExportTraceServiceRequest) (*colltracepb.ExportTraceServiceResponse, error) {
	g.rec.mu.Lock()
	defer g.rec.mu.Unlock()
	g.rec.traces = append(g.rec.traces, req)
	return &colltracepb.ExportTraceServiceResponse{}, nil
}

type grpcMetrics struct {
	collmetricpb.UnimplementedMetricsServiceServer
	rec *receiver
}

func (g grpcMetrics) Export(_ context.Context, req *collmetricpb.ExportMetricsServiceRequest) (*collmetricpb.ExportMetricsServiceResponse, error) {
	g.rec.mu.Lock()
	defer g.rec.mu.Unlock()
	g.rec.metrics = append(g.rec.metrics, req)
	return &collmetricpb.ExportMetricsServiceResponse{}, nil
}

// startGRPCReceiver serves the OTLP trace and metrics services on a
// loopback port and returns its http:// endpoint (plaintext).
func startGRPCReceiver(t *testing.T) (*receiver, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &receiver{}
	srv := grpc.NewServer()
	colltracepb.RegisterTraceServiceServer(srv, grpcTraces{rec: rec})
	collmetricpb.RegisterMetricsServiceServer(srv, grpcMetrics{rec: rec})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("grpc receiver: %v", err)
		}
	})
	return rec, "http://" + ln.Addr().String()
}

// exportedSpan is one span as the receiver saw it.
type exportedSpan struct {
	resource *resourcepb.Resource
	scope    string
	span     *tracepb.Span
}

func spansOf(reqs []*colltracepb.ExportTraceServiceRequest) []exportedSpan {
	var out []exportedSpan
	for _, req := range reqs {
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					out = append(out, exportedSpan{rs.GetResource(), ss.GetScope().GetName(), s})
				}
			}
		}
	}
	return out
}

func attr(kvs []*commonpb.KeyValue, key string) (string, bool) {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			return kv.GetValue().GetStringValue(), true
		}
	}
	return "", false
}

// shutdown flushes tel with a generous deadline.
func shutdown(t *testing.T, tel *Telemetry) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 60*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// exportOneSpan runs Setup, ends one span with an attribute, flushes, and
// returns the span's context.
func exportOneSpan(t *testing.T, getenv func(string) string, wantExporters string) trace.SpanContext {
	t.Helper()
	tel, err := Setup(t.Context(), Config{ServiceName: "queue-janitor", ServiceVersion: "1.2.3", Getenv: getenv})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tel.Exporters, ","); got != wantExporters {
		t.Errorf("exporters %s, want %s", got, wantExporters)
	}
	_, span := tel.Tracer().Start(t.Context(), "process job.status.revoked")
	span.SetAttributes(jobAttr)
	sc := span.SpanContext()
	span.End()
	shutdown(t, tel)
	return sc
}

var jobAttr = attribute.String("queue_janitor.job_id", "job-42")

// checkExportedSpan asserts reqs hold exactly the one span sc, carrying the
// resource from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
func checkExportedSpan(t *testing.T, reqs []*colltracepb.ExportTraceServiceRequest, sc trace.SpanContext) {
	t.Helper()
	if !sc.IsSampled() {
		t.Fatalf("span %v not sampled under the default sampler", sc)
	}
	spans := spansOf(reqs)
	if len(spans) != 1 {
		t.Fatalf("receiver got %d spans in %d requests, want 1", len(spans), len(reqs))
	}
	got := spans[0]
	tid, sid := sc.TraceID(), sc.SpanID()
	if got.span.GetName() != "process job.status.revoked" ||
		string(got.span.GetTraceId()) != string(tid[:]) || string(got.span.GetSpanId()) != string(sid[:]) {
		t.Errorf("span %q trace %x span %x, want %q %s %s", got.span.GetName(), got.span.GetTraceId(),
			got.span.GetSpanId(), "process job.status.revoked", tid, sid)
	}
	if v, _ := attr(got.span.GetAttributes(), "queue_janitor.job_id"); v != "job-42" {
		t.Errorf("span attribute queue_janitor.job_id = %q, want job-42", v)
	}
	if got.scope != InstrumentationName {
		t.Errorf("scope %q, want %q", got.scope, InstrumentationName)
	}
	ra := got.resource.GetAttributes()
	for k, want := range map[string]string{
		"service.name":                "qj-from-env", // OTEL_SERVICE_NAME beats Config.ServiceName
		"service.version":             "1.2.3",       // Config.ServiceVersion, not overridden
		"deployment.environment.name": "ci",          // OTEL_RESOURCE_ATTRIBUTES
		"team":                        "storage",     // OTEL_RESOURCE_ATTRIBUTES
		"telemetry.sdk.language":      "go",
	} {
		if v, ok := attr(ra, k); !ok || v != want {
			t.Errorf("resource %s = %q (present %v), want %q", k, v, ok, want)
		}
	}
}

var resourceEnv = map[string]string{
	"OTEL_SERVICE_NAME":        "qj-from-env",
	"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=ci,team=storage",
}

func withEnv(base map[string]string, kv ...string) map[string]string {
	m := map[string]string{}
	for k, v := range resourceEnv {
		m[k] = v
	}
	for k, v := range base {
		m[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func TestOTLPHTTPExportsSpanWithResourceFromEnv(t *testing.T) {
	t.Run("generic endpoint, gzip, headers", func(t *testing.T) {
		rec, srv := startHTTPReceiver(t, "/v1/traces")
		getenv := setOTELEnv(t, withEnv(nil,
			"OTEL_TRACES_EXPORTER", "otlp",
			"OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf",
			"OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL,
			"OTEL_EXPORTER_OTLP_COMPRESSION", "gzip",
			"OTEL_EXPORTER_OTLP_HEADERS", "x-collector-token=s3cret"))
		// The generic endpoint turns OTLP metrics on too; they go to /v1/metrics.
		sc := exportOneSpan(t, getenv, "traces:otlp,metrics:prometheus,metrics:otlp")
		traces, _ := rec.snapshot()
		checkExportedSpan(t, traces, sc)
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if rec.gzipped == 0 {
			t.Error("OTEL_EXPORTER_OTLP_COMPRESSION=gzip: no request was gzipped")
		}
		for i, h := range rec.headers {
			if h.Get("X-Collector-Token") != "s3cret" {
				t.Errorf("request %d to %s lacks the OTEL_EXPORTER_OTLP_HEADERS header", i, rec.paths[i])
			}
		}
	})
	t.Run("traces-specific endpoint and protocol", func(t *testing.T) {
		// A per-signal endpoint is used as is, and on its own selects otlp
		// for traces only.
		rec, srv := startHTTPReceiver(t, "/collector/traces")
		getenv := setOTELEnv(t, withEnv(nil,
			"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf",
			"OTEL_EXPORTER_OTLP_PROTOCOL", "grpc",
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", srv.URL+"/collector/traces"))
		sc := exportOneSpan(t, getenv, "traces:otlp,metrics:prometheus")
		traces, metrics := rec.snapshot()
		checkExportedSpan(t, traces, sc)
		if len(metrics) != 0 {
			t.Errorf("%d metric exports without a metrics endpoint", len(metrics))
		}
	})
}

func TestOTLPGRPCExportsSpanWithResourceFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{"explicit", []string{"OTEL_TRACES_EXPORTER", "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"}},
		// Only an endpoint: otlp is the default exporter and grpc the
		// default protocol.
		{"defaults", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, endpoint := startGRPCReceiver(t)
			getenv := setOTELEnv(t, withEnv(nil, append(tc.env, "OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)...))
			sc := exportOneSpan(t, getenv, "traces:otlp,metrics:prometheus,metrics:otlp")
			traces, _ := rec.snapshot()
			checkExportedSpan(t, traces, sc)
		})
	}
}

func TestTracesSamplerFromEnv(t *testing.T) {
	unsampledParent := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
	sampledParent := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	for _, tc := range []struct {
		sampler, arg string
		// sampled is whether a root span, a child of an unsampled remote
		// parent and a child of a sampled remote parent are sampled.
		sampled [3]bool
	}{
		{"always_off", "", [3]bool{false, false, false}},
		{"traceidratio", "0", [3]bool{false, false, false}},
		{"always_on", "", [3]bool{true, true, true}},
		{"parentbased_always_on", "", [3]bool{true, false, true}},
		{"parentbased_always_off", "", [3]bool{false, false, true}},
	} {
		t.Run(tc.sampler+tc.arg, func(t *testing.T) {
			rec, srv := startHTTPReceiver(t, "/v1/traces")
			env := withEnv(nil, "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL,
				"OTEL_TRACES_SAMPLER", tc.sampler)
			if tc.arg != "" {
				env["OTEL_TRACES_SAMPLER_ARG"] = tc.arg
			}
			tel, err := Setup(t.Context(), Config{ServiceName: "queue-janitor", Getenv: setOTELEnv(t, env)})
			if err != nil {
				t.Fatal(err)
			}
			ctx := t.Context()
			names := []string{"root", "child of unsampled", "child of sampled"}
			parents := []context.Context{ctx, WithRemoteParent(ctx, unsampledParent, ""), WithRemoteParent(ctx, sampledParent, "")}
			var want []string
			for i, name := range names {
				_, span := tel.Tracer().Start(parents[i], name)
				if got := span.SpanContext().IsSampled(); got != tc.sampled[i] {
					t.Errorf("%s: sampled %v, want %v", name, got, tc.sampled[i])
				}
				if tc.sampled[i] {
					want = append(want, name)
				}
				span.End()
			}
			// A metric export shows the receiver was reachable and flushed
			// even when no span is sampled.
			c, err := tel.Meter().Int64Counter("sampler.test")
			if err != nil {
				t.Fatal(err)
			}
			c.Add(ctx, 1)
			shutdown(t, tel)
			traces, metrics := rec.snapshot()
			if len(metrics) == 0 {
				t.Error("no metric export: the receiver was not reached")
			}
			var got []string
			for _, s := range spansOf(traces) {
				got = append(got, s.span.GetName())
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("exported spans %q, want %q", got, want)
			}
		})
	}
}

func TestOTLPMetricsReachReceiver(t *testing.T) {
	for _, otlpProto := range []string{"http/protobuf", "grpc"} {
		t.Run(strings.ReplaceAll(otlpProto, "/", "_"), func(t *testing.T) {
			var rec *receiver
			var endpoint string
			if otlpProto == "grpc" {
				rec, endpoint = startGRPCReceiver(t)
			} else {
				var srv *httptest.Server
				rec, srv = startHTTPReceiver(t, "/v1/traces")
				endpoint = srv.URL
			}
			getenv := setOTELEnv(t, withEnv(nil, "OTEL_TRACES_EXPORTER", "none", "OTEL_METRICS_EXPORTER", "otlp",
				"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", otlpProto, "OTEL_EXPORTER_OTLP_ENDPOINT", endpoint))
			tel, err := Setup(t.Context(), Config{ServiceName: "queue-janitor", Getenv: getenv})
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(tel.Exporters, ","); got != "traces:none,metrics:prometheus,metrics:otlp" {
				t.Errorf("exporters %s", got)
			}
			m, err := NewMetrics(tel.MeterProvider)
			if err != nil {
				t.Fatal(err)
			}
			m.EventHandled(t.Context(), "revoked", "cleanup", "removed", 3*time.Millisecond, 0)
			m.EventHandled(t.Context(), "revoked", "cleanup", "removed", 5*time.Millisecond, 0)
			m.DeadLettered(t.Context(), "malformed")
			// Shutdown flushes the periodic reader long before its interval.
			shutdown(t, tel)
			traces, metrics := rec.snapshot()
			if len(traces) != 0 {
				t.Errorf("%d trace exports with OTEL_TRACES_EXPORTER=none", len(traces))
			}
			var events, deadLetters int64
			var histCount uint64
			for _, req := range metrics {
				for _, rm := range req.GetResourceMetrics() {
					if v, _ := attr(rm.GetResource().GetAttributes(), "service.name"); v != "qj-from-env" {
						t.Errorf("metrics resource service.name %q, want qj-from-env", v)
					}
					for _, sm := range rm.GetScopeMetrics() {
						for _, mt := range sm.GetMetrics() {
							switch mt.GetName() {
							case "queue_janitor.events":
								sum := mt.GetSum()
								if !sum.GetIsMonotonic() ||
									sum.GetAggregationTemporality() != metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE {
									t.Errorf("queue_janitor.events: %v", mt)
								}
								for _, p := range sum.GetDataPoints() {
									if v, _ := attr(p.GetAttributes(), "status"); v != "revoked" {
										t.Errorf("queue_janitor.events point status %q", v)
									}
									events += p.GetAsInt()
								}
							case "queue_janitor.deadletters":
								for _, p := range mt.GetSum().GetDataPoints() {
									deadLetters += p.GetAsInt()
								}
							case "queue_janitor.action.duration":
								for _, p := range mt.GetHistogram().GetDataPoints() {
									histCount += p.GetCount()
								}
							}
						}
					}
				}
			}
			if events != 2 || deadLetters != 1 || histCount != 2 {
				t.Errorf("received events=%d deadletters=%d action.duration count=%d in %d exports, want 2, 1, 2",
					events, deadLetters, histCount, len(metrics))
			}
		})
	}
}

func TestSDKDisabledPushesNothing(t *testing.T) {
	// OTEL_SDK_DISABLED turns off every signal: even with an endpoint and
	// OTEL_METRICS_EXPORTER=otlp nothing reaches the collector; only the
	// local /metrics endpoint stays.
	rec, srv := startHTTPReceiver(t, "/v1/traces")
	getenv := setOTELEnv(t, withEnv(nil, "OTEL_SDK_DISABLED", "true", "OTEL_TRACES_EXPORTER", "otlp",
		"OTEL_METRICS_EXPORTER", "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL))
	tel, err := Setup(t.Context(), Config{ServiceName: "queue-janitor", Getenv: getenv})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tel.Exporters, ","); got != "traces:disabled,metrics:prometheus" {
		t.Errorf("exporters %s, want traces:disabled,metrics:prometheus", got)
	}
	m, err := NewMetrics(tel.MeterProvider)
	if err != nil {
		t.Fatal(err)
	}
	m.DeadLettered(t.Context(), "malformed")
	_, span := tel.Tracer().Start(t.Context(), "process job.status.revoked")
	span.End()
	shutdown(t, tel)
	if traces, metrics := rec.snapshot(); len(traces) != 0 || len(metrics) != 0 {
		t.Errorf("OTEL_SDK_DISABLED=true: %d trace and %d metric exports reached the collector", len(traces), len(metrics))
	}
}
