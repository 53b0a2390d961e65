package modelcheck

import (
	"fmt"
	"sort"
	"strings"

	"github.com/example/queue-janitor/events"
)

// bstep is one step of the backend's script.
type bstep int

const (
	bCreateStream bstep = iota // create the run's task stream and task consumer (or reuse a leftover)
	bCreateDLQ                 // create the run's dead-letter consumer on advisories
	bTerminal                  // publish the run's terminal event (revoked)
	bRestart                   // publish restart_requested for the next run
	bWait                      // wait for job.queue.flushed answering it
	bStarted                   // publish the run's started event (a status that is only recorded)
	bPending                   // publish the next run's pending status, before the answer came (Config.PendingBetween)
)

// backend is the job backend: a script over runs 1 and 2 of job 7.
type backend struct {
	script []bstep
	pc     int
	run    int // the current run
	sent   []string
	reqAt  int // index of the first restart request, for its time
	tries  int
	gaveUp string
	nextID int
	lastAt stamp // when the last restart request was stored
}

func newBackend(cfg Config) backend {
	s := []bstep{bCreateStream, bCreateDLQ, bTerminal, bRestart, bWait, bCreateStream, bCreateDLQ}
	if cfg.PendingBetween {
		s = []bstep{bCreateStream, bCreateDLQ, bTerminal, bRestart, bPending, bWait, bCreateStream, bCreateDLQ}
	}
	if cfg.RestartedBefore {
		// Run 1's own restart request and its answer come first
		// (newExec runs them a minute before the model's epoch).
		s = append([]bstep{bRestart, bWait}, s...)
		return backendFrom(s, cfg, 0)
	}
	return backendFrom(s, cfg, 1)
}

// backendFrom is the backend at the start of script s, in run run.
func backendFrom(s []bstep, cfg Config, run int) backend {
	if cfg.Run2Started {
		s = append(s, bStarted)
	}
	if cfg.Run2Terminal {
		s = append(s, bTerminal)
	}
	// Event ids count from e1 for the events of the model proper; run 1's
	// own restart request, before them, is e0.
	return backend{script: s, run: run, nextID: run - 1}
}

func (b *backend) done() bool { return b.pc >= len(b.script) || b.gaveUp != "" }

// waiting reports whether the backend waits for the answer to its restart
// request (publishing its pending status meanwhile counts as waiting).
func (b *backend) waiting() bool {
	return !b.done() && (b.script[b.pc] == bWait || b.script[b.pc] == bPending)
}

func (b *backend) key(sb *strings.Builder) {
	fmt.Fprintf(sb, "back=%d/%d/%v/%d/%s;", b.pc, b.run, b.sent, b.tries, b.gaveUp)
}

// answered returns the answer to the backend's restart request, if one
// arrived.
func (x *exec) answered() *answer {
	for i := range x.w.Answers {
		a := &x.w.Answers[i]
		if a.Kind != "flushed" || a.Lost {
			continue
		}
		for _, id := range x.back.sent {
			if a.Cause == id {
				return a
			}
		}
	}
	return nil
}

// backendEnabled reports whether the backend's next script step can run.
func (x *exec) backendEnabled() bool {
	b := &x.back
	switch {
	case b.done():
		return false
	case b.script[b.pc] == bWait:
		return x.answered() != nil
	}
	return true
}

// publish appends an event to the event stream.
func (x *exec) publish(status events.Status, run int) *modelEvent {
	b := &x.back
	b.nextID++
	e := &modelEvent{ID: fmt.Sprintf("e%d", b.nextID), Status: status, Run: run,
		Time: x.w.Now.time().Add(x.cfg.BackendOffset), Stored: x.w.tick()}
	if x.cfg.Attempts {
		e.Attempt = run
	}
	x.w.Events = append(x.w.Events, e)
	return e
}

// backendStep runs the backend's next script step.
func (x *exec) backendStep() string {
	b := &x.back
	w := x.w
	s := b.script[b.pc]
	b.pc++
	switch s {
	case bCreateStream, bCreateDLQ:
		key := streamKey(names.StreamName(job))
		if s == bCreateDLQ {
			key = consumerKey(names.AdvisoryStream, names.DeadLetterConsumerName(job))
		}
		if r, ok := w.Resources[key]; ok {
			// The backend reuses a leftover: it now holds this run's tasks.
			r.Run, r.Since = b.run, w.tick()
			r.Msgs += 2
			return fmt.Sprintf("backend: run %d REUSES the leftover %s (created %s)", b.run, key, r.Created)
		}
		at := w.tick()
		r := &resource{Key: key, Run: b.run, Created: at, Since: at}
		if s == bCreateStream {
			r.Consumers, r.Msgs = 1, 2
		}
		if x.cfg.Stamps {
			r.Attempt = b.run
		}
		w.Resources[key] = r
		return fmt.Sprintf("backend: creates %s for run %d at %s, publishes its tasks", key, b.run, at)
	case bTerminal:
		e := x.publish(events.StatusRevoked, b.run)
		return fmt.Sprintf("backend: publishes %s for run %d, stored at %s", e.label(), b.run, e.Stored)
	case bPending:
		return x.pendingStatus()
	case bStarted:
		e := x.publish(events.StatusStarted, b.run)
		return fmt.Sprintf("backend: publishes %s for run %d, stored at %s", e.label(), b.run, e.Stored)
	case bRestart:
		e := x.publish(events.StatusRestartRequested, b.run+1)
		b.sent, b.tries, b.reqAt, b.lastAt = []string{e.ID}, 1, len(w.Events)-1, e.Stored
		return fmt.Sprintf("backend: Start → publishes %s for run %d, stored at %s; waits for flushed", e.label(), b.run+1, e.Stored)
	case bWait:
		a := x.answered()
		if a.Outcome == events.OutcomeStale {
			b.gaveUp = "superseded"
			return fmt.Sprintf("backend: flushed answer %s: stale → does not publish run %d", a.Cause, b.run+1)
		}
		b.run++
		line := fmt.Sprintf("backend: flushed answer to %s (%s) → run %d may publish", a.Cause, a.Outcome, b.run)
		for _, k := range sortedKeys(w.Resources) {
			r := w.Resources[k]
			if r.Run == 0 || r.Run >= b.run {
				continue
			}
			if k == streamKey(names.StreamName(job)) && r.Msgs == 0 {
				// Emptied by a purge whose delete did not follow: no task of
				// the earlier run can reach the new one.
				line += fmt.Sprintf("  (run %d's %s is still there, emptied)", r.Run, r.Key)
				continue
			}
			what := "is still there"
			if r.Msgs > 0 {
				what = fmt.Sprintf("still holds %d tasks", r.Msgs)
			}
			line += fmt.Sprintf("  ← VIOLATION (handshake): flushed while run %d's %s %s", r.Run, r.Key, what)
			if x.violated == "" {
				x.violated = fmt.Sprintf("flushed answered (%s, to %s) while run %d's %s %s", a.Outcome, a.Cause, r.Run, r.Key, what)
			}
		}
		return line
	}
	return ""
}

// pendingStatus publishes the next run's pending status while the backend
// waits for the answer to its restart request (Config.PendingBetween), as
// Antenna does between Start and the new round (the Celery prerun signal
// sets PENDING), before the answer came. Its place in the script is fixed,
// right after the request: it is handled in any order with the others.
func (x *exec) pendingStatus() string {
	b := &x.back
	e := x.publish(events.StatusPending, b.run+1)
	return fmt.Sprintf("backend: publishes %s for run %d while it waits, stored at %s", e.label(), b.run+1, e.Stored)
}

func sortedKeys(m map[string]*resource) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// reask is the backend's timeout: it publishes restart_requested again
// (a new id, the same attempt and time), as the Python module does.
func (x *exec) reask() string {
	b := &x.back
	first := x.w.Events[b.reqAt]
	b.nextID++
	e := &modelEvent{ID: fmt.Sprintf("e%d", b.nextID), Status: first.Status, Attempt: first.Attempt, Run: first.Run,
		Time: first.Time, Stored: x.w.tick()}
	x.w.Events = append(x.w.Events, e)
	b.sent = append(b.sent, e.ID)
	b.tries++
	b.lastAt = e.Stored
	return fmt.Sprintf("backend: no answer yet (timeout) → publishes %s again, stored at %s", e.label(), e.Stored)
}

// duplicate publishes a copy of e (an outbox publishing twice): the same
// id and data, a new message.
func (x *exec) duplicate(e *modelEvent) string {
	n := 0
	for _, o := range x.w.Events {
		if o.ID == e.ID {
			n++
		}
	}
	d := &modelEvent{ID: e.ID, Status: e.Status, Attempt: e.Attempt, Run: e.Run, Time: e.Time, Stored: x.w.tick(), Copy: n}
	x.w.Events = append(x.w.Events, d)
	return fmt.Sprintf("backend outbox: publishes %s again (duplicate), stored at %s", e.label(), d.Stored)
}

// earlyAnswer (MutAnswerBeforeRecord) answers as soon as the effect's
// record write is sent, before it is applied.
func (x *exec) earlyAnswer(t *task) {
	kind := "cleaned"
	if t.ev.restart() {
		kind = "flushed"
	}
	x.w.Answers = append(x.w.Answers, answer{Kind: kind, Cause: t.ev.ID, Outcome: events.OutcomeRemoved})
}
