package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// This file is the bucket's self-healing: the backend's operator tooling may
// delete every stream on the server, the bucket's KV_<bucket> stream with
// them. A Store notices on its next call (or its next [Store.Ping]),
// recreates the bucket as it was configured, and carries on.

// recreateDelay is the wait between finding the bucket gone and creating it
// again.
const recreateDelay = 250 * time.Millisecond

// ErrNoBucket is returned by a Store bound with [BindStore] when asked to
// write while its bucket does not exist.
var ErrNoBucket = errors.New("key-value bucket does not exist (read-only: not created)")

// HealObserver is told each time a Store found its bucket deleted on the
// server: err is nil when the bucket was recreated, else why it was not.
// It must be cheap and safe for concurrent use.
type HealObserver func(ctx context.Context, bucket string, err error)

// SetHealObserver sets the callback for bucket recreations. Call it before
// the Store is used.
func (s *Store) SetHealObserver(f HealObserver) { s.observer.Store(&f) }

// Ping checks that the bucket answers, for readiness. It answers at once,
// without asking the server, when the connection is down or while the
// bucket is being recreated; a deleted bucket is recreated (by a Store
// opened with [OpenStore]) before it answers. Errors name the bucket and
// say what is being done.
func (s *Store) Ping(ctx context.Context) error {
	if err := Connected(s.js); err != nil {
		return err
	}
	if p := s.problem.Load(); p != nil && !s.healing.TryLock() {
		return errors.New(*p) // a recreation is under way
	} else if p != nil {
		s.healing.Unlock()
	}
	kv := s.handle()
	if kv == nil {
		return fmt.Errorf("key-value bucket %q does not exist", s.cfg.Bucket)
	}
	_, err := withHeal(ctx, s, func(kv jetstream.KeyValue) (jetstream.KeyValueStatus, error) { return kv.Status(ctx) })
	if err != nil {
		return fmt.Errorf("key-value bucket %q: %w", s.cfg.Bucket, err)
	}
	return nil
}

// Watch checks the bucket every interval until ctx is done, so that a
// deleted bucket is recreated even while no call needs it.
func (s *Store) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_ = s.Ping(pctx) // Ping heals; failures show on /readyz
			cancel()
		}
	}
}

// Connected fails at once when js's connection is not up, so that a check
// does not wait for a request that cannot be answered.
func Connected(js jetstream.JetStream) error {
	if js == nil || js.Conn() == nil {
		return nil
	}
	if st := js.Conn().Status(); st != nats.CONNECTED {
		return fmt.Errorf("NATS connection is %s", st)
	}
	return nil
}

// mayBeGone reports whether err may mean that the bucket's stream is gone:
// a lookup says so, or a direct get or a publish found no one to answer.
func mayBeGone(err error) bool {
	return errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

// withHeal runs fn on the bucket; when it fails in a way that may mean the
// bucket is gone and the server confirms that it is, the bucket is
// recreated and fn runs once more.
func withHeal[T any](ctx context.Context, s *Store, fn func(jetstream.KeyValue) (T, error)) (T, error) {
	v, err := fn(s.handle())
	if err == nil || !mayBeGone(err) || s.bindOnly {
		return v, err
	}
	healed, herr := s.heal(ctx)
	if herr != nil {
		return v, errors.Join(err, herr)
	}
	if !healed {
		return v, err
	}
	return fn(s.handle())
}

// heal recreates the bucket if the server confirms it is gone. healed is
// true when the bucket is there again (recreated by this call or another).
func (s *Store) heal(ctx context.Context) (healed bool, err error) {
	s.healing.Lock()
	defer s.healing.Unlock()
	if err := Connected(s.js); err != nil {
		return false, nil //nolint:nilerr // the caller's own error says more
	}
	kv, err := s.js.KeyValue(ctx, s.cfg.Bucket)
	if err == nil {
		// There (recreated meanwhile, or the failure was something else):
		// bind afresh in case it was recreated.
		s.setHandle(kv)
		s.problem.Store(nil)
		return true, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return false, nil //nolint:nilerr // cannot tell; the caller's error stands
	}
	problem := fmt.Sprintf("key-value bucket %q was deleted on the server (stream KV_%s missing); recreating it",
		s.cfg.Bucket, s.cfg.Bucket)
	s.problem.Store(&problem)
	// The server stops answering for a stream before it has finished
	// deleting it; one created under the same name meanwhile can come back
	// with the old one's data and then stop answering. Give it a moment.
	select {
	case <-ctx.Done():
		return false, ctx.Err()
	case <-time.After(recreateDelay):
	}
	kv, err = s.create(ctx)
	if err != nil {
		problem = fmt.Sprintf("key-value bucket %q was deleted on the server (stream KV_%s missing); recreating it failed: %v",
			s.cfg.Bucket, s.cfg.Bucket, err)
		s.problem.Store(&problem)
		s.observe(ctx, err)
		return false, fmt.Errorf("recreate key-value bucket %q: %w", s.cfg.Bucket, err)
	}
	s.setHandle(kv)
	s.problem.Store(nil)
	s.observe(ctx, nil)
	return true, nil
}

func (s *Store) observe(ctx context.Context, err error) {
	if f := s.observer.Load(); f != nil && *f != nil {
		(*f)(ctx, s.cfg.Bucket, err)
	}
}
