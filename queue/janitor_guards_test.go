package queue

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// interceptServer is the real server's API with hooks on the destructive
// calls, to put the janitor in the situations its guards exist for.
type interceptServer struct {
	jsServer
	onDelete func(ctx context.Context, stream string, call int) (forward bool, err error)
	onPurge  func(stream string)
	deletes  atomic.Int32
}

func (s *interceptServer) DeleteStream(ctx context.Context, stream string) error {
	n := int(s.deletes.Add(1))
	if s.onDelete != nil {
		if forward, err := s.onDelete(ctx, stream, n); !forward {
			return err
		}
	}
	return s.jsServer.DeleteStream(ctx, stream)
}

func (s *interceptServer) PurgeStream(ctx context.Context, stream string) error {
	err := s.jsServer.PurgeStream(ctx, stream)
	if s.onPurge != nil {
		s.onPurge(stream)
	}
	return err
}

// TestRetriedDeleteKeepsAStreamCreatedSinceTheFenceJudged holds the retried
// delete's creation-time guard: the first delete's reply is lost after it
// removed run 1's stream, and run 2's stream of the same name is created
// before the retry. The retry reads the stream again, sees another creation
// time and keeps it (without the comparison, it deletes run 2's queue).
func TestRetriedDeleteKeepsAStreamCreatedSinceTheFenceJudged(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(1, 3, nil)
	srv := &interceptServer{jsServer: jsServer{js: e.js}}
	srv.onDelete = func(ctx context.Context, stream string, call int) (bool, error) {
		if call > 1 {
			return true, nil
		}
		// The request reaches the server; its reply is lost; the backend
		// then creates the next run's stream.
		if err := (jsServer{js: e.js}).DeleteStream(ctx, stream); err != nil {
			t.Errorf("the first delete: %v", err)
		}
		if err := Provision(ctx, e.js, e.names, 1, ptr[int64](2)); err != nil {
			t.Errorf("run 2's stream: %v", err)
		}
		return false, context.DeadlineExceeded
	}
	j := e.janitor(WithServer(srv))
	r, err := j.Remove(t.Context(), 1, Fence{CreatedBefore: time.Now().Add(time.Hour)}, nil)
	if err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if e.streamMsgs(e.names.StreamName(1)) < 0 {
		t.Fatalf("run 2's stream was deleted by the retried delete of run 1's: %+v", r)
	}
	if !r.KeptLaterRun || len(r.Kept) == 0 {
		t.Fatalf("removal = %+v; want run 2's stream reported kept (recreated since the fence judged it)", r)
	}
	if n := srv.deletes.Load(); n != 1 {
		t.Fatalf("%d delete requests; want 1 (the retry must not delete the new stream)", n)
	}
}

// TestNoDeleteAfterTheAuthorityEndsDuringThePurge holds the second authority
// check between a stream's purge and its delete: an authority that runs out
// while the purge is under way sends no delete.
func TestNoDeleteAfterTheAuthorityEndsDuringThePurge(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(1, 5, nil)
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv := &interceptServer{jsServer: jsServer{js: e.js}}
	srv.onPurge = func(string) { mu.Lock(); now = now.Add(time.Hour); mu.Unlock() } // a pause past the deadline
	j := e.janitor(WithServer(srv), WithClock(clock))
	r, err := j.Remove(t.Context(), 1, Fence{CreatedBefore: time.Now().Add(time.Hour), PurgeFirst: true}, fixedAuthority(now.Add(time.Minute)))
	if !errors.Is(err, ErrAuthorityExpired) {
		t.Fatalf("Remove = %+v, %v; want ErrAuthorityExpired", r, err)
	}
	if n := srv.deletes.Load(); n != 0 {
		t.Fatalf("%d delete requests sent after the authority ended", n)
	}
	if got := e.streamMsgs(e.names.StreamName(1)); got != 0 {
		t.Fatalf("stream holds %d messages (-1: gone); want it emptied but still there", got)
	}
}

// TestPurgeFirstEmptiesTheStreamBeforeDeletingIt: with PurgeFirst (the job's
// queue was removed recently) a stream that holds messages is purged before
// it is deleted; without it, it is deleted at once (one request fewer).
func TestPurgeFirstEmptiesTheStreamBeforeDeletingIt(t *testing.T) {
	t.Parallel()
	for _, purge := range []bool{true, false} {
		e := setup(t)
		e.provision(1, 5, ptr[int64](1))
		var purged atomic.Bool
		srv := &interceptServer{jsServer: jsServer{js: e.js}}
		srv.onPurge = func(string) { purged.Store(true) }
		srv.onDelete = func(context.Context, string, int) (bool, error) {
			if purge && !purged.Load() {
				t.Error("the stream was deleted before it was emptied")
			}
			return true, nil
		}
		r, err := e.janitor(WithServer(srv)).Remove(t.Context(), 1, Fence{AttemptKnown: true, MaxAttempt: 1, PurgeFirst: purge}, nil)
		if err != nil || r.MessagesDiscarded != 5 || e.streamMsgs(e.names.StreamName(1)) != -1 {
			t.Fatalf("PurgeFirst %v: Remove = %+v, %v; want the stream and its 5 messages gone", purge, r, err)
		}
		if purged.Load() != purge {
			t.Fatalf("PurgeFirst %v: purged %v", purge, purged.Load())
		}
	}
}

var _ Server = (*interceptServer)(nil)
var _ = jetstream.ErrStreamNotFound
