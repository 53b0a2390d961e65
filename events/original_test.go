package events

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"github.com/nats-io/nats.go"
)

func TestPublisherConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(*PublisherConfig)
		want   string // a fragment of the error naming the field; "" means valid
	}{
		{name: "defaults", change: func(*PublisherConfig) {}},
		{name: "other dead-letter subject", change: func(c *PublisherConfig) { c.DeadLetterSubject = "ops.rejected" }},
		{name: "source empty", change: func(c *PublisherConfig) { c.Source = "" }, want: "event source"},
		{name: "cleaned subject without {id}", change: func(c *PublisherConfig) { c.CleanedSubject = "job.queue.cleaned" }, want: "cleaned subject"},
		{name: "cleaned subject with {id} twice", change: func(c *PublisherConfig) { c.CleanedSubject = "job.{id}.cleaned.{id}" }, want: "cleaned subject"},
		{name: "flushed subject without {id}", change: func(c *PublisherConfig) { c.FlushedSubject = "job.queue.flushed.*" }, want: "flushed subject"},
		{name: "flushed subject with {id} twice", change: func(c *PublisherConfig) { c.FlushedSubject = "{id}.{id}" }, want: "flushed subject"},
		{name: "dead-letter subject empty", change: func(c *PublisherConfig) { c.DeadLetterSubject = "" }, want: "dead-letter subject"},
		{name: "dead-letter subject with *", change: func(c *PublisherConfig) { c.DeadLetterSubject = "job.deadletter.*" }, want: "dead-letter subject"},
		{name: "dead-letter subject with >", change: func(c *PublisherConfig) { c.DeadLetterSubject = "job.deadletter.>" }, want: "dead-letter subject"},
		{name: "dead-letter subject with space", change: func(c *PublisherConfig) { c.DeadLetterSubject = "job dead" }, want: "dead-letter subject"},
		{name: "dead-letter subject under job.status.", change: func(c *PublisherConfig) { c.DeadLetterSubject = "job.status.deadletter" }, want: "must not be under job.status."},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := DefaultPublisherConfig()
			tc.change(&c)
			checkValidate(t, c.Validate(), tc.want)
		})
	}
}

func TestNewOriginal(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		body       []byte
		max        int
		wantBody   string
		wantBase64 []byte
		truncated  bool
	}{
		{name: "UTF-8 body", body: []byte(`{"a":"é"}`), max: 100, wantBody: `{"a":"é"}`},
		{name: "no limit", body: []byte("0123456789"), max: 0, wantBody: "0123456789"},
		{name: "exactly the limit", body: []byte("0123456789"), max: 10, wantBody: "0123456789"},
		{name: "over the limit", body: []byte("0123456789"), max: 4, wantBody: "0123", truncated: true},
		{name: "non-UTF-8", body: []byte{0xff, 0xfe, 'a'}, max: 100, wantBase64: []byte{0xff, 0xfe, 'a'}},
		{name: "non-UTF-8 truncated", body: []byte{'a', 0xff, 0xfe, 'b'}, max: 2, wantBase64: []byte{'a', 0xff}, truncated: true},
		// Cutting inside a rune leaves invalid UTF-8, so the cut body goes
		// to base64.
		{name: "cut inside a rune", body: []byte("hé"), max: 2, wantBase64: []byte{'h', 0xc3}, truncated: true},
		{name: "empty", body: nil, max: 10, wantBody: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			body := bytes.Clone(tc.body)
			o := NewOriginal("job.status.revoked", nil, body, tc.max)
			if o.Subject != "job.status.revoked" || o.Header != nil {
				t.Errorf("subject %q header %v, want job.status.revoked and nil", o.Subject, o.Header)
			}
			if o.Body != tc.wantBody || !bytes.Equal(o.BodyBase64, tc.wantBase64) || o.Truncated != tc.truncated {
				t.Errorf("got body %q base64 %x truncated %v, want %q %x %v",
					o.Body, o.BodyBase64, o.Truncated, tc.wantBody, tc.wantBase64, tc.truncated)
			}
			for i := range body {
				body[i] = 'X' // the caller's buffer is reused by NATS
			}
			if o.Body != tc.wantBody || !bytes.Equal(o.BodyBase64, tc.wantBase64) {
				t.Errorf("original changed with the caller's buffer: %q %x", o.Body, o.BodyBase64)
			}
		})
	}
}

func TestNewOriginalJSON(t *testing.T) {
	t.Parallel()
	o := NewOriginal("job.status.x", nats.Header{"Content-Type": {"text/plain"}}, []byte{0xff, 'a'}, 0)
	o.Stream, o.Sequence, o.Delivered = "JOB_EVENTS", 12, 3
	got, err := json.Marshal(o)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	want := `{"subject":"job.status.x","header":{"Content-Type":["text/plain"]},"body_base64":"/2E=","stream":"JOB_EVENTS","sequence":12,"delivered":3}`
	if string(got) != want {
		t.Errorf("JSON =\n%s\nwant\n%s", got, want)
	}
}

func TestNewOriginalCopiesHeader(t *testing.T) {
	t.Parallel()
	h := nats.Header{"Ce-Id": {"a", "b"}, "Content-Type": {"application/json"}}
	o := NewOriginal("job.status.revoked", h, []byte("{}"), 0)
	want := map[string][]string{"Ce-Id": {"a", "b"}, "Content-Type": {"application/json"}}
	if !maps.EqualFunc(o.Header, want, slices.Equal) {
		t.Fatalf("header = %v, want %v", o.Header, want)
	}
	h["Ce-Id"][0] = "changed"
	h["Ce-Extra"] = []string{"x"}
	delete(h, "Content-Type")
	if !maps.EqualFunc(o.Header, want, slices.Equal) {
		t.Errorf("changing the message header changed the copy: %v", o.Header)
	}
	o.Header["Ce-Id"][1] = "changed too"
	if h["Ce-Id"][1] != "b" {
		t.Errorf("changing the copy changed the message header: %v", h)
	}
}
