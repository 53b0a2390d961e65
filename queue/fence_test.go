package queue

import (
	"strings"
	"testing"
	"time"
)

func TestFenceAllows(t *testing.T) {
	t.Parallel()
	cut := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	before, after := cut.Add(-time.Nanosecond), cut.Add(time.Second)
	attempt := func(v string) map[string]string { return map[string]string{AttemptMetadataKey: v} }
	timeFence := Fence{CreatedBefore: cut}
	exact := Fence{CreatedBefore: cut, AttemptKnown: true, MaxAttempt: 2}
	tests := []struct {
		name    string
		fence   Fence
		created time.Time
		meta    map[string]string
		want    bool
		reason  string // a substring of the reason when kept
	}{
		{"time: created before", timeFence, before, nil, true, ""},
		{"time: created at the cut", timeFence, cut, nil, false, "not before"},
		{"time: created after", timeFence, after, nil, false, "not before"},
		{"time: zero fence keeps everything", Fence{}, before, nil, false, "no server time"},
		{"time: other metadata ignored", timeFence, before, map[string]string{"x": "9"}, true, ""},
		{"exact: earlier attempt, created after", exact, after, attempt("1"), true, ""},
		{"exact: same attempt, created after", exact, after, attempt("2"), true, ""},
		{"exact: later attempt, created before", exact, before, attempt("3"), false, "job_attempt=3, a later run than attempt 2"},
		{"exact: later attempt, created after", exact, after, attempt("3"), false, "job_attempt=3"},
		{"attempt unknown: time fence allows", Fence{CreatedBefore: cut, MaxAttempt: 9}, before, attempt("3"), true, ""},
		{"attempt unknown: time fence keeps", Fence{CreatedBefore: cut, MaxAttempt: 9}, after, attempt("1"), false, "not before"},
		{"unreadable stamp: time fence allows", exact, before, attempt("three"), true, ""},
		{"unreadable stamp: time fence keeps", exact, after, attempt("1x"), false, "not before"},
		{"empty stamp: time fence keeps", exact, after, attempt(""), false, "not before"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ok, reason := tt.fence.Allows(tt.created, tt.meta)
			if ok != tt.want {
				t.Fatalf("Allows(%s, %v) = %v (%q), want %v", tt.created, tt.meta, ok, reason, tt.want)
			}
			if ok && reason != "" {
				t.Errorf("allowed with a reason %q", reason)
			}
			if !ok && !strings.Contains(reason, tt.reason) {
				t.Errorf("reason %q does not contain %q", reason, tt.reason)
			}
		})
	}
}
