package handlers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// Replay is the event stream as a rebuild reads it (events.Replayer).
type Replay interface {
	// Events calls fn with every event in the stream that decodes, oldest
	// first, with its stream sequence and Stored set; it returns the last
	// sequence read and when the stream was created.
	Events(ctx context.Context, fn func(seq uint64, ev events.JobStatus)) (uint64, time.Time, error)
	// AckFloor is the service's durable consumer's ack floor: every event
	// at or below it was acknowledged, that is, its effect was recorded. It
	// also returns when the stream it was read on was created.
	AckFloor(ctx context.Context) (uint64, time.Time, error)
}

// MarkerStore keeps the rebuild marker (queue.Store satisfies it).
type MarkerStore interface {
	RebuildMarker(ctx context.Context) (queue.RebuildMarker, uint64, error)
	PutJSON(ctx context.Context, key string, v any, rev uint64) (uint64, error)
}

// Rebuilder rebuilds the job records of a bucket that was created (or
// recreated after a loss) from the event stream, which keeps every event for
// its max age (7 days by default). Until a bucket incarnation holds its
// rebuild marker, no claim acts (see [gate]): an event that the lost records
// would have judged stale must not delete or flush a later run. For each job
// the newest event is found as the handler orders events (attempt, then
// arrival), with the last restart request, its first arrival and whether it
// was acknowledged (its effect recorded), from the service's consumer's ack
// floor.
type Rebuilder struct {
	h       *Handler
	src     Replay
	markers MarkerStore
	log     zerolog.Logger
	kick    chan struct{}
	mu      sync.Mutex // one rebuild at a time in this process
}

// WithRebuild makes the handler wait, in each new bucket incarnation, for
// its records to be rebuilt from src; the returned Rebuilder does it (run
// its Run loop, or Ensure once).
func WithRebuild(src Replay, markers MarkerStore, log zerolog.Logger, out **Rebuilder) Option {
	return func(h *Handler) {
		r := &Rebuilder{h: h, src: src, markers: markers, log: log, kick: make(chan struct{}, 1)}
		h.gate.rebuild = r
		*out = r
	}
}

// ready returns, when inc's records are rebuilt, the creation time of the
// event stream they were rebuilt from and the revision of the marker that
// says so (every record the rebuild wrote has a lower one); else a
// [NotReadyError] after asking the Run loop to rebuild them.
func (r *Rebuilder) ready(ctx context.Context, inc queue.Incarnation) (time.Time, uint64, error) {
	m, rev, err := r.markers.RebuildMarker(ctx)
	if err != nil {
		return time.Time{}, 0, err
	}
	if rev != 0 && m.State == queue.RebuildDone && m.Incarnation.Equal(inc.Created) {
		return m.EventsFrom, rev, nil
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
	return time.Time{}, 0, &NotReadyError{Reason: "the key-value bucket's records are being rebuilt from the event stream", RetryAfter: 250 * time.Millisecond}
}

// Run rebuilds the records whenever a claim finds the bucket without its
// rebuild marker (a claim's admission asks, see [gate]). It returns when ctx
// is done. serve calls Ensure once before taking events.
func (r *Rebuilder) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		}
		if err := r.Ensure(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn().Err(err).Msg("rebuilding the job records from the event stream failed; the next event that needs them tries again")
		}
	}
}

// Ensure rebuilds the records now unless the current bucket already holds
// its rebuild marker or another process is rebuilding them. The rebuild
// holds a lease in the marker, as a claim does on a job, renewed while it
// runs and given back if it fails: a rebuilder that dies blocks the others
// for one lease at most.
func (r *Rebuilder) Ensure(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	inc, err := r.h.records.Incarnation(ctx)
	if err != nil {
		return err
	}
	m, rev, err := r.markers.RebuildMarker(ctx)
	switch {
	case err != nil:
		return err
	case rev != 0 && m.State == queue.RebuildDone && m.Incarnation.Equal(inc.Created):
		return nil
	case rev != 0 && m.State == queue.RebuildRunning && m.Incarnation.Equal(inc.Created) && inc.Now.Before(m.At.Add(m.TTL)):
		return nil // another process is at it
	}
	ttl := r.h.cfg.Lease
	running := queue.RebuildMarker{State: queue.RebuildRunning, Owner: r.h.cfg.Owner, Token: newToken(), TTL: ttl,
		Incarnation: inc.Created}
	runRev, err := r.markers.PutJSON(ctx, queue.RebuildKey, running, rev)
	if errors.Is(err, queue.ErrConflict) {
		return nil // another process took it
	}
	if err != nil {
		return err
	}
	started := time.Now()
	rctx, cancel := context.WithCancel(ctx)
	renewed := make(chan uint64, 1)
	go func() { renewed <- r.renew(rctx, cancel, running, runRev, ttl) }()
	done, err := r.rebuild(rctx)
	cancel()
	runRev = <-renewed
	if err != nil {
		// Give the lease back, so that another rebuilder need not wait.
		gctx, gcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer gcancel()
		running.State, running.TTL = "failed", 0
		_, _ = r.markers.PutJSON(gctx, queue.RebuildKey, running, runRev)
		return fmt.Errorf("rebuild the job records: %w", err)
	}
	done.State, done.Owner, done.Token, done.Incarnation = queue.RebuildDone, r.h.cfg.Owner, running.Token, inc.Created
	done.TookMS = float64(time.Since(started).Microseconds()) / 1000
	if _, err := r.markers.PutJSON(ctx, queue.RebuildKey, done, runRev); err != nil {
		// A conflict: the bucket was recreated, or the lease was lost.
		return fmt.Errorf("record the rebuild: %w", err)
	}
	r.log.Info().Str("bucket_created", inc.Created.UTC().Format(time.RFC3339Nano)).Uint64("through_seq", done.Through).
		Int("events", done.Events).Int("jobs", done.Jobs).Float64("took_ms", done.TookMS).
		Msg("job records rebuilt from the event stream for a new key-value bucket")
	return nil
}

// renew writes the rebuild's lease again every third of ttl until ctx is
// done, and returns the marker's last revision. A lost lease (another
// writer, or the bucket recreated) cancels the rebuild.
func (r *Rebuilder) renew(ctx context.Context, cancel context.CancelFunc, m queue.RebuildMarker, rev uint64, ttl time.Duration) uint64 {
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return rev
		case <-t.C:
			next, err := r.markers.PutJSON(ctx, queue.RebuildKey, m, rev)
			switch {
			case err == nil:
				rev = next
			case errors.Is(err, queue.ErrConflict):
				cancel()
				return rev
			}
		}
	}
}

// rebuilt is what the event stream says of one job.
type rebuilt struct {
	newest    events.JobStatus
	newestSeq uint64
	restart   *events.JobStatus // the newest restart request
	// restartFirst is when that request first reached the event stream;
	// restartSeq its newest copy's sequence.
	restartFirst time.Time
	restartSeq   uint64
	// ids are the ids seen, in order of first arrival; a later copy of an
	// id is the same event, published again, and orders nothing.
	ids  []string
	seen map[string]bool
}

// rebuild reads the event stream and writes every job's record.
func (r *Rebuilder) rebuild(ctx context.Context) (queue.RebuildMarker, error) {
	for range 3 {
		m, jobs, floor, err := r.read(ctx)
		if errors.Is(err, errStreamReplaced) {
			r.log.Info().Err(err).Msg("reading the event stream again")
			continue
		}
		if err != nil {
			return queue.RebuildMarker{}, err
		}
		return m, r.writeAll(ctx, jobs, floor)
	}
	return queue.RebuildMarker{}, fmt.Errorf("the event stream was replaced three times while it was read: %w", errStreamReplaced)
}

// errStreamReplaced: the event stream was deleted and created again while
// the rebuild read its ack floor and its events.
var errStreamReplaced = errors.New("the event stream was replaced while the records were rebuilt")

// read reads the ack floor, then every event, of one event stream, and
// checks that the stream was not replaced (deleted by `flush nats`, and
// created again by the intake) in between. A floor read on the stream
// before would count the new stream's first events, never handled, as
// acknowledged: a restart request among them would be taken as flushed, and
// answered already_done over a leftover.
func (r *Rebuilder) read(ctx context.Context) (queue.RebuildMarker, map[queue.JobID]*rebuilt, uint64, error) {
	floor, floorFrom, err := r.src.AckFloor(ctx)
	if err != nil {
		return queue.RebuildMarker{}, nil, 0, err
	}
	jobs := map[queue.JobID]*rebuilt{}
	n := 0
	last, born, err := r.src.Events(ctx, func(seq uint64, ev events.JobStatus) {
		n++
		if ev.HasQueue() {
			fold(jobs, seq, ev)
		}
	})
	if err != nil {
		return queue.RebuildMarker{}, nil, 0, err
	}
	// Once more after the events: a stream replaced while they were read
	// ends the read early, and its successor's creation is then the time
	// from which held events count as lost with it (see gate.before).
	_, after, err := r.src.AckFloor(ctx)
	if err != nil {
		return queue.RebuildMarker{}, nil, 0, err
	}
	if !born.Equal(floorFrom) || !after.Equal(born) {
		return queue.RebuildMarker{}, nil, 0, fmt.Errorf("%w (ack floor %d read on the stream created %s, events on the one created %s, the stream then created %s)",
			errStreamReplaced, floor, stamp(floorFrom), stamp(born), stamp(after))
	}
	return queue.RebuildMarker{Through: last, Events: n, Jobs: len(jobs), EventsFrom: born}, jobs, floor, nil
}

// fold adds what ev, the event at seq, says of its job.
func fold(jobs map[queue.JobID]*rebuilt, seq uint64, ev events.JobStatus) {
	j := jobs[ev.JobID]
	switch {
	case j == nil:
		j = &rebuilt{newest: ev, newestSeq: seq, seen: map[string]bool{}}
		jobs[ev.JobID] = j
	case j.seen[ev.ID] && ev.ID == j.newest.ID:
		j.newestSeq = seq // a later copy of the newest: it may be the one acknowledged
	case j.seen[ev.ID] && ev.Status != events.StatusRestartRequested:
		return // a later copy of an older event orders nothing
	case !j.seen[ev.ID] && newer(ev, j.newest):
		j.newest, j.newestSeq = ev, seq
	}
	if !j.seen[ev.ID] {
		j.seen[ev.ID] = true
		j.ids = append(j.ids, ev.ID)
	}
	if ev.Status != events.StatusRestartRequested {
		return
	}
	switch {
	case (j.restart == nil || newer(ev, *j.restart) && ev.ID != j.restart.ID) && !supersededOnArrival(ev, j.newest):
		e := ev
		j.restart, j.restartFirst, j.restartSeq = &e, ev.Stored, seq
	case j.restart != nil && ev.ID == j.restart.ID:
		j.restartSeq = seq // a later copy of the same request
	}
}

// supersededOnArrival reports whether a restart request reached the event
// stream after an event of a later attempt (newest, the job's newest event
// so far): the handler answered it stale and acted on nothing (see
// supersedes), so it is not the restart the job's run came from.
func supersededOnArrival(rs, newest events.JobStatus) bool {
	return rs.HasAttempt && newest.HasAttempt && newest.Attempt > rs.Attempt
}

// newer orders two events of a job as the record does (see compare): by
// attempt when both carry one and they differ, of one attempt its restart
// request first, else by arrival at the event stream.
func newer(a, b events.JobStatus) bool {
	if a.HasAttempt && b.HasAttempt && a.Attempt != b.Attempt {
		return a.Attempt > b.Attempt
	}
	if a.HasAttempt && b.HasAttempt && (a.Status == events.StatusRestartRequested) != (b.Status == events.StatusRestartRequested) {
		return b.Status == events.StatusRestartRequested // a run's restart request comes first
	}
	return a.Stored.After(b.Stored)
}

// writeAll writes the records, a few at a time.
func (r *Rebuilder) writeAll(ctx context.Context, jobs map[queue.JobID]*rebuilt, floor uint64) error {
	work := make(chan queue.JobID)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				if err := r.write(ctx, id, jobs[id], floor); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for id := range jobs {
		select {
		case work <- id:
		case err := <-errs:
			close(work)
			wg.Wait()
			return err
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// write merges what the event stream says of a job into its record: the
// newest event wins, as the handler orders events; a lease or an effect the
// record holds stays.
func (r *Rebuilder) write(ctx context.Context, id queue.JobID, j *rebuilt, floor uint64) error {
	for range 8 {
		cur, rev, err := r.h.records.Get(ctx, id)
		if err != nil {
			return err
		}
		next, changed := merge(r.h, cur, rev != 0, j, floor)
		if !changed {
			return nil
		}
		_, err = r.h.records.Put(ctx, id, next, rev)
		if !errors.Is(err, queue.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("record of job %d kept changing during the rebuild", id)
}

// merge returns cur with what j knows that cur does not.
func merge(h *Handler, cur queue.Record, exists bool, j *rebuilt, floor uint64) (queue.Record, bool) {
	next, changed := cur, false
	n := j.newest
	if !exists || compare(n, cur) > 0 {
		next.Time, next.Stored, next.EventID, next.Status = n.Time, n.Stored, n.ID, string(n.Status)
		if n.HasAttempt {
			a := n.Attempt
			next.Attempt = &a
		}
		switch h.kindOf(n.Status) {
		case kindTerminal:
			next.State, next.Done = queue.StateTerminal, j.newestSeq <= floor
		case kindRestart:
			next.State, next.Done = queue.StateFlushed, j.newestSeq <= floor
		default:
			next.State, next.Done = queue.StateRunning, true
		}
		next.Lease = cur.CarryLease()
		changed = true
	}
	if len(cur.Seen) == 0 && len(j.ids) > 0 {
		next.Seen = j.ids[max(len(j.ids)-8, 0):]
		changed = true
	}
	if rs := j.restart; rs != nil && (cur.RestartID == "" || cur.RestartID != rs.ID && restartNewer(*rs, cur)) {
		next.RestartID, next.RestartStored, next.RestartDone = rs.ID, j.restartFirst, j.restartSeq <= floor
		next.RestartAttempt = nil
		if rs.HasAttempt {
			a := rs.Attempt
			next.RestartAttempt = &a
		}
		changed = true
	}
	return next, changed
}

// restartNewer reports whether rs is a later restart request than the one
// cur holds.
func restartNewer(rs events.JobStatus, cur queue.Record) bool {
	if rs.HasAttempt && cur.RestartAttempt != nil && rs.Attempt != *cur.RestartAttempt {
		return rs.Attempt > *cur.RestartAttempt
	}
	return !cur.RestartStored.IsZero() && rs.Stored.After(cur.RestartStored)
}

// stamp formats a stream's creation time for a message.
func stamp(t time.Time) string {
	if t.IsZero() {
		return "(none)"
	}
	return t.UTC().Format(time.RFC3339Nano)
}
