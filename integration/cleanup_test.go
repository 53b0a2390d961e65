package integration

import (
	"testing"
	"time"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// TestTerminalStatusRemovesOnlyThatJob: each terminal status removes the
// job's task consumer, stream and dead-letter consumer, and nothing else:
// not the advisories stream, not job_10 or job_11 beside job_1, not a
// stream outside the job pattern.
func TestTerminalStatusRemovesOnlyThatJob(t *testing.T) {
	t.Parallel()
	for _, status := range []events.Status{events.StatusRevoked, events.StatusFailure, events.StatusCancelled} {
		t.Run(string(status), func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			for _, id := range []queue.JobID{1, 10, 11} {
				e.provision(id, 50, nil)
			}
			if _, err := e.js.CreateStream(t.Context(), queue.Names{}.TaskStreamConfig(0, nil)); err == nil {
				t.Fatal("a stream config for job 0 must not be creatable")
			}
			other := queue.DefaultNames().TaskStreamConfig(1, nil)
			other.Name, other.Subjects = "job_1_archive", []string{"archive.job.1"}
			if _, err := e.js.CreateStream(t.Context(), other); err != nil {
				t.Fatal(err)
			}
			cleaned := subscribe(t, e.nc, "job.queue.cleaned.>")
			e.startService()

			e.emit(events.StatusEvent{JobID: 1, Status: status, Attempt: events.Attempt(1)})

			eventually(t, 10*time.Second, "job_1 gone", func() bool { return !streamExists(t, e.js, "job_1") })
			eventually(t, 10*time.Second, "cleaned event", func() bool { return cleaned.count() == 1 })
			if consumerExists(t, e.js, "advisories", "job-1-dlq") {
				t.Error("dead-letter consumer job-1-dlq still exists")
			}
			for _, keep := range []string{"job_10", "job_11", "advisories", "job_1_archive"} {
				if !streamExists(t, e.js, keep) {
					t.Errorf("stream %s was deleted", keep)
				}
			}
			for _, keep := range []string{"job-10-dlq", "job-11-dlq"} {
				if !consumerExists(t, e.js, "advisories", keep) {
					t.Errorf("consumer %s was deleted", keep)
				}
			}
			got := decodeEmitted(t, cleaned.all()[0])
			if got.NATSSubjectName != "job.queue.cleaned.1" || got.Data.JobID != 1 || got.Data.Outcome != events.OutcomeRemoved {
				t.Errorf("cleaned event = %s %+v", got.NATSSubjectName, got.Data)
			}
			if got.Data.MessagesDiscarded != 50 || len(got.Data.Deleted) != 3 {
				t.Errorf("cleaned event reports %d messages, deleted %v; want 50 and 3 resources",
					got.Data.MessagesDiscarded, got.Data.Deleted)
			}
		})
	}
}

// TestTerminalStatusesAreConfigurable: by default SUCCESS leaves the queue
// (the backend's drain owns finished jobs); with success added to
// --terminal-statuses it is cleaned like REVOKED.
func TestTerminalStatusesAreConfigurable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		args  []string
		clean bool
	}{
		{"default", nil, false},
		{"with success", []string{"--terminal-statuses", "revoked,failure,cancelled,success"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			e.provision(1, 20, events.Attempt(1))
			cleaned := subscribe(t, e.nc, "job.queue.cleaned.>")
			e.startService(tc.args...)
			e.emit(events.StatusEvent{JobID: 1, Status: events.StatusSuccess, Attempt: events.Attempt(1)})
			e.waitSettled(t)
			if tc.clean {
				eventually(t, 10*time.Second, "cleaned event", func() bool { return cleaned.count() == 1 })
				if streamExists(t, e.js, "job_1") || consumerExists(t, e.js, "advisories", "job-1-dlq") {
					t.Error("SUCCESS did not clean job 1 with success among the terminal statuses")
				}
				return
			}
			e.assertRun(t, 1, 20)
			if n := cleaned.count(); n != 0 {
				t.Errorf("%d cleaned events for a SUCCESS that is not terminal", n)
			}
		})
	}
}
