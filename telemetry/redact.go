package telemetry

import (
	"context"
	"encoding/json"
	"io"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Mask is what a redacted secret is replaced with.
const Mask = "xxxxx"

// A Redactor masks connection secrets in text that leaves the process: log
// lines, error messages, command output, health answers and spans. It masks
// three things:
//
//   - the user information of every URL (`nats://u:pw@host` becomes
//     `nats://xxxxx:xxxxx@host`, `nats://token@host` becomes
//     `nats://xxxxx@host`), wherever it stands in the text;
//   - NKey seeds and JWTs (the content of seed and .creds files), by their
//     shape;
//   - every secret value it was given (passwords, tokens, and the secrets of
//     URLs), wherever it stands, also in its URL-escaped, JSON-escaped and
//     Go-quoted forms.
//
// The nil *Redactor masks URLs, seeds and JWTs only. A very short secret is
// masked wherever it occurs, even inside other words: the text is then
// harder to read, but never leaks it. A Redactor is safe for concurrent use.
type Redactor struct {
	// secrets are the known values and their escaped forms, longest first
	// so that a secret containing another is masked whole.
	secrets []string
}

// NewRedactor returns a Redactor that also masks each non-empty secret.
// Give it passwords and tokens as they were configured, and the output of
// [URLSecrets] for URLs.
func NewRedactor(secrets ...string) *Redactor {
	seen := map[string]bool{}
	r := &Redactor{}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		for _, form := range secretForms(s) {
			if form != "" && !seen[form] {
				seen[form] = true
				r.secrets = append(r.secrets, form)
			}
		}
	}
	sort.Slice(r.secrets, func(i, j int) bool { return len(r.secrets[i]) > len(r.secrets[j]) })
	return r
}

// secretForms are the ways s can appear in output: as is, escaped in a URL,
// in a JSON string, and quoted by %q.
func secretForms(s string) []string {
	forms := []string{s, url.QueryEscape(s), url.PathEscape(s), strings.TrimPrefix(url.UserPassword("", s).String(), ":")}
	if b, err := json.Marshal(s); err == nil {
		forms = append(forms, string(b[1:len(b)-1]))
	}
	q := strconv.Quote(s)
	forms = append(forms, q[1:len(q)-1])
	if u, err := url.PathUnescape(s); err == nil {
		forms = append(forms, u)
	}
	return forms
}

// URLSecrets returns the secrets in a comma-separated list of URLs: each
// password, and each user that stands alone (a token). It parses leniently,
// so that a malformed URL still gives up its secrets. User names that come
// with a password are not returned: they are masked inside URLs only, so
// that a short user name does not mask every word it occurs in.
func URLSecrets(urls string) []string {
	var out []string
	for _, item := range strings.Split(urls, ",") {
		item = strings.TrimSpace(item)
		at := strings.LastIndex(item, "@")
		if at < 0 {
			continue
		}
		userinfo := item[:at]
		if i := strings.Index(userinfo, "://"); i >= 0 {
			userinfo = userinfo[i+3:]
		} else if i := strings.LastIndex(userinfo, "/"); i >= 0 {
			userinfo = userinfo[i+1:]
		}
		user, password, hasPassword := strings.Cut(userinfo, ":")
		if hasPassword {
			out = append(out, password)
		} else {
			out = append(out, user)
		}
	}
	return out
}

var (
	// userinfoRE is the user information before an @: whatever runs back
	// to the start of the word or to "//".
	userinfoRE = regexp.MustCompile(`[^\s/@,;"'<>()\[\]{}\\]+@`)
	// seedRE is an NKey seed: "S", its key type, and base32.
	seedRE = regexp.MustCompile(`\bS[A-Z][A-Z2-7]{50,}\b`)
	// jwtRE is a JSON web token (a .creds file's user JWT).
	jwtRE = regexp.MustCompile(`\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+`)
)

// String returns s with every secret masked.
func (r *Redactor) String(s string) string {
	if r != nil {
		for _, secret := range r.secrets {
			s = strings.ReplaceAll(s, secret, Mask)
		}
	}
	if strings.Contains(s, "@") {
		s = userinfoRE.ReplaceAllStringFunc(s, func(m string) string {
			if strings.Contains(m, ":") {
				return Mask + ":" + Mask + "@"
			}
			return Mask + "@"
		})
	}
	if mayHoldSeed(s) {
		s = seedRE.ReplaceAllString(s, Mask)
	}
	if strings.Contains(s, jwtPrefix) {
		s = jwtRE.ReplaceAllString(s, Mask)
	}
	return s
}

// jwtPrefix starts every match of jwtRE; seedLen is the length of the
// shortest match of seedRE, a run of [A-Z2-7]. Text without them is not
// searched (a regular expression pass over every log line and span string
// is most of the redaction's cost, and almost never finds anything).
const (
	jwtPrefix = "eyJ"
	seedLen   = 52
)

// mayHoldSeed reports whether s has a run of seedLen characters of an NKey
// seed's alphabet, which every match of seedRE is.
func mayHoldSeed(s string) bool {
	run := 0
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' || c >= '2' && c <= '7' {
			if run++; run >= seedLen {
				return true
			}
		} else {
			run = 0
		}
	}
	return false
}

// RedactURL masks the user information of every URL in s (a comma-separated
// list of URLs, or any text).
func RedactURL(s string) string { return (*Redactor)(nil).String(s) }

// Error returns err with its message redacted. errors.Is and errors.As see
// the original chain through Unwrap; only the message changes. A nil err,
// or one whose message holds no secret, is returned as it is.
func (r *Redactor) Error(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if red := r.String(msg); red != msg {
		return &redactedError{msg: red, err: err}
	}
	return err
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// Writer returns a writer that redacts each write to w. A secret is masked
// when one Write holds it whole, as it does for a log line, a formatted
// message or a table cell.
func (r *Redactor) Writer(w io.Writer) io.Writer { return &redactingWriter{r: r, w: w} }

type redactingWriter struct {
	r *Redactor
	w io.Writer
}

func (rw *redactingWriter) Write(p []byte) (int, error) {
	if _, err := io.WriteString(rw.w, rw.r.String(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Unwrap returns the writer written to, so that a terminal is still
// recognized as one.
func (rw *redactingWriter) Unwrap() io.Writer { return rw.w }

// unwrapWriter returns the writer under redacting writers.
func unwrapWriter(w io.Writer) io.Writer {
	for {
		u, ok := w.(interface{ Unwrap() io.Writer })
		if !ok {
			return w
		}
		w = u.Unwrap()
	}
}

// Check returns c with its error message redacted, for /readyz.
func (r *Redactor) Check(c Check) Check {
	return func(ctx context.Context) error { return r.Error(c(ctx)) }
}

// SpanProcessor returns next seeing every ended span with its name,
// attributes, events, links and status description redacted.
func (r *Redactor) SpanProcessor(next sdktrace.SpanProcessor) sdktrace.SpanProcessor {
	return &redactingProcessor{SpanProcessor: next, r: r}
}

// SpanExporter returns exp exporting every span redacted.
func (r *Redactor) SpanExporter(exp sdktrace.SpanExporter) sdktrace.SpanExporter {
	return &redactingExporter{SpanExporter: exp, r: r}
}

type redactingProcessor struct {
	sdktrace.SpanProcessor
	r *Redactor
}

func (p *redactingProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	p.SpanProcessor.OnEnd(&redactedSpan{ReadOnlySpan: s, r: p.r})
}

type redactingExporter struct {
	sdktrace.SpanExporter
	r *Redactor
}

func (e *redactingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	out := make([]sdktrace.ReadOnlySpan, len(spans))
	for i, s := range spans {
		out[i] = &redactedSpan{ReadOnlySpan: s, r: e.r}
	}
	if err := e.SpanExporter.ExportSpans(ctx, out); err != nil {
		return e.r.Error(err)
	}
	return nil
}

// redactedSpan is a span as exported: whatever text it holds is redacted.
type redactedSpan struct {
	sdktrace.ReadOnlySpan
	r *Redactor
}

func (s *redactedSpan) Name() string { return s.r.String(s.ReadOnlySpan.Name()) }

func (s *redactedSpan) Attributes() []attribute.KeyValue {
	return s.r.attributes(s.ReadOnlySpan.Attributes())
}

func (s *redactedSpan) Events() []sdktrace.Event {
	events := s.ReadOnlySpan.Events()
	var out []sdktrace.Event // a copy, made at the first event that changes
	for i, e := range events {
		name, attrs := s.r.String(e.Name), s.r.attributes(e.Attributes)
		if out == nil && (name != e.Name || !sameSlice(attrs, e.Attributes)) {
			out = slices.Clone(events)
		}
		if out != nil {
			out[i].Name, out[i].Attributes = name, attrs
		}
	}
	if out == nil {
		return events
	}
	return out
}

func (s *redactedSpan) Links() []sdktrace.Link {
	links := s.ReadOnlySpan.Links()
	out := make([]sdktrace.Link, len(links))
	for i, l := range links {
		l.Attributes = s.r.attributes(l.Attributes)
		out[i] = l
	}
	return out
}

func (s *redactedSpan) Status() sdktrace.Status {
	st := s.ReadOnlySpan.Status()
	st.Description = s.r.String(st.Description)
	return st
}

// attributes returns attrs with every text value redacted: attrs itself
// when nothing needed it (nearly always: a copy per span and event was 2% of
// the service's CPU in a storm), a copy otherwise.
func (r *Redactor) attributes(attrs []attribute.KeyValue) []attribute.KeyValue {
	var out []attribute.KeyValue // a copy, made at the first value that changes
	for i, kv := range attrs {
		v, changed := r.value(kv.Value)
		if !changed {
			continue
		}
		if out == nil {
			out = slices.Clone(attrs)
		}
		out[i].Value = v
	}
	if out == nil {
		return attrs
	}
	return out
}

// value returns v redacted, and whether that changed it.
func (r *Redactor) value(v attribute.Value) (attribute.Value, bool) {
	switch v.Type() {
	case attribute.STRING:
		if red := r.String(v.AsString()); red != v.AsString() {
			return attribute.StringValue(red), true
		}
	case attribute.STRINGSLICE:
		list := v.AsStringSlice()
		changed := false
		for j := range list {
			if red := r.String(list[j]); red != list[j] {
				list[j], changed = red, true
			}
		}
		if changed {
			return attribute.StringSliceValue(list), true
		}
	}
	return v, false
}

// sameSlice reports whether a and b are the same slice (not only equal).
func sameSlice(a, b []attribute.KeyValue) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}
