package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/queue"
	"github.com/example/queue-janitor/telemetry"
)

const serveAbout = `Run the service: read job-status CloudEvents from a durable JetStream consumer,
delete a job's task stream and consumers when it reaches a terminal status,
flush leftovers when a restart is requested (then emit job.queue.flushed.{id}),
and periodically reconcile what the events missed.

Tracing and OTLP metrics follow the standard OpenTelemetry variables:
OTEL_TRACES_EXPORTER (otlp, console, none), OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_EXPORTER_OTLP_PROTOCOL (grpc, http/protobuf), OTEL_TRACES_SAMPLER,
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_METRICS_EXPORTER, OTEL_SDK_DISABLED.`

func serveFlags(c *Config) *flagSet {
	f := newFlagSet("serve", "", serveAbout)
	connFlags(f, c)
	embeddedFlags(f, c)
	intakeFlags(f, c)
	eventsFlags(f, c)
	decisionFlags(f, c)
	namesFlags(f, c)
	recordFlags(f, c)
	retryFlags(f, c)
	reconcileFlags(f, c)
	logFlags(f, c)
	httpFlags(f, c)
	f.fs.Lookup("http-addr").Usage += "; with --embedded-nats the default is " + EmbeddedHTTPAddr + " (loopback only)"
	return f
}

// applyEmbeddedDefaults: with --embedded-nats, whose server listens on
// the loopback interface, the health and metrics listener does too unless
// --http-addr (or its variable) says otherwise.
func applyEmbeddedDefaults(cfg *Config, f *flagSet) {
	if cfg.Embedded.Enabled && !f.isSet("http-addr") {
		cfg.HTTPAddr = EmbeddedHTTPAddr
	}
}

func runServe(ctx context.Context, args []string, cio cmdIO) error {
	cfg := DefaultConfig()
	f := serveFlags(&cfg)
	if err := parseFlags(f, args, cio); err != nil {
		return err
	}
	applyEmbeddedDefaults(&cfg, f)
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	log, err := telemetry.NewLogger(cio.stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	tel, err := setupTelemetry(ctx, cio, log, false)
	if err != nil {
		return err
	}
	defer shutdownTelemetry(ctx, tel, log)
	return serve(ctx, cfg, log, tel)
}

// serve runs the service until ctx is done.
func serve(ctx context.Context, cfg Config, log zerolog.Logger, tel *telemetry.Telemetry) error {
	metrics, err := telemetry.NewMetrics(tel.MeterProvider)
	if err != nil {
		return err
	}
	metrics.Prime(ctx, knownSeries(cfg))
	var emb *embedded
	if cfg.Embedded.Enabled {
		if emb, err = startEmbedded(cfg.Embedded); err != nil {
			return err
		}
		defer emb.stop()
		cfg.NATS.URL = emb.URL()
		log.Info().Str("url", emb.URL()).Str("store_dir", emb.StoreDir()).
			Msg("embedded NATS JetStream server started; point the backend and the nats CLI at it")
	}
	owner := replicaID()
	cfg.trustFirstBucket = cfg.trustFirstBucket || emb != nil && emb.fresh // the demo sets it for its own server
	svc, err := openService(ctx, cfg, owner, log, tel, metrics, false)
	if err != nil {
		return err
	}
	defer svc.close()
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() { defer close(watchDone); svc.store.Watch(watchCtx, bucketWatchInterval) }()
	defer func() { stopWatch(); <-watchDone }()

	// A new bucket's records are rebuilt before the first event is taken,
	// so that events need not wait for it (the loop below does it again
	// whenever the bucket is recreated).
	if err := svc.rebuilder.Ensure(ctx); err != nil {
		log.Warn().Err(err).Msg("could not rebuild the job records from the event stream yet; will try again")
	}
	rebuildCtx, stopRebuild := context.WithCancel(ctx)
	rebuildDone := make(chan struct{})
	go func() { defer close(rebuildDone); svc.rebuilder.Run(rebuildCtx) }()
	defer func() { stopRebuild(); <-rebuildDone }()

	intake := events.NewIntake(svc.js, cfg.Intake, newDecoder(cfg), svc.handler, svc.pub,
		events.IntakeDeps{Logger: log, Tracer: tel.Tracer(), Metrics: metrics})

	var web *telemetry.Server
	if cfg.HTTPAddr != "" {
		checks := map[string]telemetry.Check{
			"nats":     svc.natsReady,
			"consumer": intake.Ready,
			"kv":       svc.store.Ping,
		}
		red := telemetry.NewRedactor(natsSecrets(cfg.NATS)...)
		for name, check := range checks {
			checks[name] = red.Check(check)
		}
		handler := telemetry.HealthHandler(checks, tel.MetricsHandler)
		if cfg.Pprof {
			handler = telemetry.WithPprof(handler)
		}
		if web, err = telemetry.Listen(cfg.HTTPAddr, handler); err != nil {
			return fmt.Errorf("--http-addr %q: %w", cfg.HTTPAddr, err)
		}
		go func() {
			if err := web.Serve(); err != nil {
				log.Error().Err(err).Msg("health listener stopped")
			}
		}()
	}

	// The reconciler stops with the intake: when the intake cannot start
	// (no event stream to bind to, no consumer), serve returns its error at
	// once instead of sweeping on with no events read.
	reconcileCtx, stopReconciler := context.WithCancel(ctx)
	defer stopReconciler()
	reconcileDone := make(chan struct{})
	go func() {
		defer close(reconcileDone)
		svc.reconciler(cfg, log, tel).Run(reconcileCtx, cfg.Reconcile.Interval, cfg.Reconcile.LeaseTTL)
	}()

	e := log.Info().Str("replica", owner).Str("nats", svc.nc.ConnectedUrlRedacted()).
		Str("event_stream", cfg.Intake.Stream).Str("consumer", cfg.Intake.Consumer).
		Str("kv_bucket", cfg.Records.Bucket).Strs("terminal", splitList(cfg.TerminalStatuses)).
		Strs("telemetry", tel.Exporters).Str("version", version())
	if web != nil {
		e = e.Str("http", web.Addr())
	}
	e.Msg("queue-janitor serving")

	err = intake.Run(ctx)
	stopReconciler()
	<-reconcileDone
	if web != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = web.Shutdown(sctx)
		cancel()
	}
	if err != nil {
		return err
	}
	log.Info().Msg("queue-janitor stopped")
	return nil
}

// service is what every command that touches NATS shares.
type service struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	store   *queue.Store
	janitor *queue.Janitor
	pub     *events.Publisher
	handler *handlers.Handler
	metrics *telemetry.Metrics
	// rebuilder rebuilds the job records of a new bucket from the event
	// stream (serve runs its loop; operator commands call Ensure).
	rebuilder *handlers.Rebuilder
}

// reconciler is the service's reconciler, for serve and the sweep commands.
func (s *service) reconciler(cfg Config, log zerolog.Logger, tel *telemetry.Telemetry) *handlers.Reconciler {
	return newReconciler(cfg, s, log, tel, s.metrics)
}

// jetStreamFor is the JetStream handle every command uses.
func jetStreamFor(nc *nats.Conn, cfg Config) (jetstream.JetStream, error) {
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(cfg.Retry.AttemptTimeout))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return js, nil
}

// openService connects and binds everything the handler needs. readOnly
// binds the bucket without creating it (see openBucket).
func openService(ctx context.Context, cfg Config, owner string, log zerolog.Logger, tel *telemetry.Telemetry, metrics *telemetry.Metrics, readOnly bool) (*service, error) {
	dialer := newAbortDialer(cfg.NATS.ConnectTimeout)
	nc, err := connect(ctx, cfg.NATS, "queue-janitor "+owner, log, nats.SetCustomDialer(dialer))
	if err != nil {
		return nil, err
	}
	js, err := jetStreamFor(nc, cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	observer := func(ctx context.Context, op string, attempt int, err error, wait time.Duration) {
		metrics.Retried(ctx, op)
		log.Warn().Ctx(ctx).Str("operation", op).Int("attempt", attempt).Dur("retry_in_ms", wait).Err(err).
			Msg("transient NATS error; retrying")
	}
	opts := []queue.Option{queue.WithRetryPolicy(cfg.Retry), queue.WithTracer(tel.Tracer()), queue.WithRetryObserver(observer),
		queue.WithAbort(func() {
			log.Warn().Msg("a delete got no reply, and no later request on the connection was answered: closing the NATS connection so that the request cannot arrive late; reconnecting")
			dialer.Abort()
		})}
	store, err := openBucket(ctx, js, cfg.Records, log, readOnly, opts...)
	if err != nil {
		nc.Close()
		return nil, jetStreamHint(err)
	}
	svc := &service{nc: nc, js: js, store: store, janitor: queue.NewJanitor(js, cfg.Names, opts...), metrics: metrics}
	svc.pub = events.NewPublisher(nc, cfg.Events, tel.Tracer())
	hcfg := cfg.Handler(owner)
	if cfg.trustFirstBucket && !readOnly {
		// The embedded server started empty in this process: the bucket it
		// holds now was created just before and had no predecessor.
		inc, err := store.Incarnation(ctx)
		if err != nil {
			nc.Close()
			return nil, err
		}
		hcfg.TrustedIncarnation = inc.Created
	}
	replay := events.NewReplayer(js, cfg.Intake.Stream, cfg.Intake.Consumer, newDecoder(cfg)).WithMaxFuture(cfg.Intake.MaxFuture)
	svc.handler = handlers.New(svc.janitor, store, svc.pub, hcfg,
		handlers.WithRebuild(replay, store, log, &svc.rebuilder))
	return svc, nil
}

func (s *service) natsReady(context.Context) error {
	if st := s.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("NATS connection is %s", st)
	}
	return nil
}

func (s *service) close() {
	if err := s.nc.Drain(); err != nil {
		s.nc.Close()
	}
	for i := 0; i < 50 && !s.nc.IsClosed(); i++ {
		time.Sleep(20 * time.Millisecond)
	}
}

func newDecoder(cfg Config) events.Decoder {
	terminal := map[events.Status]bool{}
	for _, s := range cfg.Terminal() {
		terminal[s] = true
	}
	return events.NewDecoder(cfg.Intake.SubjectPrefix(), cfg.Intake.MaxEventBytes, func(s events.Status) bool {
		return s == events.StatusRestartRequested || terminal[s]
	})
}

// jetStreamHint adds what to do when JetStream itself is missing.
func jetStreamHint(err error) error {
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return fmt.Errorf("%w: enable JetStream on the NATS server (nats-server -js) and for this account", err)
	}
	return err
}

// setupTelemetry builds the providers from the OTEL_* environment plus the
// test hooks; console sends spans to standard error as JSON. OpenTelemetry's
// own errors (a failed export) go to log.
func setupTelemetry(ctx context.Context, cio cmdIO, log zerolog.Logger, console bool) (*telemetry.Telemetry, error) {
	return telemetry.Setup(ctx, telemetry.Config{
		ServiceName: "queue-janitor", ServiceVersion: version(), Getenv: cio.getenv,
		Console: cio.stderr, ForceConsole: console, Logger: log,
		SpanProcessors: cio.hooks.SpanProcessors, MetricReaders: cio.hooks.MetricReaders, Redact: cio.redact,
	})
}

// shutdownTelemetry flushes spans and metrics; it runs after ctx is done,
// so it keeps ctx's values but not its cancellation.
func shutdownTelemetry(ctx context.Context, tel *telemetry.Telemetry, log zerolog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		log.Warn().Err(err).Msg("telemetry shutdown: some spans or metrics may not have been exported")
	}
}
