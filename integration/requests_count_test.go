package integration

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
// pull requests and consumer check, the periodic bucket check) are not
// counted: the paths run between them.
//
// When the effect path changes on purpose, update this table: the failure
// message gives the new counts and the path's shape.
//
// Since the safety and truthfulness rework (issues 23, 27): the claim is a
// create first (no read; a read only on conflict), sent beside the read of
// the job's stream; the bucket's incarnation check (shared by the claims of
// that moment: one per job here, with one job at a time) goes beside the
// record of what is about to be removed (the intent, only when something
// is). A stream is purged before its delete only when the job's queue was
// removed within the last 15 minutes (not on these paths: each job is new;
// integration/resurrect_test.go covers it); the purge no longer looks the
// stream up first. A terminal job's answer (`cleaned`, which nobody waits
// on) is sent beside the record of the effect, a restart's after it.
var expectedWire = []wireExpectation{
	{
		path: wirePathFirst,
		sent: map[string]int{"kv.get": 1, "stream.info bucket": 2, "kv.get rebuild": 1, "kv.create": 1, "stream.info job": 1,
			"kv.update": 2, "stream.delete job": 1, "consumer.delete dead-letter": 1, "answer": 1, "ack": 1},
		roundTrips: 10, sequential: 6,
	},
	{
		path: wirePathTerminal,
		sent: map[string]int{"kv.create": 1, "stream.info job": 1, "kv.update": 2, "stream.info bucket": 1,
			"stream.delete job": 1, "consumer.delete dead-letter": 1, "answer": 1, "ack": 1},
		roundTrips: 7, sequential: 3,
	},
	{
		path: wirePathRestartEmpty,
		sent: map[string]int{"kv.create": 1, "stream.info job": 1, "stream.info bucket": 1,
			"consumer.info dead-letter": 1, "kv.update": 1, "answer": 1, "ack": 1},
		roundTrips: 5, sequential: 3,
	},
	{
		path: wirePathRestartLeftover,
		sent: map[string]int{"kv.create": 1, "stream.info job": 1, "kv.update": 2, "stream.info bucket": 1,
			"stream.delete job": 1, "consumer.delete dead-letter": 1, "answer": 1, "ack": 1},
		roundTrips: 7, sequential: 4,
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
	// wirePathFirst: REVOKED for a job whose stream holds tasks, the first
	// event the process handles (it has not checked the bucket yet).
	wirePathFirst = "terminal, leftover, first event of the process"
	// wirePathTerminal: the same, once the process has handled an event.
	wirePathTerminal = "terminal, leftover"
	// wirePathRestartEmpty: restart_requested for a job with nothing left.
	wirePathRestartEmpty = "restart, nothing left"
	// wirePathRestartLeftover: restart_requested for a job whose earlier
	// run's stream still holds tasks.
	wirePathRestartLeftover = "restart, leftover"
)

var wirePathOrder = []string{wirePathFirst, wirePathTerminal, wirePathRestartEmpty, wirePathRestartLeftover}

// TestRequestsPerPath counts, on the wire, what the service sends for a
// terminal job with a leftover (the process's first event, then another),
// a restart with nothing left and one with a leftover, and holds each path
// to expectedWire: a path may not grow a
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
				"  if this is intended, update expectedWire in requests_count_test.go (and docs/BENCHMARKS.md)\n  the path on the wire:\n%s",
				want.path, strings.Join(changed, "; "), got.shape(), counts(got.sent), got.timeline)
		}
	}
}

// runWirePaths runs the three paths through the service behind proxy, one
// at a time, each on a job of its own from first on, and returns what each
// put on the wire. The service also sends requests of its own every few
// seconds, some of the kinds a path sends (the bucket's stream info):
// runWirePaths first learns when they fall, then starts each path where
// none will (see backgroundTicks); should a path outlast its window on a
// loaded machine, it is run again on a new job.
func runWirePaths(tb testing.TB, proxy *wireProxy, js jetstream.JetStream, n wireNames, subjectPrefix string, first queue.JobID) (map[string]wirePath, error) {
	tb.Helper()
	ticks, err := backgroundTicks(proxy, n)
	if err != nil {
		return nil, err
	}
	// A bucket younger than a lease (the service's quarantine, --lease,
	// 12 s by default) takes no claim yet: the first event would wait.
	if err := waitBucketAge(js, n.bucket, 13*time.Second); err != nil {
		return nil, err
	}
	out := map[string]wirePath{}
	next := first
	for _, path := range wirePathOrder {
		var lastErr error
		for range 3 {
			id := next
			next++
			p, err := runWirePath(tb, proxy, js, n, subjectPrefix, path, id, ticks)
			if errors.Is(err, errWireBusy) {
				lastErr = err
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			out[path] = p
			lastErr = nil
			break
		}
		if lastErr != nil {
			return nil, fmt.Errorf("%s: %w", path, lastErr)
		}
	}
	return out, nil
}

// backgroundPeriod is the period of serve's loops that send requests on
// their own: the bucket check (cli's bucketWatchInterval) and the records'
// rebuild check (handlers.Rebuilder.Run), each a stream info of the bucket
// (the rebuild check then reads its marker). The intake's consumer check
// (every 2 s) and pull requests have classes of their own, left out of
// every path.
const backgroundPeriod = 5 * time.Second

// Around a background tick: what follows it (the rebuild check's marker
// read, after the proxy's delay), and the longest a path may take.
const (
	tickSettle = 400 * time.Millisecond
	pathBudget = 1500 * time.Millisecond
)

// errWireBusy says that a path outlasted its window between background
// requests.
var errWireBusy = errors.New("the path outlasted its window between the service's background requests: the machine is too loaded")

// backgroundTicks watches the idle service for two periods and returns the
// instants of its background bucket requests in the second: they recur
// every backgroundPeriod. A loaded machine can send one late; the watch is
// then made again, up to three times. It fails if they never recur (the
// service's background loops changed: update backgroundPeriod).
func backgroundTicks(proxy *wireProxy, n wireNames) ([]time.Time, error) {
	var err error
	for range 3 {
		var second []time.Time
		if second, err = watchTicks(proxy, n); err == nil {
			return second, nil
		}
	}
	return nil, err
}

// watchTicks is one watch of backgroundTicks.
func watchTicks(proxy *wireProxy, n wireNames) ([]time.Time, error) {
	from := len(proxy.snapshot())
	t0 := time.Now()
	time.Sleep(2*backgroundPeriod + 500*time.Millisecond)
	var first, second []time.Time
	for _, op := range proxy.snapshot()[from:] {
		if !op.fromClient || n.class(op) != classBucketCheck {
			continue
		}
		if op.at.Before(t0.Add(backgroundPeriod)) {
			first = append(first, op.at)
		} else {
			second = append(second, op.at)
		}
	}
	for _, t := range second {
		if !slices.ContainsFunc(first, func(f time.Time) bool {
			d := t.Sub(f) - backgroundPeriod
			return d > -150*time.Millisecond && d < 150*time.Millisecond
		}) {
			return nil, fmt.Errorf("the idle service's bucket requests (at %v) do not recur every %s: update backgroundPeriod in requests_count_test.go",
				append(first, second...), backgroundPeriod)
		}
	}
	return second, nil
}

// waitBucketAge waits until the bucket's stream has lived age, in server
// time.
func waitBucketAge(js jetstream.JetStream, bucket string, age time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return fmt.Errorf("bucket %s: %w", bucket, err)
	}
	info := st.CachedInfo()
	if lived := info.TimeStamp.Sub(info.Created); lived < age {
		time.Sleep(age - lived)
	}
	return nil
}

// pathWindow returns when to start a path (tickSettle after a background
// tick, not before now) so that no tick falls before start+pathBudget, and
// when the next tick falls.
func pathWindow(ticks []time.Time, now time.Time) (start, next time.Time) {
	var all []time.Time
	for _, t := range ticks {
		for k := 0; k < 6; k++ {
			if at := t.Add(time.Duration(k) * backgroundPeriod); at.After(now.Add(-tickSettle)) {
				all = append(all, at)
			}
		}
	}
	slices.SortFunc(all, func(a, b time.Time) int { return a.Compare(b) })
	for i, t := range all[:len(all)-1] {
		if all[i+1].Sub(t) > tickSettle+pathBudget {
			return t.Add(tickSettle), all[i+1]
		}
	}
	return now, now // no window: the caller finds the path too long
}

// runWirePath runs one path on job id, in a window between background
// requests.
func runWirePath(tb testing.TB, proxy *wireProxy, js jetstream.JetStream, n wireNames, subjectPrefix, path string, id queue.JobID, ticks []time.Time) (wirePath, error) {
	tb.Helper()
	status, attempt := events.StatusRevoked, int64(1)
	if path != wirePathTerminal && path != wirePathFirst {
		status, attempt = events.StatusRestartRequested, 2
	}
	if path != wirePathRestartEmpty {
		one := int64(1)
		if err := queue.Provision(context.Background(), js, n.Names, id, &one); err != nil {
			return wirePath{}, err
		}
		publishTasks(tb, js, n.SubjectName(id), 0, 5)
	}
	begin, nextTick := pathWindow(ticks, time.Now())
	time.Sleep(time.Until(begin))
	start := len(proxy.snapshot())
	emitPrefixed(tb, js, subjectPrefix, events.StatusEvent{JobID: id, Status: status, Attempt: &attempt})
	d, ok := proxy.waitFor(start, 30*time.Second, func(op wireOp) bool {
		return !op.fromClient && strings.HasPrefix(op.reply, "$JS.ACK."+n.eventStream+".")
	})
	if !ok {
		return wirePath{}, fmt.Errorf("the event did not reach the service within 30s: %w", errWireTimeout)
	}
	ackSubject := proxy.snapshot()[d].reply
	a, ok := proxy.waitFor(d, 30*time.Second, func(op wireOp) bool {
		return op.fromClient && op.subject == ackSubject && n.class(op) == "ack"
	})
	if !ok {
		return wirePath{}, fmt.Errorf("the service did not ack the event within 30s: %w", errWireTimeout)
	}
	ops := proxy.snapshot()
	if !ops[a].at.Before(nextTick.Add(-50 * time.Millisecond)) {
		return wirePath{}, errWireBusy
	}
	return n.wirePathOf(ops, d, a)
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
