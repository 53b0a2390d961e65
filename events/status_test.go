package events

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/example/queue-janitor/queue"
)

// remoteSpan returns ctx carrying a sampled span context with tracestate.
func remoteSpan(ctx context.Context, t *testing.T) (context.Context, trace.SpanContext) {
	t.Helper()
	ts, err := trace.ParseTraceState("vendor=opaque")
	if err != nil {
		t.Fatalf("ParseTraceState: %v", err)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		TraceFlags: trace.FlagsSampled,
		TraceState: ts,
		Remote:     true,
	})
	if !sc.IsValid() {
		t.Fatal("span context is not valid")
	}
	return trace.ContextWithSpanContext(ctx, sc), sc
}

func TestStatusEventRoundTrip(t *testing.T) {
	t.Parallel()
	// A non-UTC zone and full nanoseconds: RFC 3339 keeps the instant.
	when := time.Date(2025, 6, 7, 8, 9, 10, 987654321, time.FixedZone("CEST", 2*3600))
	tests := []struct {
		name    string
		ev      StatusEvent
		traced  bool
		subject string
		want    JobStatus
	}{
		{
			name: "revoked, all fields",
			ev: StatusEvent{
				JobID: 7, Status: StatusRevoked, Attempt: Attempt(4), Time: when, ID: "evt-7", Source: "backend",
				TypePrefix: "org.example.", PreviousStatus: StatusStarted, DispatchMode: DispatchModeAsyncAPI,
				Reason: "user stopped it", Actor: "user",
			},
			want: JobStatus{
				ID: "evt-7", Source: "backend", Type: "org.example.job.status.revoked", Time: when, JobID: 7,
				Status: StatusRevoked, PreviousStatus: StatusStarted, Attempt: 4, HasAttempt: true,
				DispatchMode: DispatchModeAsyncAPI, Reason: "user stopped it", Actor: "user", Subject: "job.status.revoked",
			},
		},
		{
			name: "restart requested, attempt 0, traced",
			ev: StatusEvent{
				JobID: 9223372036854775807, Status: "RESTART_REQUESTED", Attempt: Attempt(0), Time: when, ID: "evt-8",
				Actor: "watchdog",
			},
			traced: true,
			want: JobStatus{
				ID: "evt-8", Source: "queue-janitor/emit", Type: "job.status.restart_requested", Time: when,
				JobID: 9223372036854775807, Status: StatusRestartRequested, Attempt: 0, HasAttempt: true,
				Actor: "watchdog", Subject: "job.status.restart_requested",
				TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", TraceState: "vendor=opaque",
			},
		},
		{
			name: "failure without attempt",
			ev:   StatusEvent{JobID: 1, Status: StatusFailure, Time: when, ID: "evt-9", DispatchMode: "sync_api"},
			want: JobStatus{
				ID: "evt-9", Source: "queue-janitor/emit", Type: "job.status.failure", Time: when, JobID: 1,
				Status: StatusFailure, DispatchMode: "sync_api", Subject: "job.status.failure",
			},
		},
	}
	for _, tc := range tests {
		for _, binary := range []bool{false, true} {
			name := tc.name + "/structured"
			if binary {
				name = tc.name + "/binary"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				ctx := t.Context()
				if tc.traced {
					ctx, _ = remoteSpan(ctx, t)
				}
				ev := tc.ev
				ev.Binary = binary
				msg, err := ev.Msg(ctx, "job.status.")
				if err != nil {
					t.Fatalf("Msg: %v", err)
				}
				if msg.Subject != tc.want.Subject {
					t.Errorf("NATS subject = %q, want %q", msg.Subject, tc.want.Subject)
				}
				ct := msg.Header.Get("Content-Type")
				if wantCT := map[bool]string{false: ContentTypeCloudEventsJSON, true: "application/json"}[binary]; ct != wantCT {
					t.Errorf("Content-Type = %q, want %q", ct, wantCT)
				}
				got, err := testDecoder().Decode(msg.Subject, msg.Header, msg.Data)
				if err != nil {
					t.Fatalf("Decode: %v\nheader: %v\nbody: %s", err, msg.Header, msg.Data)
				}
				assertJobStatus(t, got, tc.want)
			})
		}
	}
}

// TestStatusEventDefaults checks the defaults Msg fills in: a fresh id and
// the current time.
func TestStatusEventDefaults(t *testing.T) {
	t.Parallel()
	before := time.Now()
	msg, err := StatusEvent{JobID: 3, Status: StatusRevoked}.Msg(t.Context(), "job.status.")
	if err != nil {
		t.Fatalf("Msg: %v", err)
	}
	got, err := testDecoder().Decode(msg.Subject, msg.Header, msg.Data)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if got.ID == "" || got.Source != "queue-janitor/emit" {
		t.Errorf("id %q source %q, want a generated id and queue-janitor/emit", got.ID, got.Source)
	}
	if got.Time.Before(before) || got.Time.After(time.Now()) {
		t.Errorf("time %v is not the time of Msg (after %v)", got.Time, before)
	}
	if got.TraceParent != "" {
		t.Errorf("TraceParent = %q without a span in ctx", got.TraceParent)
	}
}

func TestStatusEventMsgErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ev   StatusEvent
		is   error // nil: any error
	}{
		{name: "zero job id", ev: StatusEvent{Status: StatusRevoked}, is: queue.ErrInvalidJobID},
		{name: "negative job id", ev: StatusEvent{JobID: -1, Status: StatusRevoked}, is: queue.ErrInvalidJobID},
		{name: "no status", ev: StatusEvent{JobID: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			msg, err := tc.ev.Msg(t.Context(), "job.status.")
			if err == nil || msg != nil {
				t.Fatalf("Msg = %v, %v; want nil and an error", msg, err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err = %v, want errors.Is %v", err, tc.is)
			}
		})
	}
}

func TestSmallHelpers(t *testing.T) {
	t.Parallel()
	if got := ParseStatus("  Restart_Requested\n"); got != StatusRestartRequested {
		t.Errorf("ParseStatus = %q", got)
	}
	if got := FormatAttempt(nil); got != "-" {
		t.Errorf("FormatAttempt(nil) = %q, want -", got)
	}
	if got := FormatAttempt(Attempt(12)); got != "12" {
		t.Errorf("FormatAttempt(12) = %q, want 12", got)
	}
	for mode, want := range map[string]bool{"": true, DispatchModeAsyncAPI: true, "sync_api": false, "ASYNC_API": false} {
		if got := (JobStatus{DispatchMode: mode}).HasQueue(); got != want {
			t.Errorf("HasQueue(%q) = %v, want %v", mode, got, want)
		}
	}
}
