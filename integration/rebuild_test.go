package integration

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/queue"
)

// TestRebuildRestoresEveryJobsOrder: the records of a lost bucket are
// rebuilt from the event stream: every job's newest event (by attempt, then
// arrival), its last restart request, and done-ness up to the consumer's ack
// floor (none here: no consumer). QJ_REBUILD_EVENTS sets the size (the
// figure in docs/SAFETY.md is 100,000 events).
func TestRebuildRestoresEveryJobsOrder(t *testing.T) {
	t.Parallel()
	e := setup(t)
	n := envInt(t, "QJ_REBUILD_EVENTS", 3000)
	jobs := max(n/5, 1)
	ensureEventStream(t, e.js)
	// Five events a job: started 1, revoked 1, restart 2, pending 2, then a
	// late copy of revoked 1 published last.
	pub := func(id queue.JobID, status events.Status, attempt int64, eid string) {
		ev := events.StatusEvent{JobID: id, Status: status, Attempt: events.Attempt(attempt)}
		ev.ID = eid
		msg, err := ev.Msg(context.Background(), "job.status.")
		if err != nil {
			t.Fatal(err)
		}
		msg.Header.Del("Nats-Msg-Id")
		if _, err := e.js.PublishMsgAsync(msg); err != nil {
			t.Fatal(err)
		}
	}
	for round, step := range []struct {
		status  events.Status
		attempt int64
	}{{events.StatusStarted, 1}, {events.StatusRevoked, 1}, {events.StatusRestartRequested, 2}, {events.StatusPending, 2}, {events.StatusRevoked, 1}} {
		for j := range jobs {
			id := queue.JobID(j + 1)
			pub(id, step.status, step.attempt, string(step.status)+"-"+id.String()+"-"+string(rune('a'+round)))
		}
		select {
		case <-e.js.PublishAsyncComplete():
		case <-time.After(time.Minute):
			t.Fatal("publishing took over a minute")
		}
	}

	store, err := queue.OpenStore(t.Context(), e.js, queue.StoreConfig{Bucket: "rebuilt_jobs", Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	cfg := handlers.DefaultConfig("rebuild-test")
	cfg.Quarantine = 0
	decoder := events.NewDecoder("job.status.", 1<<16, func(s events.Status) bool {
		return s == events.StatusRestartRequested || s == events.StatusRevoked
	})
	var rb *handlers.Rebuilder
	handlers.New(queue.NewJanitor(e.js, e.names), store, &answers{}, cfg,
		handlers.WithRebuild(events.NewReplayer(e.js, "JOB_EVENTS", "queue-janitor", decoder), store, zerolog.New(zerolog.NewTestWriter(t)), &rb))
	start := time.Now()
	if err := rb.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	m, _, err := store.RebuildMarker(t.Context())
	if err != nil || m.State != queue.RebuildDone || m.Events != 5*jobs || m.Jobs != jobs {
		t.Fatalf("marker = %+v, %v; want done, %d events, %d jobs", m, err, 5*jobs, jobs)
	}
	t.Logf("rebuilt %d jobs from %d events in %s (%.0f events/s)", m.Jobs, m.Events, took.Round(time.Millisecond),
		float64(m.Events)/took.Seconds())
	for j := range jobs {
		id := queue.JobID(j + 1)
		rec, _, err := store.Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Attempt == nil || *rec.Attempt != 2 || rec.Status != string(events.StatusPending) || rec.State != queue.StateRunning ||
			rec.RestartID != "restart_requested-"+id.String()+"-c" || rec.RestartAttempt == nil || *rec.RestartAttempt != 2 ||
			rec.RestartStored.IsZero() || rec.RestartDone {
			t.Fatalf("job %d's rebuilt record = %+v; want pending of attempt 2, restart 2 not done (no ack floor)", id, rec)
		}
	}
}
