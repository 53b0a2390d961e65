package events

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/integration/natstest"
)

// TestIntakeDoesNotSettleAnEventOfADeletedStream: an event is being handled
// when `flush nats` deletes the event stream; the intake recreates stream and
// consumer, and a new event takes the old one's sequence and is being
// handled too. When the old event's handling ends, its ack must not be
// sent: the server knows a message by stream name, consumer name and
// sequence only, so it would acknowledge the new event, unhandled (lost, and
// counted at the consumer's ack floor as done, which the rebuild of lost
// records trusts).
func TestIntakeDoesNotSettleAnEventOfADeletedStream(t *testing.T) {
	t.Parallel()
	srv := natstest.RunServer(t)
	nc, js := natstest.Connect(t, srv.URL())
	held := map[string]chan struct{}{"old-3": make(chan struct{}), "new-3": make(chan struct{})}
	var mu sync.Mutex
	started := map[string]bool{}
	h := handlerFunc(func(ctx context.Context, ev JobStatus) (Outcome, error) {
		mu.Lock()
		started[ev.ID] = true
		mu.Unlock()
		if c, ok := held[ev.ID]; ok {
			select {
			case <-c:
			case <-ctx.Done():
			}
		}
		return Outcome{Decision: DecisionIgnore, Result: "ignored"}, nil
	})
	logs := &lockedBuffer{}
	cfg := DefaultIntakeConfig()
	cfg.AckWait = 30 * time.Second // nothing is delivered again during the test
	in := NewIntake(js, cfg, testDecoder(), h, NewPublisher(nc, DefaultPublisherConfig(), nil),
		IntakeDeps{Logger: zerolog.New(zerolog.MultiLevelWriter(zerolog.NewTestWriter(t), logs))})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	t.Cleanup(func() {
		for _, c := range held {
			select {
			case <-c:
			default:
				close(c)
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	eventually(t, "the intake to be ready", func() bool { return in.Ready(t.Context()) == nil })
	e := &runEnv{js: js}
	isStarted := func(id string) func() bool {
		return func() bool { mu.Lock(); defer mu.Unlock(); return started[id] }
	}

	for _, id := range []string{"old-1", "old-2", "old-3"} {
		e.publishEvent(t, id)
	}
	eventually(t, "old-3 to be handled", isStarted("old-3"))
	if err := js.DeleteStream(t.Context(), "JOB_EVENTS"); err != nil { // flush nats
		t.Fatal(err)
	}
	eventually(t, "the stream and consumer to be recreated", func() bool {
		_, s := e.streamConfig(t)
		_, c := e.consumerConfig(t)
		return s && c && in.Ready(t.Context()) == nil
	})
	for _, id := range []string{"new-1", "new-2", "new-3"} { // another job: old-3 holds job 42's turn
		msg, err := StatusEvent{JobID: 43, Status: StatusStarted, ID: id}.Msg(t.Context(), "job.status.")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.PublishMsg(t.Context(), msg); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "new-3, at old-3's sequence, to be handled", isStarted("new-3"))

	close(held["old-3"])
	eventually(t, "old-3's handling to end", func() bool { return strings.Contains(logs.String(), `"event_id":"old-3"`) })
	deadline := time.Now().Add(time.Second) // an ack is not answered: give a misdirected one time to land
	for time.Now().Before(deadline) {
		c, err := js.Consumer(t.Context(), "JOB_EVENTS", "queue-janitor")
		if err != nil {
			t.Fatal(err)
		}
		if i := c.CachedInfo(); i.AckFloor.Stream > 2 || i.NumAckPending != 1 {
			t.Fatalf("after old-3 (of the deleted stream) was settled: the new consumer's ack floor %d, %d pending; want 2 and new-3 still pending",
				i.AckFloor.Stream, i.NumAckPending)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if want := "not settled: its event stream was replaced"; !strings.Contains(logs.String(), want) {
		t.Errorf("old-3's log line does not say %q:\n%s", want, logs.String())
	}
}
