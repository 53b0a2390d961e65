// Package events holds the contract between the job backend and
// queue-janitor: the job-status CloudEvents it reads (decoded from either
// content mode of the NATS protocol binding, see [Decoder]), the events it
// emits ([Publisher]), and the durable intake that feeds events to a
// [Handler] and settles each JetStream message in one place ([Intake]).
package events

import (
	"strings"
	"time"

	"github.com/example/queue-janitor/queue"
)

// Status is a job status as it appears in a subject token: lower case.
type Status string

// The backend's job states, plus the operator's CANCELLED and the restart
// request. Unknown statuses are valid events that the service ignores.
const (
	StatusCreated          Status = "created"
	StatusPending          Status = "pending"
	StatusStarted          Status = "started"
	StatusSuccess          Status = "success"
	StatusFailure          Status = "failure"
	StatusRetry            Status = "retry"
	StatusCanceling        Status = "canceling"
	StatusRevoked          Status = "revoked"
	StatusReceived         Status = "received"
	StatusUnknown          Status = "unknown"
	StatusCancelled        Status = "cancelled"
	StatusRestartRequested Status = "restart_requested"
)

// ParseStatus normalizes a status from a subject token or event data.
func ParseStatus(s string) Status { return Status(strings.ToLower(strings.TrimSpace(s))) }

// DispatchModeAsyncAPI is the only dispatch mode whose jobs have queues.
const DispatchModeAsyncAPI = "async_api"

// JobStatus is a decoded, validated job-status event.
type JobStatus struct {
	// ID, Source and Type are the CloudEvents attributes.
	ID     string
	Source string
	Type   string
	// Time is when the transition happened, by the producer's clock; it is
	// set for every terminal or restart event and may be zero for others.
	// It is for display and lag: decisions use Stored.
	Time time.Time
	// Stored is when the event reached the event stream, in the NATS
	// server's clock (the JetStream message timestamp). The intake sets it;
	// events are ordered and streams fenced by it.
	Stored time.Time
	// JobID is the job, from both the `subject` attribute and data.job_id.
	JobID queue.JobID
	// Status is the new status, lower case.
	Status Status
	// PreviousStatus is the status before the transition, if sent.
	PreviousStatus Status
	// Attempt is the run number; meaningful only when HasAttempt.
	Attempt    int64
	HasAttempt bool
	// DispatchMode is the job's dispatch mode, "" when not sent.
	DispatchMode string
	// Reason and Actor explain the transition, for logs.
	Reason string
	Actor  string
	// TraceParent and TraceState are the distributed-tracing extension.
	TraceParent string
	TraceState  string
	// Subject is the NATS subject the event arrived on.
	Subject string
}

// HasQueue reports whether the job has a task queue at all: jobs that are
// not dispatched through the async API never do.
func (e JobStatus) HasQueue() bool {
	return e.DispatchMode == "" || e.DispatchMode == DispatchModeAsyncAPI
}
