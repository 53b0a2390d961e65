package integration

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/queue"
)

// TestReconcilerCleansADeadLetterConsumerLeftWithoutItsStream: a terminal
// job's dead-letter consumer on advisories, whose stream is already gone, is
// removed by the reconciler; a running job's is kept, and so is advisories.
func TestReconcilerCleansADeadLetterConsumerLeftWithoutItsStream(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(1, 3, nil) // terminal: its stream goes, its consumer stays behind
	e.provision(2, 3, nil) // running: kept
	for _, id := range []queue.JobID{1, 2} {
		if err := e.js.DeleteStream(t.Context(), e.names.StreamName(id)); err != nil {
			t.Fatal(err)
		}
	}
	store := e.store(t)
	if _, err := store.Put(t.Context(), 1, queue.Record{Time: time.Now(), Stored: time.Now(), EventID: "gone",
		Status: "revoked", State: queue.StateTerminal, Done: true}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(t.Context(), 2, queue.Record{Time: time.Now(), Stored: time.Now(), EventID: "run",
		Status: "started", State: queue.StateRunning, Done: true}, 0); err != nil {
		t.Fatal(err)
	}
	e.startReconciling()
	eventually(t, 20*time.Second, "job 1's dead-letter consumer removed", func() bool {
		return !consumerExists(t, e.js, e.names.AdvisoryStream, e.names.DeadLetterConsumerName(1))
	})
	time.Sleep(time.Second) // more passes
	if !consumerExists(t, e.js, e.names.AdvisoryStream, e.names.DeadLetterConsumerName(2)) {
		t.Error("a running job's dead-letter consumer was removed")
	}
	if !streamExists(t, e.js, e.names.AdvisoryStream) {
		t.Error("advisories was removed")
	}
}

// TestOrphanWithAWorkerBusyIsKept: a job unknown to the service whose only
// activity is a worker holding a task (unacked for longer than
// --orphan-idle), or a worker waiting for tasks, is not an orphan, even with
// --sweep-orphans.
func TestOrphanWithAWorkerBusyIsKept(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(3, 4, nil)
	e.provision(4, 4, nil)
	// A worker takes a task of job 3 and keeps working on it (no ack).
	busy, err := e.js.Consumer(t.Context(), e.names.StreamName(3), e.names.ConsumerName(3))
	if err != nil {
		t.Fatal(err)
	}
	batch, err := busy.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for range batch.Messages() {
	}
	// A worker waits on job 4's consumer for tasks, with a long pull.
	waiting, err := e.js.Consumer(t.Context(), e.names.StreamName(4), e.names.ConsumerName(4))
	if err != nil {
		t.Fatal(err)
	}
	drain, err := waiting.Fetch(4, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range drain.Messages() {
		_ = m.Ack()
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	t.Cleanup(func() { cancel(); <-stopped })
	go func() {
		defer close(stopped)
		for ctx.Err() == nil {
			b, err := waiting.Fetch(1, jetstream.FetchMaxWait(time.Second))
			if err != nil {
				return
			}
			for range b.Messages() {
			}
		}
	}()
	time.Sleep(2500 * time.Millisecond) // both now idle by message times
	e.startReconciling("--orphan-idle", "1s", "--sweep-orphans")
	time.Sleep(3 * time.Second) // several passes
	for _, id := range []queue.JobID{3, 4} {
		if !streamExists(t, e.js, e.names.StreamName(id)) {
			t.Errorf("job %d's stream was swept as an orphan while a worker was busy on it", id)
		}
	}
}
