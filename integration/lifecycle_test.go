package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// TestIncident replays the incident: 44,286 tasks, a worker took 3,000,
// REVOKED, then Start with 43,597 → the stream holds exactly 43,597 and a
// worker draining it receives 43,597 distinct tasks, none twice.
func TestIncident(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const first, taken, second = 44286, 3000, 43597
	const job = queue.JobID(4242)
	e.provision(job, first, events.Attempt(1))
	if n := drainTasks(t, e.js, e.names, job, taken, nil); n != taken {
		t.Fatalf("worker took %d, want %d", n, taken)
	}
	e.startService()
	cleaned := subscribe(t, e.nc, "job.queue.cleaned.4242")
	e.emit(events.StatusEvent{JobID: job, Status: events.StatusRevoked, Attempt: events.Attempt(1), Actor: "watchdog"})
	eventually(t, 15*time.Second, "cleaned", func() bool { return cleaned.count() == 1 })
	if streamExists(t, e.js, "job_4242") {
		t.Fatal("job_4242 still exists after REVOKED")
	}

	// The backend's Start path: wait for flushed, then publish.
	flushed, err := e.nc.SubscribeSync("job.queue.flushed.4242")
	if err != nil {
		t.Fatal(err)
	}
	e.emit(events.StatusEvent{JobID: job, Status: events.StatusRestartRequested, Attempt: events.Attempt(2)})
	if _, err := flushed.NextMsg(15 * time.Second); err != nil {
		t.Fatalf("no job.queue.flushed.4242: %v", err)
	}
	e.provision(job, second, events.Attempt(2))

	info, err := e.js.Stream(t.Context(), "job_4242")
	if err != nil {
		t.Fatal(err)
	}
	if got := info.CachedInfo().State.Msgs; got != second {
		t.Fatalf("stream holds %d messages, want %d", got, second)
	}
	seen := map[int]int{}
	if n := drainTasks(t, e.js, e.names, job, -1, seen); n != second {
		t.Errorf("worker received %d tasks, want %d", n, second)
	}
	dups := 0
	for _, c := range seen {
		dups += c - 1
	}
	if len(seen) != second || dups != 0 {
		t.Errorf("distinct tasks %d (want %d), duplicates %d (want 0)", len(seen), second, dups)
	}
}

// drainTasks takes up to limit tasks (all when < 0) from the job's task
// consumer, acking each, counting task ids in seen.
func drainTasks(tb testing.TB, js jetstream.JetStream, names queue.Names, id queue.JobID, limit int, seen map[int]int) int {
	tb.Helper()
	cons, err := js.Consumer(context.Background(), names.StreamName(id), names.ConsumerName(id))
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	for limit < 0 || n < limit {
		batch := 1000
		if limit >= 0 {
			batch = min(batch, limit-n)
		}
		msgs, err := cons.Fetch(batch, jetstream.FetchMaxWait(500*time.Millisecond))
		if err != nil {
			tb.Fatal(err)
		}
		got := 0
		for m := range msgs.Messages() {
			got++
			n++
			var task struct {
				Task int `json:"task"`
			}
			if err := json.Unmarshal(m.Data(), &task); err != nil {
				tb.Fatalf("task %q: %v", m.Data(), err)
			}
			if seen != nil {
				seen[task.Task]++
			}
			if err := m.Ack(); err != nil {
				tb.Fatal(err)
			}
		}
		if got == 0 {
			break
		}
	}
	return n
}

// TestDuplicateAndEmptyAreAnswered: the same event delivered twice, and an
// event for a job that has no queue, are acked without error and still
// answered with cleaned/flushed.
func TestDuplicateAndEmptyAreAnswered(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(5, 20, nil)
	cleaned := subscribe(t, e.nc, "job.queue.cleaned.*")
	flushed := subscribe(t, e.nc, "job.queue.flushed.*")
	e.startService()

	revoke := events.StatusEvent{ID: "same-id", JobID: 5, Status: events.StatusRevoked, Time: time.Now()}
	e.emit(revoke)
	e.emit(revoke) // the backend's outbox sent it twice
	e.emit(events.StatusEvent{JobID: 6, Status: events.StatusFailure})
	e.emit(events.StatusEvent{JobID: 7, Status: events.StatusRestartRequested, Attempt: events.Attempt(1)})

	eventually(t, 15*time.Second, "three cleaned and one flushed", func() bool {
		return cleaned.count() == 3 && flushed.count() == 1
	})
	outcomes := map[string]int{}
	for _, m := range cleaned.all() {
		got := decodeEmitted(t, m)
		outcomes[fmt.Sprintf("%d:%s", got.Data.JobID, got.Data.Outcome)]++
	}
	want := map[string]int{"5:removed": 1, "5:already_done": 1, "6:nothing_to_remove": 1}
	for k, n := range want {
		if outcomes[k] != n {
			t.Errorf("cleaned outcomes = %v, want %v", outcomes, want)
			break
		}
	}
	if got := decodeEmitted(t, flushed.all()[0]); got.Data.JobID != 7 || got.Data.Outcome != events.OutcomeNothing {
		t.Errorf("flushed = %+v", got.Data)
	}
	assertConsumerSettled(t, e.js, 4)
}

// assertConsumerSettled waits until the event consumer has acked n events
// and has nothing pending or awaiting ack.
func assertConsumerSettled(tb testing.TB, js jetstream.JetStream, n uint64) {
	tb.Helper()
	var info *jetstream.ConsumerInfo
	eventually(tb, 15*time.Second, fmt.Sprintf("%d events acked", n), func() bool {
		c, err := js.Consumer(context.Background(), "JOB_EVENTS", "queue-janitor")
		if err != nil {
			return false
		}
		info, err = c.Info(context.Background())
		return err == nil && info.AckFloor.Stream == n && info.NumAckPending == 0 && info.NumPending == 0
	})
	if info.NumRedelivered != 0 {
		tb.Errorf("%d events were redelivered; every event should settle on its first delivery", info.NumRedelivered)
	}
}

// TestInvalidEventIsDeadLettered: an invalid event is terminated, appears on
// the dead-letter subject with its reason, and is not redelivered; the
// service goes on with the next event.
func TestInvalidEventIsDeadLettered(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(3, 10, nil)
	dead := subscribe(t, e.nc, "job.deadletter.status")
	cleaned := subscribe(t, e.nc, "job.queue.cleaned.3")
	e.startService()

	ensureEventStream(t, e.js)
	bad := []*nats.Msg{
		{Subject: "job.status.revoked", Data: []byte(`{not json`), Header: nats.Header{"Content-Type": {"application/cloudevents+json"}}},
		mismatched(t),
	}
	for _, m := range bad {
		if _, err := e.js.PublishMsg(t.Context(), m); err != nil {
			t.Fatal(err)
		}
	}
	e.emit(events.StatusEvent{JobID: 3, Status: events.StatusRevoked})

	eventually(t, 15*time.Second, "two dead letters and the valid cleanup", func() bool {
		return dead.count() == 2 && cleaned.count() == 1
	})
	reasons := map[string]bool{}
	for _, m := range dead.all() {
		got := decodeEmitted(t, m)
		if h := m.Header.Get(events.ReasonHeader); h != string(got.DeadLetter.Reason) {
			t.Errorf("reason header %q, data reason %q", h, got.DeadLetter.Reason)
		}
		if got.DeadLetter.Original.Subject != "job.status.revoked" || got.DeadLetter.Original.Sequence == 0 {
			t.Errorf("dead letter does not carry the original: %+v", got.DeadLetter.Original)
		}
		reasons[string(got.DeadLetter.Reason)] = true
	}
	if !reasons[string(events.ReasonMalformed)] || !reasons[string(events.ReasonJobIDMismatch)] {
		t.Errorf("dead-letter reasons = %v, want malformed and job_id_mismatch", reasons)
	}
	if streamExists(t, e.js, "job_3") {
		t.Error("the valid event after the invalid ones was not handled")
	}
	assertConsumerSettled(t, e.js, 3)
	time.Sleep(300 * time.Millisecond) // a redelivery would show up as a third dead letter
	if n := dead.count(); n != 2 {
		t.Errorf("%d dead letters, want 2: an invalid event was redelivered", n)
	}
}

// mismatched is a well-formed CloudEvent whose subject disagrees with
// data.job_id: it must never touch job 3 or job 4.
func mismatched(t *testing.T) *nats.Msg {
	t.Helper()
	m, err := events.StatusEvent{JobID: 3, Status: events.StatusRevoked}.Msg(t.Context(), "job.status.")
	if err != nil {
		t.Fatal(err)
	}
	var ev map[string]any
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.Fatal(err)
	}
	ev["subject"] = "4"
	m.Data, _ = json.Marshal(ev)
	return m
}

// TestEventsWhileStoppedAreHandledAfterStart: events published while the
// service is down wait in the durable consumer.
func TestEventsWhileStoppedAreHandledAfterStart(t *testing.T) {
	t.Parallel()
	e := setup(t)
	svc := e.startService()
	if err := svc.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	for id := queue.JobID(1); id <= 5; id++ {
		e.provision(id, 10, nil)
		e.emit(events.StatusEvent{JobID: id, Status: events.StatusCancelled})
	}
	for id := queue.JobID(1); id <= 5; id++ {
		if !streamExists(t, e.js, e.names.StreamName(id)) {
			t.Fatalf("job %d cleaned while the service was stopped", id)
		}
	}
	e.startService()
	e.awaitJobsGone(t, 5, 15*time.Second, "all five cleaned")
}

// TestOutageIsRiddenOut: the NATS server stops in the middle of a burst and
// comes back on the same store; the JetStream calls in flight when it
// stopped are retried, and every cleanup still happens.
func TestOutageIsRiddenOut(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const jobs, batch = 40, 10
	for id := queue.JobID(1); id <= jobs; id++ {
		e.provision(id, 5, nil)
	}
	addr := freeAddr(t)
	e.startService("--retry-initial", "20ms", "--retry-max-interval", "200ms", "--retry-attempt-timeout", "500ms",
		"--http-addr", addr)
	retriedAt := func() float64 {
		_, text := httpGet(t, "http://"+addr+"/metrics")
		return metricSum(text, "queue_janitor_retries_total")
	}
	// Retries before the burst (a busy machine's start-up can retry opening
	// the bucket) catch no call of the burst: count from here.
	before := retriedAt()
	retried := func() float64 { return retriedAt() - before }
	// Stop the server right after a batch of events, while the service is
	// working through it; until an outage has caught a call in flight (the
	// service counts a retry while the server is down), use the next batch.
	next, outages := queue.JobID(1), 0
	for ; next+batch-1 <= jobs && retried() == 0; next += batch {
		for id := next; id < next+batch; id++ {
			e.emit(events.StatusEvent{JobID: id, Status: events.StatusRevoked})
		}
		e.srv.Stop()
		outages++
		for down := time.Now(); retried() == 0 && time.Since(down) < 2*time.Second; {
			time.Sleep(50 * time.Millisecond)
		}
		e.srv.Restart(t)
	}
	if retried() == 0 {
		t.Fatalf("%d outages and no JetStream call retried: none caught the service at work", outages)
	}
	t.Logf("%d outage(s) until one caught calls in flight; %v retries", outages, retried())
	for id := next; id <= jobs; id++ {
		e.emit(events.StatusEvent{JobID: id, Status: events.StatusRevoked})
	}
	e.awaitJobsGone(t, jobs, 60*time.Second, "every job cleaned after the outage")
	for _, keep := range []string{"advisories", "JOB_EVENTS"} {
		if !streamExists(t, e.js, keep) {
			t.Errorf("%s lost", keep)
		}
	}
}

// metricSum adds up every series of one metric in Prometheus text.
func metricSum(text, name string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
			sum += v
		}
	}
	return sum
}
