package events

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"

	"github.com/example/queue-janitor/queue"
	"github.com/example/queue-janitor/telemetry"
)

// StatusEvent describes a job-status event to publish, as the backend would.
type StatusEvent struct {
	JobID  queue.JobID
	Status Status
	// Attempt is sent when not nil.
	Attempt *int64
	// Time defaults to now.
	Time time.Time
	// ID defaults to a new UUID; Source to "queue-janitor/emit".
	ID     string
	Source string
	// TypePrefix goes before "job.status.<status>", e.g. "org.example.".
	TypePrefix     string
	PreviousStatus Status
	DispatchMode   string
	Reason         string
	Actor          string
	// Binary selects binary content mode (ce- headers) over structured.
	Binary bool
}

// statusPayload is the data of a job-status event.
type statusPayload struct {
	JobID          queue.JobID `json:"job_id"`
	Status         string      `json:"status"`
	PreviousStatus string      `json:"previous_status,omitempty"`
	Attempt        *int64      `json:"attempt,omitempty"`
	DispatchMode   string      `json:"dispatch_mode,omitempty"`
	Reason         string      `json:"reason,omitempty"`
	Actor          string      `json:"actor,omitempty"`
}

// Msg builds the NATS message for e on subjectPrefix+status (e.g.
// "job.status.revoked"), carrying the trace context of ctx. Data's status is
// upper case, as the backend writes it.
func (e StatusEvent) Msg(ctx context.Context, subjectPrefix string) (*nats.Msg, error) {
	if !e.JobID.Valid() {
		return nil, fmt.Errorf("status event: %w: %d", queue.ErrInvalidJobID, e.JobID)
	}
	if e.Status == "" {
		return nil, fmt.Errorf("status event: status is required")
	}
	if e.ID == "" {
		e.ID = uuid.NewString()
	}
	if e.Source == "" {
		e.Source = "queue-janitor/emit"
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	status := strings.ToLower(string(e.Status))
	data, err := json.Marshal(statusPayload{
		JobID: e.JobID, Status: strings.ToUpper(status), PreviousStatus: strings.ToUpper(string(e.PreviousStatus)),
		Attempt: e.Attempt, DispatchMode: e.DispatchMode, Reason: e.Reason, Actor: e.Actor,
	})
	if err != nil {
		return nil, fmt.Errorf("status event data: %w", err)
	}
	traceparent, tracestate := telemetry.TraceContext(ctx)
	msg := &nats.Msg{Subject: subjectPrefix + status, Header: nats.Header{}}
	typ := e.TypePrefix + "job.status." + status
	if e.Binary {
		h := msg.Header
		h.Set("ce-specversion", event.CloudEventsVersionV1)
		h.Set("ce-id", e.ID)
		h.Set("ce-source", e.Source)
		h.Set("ce-type", typ)
		h.Set("ce-subject", e.JobID.String())
		h.Set("ce-time", e.Time.UTC().Format(time.RFC3339Nano))
		h.Set("Content-Type", event.ApplicationJSON)
		if traceparent != "" {
			h.Set("ce-traceparent", traceparent)
			if tracestate != "" {
				h.Set("ce-tracestate", tracestate)
			}
		}
		msg.Data = data
		return msg, nil
	}
	ev := event.New()
	ev.SetID(e.ID)
	ev.SetSource(e.Source)
	ev.SetType(typ)
	ev.SetSubject(e.JobID.String())
	ev.SetTime(e.Time)
	if err := ev.SetData(event.ApplicationJSON, json.RawMessage(data)); err != nil {
		return nil, fmt.Errorf("status event data: %w", err)
	}
	if traceparent != "" {
		ev.SetExtension("traceparent", traceparent)
		if tracestate != "" {
			ev.SetExtension("tracestate", tracestate)
		}
	}
	if msg.Data, err = json.Marshal(ev); err != nil {
		return nil, fmt.Errorf("status event: %w", err)
	}
	msg.Header.Set("Content-Type", ContentTypeCloudEventsJSON)
	return msg, nil
}

// Attempt returns a pointer to n, for StatusEvent.Attempt.
func Attempt(n int64) *int64 { return &n }

// FormatAttempt renders an optional attempt for logs and tables.
func FormatAttempt(a *int64) string {
	if a == nil {
		return "-"
	}
	return strconv.FormatInt(*a, 10)
}
