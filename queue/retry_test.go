package queue

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestIsTransient(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"deadline exceeded", context.DeadlineExceeded, true},
		{"nats timeout", nats.ErrTimeout, true},
		{"no responders", nats.ErrNoResponders, true},
		{"no stream response", jetstream.ErrNoStreamResponse, true},
		{"503 10008 leader election", &jetstream.APIError{Code: 503, ErrorCode: 10008}, true},
		{"500 10009 not leader", &jetstream.APIError{Code: 500, ErrorCode: 10009}, true},
		{"503 any code", &jetstream.APIError{Code: 503}, true},
		{"wrapped timeout", fmt.Errorf("stream info: %w", nats.ErrTimeout), true},
		{"wrapped 10008", fmt.Errorf("delete: %w", &jetstream.APIError{Code: 503, ErrorCode: 10008}), true},
		{"wrapped twice deadline", fmt.Errorf("a: %w", fmt.Errorf("b: %w", context.DeadlineExceeded)), true},
		{"500 10051 stream closed (deleted meanwhile)", &jetstream.APIError{Code: 500, ErrorCode: 10051, Description: "stream closed"}, true},
		{"500 10051 other general error", &jetstream.APIError{Code: 500, ErrorCode: 10051, Description: "bad things"}, false},
		{"connection closed", nats.ErrConnectionClosed, false},
		{"jetstream connection closed", jetstream.ErrConnectionClosed, false},
		{"wrapped connection closed", fmt.Errorf("x: %w", nats.ErrConnectionClosed), false},
		{"canceled", context.Canceled, false},
		{"stream not found", jetstream.ErrStreamNotFound, false},
		{"consumer not found", jetstream.ErrConsumerNotFound, false},
		{"400 10059", &jetstream.APIError{Code: 400, ErrorCode: 10059}, false},
		{"permission", &jetstream.APIError{Code: 403}, false},
		{"plain error", errors.New("boom"), false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := IsTransient(tt.err); got != tt.want {
				t.Fatalf("IsTransient(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestRetryPolicyValidate(t *testing.T) {
	t.Parallel()
	if err := DefaultRetryPolicy().Validate(); err != nil {
		t.Fatalf("DefaultRetryPolicy().Validate() = %v", err)
	}
	ok := fastRetry()
	tests := []struct {
		name string
		edit func(*RetryPolicy)
	}{
		{"zero initial", func(p *RetryPolicy) { p.Initial = 0 }},
		{"max below initial", func(p *RetryPolicy) { p.Max = p.Initial - 1 }},
		{"zero max elapsed", func(p *RetryPolicy) { p.MaxElapsed = 0 }},
		{"negative attempt timeout", func(p *RetryPolicy) { p.AttemptTimeout = -time.Second }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := ok
			tt.edit(&p)
			if err := p.Validate(); err == nil {
				t.Fatalf("Validate(%+v) = nil, want an error", p)
			}
		})
	}
}

// TestRetrierStopsOnPermanentError checks the classification drives the
// loop: transient errors are retried and reported, a permanent one ends it.
func TestRetrierStopsOnPermanentError(t *testing.T) {
	t.Parallel()
	var seen []int
	observe := func(_ context.Context, op string, attempt int, err error, wait time.Duration) {
		if op != "op" || !errors.Is(err, nats.ErrTimeout) || wait <= 0 {
			t.Errorf("observer got %q attempt %d err %v wait %s", op, attempt, err, wait)
		}
		seen = append(seen, attempt)
	}
	r := newRetrier(fastRetry(), nil, observe)
	calls := 0
	err := r.do(t.Context(), "op", nil, func(ctx context.Context) error {
		calls++
		if _, ok := ctx.Deadline(); !ok {
			t.Error("attempt context has no deadline")
		}
		if calls < 3 {
			return nats.ErrTimeout
		}
		return jetstream.ErrStreamNotFound
	})
	if !errors.Is(err, jetstream.ErrStreamNotFound) || calls != 3 || len(seen) != 2 || seen[0] != 1 || seen[1] != 2 {
		t.Fatalf("do = %v after %d calls, observer saw %v; want stream not found after 3 calls, retries [1 2]",
			err, calls, seen)
	}
}
