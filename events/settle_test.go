package events

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// fakeMsg is a delivered JetStream message that records how it was settled.
type fakeMsg struct {
	subject string
	header  nats.Header
	data    []byte
	meta    *jetstream.MsgMetadata

	mu    sync.Mutex
	calls []string
}

var _ jetstream.Msg = (*fakeMsg)(nil)

func (m *fakeMsg) record(s string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, s)
	return nil
}

func (m *fakeMsg) settled() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.calls)
}

func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) { return m.meta, nil }
func (m *fakeMsg) Data() []byte                              { return m.data }
func (m *fakeMsg) Headers() nats.Header                      { return m.header }
func (m *fakeMsg) Subject() string                           { return m.subject }
func (m *fakeMsg) Reply() string                             { return "" }
func (m *fakeMsg) Ack() error                                { return m.record("ack") }
func (m *fakeMsg) DoubleAck(context.Context) error           { return m.record("ack") }
func (m *fakeMsg) Nak() error                                { return m.record("nak") }
func (m *fakeMsg) NakWithDelay(d time.Duration) error        { return m.record("nak " + d.String()) }
func (m *fakeMsg) InProgress() error                         { return nil }
func (m *fakeMsg) Term() error                               { return m.record("term") }
func (m *fakeMsg) TermWithReason(r string) error             { return m.record("term " + r) }

// handlerFunc adapts a function to Handler.
type handlerFunc func(context.Context, JobStatus) (Outcome, error)

func (f handlerFunc) Handle(ctx context.Context, ev JobStatus) (Outcome, error) { return f(ctx, ev) }

// newTestIntake is an Intake whose dead letters go to env's NATS server; it
// is fed through receive, as the consumer would.
func newTestIntake(t *testing.T, env pubEnv, h Handler) *Intake {
	t.Helper()
	in := NewIntake(nil, DefaultIntakeConfig(), testDecoder(), h, env.pub,
		IntakeDeps{Logger: zerolog.New(zerolog.NewTestWriter(t))})
	return in
}

// deliver hands msg to the intake and waits until it is settled.
func deliver(t *testing.T, in *Intake, msg *fakeMsg) {
	t.Helper()
	in.receive(t.Context(), msg)
	waitDispatcher(t, in.dispatch)
}

// statusMsg is a valid revoked event for job 42, delivered n times.
func statusMsg(t *testing.T, delivered uint64) *fakeMsg {
	t.Helper()
	h, body := structured(baseSpec("revoked"))
	return &fakeMsg{subject: "job.status.revoked", header: h, data: body,
		meta: &jetstream.MsgMetadata{NumDelivered: delivered, Stream: "JOB_EVENTS", Sequence: jetstream.SequencePair{Stream: 9}}}
}

func TestIntakeSettle(t *testing.T) {
	t.Parallel()
	transient := errors.New("jetstream: timeout")
	tests := []struct {
		name      string
		delivered uint64
		invalid   bool // the message does not decode
		result    error
		panics    bool
		want      string // the settle call
		dead      Reason // "" means no dead letter
		// anyReason checks only that the message was terminated and
		// dead-lettered, whatever the reason.
		anyReason bool
	}{
		{name: "done", delivered: 1, want: "ack"},
		{name: "transient, first delivery", delivered: 1, result: transient, want: "nak 1s"},
		{name: "transient, third delivery", delivered: 3, result: transient, want: "nak 4s"},
		{name: "transient, last delivery", delivered: 10, result: transient, want: "term retries_exhausted", dead: ReasonRetriesExhausted},
		{name: "handler panic", delivered: 2, panics: true, want: "nak 2s"},
		{name: "handler panic, last delivery", delivered: 10, panics: true, want: "term retries_exhausted", dead: ReasonRetriesExhausted},
		{name: "undecodable", delivered: 1, invalid: true, want: "term bad_job_id", dead: ReasonBadJobID},
		{name: "handler says invalid", delivered: 1, result: &InvalidError{Reason: ReasonBadData, Detail: "x"}, want: "term bad_data", dead: ReasonBadData},
		{
			name: "handler wraps ErrInvalid", delivered: 1, result: fmt.Errorf("job 42: %w", ErrInvalid),
			want: "term", dead: "any", anyReason: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := setupPublisher(t)
			next := env.subscribe(t, "job.deadletter.status")
			var handled []JobStatus
			in := newTestIntake(t, env, handlerFunc(func(_ context.Context, ev JobStatus) (Outcome, error) {
				handled = append(handled, ev)
				if tc.panics {
					panic("boom")
				}
				return Outcome{Decision: DecisionCleanup, Result: OutcomeRemoved}, tc.result
			}))
			msg := statusMsg(t, tc.delivered)
			if tc.invalid {
				msg.data = []byte(`{"specversion":"1.0","id":"a","source":"s","type":"job.status.revoked","subject":"1.>","data":{}}`)
			}
			deliver(t, in, msg)

			got := msg.settled()
			if tc.anyReason && len(got) == 1 {
				got[0], _, _ = strings.Cut(got[0], " ")
			}
			if !slices.Equal(got, []string{tc.want}) {
				t.Errorf("settled with %q, want [%s]", msg.settled(), tc.want)
			}
			if wantCalls := map[bool]int{true: 0, false: 1}[tc.invalid]; len(handled) != wantCalls || (wantCalls == 1 && handled[0].JobID != 42) {
				t.Errorf("handler saw %+v, want %d call(s) for job 42", handled, wantCalls)
			}
			// A marker published after settling comes first unless a
			// dead letter was sent before it.
			if err := env.nc.Publish("job.deadletter.status", []byte("marker")); err != nil {
				t.Fatalf("publish marker: %v", err)
			}
			first := next()
			switch {
			case tc.dead == "" && string(first.Data) != "marker":
				t.Errorf("unexpected dead letter %s", first.Data)
			case tc.anyReason && first.Header.Get(ReasonHeader) == "":
				t.Errorf("no dead letter before %s", first.Data)
			case tc.dead != "" && !tc.anyReason && first.Header.Get(ReasonHeader) != string(tc.dead):
				t.Errorf("dead letter reason %q (%s), want %q", first.Header.Get(ReasonHeader), first.Data, tc.dead)
			}
		})
	}
}

// TestIntakeSettleDeadLetterFails checks that an event is never dropped:
// when its dead letter cannot be sent, it is retried instead of terminated.
func TestIntakeSettleDeadLetterFails(t *testing.T) {
	t.Parallel()
	env := setupPublisher(t)
	in := newTestIntake(t, env, handlerFunc(func(context.Context, JobStatus) (Outcome, error) {
		t.Error("handler called for an invalid event")
		return Outcome{}, nil
	}))
	env.nc.Close()
	msg := statusMsg(t, 2)
	msg.subject = "job.status.REVOKED"
	deliver(t, in, msg)
	if got := msg.settled(); !slices.Equal(got, []string{"nak 2s"}) {
		t.Errorf("settled with %q, want [nak 2s]", got)
	}
}

// TestIntakeReceiveWhileStopping checks that a message taken from the
// buffer after shutdown began goes straight back.
func TestIntakeReceiveWhileStopping(t *testing.T) {
	t.Parallel()
	env := setupPublisher(t)
	in := newTestIntake(t, env, handlerFunc(func(context.Context, JobStatus) (Outcome, error) {
		t.Error("handler called while stopping")
		return Outcome{}, nil
	}))
	in.stopping.Store(true)
	msg := statusMsg(t, 1)
	deliver(t, in, msg)
	if got := msg.settled(); !slices.Equal(got, []string{"nak"}) {
		t.Errorf("settled with %q, want [nak]", got)
	}
}
