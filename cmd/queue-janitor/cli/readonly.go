package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/queue"
)

// bucketWatchInterval is how often serve checks that the bucket still
// exists (the backend's tooling may delete every stream), besides noticing
// on any call.
const bucketWatchInterval = 5 * time.Second

// openBucket opens the per-job records. A read-only command binds only:
// it must not create the bucket (at the wrong replicas for a later
// deployment, say) just by looking. Otherwise the bucket is created when
// missing, and recreated, with a warning, should it be deleted later.
func openBucket(ctx context.Context, js jetstream.JetStream, cfg queue.StoreConfig, log zerolog.Logger, readOnly bool,
	opts ...queue.Option) (*queue.Store, error) {
	if readOnly {
		return queue.BindStore(ctx, js, cfg, opts...)
	}
	store, err := queue.OpenStore(ctx, js, cfg, opts...)
	if err != nil {
		return nil, err
	}
	store.SetHealObserver(func(ctx context.Context, bucket string, err error) {
		if err != nil {
			log.Error().Ctx(ctx).Str("kv_bucket", bucket).Err(err).
				Msg("key-value bucket " + bucket + " was deleted; recreating it failed; will try again")
			return
		}
		log.Warn().Ctx(ctx).Str("kv_bucket", bucket).
			Msg("key-value bucket " + bucket + " was deleted; the per-job records it held are lost; recreated")
	})
	return store, nil
}

// noRecordsYet tells the operator that a read-only command found no bucket:
// every job is unknown to the service. With JSON on stdout it goes to
// stderr.
func noRecordsYet(cio cmdIO, bucket string, toStderr bool) {
	w := cio.stdout
	if toStderr {
		w = cio.stderr
	}
	fmt.Fprintf(w, "no records yet (key-value bucket %s does not exist): every job is unknown to the service\n", bucket)
}
