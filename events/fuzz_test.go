package events

import (
	"errors"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// canonicalJobID is the contract's spelling of a job id (section 5).
var canonicalJobID = regexp.MustCompile(`^[1-9][0-9]{0,18}$`)

// encodeHeader writes h as "name: value\n" lines, for fuzz seeds.
func encodeHeader(h nats.Header) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(h)) {
		for _, v := range h[k] {
			b.WriteString(k + ": " + v + "\n")
		}
	}
	return b.String()
}

// decodeHeader is the inverse of encodeHeader; lines without a colon are
// dropped.
func decodeHeader(s string) nats.Header {
	h := nats.Header{}
	for line := range strings.SplitSeq(s, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			h[k] = append(h[k], strings.TrimPrefix(v, " "))
		}
	}
	return h
}

func FuzzDecode(f *testing.F) {
	seeds := []struct {
		subject string
		spec    eventSpec
	}{
		{"job.status.revoked", baseSpec("revoked")},
		{"job.status.restart_requested", baseSpec("restart_requested").with("traceparent", testTraceParent, "tracestate", testTraceState)},
		{"job.status.started", baseSpec("started").without("time")},
		{"job.status.cancelled", baseSpec("cancelled").with("type", "org.example.job.status.cancelled").
			withData(`{"job_id":42,"status":"Cancelled","previous_status":"STARTED","attempt":0,"dispatch_mode":"async_api","actor":"admin"}`)},
		{"job.status.failure", baseSpec("failure").without("time")},
		{"job.status.revoked", baseSpec("revoked").with("subject", "1.>")},
	}
	for _, s := range seeds {
		for _, mode := range contentModes[:3] {
			h, body := mode.render(s.spec)
			f.Add(s.subject, encodeHeader(h), body)
		}
	}
	f.Add("job.status.revoked", "", []byte(`{}`))
	bad, badBody := renderBad(contentModes[0], baseSpec("revoked").withData(`{"job_id":42,"status":"REVOKED","actor":"`+badMarker+`"}`), "\xff")
	f.Add("job.status.revoked", encodeHeader(bad), badBody)
	f.Add("job.status.revoked", "Content-Type: application/cloudevents+json\n", []byte(`{"specversion":"1.0","data_base64":"e30="}`))

	d := testDecoder()
	f.Fuzz(func(t *testing.T, subject, header string, body []byte) {
		h := decodeHeader(header)
		js, err := d.Decode(subject, h, body)
		if err != nil {
			var ie *InvalidError
			if !errors.As(err, &ie) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %T %v is not an *InvalidError", err, err)
			}
			if ie.Reason == "" {
				t.Fatalf("InvalidError without a reason: %v", err)
			}
			// With the error comes at most the id, and only valid text.
			if js != (JobStatus{ID: js.ID}) || (js.ID != "" && (!utf8.ValidString(js.ID) || len(js.ID) > maxPartialID)) {
				t.Fatalf("rejected event returned %+v with its error", js)
			}
			return
		}
		// Nothing accepted was repaired on the way: the text was valid.
		if !utf8.Valid(body) || badSurrogateEscape(body) >= 0 {
			t.Fatalf("accepted a body that is not valid UTF-8 text: %q", body)
		}
		for k, vs := range h {
			for _, v := range vs {
				if strings.HasPrefix(strings.ToLower(k), "ce-") && !utf8.ValidString(v) {
					t.Fatalf("accepted header %q that is not valid UTF-8: %q", k, v)
				}
			}
		}
		token, ok := strings.CutPrefix(subject, "job.status.")
		if !ok {
			t.Fatalf("accepted subject %q outside job.status.", subject)
		}
		if js.JobID <= 0 || !canonicalJobID.MatchString(js.JobID.String()) {
			t.Fatalf("accepted job id %d (%q)", js.JobID, js.JobID.String())
		}
		if string(js.Status) != token {
			t.Fatalf("status %q, subject token %q", js.Status, token)
		}
		if js.Subject != subject {
			t.Fatalf("Subject = %q, want %q", js.Subject, subject)
		}
		if d.timeRequired(js.Status) && js.Time.IsZero() {
			t.Fatalf("status %q accepted without time", js.Status)
		}
		if js.ID == "" || js.Source == "" || !strings.HasSuffix(js.Type, "job.status."+token) {
			t.Fatalf("accepted without id, source or a matching type: %+v", js)
		}
	})
}

// TestHeaderCodec keeps the fuzz seed encoding honest.
func TestHeaderCodec(t *testing.T) {
	t.Parallel()
	h := nats.Header{"Ce-Id": {"a"}, "content-type": {"application/json"}, "X": {"1", "2"}, "Empty": {""}}
	got := decodeHeader(encodeHeader(h))
	if !maps.EqualFunc(got, h, slices.Equal) {
		t.Errorf("round trip = %v, want %v", got, h)
	}
}
