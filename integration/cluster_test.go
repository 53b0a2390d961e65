package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// TestClusterFailover runs the service on a three-node cluster with an R3
// event stream and an R3 key-value bucket, and, in the middle of a storm of
// terminal and restart events, stops the meta leader and then the event
// stream's leader (each comes back after a few seconds, as a restarted pod
// would). Every cleanup still happens exactly once in effect, nothing of a
// later run is removed, and the test reports how long the service could not
// act.
func TestClusterFailover(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("cluster failover takes about a minute")
	}
	cl := natstest.RunCluster(t, 3)
	nc, js := natstest.Connect(t, cl.URLs())
	names := queue.DefaultNames()
	ctx := t.Context()
	advisories := names.AdvisoryStreamConfig()
	advisories.Replicas = 3
	if _, err := js.CreateStream(ctx, advisories); err != nil {
		t.Fatal(err)
	}

	const jobs = 200 // each gets REVOKED; every third then restarts: 267 events
	for id := queue.JobID(1); id <= jobs; id++ {
		provisionRetrying(t, js, names, id, 1, 20)
	}
	deletions := watchStreamDeletions(t, nc)
	answers := collectAnswers(t, nc)

	args := append(baseArgs(cl.URLs()), "--event-stream-replicas", "3", "--kv-replicas", "3", "--log-level", "warn",
		"--retry-initial", "50ms", "--retry-max-interval", "500ms", "--retry-max-elapsed", "25s")
	for range 2 {
		startServe(t, js, args, zerolog.NewTestWriter(t))
	}

	var restarted sync.Map // job → run2
	var wg sync.WaitGroup
	var killTimes []time.Time
	for id := queue.JobID(1); id <= jobs; id++ {
		switch id {
		case jobs / 3:
			killTimes = append(killTimes, time.Now())
			t.Logf("stopping the meta leader %s", stopAndRestart(t, cl.MetaLeader()))
		case 2 * jobs / 3:
			killTimes = append(killTimes, time.Now())
			t.Logf("stopping the JOB_EVENTS leader %s", stopAndRestart(t, cl.StreamLeader(ctx, js, "JOB_EVENTS")))
		}
		publishRetrying(t, js, events.StatusEvent{ID: fmt.Sprintf("revoke-%d", id), JobID: id, Status: events.StatusRevoked, Attempt: events.Attempt(1)})
		if id%3 == 0 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// The backend's Start path: ask, wait for flushed, ask again
				// on a timeout (an answer on core NATS is lost if the backend
				// was reconnecting when it was sent).
				answered := false
				for try := 1; try <= 6 && !answered; try++ {
					cause := fmt.Sprintf("restart-%d-%d", id, try)
					publishRetrying(t, js, events.StatusEvent{ID: cause, JobID: id, Status: events.StatusRestartRequested, Attempt: events.Attempt(2)})
					answered = answers.await(cause, 15*time.Second)
				}
				if !answered {
					t.Errorf("job %d: no flushed answer to six restart requests", id)
					return
				}
				begun := time.Now()
				provisionRetrying(t, js, names, id, 2, 30)
				var created time.Time
				retry(t, fmt.Sprintf("stream info of job %d", id), func(ctx context.Context) error {
					s, err := js.Stream(ctx, names.StreamName(id))
					if err == nil {
						created = s.CachedInfo().Created
					}
					return err
				})
				restarted.Store(id, run2{begun: begun, created: created})
			}()
		}
		time.Sleep(10 * time.Millisecond)
	}
	wg.Wait()

	eventually(t, 5*time.Minute, "every revoked-only job cleaned", func() bool {
		for id := queue.JobID(1); id <= jobs; id++ {
			if id%3 != 0 && streamExistsRetrying(t, js, names.StreamName(id)) {
				return false
			}
		}
		return true
	})
	time.Sleep(500 * time.Millisecond)

	// Exactly once in effect: every run-1 stream removed once, every run 2
	// intact with its own 30 messages, never deleted.
	removedTwice := answers.removedMoreThanOnce()
	if len(removedTwice) > 0 {
		t.Errorf("streams reported removed more than once: %v", removedTwice)
	}
	for id := queue.JobID(1); id <= jobs; id++ {
		stream := names.StreamName(id)
		if id%3 != 0 {
			if streamExistsRetrying(t, js, stream) {
				t.Errorf("job %d: REVOKED but %s still exists", id, stream)
			}
			continue
		}
		// Run 2's stream must be the very one the backend created: same
		// creation time, its own attempt stamp, exactly its own messages. A
		// deletion and re-creation, or a reuse of run 1's stream, shows here.
		var s jetstream.Stream
		var err error
		retry(t, "stream info of "+stream, func(ctx context.Context) error {
			s, err = js.Stream(ctx, stream)
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				return nil // an answer: the stream is gone
			}
			return err
		})
		if err != nil {
			t.Errorf("SAFETY: job %d: run 2 lost its stream: %v", id, err)
			continue
		}
		info := s.CachedInfo()
		r2, _ := restarted.Load(id)
		want, _ := r2.(run2)
		if info.State.Msgs != 30 || !info.Created.Equal(want.created) || info.Config.Metadata[queue.AttemptMetadataKey] != "2" {
			t.Errorf("SAFETY: job %d: run 2's stream holds %d messages (want 30), created %s (want %s), attempt %q (want 2)",
				id, info.State.Msgs, info.Created, want.created, info.Config.Metadata[queue.AttemptMetadataKey])
		}
		// Stream-deleted advisories come late during a meta-leader failover,
		// so their timestamps only help a diagnosis.
		for _, d := range deletions.of(stream) {
			if d.After(want.begun) {
				t.Logf("job %d: a stream-deleted advisory stamped %s came after run 2 began (run 2 intact: the deletion of run 1 was reported late)",
					id, d.Format(time.RFC3339Nano))
			}
		}
	}
	for i, k := range killTimes {
		t.Logf("failover %d: longest silence of the service within 10s of the stop: %s (first answer after the stop: %s)",
			i+1, answers.longestGapAround(k, 10*time.Second).Round(time.Millisecond), answers.firstAfter(k).Round(time.Millisecond))
	}
}

// provisionRetrying creates a job's run as the backend does (R1 streams,
// its default) and publishes n tasks, riding out a failover.
func provisionRetrying(tb testing.TB, js jetstream.JetStream, names queue.Names, id queue.JobID, attempt int64, n int) {
	tb.Helper()
	retry(tb, fmt.Sprintf("provision job %d", id), func(ctx context.Context) error {
		return queue.Provision(ctx, js, names, id, &attempt)
	})
	for i := range n {
		retry(tb, fmt.Sprintf("publish task %d of job %d", i, id), func(ctx context.Context) error {
			_, err := js.Publish(ctx, names.SubjectName(id), fmt.Appendf(nil, `{"task":%d}`, i),
				jetstream.WithMsgID(fmt.Sprintf("%d-%d-%d", id, attempt, i)))
			return err
		})
	}
}

// retry runs fn until it succeeds. The five minutes only guard against a
// hang: a busy machine makes a cluster's failover slow (a JetStream request
// times out, or answers 503, for minutes under the race detector).
func retry(tb testing.TB, what string, fn func(context.Context) error) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := fn(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// streamExistsRetrying is streamExists riding out a failover: an error
// other than "not found" is asked again.
func streamExistsRetrying(tb testing.TB, js jetstream.JetStream, name string) bool {
	tb.Helper()
	exists := false
	retry(tb, "stream info of "+name, func(ctx context.Context) error {
		_, err := js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			exists = false
			return nil
		}
		exists = err == nil
		return err
	})
	return exists
}

// publishRetrying publishes an event, riding out the failover as a backend
// with an outbox would; the stream drops a retried duplicate by its id.
func publishRetrying(tb testing.TB, js jetstream.JetStream, ev events.StatusEvent) {
	tb.Helper()
	retry(tb, "publish "+ev.ID, func(ctx context.Context) error {
		msg, err := ev.Msg(ctx, "job.status.")
		if err != nil {
			return err
		}
		msg.Header.Set(jetstream.MsgIDHeader, ev.ID)
		_, err = js.PublishMsg(ctx, msg)
		return err
	})
}

// stopAndRestart stops s now and starts it again on its store a few
// seconds later, in the background, as a restarted pod would come back.
func stopAndRestart(tb testing.TB, s *natstest.Server) string {
	tb.Helper()
	if s == nil {
		tb.Fatal("no server to stop")
	}
	name := s.Name()
	s.Stop()
	go func() {
		time.Sleep(4 * time.Second)
		if err := s.TryRestart(); err != nil {
			tb.Errorf("restart %s: %v", name, err)
		}
	}()
	return name
}

// run2 is what the backend knows of a restarted job's second run.
type run2 struct {
	begun   time.Time // when it began creating the stream, after flushed
	created time.Time // the stream's server-side creation time
}

// answers collects the service's cleaned and flushed events.
type answerLog struct {
	mu      sync.Mutex
	byCause map[string]events.QueueResult
	removed map[string]int
	times   []time.Time
}

func collectAnswers(tb testing.TB, nc *nats.Conn) *answerLog {
	tb.Helper()
	a := &answerLog{byCause: map[string]events.QueueResult{}, removed: map[string]int{}}
	_, err := nc.Subscribe("job.queue.>", func(m *nats.Msg) {
		var ev struct {
			Data events.QueueResult `json:"data"`
		}
		if json.Unmarshal(m.Data, &ev) != nil {
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		a.byCause[ev.Data.CauseEventID] = ev.Data
		a.times = append(a.times, time.Now())
		if ev.Data.Outcome == events.OutcomeAlreadyDone {
			return // it repeats the report of the effect it answers again
		}
		for _, d := range ev.Data.Deleted {
			if strings.HasPrefix(d, "stream ") {
				a.removed[d]++
			}
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

func (a *answerLog) has(cause string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.byCause[cause]
	return ok
}

func (a *answerLog) await(cause string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if a.has(cause) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func (a *answerLog) removedMoreThanOnce() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for s, n := range a.removed {
		if n > 1 {
			out = append(out, fmt.Sprintf("%s×%d", s, n))
		}
	}
	sort.Strings(out)
	return out
}

func (a *answerLog) firstAfter(t time.Time) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, at := range a.times {
		if at.After(t) {
			return at.Sub(t)
		}
	}
	return -1
}

// longestGapAround is the longest time without an answer among the gaps
// that overlap [from, from+window]: how long the service could not act.
func (a *answerLog) longestGapAround(from time.Time, window time.Duration) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	var longest time.Duration
	for i := 1; i < len(a.times); i++ {
		start, end := a.times[i-1], a.times[i]
		if end.After(from) && start.Before(from.Add(window)) {
			longest = max(longest, end.Sub(start))
		}
	}
	return longest
}

// deletionLog records stream-deleted advisories.
type deletionLog struct {
	mu sync.Mutex
	at map[string][]time.Time
}

func watchStreamDeletions(tb testing.TB, nc *nats.Conn) *deletionLog {
	tb.Helper()
	d := &deletionLog{at: map[string][]time.Time{}}
	_, err := nc.Subscribe("$JS.EVENT.ADVISORY.STREAM.DELETED.*", func(m *nats.Msg) {
		var adv struct {
			Stream    string    `json:"stream"`
			Timestamp time.Time `json:"timestamp"`
		}
		if json.Unmarshal(m.Data, &adv) != nil {
			return
		}
		d.mu.Lock()
		d.at[adv.Stream] = append(d.at[adv.Stream], adv.Timestamp)
		d.mu.Unlock()
	})
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

func (d *deletionLog) of(stream string) []time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Time(nil), d.at[stream]...)
}
