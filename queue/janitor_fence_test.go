package queue

import (
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestRemoveExactFence(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(1, 4, ptr(int64(3)))
	j := e.janitor()

	// Attempt 3 is later than 2: kept, even though the time fence would
	// allow it.
	kept, err := j.Remove(t.Context(), 1, Fence{AttemptKnown: true, MaxAttempt: 2, CreatedBefore: time.Now().Add(time.Hour)}, nil)
	if err != nil {
		t.Fatalf("Remove with MaxAttempt 2: %v", err)
	}
	if !kept.StreamFound || kept.Removed() || len(kept.Kept) != 2 ||
		!strings.HasPrefix(kept.Kept[0], "stream job_1: stamped job_attempt=3, a later run than attempt 2") ||
		!strings.HasPrefix(kept.Kept[1], "consumer advisories/job-1-dlq: stamped job_attempt=3, a later run than attempt 2") {
		t.Fatalf("Removal = %+v; want both kept with the attempt as reason", kept)
	}
	if e.streamMsgs("job_1") != 4 || !e.consumerExists("job_1", "job-1-consumer") || !e.consumerExists("advisories", "job-1-dlq") {
		t.Fatal("the later attempt's queue was touched")
	}

	// Attempt 3 is at most 3: removed, even though the zero time fence
	// would keep it.
	r, err := j.Remove(t.Context(), 1, Fence{AttemptKnown: true, MaxAttempt: 3}, nil)
	if err != nil {
		t.Fatalf("Remove with MaxAttempt 3: %v", err)
	}
	assertRemoval(t, r, removedJob1(4, 2))
	if e.streamMsgs("job_1") != -1 {
		t.Error("stream job_1 still exists")
	}
}

// TestRemoveTimeFence judges the stream by its creation time; the
// dead-letter consumer by its own when the stream is kept, and with the
// stream (same run) when the stream goes.
func TestRemoveTimeFence(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// recreate deletes the named resource after the cut so that
		// provisioning again makes it newer than the cut.
		recreate  func(e *testEnv) error
		deleted   []string
		keptTitle string
		msgs      int64 // what job_1 holds afterwards, -1: gone
		dlqKept   bool
	}{
		{
			name:      "newer stream kept, older dead-letter consumer removed",
			recreate:  func(e *testEnv) error { return e.js.DeleteStream(e.t.Context(), "job_1") },
			deleted:   []string{"consumer advisories/job-1-dlq"},
			keptTitle: "stream job_1: created ",
			msgs:      3,
		},
		{
			name:     "older stream removed with its run's dead-letter consumer",
			recreate: func(e *testEnv) error { return e.js.DeleteConsumer(e.t.Context(), "advisories", "job-1-dlq") },
			deleted:  []string{"consumer job_1/job-1-consumer", "stream job_1", "consumer advisories/job-1-dlq"},
			msgs:     -1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			if err := Provision(t.Context(), e.js, e.names, 1, nil); err != nil {
				t.Fatal(err)
			}
			stream, dlq := e.streamInfo("job_1").Created, e.consumerInfo("advisories", "job-1-dlq").Created
			cut := stream
			if dlq.After(cut) {
				cut = dlq
			}
			cut = cut.Add(time.Nanosecond)
			waitUntilAfter(t, cut)
			if err := tt.recreate(e); err != nil {
				t.Fatal(err)
			}
			e.provision(1, 3, nil)
			if s, d := e.streamInfo("job_1").Created, e.consumerInfo("advisories", "job-1-dlq").Created; s.Before(cut) == d.Before(cut) {
				t.Fatalf("setup: stream created %s, dead-letter consumer %s: want one each side of %s", s, d, cut)
			}

			r, err := e.janitor().Remove(t.Context(), 1, Fence{CreatedBefore: cut}, nil)
			if err != nil {
				t.Fatalf("Remove: %v", err)
			}
			keptOK := len(r.Kept) == 0
			if tt.keptTitle != "" {
				keptOK = len(r.Kept) == 1 && strings.HasPrefix(r.Kept[0], tt.keptTitle) && strings.Contains(r.Kept[0], "not before")
			}
			if !r.StreamFound || !slices.Equal(r.Deleted, tt.deleted) || !keptOK {
				t.Fatalf("Removal = %+v; want deleted %q and kept %q", r, tt.deleted, tt.keptTitle)
			}
			if got := e.streamMsgs("job_1"); got != tt.msgs {
				t.Errorf("job_1 holds %d messages, want %d (-1: gone)", got, tt.msgs)
			}
			if got := e.consumerExists("advisories", "job-1-dlq"); got != tt.dlqKept {
				t.Errorf("dead-letter consumer exists = %v, want %v", got, tt.dlqKept)
			}
		})
	}
}

// fixedAuthority is an Authority that ends at a fixed instant.
type fixedAuthority time.Time

func (a fixedAuthority) Deadline() time.Time { return time.Time(a) }

func TestRemoveWithExpiredAuthority(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for name, validUntil := range map[string]time.Time{"past": now.Add(-time.Second), "now": now} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			e.provision(1, 5, nil)
			j := e.janitor(WithClock(func() time.Time { return now }))
			r, err := j.Remove(t.Context(), 1, Fence{CreatedBefore: time.Now().Add(time.Hour)}, fixedAuthority(validUntil))
			if !errors.Is(err, ErrAuthorityExpired) || r.Removed() {
				t.Fatalf("Remove = %+v, %v; want ErrAuthorityExpired and nothing deleted", r, err)
			}
			if e.streamMsgs("job_1") != 5 || !e.consumerExists("job_1", "job-1-consumer") || !e.consumerExists("advisories", "job-1-dlq") {
				t.Fatal("something was deleted without authority")
			}
		})
	}
}

// TestAuthorityIsCheckedBeforeEveryRequest: an authority that runs out
// after the lookups stops the deletes; nothing is sent after it ended.
func TestAuthorityIsCheckedBeforeEveryRequest(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.provision(1, 5, nil)
	start := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var calls atomic.Int64
	clock := func() time.Time {
		if calls.Add(1) <= 1 { // the stream lookup's check
			return start
		}
		return start.Add(time.Hour)
	}
	r, err := e.janitor(WithClock(clock)).Remove(t.Context(), 1,
		Fence{CreatedBefore: time.Now().Add(time.Hour)}, fixedAuthority(start.Add(time.Minute)))
	if !errors.Is(err, ErrAuthorityExpired) || r.Removed() {
		t.Fatalf("Remove = %+v, %v; want ErrAuthorityExpired and nothing deleted", r, err)
	}
	if e.streamMsgs("job_1") != 5 || !e.consumerExists("advisories", "job-1-dlq") {
		t.Fatal("a delete was sent after the authority ended")
	}
	if calls.Load() < 2 {
		t.Errorf("the authority was checked %d times, want before each request", calls.Load())
	}
}
