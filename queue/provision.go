package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// This file creates a job's queue the way the backend does (contract
// section 1). The service itself never creates task queues; the demo, the
// operator CLI's documentation and the tests use it to stand in for the
// backend, and backend developers can read it as the reference layout.

// MaxDeliveriesAdvisoryPrefix is the subject prefix of JetStream's
// max-deliveries advisories, which the shared advisory stream collects.
const MaxDeliveriesAdvisoryPrefix = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."

// TaskStreamConfig is the backend's task stream for a job: limits retention,
// file storage, a 24 h max age, the job's task subject only. A non-nil
// attempt is stamped into the metadata under [AttemptMetadataKey], which
// makes the service's fence exact.
func (n Names) TaskStreamConfig(id JobID, attempt *int64) jetstream.StreamConfig {
	cfg := jetstream.StreamConfig{
		Name:      n.StreamName(id),
		Subjects:  []string{n.SubjectName(id)},
		Retention: jetstream.LimitsPolicy,
		Storage:   jetstream.FileStorage,
		MaxAge:    24 * time.Hour,
	}
	if attempt != nil {
		cfg.Metadata = map[string]string{AttemptMetadataKey: strconv.FormatInt(*attempt, 10)}
	}
	return cfg
}

// AdvisoryStreamConfig is the shared stream of max-deliveries advisories.
// It carries one dead-letter consumer per live job, so it sets MaxConsumers:
// nats-server 2.11+ caps a stream without one at 1,000 consumers, which a
// backend with more live jobs would hit ("maximum consumers limit reached").
func (n Names) AdvisoryStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:         n.AdvisoryStream,
		Subjects:     []string{MaxDeliveriesAdvisoryPrefix + ">"},
		Retention:    jetstream.LimitsPolicy,
		Storage:      jetstream.FileStorage,
		MaxAge:       24 * time.Hour,
		MaxConsumers: 100_000,
	}
}

// Provision creates the job's task stream, task consumer and dead-letter
// consumer (and the shared advisory stream if missing), as the backend does
// before publishing a round of tasks. Existing resources are kept.
func Provision(ctx context.Context, js jetstream.JetStream, n Names, id JobID, attempt *int64) error {
	cfg := n.TaskStreamConfig(id, attempt)
	if _, err := js.CreateStream(ctx, cfg); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("create stream %q: %w", cfg.Name, err)
	}
	var meta map[string]string
	if attempt != nil {
		meta = map[string]string{AttemptMetadataKey: strconv.FormatInt(*attempt, 10)}
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, cfg.Name, jetstream.ConsumerConfig{
		Durable:    n.ConsumerName(id),
		AckPolicy:  jetstream.AckExplicitPolicy,
		AckWait:    30 * time.Second,
		MaxDeliver: 5,
		Metadata:   meta,
	}); err != nil {
		return fmt.Errorf("create consumer %q: %w", n.ConsumerName(id), err)
	}
	adv := n.AdvisoryStreamConfig()
	if _, err := js.CreateStream(ctx, adv); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("create stream %q: %w", adv.Name, err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, adv.Name, jetstream.ConsumerConfig{
		Durable:       n.DeadLetterConsumerName(id),
		AckPolicy:     jetstream.AckExplicitPolicy,
		FilterSubject: MaxDeliveriesAdvisoryPrefix + cfg.Name + ".*",
		Metadata:      meta,
	}); err != nil {
		return fmt.Errorf("create consumer %q: %w", n.DeadLetterConsumerName(id), err)
	}
	return nil
}
