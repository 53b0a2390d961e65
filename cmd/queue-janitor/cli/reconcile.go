package cli

import (
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/telemetry"
)

// sweepConfig is the reconciler's part of the configuration.
func (c Config) sweepConfig() handlers.SweepConfig {
	return handlers.SweepConfig{
		Grace: c.Reconcile.Grace, OrphanIdle: c.Reconcile.OrphanIdle, SweepOrphans: c.Reconcile.SweepOrphans,
	}
}

// newReconciler wires the reconciler to the service's handler, listing and
// bucket.
func newReconciler(cfg Config, svc *service, log zerolog.Logger, tel *telemetry.Telemetry, metrics *telemetry.Metrics) *handlers.Reconciler {
	return handlers.NewReconciler(svc.handler, svc.janitor, svc.store, svc.store, cfg.sweepConfig(),
		handlers.ReconcilerDeps{Logger: log, Tracer: tel.Tracer(), Metrics: metrics})
}
