package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Config selects exporters. The OTLP exporters also read their own
// OTEL_EXPORTER_OTLP_* variables (endpoint, headers, TLS, timeout) from the
// process environment, and the SDK reads OTEL_TRACES_SAMPLER(_ARG),
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
type Config struct {
	// ServiceName and ServiceVersion describe the resource unless
	// OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES say otherwise.
	ServiceName    string
	ServiceVersion string
	// Getenv reads the OTEL_* selection variables (default: none set).
	Getenv func(string) string
	// Console receives spans as JSON when OTEL_TRACES_EXPORTER=console or
	// when ForceConsole is set (the demo does).
	Console      io.Writer
	ForceConsole bool
	// SpanProcessors are added as they are (tests pass an in-memory
	// recorder).
	SpanProcessors []sdktrace.SpanProcessor
	// MetricReaders are added beside the Prometheus reader (tests pass a
	// manual reader).
	MetricReaders []sdkmetric.Reader
	// Redact, when set, masks secrets in every span before a processor or
	// exporter sees it.
	Redact *Redactor
	// Logger receives OpenTelemetry's own errors as structured warnings:
	// "telemetry export failed" when an exporter fails (the collector is
	// down, a timeout), with the error and the signal; at most one line
	// per [ErrorLogInterval], counting the ones left out. The zero value
	// drops them.
	Logger zerolog.Logger
}

// ErrorLogInterval is the shortest time between two lines about
// OpenTelemetry errors from one Setup: an unreachable collector fails every
// export, every few seconds.
const ErrorLogInterval = time.Minute

// Telemetry is the set of providers the service passes down.
type Telemetry struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// MetricsHandler serves /metrics in the Prometheus text format.
	MetricsHandler http.Handler
	// Exporters names what is active, for the start-up log line.
	Exporters []string

	shutdown []func(context.Context) error
	errs     *errorLog
}

// Tracer returns the service's tracer.
func (t *Telemetry) Tracer() trace.Tracer { return t.TracerProvider.Tracer(InstrumentationName) }

// Meter returns the service's meter.
func (t *Telemetry) Meter() metric.Meter { return t.MeterProvider.Meter(InstrumentationName) }

// InstrumentationName is the instrumentation scope of every span and metric.
const InstrumentationName = "github.com/example/queue-janitor"

// Shutdown flushes and stops the exporters; call it once, last. It
// returns the errors of the final flush; an export that failed earlier was
// logged through Config.Logger.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	for i := len(t.shutdown) - 1; i >= 0; i-- {
		errs = append(errs, t.shutdown[i](ctx))
	}
	if t.errs != nil {
		otelErrors.remove(t.errs)
	}
	return errors.Join(errs...)
}

// Setup builds the tracer and meter providers. With no OTEL_* variables set
// tracing is a no-op and metrics are served only on /metrics.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(cfg.ServiceName), semconv.ServiceVersion(cfg.ServiceVersion)),
		resource.WithTelemetrySDK(), resource.WithHost(), resource.WithFromEnv())
	if err != nil && res == nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	t := &Telemetry{errs: newErrorLog(cfg.Logger, ErrorLogInterval, time.Now)}
	otelErrors.add(t.errs)
	if sdkDisabled(getenv) {
		t.TracerProvider = noop.NewTracerProvider()
		t.Exporters = append(t.Exporters, "traces:disabled")
	} else if err := t.setupTraces(ctx, cfg, getenv, res); err != nil {
		otelErrors.remove(t.errs)
		return nil, err
	}
	if err := t.setupMetrics(ctx, cfg, getenv, res); err != nil {
		_ = t.Shutdown(ctx)
		return nil, err
	}
	return t, nil
}

func (t *Telemetry) setupTraces(ctx context.Context, cfg Config, getenv func(string) string, res *resource.Resource) error {
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	for _, p := range cfg.SpanProcessors {
		if cfg.Redact != nil {
			p = cfg.Redact.SpanProcessor(p)
		}
		opts = append(opts, sdktrace.WithSpanProcessor(p))
	}
	for _, name := range tracesExporters(cfg, getenv) {
		var exp sdktrace.SpanExporter
		var err error
		switch name {
		case "none":
			continue
		case "console":
			exp, err = stdouttrace.New(stdouttrace.WithWriter(cfg.Console))
		case "otlp":
			exp, err = otlpTraceExporter(ctx, protocol(getenv, "TRACES"))
		default:
			return fmt.Errorf("OTEL_TRACES_EXPORTER %q: want otlp, console or none", name)
		}
		if err != nil {
			return fmt.Errorf("trace exporter %s: %w", name, err)
		}
		if cfg.Redact != nil {
			exp = cfg.Redact.SpanExporter(exp)
		}
		exp = taggedSpanExporter{SpanExporter: exp, log: t.errs}
		if name == "console" {
			opts = append(opts, sdktrace.WithSyncer(exp))
		} else {
			opts = append(opts, sdktrace.WithBatcher(exp))
		}
		t.Exporters = append(t.Exporters, "traces:"+name)
	}
	if len(opts) == 1 {
		t.TracerProvider = noop.NewTracerProvider()
		t.Exporters = append(t.Exporters, "traces:none")
		return nil
	}
	tp := sdktrace.NewTracerProvider(opts...)
	t.TracerProvider = tp
	t.shutdown = append(t.shutdown, tp.Shutdown)
	return nil
}

// tracesExporters applies OTEL_TRACES_EXPORTER, defaulting to otlp when an
// OTLP endpoint is configured and to none otherwise.
func tracesExporters(cfg Config, getenv func(string) string) []string {
	var names []string
	if v := getenv("OTEL_TRACES_EXPORTER"); v != "" {
		for _, n := range strings.Split(v, ",") {
			names = append(names, strings.ToLower(strings.TrimSpace(n)))
		}
	} else if otlpConfigured(getenv, "TRACES") {
		names = []string{"otlp"}
	}
	if cfg.ForceConsole && !contains(names, "console") {
		names = append(names, "console")
	}
	return names
}

func otlpTraceExporter(ctx context.Context, proto string) (sdktrace.SpanExporter, error) {
	switch proto {
	case "grpc":
		return otlptracegrpc.New(ctx)
	case "http/protobuf":
		return otlptracehttp.New(ctx)
	default:
		return nil, fmt.Errorf("OTLP protocol %q: want grpc or http/protobuf", proto)
	}
}

func (t *Telemetry) setupMetrics(ctx context.Context, cfg Config, getenv func(string) string, res *resource.Resource) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	promExp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return fmt.Errorf("prometheus exporter: %w", err)
	}
	t.MetricsHandler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	opts := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithReader(promExp), durationBuckets()}
	t.Exporters = append(t.Exporters, "metrics:prometheus")
	for _, r := range cfg.MetricReaders {
		opts = append(opts, sdkmetric.WithReader(r))
	}
	if wantOTLPMetrics(getenv) {
		var exp sdkmetric.Exporter
		switch proto := protocol(getenv, "METRICS"); proto {
		case "grpc":
			exp, err = otlpmetricgrpc.New(ctx)
		case "http/protobuf":
			exp, err = otlpmetrichttp.New(ctx)
		default:
			err = fmt.Errorf("OTLP protocol %q: want grpc or http/protobuf", proto)
		}
		if err != nil {
			return fmt.Errorf("metric exporter otlp: %w", err)
		}
		exp = taggedMetricExporter{Exporter: exp, log: t.errs}
		opts = append(opts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(15*time.Second))))
		t.Exporters = append(t.Exporters, "metrics:otlp")
	}
	mp := sdkmetric.NewMeterProvider(opts...)
	t.MeterProvider = mp
	t.shutdown = append(t.shutdown, mp.Shutdown)
	return nil
}

// durationBuckets gives the duration histograms buckets that resolve the
// milliseconds a delete takes as well as the minutes an event can lag.
func durationBuckets() sdkmetric.Option {
	return sdkmetric.WithView(sdkmetric.NewView(
		sdkmetric.Instrument{Kind: sdkmetric.InstrumentKindHistogram, Unit: "s"},
		sdkmetric.Stream{Aggregation: sdkmetric.AggregationExplicitBucketHistogram{
			Boundaries: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900},
		}},
	))
}

// sdkDisabled applies OTEL_SDK_DISABLED, which turns off every signal's
// export: traces become a no-op and no metrics are pushed by OTLP (the
// service's own /metrics endpoint stays).
func sdkDisabled(getenv func(string) string) bool {
	return strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true")
}

func wantOTLPMetrics(getenv func(string) string) bool {
	if sdkDisabled(getenv) {
		return false
	}
	if v := getenv("OTEL_METRICS_EXPORTER"); v != "" {
		return contains(strings.Split(strings.ToLower(v), ","), "otlp")
	}
	return otlpConfigured(getenv, "METRICS")
}

func otlpConfigured(getenv func(string) string, signal string) bool {
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_"+signal+"_ENDPOINT") != ""
}

// protocol applies OTEL_EXPORTER_OTLP_{SIGNAL_}PROTOCOL; the default is grpc.
func protocol(getenv func(string) string, signal string) string {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_" + signal + "_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if v := getenv(k); v != "" {
			return strings.ToLower(v)
		}
	}
	return "grpc"
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if strings.TrimSpace(v) == s {
			return true
		}
	}
	return false
}

// OpenTelemetry reports an export that failed, and its other errors,
// through one process-wide handler (otel.Handle), which by default prints
// plain text to standard error, among the JSON logs. otelErrors is that
// handler: it logs each error through the logger of the Setup it comes
// from, as a structured, rate-limited warning. Setup tags the errors of its
// own exporters (taggedSpanExporter, taggedMetricExporter), so that
// several Setups in one process (tests run many) each get their own; an
// untagged error goes to the most recent Setup still running. It is the
// package's one global, because the handler it stands in for is one.
var otelErrors = &errorRouter{}

// errorRouter is the process-wide otel error handler.
type errorRouter struct {
	install sync.Once

	mu   sync.Mutex
	logs []*errorLog // the running Setups', oldest first
}

// add installs the router as otel's error handler (once) and routes
// untagged errors to l until it is removed.
func (r *errorRouter) add(l *errorLog) {
	r.install.Do(func() { otel.SetErrorHandler(r) })
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, l)
}

// remove stops routing untagged errors to l and logs what its rate limit
// held back.
func (r *errorRouter) remove(l *errorLog) {
	r.mu.Lock()
	for i, x := range r.logs {
		if x == l {
			r.logs = append(r.logs[:i], r.logs[i+1:]...)
			break
		}
	}
	r.mu.Unlock()
	l.flush()
}

// Handle implements otel.ErrorHandler.
func (r *errorRouter) Handle(err error) {
	if err == nil {
		return
	}
	var tagged *exportError
	if errors.As(err, &tagged) {
		tagged.log.log(tagged.signal, err)
		return
	}
	r.mu.Lock()
	var l *errorLog
	if n := len(r.logs); n > 0 {
		l = r.logs[n-1]
	}
	r.mu.Unlock()
	if l == nil {
		// No Setup is running: still a JSON line, never plain text.
		fallback := zerolog.New(os.Stderr).With().Timestamp().Logger()
		fallback.Warn().Err(err).Msg("OpenTelemetry error")
		return
	}
	l.log("", err)
}

// errorLog logs one Setup's OpenTelemetry errors: the first at once, then
// at most one line per interval, saying how many were left out.
type errorLog struct {
	logger   zerolog.Logger
	interval time.Duration
	now      func() time.Time

	mu         sync.Mutex
	last       time.Time // of the last line; zero before the first
	suppressed int
	held       error // the last error left out
	heldSignal string
}

func newErrorLog(logger zerolog.Logger, interval time.Duration, now func() time.Time) *errorLog {
	return &errorLog{logger: logger, interval: interval, now: now}
}

// log logs err (an export of signal failed, or, with no signal, another
// OpenTelemetry error) unless a line went out less than interval ago.
func (l *errorLog) log(signal string, err error) {
	l.mu.Lock()
	now := l.now()
	if !l.last.IsZero() && now.Sub(l.last) < l.interval {
		l.suppressed++
		l.held, l.heldSignal = err, signal
		l.mu.Unlock()
		return
	}
	suppressed := l.suppressed
	l.last, l.suppressed, l.held = now, 0, nil
	l.mu.Unlock()
	l.write(signal, err, suppressed)
}

// flush logs the last error the rate limit held back, if any.
func (l *errorLog) flush() {
	l.mu.Lock()
	err, signal, suppressed := l.held, l.heldSignal, l.suppressed
	l.held, l.suppressed = nil, 0
	l.mu.Unlock()
	if err != nil {
		l.write(signal, err, suppressed-1)
	}
}

func (l *errorLog) write(signal string, err error, suppressed int) {
	e := l.logger.Warn().Err(err)
	msg := "OpenTelemetry error"
	if signal != "" {
		e, msg = e.Str("signal", signal), "telemetry export failed"
	}
	if suppressed > 0 {
		e = e.Int("suppressed", suppressed)
	}
	e.Msg(msg)
}

// exportError is an exporter's error, tagged with the Setup it belongs to.
type exportError struct {
	signal string
	log    *errorLog
	err    error
}

func (e *exportError) Error() string { return e.err.Error() }
func (e *exportError) Unwrap() error { return e.err }

// taggedSpanExporter tags its exporter's errors for the router.
type taggedSpanExporter struct {
	sdktrace.SpanExporter
	log *errorLog
}

func (x taggedSpanExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if err := x.SpanExporter.ExportSpans(ctx, spans); err != nil {
		return &exportError{signal: "traces", log: x.log, err: err}
	}
	return nil
}

// taggedMetricExporter tags its exporter's errors for the router.
type taggedMetricExporter struct {
	sdkmetric.Exporter
	log *errorLog
}

func (x taggedMetricExporter) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
	if err := x.Exporter.Export(ctx, rm); err != nil {
		return &exportError{signal: "metrics", log: x.log, err: err}
	}
	return nil
}
