package integration

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// answerFor waits for the first answer on r whose outcome is not empty and
// that satisfies ok.
func answerFor(t *testing.T, r *received, timeout time.Duration, what string, ok func(emitted) bool) emitted {
	t.Helper()
	var got emitted
	eventually(t, timeout, what, func() bool {
		for _, m := range r.all() {
			if e := decodeEmitted(t, m); ok(e) {
				got = e
				return true
			}
		}
		return false
	})
	return got
}

func ptr(v int64) *int64 { return &v }

// TestPartitionedDeleteNeverArrivesLate: replica A is cut off from NATS
// just as its delete of job 7's stream leaves it, and stays cut off. B
// takes the job over once A's lease ends, cleans it and answers; the backend
// restarts the job and creates run 2's stamped stream; then A's network
// comes back. Nothing A asked for while cut off may reach the server now:
// run 2's stream must survive. (With a reconnect buffer, A's retried delete
// was queued during the cut and sent on reconnect, deleting run 2.)
func TestPartitionedDeleteNeverArrivesLate(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const id = queue.JobID(7)
	e.provision(id, 20, ptr(1))
	proxy := newTCPProxy(t, strings.TrimPrefix(e.url, "nats://"))
	cutAtDelete := proxy.on("$JS.API.STREAM.DELETE."+e.names.StreamName(id), dropAndCut)
	fast := []string{"--lease", "4s", "--ack-wait", "1s", "--retry-max-elapsed", "20s", "--retry-attempt-timeout", "2s"}

	cleaned := subscribe(t, e.nc, "job.queue.cleaned.7")
	flushed := subscribe(t, e.nc, "job.queue.flushed.7")
	startServe(t, e.js, append(append(baseArgs(proxy.URL()), fast...), "--log-level", "info"), zerolog.NewTestWriter(t))
	e.emit(events.StatusEvent{JobID: id, Status: events.StatusRevoked, Attempt: ptr(1)})
	select {
	case <-cutAtDelete:
	case <-time.After(30 * time.Second):
		t.Fatal("replica A never sent its delete")
	}
	cutAt := time.Now()

	// B takes over once A's lease has ended, and answers.
	startServe(t, e.js, append(baseArgs(e.url), fast...), zerolog.NewTestWriter(t))
	got := answerFor(t, cleaned, 60*time.Second, "B's cleaned answer", func(a emitted) bool { return a.Data.Outcome != "" })
	t.Logf("B answered %s after the cut: %s, deleted %v", time.Since(cutAt).Round(time.Millisecond), got.Data.Outcome, got.Data.Deleted)
	if streamExists(t, e.js, e.names.StreamName(id)) {
		t.Fatal("run 1's stream is still there after B's cleanup")
	}

	// The backend restarts the job: it waits for flushed, then creates run 2.
	e.emit(events.StatusEvent{JobID: id, Status: events.StatusRestartRequested, Attempt: ptr(2)})
	answerFor(t, flushed, 30*time.Second, "flushed", func(a emitted) bool { return a.Data.Attempt != nil && *a.Data.Attempt == 2 })
	e.provision(id, 20, ptr(2))

	// A's network comes back; give it time to reconnect and retry.
	before := proxy.connections()
	proxy.restore()
	eventually(t, 30*time.Second, "A reconnecting", func() bool { return proxy.connections() > before })
	time.Sleep(3 * time.Second)

	info, err := e.js.Stream(context.Background(), e.names.StreamName(id))
	if err != nil {
		t.Fatalf("run 2's stream is gone after A reconnected: %v", err)
	}
	if st := info.CachedInfo(); st.State.Msgs != 20 || st.Config.Metadata[queue.AttemptMetadataKey] != "2" {
		t.Fatalf("job 7's stream is not run 2's intact queue: %d messages, metadata %v", st.State.Msgs, st.Config.Metadata)
	}
}

// TestLostDeleteReplyIsReportedRemoved: the delete of job 8's stream
// reaches the server, which deletes it, but the reply is lost with the
// connection. The retry finds the stream gone: the answer must say
// removed, with the messages the fence counted, confirmed by absence, not
// nothing_to_remove.
func TestLostDeleteReplyIsReportedRemoved(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const id = queue.JobID(8)
	e.provision(id, 25, nil)
	proxy := newTCPProxy(t, strings.TrimPrefix(e.url, "nats://"))
	lost := proxy.on("$JS.API.STREAM.DELETE."+e.names.StreamName(id), forwardThenCut)

	cleaned := subscribe(t, e.nc, "job.queue.cleaned.8")
	startServe(t, e.js, append(baseArgs(proxy.URL()), "--retry-attempt-timeout", "2s"), zerolog.NewTestWriter(t))
	e.emit(events.StatusEvent{JobID: id, Status: events.StatusRevoked})
	select {
	case <-lost:
	case <-time.After(30 * time.Second):
		t.Fatal("the service never sent its delete")
	}
	got := answerFor(t, cleaned, 60*time.Second, "the cleaned answer", func(a emitted) bool { return a.Data.Outcome != "" }).Data
	if got.Outcome != events.OutcomeRemoved || got.Confirmed != queue.ConfirmedGoneOnRetry || got.MessagesDiscarded != 25 ||
		!got.StreamFound || !slices.Contains(got.Deleted, "stream job_8") {
		t.Fatalf("answer = outcome %q confirmed %q, %d messages, deleted %v; want removed, gone_on_retry, 25, stream job_8",
			got.Outcome, got.Confirmed, got.MessagesDiscarded, got.Deleted)
	}
	if streamExists(t, e.js, e.names.StreamName(id)) {
		t.Fatal("job 8's stream is still there")
	}
	if got.EffectTime.IsZero() || time.Since(got.EffectTime) > time.Minute {
		t.Errorf("effect_time = %v; want when the effect finished", got.EffectTime)
	}
}
