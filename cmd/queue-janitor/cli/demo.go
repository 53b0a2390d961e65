package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
	"github.com/example/queue-janitor/telemetry"
)

const demoAbout = `Replay the incident that motivated queue-janitor, on an in-process JetStream
server with the service running beside it:

  1. job 4242's stream holds 44,286 tasks; a worker has taken 3,000;
  2. the watchdog revokes the job: REVOKED -> the service deletes the stream
     and consumers;
  3. an operator presses Start: the backend publishes restart_requested, waits
     for job.queue.flushed.4242, and only then publishes the new round of
     43,597 tasks; a worker drains the queue.

A control job (4243) lives through the same story without queue-janitor. The
demo prints both side by side and exits 0 only if job 4242 ends with exactly
the new round and no task delivered twice.`

// The incident's figures.
const (
	demoFirstRound  = 44286
	demoTaken       = 3000
	demoSecondRound = 43597
	demoJob         = queue.JobID(4242)
	demoControlJob  = queue.JobID(4243)
)

func runDemo(ctx context.Context, args []string, cio cmdIO) error {
	cfg := DefaultConfig()
	cfg.LogLevel, cfg.HTTPAddr = "info", ""
	f := newFlagSet("demo", "", demoAbout)
	logFlags(f, &cfg)
	var traces bool
	f.group("Tracing")
	f.Bool(&traces, "traces", envPrefix+"DEMO_TRACES", "print every span as JSON on standard error (the console exporter)")
	if err := parseFlags(f, args, cio); err != nil {
		return err
	}
	log, err := telemetry.NewLogger(cio.stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	tel, err := setupTelemetry(ctx, cio, log, traces)
	if err != nil {
		return err
	}
	defer shutdownTelemetry(ctx, tel, log)

	emb, err := startEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		return err
	}
	defer emb.stop()
	cfg.NATS.URL = emb.URL()
	cfg.Reconcile.Interval = 0
	// As serve --embedded-nats: a server started empty in this process holds
	// no earlier bucket whose claims could still act, so the first bucket
	// needs no quarantine (without this the REVOKED waits out a lease).
	cfg.trustFirstBucket = emb.fresh

	svcCtx, stopService := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- serve(svcCtx, cfg, log, tel) }()
	var stopped sync.Once
	stop := func() {
		stopped.Do(func() {
			stopService()
			if err := <-served; err != nil {
				log.Error().Err(err).Msg("the demo's service stopped with an error")
			}
		})
	}
	defer stop()

	d, err := newDemoWorld(ctx, emb.URL(), cfg)
	if err != nil {
		return err
	}
	defer d.nc.Close()
	if err := d.waitForService(ctx, served); err != nil {
		return err
	}
	report, err := d.replay(ctx, tel)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	// The service logs its last lines as it stops: stop it before printing,
	// so that the table comes out whole, after them, when standard output
	// and standard error share a pipe or a file (CI, `2>&1 | tee`).
	stop()
	report.print(cio.stdout)
	return report.verify()
}

// demoWorld is the backend and worker stand-in.
type demoWorld struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	names queue.Names
	cfg   Config
}

func newDemoWorld(ctx context.Context, url string, cfg Config) (*demoWorld, error) {
	nc, err := nats.Connect(url, nats.Name("queue-janitor demo backend"))
	if err != nil {
		return nil, connectError(NATSConfig{URL: url}, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &demoWorld{nc: nc, js: js, names: cfg.Names, cfg: cfg}, ctx.Err()
}

// demoHangGuard bounds each wait of the demo for the service (to start, to
// answer an event) and for the server. It only guards against a hang: each
// wait ends as soon as what it waits for happens, however slow the machine.
const demoHangGuard = 2 * time.Minute

// waitForService waits until the service's consumer is pulling events.
func (d *demoWorld) waitForService(ctx context.Context, served <-chan error) error {
	deadline := time.Now().Add(demoHangGuard)
	for time.Now().Before(deadline) {
		select {
		case err := <-served:
			return fmt.Errorf("service stopped: %w", err)
		default:
		}
		if c, err := d.js.Consumer(ctx, d.cfg.Intake.Stream, d.cfg.Intake.Consumer); err == nil {
			if info, err := c.Info(ctx); err == nil && info.NumWaiting > 0 {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("the service did not start consuming within %s", demoHangGuard)
}

// demoReport holds what the demo measured.
type demoReport struct {
	before, after, control               queueState
	revokeToGone, restartToFlushed       time.Duration
	flushed                              events.QueueResult
	cleaned                              events.QueueResult
	firstDelivered, secondDistinct, dups int
	controlDelivered, controlDups        int
}

type queueState struct {
	messages uint64
	exists   bool
}

func (d *demoWorld) replay(ctx context.Context, tel *telemetry.Telemetry) (*demoReport, error) {
	r := &demoReport{}
	tracer := tel.Tracer()
	one := events.Attempt(1)

	// 1. The incident: both jobs hold their first round; a worker took 3,000.
	for _, id := range []queue.JobID{demoJob, demoControlJob} {
		if err := queue.Provision(ctx, d.js, d.names, id, one); err != nil {
			return nil, err
		}
		if err := d.publishRound(ctx, id, demoFirstRound); err != nil {
			return nil, err
		}
		if _, _, err := d.drain(ctx, id, demoTaken, nil); err != nil {
			return nil, err
		}
	}
	r.firstDelivered = demoTaken
	r.before = d.state(ctx, demoJob)

	// 2. The watchdog revokes job 4242.
	cleaned, err := d.nc.SubscribeSync(fillID(d.cfg.Events.CleanedSubject, demoJob))
	if err != nil {
		return nil, err
	}
	start := time.Now()
	sctx, span := tracer.Start(ctx, "backend: job 4242 REVOKED by watchdog")
	err = d.emit(sctx, events.StatusEvent{JobID: demoJob, Status: events.StatusRevoked, Attempt: one,
		PreviousStatus: events.StatusStarted, Actor: "watchdog", Reason: "no progress for 30 minutes", DispatchMode: "async_api"})
	span.End()
	if err != nil {
		return nil, err
	}
	if r.cleaned, err = awaitResult(cleaned); err != nil {
		return nil, fmt.Errorf("waiting for job.queue.cleaned: %w", err)
	}
	r.revokeToGone = time.Since(start)

	// 3. Start: restart_requested, wait for flushed, then the new round.
	flushed, err := d.nc.SubscribeSync(fillID(d.cfg.Events.FlushedSubject, demoJob))
	if err != nil {
		return nil, err
	}
	two := events.Attempt(2)
	start = time.Now()
	sctx, span = tracer.Start(ctx, "backend: operator presses Start on job 4242")
	err = d.emit(sctx, events.StatusEvent{JobID: demoJob, Status: events.StatusRestartRequested, Attempt: two,
		PreviousStatus: events.StatusRevoked, Actor: "operator", DispatchMode: "async_api"})
	span.End()
	if err != nil {
		return nil, err
	}
	if r.flushed, err = awaitResult(flushed); err != nil {
		return nil, fmt.Errorf("waiting for job.queue.flushed: %w", err)
	}
	r.restartToFlushed = time.Since(start)
	for _, id := range []queue.JobID{demoJob, demoControlJob} {
		if err := queue.Provision(ctx, d.js, d.names, id, two); err != nil {
			return nil, err
		}
		if err := d.publishRound(ctx, id, demoSecondRound); err != nil {
			return nil, err
		}
	}
	r.after = d.state(ctx, demoJob)
	r.control = d.state(ctx, demoControlJob)

	seen := map[int]int{}
	n, dups, err := d.drain(ctx, demoJob, -1, seen)
	if err != nil {
		return nil, err
	}
	r.secondDistinct, r.dups = len(seen), dups
	if n != len(seen)+dups {
		return nil, fmt.Errorf("worker count mismatch: %d deliveries, %d distinct, %d duplicates", n, len(seen), dups)
	}
	controlSeen := map[int]int{}
	n, dups, err = d.drain(ctx, demoControlJob, -1, controlSeen)
	if err != nil {
		return nil, err
	}
	r.controlDelivered, r.controlDups = n, dups
	return r, nil
}

func (d *demoWorld) emit(ctx context.Context, e events.StatusEvent) error {
	msg, err := e.Msg(ctx, d.cfg.Intake.SubjectPrefix())
	if err != nil {
		return err
	}
	_, err = d.js.PublishMsg(ctx, msg)
	return err
}

// publishRound publishes tasks 0..n-1 of a round, as the backend does.
func (d *demoWorld) publishRound(ctx context.Context, id queue.JobID, n int) error {
	subject := d.names.SubjectName(id)
	for i := range n {
		if _, err := d.js.PublishAsync(subject, fmt.Appendf(nil, `{"job_id":%d,"task":%d}`, id, i)); err != nil {
			return err
		}
		if i%1024 == 1023 {
			if err := awaitAcks(ctx, d.js); err != nil {
				return err
			}
		}
	}
	return awaitAcks(ctx, d.js)
}

func awaitAcks(ctx context.Context, js jetstream.JetStream) error {
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Minute):
		return errors.New("publish acks did not arrive within a minute")
	}
}

// drainHangGuard bounds a drain that makes no progress at all. It only
// guards against a hang: a drain ends when the consumer's state says every
// task was delivered and acknowledged, however long a busy machine takes.
const drainHangGuard = 5 * time.Minute

// drain is the worker: it takes up to limit tasks (all when limit < 0) from
// the job's consumer, acking each, and counts repeats in seen.
//
// Taking all ends on the consumer's state, not on an empty fetch: an empty
// fetch on a busy machine says only that no task came within the fetch's
// wait. The worker stops when the consumer has nothing left to deliver and
// no delivered task waits for its ack (NumPending and NumAckPending both 0,
// read after the acks were flushed to the server). A task the server sent
// to a fetch that had already given up is pending its ack, and comes back
// after the consumer's AckWait: the worker waits for it.
func (d *demoWorld) drain(ctx context.Context, id queue.JobID, limit int, seen map[int]int) (n, dups int, err error) {
	cons, err := d.js.Consumer(ctx, d.names.StreamName(id), d.names.ConsumerName(id))
	if err != nil {
		return 0, 0, err
	}
	lastProgress := time.Now()
	for limit < 0 || n < limit {
		batch := 1000
		if limit >= 0 {
			batch = min(batch, limit-n)
		}
		msgs, err := cons.Fetch(batch, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return n, dups, err
		}
		got := 0
		for m := range msgs.Messages() {
			got++
			n++
			var task struct {
				Task int `json:"task"`
			}
			if err := json.Unmarshal(m.Data(), &task); err != nil {
				return n, dups, err
			}
			if seen != nil {
				if seen[task.Task]++; seen[task.Task] > 1 {
					dups++
				}
			}
			if err := m.Ack(); err != nil {
				return n, dups, err
			}
		}
		if msgs.Error() != nil {
			return n, dups, msgs.Error()
		}
		if got > 0 {
			lastProgress = time.Now()
		}
		if got == batch {
			continue
		}
		// A short batch: the queue may be empty, or the machine slow.
		if limit < 0 {
			done, err := d.drained(ctx, cons)
			if err != nil {
				return n, dups, err
			}
			if done {
				return n, dups, nil
			}
			if time.Since(lastProgress) > drainHangGuard {
				info := cons.CachedInfo()
				return n, dups, fmt.Errorf("draining job %d: no task delivered for %s after %d; the consumer, as last read, had %d still to deliver and %d waiting for their ack",
					id, drainHangGuard, n, info.NumPending, info.NumAckPending)
			}
		} else if time.Since(lastProgress) > drainHangGuard {
			return n, dups, fmt.Errorf("taking %d tasks of job %d: no task delivered for %s after %d", limit, id, drainHangGuard, n)
		}
		if err := ctx.Err(); err != nil {
			return n, dups, err
		}
	}
	return n, dups, d.nc.FlushTimeout(time.Minute)
}

// drained reports whether the consumer has delivered every task and holds
// no ack pending, after the worker's acks have reached the server. A server
// too busy to answer in time is not an error: the state is read again after
// the next fetch.
func (d *demoWorld) drained(ctx context.Context, cons jetstream.Consumer) (bool, error) {
	if err := d.nc.FlushTimeout(time.Minute); err != nil {
		return false, fmt.Errorf("flush the worker's acks: %w", err)
	}
	info, err := cons.Info(ctx)
	switch {
	case isTimeout(err):
		return false, ctx.Err()
	case err != nil:
		return false, fmt.Errorf("read the worker's consumer: %w", err)
	}
	return info.NumPending == 0 && info.NumAckPending == 0, nil
}

// state reads the job's stream: gone (or unreadable) is the zero state. A
// server too busy to answer in time is asked again.
func (d *demoWorld) state(ctx context.Context, id queue.JobID) queueState {
	deadline := time.Now().Add(demoHangGuard)
	for {
		s, err := d.js.Stream(ctx, d.names.StreamName(id))
		switch {
		case err == nil:
			return queueState{exists: true, messages: s.CachedInfo().State.Msgs}
		case isTimeout(err) && ctx.Err() == nil && time.Now().Before(deadline):
			continue
		default:
			return queueState{}
		}
	}
}

// isTimeout tells a request that got no answer in time.
func isTimeout(err error) bool {
	return errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded)
}

func awaitResult(sub *nats.Subscription) (events.QueueResult, error) {
	defer func() { _ = sub.Unsubscribe() }()
	m, err := sub.NextMsg(demoHangGuard)
	if err != nil {
		return events.QueueResult{}, err
	}
	var ev struct {
		Data events.QueueResult `json:"data"`
	}
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		return events.QueueResult{}, err
	}
	return ev.Data, nil
}

func (r *demoReport) print(w io.Writer) {
	fmt.Fprintf(w, "\nqueue-janitor demo: the incident, replayed on job %d (control job %d runs without queue-janitor)\n\n", demoJob, demoControlJob)
	fmt.Fprintf(w, "  REVOKED   -> stream and consumers gone in %s: %s deleted, %s messages discarded\n",
		r.revokeToGone.Round(time.Millisecond), count(len(r.cleaned.Deleted), "resource"), thousands(r.cleaned.MessagesDiscarded))
	fmt.Fprintf(w, "  Start     -> restart_requested answered by job.queue.flushed in %s (%s)\n",
		r.restartToFlushed.Round(time.Millisecond), r.flushed.Outcome)
	fmt.Fprintf(w, "  new round -> %s tasks published only after flushed; a worker drained the queue\n\n", thousands(demoSecondRound))
	row := "  %-32s %16s %20s %24s\n"
	fmt.Fprintf(w, row, "", "before REVOKED", "after Start + drain", "without queue-janitor")
	fmt.Fprintf(w, row, "messages in the job's stream", thousands(r.before.messages), thousands(r.after.messages), thousands(r.control.messages))
	fmt.Fprintf(w, row, "tasks delivered to the worker", thousands(r.firstDelivered), thousands(r.secondDistinct+r.dups), thousands(r.controlDelivered))
	fmt.Fprintf(w, row, "of which delivered twice", "0", thousands(r.dups), thousands(r.controlDups))
	fmt.Fprintln(w)
}

// verify is the demo's verdict: exactly the new round, each task once.
func (r *demoReport) verify() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(r.before.messages == demoFirstRound, "before REVOKED the stream held %d messages, want %d", r.before.messages, demoFirstRound)
	check(r.cleaned.MessagesDiscarded == demoFirstRound, "cleanup discarded %d messages, want %d", r.cleaned.MessagesDiscarded, demoFirstRound)
	check(r.after.messages == demoSecondRound, "after Start the stream holds %d messages, want %d", r.after.messages, demoSecondRound)
	check(r.secondDistinct == demoSecondRound, "the worker received %d distinct tasks, want %d", r.secondDistinct, demoSecondRound)
	check(r.dups == 0, "the worker received %d duplicate tasks, want 0", r.dups)
	check(r.control.messages == demoFirstRound+demoSecondRound, "the control stream holds %d messages, want %d",
		r.control.messages, demoFirstRound+demoSecondRound)
	check(r.controlDelivered == demoFirstRound-demoTaken+demoSecondRound, "the control worker received %d tasks after Start, want %d",
		r.controlDelivered, demoFirstRound-demoTaken+demoSecondRound)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("demo failed:\n%w", err)
	}
	return nil
}

// thousands formats n with comma separators.
func thousands[T ~int | ~uint64](n T) string {
	s := fmt.Sprint(n)
	sign := ""
	if strings.HasPrefix(s, "-") {
		sign, s = "-", s[1:]
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return sign + s
}

func fillID(pattern string, id queue.JobID) string {
	return queue.Names{Stream: pattern}.StreamName(id)
}
