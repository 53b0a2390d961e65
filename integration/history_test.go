package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
// (restart_requested, perhaps PENDING of the new attempt before the answer
// as Antenna records it, wait for job.queue.flushed, perhaps STARTED at once,
// publish a new round at a random moment after it). The Start comes right
// after the terminal event in half the runs (within a millisecond: "Start
// right after REVOKED"), a few milliseconds later otherwise. Events are
// perturbed on their way: duplicated, delivered late, handled by one to
// three replicas at once. Some jobs send attempts and stamp them on their
// streams (the exact fence), others send neither (the server-time fence and
// the record's arrival order do all the work). The job's two producers (the
// web process that asks for restarts, the worker that reports the run's
// statuses) have clocks anywhere within ten minutes of the server's, each
// its own.
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
// About a quarter of the histories play on a server whose key-value bucket
// is deleted at random moments of their lives (history_loss_test.go), as an
// operator or the backend's `chaos_monkey flush nats` would; their replicas
// run without --trust-new-bucket, so the quarantine of a new bucket and the
// records' rebuild from the event stream are what is under test. A few of
// them delete the event stream JOB_EVENTS with the bucket (what `flush nats`
// does to both); the backend then asks again for a restart that may have
// been lost, as the Start path does on a timeout.
//
// Safety is checked on the server's own stream- and consumer-deleted
// advisories: each deletion of job_N, and of its dead-letter consumer
// advisories/job-N-dlq, is attributed to the run whose resource was there,
// and must have been authorized by an event published before it (a
// terminal status of that run or a later one, or a restart of a later run).
// A run's stream must also be empty when created (no old tasks brought
// back). Liveness is checked after quiescence: a job whose last event is
// terminal has no stream and no consumers (unless that event may have been
// lost with the event stream); any other job's stream holds exactly its
// last run's tasks, with its task and dead-letter consumers. What the
// checks expect after the event stream is lost is in history_loss_test.go.
//
// QJ_HISTORIES sets how many histories run (default 510; 10,000 or more for
// a long run), QJ_HISTORY_SEED the base seed (default: from the clock;
// printed), QJ_HISTORY_PARALLEL how many run at once per group (three times
// as many on a group whose bucket is lost), QJ_HISTORY_ONLY (an index as
// printed after the seed in a history's name) plays that one history alone,
// QJ_HISTORY_LOGS=info or debug keeps the replicas' logs and prints those of
// a failed history's jobs, and QJ_HISTORY_NO_PENDING=1 leaves out every
// PENDING (the plans stay the same otherwise), to look at the other faults
// while a problem with PENDING is open. The run's last lines count the
// faults met (bucket and event stream losses, PENDING, restarts right
// after a terminal event, ...) and the answers.

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
	only := uint64(0)
	if s := os.Getenv("QJ_HISTORY_ONLY"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("QJ_HISTORY_ONLY=%q: want a history's index (the number after the seed in its name)", s)
		}
		only = v
	}
	t.Logf("random histories: %d, base seed %d (rerun with QJ_HISTORY_SEED=%d)", total, seed, seed)

	stats := &historyStats{}
	var ran, violations atomic.Int64
	started := time.Now()
	for replicas := 1; replicas <= 3; replicas++ {
		n := total / 3
		if replicas <= total%3 {
			n++
		}
		// Plans first, so that a seed gives the same histories whatever
		// group they play on.
		var steady, lossy []*history
		for i := range n {
			index := uint64(replicas)<<32 | uint64(i)
			if only != 0 && index != only {
				continue
			}
			h := newHistory(seed, index, queue.JobID(1+(replicas-1)*1_000_000+i*10))
			if h.loss {
				lossy = append(lossy, h)
			} else {
				steady = append(steady, h)
			}
		}
		if len(steady)+len(lossy) == 0 {
			continue
		}
		// The group whose bucket is lost and the one whose bucket is not
		// play at once, in one subtest per replica count. Histories on the
		// first spend most of their time waiting out quarantines, so more
		// of them play at once.
		t.Run(fmt.Sprintf("replicas=%d", replicas), func(t *testing.T) {
			t.Parallel()
			type run struct {
				name      string
				g         *historyGroup
				histories []*history
				parallel  int
			}
			var runs []run
			if len(steady) > 0 {
				runs = append(runs, run{"steady", newHistoryGroup(t, replicas, false, stats), steady, parallel})
			}
			if len(lossy) > 0 {
				runs = append(runs, run{"bucket-loss", newHistoryGroup(t, replicas, true, stats), lossy, 3 * parallel})
			}
			var wg sync.WaitGroup
			for _, r := range runs {
				sem := make(chan struct{}, r.parallel)
				wg.Add(1)
				go func() {
					defer wg.Done()
					var played sync.WaitGroup
					for _, h := range r.histories {
						played.Add(1)
						sem <- struct{}{}
						go func() {
							defer func() { <-sem; played.Done() }()
							r.g.play(h)
						}()
					}
					played.Wait()
				}()
			}
			wg.Wait()
			for _, r := range runs {
				r.g.quiesce()
			}
			for _, r := range runs {
				for _, h := range r.histories {
					ran.Add(1)
					r.g.account(h)
					problems := append(h.problems(), r.g.checkSafety(h)...)
					problems = append(problems, r.g.checkLiveness(h)...)
					if len(problems) > 0 {
						violations.Add(int64(len(problems)))
						t.Errorf("history %s (replicas=%d, %s): %d violations:\n  %s\nplan:\n%s", h.name, replicas, r.name, len(problems),
							strings.Join(problems, "\n  "), r.g.describe(h))
					}
				}
			}
		})
	}
	t.Cleanup(func() {
		t.Logf("random histories: %d run in %s, %d violations (base seed %d)", ran.Load(),
			time.Since(started).Round(time.Second), violations.Load(), seed)
		t.Logf("random histories: %s", stats)
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
	// loss: the history plays on a group whose bucket is deleted at random
	// moments (its own loss comes at one job's step lossAt); flush: its
	// loss deletes the event stream too.
	loss, flush bool
	// start and end bound the history's play, in the test's clock.
	start, end time.Time
}

type endKind int

const (
	endNone endKind = iota // the run is still going
	endTerminal
	endSuccess // not a terminal status for the service
)

func (k endKind) String() string { return [...]string{"none", "terminal", "success"}[k] }

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
	// gap is the wait between the previous run's end and this run's
	// restart request (0: at once, "Start right after REVOKED").
	gap time.Duration
	// pending: PENDING of this run's attempt is published after the
	// restart request and before its answer (the first run: before its
	// queue is created). startedEarly: STARTED right after the answer,
	// before the queue is created.
	pending, startedEarly bool
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
	// lossAt is the step of the job's life (a publication, an answer, a
	// queue created) after which its history's loss comes (0: none);
	// steps counts them as the job lives.
	lossAt, steps int
	lossFlush     bool
	// stopped: the job stopped before its last run (a problem says why),
	// so the final state is not its plan's.
	stopped bool

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
	id      string
	reask   bool // a restart request asked again (new id, same attempt)
	// seq is the event's sequence in the event stream, gen1 and gen2 the
	// event stream's generation before and after it was published (see
	// lossState).
	seq        uint64
	gen1, gen2 uint64
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
			if rng.IntN(2) == 0 {
				rp.gap = time.Duration(1+rng.IntN(20)) * time.Millisecond
			}
			rp.pending = rng.IntN(2) == 0 && os.Getenv("QJ_HISTORY_NO_PENDING") == ""
			rp.startedEarly = r > 0 && rng.IntN(3) == 0
			jp.runs = append(jp.runs, rp)
		}
		h.jobs = append(h.jobs, jp)
	}
	h.loss = rng.IntN(4) == 0
	if h.loss {
		h.flush = rng.IntN(8) == 0
		j := h.jobs[rng.IntN(len(h.jobs))]
		j.lossAt, j.lossFlush = 1+rng.IntN(4*len(j.runs)), h.flush
	}
	return h
}

// describe prints the plan, what was published and answered, and the losses
// that came while the history played.
func (g *historyGroup) describe(h *history) string {
	var b strings.Builder
	for _, l := range g.lossesBetween(h.start, h.end.Add(historyLease)) {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	if g.loss != nil {
		g.mu.Lock()
		for _, k := range []string{"created/JOB_EVENTS", "JOB_EVENTS"} {
			for _, at := range g.deleted[k] {
				if !at.Before(h.start.Add(-time.Second)) && !at.After(h.end.Add(historyLease)) {
					fmt.Fprintf(&b, "  advisory %s %s\n", k, at.Format("15:04:05.000000"))
				}
			}
		}
		g.mu.Unlock()
	}
	for _, j := range h.jobs {
		fmt.Fprintf(&b, "  job %d attempts=%v stamp=%v clocks: web %s worker %s", j.id, j.attempts, j.stamp,
			j.web.Round(time.Second), j.worker.Round(time.Second))
		if j.lossAt > 0 {
			fmt.Fprintf(&b, " loss after step %d (flush=%v)", j.lossAt, j.lossFlush)
		}
		b.WriteString("\n")
		for i, r := range j.runs {
			fmt.Fprintf(&b, "    run %d: tasks=%d gap=%s pending=%v startedEarly=%v started=%v end=%v %s late=%v dup=%v restartDup=%v created=%v\n",
				i+1, r.tasks, r.gap, r.pending, r.startedEarly, r.started, r.end, r.terminal, r.endLate, r.endDup, r.restartUp,
				j.createdAt(i).Format("15:04:05.000000"))
		}
		j.mu.Lock()
		for _, p := range j.published {
			lost := ""
			if g.loss.possiblyLost(p) {
				lost = " (possibly lost with the event stream)"
			}
			again := ""
			if p.reask {
				again = " asked again"
			}
			fmt.Fprintf(&b, "    published %s %s (run %d) %s seq=%d gen=%d/%d%s%s\n", p.at.Format("15:04:05.000000"), p.status,
				p.run+1, p.id, p.seq, p.gen1, p.gen2, again, lost)
		}
		for _, a := range j.answers {
			fmt.Fprintf(&b, "    flushed %s\n", a)
		}
		j.mu.Unlock()
	}
	b.WriteString(g.logs.of(h))
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
	stats   *historyStats
	loss    *lossState   // nil unless the group's bucket is lost
	logs    *historyLogs // nil unless QJ_HISTORY_LOGS is set
	mu      sync.Mutex
	deleted map[string][]time.Time // stream or "advisories/consumer" → deletion times
}

func newHistoryGroup(t *testing.T, replicas int, loss bool, stats *historyStats) *historyGroup {
	t.Helper()
	srv := natstest.RunServer(t)
	nc, js := natstest.Connect(t, srv.URL())
	g := &historyGroup{t: t, nc: nc, js: js, names: queue.DefaultNames(), stats: stats, deleted: map[string][]time.Time{}}
	g.watchDeletions()
	level := "error"
	if v := os.Getenv("QJ_HISTORY_LOGS"); v != "" {
		level, g.logs = v, newHistoryLogs()
		g.watchConsumer()
	}
	args := []string{"--log-level", level, "--concurrency", "16",
		"--lease", historyLease.String(), "--ack-wait", "1s", "--retry-attempt-timeout", "1s",
		"--reconcile-interval", "500ms", "--reconcile-grace", "1s", "--reconcile-lease", "3s"}
	if loss {
		g.loss = newLossState(t, js)
	}
	for i := range replicas {
		// Each replica has its own connection, as separate processes would.
		url := srv.URL()
		if i == 0 && replicas > 1 {
			p := newTCPProxy(t, strings.TrimPrefix(url, "nats://"))
			url = p.URL()
			g.chaos(p)
		}
		base := baseArgs(url)
		if loss {
			// The quarantine of a new bucket is the guard under test.
			base = withoutFlag(base, "--trust-new-bucket")
		}
		var logs io.Writer = zerolog.NewTestWriter(t)
		if g.logs != nil {
			logs = g.logs.writer()
		}
		startServe(t, js, append(base, args...), logs)
	}
	return g
}

// withoutFlag returns args without the boolean flag.
func withoutFlag(args []string, flag string) []string {
	var out []string
	for _, a := range args {
		if a != flag {
			out = append(out, a)
		}
	}
	return out
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
	for _, subj := range []string{"$JS.EVENT.ADVISORY.STREAM.DELETED.*", "$JS.EVENT.ADVISORY.CONSUMER.DELETED.advisories.*",
		"$JS.EVENT.ADVISORY.STREAM.CREATED.JOB_EVENTS"} {
		_, err := g.nc.Subscribe(subj, func(m *nats.Msg) {
			tokens := strings.Split(m.Subject, ".")
			key := tokens[len(tokens)-1]
			switch {
			case strings.Contains(m.Subject, ".CONSUMER."):
				key = "advisories/" + key
			case strings.Contains(m.Subject, ".CREATED."):
				key = "created/" + key
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
	h.start = time.Now()
	var wg sync.WaitGroup
	for _, j := range h.jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.live(h, j)
		}()
	}
	wg.Wait()
	h.end = time.Now()
}

// pending is an event held back by the outbox.
type pending struct {
	ev      events.StatusEvent
	run     int
	restart bool
	reask   bool
}

// live plays one job's runs.
func (g *historyGroup) live(h *history, j *jobPlan) {
	ctx := context.Background()
	flushed, err := g.nc.SubscribeSync(fmt.Sprintf("job.queue.flushed.%d", j.id))
	if err != nil {
		j.fail("subscribe: %v", err)
		return
	}
	defer func() { _ = flushed.Unsubscribe() }()
	// step marks a point of the job's life; the history's loss comes after
	// the planned one (or at the end, if the job had fewer).
	step := func() {
		j.steps++
		if j.steps == j.lossAt {
			g.lose(h, j)
		}
	}
	played := false
	defer func() {
		j.mu.Lock()
		j.stopped = !played
		j.mu.Unlock()
		if j.lossAt > 0 && j.steps < j.lossAt {
			j.steps = j.lossAt - 1
			step()
		}
	}()
	var late []pending
	release := func(all bool) {
		j.rng.Shuffle(len(late), func(a, b int) { late[a], late[b] = late[b], late[a] })
		keep := late[:0]
		for _, p := range late {
			if all || j.rng.IntN(2) == 0 {
				g.publish(j, p)
				step()
			} else {
				keep = append(keep, p)
			}
		}
		late = keep
	}
	lastEnd := events.Status("")
	for r, run := range j.runs {
		if r > 0 {
			if run.gap > 0 {
				time.Sleep(run.gap)
			} else if isTerminal(lastEnd) {
				g.stats.startRightAfterTerminal.Add(1)
			}
			restart := pending{ev: j.event(events.StatusRestartRequested, run.attempt, j.web), run: r, restart: true}
			g.publish(j, restart)
			step()
			if run.restartUp {
				late = append(late, restart)
			}
			if run.pending {
				// As Antenna records it: the job is PENDING with its new
				// attempt while the Start path waits for the answer.
				g.publish(j, pending{ev: j.event(events.StatusPending, run.attempt, j.web), run: r})
				g.stats.pendings.Add(1)
				step()
			}
			if !g.awaitFlushed(j, flushed, restart) {
				return
			}
			step()
			if run.startedEarly {
				g.publish(j, pending{ev: j.event(events.StatusStarted, run.attempt, j.worker), run: r})
				g.stats.startedEarly.Add(1)
				step()
			}
			time.Sleep(time.Duration(j.rng.IntN(5)) * time.Millisecond)
		} else if run.pending {
			g.publish(j, pending{ev: j.event(events.StatusPending, run.attempt, j.web), run: r})
			g.stats.pendings.Add(1)
			step()
		}
		var attempt *int64
		if j.stamp {
			attempt = events.Attempt(run.attempt)
		}
		if err := g.provision(ctx, j, attempt); err != nil {
			j.fail("provision run %d: %v", r+1, err)
			return
		}
		g.noteCreated(j, r)
		publishTasks(g.t, g.js, g.names.SubjectName(j.id), 0, run.tasks)
		step()
		if run.started {
			g.publish(j, pending{ev: j.event(events.StatusStarted, run.attempt, j.worker), run: r})
			step()
		}
		time.Sleep(run.pause)
		release(false)
		lastEnd = ""
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
			lastEnd = end
		}
		switch {
		case run.endDup && j.attempts:
			late = append(late, p)
		case run.endDup:
			g.publish(j, p) // in order, right after the original
		}
		if !run.endLate {
			step()
		}
	}
	release(true)
	played = true
}

// provision creates the run's queue. Creating it is idempotent: like a
// backend (a Celery task that fails is retried), try again when a loaded
// server times out, or fails with a server error (nats-server can fail to
// create a consumer in a stream created just after a stream of that name
// was deleted: "rename ... o.dat.tmp ...: no such file or directory").
func (g *historyGroup) provision(ctx context.Context, j *jobPlan, attempt *int64) error {
	var err error
	for try := 0; try < 5; try++ {
		if try > 0 {
			g.stats.provisionRetries.Add(1)
			time.Sleep(time.Second)
		}
		err = queue.Provision(ctx, g.js, g.names, j.id, attempt)
		var apiErr *jetstream.APIError
		if err == nil || !queue.IsTransient(err) && (!errors.As(err, &apiErr) || apiErr.Code != 500) {
			return err
		}
	}
	return err
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

// publish publishes p's event, as an outbox does: again while the event
// stream is missing (deleted, not yet recreated by the service) or the
// server does not answer, for up to a minute. The publication is recorded
// with the time its first attempt that may have stored it began.
func (g *historyGroup) publish(j *jobPlan, p pending) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	msg, err := p.ev.Msg(ctx, "job.status.")
	if err != nil {
		j.fail("publish %s: %v", p.ev.Status, err)
		return
	}
	var first time.Time // the first attempt that may have stored it
	for {
		gen1, at := g.loss.generation(), time.Now()
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		ack, err := g.js.PublishMsg(actx, msg)
		acancel()
		gen2 := g.loss.generation()
		if first.IsZero() && !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, jetstream.ErrNoStreamResponse) {
			first = at
		}
		if err == nil {
			j.mu.Lock()
			j.published = append(j.published, published{at: first, status: p.ev.Status, run: p.run, restart: p.restart,
				id: p.ev.ID, reask: p.reask, seq: ack.Sequence, gen1: gen1, gen2: gen2})
			j.mu.Unlock()
			return
		}
		if !queue.IsTransient(err) || ctx.Err() != nil {
			j.fail("publish %s: %v", p.ev.Status, err)
			return
		}
		g.stats.publishRetries.Add(1)
		time.Sleep(100 * time.Millisecond)
	}
}

// awaitFlushed waits for the flushed answer to the restart request. When
// the event stream was deleted since the request's publication began (it
// may be lost with it), it asks again, as the backend's Start path does when a
// try goes unanswered: a new id, the same attempt and time. An answer to
// any of its requests will do.
func (g *historyGroup) awaitFlushed(j *jobPlan, sub *nats.Subscription, restart pending) bool {
	ids := map[string]bool{restart.ev.ID: true}
	latest := restart.ev.ID
	gen := j.generationOf(restart.ev.ID)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		res, ok := nextAnswerTo(sub, ids, min(time.Until(deadline), time.Second))
		if ok {
			g.stats.outcome(res.Outcome)
			j.mu.Lock()
			j.answers = append(j.answers, fmt.Sprintf("%s %s to %s deleted=%v kept=%v confirmed=%q trigger=%q",
				time.Now().Format("15:04:05.000000"), res.Outcome, res.CauseEventID, res.Deleted, res.Kept, res.Confirmed, res.Trigger))
			j.mu.Unlock()
			if res.Outcome == events.OutcomeStale && res.CauseEventID != latest {
				// An earlier try, handled after the later one reached
				// NATS: superseded by this Start's own request. The
				// later try's answer decides.
				g.stats.staleEarlierTry.Add(1)
				continue
			}
			if res.Outcome == events.OutcomeStale {
				j.fail("LIVENESS: restart %s answered stale", res.CauseEventID)
				return false // a real backend does not publish then
			}
			return true
		}
		if now := g.loss.generation(); now != gen && now%2 == 0 {
			again := restart
			again.ev.ID = fmt.Sprintf("%s-again-%d", restart.ev.ID, len(ids))
			again.reask = true
			g.publish(j, again)
			g.stats.reasks.Add(1)
			ids[again.ev.ID], latest = true, again.ev.ID
			gen = j.generationOf(again.ev.ID)
			deadline = time.Now().Add(60 * time.Second)
		}
	}
	j.fail("LIVENESS: no job.queue.flushed for restart %s within 60s", restart.ev.ID)
	return false
}

// generationOf is the event stream's generation when the publication of
// event id began.
func (j *jobPlan) generationOf(id string) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	for i := len(j.published) - 1; i >= 0; i-- {
		if j.published[i].id == id {
			return j.published[i].gen1
		}
	}
	return 0
}

// nextAnswerTo waits up to timeout for a flushed answer to one of ids.
func nextAnswerTo(sub *nats.Subscription, ids map[string]bool, timeout time.Duration) (events.QueueResult, bool) {
	deadline := time.Now().Add(timeout)
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			return events.QueueResult{}, false
		}
		m, err := sub.NextMsg(wait)
		if err != nil {
			return events.QueueResult{}, false
		}
		var ev struct {
			Data events.QueueResult `json:"data"`
		}
		if json.Unmarshal(m.Data, &ev) == nil && ids[ev.Data.CauseEventID] {
			return ev.Data, true
		}
	}
}

// noteCreated records the run's stream's and dead-letter consumer's server
// creation times, and checks that the new stream is empty: nats-server can
// bring a just-deleted stream's messages back into one created under its
// name, which the service prevents by emptying a stream before deleting it.
func (g *historyGroup) noteCreated(j *jobPlan, run int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := g.js.Stream(ctx, g.names.StreamName(j.id))
	if err != nil {
		j.fail("stream info after provisioning run %d: %v", run+1, err)
		return
	}
	if n := s.CachedInfo().State.Msgs; n != 0 {
		j.fail("run %d's stream holds %d messages when created, before its tasks (an earlier run's tasks brought back)", run+1, n)
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
				if j.authorized(run, d) {
					continue
				}
				if why := g.loss.outsidePromise(j, d); why != "" {
					g.stats.outsidePromise.Add(1)
					g.t.Logf("history %s: job %d run %d's %s deleted at %s with no authorizing event: outside the promise (%s)",
						h.name, j.id, run+1, r.what, d.Format("15:04:05.000000"), why)
					continue
				}
				out = append(out, fmt.Sprintf("SAFETY: job %d run %d's %s deleted at %s with no terminal of run ≥%d or restart of a later run published before",
					j.id, run+1, r.what, d.Format("15:04:05.000000"), run+1))
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
		j.mu.Lock()
		stopped := j.stopped
		j.mu.Unlock()
		if stopped {
			continue // its problem is reported; its final state is not the plan's
		}
		last := j.runs[len(j.runs)-1]
		stream := g.names.StreamName(j.id)
		exists := streamExists(g.t, g.js, stream)
		if last.end == endTerminal {
			if (exists || consumerExists(g.t, g.js, g.names.AdvisoryStream, g.names.DeadLetterConsumerName(j.id))) &&
				g.loss.endLost(j, len(j.runs)-1) {
				// Its terminal event went with the event stream before it
				// was handled: the service never heard of it.
				g.stats.endLost.Add(1)
				continue
			}
			if exists {
				out = append(out, fmt.Sprintf("LIVENESS: job %d ended %s but %s still exists", j.id, last.terminal, stream))
			}
			if consumerExists(g.t, g.js, g.names.AdvisoryStream, g.names.DeadLetterConsumerName(j.id)) {
				out = append(out, fmt.Sprintf("LIVENESS: job %d ended but its dead-letter consumer still exists", j.id))
			}
			continue
		}
		if !exists {
			if why := g.loss.outsidePromise(j, time.Now()); why != "" {
				g.t.Logf("history %s: job %d's running run %d lost its stream: outside the promise (%s)", h.name, j.id, last.attempt, why)
				continue
			}
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
