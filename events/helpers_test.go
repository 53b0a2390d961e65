package events

import (
	"encoding/json"
	"errors"
	"maps"
	"net/textproto"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// testDecoder is the decoder the service uses by default: terminal and
// restart statuses must carry a time.
func testDecoder() Decoder {
	return NewDecoder("job.status.", 64<<10, func(s Status) bool {
		return s == StatusRestartRequested || s == StatusRevoked || s == StatusFailure || s == StatusCancelled
	})
}

// eventTime is the time attribute of every test event; its nanoseconds
// survive RFC 3339.
var eventTime = time.Date(2025, 1, 2, 3, 4, 5, 123456789, time.UTC)

// eventSpec is a job-status event independent of its content mode: string
// attributes (and extensions) plus the raw JSON of data, which may be
// deliberately invalid. data "" means the event has no data.
type eventSpec struct {
	attrs map[string]string
	data  string
}

// baseSpec is a valid event for job 42, attempt 3, on job.status.<token>.
func baseSpec(token string) eventSpec {
	return eventSpec{
		attrs: map[string]string{
			"specversion": "1.0",
			"id":          "evt-1",
			"source":      "backend",
			"type":        "job.status." + token,
			"subject":     "42",
			"time":        eventTime.Format(time.RFC3339Nano),
		},
		data: `{"job_id":42,"status":"` + strings.ToUpper(token) + `","attempt":3}`,
	}
}

// with returns a copy of s with the attributes set from name, value pairs.
func (s eventSpec) with(kv ...string) eventSpec {
	out := eventSpec{attrs: make(map[string]string, len(s.attrs)+len(kv)/2), data: s.data}
	for k, v := range s.attrs {
		out.attrs[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out.attrs[kv[i]] = kv[i+1]
	}
	return out
}

// without returns a copy of s without the named attributes.
func (s eventSpec) without(names ...string) eventSpec {
	out := s.with()
	for _, n := range names {
		delete(out.attrs, n)
	}
	return out
}

// withData returns a copy of s with data replaced by raw JSON.
func (s eventSpec) withData(raw string) eventSpec {
	out := s.with()
	out.data = raw
	return out
}

// contentMode renders an eventSpec as a NATS message.
type contentMode struct {
	name   string
	render func(eventSpec) (nats.Header, []byte)
}

// contentModes are structured mode and binary mode with three spellings of
// the header names.
var contentModes = []contentMode{
	{"structured", structured},
	{"binary", binaryWith(strings.ToLower)},
	{"binary/Canonical-Case", binaryWith(textproto.CanonicalMIMEHeaderKey)},
	{"binary/UPPER-CASE", binaryWith(strings.ToUpper)},
}

// structured puts the event JSON in the body. It writes the JSON by hand so
// that data can be invalid JSON.
func structured(s eventSpec) (nats.Header, []byte) {
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range slices.Sorted(maps.Keys(s.attrs)) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(mustJSON(k))
		b.WriteByte(':')
		b.Write(mustJSON(s.attrs[k]))
	}
	if s.data != "" {
		if len(s.attrs) > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"data":`)
		b.WriteString(s.data)
	}
	b.WriteByte('}')
	return nats.Header{"Content-Type": {ContentTypeCloudEventsJSON}}, []byte(b.String())
}

// binaryWith returns a binary-mode renderer whose header names are spelled
// by spell: ce-<attribute>, Content-Type for datacontenttype (default
// application/json), data in the body.
func binaryWith(spell func(string) string) func(eventSpec) (nats.Header, []byte) {
	return func(s eventSpec) (nats.Header, []byte) {
		h := nats.Header{spell("content-type"): {"application/json"}}
		for k, v := range s.attrs {
			if k == "datacontenttype" {
				h[spell("content-type")] = []string{v}
				continue
			}
			h[spell("ce-"+k)] = []string{v}
		}
		return h, []byte(s.data)
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// wantInvalid asserts that err is an *InvalidError with the given reason
// that also matches ErrInvalid.
func wantInvalid(t *testing.T, err error, reason Reason) {
	t.Helper()
	if err == nil {
		t.Fatalf("err = nil, want an *InvalidError with reason %q", reason)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
	}
	var ie *InvalidError
	if !errors.As(err, &ie) {
		t.Fatalf("err = %T %v, want *InvalidError", err, err)
	}
	if ie.Reason != reason {
		t.Errorf("reason = %q (%v), want %q", ie.Reason, err, reason)
	}
	if ie.Detail == "" {
		t.Errorf("detail is empty for reason %q", ie.Reason)
	}
}

// assertJobStatus compares two JobStatus values, times with time.Equal.
func assertJobStatus(t *testing.T, got, want JobStatus) {
	t.Helper()
	if !got.Time.Equal(want.Time) {
		t.Errorf("Time = %v, want %v", got.Time, want.Time)
	}
	got.Time, want.Time = time.Time{}, time.Time{}
	if got != want {
		t.Errorf("JobStatus mismatch\n got: %+v\nwant: %+v", got, want)
	}
}
