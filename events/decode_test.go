package events

import (
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

const (
	testTraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	testTraceState  = "vendor=opaque,other=1"
)

// wantRevoked is what baseSpec("revoked") decodes to.
func wantRevoked() JobStatus {
	return JobStatus{
		ID: "evt-1", Source: "backend", Type: "job.status.revoked", Time: eventTime,
		JobID: 42, Status: StatusRevoked, Attempt: 3, HasAttempt: true, Subject: "job.status.revoked",
	}
}

func TestDecodeValid(t *testing.T) {
	t.Parallel()
	revoked := baseSpec("revoked")
	tests := []struct {
		name    string
		subject string // default job.status.revoked
		spec    eventSpec
		want    func(*JobStatus)
	}{
		{name: "revoked", spec: revoked},
		{
			name: "reverse-DNS type prefix",
			spec: revoked.with("type", "org.example.job.status.revoked"),
			want: func(w *JobStatus) { w.Type = "org.example.job.status.revoked" },
		},
		{name: "lower-case data.status", spec: revoked.withData(`{"job_id":42,"status":"revoked","attempt":3}`)},
		{name: "mixed-case padded data.status", spec: revoked.withData(`{"job_id":42,"status":" Revoked ","attempt":3}`)},
		{
			name: "attempt absent",
			spec: revoked.withData(`{"job_id":42,"status":"REVOKED"}`),
			want: func(w *JobStatus) { w.Attempt, w.HasAttempt = 0, false },
		},
		{
			name: "attempt null",
			spec: revoked.withData(`{"job_id":42,"status":"REVOKED","attempt":null}`),
			want: func(w *JobStatus) { w.Attempt, w.HasAttempt = 0, false },
		},
		{
			name: "attempt 0",
			spec: revoked.withData(`{"job_id":42,"status":"REVOKED","attempt":0}`),
			want: func(w *JobStatus) { w.Attempt, w.HasAttempt = 0, true },
		},
		{
			name: "attempt max int64",
			spec: revoked.withData(`{"job_id":42,"status":"REVOKED","attempt":9223372036854775807}`),
			want: func(w *JobStatus) { w.Attempt = 9223372036854775807 },
		},
		{
			name: "job id max int64",
			spec: revoked.with("subject", "9223372036854775807").withData(`{"job_id":9223372036854775807,"status":"REVOKED","attempt":3}`),
			want: func(w *JobStatus) { w.JobID = 9223372036854775807 },
		},
		{
			name: "dispatch_mode async_api, upper case",
			spec: revoked.withData(`{"job_id":42,"status":"REVOKED","attempt":3,"dispatch_mode":"ASYNC_API"}`),
			want: func(w *JobStatus) { w.DispatchMode = DispatchModeAsyncAPI },
		},
		{
			name: "dispatch_mode sync_api",
			spec: revoked.withData(`{"job_id":42,"status":"REVOKED","attempt":3,"dispatch_mode":"sync_api"}`),
			want: func(w *JobStatus) { w.DispatchMode = "sync_api" },
		},
		{
			name: "previous_status, reason, actor",
			spec: revoked.withData(`{"job_id":42,"status":"REVOKED","attempt":3,"previous_status":"STARTED","reason":"Stopped by user","actor":"admin"}`),
			want: func(w *JobStatus) { w.PreviousStatus, w.Reason, w.Actor = StatusStarted, "Stopped by user", "admin" },
		},
		{
			name: "traceparent and tracestate extension",
			spec: revoked.with("traceparent", testTraceParent, "tracestate", testTraceState),
			want: func(w *JobStatus) { w.TraceParent, w.TraceState = testTraceParent, testTraceState },
		},
		{
			name: "JSON datacontenttype with parameters",
			spec: revoked.with("datacontenttype", "application/json; charset=utf-8"),
		},
		{
			name:    "non-terminal status without time",
			subject: "job.status.started",
			spec:    baseSpec("started").without("time"),
			want: func(w *JobStatus) {
				w.Type, w.Status, w.Subject, w.Time = "job.status.started", StatusStarted, "job.status.started", time.Time{}
			},
		},
		{
			name:    "restart_requested with time",
			subject: "job.status.restart_requested",
			spec:    baseSpec("restart_requested"),
			want: func(w *JobStatus) {
				w.Type, w.Status, w.Subject = "job.status.restart_requested", StatusRestartRequested, "job.status.restart_requested"
			},
		},
	}
	for _, tc := range tests {
		for _, mode := range contentModes {
			t.Run(tc.name+"/"+mode.name, func(t *testing.T) {
				t.Parallel()
				subject := tc.subject
				if subject == "" {
					subject = "job.status.revoked"
				}
				want := wantRevoked()
				if tc.want != nil {
					tc.want(&want)
				}
				h, body := mode.render(tc.spec)
				got, err := testDecoder().Decode(subject, h, body)
				if err != nil {
					t.Fatalf("Decode: %v\nheader: %v\nbody: %s", err, h, body)
				}
				assertJobStatus(t, got, want)
			})
		}
	}
}

// invalidCase is an event that Decode must reject with reason.
type invalidCase struct {
	name    string
	subject string // default job.status.revoked
	spec    eventSpec
	reason  Reason
	// structured overrides reason in structured mode, where sdk-go parses
	// the whole body and so rejects invalid JSON itself.
	structured Reason
	// structuredOnly skips the binary modes.
	structuredOnly bool
}

func TestDecodeInvalid(t *testing.T) {
	t.Parallel()
	revoked := baseSpec("revoked")
	data := func(fields string) eventSpec { return revoked.withData(`{` + fields + `}`) }
	tests := []invalidCase{
		{name: "missing subject attribute", spec: revoked.without("subject"), reason: ReasonMissingAttribute},
		{name: "blank subject attribute", spec: revoked.with("subject", " "), reason: ReasonMissingAttribute},
		{name: "missing id", spec: revoked.without("id"), reason: ReasonMissingAttribute},
		{name: "missing source", spec: revoked.without("source"), reason: ReasonMissingAttribute},
		{name: "missing type", spec: revoked.without("type"), reason: ReasonMissingAttribute},
		{name: "subject vs data.job_id", spec: revoked.with("subject", "43"), reason: ReasonJobIDMismatch},
		{name: "job_1 is not job_10", spec: revoked.with("subject", "1").withData(`{"job_id":10,"status":"REVOKED"}`), reason: ReasonJobIDMismatch},
		{name: "subject token vs data.status", spec: data(`"job_id":42,"status":"FAILURE"`), reason: ReasonStatusMismatch},
		{name: "blank data.status", spec: data(`"job_id":42,"status":" "`), reason: ReasonStatusMismatch},
		{name: "type of another status", spec: revoked.with("type", "job.status.failure"), reason: ReasonBadType},
		{name: "type with a longer status", spec: revoked.with("type", "job.status.revoked_x"), reason: ReasonBadType},
		{name: "type prefix without dot", spec: revoked.with("type", "orgjob.status.revoked"), reason: ReasonBadType},
		{name: "type of another event", spec: revoked.with("type", "job.queue.cleaned"), reason: ReasonBadType},
		{name: "specversion 0.3", spec: revoked.with("specversion", "0.3"), reason: ReasonSpecVersion},
		{name: "specversion 2.0", spec: revoked.with("specversion", "2.0"), reason: ReasonSpecVersion},
		{name: "invalid time", spec: revoked.with("time", "yesterday"), reason: ReasonMalformed},
		{name: "data missing", spec: revoked.withData(""), reason: ReasonBadData},
		{name: "data null", spec: revoked.withData("null"), reason: ReasonBadData},
		{name: "data is an array", spec: revoked.withData(`[42]`), reason: ReasonBadData},
		{name: "data is a string", spec: revoked.withData(`"42"`), reason: ReasonBadData},
		{name: "data is a number", spec: revoked.withData(`42`), reason: ReasonBadData},
		{name: "data is not JSON", spec: revoked.withData(`{"job_id":42,`), reason: ReasonBadData, structured: ReasonMalformed},
		{name: "job_id missing", spec: data(`"status":"REVOKED"`), reason: ReasonBadData},
		{name: "job_id null", spec: data(`"job_id":null,"status":"REVOKED"`), reason: ReasonBadData},
		{name: "job_id string", spec: data(`"job_id":"42","status":"REVOKED"`), reason: ReasonBadJobID},
		{name: "job_id string 1", spec: revoked.with("subject", "1").withData(`{"job_id":"1","status":"REVOKED"}`), reason: ReasonBadJobID},
		{name: "job_id float", spec: data(`"job_id":42.0,"status":"REVOKED"`), reason: ReasonBadJobID},
		{name: "job_id float 1.0", spec: revoked.with("subject", "1").withData(`{"job_id":1.0,"status":"REVOKED"}`), reason: ReasonBadJobID},
		{name: "job_id exponent", spec: data(`"job_id":4.2e1,"status":"REVOKED"`), reason: ReasonBadJobID},
		{name: "job_id negative", spec: data(`"job_id":-42,"status":"REVOKED"`), reason: ReasonBadJobID},
		{name: "job_id zero", spec: data(`"job_id":0,"status":"REVOKED"`), reason: ReasonBadJobID},
		{name: "job_id leading zero string", spec: data(`"job_id":"042","status":"REVOKED"`), reason: ReasonBadJobID},
		{name: "job_id leading zero number", spec: data(`"job_id":042,"status":"REVOKED"`), reason: ReasonBadData, structured: ReasonMalformed},
		{name: "job_id 20 digits", spec: data(`"job_id":12345678901234567890,"status":"REVOKED"`), reason: ReasonBadJobID},
		{name: "job_id int64 overflow", spec: data(`"job_id":9223372036854775808,"status":"REVOKED"`), reason: ReasonBadJobID},
		{name: "job_id object", spec: data(`"job_id":{"id":42},"status":"REVOKED"`), reason: ReasonBadJobID},
		{name: "status missing", spec: data(`"job_id":42`), reason: ReasonBadData},
		{name: "status empty", spec: data(`"job_id":42,"status":""`), reason: ReasonBadData},
		{name: "status not a string", spec: data(`"job_id":42,"status":7`), reason: ReasonBadData},
		{name: "attempt negative", spec: data(`"job_id":42,"status":"REVOKED","attempt":-1`), reason: ReasonBadData},
		{name: "attempt string", spec: data(`"job_id":42,"status":"REVOKED","attempt":"3"`), reason: ReasonBadData},
		{name: "attempt float", spec: data(`"job_id":42,"status":"REVOKED","attempt":3.0`), reason: ReasonBadData},
		{name: "attempt leading zero", spec: data(`"job_id":42,"status":"REVOKED","attempt":"03"`), reason: ReasonBadData},
		{name: "attempt int64 overflow", spec: data(`"job_id":42,"status":"REVOKED","attempt":9223372036854775808`), reason: ReasonBadData},
		{name: "missing time for revoked", spec: revoked.without("time"), reason: ReasonMissingTime},
		{name: "missing time for failure", subject: "job.status.failure", spec: baseSpec("failure").without("time"), reason: ReasonMissingTime},
		{name: "missing time for cancelled", subject: "job.status.cancelled", spec: baseSpec("cancelled").without("time"), reason: ReasonMissingTime},
		{
			name: "missing time for restart_requested", subject: "job.status.restart_requested",
			spec: baseSpec("restart_requested").without("time"), reason: ReasonMissingTime,
		},
		{
			name: "oversized data", reason: ReasonOversized,
			spec: data(`"job_id":42,"status":"REVOKED","reason":"` + strings.Repeat("x", 64<<10) + `"`),
		},
		{name: "oversized attribute", spec: revoked.with("source", strings.Repeat("s", 64<<10)), reason: ReasonOversized},
		{name: "datacontenttype text/plain", spec: revoked.with("datacontenttype", "text/plain"), reason: ReasonBadData, structured: ReasonMalformed},
		{name: "datacontenttype xml", spec: revoked.with("datacontenttype", "application/xml").withData(`"<a/>"`), reason: ReasonBadData},
	}
	// Only a canonical job id may name a job: anything else in the subject
	// attribute is rejected before it can reach a resource name.
	for _, s := range []string{"1.>", "*", ">", "1 2", "../x", "01", "1\n", " 1", "1 ", "-1", "0", "+1", "0x2a", "1e3",
		"１", "42\x00", "12345678901234567890", "9223372036854775808"} {
		tests = append(tests, invalidCase{
			name: "subject attribute " + strconv.Quote(s), spec: revoked.with("subject", s), reason: ReasonBadJobID,
			// Binary mode trims header values (sdk-go's SetSubject, like
			// NATS on the wire), so padding only reaches structured mode.
			structuredOnly: strings.TrimSpace(s) != s,
		})
	}
	// The NATS subject must be <prefix><lower-case token>.
	for _, s := range []string{"job.status.a.b", "other.prefix.revoked", "job.status.REVOKED", "job.status.", "job.status.*",
		"job.status.>", "job.status", "job.statusrevoked", "job.status.revoked ", "job.status.1revoked", "xjob.status.revoked"} {
		tests = append(tests, invalidCase{name: "NATS subject " + strconv.Quote(s), subject: s, spec: revoked, reason: ReasonBadSubject})
	}
	for _, tc := range tests {
		for _, mode := range contentModes {
			if tc.structuredOnly && mode.name != "structured" {
				continue
			}
			t.Run(tc.name+"/"+mode.name, func(t *testing.T) {
				t.Parallel()
				subject, reason := tc.subject, tc.reason
				if subject == "" {
					subject = "job.status.revoked"
				}
				if mode.name == "structured" {
					if tc.structured != "" {
						reason = tc.structured
					}
				}
				h, body := mode.render(tc.spec)
				got, err := testDecoder().Decode(subject, h, body)
				wantInvalid(t, err, reason)
				// With its error Decode returns at most the event's id.
				if got != (JobStatus{ID: got.ID}) || (got.ID != "" && got.ID != tc.spec.attrs["id"]) {
					t.Errorf("Decode returned %+v with its error, want only the event's id", got)
				}
			})
		}
	}
}

// TestDecodeMessages covers messages that are not in one of the content
// modes, or only make sense in one.
func TestDecodeMessages(t *testing.T) {
	t.Parallel()
	_, structuredBody := structured(baseSpec("revoked"))
	binaryHeader, binaryBody := binaryWith(strings.ToLower)(baseSpec("revoked"))
	withoutHeader := func(name string) nats.Header {
		h := nats.Header{}
		for k, v := range binaryHeader {
			if k != name {
				h[k] = v
			}
		}
		return h
	}
	withHeader := func(name, value string) nats.Header {
		h := withoutHeader(name)
		h[name] = []string{value}
		return h
	}
	ceJSON := nats.Header{"Content-Type": {ContentTypeCloudEventsJSON}}
	tests := []struct {
		name   string
		header nats.Header
		body   []byte
		reason Reason // "" means valid
	}{
		{name: "structured with content-type parameters", header: nats.Header{"Content-Type": {ContentTypeCloudEventsJSON + "; charset=utf-8"}}, body: structuredBody},
		{name: "structured, lower-case header name", header: nats.Header{"content-type": {ContentTypeCloudEventsJSON}}, body: structuredBody},
		{name: "structured wins over ce- headers", header: withHeader("content-type", ContentTypeCloudEventsJSON), body: structuredBody},
		{name: "structured, bad JSON", header: ceJSON, body: []byte(`{"specversion":`), reason: ReasonMalformed},
		{name: "structured, empty body", header: ceJSON, body: nil, reason: ReasonMalformed},
		{name: "structured, body is not an object", header: ceJSON, body: []byte(`[1,2]`), reason: ReasonMalformed},
		{name: "structured, no specversion", header: ceJSON, body: []byte(`{"id":"a","source":"s","type":"job.status.revoked","subject":"42"}`), reason: ReasonMalformed},
		{name: "binary, empty body", header: binaryHeader, body: nil, reason: ReasonBadData},
		{name: "binary, bad JSON body", header: binaryHeader, body: []byte(`{"job_id":`), reason: ReasonBadData},
		{name: "binary without Content-Type", header: withoutHeader("content-type"), body: binaryBody},
		{name: "binary, ce-specversion 2.0", header: withHeader("ce-specversion", "2.0"), body: binaryBody, reason: ReasonSpecVersion},
		{name: "binary, empty ce-specversion", header: withHeader("ce-specversion", ""), body: binaryBody, reason: ReasonSpecVersion},
		{name: "binary, non-JSON datacontenttype", header: withHeader("content-type", "text/plain"), body: binaryBody, reason: ReasonBadData},
		{name: "binary, unparsable datacontenttype", header: withHeader("content-type", "json;;"), body: binaryBody, reason: ReasonMalformed},
		{name: "binary, padded ce-subject is trimmed", header: withHeader("ce-subject", " 42 "), body: binaryBody},
		{name: "event JSON without any Content-Type", header: nil, body: structuredBody, reason: ReasonNotCloudEvent},
		{name: "event JSON as application/json", header: nats.Header{"Content-Type": {"application/json"}}, body: structuredBody, reason: ReasonNotCloudEvent},
		{name: "ce- headers without ce-specversion", header: withoutHeader("ce-specversion"), body: binaryBody, reason: ReasonNotCloudEvent},
		{name: "no header, no body", reason: ReasonNotCloudEvent},
		{name: "oversized header", header: withHeader("ce-note", strings.Repeat("n", 64<<10)), body: binaryBody, reason: ReasonOversized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := testDecoder().Decode("job.status.revoked", tc.header, tc.body)
			if tc.reason != "" {
				wantInvalid(t, err, tc.reason)
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			assertJobStatus(t, got, wantRevoked())
		})
	}
}

// TestDecodeSizeLimit checks that the limit is the decoder's, and that a
// non-positive limit means the default.
func TestDecodeSizeLimit(t *testing.T) {
	t.Parallel()
	small := baseSpec("revoked")
	big := small.withData(`{"job_id":42,"status":"REVOKED","attempt":3,"reason":"` + strings.Repeat("x", 2000) + `"}`)
	huge := small.withData(`{"job_id":42,"status":"REVOKED","attempt":3,"reason":"` + strings.Repeat("x", DefaultMaxEventBytes) + `"}`)
	tests := []struct {
		name     string
		maxBytes int
		spec     eventSpec
		reason   Reason // "" means valid
	}{
		{name: "1 KiB limit, small event", maxBytes: 1024, spec: small},
		{name: "1 KiB limit, 2 KB event", maxBytes: 1024, spec: big, reason: ReasonOversized},
		{name: "default limit, 2 KB event", maxBytes: 0, spec: big},
		{name: "default limit, 64 KiB event", maxBytes: 0, spec: huge, reason: ReasonOversized},
		{name: "negative limit means default", maxBytes: -1, spec: huge, reason: ReasonOversized},
	}
	for _, tc := range tests {
		for _, mode := range contentModes[:2] {
			t.Run(tc.name+"/"+mode.name, func(t *testing.T) {
				t.Parallel()
				h, body := mode.render(tc.spec)
				got, err := NewDecoder("job.status.", tc.maxBytes, nil).Decode("job.status.revoked", h, body)
				if tc.reason != "" {
					wantInvalid(t, err, tc.reason)
					return
				}
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				if got.JobID != 42 || got.Status != StatusRevoked {
					t.Errorf("got job %d status %q, want 42 revoked", got.JobID, got.Status)
				}
			})
		}
	}
}

// TestDecodeNilTimeRequired checks that a nil timeRequired requires no time.
func TestDecodeNilTimeRequired(t *testing.T) {
	t.Parallel()
	h, body := structured(baseSpec("revoked").without("time"))
	got, err := NewDecoder("job.status.", 0, nil).Decode("job.status.revoked", h, body)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if !got.Time.IsZero() || got.Status != StatusRevoked {
		t.Errorf("got time %v status %q, want zero time, revoked", got.Time, got.Status)
	}
}

// TestClip checks that untrusted input quoted in an error is cut to 60
// bytes at most, never inside a rune.
func TestClip(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"", ""},
		{strings.Repeat("a", 60), strings.Repeat("a", 60)},
		{strings.Repeat("a", 61), strings.Repeat("a", 60) + "…"},
		{strings.Repeat("é", 30), strings.Repeat("é", 30)},
		{strings.Repeat("é", 31), strings.Repeat("é", 30) + "…"},
		{"a" + strings.Repeat("é", 30), "a" + strings.Repeat("é", 29) + "…"},
		{strings.Repeat("€", 21), strings.Repeat("€", 20) + "…"},
	}
	for _, tc := range tests {
		got := clip(tc.in)
		if got != tc.want || !utf8.ValidString(got) {
			t.Errorf("clip(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
