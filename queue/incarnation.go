package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Incarnation is one life of the bucket, as one read of its stream info saw
// it. A bucket deleted and created again (by this service's self-healing,
// an operator, or the backend's chaos tooling) is a new incarnation: its
// records and leases are gone, so a claim written into it proves nothing
// about claims written into the one before. Claims therefore act only in an
// incarnation that has lived at least a lease (see the handlers package).
type Incarnation struct {
	// Created is the bucket stream's creation time, in server time.
	Created time.Time
	// Now is the server's time when it answered.
	Now time.Time
}

// Age is how long the incarnation had lived when it was read.
func (i Incarnation) Age() time.Duration { return i.Now.Sub(i.Created) }

// incarnationCheck is one stream-info request that any number of callers
// share.
type incarnationCheck struct {
	// span is the span of the caller that asked for it first: it records
	// the request.
	span trace.Span
	done chan struct{}
	inc  Incarnation
	err  error
}

// shareWindow is how long a check in flight makes later callers wait for
// the next one rather than send their own: long enough to cover a storm's
// round trips, short enough that a request whose reply is slow or lost
// delays the others by at most this much.
const shareWindow = 250 * time.Millisecond

// Incarnation reads the bucket's creation time and the server's current time
// with a request sent after the call began, so that what it reports holds
// for anything the caller did before calling. Callers share requests: a
// caller waits for the next request sent after it arrived, and that request
// is sent at once, unless one was sent less than shareWindow ago and is
// still in flight: then it is sent when that one returns (or when the
// window ends, if it returns later), for everyone who came meanwhile. In a
// storm of claims one request thus serves the claims of a round trip,
// where each sent its own. It needs NATS 2.10 or later (the server time in
// stream info).
func (s *Store) Incarnation(ctx context.Context) (Incarnation, error) {
	base := context.WithoutCancel(ctx)
	s.checkMu.Lock()
	c := s.pendingCheck
	if c == nil {
		c = &incarnationCheck{span: trace.SpanFromContext(ctx), done: make(chan struct{})}
		s.pendingCheck = c
		if wait := shareWindow - time.Since(s.lastSent); s.inFlight > 0 && wait > 0 {
			// Sent when the check in flight returns, or when the window
			// ends if it is slow.
			time.AfterFunc(wait, func() {
				s.checkMu.Lock()
				defer s.checkMu.Unlock()
				if s.pendingCheck == c {
					s.sendPendingLocked(base)
				}
			})
		}
	}
	if s.inFlight == 0 || time.Since(s.lastSent) >= shareWindow {
		s.sendPendingLocked(base)
	}
	s.checkMu.Unlock()
	select {
	case <-c.done:
		return c.inc, c.err
	case <-ctx.Done():
		return Incarnation{}, fmt.Errorf("read the bucket's incarnation: %w", ctx.Err())
	}
}

// sendPendingLocked sends the check callers wait for, if any, on ctx (not
// cancelled: its callers share it). s.checkMu is held.
func (s *Store) sendPendingLocked(ctx context.Context) {
	c := s.pendingCheck
	if c == nil {
		return
	}
	s.pendingCheck = nil
	s.inFlight++
	s.lastSent = time.Now()
	go s.send(ctx, c)
}

// send reads the incarnation for c's callers; then, if callers came while
// it was in flight, it sends their check.
func (s *Store) send(ctx context.Context, c *incarnationCheck) {
	rctx, cancel := context.WithTimeout(trace.ContextWithSpan(ctx, c.span), s.retry.policy.MaxElapsed+s.retry.policy.AttemptTimeout)
	c.inc, c.err = s.readIncarnation(rctx)
	cancel()
	close(c.done)
	s.checkMu.Lock()
	s.inFlight--
	s.sendPendingLocked(ctx)
	s.checkMu.Unlock()
}

func (s *Store) readIncarnation(ctx context.Context) (Incarnation, error) {
	var inc Incarnation
	attrs := []attribute.KeyValue{attribute.String("kv.bucket", s.cfg.Bucket)}
	err := s.retry.do(ctx, "kv.incarnation", attrs, func(ctx context.Context) error {
		if s.Missing() {
			return ErrNoBucket
		}
		st, err := withHeal(ctx, s, func(kv jetstream.KeyValue) (jetstream.KeyValueStatus, error) { return kv.Status(ctx) })
		if err != nil {
			return err
		}
		bs, ok := st.(*jetstream.KeyValueBucketStatus)
		if !ok || bs.StreamInfo() == nil || bs.StreamInfo().TimeStamp.IsZero() {
			return errors.New("the server reported no time with the bucket status (NATS 2.10 or later is needed)")
		}
		inc = Incarnation{Created: bs.StreamInfo().Created, Now: bs.StreamInfo().TimeStamp}
		return nil
	})
	if err != nil {
		return Incarnation{}, fmt.Errorf("read the bucket's incarnation: %w", err)
	}
	return inc, nil
}

// RebuildKey is the key of the marker saying that the bucket's records were
// rebuilt from the event stream for the bucket's current incarnation.
const RebuildKey = "rebuild"

// Rebuild marker states.
const (
	RebuildRunning = "running"
	RebuildDone    = "done"
)

// RebuildMarker is the value at [RebuildKey]. It lives in the bucket it
// describes: a recreated bucket has none until its records are rebuilt.
type RebuildMarker struct {
	// State is [RebuildRunning] while one claim rebuilds, [RebuildDone] after.
	State string `json:"state"`
	// Owner and Token name the rebuilding claim; TTL bounds it from the
	// revision's server time, like a job's lease.
	Owner string        `json:"owner,omitempty"`
	Token string        `json:"token,omitempty"`
	TTL   time.Duration `json:"ttl,omitempty"`
	// Incarnation is the creation time of the bucket it was written for.
	Incarnation time.Time `json:"incarnation"`
	// EventsFrom is when the event stream replayed was created (server
	// time): an event stored before it came from a stream deleted since,
	// which the records do not know, nor what followed it.
	EventsFrom time.Time `json:"events_from,omitzero"`
	// Through is the last event-stream sequence replayed; Events and Jobs
	// count what was read and written; TookMS how long it took.
	Through uint64  `json:"through,omitempty"`
	Events  int     `json:"events,omitempty"`
	Jobs    int     `json:"jobs,omitempty"`
	TookMS  float64 `json:"took_ms,omitempty"`
	// At is the revision's server time (not stored).
	At time.Time `json:"-"`
}

// RebuildMarker reads the marker and its revision (0: none).
func (s *Store) RebuildMarker(ctx context.Context) (RebuildMarker, uint64, error) {
	var m RebuildMarker
	var rev uint64
	at, err := s.getJSON(ctx, RebuildKey, &m, &rev)
	m.At = at
	return m, rev, err
}

// Rebuilt reports whether the current bucket holds a finished rebuild
// marker.
func (s *Store) Rebuilt(ctx context.Context) (bool, error) {
	m, rev, err := s.RebuildMarker(ctx)
	return err == nil && rev != 0 && m.State == RebuildDone, err
}
