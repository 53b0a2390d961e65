package queue

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// openFence allows every resource: created before an hour from now.
func openFence() Fence {
	return Fence{CreatedBefore: time.Now().Add(time.Hour)}
}

// removedJob1 is the report of a full removal of job 1 with default names.
func removedJob1(msgs uint64, consumers int) Removal {
	return Removal{
		Stream:      "job_1",
		StreamFound: true,
		Deleted: []string{"consumer job_1/job-1-consumer", "stream job_1",
			"consumer advisories/job-1-dlq"},
		MessagesDiscarded: msgs,
		ConsumersRemoved:  consumers,
	}
}

func assertRemoval(t *testing.T, got, want Removal) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Removal =\n  %+v\nwant\n  %+v", got, want)
	}
}

func TestRemoveDeletesTheJobsQueue(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(1, 25, nil)

	r, err := e.janitor().Remove(t.Context(), 1, openFence(), nil)
	if err != nil {
		t.Fatalf("Remove: %v", err)
	}
	assertRemoval(t, r, removedJob1(25, 2))
	if !r.Removed() {
		t.Error("Removed() = false")
	}
	if n := e.streamMsgs("job_1"); n != -1 {
		t.Errorf("stream job_1 still exists with %d messages", n)
	}
	if e.consumerExists("advisories", "job-1-dlq") {
		t.Error("dead-letter consumer job-1-dlq still exists")
	}
	if n := e.streamMsgs("advisories"); n != 0 {
		t.Errorf("advisories stream: %d messages, want it kept with 0", n)
	}
}

func TestRemoveCountsConsumersThatGoWithTheStream(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(1, 3, nil)
	for _, name := range []string{"audit", "replay"} {
		if _, err := e.js.CreateOrUpdateConsumer(t.Context(), "job_1", jetstream.ConsumerConfig{Durable: name}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := e.janitor().Remove(t.Context(), 1, openFence(), nil)
	if err != nil {
		t.Fatalf("Remove: %v", err)
	}
	assertRemoval(t, r, removedJob1(3, 4))
}

func TestRemoveLeavesOtherStreamsAlone(t *testing.T) {
	t.Parallel()
	e := setup(t)
	for id, msgs := range map[JobID]int{1: 4, 10: 7, 11: 9} {
		e.provision(id, msgs, nil)
	}
	archive := e.names.TaskStreamConfig(1, nil)
	archive.Name, archive.Subjects = "job_1_archive", []string{"archive.1"}
	if _, err := e.js.CreateStream(t.Context(), archive); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.CreateOrUpdateConsumer(t.Context(), "job_1_archive", jetstream.ConsumerConfig{Durable: "job-1-consumer"}); err != nil {
		t.Fatal(err)
	}
	e.publish("archive.1", 3)

	r, err := e.janitor().Remove(t.Context(), 1, openFence(), nil)
	if err != nil {
		t.Fatalf("Remove: %v", err)
	}
	assertRemoval(t, r, removedJob1(4, 2))
	for name, want := range map[string]int64{"job_1": -1, "job_10": 7, "job_11": 9, "job_1_archive": 3, "advisories": 0} {
		if got := e.streamMsgs(name); got != want {
			t.Errorf("stream %s: %d messages, want %d (-1: gone)", name, got, want)
		}
	}
	for _, c := range [][2]string{{"job_10", "job-10-consumer"}, {"job_11", "job-11-consumer"},
		{"advisories", "job-10-dlq"}, {"advisories", "job-11-dlq"}, {"job_1_archive", "job-1-consumer"}} {
		if !e.consumerExists(c[0], c[1]) {
			t.Errorf("consumer %s/%s was deleted", c[0], c[1])
		}
	}
}

func TestRemoveWhenNothingIsThere(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		provision bool // another job's queue, so that the advisories stream exists
	}{
		{"empty server", false},
		{"advisories without the job", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			if tt.provision {
				e.provision(2, 1, nil)
			}
			r, err := e.janitor().Remove(t.Context(), 1, openFence(), nil)
			if err != nil {
				t.Fatalf("Remove: %v", err)
			}
			assertRemoval(t, r, Removal{Stream: "job_1", Deleted: []string{}})
			if r.Removed() {
				t.Error("Removed() = true")
			}
			if tt.provision && (e.streamMsgs("job_2") != 1 || !e.consumerExists("advisories", "job-2-dlq")) {
				t.Error("job 2's queue was touched")
			}
		})
	}
}

func TestRemoveTwiceIsANoOp(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(1, 5, nil)
	j := e.janitor()
	first, err := j.Remove(t.Context(), 1, openFence(), nil)
	if err != nil {
		t.Fatalf("first Remove: %v", err)
	}
	assertRemoval(t, first, removedJob1(5, 2))
	second, err := j.Remove(t.Context(), 1, openFence(), nil)
	if err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	assertRemoval(t, second, Removal{Stream: "job_1", Deleted: []string{}})
}

func TestRemoveRejectsInvalidJobID(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(1, 1, nil)
	for _, id := range []JobID{0, -1} {
		r, err := e.janitor().Remove(t.Context(), id, openFence(), nil)
		if !errors.Is(err, ErrInvalidJobID) || r.Removed() {
			t.Errorf("Remove(%d) = %+v, %v; want ErrInvalidJobID", id, r, err)
		}
	}
	if e.streamMsgs("job_1") != 1 {
		t.Error("job_1 was touched")
	}
}

func TestJanitorAccessors(t *testing.T) {
	t.Parallel()
	n := DefaultNames()
	n.Stream = "tasks-{id}-q"
	j := NewJanitor(nil, n)
	if j.Names() != n || j.StreamName(7) != "tasks-7-q" {
		t.Fatalf("Names() = %+v, StreamName(7) = %q", j.Names(), j.StreamName(7))
	}
}
