package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
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
}

// Telemetry is the set of providers the service passes down.
type Telemetry struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// MetricsHandler serves /metrics in the Prometheus text format.
	MetricsHandler http.Handler
	// Exporters names what is active, for the start-up log line.
	Exporters []string

	shutdown []func(context.Context) error
}

// Tracer returns the service's tracer.
func (t *Telemetry) Tracer() trace.Tracer { return t.TracerProvider.Tracer(InstrumentationName) }

// Meter returns the service's meter.
func (t *Telemetry) Meter() metric.Meter { return t.MeterProvider.Meter(InstrumentationName) }

// InstrumentationName is the instrumentation scope of every span and metric.
const InstrumentationName = "github.com/example/queue-janitor"

// Shutdown flushes and stops the exporters; call it once, last.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	for i := len(t.shutdown) - 1; i >= 0; i-- {
		errs = append(errs, t.shutdown[i](ctx))
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
	t := &Telemetry{}
	if sdkDisabled(getenv) {
		t.TracerProvider = noop.NewTracerProvider()
		t.Exporters = append(t.Exporters, "traces:disabled")
	} else if err := t.setupTraces(ctx, cfg, getenv, res); err != nil {
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
