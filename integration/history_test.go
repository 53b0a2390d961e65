package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// The randomized history test tries hard to break the safety property:
// an event about run N of a job never deletes the queue of a later run.
//
// A history is a few jobs, each living through several runs as the backend
// drives them: create the run's stream and publish its tasks, perhaps report
// STARTED, end with a terminal status, SUCCESS or nothing, then Start again
// (restart_requested, wait for job.queue.flushed, publish a new round at a
// random moment after it). Events are perturbed on their way: duplicated,
// delivered late, handled by one to three replicas at once. Some jobs send
// attempts and stamp them on their streams (the exact fence), others send
// neither (the server-time fence and the record's arrival order do all the
// work). The job's two producers (the web process that asks for restarts,
// the worker that reports the run's statuses) have clocks anywhere within
// ten minutes of the server's, each its own.
//
// Jobs with attempts may also publish late (an outbox that lags: an event
// held back and released after the job's next transitions, in random
// order); without attempts the service orders events by their arrival at
// NATS, so those jobs publish every event before their next transition, as
// the contract asks, and their events are late only in delivery.
//
// With two or three replicas, the first one reaches NATS through a TCP
// proxy that a chaos loop cuts (every connection dropped and restored) and
// freezes (every byte held) for longer than the lease, so that its events
// are redelivered to the others, its leases expire and are taken over while
// it may be inside an effect, and its requests are cut in flight. The
// reconciler runs on every replica with a short interval and grace.
//
// Safety is checked on the server's own stream- and consumer-deleted
// advisories: each deletion of job_N, and of its dead-letter consumer
// advisories/job-N-dlq, is attributed to the run whose resource was there,
// and must have been authorized by an event published before it (a
// terminal status of that run or a later one, or a restart of a later run).
// Liveness is checked after quiescence: a job whose last event is terminal
// has no stream and no consumers; any other job's stream holds exactly its
// last run's tasks, with its task and dead-letter consumers.
//
// QJ_HISTORIES sets how many histories run (default 510; 10,000 or more for
// a long run), QJ_HISTORY_SEED the base seed (default: from the clock;
// printed), QJ_HISTORY_PARALLEL how many run at once per replica group.

func TestRandomHistories(t *testing.T) {
	t.Parallel()
	total := envInt(t, "QJ_HISTORIES", 510)
	if testing.Short() {
		total = min(total, 60)
	}
	parallel := envInt(t, "QJ_HISTORY_PARALLEL", 8)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("QJ_HISTORY_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("QJ_HISTORY_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("random histories: %d, base seed %d (rerun with QJ_HISTORY_SEED=%d)", total, seed, seed)

	var ran, violations atomic.Int64
	for replicas := 1; replicas <= 3; replicas++ {
		n := total / 3
		if replicas <= total%3 {
			n++
		}
		t.Run(fmt.Sprintf("replicas=%d", replicas), func(t *testing.T) {
			t.Parallel()
			g := newHistoryGroup(t, replicas)
			var wg sync.WaitGroup
			sem := make(chan struct{}, parallel)
			var histories []*history
			var mu sync.Mutex
			for i := range n {
				h := newHistory(seed, uint64(replicas)<<32|uint64(i), queue.JobID(1+(replicas-1)*1_000_000+i*10))
				mu.Lock()
				histories = append(histories, h)
				mu.Unlock()
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer func() { <-sem; wg.Done() }()
					g.play(h)
				}()
			}
			wg.Wait()
			g.quiesce()
			for _, h := range histories {
				ran.Add(1)
				problems := append(h.problems(), g.checkSafety(h)...)
				problems = append(problems, g.checkLiveness(h)...)
				if len(problems) > 0 {
					violations.Add(int64(len(problems)))
					t.Errorf("history %s (replicas=%d): %d violations:\n  %s\nplan:\n%s", h.name, replicas, len(problems),
						strings.Join(problems, "\n  "), h.describe())
				}
			}
		})
	}
	t.Cleanup(func() {
		t.Logf("random histories: %d run, %d violations (base seed %d)", ran.Load(), violations.Load(), seed)
	})
}

func envInt(t *testing.T, key string, def int) int {
	t.Helper()
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", key, v)
	}
	return n
}

// history is the plan of a few jobs' lives and what happened when played.
type history struct {
	name string
	jobs []*jobPlan
}

type endKind int

const (
	endNone endKind = iota // the run is still going
	endTerminal
	endSuccess // not a terminal status for the service
)

type runPlan struct {
	attempt   int64
	tasks     int
	started   bool
	end       endKind
	terminal  events.Status
	endLate   bool // the end event is held back and released later
	endDup    bool // the end event is published twice
	restartUp bool // the restart event is published twice (second time late)
	pause     time.Duration
}

type jobPlan struct {
	id       queue.JobID
	attempts bool // events carry attempt
	stamp    bool // streams carry the attempt in their metadata
	runs     []runPlan
	rng      *rand.Rand
	// web and worker are the offsets of the clocks of the job's two
	// producers from the server's.
	web, worker time.Duration

	mu        sync.Mutex
	created   []time.Time // per run: the stream's server-side creation time
	dlqMade   []time.Time // per run: its dead-letter consumer's server-side creation time (zero: none)
	published []published // every event publication, in order
	answers   []string    // the flushed answers the backend acted on
	problems  []string
}

type published struct {
	at      time.Time
	status  events.Status
	run     int // index of the run the event is about
	restart bool
}

func newHistory(base, index uint64, firstID queue.JobID) *history {
	rng := rand.New(rand.NewPCG(base, index))
	h := &history{name: fmt.Sprintf("%d/%d", base, index)}
	for j := range 1 + rng.IntN(3) {
		jp := &jobPlan{id: firstID + queue.JobID(j), attempts: rng.IntN(3) > 0, rng: rand.New(rand.NewPCG(base, index<<8|uint64(j)))}
		jp.stamp = jp.attempts && rng.IntN(2) == 0
		jp.web = time.Duration(rng.Int64N(int64(20*time.Minute))) - 10*time.Minute
		jp.worker = time.Duration(rng.Int64N(int64(20*time.Minute))) - 10*time.Minute
		for r := range 1 + rng.IntN(4) {
			rp := runPlan{attempt: int64(r + 1), tasks: 1 + rng.IntN(20), started: rng.IntN(2) == 0,
				pause: time.Duration(rng.IntN(8)) * time.Millisecond, restartUp: rng.IntN(4) == 0}
			switch x := rng.IntN(10); {
			case x < 6:
				rp.end = endTerminal
				rp.terminal = []events.Status{events.StatusRevoked, events.StatusFailure, events.StatusCancelled}[rng.IntN(3)]
			case x < 8:
				rp.end = endSuccess
			}
			rp.endLate, rp.endDup = rng.IntN(3) == 0, rng.IntN(4) == 0
			if !jp.attempts {
				// Published in order: a duplicate follows its original
				// at once, nothing is held back.
				rp.endLate, rp.restartUp = false, false
			}
			jp.runs = append(jp.runs, rp)
		}
		h.jobs = append(h.jobs, jp)
	}
	return h
}

func (h *history) describe() string {
	var b strings.Builder
	for _, j := range h.jobs {
		fmt.Fprintf(&b, "  job %d attempts=%v stamp=%v clocks: web %s worker %s\n", j.id, j.attempts, j.stamp,
			j.web.Round(time.Second), j.worker.Round(time.Second))
		for i, r := range j.runs {
			fmt.Fprintf(&b, "    run %d: tasks=%d started=%v end=%v %s late=%v dup=%v restartDup=%v created=%v\n", i+1, r.tasks,
				r.started, r.end, r.terminal, r.endLate, r.endDup, r.restartUp, j.createdAt(i).Format("15:04:05.000000"))
		}
		for _, p := range j.published {
			fmt.Fprintf(&b, "    published %s %s (run %d)\n", p.at.Format("15:04:05.000000"), p.status, p.run+1)
		}
		for _, a := range j.answers {
			fmt.Fprintf(&b, "    flushed %s\n", a)
		}
	}
	return b.String()
}

func (h *history) problems() []string {
	var out []string
	for _, j := range h.jobs {
		out = append(out, j.problems...)
	}
	return out
}

func (j *jobPlan) fail(format string, args ...any) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.problems = append(j.problems, fmt.Sprintf("job %d: ", j.id)+fmt.Sprintf(format, args...))
}

func (j *jobPlan) createdAt(run int) time.Time {
	j.mu.Lock()
	defer j.mu.Unlock()
	if run < len(j.created) {
		return j.created[run]
	}
	return time.Time{}
}

// historyGroup is a NATS server with one to three replicas of the service,
// on which many histories play at once (each with its own job ids).
type historyGroup struct {
	t       *testing.T
	nc      *nats.Conn
	js      jetstream.JetStream
	names   queue.Names
	mu      sync.Mutex
	deleted map[string][]time.Time // stream or "advisories/consumer" → deletion times
}

func newHistoryGroup(t *testing.T, replicas int) *historyGroup {
	t.Helper()
	srv := natstest.RunServer(t)
	nc, js := natstest.Connect(t, srv.URL())
	g := &historyGroup{t: t, nc: nc, js: js, names: queue.DefaultNames(), deleted: map[string][]time.Time{}}
	g.watchDeletions()
	for i := range replicas {
		// Each replica has its own connection, as separate processes would.
		url := srv.URL()
		if i == 0 && replicas > 1 {
			p := newTCPProxy(t, strings.TrimPrefix(url, "nats://"))
			url = p.URL()
			g.chaos(p)
		}
		startServe(t, js, append(baseArgs(url), "--log-level", "error", "--concurrency", "16",
			"--lease", historyLease.String(), "--ack-wait", "1s", "--retry-attempt-timeout", "1s",
			"--reconcile-interval", "500ms", "--reconcile-grace", "1s", "--reconcile-lease", "3s"),
			zerolog.NewTestWriter(t))
	}
	return g
}

// historyLease is the replicas' lease in the history test: short, so that a
// frozen replica loses it within a history.
const historyLease = 4 * time.Second

// chaos cuts and freezes the proxied replica's network until the test ends:
// mostly short cuts (every connection dropped, restored at once), and now
// and then a freeze past the lease.
func (g *historyGroup) chaos(p *tcpProxy) {
	stop := make(chan struct{})
	done := make(chan struct{})
	g.t.Cleanup(func() { close(stop); <-done })
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				p.restore()
				return
			case <-time.After(time.Duration(300+rng.IntN(700)) * time.Millisecond):
			}
			switch rng.IntN(6) {
			case 0:
				p.freeze()
				select {
				case <-stop:
				case <-time.After(historyLease + time.Duration(rng.IntN(2000))*time.Millisecond):
				}
				p.restore()
			default:
				p.cut()
				time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond)
				p.restore()
			}
		}
	}()
}

// watchDeletions records the server's stream- and consumer-deleted
// advisories with their server timestamps.
func (g *historyGroup) watchDeletions() {
	g.t.Helper()
	record := func(key string, m *nats.Msg) {
		var adv struct {
			Timestamp time.Time `json:"timestamp"`
		}
		if err := json.Unmarshal(m.Data, &adv); err != nil {
			g.t.Errorf("advisory %s: %v", m.Subject, err)
			return
		}
		g.mu.Lock()
		g.deleted[key] = append(g.deleted[key], adv.Timestamp)
		g.mu.Unlock()
	}
	for _, subj := range []string{"$JS.EVENT.ADVISORY.STREAM.DELETED.*", "$JS.EVENT.ADVISORY.CONSUMER.DELETED.advisories.*"} {
		_, err := g.nc.Subscribe(subj, func(m *nats.Msg) {
			tokens := strings.Split(m.Subject, ".")
			key := tokens[len(tokens)-1]
			if strings.Contains(m.Subject, ".CONSUMER.") {
				key = "advisories/" + key
			}
			record(key, m)
		})
		if err != nil {
			g.t.Fatal(err)
		}
	}
	if err := g.nc.Flush(); err != nil {
		g.t.Fatal(err)
	}
}

// play runs every job of h concurrently, as the backend would.
func (g *historyGroup) play(h *history) {
	var wg sync.WaitGroup
	for _, j := range h.jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.live(j)
		}()
	}
	wg.Wait()
}

// pending is an event held back by the outbox.
type pending struct {
	ev      events.StatusEvent
	run     int
	restart bool
}

// live plays one job's runs.
func (g *historyGroup) live(j *jobPlan) {
	ctx := context.Background()
	flushed, err := g.nc.SubscribeSync(fmt.Sprintf("job.queue.flushed.%d", j.id))
	if err != nil {
		j.fail("subscribe: %v", err)
		return
	}
	defer func() { _ = flushed.Unsubscribe() }()
	var late []pending
	release := func(all bool) {
		j.rng.Shuffle(len(late), func(a, b int) { late[a], late[b] = late[b], late[a] })
		keep := late[:0]
		for _, p := range late {
			if all || j.rng.IntN(2) == 0 {
				g.publish(j, p)
			} else {
				keep = append(keep, p)
			}
		}
		late = keep
	}
	for r, run := range j.runs {
		if r > 0 {
			restart := pending{ev: j.event(events.StatusRestartRequested, run.attempt, j.web), run: r, restart: true}
			g.publish(j, restart)
			if run.restartUp {
				late = append(late, restart)
			}
			if !g.awaitFlushed(j, flushed, restart.ev.ID) {
				return
			}
			time.Sleep(time.Duration(j.rng.IntN(5)) * time.Millisecond)
		}
		var attempt *int64
		if j.stamp {
			attempt = events.Attempt(run.attempt)
		}
		// Creating the queue is idempotent: like a backend, try again when
		// a loaded server times out.
		var err error
		for try := 0; try < 5; try++ {
			if err = queue.Provision(ctx, g.js, g.names, j.id, attempt); err == nil || !queue.IsTransient(err) {
				break
			}
			time.Sleep(time.Second)
		}
		if err != nil {
			j.fail("provision run %d: %v", r+1, err)
			return
		}
		g.noteCreated(j, r)
		publishTasks(g.t, g.js, g.names.SubjectName(j.id), 0, run.tasks)
		if run.started {
			g.publish(j, pending{ev: j.event(events.StatusStarted, run.attempt, j.worker), run: r})
		}
		time.Sleep(run.pause)
		release(false)
		var end events.Status
		switch run.end {
		case endTerminal:
			end = run.terminal
		case endSuccess:
			end = events.StatusSuccess
		default:
			continue
		}
		p := pending{ev: j.event(end, run.attempt, j.worker), run: r}
		if run.endLate {
			late = append(late, p)
		} else {
			g.publish(j, p)
		}
		switch {
		case run.endDup && j.attempts:
			late = append(late, p)
		case run.endDup:
			g.publish(j, p) // in order, right after the original
		}
	}
	release(true)
}

// event builds a status event of the job's current transition, stamped
// now by a producer whose clock is off by offset, with the attempt when the
// job sends attempts.
func (j *jobPlan) event(status events.Status, attempt int64, offset time.Duration) events.StatusEvent {
	e := events.StatusEvent{ID: fmt.Sprintf("%d-%s-%d-%d", j.id, status, attempt, j.rng.Uint32()), JobID: j.id,
		Status: status, Time: time.Now().Add(offset), Source: "history-test"}
	if j.attempts {
		e.Attempt = events.Attempt(attempt)
	}
	return e
}

func (g *historyGroup) publish(j *jobPlan, p pending) {
	j.mu.Lock()
	j.published = append(j.published, published{at: time.Now(), status: p.ev.Status, run: p.run, restart: p.restart})
	j.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg, err := p.ev.Msg(ctx, "job.status.")
	if err == nil {
		_, err = g.js.PublishMsg(ctx, msg)
	}
	if err != nil {
		j.fail("publish %s: %v", p.ev.Status, err)
	}
}

// awaitFlushed waits for the flushed answer to restart event id.
func (g *historyGroup) awaitFlushed(j *jobPlan, sub *nats.Subscription, id string) bool {
	if res, ok := nextAnswer(sub, id, 60*time.Second); ok {
		j.mu.Lock()
		j.answers = append(j.answers, fmt.Sprintf("%s %s deleted=%v kept=%v confirmed=%q trigger=%q",
			time.Now().Format("15:04:05.000000"), res.Outcome, res.Deleted, res.Kept, res.Confirmed, res.Trigger))
		j.mu.Unlock()
		if res.Outcome == events.OutcomeStale {
			j.fail("LIVENESS: restart %s answered stale", id)
			return false // a real backend does not publish then
		}
		return true
	}
	j.fail("LIVENESS: no job.queue.flushed for restart %s within 60s", id)
	return false
}

func (g *historyGroup) noteCreated(j *jobPlan, run int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := g.js.Stream(ctx, g.names.StreamName(j.id))
	if err != nil {
		j.fail("stream info after provisioning run %d: %v", run+1, err)
		return
	}
	c, err := g.js.Consumer(ctx, g.names.AdvisoryStream, g.names.DeadLetterConsumerName(j.id))
	j.mu.Lock()
	defer j.mu.Unlock()
	j.created = append(j.created, s.CachedInfo().Created)
	if err == nil {
		j.dlqMade = append(j.dlqMade, c.CachedInfo().Created)
	} else {
		j.dlqMade = append(j.dlqMade, time.Time{})
	}
}

// quiesce waits until every replica has settled every event.
func (g *historyGroup) quiesce() {
	g.t.Helper()
	eventually(g.t, 3*time.Minute, "event consumer quiescent", func() bool {
		c, err := g.js.Consumer(context.Background(), "JOB_EVENTS", "queue-janitor")
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	// Let a frozen replica's leases run out and the reconciler pass, then
	// the last advisories arrive.
	time.Sleep(historyLease + 2*time.Second)
}

// checkSafety attributes every deletion of a job's stream, and of its
// dead-letter consumer on advisories, to the run whose resource it was (the
// last one created before the deletion), and checks that an event published
// before it allowed it.
func (g *historyGroup) checkSafety(h *history) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, j := range h.jobs {
		for _, r := range []struct {
			what    string
			created []time.Time
			deleted []time.Time
		}{
			{"stream", j.created, g.deleted[g.names.StreamName(j.id)]},
			{"dead-letter consumer", j.dlqMade, g.deleted[g.names.AdvisoryStream+"/"+g.names.DeadLetterConsumerName(j.id)]},
		} {
			for _, d := range r.deleted {
				run := -1
				for i, c := range r.created {
					if !c.IsZero() && c.Before(d) {
						run = i
					}
				}
				if run < 0 {
					out = append(out, fmt.Sprintf("job %d: a %s was deleted at %s before any run created one", j.id, r.what, d.Format(time.RFC3339Nano)))
					continue
				}
				if !j.authorized(run, d) {
					out = append(out, fmt.Sprintf("SAFETY: job %d run %d's %s deleted at %s with no terminal of run ≥%d or restart of a later run published before",
						j.id, run+1, r.what, d.Format("15:04:05.000000"), run+1))
				}
			}
		}
	}
	return out
}

// authorized reports whether an event published before d allows deleting
// run's resources.
func (j *jobPlan) authorized(run int, d time.Time) bool {
	for _, p := range j.published {
		if !p.at.Before(d) {
			continue
		}
		if (p.restart && p.run > run) || (!p.restart && p.run >= run && isTerminal(p.status)) {
			return true
		}
	}
	return false
}

func isTerminal(s events.Status) bool {
	return s == events.StatusRevoked || s == events.StatusFailure || s == events.StatusCancelled
}

// checkLiveness compares the final state with the job's last event.
func (g *historyGroup) checkLiveness(h *history) []string {
	var out []string
	for _, j := range h.jobs {
		last := j.runs[len(j.runs)-1]
		stream := g.names.StreamName(j.id)
		exists := streamExists(g.t, g.js, stream)
		if last.end == endTerminal {
			if exists {
				out = append(out, fmt.Sprintf("LIVENESS: job %d ended %s but %s still exists", j.id, last.terminal, stream))
			}
			if consumerExists(g.t, g.js, g.names.AdvisoryStream, g.names.DeadLetterConsumerName(j.id)) {
				out = append(out, fmt.Sprintf("LIVENESS: job %d ended but its dead-letter consumer still exists", j.id))
			}
			continue
		}
		if !exists {
			out = append(out, fmt.Sprintf("SAFETY: job %d's running run %d lost its stream", j.id, last.attempt))
			continue
		}
		s, err := g.js.Stream(context.Background(), stream)
		if err != nil {
			out = append(out, fmt.Sprintf("job %d: %v", j.id, err))
			continue
		}
		if got := s.CachedInfo().State.Msgs; got != uint64(last.tasks) {
			out = append(out, fmt.Sprintf("job %d's running stream holds %d messages, want exactly its run's %d", j.id, got, last.tasks))
		}
		if !consumerExists(g.t, g.js, stream, g.names.ConsumerName(j.id)) {
			out = append(out, fmt.Sprintf("SAFETY: job %d's running run lost its task consumer", j.id))
		}
		j.mu.Lock()
		hadDLQ := len(j.dlqMade) == len(j.runs) && !j.dlqMade[len(j.dlqMade)-1].IsZero()
		j.mu.Unlock()
		if hadDLQ && !consumerExists(g.t, g.js, g.names.AdvisoryStream, g.names.DeadLetterConsumerName(j.id)) {
			out = append(out, fmt.Sprintf("SAFETY: job %d's running run lost its dead-letter consumer", j.id))
		}
	}
	return out
}
