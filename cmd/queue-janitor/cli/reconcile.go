package cli

import (
	"context"

	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/telemetry"
)

type reconciler struct{}

func newReconciler(Config, *service, string, zerolog.Logger, *telemetry.Metrics) *reconciler {
	return &reconciler{}
}

func (r *reconciler) run(ctx context.Context) { <-ctx.Done() }
