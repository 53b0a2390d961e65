package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"

	"github.com/example/queue-janitor/queue"
)

// Reason says why an event was rejected. It is short and stable, so it serves
// as a metric label and as the dead-letter header value.
type Reason string

// The reasons an event is rejected.
const (
	ReasonOversized        Reason = "oversized"
	ReasonNotCloudEvent    Reason = "not_cloudevent"
	ReasonMalformed        Reason = "malformed"
	ReasonSpecVersion      Reason = "specversion"
	ReasonMissingAttribute Reason = "missing_attribute"
	ReasonBadType          Reason = "bad_type"
	ReasonBadSubject       Reason = "bad_subject"
	ReasonBadJobID         Reason = "bad_job_id"
	ReasonJobIDMismatch    Reason = "job_id_mismatch"
	ReasonStatusMismatch   Reason = "status_mismatch"
	ReasonMissingTime      Reason = "missing_time"
	ReasonBadData          Reason = "bad_data"
	// ReasonRetriesExhausted is used by [Intake] for a valid event whose
	// effect still failed on its last allowed delivery.
	ReasonRetriesExhausted Reason = "retries_exhausted"
	// ReasonRejected is used for a handler error that wraps [ErrInvalid]
	// without being an [*InvalidError].
	ReasonRejected Reason = "rejected"
)

// ErrInvalid matches every [*InvalidError] with errors.Is.
var ErrInvalid = errors.New("invalid event")

// InvalidError is returned for an event that can never be handled, however
// often it is retried. [Intake] terminates it and dead-letters it.
type InvalidError struct {
	Reason Reason
	Detail string
}

func (e *InvalidError) Error() string {
	return fmt.Sprintf("invalid event: %s: %s", e.Reason, e.Detail)
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(r Reason, format string, args ...any) error {
	return &InvalidError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// DefaultMaxEventBytes bounds an event's body plus headers.
const DefaultMaxEventBytes = 64 << 10

// Decoder turns NATS messages into [JobStatus] values, enforcing the
// contract (section 2 and 5). The zero value is not usable; see [NewDecoder].
type Decoder struct {
	maxBytes      int
	subjectPrefix string
	timeRequired  func(Status) bool
}

// NewDecoder returns a Decoder for events on subjects that start with
// subjectPrefix (e.g. "job.status."), at most maxBytes large, that insists on
// a `time` attribute for the statuses timeRequired picks.
func NewDecoder(subjectPrefix string, maxBytes int, timeRequired func(Status) bool) Decoder {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxEventBytes
	}
	if timeRequired == nil {
		timeRequired = func(Status) bool { return false }
	}
	return Decoder{maxBytes: maxBytes, subjectPrefix: subjectPrefix, timeRequired: timeRequired}
}

// statusData is the data of a job-status event. job_id and attempt are kept
// raw so that only plain JSON integers are accepted.
type statusData struct {
	JobID          json.RawMessage `json:"job_id"`
	Status         *string         `json:"status"`
	PreviousStatus string          `json:"previous_status"`
	Attempt        json.RawMessage `json:"attempt"`
	DispatchMode   *string         `json:"dispatch_mode"`
	Reason         string          `json:"reason"`
	Actor          string          `json:"actor"`
}

var (
	statusToken    = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
	attemptPattern = regexp.MustCompile(`^(0|[1-9][0-9]{0,18})$`)
)

// Decode validates and decodes one message that arrived on subject. Every
// error it returns is an [*InvalidError]; with it, the returned JobStatus
// holds only the event's ID, when one could be read (see [PartialID]), so
// that the rejection can be traced to the event. Text that is not valid
// UTF-8, in an attribute or in data, is refused (ReasonMalformed) rather
// than silently replaced.
func (d Decoder) Decode(subject string, header nats.Header, body []byte) (JobStatus, error) {
	js, err := d.decode(subject, header, body)
	if err != nil {
		js = JobStatus{}
		if messageSize(header, body) <= d.maxBytes {
			js.ID = PartialID(header, body)
		}
	}
	return js, err
}

func (d Decoder) decode(subject string, header nats.Header, body []byte) (JobStatus, error) {
	if size := messageSize(header, body); size > d.maxBytes {
		return JobStatus{}, invalid(ReasonOversized, "%d bytes, limit %d", size, d.maxBytes)
	}
	token, ok := strings.CutPrefix(subject, d.subjectPrefix)
	if !ok || !statusToken.MatchString(token) {
		return JobStatus{}, invalid(ReasonBadSubject, "subject %q is not %s<status>", clip(subject), d.subjectPrefix)
	}
	if err := checkUTF8(header, body); err != nil {
		return JobStatus{}, err
	}
	ev, err := toEvent(header, body)
	if err != nil {
		return JobStatus{}, err
	}
	js := JobStatus{ID: ev.ID(), Source: ev.Source(), Type: ev.Type(), Time: ev.Time(), Subject: subject}
	if err := d.checkAttributes(ev, Status(token)); err != nil {
		return JobStatus{}, err
	}
	js.JobID, err = queue.ParseJobID(ev.Subject())
	if err != nil {
		return JobStatus{}, invalid(ReasonBadJobID, "subject attribute: %v", err)
	}
	if err := d.decodeData(ev, &js); err != nil {
		return JobStatus{}, err
	}
	if js.Status != Status(token) {
		return JobStatus{}, invalid(ReasonStatusMismatch, "data.status %q but subject token %q", clip(string(js.Status)), token)
	}
	if js.Time.IsZero() && d.timeRequired(js.Status) {
		return JobStatus{}, invalid(ReasonMissingTime, "status %s needs the time attribute", js.Status)
	}
	js.TraceParent, _ = ev.Extensions()["traceparent"].(string)
	js.TraceState, _ = ev.Extensions()["tracestate"].(string)
	return js, nil
}

// toEvent reads the message in whichever content mode it uses.
func toEvent(header nats.Header, body []byte) (ev *event.Event, err error) {
	msg := newNATSMessage(header, body)
	if msg.ReadEncoding() == binding.EncodingUnknown {
		if _, isBinary := msg.header[headerPrefix+"specversion"]; isBinary {
			return nil, invalid(ReasonSpecVersion, "unsupported specversion %q", clip(msg.header[headerPrefix+"specversion"]))
		}
		return nil, invalid(ReasonNotCloudEvent, "neither Content-Type %s nor a ce-specversion header", "application/cloudevents+json")
	}
	if msg.format != nil {
		// sdk-go reports an unknown specversion in structured mode as a
		// parse error; name it as binary mode does.
		var head struct {
			SpecVersion *string `json:"specversion"`
		}
		if json.Unmarshal(body, &head) == nil && head.SpecVersion != nil && *head.SpecVersion != event.CloudEventsVersionV1 {
			return nil, invalid(ReasonSpecVersion, "specversion %q, want %q", clip(*head.SpecVersion), event.CloudEventsVersionV1)
		}
	}
	defer func() {
		// sdk-go is third-party code reading hostile input: never let it
		// take the service down.
		if r := recover(); r != nil {
			ev, err = nil, invalid(ReasonMalformed, "%s mode: decoder panic: %v", msg.encoding(), r)
		}
	}()
	ev, err = binding.ToEvent(context.Background(), msg)
	if err != nil {
		return nil, invalid(ReasonMalformed, "%s mode: %s", msg.encoding(), clip(err.Error()))
	}
	return ev, nil
}

func (d Decoder) checkAttributes(ev *event.Event, token Status) error {
	if ev.SpecVersion() != event.CloudEventsVersionV1 {
		return invalid(ReasonSpecVersion, "specversion %q, want %q", clip(ev.SpecVersion()), event.CloudEventsVersionV1)
	}
	for _, a := range []struct{ name, value string }{
		{"id", ev.ID()}, {"source", ev.Source()}, {"type", ev.Type()}, {"subject", ev.Subject()},
	} {
		if strings.TrimSpace(a.value) == "" {
			return invalid(ReasonMissingAttribute, "%s is required", a.name)
		}
	}
	if err := ev.Validate(); err != nil {
		return invalid(ReasonMalformed, "%s", clip(err.Error()))
	}
	want := "job.status." + string(token)
	if t := ev.Type(); t != want && !strings.HasSuffix(t, "."+want) {
		return invalid(ReasonBadType, "type %q does not end with %q", clip(t), want)
	}
	if ct := ev.DataContentType(); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return invalid(ReasonBadData, "datacontenttype %q is not JSON", clip(ct))
		}
	}
	return nil
}

func (d Decoder) decodeData(ev *event.Event, js *JobStatus) error {
	raw := ev.Data()
	if len(raw) == 0 {
		return invalid(ReasonBadData, "data is required")
	}
	var data statusData
	if err := json.Unmarshal(raw, &data); err != nil {
		return invalid(ReasonBadData, "data: %s", clip(err.Error()))
	}
	if len(data.JobID) == 0 || string(data.JobID) == "null" {
		return invalid(ReasonBadData, "data.job_id is required")
	}
	id, err := queue.ParseJobID(string(data.JobID))
	if err != nil {
		return invalid(ReasonBadJobID, "data.job_id: %v", err)
	}
	if id != js.JobID {
		return invalid(ReasonJobIDMismatch, "data.job_id %d but subject %q", id, clip(ev.Subject()))
	}
	if data.Status == nil || *data.Status == "" {
		return invalid(ReasonBadData, "data.status is required")
	}
	js.Status = ParseStatus(*data.Status)
	js.PreviousStatus = ParseStatus(data.PreviousStatus)
	if len(data.Attempt) > 0 && string(data.Attempt) != "null" {
		if !attemptPattern.Match(data.Attempt) {
			return invalid(ReasonBadData, "data.attempt %s is not a non-negative integer", clip(string(data.Attempt)))
		}
		n, err := strconv.ParseInt(string(data.Attempt), 10, 64)
		if err != nil {
			return invalid(ReasonBadData, "data.attempt %s does not fit in 64 bits", clip(string(data.Attempt)))
		}
		js.Attempt, js.HasAttempt = n, true
	}
	if data.DispatchMode != nil {
		js.DispatchMode = strings.ToLower(*data.DispatchMode)
	}
	js.Reason, js.Actor = data.Reason, data.Actor
	return nil
}

func messageSize(h nats.Header, body []byte) int {
	n := len(body)
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// clip shortens untrusted input before it is quoted in an error message.
func clip(s string) string {
	const limit = 60
	if len(s) <= limit {
		return s
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
