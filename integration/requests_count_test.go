package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// expectedWire is what each path of one event puts on the wire today, as
// the NATS server sees the service's connection: the messages the service
// sends, by class (see wireNames.class), how many of them are round trips
// (a request and its reply), and how many of those wait for one another
// before the answer is sent (the sequential depth: what a backend waiting
// for the answer pays in round trips). Background messages (the intake's
// pull requests, its consumer check every 2 s, the bucket check every 5 s
// outside the path) are not counted.
//
// When the effect path changes on purpose, update this table: the failure
// message gives the new counts and the path's shape.
var expectedWire = []wireExpectation{
	{
		path: wirePathTerminal,
		sent: map[string]int{"kv.get": 1, "kv.create": 1, "stream.info job": 1,
			"stream.delete job": 1, "consumer.delete dead-letter": 1, "kv.update": 1, "answer": 1, "ack": 1},
		roundTrips: 6, sequential: 5,
	},
	{
		path: wirePathRestartEmpty,
		sent: map[string]int{"kv.get": 1, "kv.create": 1, "stream.info job": 1,
			"consumer.info dead-letter": 1, "kv.update": 1, "answer": 1, "ack": 1},
		roundTrips: 5, sequential: 5,
	},
	{
		path: wirePathRestartLeftover,
		sent: map[string]int{"kv.get": 1, "kv.create": 1, "stream.info job": 2, "stream.purge job": 1,
			"stream.delete job": 1, "consumer.delete dead-letter": 1, "kv.update": 1, "answer": 1, "ack": 1},
		roundTrips: 8, sequential: 7,
	},
}

type wireExpectation struct {
	path       string
	sent       map[string]int
	roundTrips int
	sequential int
}

// The paths, each for a job of its own that the service has not seen.
const (
	// wirePathTerminal: REVOKED for a job whose stream holds tasks.
	wirePathTerminal = "terminal, leftover"
	// wirePathRestartEmpty: restart_requested for a job with nothing left.
	wirePathRestartEmpty = "restart, nothing left"
	// wirePathRestartLeftover: restart_requested for a job whose earlier
	// run's stream still holds tasks.
	wirePathRestartLeftover = "restart, leftover"
)

var wirePathOrder = []string{wirePathTerminal, wirePathRestartEmpty, wirePathRestartLeftover}

// TestRequestsPerPath counts, on the wire, what the service sends for one
// terminal job with a leftover, one restart with nothing left and one with
// a leftover, and holds each path to expectedWire: a path may not grow a
// request, or a wait for one, unnoticed. Nothing is timed: the proxy's delay
// only orders requests against replies.
func TestRequestsPerPath(t *testing.T) {
	t.Parallel()
	e := setup(t)
	proxy := newWireProxy(t, e.url, wireDelay)
	args := []string{"serve", "--nats-url", proxy.URL(), "--log-format", "json", "--log-level", "info",
		"--http-addr", "", "--reconcile-interval", "0", "--ack-wait", "60s"}
	startServe(t, e.js, args, zerolog.NewTestWriter(t))
	n := wireNames{Names: e.names, eventStream: "JOB_EVENTS", consumer: "queue-janitor", bucket: "queue_janitor_jobs",
		answerPrefixes: []string{"job.queue.cleaned.", "job.queue.flushed."}}

	paths, err := runWirePaths(t, proxy, e.js, n, "job.status.", 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range expectedWire {
		got := paths[want.path]
		t.Logf("%s: sent %d (%s); round trips %d, sequential %d: %s", want.path, total(got.sent), counts(got.sent),
			got.roundTrips, got.sequential, got.shape())
		var changed []string
		if d := diffCounts(want.sent, got.sent); len(d) > 0 {
			changed = append(changed, "messages sent: "+strings.Join(d, ", "))
		}
		if got.roundTrips != want.roundTrips {
			changed = append(changed, fmt.Sprintf("round trips: %d → %d", want.roundTrips, got.roundTrips))
		}
		if got.sequential != want.sequential {
			changed = append(changed, fmt.Sprintf("sequential round trips before the answer: %d → %d", want.sequential, got.sequential))
		}
		if len(changed) > 0 {
			t.Errorf("path %q changed (expected → measured): %s\n  measured path: %s\n  measured counts: %s\n"+
				"  if this is intended, update expectedWire in requests_count_test.go (and docs/BENCHMARKS.md)",
				want.path, strings.Join(changed, "; "), got.shape(), counts(got.sent))
		}
	}
}

// runWirePaths runs the three paths through the service behind proxy, one
// at a time, on jobs first, first+1 and first+2, and returns what each put
// on the wire. It starts them just after one of the service's periodic
// bucket checks (a request the paths may send too), so that the next check
// falls after them; should the paths outlast the interval on a loaded
// machine, it tries again on new jobs.
func runWirePaths(tb testing.TB, proxy *wireProxy, js jetstream.JetStream, n wireNames, subjectPrefix string, first queue.JobID) (map[string]wirePath, error) {
	tb.Helper()
	const bucketCheckEvery = 5 * time.Second // cli's bucketWatchInterval
	var lastErr error
	for try := range 3 {
		base := first + queue.JobID(10*try)
		ids := map[string]queue.JobID{wirePathTerminal: base, wirePathRestartEmpty: base + 1, wirePathRestartLeftover: base + 2}
		one := int64(1)
		for _, path := range []string{wirePathTerminal, wirePathRestartLeftover} {
			if err := queue.Provision(context.Background(), js, n.Names, ids[path], &one); err != nil {
				return nil, err
			}
			publishTasks(tb, js, n.SubjectName(ids[path]), 0, 5)
		}
		// Just after a bucket check, or at once if none comes.
		from := len(proxy.snapshot())
		i, synced := proxy.waitFor(from, bucketCheckEvery+time.Second, func(op wireOp) bool {
			return op.fromClient && n.class(op) == classBucketCheck
		})
		checked := time.Now()
		if synced {
			checked = proxy.snapshot()[i].at
		}
		windows := map[string][2]int{}
		for _, path := range wirePathOrder {
			status, attempt := events.StatusRevoked, int64(1)
			if path != wirePathTerminal {
				status, attempt = events.StatusRestartRequested, 2
			}
			start := len(proxy.snapshot())
			emitPrefixed(tb, js, subjectPrefix, events.StatusEvent{JobID: ids[path], Status: status, Attempt: &attempt})
			d, ok := proxy.waitFor(start, 30*time.Second, func(op wireOp) bool {
				return !op.fromClient && strings.HasPrefix(op.reply, "$JS.ACK."+n.eventStream+".")
			})
			if !ok {
				return nil, fmt.Errorf("%s: the event did not reach the service within 30s: %w", path, errWireTimeout)
			}
			ackSubject := proxy.snapshot()[d].reply
			a, ok := proxy.waitFor(d, 30*time.Second, func(op wireOp) bool {
				return op.fromClient && op.subject == ackSubject && n.class(op) == "ack"
			})
			if !ok {
				return nil, fmt.Errorf("%s: the service did not ack the event within 30s: %w", path, errWireTimeout)
			}
			windows[path] = [2]int{d, a}
		}
		ops := proxy.snapshot()
		if last := ops[windows[wirePathOrder[len(wirePathOrder)-1]][1]].at; synced && last.Sub(checked) > bucketCheckEvery-300*time.Millisecond {
			lastErr = fmt.Errorf("the paths took %s, too close to the next bucket check (every %s): the machine is too loaded",
				last.Sub(checked).Round(time.Millisecond), bucketCheckEvery)
			continue
		}
		out := map[string]wirePath{}
		for path, w := range windows {
			p, err := n.wirePathOf(ops, w[0], w[1])
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			out[path] = p
		}
		return out, nil
	}
	return nil, lastErr
}

// emitPrefixed publishes ev on subjectPrefix+status and waits for the
// event stream's ack.
func emitPrefixed(tb testing.TB, js jetstream.JetStream, subjectPrefix string, ev events.StatusEvent) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg, err := ev.Msg(ctx, subjectPrefix)
	if err != nil {
		tb.Fatalf("build event: %v", err)
	}
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		tb.Fatalf("publish %s: %v", msg.Subject, err)
	}
}
