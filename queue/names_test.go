package queue

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestParseJobID(t *testing.T) {
	t.Parallel()
	valid := map[string]JobID{"1": 1, "10": 10, "9223372036854775807": 9223372036854775807}
	for in, want := range valid {
		t.Run("valid/"+in, func(t *testing.T) {
			t.Parallel()
			got, err := ParseJobID(in)
			if err != nil || got != want || !got.Valid() || got.String() != in {
				t.Fatalf("ParseJobID(%q) = %d, %v; want %d, nil", in, got, err, want)
			}
		})
	}
	invalid := []string{
		"", "0", "01", "-1", "+1", "1.>", "*", ">", "1 2", "../x", " 1", "1 ", "1\n", "0x1", "1e3",
		"9223372036854775808", "99999999999999999999", strings.Repeat("1", 20), "１",
	}
	for _, in := range invalid {
		t.Run("invalid/"+in, func(t *testing.T) {
			t.Parallel()
			got, err := ParseJobID(in)
			if !errors.Is(err, ErrInvalidJobID) || got != 0 {
				t.Fatalf("ParseJobID(%q) = %d, %v; want 0, ErrInvalidJobID", in, got, err)
			}
		})
	}
}

func TestJobIDValid(t *testing.T) {
	t.Parallel()
	for id, want := range map[JobID]bool{-1: false, 0: false, 1: true} {
		if got := id.Valid(); got != want {
			t.Errorf("JobID(%d).Valid() = %v, want %v", id, got, want)
		}
	}
}

func FuzzParseJobID(f *testing.F) {
	for _, seed := range []string{"1", "10", "01", "0", "-1", "1.>", "9223372036854775807",
		"9223372036854775808", "１", " 1", "1\n", "../x"} {
		f.Add(seed)
	}
	pattern := regexp.MustCompile(`^[1-9][0-9]{0,18}$`)
	f.Fuzz(func(t *testing.T, in string) {
		id, err := ParseJobID(in)
		if err != nil {
			if !errors.Is(err, ErrInvalidJobID) || id != 0 {
				t.Fatalf("ParseJobID(%q) = %d, %v; an error must be ErrInvalidJobID with id 0", in, id, err)
			}
			return
		}
		if !pattern.MatchString(in) || id.String() != in || !id.Valid() {
			t.Fatalf("ParseJobID(%q) accepted %d (%q)", in, id, id.String())
		}
	})
}

func TestDefaultNames(t *testing.T) {
	t.Parallel()
	n := DefaultNames()
	if err := n.Validate(); err != nil {
		t.Fatalf("DefaultNames().Validate() = %v", err)
	}
	got := []string{n.StreamName(1), n.SubjectName(1), n.ConsumerName(1), n.DeadLetterConsumerName(1),
		n.SubjectFilter(), n.AdvisoryStream}
	want := []string{"job_1", "job.1.tasks", "job-1-consumer", "job-1-dlq", "job.*.tasks", "advisories"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("name %d = %q, want %q", i, got[i], want[i])
		}
	}
}

func TestJobFromStream(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		want JobID // 0: not a job stream
	}{
		{"job_1", 1},
		{"job_10", 10},
		{"job_9223372036854775807", 9223372036854775807},
		{"job_01", 0},
		{"job_0", 0},
		{"job_", 0},
		{"job", 0},
		{"", 0},
		{"job_1_x", 0},
		{"job_1_archive", 0},
		{"job_x", 0},
		{"job_-1", 0},
		{"job_1.x", 0},
		{"JOB_1", 0},
		{"advisories", 0},
		{"xjob_1", 0},
		{"job_9223372036854775808", 0},
	}
	n := DefaultNames()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := n.JobFromStream(tt.name)
			if got != tt.want || ok != (tt.want != 0) {
				t.Fatalf("JobFromStream(%q) = %d, %v; want %d, %v", tt.name, got, ok, tt.want, tt.want != 0)
			}
		})
	}
}

func TestNamesValidate(t *testing.T) {
	t.Parallel()
	with := func(f func(*Names)) Names { n := DefaultNames(); f(&n); return n }
	tests := []struct {
		name  string
		names Names
		field string // the field the error must name
	}{
		{"stream without id", with(func(n *Names) { n.Stream = "job" }), "stream pattern"},
		{"stream with id twice", with(func(n *Names) { n.Stream = "job_{id}_{id}" }), "stream pattern"},
		{"stream with dot", with(func(n *Names) { n.Stream = "job.{id}" }), "stream pattern"},
		{"stream with wildcard", with(func(n *Names) { n.Stream = "job_{id}_*" }), "stream pattern"},
		{"stream with space", with(func(n *Names) { n.Stream = "job {id}" }), "stream pattern"},
		{"consumer without id", with(func(n *Names) { n.Consumer = "consumer" }), "consumer pattern"},
		{"consumer with dot", with(func(n *Names) { n.Consumer = "job.{id}" }), "consumer pattern"},
		{"dead-letter consumer without id", with(func(n *Names) { n.DeadLetterConsumer = "dlq" }), "dead-letter consumer pattern"},
		{"subject without id", with(func(n *Names) { n.Subject = "job.tasks" }), "subject pattern"},
		{"subject with id twice", with(func(n *Names) { n.Subject = "job.{id}.{id}" }), "subject pattern"},
		{"subject id not a whole token", with(func(n *Names) { n.Subject = "job.x{id}.tasks" }), "subject pattern"},
		{"subject id token suffix", with(func(n *Names) { n.Subject = "job.{id}x.tasks" }), "subject pattern"},
		{"subject with star", with(func(n *Names) { n.Subject = "job.{id}.*" }), "subject pattern"},
		{"subject with full wildcard", with(func(n *Names) { n.Subject = "job.{id}.>" }), "subject pattern"},
		{"subject with empty token", with(func(n *Names) { n.Subject = "job..{id}" }), "subject pattern"},
		{"advisory stream matches job pattern", with(func(n *Names) { n.AdvisoryStream = "job_5" }), "advisory stream"},
		{"empty advisory stream", with(func(n *Names) { n.AdvisoryStream = "" }), "advisory stream"},
		{"advisory stream with dot", with(func(n *Names) { n.AdvisoryStream = "adv.x" }), "advisory stream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.names.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tt.field+" ") {
				t.Fatalf("Validate(%+v) = %v; want an error naming %q", tt.names, err, tt.field)
			}
		})
	}
}

func TestCustomNamesRoundTrip(t *testing.T) {
	t.Parallel()
	n := Names{
		Stream:             "tasks-{id}-q",
		Subject:            "{id}.work",
		Consumer:           "w{id}",
		DeadLetterConsumer: "dead_{id}",
		AdvisoryStream:     "tasks-adv-q",
	}
	if err := n.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	if got := n.StreamName(42); got != "tasks-42-q" {
		t.Errorf("StreamName(42) = %q", got)
	}
	if got := n.SubjectName(42); got != "42.work" {
		t.Errorf("SubjectName(42) = %q", got)
	}
	if got := n.SubjectFilter(); got != "*.work" {
		t.Errorf("SubjectFilter() = %q", got)
	}
	if got := n.ConsumerName(42) + " " + n.DeadLetterConsumerName(42); got != "w42 dead_42" {
		t.Errorf("consumer names = %q", got)
	}
	for _, id := range []JobID{1, 42, 9223372036854775807} {
		if got, ok := n.JobFromStream(n.StreamName(id)); !ok || got != id {
			t.Errorf("JobFromStream(%q) = %d, %v; want %d", n.StreamName(id), got, ok, id)
		}
	}
	for _, name := range []string{"tasks--q", "tasks-01-q", "tasks-1-q-q", "tasks-1", "1-q", "tasks-adv-q", "job_1"} {
		if id, ok := n.JobFromStream(name); ok {
			t.Errorf("JobFromStream(%q) = %d, want not a job stream", name, id)
		}
	}
}
