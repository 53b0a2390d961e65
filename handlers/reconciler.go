package handlers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
	"github.com/example/queue-janitor/telemetry"
)

// Lister is what the reconciler needs to see the job streams.
type Lister interface {
	JobStreams(ctx context.Context, fn func(queue.JobStream) error) error
	TaskConsumer(ctx context.Context, id queue.JobID) (*jetstream.ConsumerInfo, error)
	// DeadLetterConsumers lists the jobs' dead-letter consumers on the
	// shared advisory stream.
	DeadLetterConsumers(ctx context.Context, fn func(queue.JobID, *jetstream.ConsumerInfo) error) error
}

// LeaseStore keeps the sweeper's lease (queue.Store satisfies it).
type LeaseStore interface {
	GetJSON(ctx context.Context, key string, v any, rev *uint64) error
	PutJSON(ctx context.Context, key string, v any, rev uint64) (uint64, error)
}

// ResultNotReady is the result of a removal a pass left for later because
// the job records were not ready (see [NotReadyError]).
const ResultNotReady = "not_ready"

// SweeperLeaseKey is the record key of the lease that lets one replica
// sweep at a time.
const SweeperLeaseKey = "reconciler.lease"

// ReconcilerDeps are the reconciler's collaborators.
type ReconcilerDeps struct {
	Logger  zerolog.Logger
	Tracer  trace.Tracer
	Metrics *telemetry.Metrics
}

// Reconciler periodically lists the job streams, joins them with the
// per-job records and cleans what the events missed (see [Judge]). One
// replica sweeps at a time, holding a lease in the key-value bucket that a
// crashed holder loses after LeaseTTL.
type Reconciler struct {
	h       *Handler
	list    Lister
	records Records
	leases  LeaseStore
	cfg     SweepConfig
	log     zerolog.Logger
	tracer  trace.Tracer
	metrics *telemetry.Metrics
	now     func() time.Time
}

// NewReconciler returns a Reconciler that acts through h.
func NewReconciler(h *Handler, list Lister, records Records, leases LeaseStore, cfg SweepConfig, deps ReconcilerDeps) *Reconciler {
	if deps.Tracer == nil {
		deps.Tracer = noop.NewTracerProvider().Tracer("")
	}
	if deps.Metrics == nil {
		deps.Metrics, _ = telemetry.NewMetrics(nil)
	}
	return &Reconciler{h: h, list: list, records: records, leases: leases, cfg: cfg, log: deps.Logger,
		tracer: deps.Tracer, metrics: deps.Metrics, now: h.now}
}

// Row is one job stream seen by a pass, for `ls`, `sweep` and logs.
type Row struct {
	Stream   queue.JobStream
	Consumer *jetstream.ConsumerInfo
	Record   queue.Record
	Exists   bool
	// Rev is the record's revision when judged (0: none).
	Rev       uint64
	Judgement Judgement
	// Outcome and Err are set when the pass acted on the stream.
	Outcome *events.Outcome
	Err     error
}

// PassOptions tune one pass.
type PassOptions struct {
	// DryRun changes nothing: it judges only.
	DryRun bool
	// Orphans removes orphans on this pass even when the reconciler's
	// configuration does not.
	Orphans bool
	// Row, when set, is told about every stream judged, in listing order.
	Row func(Row)
}

// Summary counts what a pass saw and did.
type Summary struct {
	Seen, Cleaned, Orphans, OrphansRemoved, Grace, Kept, Busy, Errors int
	MessagesDiscarded                                                 uint64
	Took                                                              time.Duration
}

// Pass judges every job stream once and, unless DryRun, removes what the
// verdicts say. It publishes the triage inventory to the metrics. It holds
// no lease itself: Run takes the sweeper lease around it.
func (r *Reconciler) Pass(ctx context.Context, opts PassOptions) (Summary, error) {
	ctx, span := r.tracer.Start(ctx, "reconcile", trace.WithAttributes(attribute.Bool("reconcile.dry_run", opts.DryRun)))
	defer span.End()
	started := r.now()
	var sum Summary
	inv := telemetry.Inventory{Streams: map[string]int64{}, Messages: map[string]int64{}, Pending: map[string]int64{}}
	cfg := r.cfg
	cfg.SweepOrphans = cfg.SweepOrphans || opts.Orphans
	// Streams are judged a batch at a time (a page of the listing), the
	// batch's lookups concurrently; rows are handled in listing order.
	// Memory stays bounded by the batch, however many streams there are.
	var notReady error
	if !opts.DryRun {
		if notReady = r.h.Ready(ctx); notReady != nil {
			r.log.Debug().Ctx(ctx).Err(notReady).Msg("reconciler pass judges only: the job records are not ready")
		}
	}
	seen := map[queue.JobID]bool{}
	handle := func(row Row) {
		s := row.Stream
		seen[s.ID] = true
		sum.Seen++
		state := row.Judgement.JobState
		inv.Streams[state]++
		inv.Messages[state] += int64(min(s.Info.State.Msgs, 1<<62))
		if row.Consumer != nil {
			inv.Pending[state] += int64(min(row.Consumer.NumPending, 1<<62)) + int64(row.Consumer.NumAckPending)
		} else {
			inv.Pending[state] += int64(min(s.Info.State.Msgs, 1<<62))
		}
		r.count(&sum, row.Judgement)
		if row.Judgement.Verdict == VerdictOrphan && !opts.DryRun {
			r.reportOrphan(ctx, row)
		}
		switch {
		case !row.Judgement.Remove || opts.DryRun || row.Err != nil:
		case notReady != nil:
			row.Outcome = &events.Outcome{Decision: events.DecisionIgnore, Result: ResultNotReady, Note: notReady.Error()}
			sum.Busy++
		default:
			r.act(ctx, &row, &sum)
		}
		if row.Err != nil {
			sum.Errors++
		}
		if opts.Row != nil {
			opts.Row(row)
		}
	}
	batch := make([]queue.JobStream, 0, judgeBatch)
	flush := func() {
		for _, row := range r.judgeAll(ctx, batch, cfg) {
			handle(row)
		}
		batch = batch[:0]
	}
	err := r.list.JobStreams(ctx, func(s queue.JobStream) error {
		if batch = append(batch, s); len(batch) == judgeBatch {
			flush()
		}
		return ctx.Err()
	})
	if err == nil {
		flush()
		r.deadLetters(ctx, seen, cfg, opts, &sum)
	}
	sum.Took = r.now().Sub(started)
	if err == nil {
		inv.At = r.now()
		r.metrics.SetInventory(inv)
	} else {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.SetAttributes(attribute.Int("reconcile.seen", sum.Seen), attribute.Int("reconcile.cleaned", sum.Cleaned),
		attribute.Int("reconcile.orphans", sum.Orphans), attribute.Int("reconcile.errors", sum.Errors))
	return sum, err
}

// judgeBatch is how many streams are judged together, judgeWorkers how
// many of their lookups run at once.
const (
	judgeBatch   = 256
	judgeWorkers = 16
)

// judgeAll judges a batch concurrently and returns the rows in order.
func (r *Reconciler) judgeAll(ctx context.Context, batch []queue.JobStream, cfg SweepConfig) []Row {
	rows := make([]Row, len(batch))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(judgeWorkers, len(batch)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				rows[i] = r.judge(ctx, batch[i], cfg)
			}
		}()
	}
	for i := range batch {
		next <- i
	}
	close(next)
	wg.Wait()
	return rows
}

func (r *Reconciler) judge(ctx context.Context, s queue.JobStream, cfg SweepConfig) Row {
	row := Row{Stream: s}
	rec, rev, err := r.records.Get(ctx, s.ID)
	if err != nil {
		row.Err = err
		row.Judgement = Judgement{Verdict: VerdictKeep, Reason: "record unreadable", JobState: JobStateUnknown}
		return row
	}
	row.Record, row.Exists, row.Rev = rec, rev != 0, rev
	if row.Consumer, err = r.list.TaskConsumer(ctx, s.ID); err != nil {
		row.Err = err
	}
	row.Judgement = Judge(s, row.Consumer, rec, row.Exists, r.now(), cfg)
	return row
}

func (r *Reconciler) count(sum *Summary, j Judgement) {
	switch j.Verdict {
	case VerdictOrphan:
		sum.Orphans++
	case VerdictGrace:
		sum.Grace++
	case VerdictKeep:
		sum.Kept++
	case VerdictBusy:
		sum.Busy++
	}
}

// reportOrphan counts and logs an orphan, whether or not it is removed.
func (r *Reconciler) reportOrphan(ctx context.Context, row Row) {
	r.metrics.Orphan(ctx)
	if row.Judgement.Remove {
		return // act logs the removal
	}
	r.log.Warn().Ctx(ctx).Int64("job_id", int64(row.Stream.ID)).Str("stream", row.Stream.Info.Config.Name).
		Uint64("messages", row.Stream.Info.State.Msgs).Str("reason", row.Judgement.Reason).
		Msg("orphan job stream: the service has never heard of this job (enable --sweep-orphans to delete such streams)")
}

// act removes one stream through Handler.Sweep, with its own span and log
// line, as an event's cleanup has.
func (r *Reconciler) act(ctx context.Context, row *Row, sum *Summary) {
	j := row.Judgement
	ctx, span := r.tracer.Start(ctx, "reconcile "+row.Stream.Info.Config.Name, trace.WithAttributes(
		attribute.Int64("job.id", int64(row.Stream.ID)), attribute.String("queue_janitor.verdict", string(j.Verdict)),
		attribute.String("queue_janitor.job_state", j.JobState)))
	defer span.End()
	out, err := r.h.Sweep(ctx, SweepRequest{ID: row.Stream.ID, Judged: row.Record, JudgedRev: row.Rev,
		Fence: j.Fence, Trigger: TriggerReconciler})
	row.Outcome, row.Err = &out, err
	level := zerolog.InfoLevel
	switch {
	case errors.Is(err, ErrRecordChanged) || errors.Is(err, ErrJobBusy) || errors.Is(err, ErrNotReady):
		// An event got there first, or the records are not ready: a later
		// pass looks again.
		level, row.Err = zerolog.DebugLevel, nil
	case err != nil:
		level = zerolog.WarnLevel
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	default:
		if j.Verdict == VerdictOrphan {
			sum.OrphansRemoved++
		} else {
			sum.Cleaned++
		}
		if out.Removal != nil {
			sum.MessagesDiscarded += out.Removal.MessagesDiscarded
			r.metrics.Discarded(ctx, string(events.DecisionCleanup), out.Removal.MessagesDiscarded)
		}
		r.metrics.Swept(ctx, string(j.Verdict))
	}
	span.SetAttributes(attribute.String("queue_janitor.result", out.Result))
	r.log.WithLevel(level).Ctx(ctx).Func(func(e *zerolog.Event) {
		e.Int64("job_id", int64(row.Stream.ID)).Str("stream", row.Stream.Info.Config.Name).Str("job_state", j.JobState).
			Str("verdict", string(j.Verdict)).Str("reason", j.Reason).Str("result", out.Result)
		if rm := out.Removal; rm != nil {
			e.Strs("deleted", rm.Deleted).Uint64("messages_discarded", rm.MessagesDiscarded)
			if len(rm.Kept) > 0 {
				e.Strs("kept", rm.Kept)
			}
		}
		if err != nil {
			e.Err(err)
		}
	}).Msg("reconciler acted")
}

// sweeperLease is the value under SweeperLeaseKey.
type sweeperLease struct {
	Owner string    `json:"owner"`
	Until time.Time `json:"until"`
}

// Run sweeps at once and then every interval while it holds the sweeper
// lease, until ctx is done. A replica that does not hold the lease waits for the next interval
// and tries again; the holder renews the lease during a long pass and stops
// the pass if it lost it.
func (r *Reconciler) Run(ctx context.Context, interval, leaseTTL time.Duration) {
	if interval <= 0 {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	// The first pass runs at once, so that the triage gauges are set from
	// the start rather than an interval later.
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		held, err := r.acquire(ctx, leaseTTL)
		if err != nil {
			r.log.Warn().Err(err).Msg("reconciler: could not read the sweeper lease; skipping this pass")
			continue
		}
		if !held {
			// Another replica sweeps and exports the inventory: stop
			// exporting stale figures that a sum over replicas would count
			// twice.
			r.metrics.SetInventory(telemetry.Inventory{})
			continue
		}
		sum, err := r.sweep(ctx, leaseTTL)
		level := zerolog.InfoLevel
		switch {
		case err != nil:
			level = zerolog.WarnLevel
		case sum.Cleaned+sum.OrphansRemoved+sum.Orphans+sum.Errors == 0:
			level = zerolog.DebugLevel // a quiet pass
		}
		r.log.WithLevel(level).Err(err).Int("seen", sum.Seen).Int("cleaned", sum.Cleaned).Int("orphans", sum.Orphans).
			Int("orphans_removed", sum.OrphansRemoved).Int("grace", sum.Grace).Int("kept", sum.Kept).Int("busy", sum.Busy).
			Int("errors", sum.Errors).Uint64("messages_discarded", sum.MessagesDiscarded).Dur("took_ms", sum.Took).
			Msg("reconciler pass")
	}
}

// sweep is one pass under the sweeper lease, renewed every third of its TTL.
func (r *Reconciler) sweep(ctx context.Context, ttl time.Duration) (Summary, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	renewed := r.now()
	sum, err := r.Pass(ctx, PassOptions{Row: func(Row) {
		if r.now().Sub(renewed) < ttl/3 {
			return
		}
		renewed = r.now()
		if held, err := r.acquire(ctx, ttl); err != nil || !held {
			cancel(fmt.Errorf("lost the sweeper lease: %w", err))
		}
	}})
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	return sum, err
}

// acquire takes or renews the sweeper lease; false means another replica
// holds it.
func (r *Reconciler) acquire(ctx context.Context, ttl time.Duration) (bool, error) {
	for range 3 {
		var cur sweeperLease
		var rev uint64
		if err := r.leases.GetJSON(ctx, SweeperLeaseKey, &cur, &rev); err != nil {
			return false, err
		}
		now := r.now()
		if rev != 0 && cur.Owner != r.h.cfg.Owner && now.Before(cur.Until) {
			return false, nil
		}
		_, err := r.leases.PutJSON(ctx, SweeperLeaseKey, sweeperLease{Owner: r.h.cfg.Owner, Until: now.Add(ttl)}, rev)
		if errors.Is(err, queue.ErrConflict) {
			continue
		}
		return err == nil, err
	}
	return false, fmt.Errorf("sweeper lease kept changing")
}

// deadLetters removes the dead-letter consumers that terminal jobs left on
// the shared advisory stream without a task stream (a cleanup that died
// between its two deletes, a backend that recreated only the consumer).
// Jobs whose stream this pass saw are left to it. A listing the service's
// user may not make is logged and skipped: it only narrows what is cleaned.
func (r *Reconciler) deadLetters(ctx context.Context, seen map[queue.JobID]bool, cfg SweepConfig, opts PassOptions, sum *Summary) {
	err := r.list.DeadLetterConsumers(ctx, func(id queue.JobID, c *jetstream.ConsumerInfo) error {
		if seen[id] {
			return nil
		}
		rec, rev, err := r.records.Get(ctx, id)
		if err != nil {
			sum.Errors++
			return nil
		}
		j := JudgeDeadLetter(c, rec, rev != 0, r.now(), cfg)
		if !j.Remove || opts.DryRun {
			return nil
		}
		out, err := r.h.Sweep(ctx, SweepRequest{ID: id, Judged: rec, JudgedRev: rev, Fence: j.Fence, Trigger: TriggerReconciler})
		level := zerolog.InfoLevel
		switch {
		case errors.Is(err, ErrRecordChanged) || errors.Is(err, ErrJobBusy) || errors.Is(err, ErrNotReady):
			return nil // an event got there first, or the records are not ready
		case err != nil:
			level = zerolog.WarnLevel
			sum.Errors++
		default:
			sum.Cleaned++
			r.metrics.Swept(ctx, string(j.Verdict))
		}
		r.log.WithLevel(level).Ctx(ctx).Func(func(e *zerolog.Event) {
			e.Int64("job_id", int64(id)).Str("consumer", c.Stream+"/"+c.Name).Str("verdict", string(j.Verdict)).
				Str("reason", j.Reason).Str("result", out.Result)
			if out.Removal != nil {
				e.Strs("deleted", out.Removal.Deleted)
			}
			if err != nil {
				e.Err(err)
			}
		}).Msg("reconciler acted on a dead-letter consumer without its stream")
		return nil
	})
	if err != nil && ctx.Err() == nil {
		r.log.Warn().Err(err).Msg("reconciler: could not list the dead-letter consumers on the advisory stream; " +
			"those left without their job's stream are not cleaned (the service's NATS user needs $JS.API.CONSUMER.LIST on it)")
	}
}

// JudgeDeadLetter decides what the reconciler does with a job's dead-letter
// consumer found without the job's task stream: it goes when the job is
// known terminal, no claim holds it, and it was created before the terminal
// event reached NATS, or after it and longer ago than the grace.
func JudgeDeadLetter(c *jetstream.ConsumerInfo, rec queue.Record, exists bool, now time.Time, cfg SweepConfig) Judgement {
	if !c.TimeStamp.IsZero() {
		now = c.TimeStamp
	}
	j := Judgement{JobState: JobStateOf(rec, exists), Verdict: VerdictKeep}
	switch {
	case j.JobState != JobStateTerminal:
		j.Reason = "the job is not known terminal"
		return j
	case rec.LeaseLive(now):
		j.Verdict, j.Reason = VerdictBusy, "replica "+rec.Lease.Owner+" is acting on it"
		return j
	}
	ended := rec.Stored
	if ended.IsZero() {
		ended = rec.Time
	}
	switch {
	case c.Created.Before(ended):
		j.Reason = "dead-letter consumer left without its stream, created before the job ended"
		j.Fence = queue.Fence{CreatedBefore: ended, Cut: "the job's " + rec.Status + " event reached NATS"}
	case now.Sub(c.Created) >= cfg.Grace:
		j.Reason = "dead-letter consumer created after the job ended, with no restart since"
		j.Fence = queue.Fence{CreatedBefore: now.Add(-cfg.Grace), Cut: "the grace period's start (--reconcile-grace)"}
	default:
		j.Verdict, j.Reason = VerdictGrace, "dead-letter consumer created after the job ended; in grace"
		return j
	}
	j.Verdict, j.Remove = VerdictClean, true
	if rec.Attempt != nil {
		j.Fence.AttemptKnown, j.Fence.MaxAttempt = true, *rec.Attempt
	}
	return j
}
