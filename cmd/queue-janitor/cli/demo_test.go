package cli

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
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
// before the table, which ends the output. And the demo's service trusts the
// first bucket of the server the demo started empty, as serve
// --embedded-nats does: its REVOKED is not parked for a lease's quarantine
// (it was: "gone in 11.4s" where the README shows milliseconds).
func TestDemoTableIsNotInterleavedWithLogs(t *testing.T) {
	t.Parallel()
	var out lockedBuffer
	if err := Run(t.Context(), []string{"demo", "--log-level", "debug"}, noEnv, &out, &out); err != nil {
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
	if strings.Contains(text, "a claim held in an earlier bucket") {
		t.Errorf("the demo's events waited out the quarantine of a new bucket:\n%s", text[:start])
	}
	for _, line := range strings.Split(text[start:], "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "{") {
			t.Errorf("log line inside or after the table: %s\n%s", line, text[start:])
		}
	}
}

// TestDemoDrainEndsOnTheConsumersState: the worker takes every task, also
// those pending their ack when it starts (as the tasks sent to a fetch that
// gave up on a busy machine are): an empty fetch does not end the drain,
// the consumer's state does.
func TestDemoDrainEndsOnTheConsumersState(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := runServer(t, nil)
	cfg := DefaultConfig()
	d, err := newDemoWorld(ctx, srv.ClientURL(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.nc.Close)
	const id, tasks, abandoned = queue.JobID(7), 100, 10
	if err := queue.Provision(ctx, d.js, d.names, id, events.Attempt(1)); err != nil {
		t.Fatal(err)
	}
	// A short AckWait, so that the abandoned tasks come back within the
	// test, yet longer than the empty fetches an older drain stopped at.
	cons, err := d.js.Consumer(ctx, d.names.StreamName(id), d.names.ConsumerName(id))
	if err != nil {
		t.Fatal(err)
	}
	cc := cons.CachedInfo().Config
	cc.AckWait = 5 * time.Second
	if _, err := d.js.UpdateConsumer(ctx, d.names.StreamName(id), cc); err != nil {
		t.Fatal(err)
	}
	if err := d.publishRound(ctx, id, tasks); err != nil {
		t.Fatal(err)
	}
	// A fetch that takes tasks and never acks them.
	batch, err := cons.Fetch(abandoned)
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for range batch.Messages() {
		got++
	}
	if got != abandoned {
		t.Fatalf("the abandoned fetch took %d tasks, want %d (err %v)", got, abandoned, batch.Error())
	}

	seen := map[int]int{}
	n, dups, err := d.drain(ctx, id, -1, seen)
	if err != nil {
		t.Fatal(err)
	}
	if n != tasks || len(seen) != tasks || dups != 0 {
		t.Errorf("the drain took %d deliveries of %d distinct tasks (%d repeated), want each of the %d once", n, len(seen), dups, tasks)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumPending != 0 || info.NumAckPending != 0 {
		t.Errorf("after the drain the consumer has %d to deliver and %d pending their ack, want 0 and 0", info.NumPending, info.NumAckPending)
	}
}
