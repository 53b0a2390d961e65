package events

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNakDelay(t *testing.T) {
	t.Parallel()
	tests := []struct {
		delivered uint64
		want      time.Duration
	}{
		{0, time.Second},
		{1, time.Second},
		{2, 2 * time.Second},
		{3, 4 * time.Second},
		{4, 8 * time.Second},
		{6, 32 * time.Second},
		{7, time.Minute}, // 64s, capped
		{8, time.Minute},
		{1000, time.Minute},
		{math.MaxUint64, time.Minute},
	}
	for _, tc := range tests {
		if got := nakDelay(tc.delivered); got != tc.want {
			t.Errorf("nakDelay(%d) = %v, want %v", tc.delivered, got, tc.want)
		}
	}
}

func TestRedeliveryBackoff(t *testing.T) {
	t.Parallel()
	s, m := time.Second, time.Minute
	tests := []struct {
		ackWait    time.Duration
		maxDeliver int
		want       []time.Duration
	}{
		{30 * s, 10, []time.Duration{30 * s, m, 2 * m, 4 * m, 8 * m, 10 * m}},
		{30 * s, 2, []time.Duration{30 * s}},
		{30 * s, 4, []time.Duration{30 * s, m, 2 * m}},
		{s, 7, []time.Duration{s, 2 * s, 4 * s, 8 * s, 16 * s, 32 * s}},
		{s, 100, []time.Duration{s, 2 * s, 4 * s, 8 * s, 16 * s, 32 * s}},
		{5 * m, 10, []time.Duration{5 * m, 10 * m, 10 * m, 10 * m, 10 * m, 10 * m}},
		{time.Hour, 3, []time.Duration{10 * m, 10 * m}},
		{30 * s, 1, []time.Duration{}},
	}
	for _, tc := range tests {
		got := redeliveryBackoff(tc.ackWait, tc.maxDeliver)
		if !slices.Equal(got, tc.want) {
			t.Errorf("redeliveryBackoff(%v, %d) = %v, want %v", tc.ackWait, tc.maxDeliver, got, tc.want)
		}
		// JetStream rejects a consumer whose BackOff is not shorter than
		// MaxDeliver.
		if len(got) >= tc.maxDeliver {
			t.Errorf("redeliveryBackoff(%v, %d) has %d steps, the server needs fewer than MaxDeliver", tc.ackWait, tc.maxDeliver, len(got))
		}
	}
}

func TestIntakeConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(*IntakeConfig)
		want   string // a fragment of the error naming the field; "" means valid
	}{
		{name: "defaults", change: func(*IntakeConfig) {}},
		{name: "other subject prefix", change: func(c *IntakeConfig) { c.Subject = "acme.jobs.status.*" }},
		{name: "MaxDeliver 2", change: func(c *IntakeConfig) { c.MaxDeliver = 2 }},
		{name: "5 replicas", change: func(c *IntakeConfig) { c.Replicas = 5 }},
		{name: "stream empty", change: func(c *IntakeConfig) { c.Stream = "" }, want: "event stream name"},
		{name: "stream with dot", change: func(c *IntakeConfig) { c.Stream = "JOB.EVENTS" }, want: "event stream name"},
		{name: "stream with wildcard", change: func(c *IntakeConfig) { c.Stream = "JOB_*" }, want: "event stream name"},
		{name: "stream with space", change: func(c *IntakeConfig) { c.Stream = "JOB EVENTS" }, want: "event stream name"},
		{name: "subject without .*", change: func(c *IntakeConfig) { c.Subject = "job.status" }, want: "event subject"},
		{name: "subject with >", change: func(c *IntakeConfig) { c.Subject = "job.status.>" }, want: "event subject"},
		{name: "subject with two wildcards", change: func(c *IntakeConfig) { c.Subject = "job.*.status.*" }, want: "event subject"},
		{name: "subject wildcard not last", change: func(c *IntakeConfig) { c.Subject = "job.status.*.x" }, want: "event subject"},
		{name: "subject >.*", change: func(c *IntakeConfig) { c.Subject = "job.>.*" }, want: "event subject"},
		{name: "consumer empty", change: func(c *IntakeConfig) { c.Consumer = "" }, want: "consumer name"},
		{name: "consumer with dot", change: func(c *IntakeConfig) { c.Consumer = "queue.janitor" }, want: "consumer name"},
		{name: "MaxDeliver 1", change: func(c *IntakeConfig) { c.MaxDeliver = 1 }, want: "max deliver 1"},
		{name: "MaxDeliver 0", change: func(c *IntakeConfig) { c.MaxDeliver = 0 }, want: "max deliver 0"},
		{name: "MaxDeliver unlimited", change: func(c *IntakeConfig) { c.MaxDeliver = -1 }, want: "max deliver -1"},
		{name: "AckWait under 1s", change: func(c *IntakeConfig) { c.AckWait = 999 * time.Millisecond }, want: "ack wait"},
		{name: "Concurrency 0", change: func(c *IntakeConfig) { c.Concurrency = 0 }, want: "concurrency 0"},
		{name: "EffectTimeout 0", change: func(c *IntakeConfig) { c.EffectTimeout = 0 }, want: "timeouts must be positive"},
		{name: "ShutdownTimeout negative", change: func(c *IntakeConfig) { c.ShutdownTimeout = -time.Second }, want: "timeouts must be positive"},
		{name: "MaxEventBytes 1023", change: func(c *IntakeConfig) { c.MaxEventBytes = 1023 }, want: "max event bytes 1023"},
		{name: "Replicas 0", change: func(c *IntakeConfig) { c.Replicas = 0 }, want: "replicas 0"},
		{name: "Replicas 6", change: func(c *IntakeConfig) { c.Replicas = 6 }, want: "replicas 6"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := DefaultIntakeConfig()
			tc.change(&c)
			checkValidate(t, c.Validate(), tc.want)
		})
	}
}

// checkValidate asserts that err is nil when want is "", or else names the
// bad field with the fragment want.
func checkValidate(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("Validate() = %v, want nil", err)
	case want != "" && err == nil:
		t.Errorf("Validate() = nil, want an error naming %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("Validate() = %q, want it to name %q", err, want)
	}
}

func TestIntakeConfigSubjectPrefix(t *testing.T) {
	t.Parallel()
	for subject, want := range map[string]string{"job.status.*": "job.status.", "acme.status.*": "acme.status."} {
		c := DefaultIntakeConfig()
		c.Subject = subject
		if got := c.SubjectPrefix(); got != want {
			t.Errorf("SubjectPrefix(%q) = %q, want %q", subject, got, want)
		}
	}
	// The default decoder prefix and the default intake subject agree.
	if got := DefaultIntakeConfig().SubjectPrefix(); got != "job.status." {
		t.Errorf("default SubjectPrefix = %q, want job.status.", got)
	}
}
