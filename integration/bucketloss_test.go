package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/queue"
)

// The safety promise when the service's own state is lost: the key-value
// bucket deleted (by the service's self-healing, an operator, or the
// backend's `chaos_monkey flush nats`, which deletes every stream) and
// recreated empty, with the records and leases it held.

// arrival stamps events with the server's time of arrival, as the intake
// does, through a stream of its own.
type arrival struct {
	js jetstream.JetStream
}

func newArrival(t *testing.T, js jetstream.JetStream) arrival {
	t.Helper()
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "ARRIVALS", Subjects: []string{"arrive.>"}}); err != nil {
		t.Fatal(err)
	}
	return arrival{js: js}
}

// event returns job 7's event as it would reach the intake now.
func (a arrival) event(t *testing.T, id string, status events.Status, attempt int64) events.JobStatus {
	t.Helper()
	ack, err := a.js.Publish(t.Context(), "arrive."+string(status), []byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := a.js.Stream(t.Context(), "ARRIVALS")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.GetMsg(t.Context(), ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	return events.JobStatus{ID: id, JobID: 7, Status: status, Time: raw.Time, Stored: raw.Time, Attempt: attempt, HasAttempt: true}
}

// pausingQueue is the real janitor, with every removal held at a gate until
// released: a replica slowed (a GC pause, a busy machine) after it judged
// the queue and before its first destructive request.
type pausingQueue struct {
	*queue.Janitor
	paused  chan struct{}
	release chan struct{}
	once    atomic.Bool
}

func (q *pausingQueue) Execute(ctx context.Context, p queue.Plan, auth queue.Authority) (queue.Removal, error) {
	if q.once.CompareAndSwap(false, true) {
		close(q.paused)
		<-q.release
	}
	return q.Janitor.Execute(ctx, p, auth)
}

// TestRecreatedBucketDoesNotLetTwoClaimsActOnOneJob is issue 23's first way
// through. Replica A claims job 7 for REVOKED (attempt 1) and judges run 1's
// stream; it is slowed before deleting. The bucket is deleted and recreated
// empty, so replica B finds no record and no lease. Without the quarantine B
// claims at once, flushes run 1 and answers; the backend creates run 2
// (stamped job_attempt=2); A, whose authority still runs, deletes run 2's
// queue by name. With the quarantine (a new bucket is trusted only once it
// has lived a lease), B waits, A's authority ends, and run 2 survives.
func TestRecreatedBucketDoesNotLetTwoClaimsActOnOneJob(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		quarantine bool
	}{{"quarantine", true}, {"control without quarantine: run 2 is lost", false}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			at := newArrival(t, e.js)
			const lease = 4 * time.Second
			store := func() *queue.Store {
				s, err := queue.OpenStore(t.Context(), e.js, queue.StoreConfig{Bucket: "loss_jobs", Replicas: 1})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			cfg := func(owner string) handlers.Config {
				c := handlers.DefaultConfig(owner)
				c.Lease, c.Quarantine = lease, 0
				if tc.quarantine {
					c.Quarantine = lease
				}
				return c
			}
			storeA := store()
			// The first bucket has lived long enough (its quarantine is not
			// what this test is about).
			time.Sleep(lease)
			janitor := queue.NewJanitor(e.js, e.names)
			qa := &pausingQueue{Janitor: janitor, paused: make(chan struct{}), release: make(chan struct{})}
			a := handlers.New(qa, storeA, &answers{}, cfg("A"))
			bAnswers := &answers{}
			b := handlers.New(janitor, store(), bAnswers, cfg("B"))

			e.provision(7, 5, events.Attempt(1))
			revoked := at.event(t, "revoked-1", events.StatusRevoked, 1)
			aDone := make(chan error, 1)
			go func() { _, err := a.Handle(context.Background(), revoked); aDone <- err }()
			<-qa.paused // A judged run 1's stream and is about to delete it

			if err := e.js.DeleteKeyValue(t.Context(), "loss_jobs"); err != nil {
				t.Fatal(err)
			}
			restart := at.event(t, "restart-2", events.StatusRestartRequested, 2)
			_, errB := b.Handle(t.Context(), restart) // B's store recreates the bucket
			if tc.quarantine {
				if !errors.Is(errB, handlers.ErrNotReady) {
					t.Fatalf("B in a bucket younger than a lease: %v; want ErrNotReady", errB)
				}
			} else {
				if errB != nil {
					t.Fatalf("B: %v", errB)
				}
				e.provision(7, 9, events.Attempt(2)) // the backend's new round, after `flushed`
			}
			time.Sleep(300 * time.Millisecond) // A slowed 0.3 s: its authority still runs
			close(qa.release)
			if err := <-aDone; err != nil {
				t.Logf("A's cleanup: %v", err)
			}

			if tc.quarantine {
				// B acts once the bucket has lived a lease; then the backend
				// publishes the new round.
				deadline := time.Now().Add(3 * lease)
				for {
					_, errB = b.Handle(t.Context(), restart)
					if errB == nil || time.Now().After(deadline) {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if errB != nil {
					t.Fatalf("B after the quarantine: %v", errB)
				}
				e.provision(7, 9, events.Attempt(2))
			}
			got := e.msgs("job_7")
			if tc.quarantine && got != 9 {
				t.Fatalf("run 2's stream holds %d messages (-1: gone); want its 9 tasks", got)
			}
			if !tc.quarantine && got != -1 {
				t.Fatalf("control: run 2's stream holds %d messages; the scenario no longer reproduces without the quarantine", got)
			}
		})
	}
}

// msgs is a stream's message count, -1 when it does not exist.
func (e *env) msgs(name string) int64 {
	e.t.Helper()
	s, err := e.js.Stream(e.t.Context(), name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return -1
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return int64(s.CachedInfo().State.Msgs)
}

// TestLostRecordsAreRebuiltFromTheEventStream is issue 23's second way
// through, end to end through serve. Job 7 sends attempts; its streams are
// not stamped. Run 2 is running with 9 tasks when the bucket is deleted and
// recreated empty. A REVOKED of attempt 1 published late (a retried publish)
// must not delete run 2, and the restart request of attempt 2 published
// again must not flush it: the records are rebuilt from the event stream
// before anything acts.
func TestLostRecordsAreRebuiltFromTheEventStream(t *testing.T) {
	t.Parallel()
	e := setup(t)
	logs := &syncBuffer{}
	startServe(t, e.js, baseArgs(e.url), logs)
	e.provision(7, 5, nil) // run 1, unstamped

	first := e.restartAndPublishID(t, 7, events.Attempt(2), 9) // run 2, unstamped, 9 tasks
	if err := e.js.DeleteKeyValue(t.Context(), "queue_janitor_jobs"); err != nil {
		t.Fatal(err)
	}

	late := events.StatusEvent{JobID: 7, Status: events.StatusRevoked, Attempt: events.Attempt(1)}
	late.ID = "late-revoked-1"
	e.emit(late)
	line := waitLog(t, logs, 30*time.Second, `"event_id":"late-revoked-1"`, `"message":"event handled"`, `"result":"`)
	if got := e.msgs("job_7"); got != 9 || !strings.Contains(line, `"decision":"stale"`) {
		t.Fatalf("after the late REVOKED of attempt 1: run 2 holds %d messages (-1: gone); want 9, the event judged stale: %s", got, line)
	}

	sub, err := e.nc.SubscribeSync("job.queue.flushed.7")
	if err != nil {
		t.Fatal(err)
	}
	again := events.StatusEvent{JobID: 7, Status: events.StatusRestartRequested, Attempt: events.Attempt(2)}
	again.ID = first // the same request, published again
	again.Time = time.Now()
	e.emitNoDedup(again)
	res := awaitCause(t, sub, first)
	if res.Outcome != events.OutcomeAlreadyDone {
		t.Fatalf("the restart request published again: %q; want already_done", res.Outcome)
	}
	if got := e.msgs("job_7"); got != 9 {
		t.Fatalf("after the repeated restart request: run 2 holds %d messages; want 9", got)
	}
	if !strings.Contains(logs.String(), "job records rebuilt from the event stream") {
		t.Fatal("no rebuild was logged")
	}
}

// restartAndPublishID is restartAndPublish that returns the request's id.
func (e *env) restartAndPublishID(t *testing.T, id queue.JobID, attempt *int64, n int) string {
	t.Helper()
	sub, err := e.nc.SubscribeSync(fmt.Sprintf("job.queue.flushed.%d", id))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	ev := events.StatusEvent{JobID: id, Status: events.StatusRestartRequested, Attempt: attempt}
	ev.ID = "restart-" + uuid.NewString()
	e.emit(ev)
	awaitCause(t, sub, ev.ID)
	e.provision(id, n, nil)
	return ev.ID
}

// emitNoDedup publishes ev again past the event stream's duplicate window
// (the id it carries is the same; the message id is not), as an outbox that
// re-sends after two minutes would.
func (e *env) emitNoDedup(ev events.StatusEvent) {
	e.t.Helper()
	msg, err := ev.Msg(e.t.Context(), "job.status.")
	if err != nil {
		e.t.Fatal(err)
	}
	msg.Header.Del("Nats-Msg-Id")
	if _, err := e.js.PublishMsg(e.t.Context(), msg); err != nil {
		e.t.Fatal(err)
	}
}

// waitLog waits until a log line holds every one of parts (other than a
// "retry" of the event), and returns it.
func waitLog(t *testing.T, logs *syncBuffer, timeout time.Duration, parts ...string) string {
	t.Helper()
	var found string
	eventually(t, timeout, strings.Join(parts, " "), func() bool {
		for line := range strings.SplitSeq(logs.String(), "\n") {
			all := !strings.Contains(line, `"result":"retry"`)
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				found = line
				return true
			}
		}
		return false
	})
	return found
}

// TestRestartFlushFailedThenPendingIsStillFlushed is issue 23's third way
// through, on a real server: the restart request is claimed but its flush
// gets no answer (the first removal fails); the backend records `pending`
// for the new attempt; the redelivered request must flush run 1's five
// leftover tasks, not answer already_done over them.
func TestRestartFlushFailedThenPendingIsStillFlushed(t *testing.T) {
	t.Parallel()
	e := setup(t)
	at := newArrival(t, e.js)
	store, err := queue.OpenStore(t.Context(), e.js, queue.StoreConfig{Bucket: "pending_jobs", Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	cfg := handlers.DefaultConfig("pending-test")
	cfg.Quarantine = 0 // the test's server started empty
	q := &failingOnce{Janitor: queue.NewJanitor(e.js, e.names)}
	out := &answers{}
	h := handlers.New(q, store, out, cfg)

	e.provision(7, 5, nil) // run 1's leftover, unstamped
	restart := at.event(t, "restart-2", events.StatusRestartRequested, 2)
	if _, err := h.Handle(t.Context(), restart); err == nil {
		t.Fatal("the flush that got no answer must fail the event")
	}
	if _, err := h.Handle(t.Context(), at.event(t, "pending-2", events.StatusPending, 2)); err != nil {
		t.Fatal(err)
	}
	o, err := h.Handle(t.Context(), restart)
	if err != nil {
		t.Fatal(err)
	}
	if o.Result != events.OutcomeRemoved || e.msgs("job_7") != -1 {
		t.Fatalf("redelivered restart = %+v, run 1's stream %d messages; want run 1's leftover flushed", o, e.msgs("job_7"))
	}
	if got := out.last(t); got.Outcome != events.OutcomeRemoved || got.MessagesDiscarded != 5 {
		t.Fatalf("answer = %+v; want removed, 5 messages", got)
	}
}

// failingOnce is the real janitor whose first removal fails as a request
// that got no answer does, before anything was sent.
type failingOnce struct {
	*queue.Janitor
	failed atomic.Bool
}

func (q *failingOnce) Execute(ctx context.Context, p queue.Plan, auth queue.Authority) (queue.Removal, error) {
	if q.failed.CompareAndSwap(false, true) {
		return queue.Removal{Stream: p.Stream, Deleted: []string{}}, fmt.Errorf("delete stream %q: %w", p.Stream, context.DeadlineExceeded)
	}
	return q.Janitor.Execute(ctx, p, auth)
}
