package cli

import (
	"bytes"
	"strings"
	"sync"
	"testing"
)

// lockedBuffer is one output that two writers share, as standard output and
// standard error share a pipe under `2>&1`.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestDemoTableIsNotInterleavedWithLogs: with standard output and standard
// error on one pipe (not a terminal: JSON log lines), every log line comes
// before the table, which ends the output.
func TestDemoTableIsNotInterleavedWithLogs(t *testing.T) {
	t.Parallel()
	var out lockedBuffer
	if err := Run(t.Context(), []string{"demo"}, noEnv, &out, &out); err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	text := out.String()
	start := strings.Index(text, "queue-janitor demo: the incident")
	if start < 0 {
		t.Fatalf("no table in the output:\n%s", text)
	}
	if !strings.Contains(text[:start], `"message":"event handled"`) {
		t.Errorf("the service's log lines should come before the table:\n%s", text)
	}
	for _, line := range strings.Split(text[start:], "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "{") {
			t.Errorf("log line inside or after the table: %s\n%s", line, text[start:])
		}
	}
}
