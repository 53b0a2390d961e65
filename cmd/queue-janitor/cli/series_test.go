package cli

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
)

// TestRetriedOperationsAreQueues: the operations primed at zero on
// queue_janitor_retries_total are exactly those queue retries (the op names
// of its retry.do calls), so that a new or renamed operation is primed too.
func TestRetriedOperationsAreQueues(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../../../queue/*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("queue sources: %v", err)
	}
	call := regexp.MustCompile(`(?:\.retry\.do|\.deleteOnce)\(ctx, "([^"]+)"`)
	var ops []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range call.FindAllStringSubmatch(string(b), -1) {
			ops = append(ops, m[1])
		}
	}
	slices.Sort(ops)
	want := slices.Clone(retriedOperations)
	slices.Sort(want)
	if !slices.Equal(slices.Compact(ops), want) {
		t.Errorf("queue retries %v; retriedOperations primes %v", ops, want)
	}
}

// TestKnownSeriesFollowTerminalStatuses: the terminal statuses configured
// are the ones primed with a cleanup.
func TestKnownSeriesFollowTerminalStatuses(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	cfg.TerminalStatuses = "revoked,SUCCESS"
	cleanup := map[string]bool{}
	for _, e := range knownSeries(cfg).Events {
		if e.Decision == "cleanup" {
			cleanup[e.Status] = true
		}
	}
	if len(cleanup) != 2 || !cleanup["revoked"] || !cleanup["success"] {
		t.Errorf("statuses primed with a cleanup: %v, want revoked and success", cleanup)
	}
}
