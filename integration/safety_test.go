package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// Targeted attempts to break the safety property, each on real NATS with
// the real service. Jobs either send attempts and stamp them on their
// streams (the exact fence) or send neither (the time fence and the
// record's time order).

type fenceMode struct {
	name     string
	attempts bool
}

var fenceModes = []fenceMode{{"attempts", true}, {"times-only", false}}

// latePublication are the modes for events published after the job's next
// transition (an outbox that lags, a replay): only attempts can order those.
// Without attempts the service orders events by their arrival at NATS, so a
// backend must publish each event before the job's next transition
// (docs/SAFETY.md); late delivery without attempts is covered by the clock tests and
// the history test.
var latePublication = []fenceMode{{"attempts", true}}

func (m fenceMode) attempt(n int64) *int64 {
	if m.attempts {
		return events.Attempt(n)
	}
	return nil
}

// restartAndPublish is the backend's Start path: wait for flushed, then
// create the new run's queue with n tasks.
func (e *env) restartAndPublish(t *testing.T, id queue.JobID, attempt *int64, n int) {
	t.Helper()
	sub, err := e.nc.SubscribeSync(fmt.Sprintf("job.queue.flushed.%d", id))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	ev := events.StatusEvent{JobID: id, Status: events.StatusRestartRequested, Attempt: attempt}
	ev.ID = fmt.Sprintf("restart-%d-%d", id, time.Now().UnixNano())
	e.emit(ev)
	awaitCause(t, sub, ev.ID)
	e.provision(id, n, attempt)
}

func awaitCause(t *testing.T, sub *nats.Subscription, cause string) events.QueueResult {
	t.Helper()
	res, ok := nextAnswer(sub, cause, 15*time.Second)
	if !ok {
		t.Fatalf("no answer to event %s within 15s", cause)
	}
	return res
}

// nextAnswer reads sub until the answer (cleaned or flushed) caused by the
// event cause arrives, or timeout passes.
func nextAnswer(sub *nats.Subscription, cause string, timeout time.Duration) (events.QueueResult, bool) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		var ev struct {
			Data events.QueueResult `json:"data"`
		}
		if json.Unmarshal(m.Data, &ev) == nil && ev.Data.CauseEventID == cause {
			return ev.Data, true
		}
	}
	return events.QueueResult{}, false
}

// assertRun checks that the job's stream holds exactly n messages.
func (e *env) assertRun(t *testing.T, id queue.JobID, n uint64) {
	t.Helper()
	s, err := e.js.Stream(t.Context(), e.names.StreamName(id))
	if err != nil {
		t.Fatalf("the current run's stream of job %d: %v", id, err)
	}
	if got := s.CachedInfo().State.Msgs; got != n {
		t.Fatalf("job %d's current run holds %d messages, want %d", id, got, n)
	}
	if !consumerExists(t, e.js, e.names.StreamName(id), e.names.ConsumerName(id)) {
		t.Fatalf("job %d's current run lost its task consumer", id)
	}
}

// waitSettled waits until the service has settled every event published.
func (e *env) waitSettled(t *testing.T) {
	t.Helper()
	eventually(t, 20*time.Second, "events settled", func() bool {
		c, err := e.js.Consumer(context.Background(), "JOB_EVENTS", "queue-janitor")
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
}

// TestLateTerminalAfterNewRun: REVOKED of run 1 arrives after run 2's
// stream exists (the outbox lagged). It must not touch run 2.
func TestLateTerminalAfterNewRun(t *testing.T) {
	t.Parallel()
	for _, mode := range latePublication {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			e.startService()
			e.provision(1, 10, mode.attempt(1))
			revoked := events.StatusEvent{JobID: 1, Status: events.StatusRevoked, Attempt: mode.attempt(1), Time: time.Now()}
			e.restartAndPublish(t, 1, mode.attempt(2), 25)
			e.emit(revoked) // late: its time is before the restart
			e.emit(revoked) // and twice
			e.waitSettled(t)
			e.assertRun(t, 1, 25)
		})
	}
}

// TestLateTerminalWithoutRecordIsFenced: the same late REVOKED when the
// service has no record of the job (a new bucket, an expired key): the
// fence on the stream alone keeps run 2.
func TestLateTerminalWithoutRecordIsFenced(t *testing.T) {
	t.Parallel()
	for _, mode := range latePublication {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			e.startService()
			e.provision(1, 10, mode.attempt(1))
			revoked := events.StatusEvent{JobID: 1, Status: events.StatusRevoked, Attempt: mode.attempt(1), Time: time.Now()}
			e.restartAndPublish(t, 1, mode.attempt(2), 25)
			kv, err := e.js.KeyValue(t.Context(), "queue_janitor_jobs")
			if err != nil {
				t.Fatal(err)
			}
			if err := kv.Purge(t.Context(), queue.JobKey(1)); err != nil {
				t.Fatal(err)
			}
			cleaned, err := e.nc.SubscribeSync("job.queue.cleaned.1")
			if err != nil {
				t.Fatal(err)
			}
			revoked.ID = "late-revoked"
			e.emit(revoked)
			got := awaitCause(t, cleaned, "late-revoked")
			if got.Outcome != events.OutcomeKeptLaterRun || len(got.Kept) == 0 || len(got.Deleted) != 0 {
				t.Errorf("cleaned = %+v, want kept_later_run with nothing deleted", got)
			}
			e.assertRun(t, 1, 25)
		})
	}
}

// TestDuplicateRestartForSameAttempt: the backend's restart request for run
// 2 arrives again after run 2 has published. Without attempts a second
// request is indistinguishable from a new Start, so this case needs them.
func TestDuplicateRestartForSameAttempt(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startService()
	e.provision(1, 10, events.Attempt(1))
	e.emit(events.StatusEvent{JobID: 1, Status: events.StatusFailure, Attempt: events.Attempt(1)})
	e.restartAndPublish(t, 1, events.Attempt(2), 25)
	flushed, err := e.nc.SubscribeSync("job.queue.flushed.1")
	if err != nil {
		t.Fatal(err)
	}
	again := events.StatusEvent{ID: "double-click", JobID: 1, Status: events.StatusRestartRequested, Attempt: events.Attempt(2)}
	e.emit(again)
	if got := awaitCause(t, flushed, "double-click"); got.Outcome != events.OutcomeAlreadyDone {
		t.Errorf("second restart for attempt 2 answered %q, want already_done", got.Outcome)
	}
	e.assertRun(t, 1, 25)
}

// TestOlderRestartAfterNewer: restart for attempt 2 arrives after the
// restart for attempt 3 was handled and run 3 published.
func TestOlderRestartAfterNewer(t *testing.T) {
	t.Parallel()
	for _, mode := range latePublication {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			e.startService()
			e.provision(1, 10, mode.attempt(1))
			old := events.StatusEvent{ID: "old-restart", JobID: 1, Status: events.StatusRestartRequested, Attempt: mode.attempt(2), Time: time.Now()}
			time.Sleep(5 * time.Millisecond)
			e.restartAndPublish(t, 1, mode.attempt(3), 30)
			flushed, err := e.nc.SubscribeSync("job.queue.flushed.1")
			if err != nil {
				t.Fatal(err)
			}
			e.emit(old)
			if got := awaitCause(t, flushed, "old-restart"); got.Outcome != events.OutcomeStale || len(got.Deleted) != 0 {
				t.Errorf("the superseded restart was answered %+v, want stale with nothing deleted", got)
			}
			e.waitSettled(t)
			e.assertRun(t, 1, 30)
		})
	}
}

// TestRevokeAndRestartRace: REVOKED and restart_requested of one job in
// quick succession, in both delivery orders, on one and on two replicas
// taking them at the same instant. The old queue is gone, flushed is
// emitted for the new attempt, and the new run's queue is untouched.
func TestRevokeAndRestartRace(t *testing.T) {
	t.Parallel()
	for _, replicas := range []int{1, 2} {
		for _, order := range []string{"revoke-first", "restart-first"} {
			modes := fenceModes
			if order == "restart-first" {
				// REVOKED of run 1 published after the restart request is a
				// late publication: only attempts can order it.
				modes = latePublication
			}
			for _, mode := range modes {
				t.Run(fmt.Sprintf("%d-replicas/%s/%s", replicas, order, mode.name), func(t *testing.T) {
					t.Parallel()
					e := setup(t)
					for range replicas {
						e.startService("--concurrency", "4")
					}
					const jobs = 12
					var wg sync.WaitGroup
					for id := queue.JobID(1); id <= jobs; id++ {
						e.provision(id, 40, mode.attempt(1))
					}
					subs := map[queue.JobID]*nats.Subscription{}
					for id := queue.JobID(1); id <= jobs; id++ {
						sub, err := e.nc.SubscribeSync(fmt.Sprintf("job.queue.flushed.%d", id))
						if err != nil {
							t.Fatal(err)
						}
						subs[id] = sub
					}
					for id := queue.JobID(1); id <= jobs; id++ {
						revoke := events.StatusEvent{JobID: id, Status: events.StatusRevoked, Attempt: mode.attempt(1), Time: time.Now()}
						restart := events.StatusEvent{ID: fmt.Sprintf("restart-%d", id), JobID: id, Status: events.StatusRestartRequested,
							Attempt: mode.attempt(2), Time: time.Now().Add(time.Millisecond)}
						if order == "revoke-first" {
							e.emit(revoke)
							e.emit(restart)
						} else {
							e.emit(restart)
							e.emit(revoke)
						}
					}
					for id := queue.JobID(1); id <= jobs; id++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							if got := awaitCause(t, subs[id], fmt.Sprintf("restart-%d", id)); got.Outcome == events.OutcomeStale {
								t.Errorf("job %d: the restart was answered stale", id)
								return
							}
							e.provision(id, 7, mode.attempt(2))
						}()
					}
					wg.Wait()
					e.waitSettled(t)
					for id := queue.JobID(1); id <= jobs; id++ {
						e.assertRun(t, id, 7)
					}
				})
			}
		}
	}
}
