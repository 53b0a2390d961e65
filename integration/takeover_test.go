package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// These tests kill a replica's process with SIGKILL in the middle of a
// storm of terminal events, with the default lease and ack wait, and time
// how long its jobs stay blocked. QJ_TAKEOVER_JOBS sets the storm's size
// (default 150; the runs used 300).

func takeoverJobs() int {
	if n, err := strconv.Atoi(os.Getenv("QJ_TAKEOVER_JOBS")); err == nil && n > 0 {
		return n
	}
	return 150
}

// defaultArgs are serve's flags with the service's own lease, ack wait and
// retries: what a deployment runs.
func defaultArgs(url string) []string {
	return []string{"serve", "--nats-url", url, "--log-format", "json", "--http-addr", "", "--reconcile-interval", "0", "--trust-new-bucket"}
}

// killableServe runs serve as its own process and waits until it pulls.
func killableServe(t *testing.T, e *env) *exec.Cmd {
	t.Helper()
	before := pullWaiting(e.js)
	logs := &syncBuffer{}
	cmd := exec.Command(binary(t), defaultArgs(e.url)...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("killed replica's output:\n%s", logs.String())
		}
	})
	eventually(t, 60*time.Second, "the replica pulling", func() bool { return pullWaiting(e.js) > before })
	return cmd
}

// storm provisions n jobs (20 tasks each) plus live ones that must stay,
// and returns the cleaned-answer subscription. A stream keeps every answer
// too (answersStream), for checkNothingWrong: the subscription misses those
// published while the test's own connection is away (a server restart), as
// a backend's would; the stream has whatever reached the server.
func (e *env) storm(t *testing.T, n int, live []queue.JobID) *received {
	t.Helper()
	ensureEventStream(t, e.js)
	if _, err := e.js.CreateStream(t.Context(), jetstream.StreamConfig{
		Name: answersStream, Subjects: []string{"job.queue.cleaned.*"}, Storage: jetstream.FileStorage,
	}); err != nil {
		t.Fatalf("answers stream: %v", err)
	}
	for id := queue.JobID(1); id <= queue.JobID(n); id++ {
		e.provision(id, 20, nil)
	}
	for _, id := range live {
		e.provision(id, 7, nil)
		e.emit(events.StatusEvent{JobID: id, Status: events.StatusStarted})
	}
	return subscribe(t, e.nc, "job.queue.cleaned.*")
}

// emitTerminals publishes the n terminal events asynchronously, so that
// the storm is under way while the test watches it; wait returns the first
// publish error.
func (e *env) emitTerminals(t *testing.T, n int) (wait func() error) {
	t.Helper()
	var futures []jetstream.PubAckFuture
	for id := queue.JobID(1); id <= queue.JobID(n); id++ {
		msg, err := events.StatusEvent{JobID: id, Status: events.StatusRevoked}.Msg(t.Context(), "job.status.")
		if err != nil {
			t.Fatal(err)
		}
		f, err := e.js.PublishMsgAsync(msg)
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
	}
	return func() error {
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return err
			case <-time.After(30 * time.Second):
				return errors.New("no ack for a terminal event")
			}
		}
		return nil
	}
}

// answersStream keeps a storm's cleaned answers.
const answersStream = "TEST_ANSWERS"

// checkNothingWrong: the live jobs keep their queues whole, and every
// terminal job's answer reached the server (but skip, whose restart
// superseded it). An answer to an effect recorded before lossy (the server
// coming back from a stop) may have been lost in the stop: answers are core
// NATS publications (docs/SAFETY.md, "Answers are at-least-once"); and if
// the event's ack got through, it is not delivered again. Those are logged,
// not failed.
func (e *env) checkNothingWrong(t *testing.T, n int, live []queue.JobID, skip queue.JobID, lossy time.Time) {
	t.Helper()
	for _, id := range live {
		info, err := e.js.Stream(context.Background(), e.names.StreamName(id))
		if err != nil || info.CachedInfo().State.Msgs != 7 {
			t.Errorf("live job %d lost its queue: %v", id, err)
		}
	}
	answered := map[queue.JobID]bool{skip: true}
	read := uint64(0)
	missing := func() []queue.JobID {
		for _, m := range e.streamMsgs(t, answersStream, read) {
			answered[decodeEmitted(t, m).Data.JobID] = true
			read++
		}
		var out []queue.JobID
		for id := queue.JobID(1); id <= queue.JobID(n); id++ {
			if !answered[id] {
				out = append(out, id)
			}
		}
		return out
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(missing()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if left := missing(); len(left) > 0 {
		e.logEventState(t)
		store, err := queue.OpenStore(t.Context(), e.js, queue.StoreConfig{Bucket: "queue_janitor_jobs", Replicas: 1})
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range left {
			rec, _, _ := store.Get(t.Context(), id)
			if !rec.CleanedAt.IsZero() && rec.CleanedAt.Before(lossy) {
				t.Logf("job %d: no answer reached the server; its effect was recorded at %s, before the server came back (%s): lost in the stop",
					id, rec.CleanedAt.Format("15:04:05.000"), lossy.Format("15:04:05.000"))
				continue
			}
			t.Errorf("job %d was never answered; its record: %+v", id, rec)
		}
	}
}

// TestKilledReplicaIsTakenOverInSeconds: of two replicas, one is killed
// mid-storm; the other finishes the dead one's jobs within its lease plus a
// few seconds.
func TestKilledReplicaIsTakenOverInSeconds(t *testing.T) {
	t.Parallel()
	e := setup(t)
	n, live := takeoverJobs(), []queue.JobID{9001, 9002, 9003}
	cleaned := e.storm(t, n, live)
	doomed := killableServe(t, e)
	startServe(t, e.js, append(defaultArgs(e.url), "--log-level", "warn"), zerolog.NewTestWriter(t))
	published := e.emitTerminals(t, n)
	eventually(t, 60*time.Second, "a fifth of the answers", func() bool { return cleaned.count() >= n/5 })
	if err := doomed.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed, atKill := time.Now(), cleaned.count()
	if err := published(); err != nil {
		t.Fatal(err)
	}
	e.awaitJobsGone(t, n, 90*time.Second, "every queue gone after the kill")
	t.Logf("takeover: %d jobs, one of two replicas killed at %d answers; every queue gone %s after the kill (lease %s, ack wait %s)",
		n, atKill, time.Since(killed).Round(100*time.Millisecond), "12s", "10s")
	e.checkNothingWrong(t, n, live, 0, time.Time{})
}

// TestKilledSingleReplicaRestartsInSeconds: the only replica is killed
// mid-storm and started again at once; every queue is gone, and a restart
// handshake for a job it held is answered, within seconds of the restart.
func TestKilledSingleReplicaRestartsInSeconds(t *testing.T) {
	t.Parallel()
	e := setup(t)
	n, live := takeoverJobs(), []queue.JobID{9001, 9002}
	cleaned := e.storm(t, n, live)
	doomed := killableServe(t, e)
	published := e.emitTerminals(t, n)
	eventually(t, 60*time.Second, "a fifth of the answers", func() bool { return cleaned.count() >= n/5 })
	if err := doomed.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := published(); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed at %d answers of %d", cleaned.count(), n)
	held := e.heldJob(t, n, cleaned)
	flushed := subscribe(t, e.nc, "job.queue.flushed."+held.String())

	restarted := time.Now()
	startServe(t, e.js, append(defaultArgs(e.url), "--log-level", "warn"), zerolog.NewTestWriter(t))
	e.emit(events.StatusEvent{JobID: held, Status: events.StatusRestartRequested})
	answerFor(t, flushed, 60*time.Second, "the restart handshake", func(a emitted) bool { return a.Data.Outcome != "" })
	handshake := time.Since(restarted)
	e.awaitJobsGone(t, n, 90*time.Second, "every queue gone after the restart")
	t.Logf("restart after kill: %d jobs; every queue gone %s after the restart; handshake for job %d (held by the dead replica) answered in %s (lease %s, ack wait %s)",
		n, time.Since(restarted).Round(100*time.Millisecond), held, handshake.Round(100*time.Millisecond), "12s", "10s")
	e.checkNothingWrong(t, n, live, held, time.Time{})
}

// heldJob is a job whose record shows a lease (the dead replica was acting
// on it), or else one not yet answered.
func (e *env) heldJob(t *testing.T, n int, cleaned *received) queue.JobID {
	t.Helper()
	store, err := queue.OpenStore(t.Context(), e.js, queue.StoreConfig{Bucket: "queue_janitor_jobs", Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	answered := map[queue.JobID]bool{}
	for _, m := range cleaned.all() {
		answered[decodeEmitted(t, m).Data.JobID] = true
	}
	fallback := queue.JobID(0)
	for id := queue.JobID(1); id <= queue.JobID(n); id++ {
		rec, _, err := store.Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Lease != nil {
			return id
		}
		if fallback == 0 && !answered[id] {
			fallback = id
		}
	}
	if fallback == 0 {
		t.Skip("the replica finished every job before it was killed")
	}
	return fallback
}

// TestServerDownMidStorm: the NATS server goes down in the middle of a
// storm (for QJ_OUTAGE, default 5s; the run used 45s) and comes
// back on the same store. Every queue is gone soon after, every terminal
// job answered, live jobs intact.
func TestServerDownMidStorm(t *testing.T) {
	t.Parallel()
	outage := 5 * time.Second
	if d, err := time.ParseDuration(os.Getenv("QJ_OUTAGE")); err == nil && d > 0 {
		outage = d
	}
	e := setup(t)
	n, live := takeoverJobs(), []queue.JobID{9001, 9002}
	cleaned := e.storm(t, n, live)
	startServe(t, e.js, append(defaultArgs(e.url), "--log-level", "warn"), zerolog.NewTestWriter(t))
	published := e.emitTerminals(t, n)
	if err := published(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "a fifth of the answers", func() bool { return cleaned.count() >= n/5 })
	e.srv.Stop()
	atStop := cleaned.count()
	time.Sleep(outage)
	e.srv.Restart(t)
	back := time.Now()
	e.awaitJobsGone(t, n, 120*time.Second, "every queue gone after the server came back")
	t.Logf("server down mid-storm at %d answers of %d, for %s: every queue gone %s after it came back",
		atStop, n, outage, time.Since(back).Round(100*time.Millisecond))
	e.checkNothingWrong(t, n, live, 0, back)
}

// streamMsgs returns the messages of stream after its first skip ones.
func (e *env) streamMsgs(t *testing.T, stream string, skip uint64) []*nats.Msg {
	t.Helper()
	s, err := e.js.Stream(t.Context(), stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	var out []*nats.Msg
	for seq := skip + 1; seq <= s.CachedInfo().State.LastSeq; seq++ {
		raw, err := s.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatalf("stream %s, message %d: %v", stream, seq, err)
		}
		out = append(out, &nats.Msg{Subject: raw.Subject, Header: raw.Header, Data: raw.Data})
	}
	return out
}

// logEventState logs the event stream's, its consumer's and the answers
// stream's state, for a failure's message.
func (e *env) logEventState(t *testing.T) {
	t.Helper()
	for _, name := range []string{"JOB_EVENTS", answersStream} {
		if s, err := e.js.Stream(t.Context(), name); err == nil {
			i := s.CachedInfo()
			t.Logf("stream %s: created %s, %d messages, first %d, last %d", name, i.Created.Format(time.RFC3339Nano), i.State.Msgs, i.State.FirstSeq, i.State.LastSeq)
		} else {
			t.Logf("stream %s: %v", name, err)
		}
	}
	if c, err := e.js.Consumer(t.Context(), "JOB_EVENTS", "queue-janitor"); err == nil {
		i := c.CachedInfo()
		t.Logf("consumer: created %s, delivered %d, ack floor %d, pending %d, ack pending %d, redelivered %d",
			i.Created.Format(time.RFC3339Nano), i.Delivered.Stream, i.AckFloor.Stream, i.NumPending, i.NumAckPending, i.NumRedelivered)
	} else {
		t.Logf("consumer: %v", err)
	}
}
