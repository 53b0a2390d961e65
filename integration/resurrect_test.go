package integration

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// TestFlushedStreamDoesNotComeBack: the backend creates the next run's
// stream the moment it has `flushed`. nats-server (2.15.2 here) can recreate
// a stream from the files of one just deleted, under load about 5 times in
// 1,200, bringing the old run's tasks back into the new run: the incident
// this project exists to prevent. A restart flush therefore empties the
// stream before deleting it. 8 jobs restart 50 times each, in parallel; the
// new run's stream must hold nothing but its own tasks every time.
func TestFlushedStreamDoesNotComeBack(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startService("--concurrency", "16")
	const jobs, rounds, tasks = 8, 50, 3
	var resurrected, checked atomic.Int64
	var wg sync.WaitGroup
	for j := range jobs {
		id := queue.JobID(700 + j)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub, err := e.nc.SubscribeSync(fmt.Sprintf("job.queue.flushed.%d", id))
			if err != nil {
				t.Error(err)
				return
			}
			defer func() { _ = sub.Unsubscribe() }()
			for r := range rounds {
				if err := restartRound(e, sub, id, int64(r+1), tasks); err != nil {
					t.Error(err)
					return
				}
				s, err := e.js.Stream(context.Background(), e.names.StreamName(id))
				if err != nil {
					t.Error(err)
					return
				}
				checked.Add(1)
				if n := s.CachedInfo().State.Msgs; n != tasks {
					resurrected.Add(1)
					t.Errorf("job %d round %d: the new run's stream holds %d messages, want its own %d", id, r+1, n, tasks)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d restarts, %d new streams with old messages", checked.Load(), resurrected.Load())
}

// restartRound is one Start: ask, wait for flushed, create the run's
// queue at once and publish its tasks.
func restartRound(e *env, sub *nats.Subscription, id queue.JobID, attempt int64, tasks int) error {
	ev := events.StatusEvent{ID: fmt.Sprintf("restart-%d-%d", id, attempt), JobID: id,
		Status: events.StatusRestartRequested, Attempt: events.Attempt(attempt)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msg, err := ev.Msg(ctx, "job.status.")
	if err != nil {
		return err
	}
	if _, err := e.js.PublishMsg(ctx, msg); err != nil {
		return err
	}
	if _, ok := nextAnswer(sub, ev.ID, 30*time.Second); !ok {
		return fmt.Errorf("job %d: no flushed for %s", id, ev.ID)
	}
	if err := queue.Provision(ctx, e.js, e.names, id, nil); err != nil {
		return err
	}
	subject := e.names.SubjectName(id)
	for k := range tasks {
		if _, err := e.js.Publish(ctx, subject, []byte(fmt.Sprint(k)), jetstream.WithExpectStream(e.names.StreamName(id))); err != nil {
			return err
		}
	}
	return nil
}

// TestStartRightAfterRevokedBringsNothingBack: an operator presses Start
// seconds after a job was revoked. The terminal cleanup deleted the stream,
// the restart finds nothing left, and the backend creates the new run's
// stream at once: a stream deleted with its messages could come back inside
// it (10 of 8,400 rounds before terminal cleanups emptied the stream first).
// 8 jobs × 50 rounds of REVOKED then Start, in parallel; the new run's
// stream must hold nothing but its own tasks every time.
// QJ_RESURRECT_ROUNDS raises the rounds.
func TestStartRightAfterRevokedBringsNothingBack(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startService("--concurrency", "16")
	rounds := envInt(t, "QJ_RESURRECT_ROUNDS", 50)
	const jobs, tasks = 8, 3
	var resurrected, checked atomic.Int64
	var wg sync.WaitGroup
	for j := range jobs {
		id := queue.JobID(800 + j)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub, err := e.nc.SubscribeSync(fmt.Sprintf("job.queue.*.%d", id))
			if err != nil {
				t.Error(err)
				return
			}
			defer func() { _ = sub.Unsubscribe() }()
			if err := queue.Provision(context.Background(), e.js, e.names, id, events.Attempt(1)); err != nil {
				t.Error(err)
				return
			}
			publishTasks(t, e.js, e.names.SubjectName(id), 0, tasks)
			for r := range rounds {
				attempt := int64(r + 1)
				revoked := events.StatusEvent{ID: fmt.Sprintf("revoked-%d-%d", id, attempt), JobID: id,
					Status: events.StatusRevoked, Attempt: events.Attempt(attempt)}
				emitTo(t, e.js, revoked)
				if _, ok := nextAnswer(sub, revoked.ID, 30*time.Second); !ok {
					t.Errorf("job %d: no answer to %s", id, revoked.ID)
					return
				}
				if err := restartRound(e, sub, id, attempt+1, tasks); err != nil {
					t.Error(err)
					return
				}
				s, err := e.js.Stream(context.Background(), e.names.StreamName(id))
				if err != nil {
					t.Error(err)
					return
				}
				checked.Add(1)
				if n := s.CachedInfo().State.Msgs; n != tasks {
					resurrected.Add(1)
					t.Errorf("job %d round %d: the new run's stream holds %d messages, want its own %d", id, r+1, n, tasks)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d REVOKED-then-Start rounds, %d new streams with old messages", checked.Load(), resurrected.Load())
}
