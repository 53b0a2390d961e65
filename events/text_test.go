package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// badMarker is replaced with invalid UTF-8 after an event is rendered (the
// renderers' JSON encoding would repair it otherwise).
const badMarker = "@@BAD@@"

// renderBad renders spec in mode with every badMarker replaced by bad.
func renderBad(mode contentMode, spec eventSpec, bad string) (nats.Header, []byte) {
	h, body := mode.render(spec)
	for k, vs := range h {
		for i, v := range vs {
			h[k][i] = strings.ReplaceAll(v, badMarker, bad)
		}
	}
	return h, bytes.ReplaceAll(body, []byte(badMarker), []byte(bad))
}

// TestDecodeRefusesInvalidText: text that is not valid UTF-8, in any
// attribute or data field, in either content mode, is refused as malformed
// instead of being replaced by U+FFFD and handled; so is a JSON escape of an
// unpaired surrogate, which JSON decoding would replace too.
func TestDecodeRefusesInvalidText(t *testing.T) {
	t.Parallel()
	revoked := baseSpec("revoked")
	tests := []struct {
		name string
		spec eventSpec
		bad  string
		// jsonOnly: the bad text is a JSON escape, which binary-mode
		// headers do not have.
		jsonOnly bool
	}{
		{name: "id", spec: revoked.with("id", "evt-"+badMarker), bad: "\xff"},
		{name: "source", spec: revoked.with("source", "backend"+badMarker), bad: "\xc3\x28"},
		{name: "traceparent extension", spec: revoked.with("traceparent", badMarker), bad: "\xed\xa0\x80"},
		{name: "data.actor", spec: revoked.withData(`{"job_id":42,"status":"REVOKED","actor":"al` + badMarker + `ce"}`), bad: "\xe9"},
		{name: "data.reason", spec: revoked.withData(`{"job_id":42,"status":"REVOKED","reason":"` + badMarker + `"}`), bad: "\xf0\x28\x8c\x28"},
		{name: "data.previous_status", spec: revoked.withData(`{"job_id":42,"status":"REVOKED","previous_status":"` + badMarker + `"}`), bad: "\x80"},
		{name: "lone low surrogate escape", spec: revoked.withData(`{"job_id":42,"status":"REVOKED","actor":"` + badMarker + `"}`), bad: `\udc00`, jsonOnly: true},
		{name: "lone high surrogate escape", spec: revoked.withData(`{"job_id":42,"status":"REVOKED","actor":"x` + badMarker + `y"}`), bad: `\ud83d`, jsonOnly: true},
	}
	for _, tc := range tests {
		for _, mode := range contentModes {
			t.Run(tc.name+"/"+mode.name, func(t *testing.T) {
				t.Parallel()
				h, body := renderBad(mode, tc.spec, tc.bad)
				got, err := testDecoder().Decode("job.status.revoked", h, body)
				wantInvalid(t, err, ReasonMalformed)
				if err == nil {
					t.Logf("accepted as %+v", got)
				}
			})
		}
	}
	// Valid text, escapes included, is accepted and decoded.
	for _, mode := range contentModes {
		spec := revoked.withData(`{"job_id":42,"status":"REVOKED","actor":"al\u00e9 \ud83d\ude00 \\udc00 \"q\"","reason":"été"}`)
		h, body := mode.render(spec)
		got, err := testDecoder().Decode("job.status.revoked", h, body)
		if err != nil {
			t.Errorf("%s: valid text refused: %v", mode.name, err)
			continue
		}
		if got.Actor != `alé 😀 \udc00 "q"` || got.Reason != "été" {
			t.Errorf("%s: actor %q, reason %q", mode.name, got.Actor, got.Reason)
		}
	}
}

// TestDecodeKeepsIDOfInvalidEvent: whatever makes an event invalid, the id
// comes back with the error whenever it could be read, so that the
// dead-letter line names the event.
func TestDecodeKeepsIDOfInvalidEvent(t *testing.T) {
	t.Parallel()
	revoked := baseSpec("revoked")
	tests := []struct {
		name   string
		spec   eventSpec
		bad    string
		reason Reason
		wantID string
	}{
		{"job id mismatch", revoked.withData(`{"job_id":43,"status":"REVOKED"}`), "", ReasonJobIDMismatch, "evt-1"},
		{"missing time", revoked.without("time"), "", ReasonMissingTime, "evt-1"},
		{"status mismatch", revoked.withData(`{"job_id":42,"status":"STARTED"}`), "", ReasonStatusMismatch, "evt-1"},
		{"bad type", revoked.with("type", "job.status.started"), "", ReasonBadType, "evt-1"},
		{"invalid text in data", revoked.withData(`{"job_id":42,"status":"REVOKED","actor":"` + badMarker + `"}`), "\xff", ReasonMalformed, "evt-1"},
		{"invalid text in the id", revoked.with("id", badMarker), "\xff", ReasonMalformed, ""},
		{"blank id", revoked.with("id", " "), "", "", ""}, // missing_attribute, or malformed in binary mode
	}
	for _, tc := range tests {
		for _, mode := range contentModes {
			t.Run(tc.name+"/"+mode.name, func(t *testing.T) {
				t.Parallel()
				h, body := renderBad(mode, tc.spec, tc.bad)
				got, err := testDecoder().Decode("job.status.revoked", h, body)
				if tc.reason != "" {
					wantInvalid(t, err, tc.reason)
				} else if !errors.Is(err, ErrInvalid) {
					t.Errorf("err = %v, want an invalid event", err)
				}
				if got.ID != tc.wantID {
					t.Errorf("id with the error = %q, want %q", got.ID, tc.wantID)
				}
			})
		}
	}
}

// TestDeadLetterLineCarriesEventID: the log line of a dead-lettered event
// names it by its id when it could be read, though its job id could not.
func TestDeadLetterLineCarriesEventID(t *testing.T) {
	t.Parallel()
	env := setupPublisher(t)
	next := env.subscribe(t, "job.deadletter.status")
	var logs lockedBuffer
	in := NewIntake(nil, DefaultIntakeConfig(), testDecoder(), handlerFunc(func(context.Context, JobStatus) (Outcome, error) {
		t.Error("handler called for an invalid event")
		return Outcome{}, nil
	}), env.pub, IntakeDeps{Logger: zerolog.New(io.MultiWriter(zerolog.NewTestWriter(t), &logs))})

	for _, mode := range contentModes[:2] {
		msg := statusMsg(t, 1)
		msg.header, msg.data = mode.render(baseSpec("revoked").with("id", "evt-"+mode.name).withData(`{"job_id":43,"status":"REVOKED"}`))
		deliver(t, in, msg)
		if dl := next(); dl.Header.Get(ReasonHeader) != string(ReasonJobIDMismatch) {
			t.Errorf("%s: dead letter reason %q, want %s", mode.name, dl.Header.Get(ReasonHeader), ReasonJobIDMismatch)
		}
	}
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var line map[string]any
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		lines = append(lines, line)
	}
	if len(lines) != 2 {
		t.Fatalf("%d log lines, want 2:\n%s", len(lines), logs.String())
	}
	for i, mode := range contentModes[:2] {
		if got := lines[i]["event_id"]; got != "evt-"+mode.name || lines[i]["decision"] != string(DecisionDeadLetter) {
			t.Errorf("%s: dead-letter line has event_id %v (decision %v), want evt-%s", mode.name, got, lines[i]["decision"], mode.name)
		}
	}
}

func TestBadSurrogateEscape(t *testing.T) {
	t.Parallel()
	for text, want := range map[string]int{
		`"plain"`:                -1,
		`"\u0041\n\"\\"`:         -1,
		`"\ud83d\ude00"`:         -1,
		`"\\udc00"`:              -1,
		`"\ud83d"`:               1,
		`"\udc00"`:               1,
		`"ab\ud83d\u0041"`:       3,
		`"\ude00\ud83d"`:         1,
		`"\ud83d\ude00\udc00"`:   13,
		`"x\\\udc00"`:            4,
		`"\u12"`:                 -1, // not an escape JSON accepts; the decoder refuses it
		`{"a":"\uD83D\uDE00"}`:   -1,
		`{"a":"\uDBFF\uDFFF\\"}`: -1,
	} {
		if got := badSurrogateEscape([]byte(text)); got != want {
			t.Errorf("badSurrogateEscape(%s) = %d, want %d", text, got, want)
		}
	}
}
