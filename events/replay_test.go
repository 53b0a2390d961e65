package events

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/integration/natstest"
)

// TestReplayLeavesOutWhatTheIntakeDeadLetters: the rebuild trusts the
// consumer's ack floor as "effect done", and the intake terminates (which
// the floor counts) the events it dead-letters. A future-dated event (a
// broken producer clock) must not become a job's newest, done event in the
// rebuilt records; one within the limit is replayed.
func TestReplayLeavesOutWhatTheIntakeDeadLetters(t *testing.T) {
	t.Parallel()
	srv := natstest.RunServer(t)
	_, js := natstest.Connect(t, srv.URL())
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "JOB_EVENTS", Subjects: []string{"job.status.*"}}); err != nil {
		t.Fatal(err)
	}
	for _, ev := range []StatusEvent{
		{ID: "on-time", JobID: 7, Status: StatusRevoked, Time: time.Now().Add(10 * time.Minute)},
		{ID: "future", JobID: 7, Status: StatusRevoked, Time: time.Now().Add(2 * time.Hour)},
	} {
		msg, err := ev.Msg(t.Context(), "job.status.")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.PublishMsg(t.Context(), msg); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	r := NewReplayer(js, "JOB_EVENTS", "queue-janitor", testDecoder())
	if _, _, err := r.Events(context.Background(), func(_ uint64, ev JobStatus) { got = append(got, ev.ID) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "on-time" {
		t.Errorf("replayed %v; want [on-time] (the one two hours ahead is dead-lettered by the intake)", got)
	}
	got = nil
	if _, _, err := r.WithMaxFuture(0).Events(context.Background(), func(_ uint64, ev JobStatus) { got = append(got, ev.ID) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Errorf("with the check off, replayed %v; want both", got)
	}
}
