package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/queue"
)

// This file is the intake's self-healing. The backend's operator tooling may
// delete every stream on the server, the event stream (and with it the
// durable consumer) included. The intake notices within seconds, recreates
// what it created, with the configuration it created it with (with Bind it
// creates no stream: it waits for one to exist again), and resumes taking
// events, without a restart.

// errStreamMissing is wrapped by the error for a missing event stream that
// the intake may not create (Bind).
var errStreamMissing = errors.New("event stream does not exist")

// watchEvery is how often a bound intake asks the server whether its
// consumer still exists, besides what the pull requests report.
const watchEvery = 2 * time.Second

// Recovery backoff: from the first to the longest wait between attempts.
const (
	recoverFirst = 500 * time.Millisecond
	recoverMax   = 5 * time.Second
)

// streamConfig is the event stream as the intake creates it.
func (in *Intake) streamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        in.cfg.Stream,
		Description: "job-status CloudEvents read by queue-janitor",
		Subjects:    []string{in.cfg.Subject},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      in.cfg.MaxAge,
		Replicas:    in.cfg.Replicas,
		Duplicates:  2 * time.Minute,
	}
}

// consumerConfig is the durable consumer every replica shares.
func (in *Intake) consumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:        in.cfg.Consumer,
		Description:    "queue-janitor: shared by every replica",
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        in.cfg.AckWait,
		MaxDeliver:     -1, // the intake counts deliveries itself (see settle)
		BackOff:        redeliveryBackoff(in.cfg.AckWait, in.cfg.MaxDeliver),
		FilterSubjects: []string{in.cfg.Subject},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		MaxAckPending:  4096,
	}
}

// ensureStream binds the event stream or creates it (created is then true);
// with Bind a missing stream is an error wrapping errStreamMissing.
func (in *Intake) ensureStream(ctx context.Context) (created bool, err error) {
	st, err := in.js.Stream(ctx, in.cfg.Stream)
	if err == nil {
		in.born.Store(st.CachedInfo().Created.UnixNano())
		return false, nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return false, fmt.Errorf("look up event stream %q: %w", in.cfg.Stream, err)
	}
	if in.cfg.Bind {
		return false, fmt.Errorf("event stream %q does not exist: create it, or drop --bind-event-stream to let queue-janitor create it: %w",
			in.cfg.Stream, errStreamMissing)
	}
	st, err = in.js.CreateStream(ctx, in.streamConfig())
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		if st, err = in.js.Stream(ctx, in.cfg.Stream); err == nil { // another replica was first
			in.born.Store(st.CachedInfo().Created.UnixNano())
		}
		return false, err
	}
	if err != nil {
		return false, fmt.Errorf("create event stream %q: %w", in.cfg.Stream, err)
	}
	in.born.Store(st.CachedInfo().Created.UnixNano())
	return true, nil
}

func (in *Intake) ensureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	cons, err := in.js.CreateOrUpdateConsumer(ctx, in.cfg.Stream, in.consumerConfig())
	if err != nil {
		return nil, fmt.Errorf("create consumer %q on %q: %w", in.cfg.Consumer, in.cfg.Stream, err)
	}
	return cons, nil
}

// watch returns true when ctx is done, false when the consumer is gone: the
// server said it was deleted, or a check (every watchEvery, or at once when
// a pull request hints at it) finds it or its stream missing.
func (in *Intake) watch(ctx context.Context, cons jetstream.Consumer) (done bool) {
	t := time.NewTicker(watchEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return true
		case <-in.lost:
			return false
		case <-in.check:
		case <-t.C:
		}
		if in.consumerGone(ctx, cons) {
			return false
		}
	}
}

// consumerGone asks the server whether the consumer or its stream is gone;
// while the connection is down it does not ask (the nats check says so).
func (in *Intake) consumerGone(ctx context.Context, cons jetstream.Consumer) bool {
	if queue.Connected(in.js) != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, watchEvery)
	defer cancel()
	var boundCreated time.Time
	if ci := cons.CachedInfo(); ci != nil {
		boundCreated = ci.Created
	}
	// Asked twice, a moment apart, so that an answer given in the middle
	// of a cluster's leader change does not restart a healthy consumer.
	for i := range 2 {
		if i > 0 {
			select {
			case <-ctx.Done():
				return false
			case <-time.After(250 * time.Millisecond):
			}
		}
		info, err := cons.Info(ctx)
		if err == nil && cons.CachedInfo() != nil && !info.Created.Equal(boundCreated) {
			return true // deleted and created again (by another replica): bind afresh
		}
		if !errors.Is(err, jetstream.ErrConsumerNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return false
		}
	}
	return true
}

// recover sets the stream and consumer up again, retrying with backoff
// until it succeeds or ctx is done (it then returns ctx's error). Ready
// says what is going on meanwhile.
func (in *Intake) recover(ctx context.Context, prev jetstream.Consumer) (jetstream.Consumer, error) {
	var prevCreated time.Time
	if ci := prev.CachedInfo(); ci != nil {
		prevCreated = ci.Created
	}
	in.setProblem(fmt.Sprintf("event consumer %s/%s lost on the server; recreating it", in.cfg.Stream, in.cfg.Consumer))
	in.drainSignals()
	wait := recoverFirst
	toldMissing := false
	for {
		// Wait first, also before the first attempt: the server tells the
		// consumer it is deleted before it has finished deleting the stream,
		// and a stream created under the same name meanwhile can come back
		// with the old one's messages and then stop answering.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		cons, err := in.rebind(ctx, prevCreated, &toldMissing)
		if err == nil {
			return cons, nil
		}
		wait = min(2*wait, recoverMax)
	}
}

// rebind is one attempt of recover; prevCreated is when the consumer last
// bound was created, to tell a consumer created again from the same one
// bound afresh.
func (in *Intake) rebind(ctx context.Context, prevCreated time.Time, toldMissing *bool) (jetstream.Consumer, error) {
	if err := queue.Connected(in.js); err != nil {
		in.setProblem(fmt.Sprintf("event consumer %s/%s not bound: %v; waiting for NATS", in.cfg.Stream, in.cfg.Consumer, err))
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	created, err := in.ensureStream(ctx)
	switch {
	case errors.Is(err, errStreamMissing):
		in.setProblem(fmt.Sprintf("event stream %q was deleted on the server; --bind-event-stream: waiting for it to be created again",
			in.cfg.Stream))
		if !*toldMissing {
			*toldMissing = true
			in.log.Warn().Str("stream", in.cfg.Stream).
				Msg("event stream " + in.cfg.Stream + " was deleted; events not yet handled are lost; " +
					"--bind-event-stream: not recreating it, waiting for it to exist again")
		}
		return nil, err
	case err != nil:
		in.setProblem(fmt.Sprintf("event stream %q: %v; retrying", in.cfg.Stream, err))
		return nil, err
	case created:
		in.log.Warn().Str("stream", in.cfg.Stream).
			Msg("event stream " + in.cfg.Stream + " was deleted; events not yet handled are lost; recreated")
	}
	cons, err := in.ensureConsumer(ctx)
	if err != nil {
		in.setProblem(fmt.Sprintf("event consumer %s/%s: %v; retrying", in.cfg.Stream, in.cfg.Consumer, err))
		return nil, err
	}
	switch ci := cons.CachedInfo(); {
	case created:
	case ci != nil && ci.Created.Equal(prevCreated):
		in.log.Info().Str("stream", in.cfg.Stream).Str("consumer", in.cfg.Consumer).
			Msg("event consumer bound again (it was still there)")
	default:
		in.log.Warn().Str("stream", in.cfg.Stream).Str("consumer", in.cfg.Consumer).
			Msg("event consumer was deleted on the server; recreated")
	}
	return cons, nil
}

func (in *Intake) setProblem(p string) { in.problem.Store(&p) }

// signal wakes the watcher without blocking.
func (in *Intake) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// drainSignals forgets what the previous consumer reported.
func (in *Intake) drainSignals() {
	for _, ch := range []chan struct{}{in.lost, in.check} {
		select {
		case <-ch:
		default:
		}
	}
}
