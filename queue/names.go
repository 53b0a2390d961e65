package queue

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// IDPlaceholder is the token in every name pattern that stands for the job id.
const IDPlaceholder = "{id}"

// AttemptMetadataKey is the stream (and consumer) metadata key through which
// the backend may stamp the run's attempt number onto the resources it
// creates. When present it makes the fence exact: see [Fence].
const AttemptMetadataKey = "job_attempt"

// jobIDPattern is the contract's only accepted spelling of a job id.
var jobIDPattern = regexp.MustCompile(`^[1-9][0-9]{0,18}$`)

// ErrInvalidJobID is returned by [ParseJobID] for anything that is not a
// positive decimal integer without leading zeros that fits in an int64.
var ErrInvalidJobID = errors.New("invalid job id")

// JobID is a job's primary key in the backend. Its zero value is not a valid
// job; every JobID obtained through [ParseJobID] is positive.
type JobID int64

// ParseJobID parses a job id as it appears in a subject, a stream name or a
// CloudEvent attribute. It accepts only `^[1-9][0-9]{0,18}$` values that fit
// in an int64, so "01", "1.>", "*", " 1" and "../x" are all rejected with
// [ErrInvalidJobID].
func ParseJobID(s string) (JobID, error) {
	if !jobIDPattern.MatchString(s) {
		return 0, fmt.Errorf("%w: %.40q must match %s", ErrInvalidJobID, s, jobIDPattern)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %.40q does not fit in 64 bits", ErrInvalidJobID, s)
	}
	return JobID(n), nil
}

// String returns the decimal form used in names and subjects.
func (id JobID) String() string { return strconv.FormatInt(int64(id), 10) }

// Valid reports whether id could have come from [ParseJobID].
func (id JobID) Valid() bool { return id > 0 }

// Names holds the backend's naming patterns. Each pattern except
// AdvisoryStream contains [IDPlaceholder] exactly once. The zero value is not
// usable; start from [DefaultNames].
type Names struct {
	// Stream is the per-job task stream, e.g. "job_{id}".
	Stream string
	// Subject is the task stream's only subject, e.g. "job.{id}.tasks".
	Subject string
	// Consumer is the durable pull consumer on the task stream.
	Consumer string
	// DeadLetterConsumer is the job's consumer on the shared advisory stream.
	DeadLetterConsumer string
	// AdvisoryStream is the shared stream of max-delivery advisories. It is
	// never deleted.
	AdvisoryStream string
}

// DefaultNames returns the job backend's naming (contract section 1).
func DefaultNames() Names {
	return Names{
		Stream:             "job_{id}",
		Subject:            "job.{id}.tasks",
		Consumer:           "job-{id}-consumer",
		DeadLetterConsumer: "job-{id}-dlq",
		AdvisoryStream:     "advisories",
	}
}

// Validate checks every pattern and names the first bad one.
func (n Names) Validate() error {
	for _, p := range []struct{ field, value string }{
		{"stream pattern", n.Stream},
		{"consumer pattern", n.Consumer},
		{"dead-letter consumer pattern", n.DeadLetterConsumer},
	} {
		if err := checkPattern(p.value); err != nil {
			return fmt.Errorf("%s %q: %w", p.field, p.value, err)
		}
		if !validResourceName(strings.ReplaceAll(p.value, IDPlaceholder, "1")) {
			return fmt.Errorf("%s %q: a stream or consumer name may not contain '.', '*', '>', '/', '\\' or white space", p.field, p.value)
		}
	}
	if err := checkPattern(n.Subject); err != nil {
		return fmt.Errorf("subject pattern %q: %w", n.Subject, err)
	}
	if !validSubject(strings.ReplaceAll(n.Subject, IDPlaceholder, "1")) {
		return fmt.Errorf("subject pattern %q: not a valid literal NATS subject", n.Subject)
	}
	if n.Subject != IDPlaceholder && !strings.Contains(n.Subject, "."+IDPlaceholder+".") &&
		!strings.HasPrefix(n.Subject, IDPlaceholder+".") && !strings.HasSuffix(n.Subject, "."+IDPlaceholder) {
		return fmt.Errorf("subject pattern %q: %s must be a whole subject token", n.Subject, IDPlaceholder)
	}
	if n.AdvisoryStream == "" || !validResourceName(n.AdvisoryStream) {
		return fmt.Errorf("advisory stream %q: not a valid stream name", n.AdvisoryStream)
	}
	if _, ok := n.JobFromStream(n.AdvisoryStream); ok {
		return fmt.Errorf("advisory stream %q: matches the job stream pattern %q", n.AdvisoryStream, n.Stream)
	}
	return nil
}

// StreamName returns the job's task stream name.
func (n Names) StreamName(id JobID) string { return fill(n.Stream, id) }

// SubjectName returns the job's task subject.
func (n Names) SubjectName(id JobID) string { return fill(n.Subject, id) }

// ConsumerName returns the job's task consumer name.
func (n Names) ConsumerName(id JobID) string { return fill(n.Consumer, id) }

// DeadLetterConsumerName returns the job's consumer on the advisory stream.
func (n Names) DeadLetterConsumerName(id JobID) string { return fill(n.DeadLetterConsumer, id) }

// SubjectFilter returns the subject filter that matches every job's task
// subject, e.g. "job.*.tasks", for listing job streams.
func (n Names) SubjectFilter() string { return strings.ReplaceAll(n.Subject, IDPlaceholder, "*") }

// JobFromStream returns the job whose task stream is called name. It accepts
// only names that the pattern builds from a valid id, so with the default
// pattern "job_1" gives 1, while "job_01", "job_1_x", "job_" and "advisories"
// are not job streams.
func (n Names) JobFromStream(name string) (JobID, bool) { return jobFrom(n.Stream, name) }

// JobFromDeadLetterConsumer returns the job whose dead-letter consumer is
// called name, by the same rules as [Names.JobFromStream].
func (n Names) JobFromDeadLetterConsumer(name string) (JobID, bool) {
	return jobFrom(n.DeadLetterConsumer, name)
}

// jobFrom returns the job id that pattern builds name from.
func jobFrom(pattern, name string) (JobID, bool) {
	prefix, suffix, _ := strings.Cut(pattern, IDPlaceholder)
	if len(name) <= len(prefix)+len(suffix) || !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, suffix) {
		return 0, false
	}
	id, err := ParseJobID(name[len(prefix) : len(name)-len(suffix)])
	if err != nil || fill(pattern, id) != name {
		return 0, false
	}
	return id, true
}

func fill(pattern string, id JobID) string {
	return strings.Replace(pattern, IDPlaceholder, id.String(), 1)
}

func checkPattern(p string) error {
	switch strings.Count(p, IDPlaceholder) {
	case 1:
		return nil
	case 0:
		return fmt.Errorf("must contain %s", IDPlaceholder)
	default:
		return fmt.Errorf("must contain %s only once", IDPlaceholder)
	}
}

func validResourceName(s string) bool {
	return s != "" && !strings.ContainsAny(s, ".*>/\\ \t\r\n")
}

func validSubject(s string) bool {
	if s == "" || strings.ContainsAny(s, "*> \t\r\n") {
		return false
	}
	for _, tok := range strings.Split(s, ".") {
		if tok == "" {
			return false
		}
	}
	return true
}
