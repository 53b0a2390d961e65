package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/queue"
	"github.com/example/queue-janitor/telemetry"
)

// The operator commands share serve's connection, naming, record and
// reconciler settings, so that they see and decide exactly as the service.

func opsFlags(name, args, about string, c *Config) *flagSet {
	f := newFlagSet(name, args, about)
	connFlags(f, c)
	namesFlags(f, c)
	recordFlags(f, c)
	f.group("Judging (as the reconciler does)")
	f.Duration(&c.Reconcile.Grace, "reconcile-grace", envPrefix+"RECONCILE_GRACE", "wait after a terminal event before cleaning a stream created after it")
	f.Duration(&c.Reconcile.OrphanIdle, "orphan-idle", envPrefix+"ORPHAN_IDLE", "idle time after which a stream of an unknown job is an orphan")
	logFlags(f, c)
	return f
}

// openOps connects for an operator command. Its logs (retries, warnings)
// go to stderr at warn level unless the flags say otherwise. done closes
// the connection and flushes telemetry.
func openOps(ctx context.Context, cfg Config, cio cmdIO, readOnly bool) (svc *service, log zerolog.Logger, tel *telemetry.Telemetry, done func(), err error) {
	if err := cfg.Validate(); err != nil {
		return nil, zerolog.Nop(), nil, nil, fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if log, err = telemetry.NewLogger(cio.stderr, cfg.LogLevel, cfg.LogFormat); err != nil {
		return nil, zerolog.Nop(), nil, nil, fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if tel, err = setupTelemetry(ctx, cio, log, false); err != nil {
		return nil, log, nil, nil, err
	}
	metrics, err := telemetry.NewMetrics(tel.MeterProvider)
	if err == nil {
		svc, err = openService(ctx, cfg, "cli-"+replicaID(), log, tel, metrics, readOnly)
	}
	if err != nil {
		shutdownTelemetry(ctx, tel, log)
		return nil, log, nil, nil, err
	}
	if !readOnly {
		// A command that removes needs the records of a new bucket rebuilt
		// from the event stream first, as serve does.
		if err := svc.rebuilder.Ensure(ctx); err != nil {
			log.Warn().Err(err).Msg("could not rebuild the job records from the event stream; removals will wait")
		}
	}
	return svc, log, tel, func() { svc.close(); shutdownTelemetry(ctx, tel, log) }, nil
}

func opsDefaults() Config {
	cfg := DefaultConfig()
	cfg.LogLevel = "warn"
	return cfg
}

// lsRow is one line of `ls`, also its JSON form.
type lsRow struct {
	JobID        queue.JobID `json:"job_id"`
	Stream       string      `json:"stream"`
	Messages     uint64      `json:"messages"`
	Pending      *uint64     `json:"consumer_pending"`
	AckPending   *int        `json:"consumer_ack_pending"`
	Created      time.Time   `json:"created"`
	AgeSeconds   float64     `json:"age_seconds"`
	LastActivity time.Time   `json:"last_activity"`
	JobState     string      `json:"job_state"`
	LastStatus   string      `json:"last_status,omitempty"`
	Attempt      *int64      `json:"attempt,omitempty"`
	Verdict      string      `json:"verdict"`
	Reason       string      `json:"reason"`
}

const lsAbout = `List the job queues: every job stream with its messages, its task consumer's
pending and ack-pending counts, when it was created and last active, what the
service knows of the job, and the verdict the reconciler would reach.`

func runLs(ctx context.Context, args []string, cio cmdIO) error {
	cfg := opsDefaults()
	f := opsFlags("ls", "", lsAbout, &cfg)
	f.group("Output")
	var asJSON bool
	var state, sortBy, verdict string
	var olderThan time.Duration
	f.Bool(&asJSON, "json", envPrefix+"LS_JSON", "print JSON instead of a table")
	f.String(&state, "state", envPrefix+"LS_STATE", "only jobs in this state: terminal, live or unknown")
	f.String(&verdict, "verdict", envPrefix+"LS_VERDICT", "only streams with this verdict: clean, grace, orphan, keep, busy")
	f.Duration(&olderThan, "older-than", envPrefix+"LS_OLDER_THAN", "only streams at least this old")
	f.String(&sortBy, "sort", envPrefix+"LS_SORT", "sort by job, age, messages or pending")
	if err := parseFlags(f, args, cio); err != nil {
		return err
	}
	if sortBy == "" {
		sortBy = "job"
	}
	verdicts := []string{string(handlers.VerdictClean), string(handlers.VerdictGrace), string(handlers.VerdictOrphan),
		string(handlers.VerdictKeep), string(handlers.VerdictBusy)}
	for _, err := range []error{
		choice("sort", sortBy, "job", "age", "messages", "pending"),
		choice("state", state, handlers.JobStateTerminal, handlers.JobStateLive, handlers.JobStateUnknown),
		choice("verdict", verdict, verdicts...),
	} {
		if err != nil {
			return err
		}
	}
	svc, log, tel, done, err := openOps(ctx, cfg, cio, true)
	if err != nil {
		return err
	}
	defer done()
	if svc.store.Missing() {
		noRecordsYet(cio, svc.store.Bucket(), asJSON)
	}

	now := time.Now()
	var rows []lsRow
	_, err = svc.reconciler(cfg, log, tel).Pass(ctx, handlers.PassOptions{DryRun: true, Row: func(r handlers.Row) {
		row := newLsRow(r, now)
		if (state != "" && row.JobState != state) || (verdict != "" && row.Verdict != verdict) ||
			now.Sub(row.Created) < olderThan {
			return
		}
		rows = append(rows, row)
	}})
	if err != nil {
		return err
	}
	sortRows(rows, sortBy)
	if asJSON {
		enc := json.NewEncoder(cio.stdout)
		enc.SetIndent("", "  ")
		if rows == nil {
			rows = []lsRow{}
		}
		return enc.Encode(rows)
	}
	printTable(cio.stdout, rows, now)
	return nil
}

func newLsRow(r handlers.Row, now time.Time) lsRow {
	info := r.Stream.Info
	row := lsRow{
		JobID: r.Stream.ID, Stream: info.Config.Name, Messages: info.State.Msgs, Created: info.Created.UTC(),
		AgeSeconds: now.Sub(info.Created).Seconds(), LastActivity: handlers.LastActivity(r.Stream, r.Consumer).UTC(),
		JobState: r.Judgement.JobState, Verdict: string(r.Judgement.Verdict), Reason: r.Judgement.Reason,
	}
	if r.Exists {
		row.LastStatus, row.Attempt = r.Record.Status, r.Record.Attempt
	}
	if c := r.Consumer; c != nil {
		p, a := c.NumPending, c.NumAckPending
		row.Pending, row.AckPending = &p, &a
	}
	if r.Err != nil {
		row.Reason += " (error: " + r.Err.Error() + ")"
	}
	return row
}

func sortRows(rows []lsRow, by string) {
	key := func(r lsRow) float64 {
		switch by {
		case "age":
			return -r.AgeSeconds
		case "messages":
			return -float64(r.Messages)
		case "pending":
			if r.Pending == nil {
				return 1
			}
			return -float64(*r.Pending)
		}
		return float64(r.JobID)
	}
	sort.SliceStable(rows, func(i, j int) bool {
		if ki, kj := key(rows[i]), key(rows[j]); ki != kj {
			return ki < kj
		}
		return rows[i].JobID < rows[j].JobID
	})
}

func printTable(w io.Writer, rows []lsRow, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tSTREAM\tMESSAGES\tPENDING\tACK-PENDING\tCREATED\tAGE\tLAST ACTIVITY\tSTATE\tVERDICT\tREASON")
	for _, r := range rows {
		pending, ack := "-", "-"
		if r.Pending != nil {
			pending, ack = fmt.Sprint(*r.Pending), fmt.Sprint(*r.AckPending)
		}
		state := r.JobState
		if r.LastStatus != "" {
			state += " (" + r.LastStatus + ")"
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s ago\t%s\t%s\t%s\n", r.JobID, r.Stream, r.Messages, pending, ack,
			r.Created.Format(time.DateTime), shortAge(now.Sub(r.Created)), shortAge(now.Sub(r.LastActivity)), state, r.Verdict, r.Reason)
	}
	_ = tw.Flush()
	fmt.Fprintln(w, count(len(rows), "job stream"))
}

// shortAge renders a duration as an operator reads it: 45s, 12m, 3h05m, 2d4h.
func shortAge(d time.Duration) string {
	d = max(d, 0)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}

func oneOf(s string, options ...string) bool {
	for _, o := range options {
		if s == o {
			return true
		}
	}
	return false
}

const sweepAbout = `Run one reconciler pass now: clean the queues of jobs known to be terminal
(past the grace period), report orphans (idle streams of unknown jobs) and,
with --orphans, delete them. --dry-run changes nothing and says what it would
do. The pass takes no sweeper lease; the per-job leases and fences still
apply, so it is safe beside running replicas.`

func runSweep(ctx context.Context, args []string, cio cmdIO) error {
	cfg := opsDefaults()
	f := opsFlags("sweep", "", sweepAbout, &cfg)
	f.group("Sweep")
	var dryRun bool
	f.Bool(&dryRun, "dry-run", envPrefix+"SWEEP_DRY_RUN", "change nothing; print what would be done")
	f.Bool(&cfg.Reconcile.SweepOrphans, "orphans", envPrefix+"SWEEP_ORPHANS", "also delete orphans")
	if err := parseFlags(f, args, cio); err != nil {
		return err
	}
	svc, log, tel, done, err := openOps(ctx, cfg, cio, dryRun)
	if err != nil {
		return err
	}
	defer done()
	if svc.store.Missing() {
		noRecordsYet(cio, svc.store.Bucket(), false)
	}

	progress := isTerminalWriter(cio.stderr)
	verb := map[bool]string{true: "would ", false: ""}[dryRun]
	judged, planned := 0, 0
	sum, err := svc.reconciler(cfg, log, tel).Pass(ctx, handlers.PassOptions{DryRun: dryRun, Row: func(r handlers.Row) {
		judged++
		j, name := r.Judgement, r.Stream.Info.Config.Name
		switch {
		case r.Err != nil:
			fmt.Fprintf(cio.stdout, "job %d (%s): error: %v\n", r.Stream.ID, name, r.Err)
		case j.Remove:
			planned++
			what := "clean"
			if j.Verdict == handlers.VerdictOrphan {
				what = "delete orphan"
			}
			fmt.Fprintf(cio.stdout, "job %d (%s): %s%s: %s%s\n", r.Stream.ID, name, verb, what, j.Reason, removedText(r.Outcome))
		case j.Verdict == handlers.VerdictOrphan:
			fmt.Fprintf(cio.stdout, "job %d (%s): orphan, reported only (--orphans deletes it): %s\n", r.Stream.ID, name, j.Reason)
		}
		if progress && judged%100 == 0 {
			fmt.Fprintf(cio.stderr, "\r%s judged…", count(judged, "stream"))
		}
	}})
	if progress {
		fmt.Fprint(cio.stderr, "\r\033[K")
	}
	cleaned, orphansRemoved := sum.Cleaned, sum.OrphansRemoved
	if dryRun {
		cleaned, orphansRemoved = planned-countOrphansPlanned(sum, cfg), countOrphansPlanned(sum, cfg)
	}
	if dryRun {
		fmt.Fprintf(cio.stdout, "dry run, nothing changed: streams seen %d; would clean %d; orphans %d (would delete %d); in grace %d; kept %d; busy %d; errors %d\n",
			sum.Seen, cleaned, sum.Orphans, orphansRemoved, sum.Grace, sum.Kept, sum.Busy, sum.Errors)
	} else {
		fmt.Fprintf(cio.stdout, "streams seen %d; cleaned %d; orphans %d (deleted %d); in grace %d; kept %d; busy %d; errors %d; messages discarded %d; took %s\n",
			sum.Seen, cleaned, sum.Orphans, orphansRemoved, sum.Grace, sum.Kept, sum.Busy, sum.Errors, sum.MessagesDiscarded,
			sum.Took.Round(time.Millisecond))
	}
	if err != nil {
		return err
	}
	if sum.Errors > 0 {
		return fmt.Errorf("sweep: %s could not be handled; see the lines above", count(sum.Errors, "stream"))
	}
	return nil
}

// countOrphansPlanned is how many orphans a pass deletes: all of them when
// orphan sweeping is on.
func countOrphansPlanned(sum handlers.Summary, cfg Config) int {
	if cfg.Reconcile.SweepOrphans {
		return sum.Orphans
	}
	return 0
}

func removedText(out *events.Outcome) string {
	if out != nil && out.Result == handlers.ResultNotReady {
		return " (not now: " + out.Note + ")"
	}
	if out == nil || out.Removal == nil {
		return ""
	}
	if !out.Removal.Removed() {
		return " (nothing left to remove)"
	}
	return fmt.Sprintf(" (deleted %s; %s discarded)", strings.Join(out.Removal.Deleted, ", "), count(out.Removal.MessagesDiscarded, "message"))
}

func isTerminalWriter(w io.Writer) bool {
	for {
		u, ok := w.(interface{ Unwrap() io.Writer })
		if !ok {
			break
		}
		w = u.Unwrap()
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

const cleanAbout = `Clean the queues of the given jobs now (delete the task consumer, the stream
and the dead-letter consumer), through the same lease, fence and record as an
event, and emit job.queue.cleaned.{id}. A job the service knows to be live is
refused unless --force.`

const flushAbout = `Flush a job's leftover queue now, as a restart request would, and emit
job.queue.flushed.{id}. A job the service knows to be live is refused unless
--force.`

func runClean(ctx context.Context, args []string, cio cmdIO) error {
	return runRemove(ctx, args, cio, "clean", "JOB...", cleanAbout, handlers.AnnounceCleaned)
}

func runFlush(ctx context.Context, args []string, cio cmdIO) error {
	return runRemove(ctx, args, cio, "flush", "JOB", flushAbout, handlers.AnnounceFlushed)
}

func runRemove(ctx context.Context, args []string, cio cmdIO, name, argsText, about string, announce handlers.Announce) error {
	cfg := opsDefaults()
	f := opsFlags(name, argsText, about, &cfg)
	f.group(strings.ToUpper(name[:1]) + name[1:])
	var force bool
	f.Bool(&force, "force", envPrefix+"FORCE", "act even on a job the service knows to be live")
	if err := parseFlags(f, args, cio); err != nil {
		return err
	}
	ids, err := parseJobArgs(f.positional, name == "flush")
	if err != nil {
		return err
	}
	svc, _, _, done, err := openOps(ctx, cfg, cio, false)
	if err != nil {
		return err
	}
	defer done()

	var failed []error
	for _, id := range ids {
		if err := svc.removeNow(ctx, id, force, announce, cio.stdout); err != nil {
			failed = append(failed, fmt.Errorf("job %d: %w", id, err))
		}
	}
	return errors.Join(failed...)
}

func parseJobArgs(args []string, single bool) ([]queue.JobID, error) {
	if len(args) == 0 || (single && len(args) > 1) {
		return nil, fmt.Errorf("%w: give %s job id", ErrUsage, map[bool]string{true: "exactly one", false: "at least one"}[single])
	}
	var ids []queue.JobID
	for _, a := range args {
		id, err := queue.ParseJobID(a)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUsage, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// removeNow is an operator's clean or flush of one job.
func (s *service) removeNow(ctx context.Context, id queue.JobID, force bool, announce handlers.Announce, w io.Writer) error {
	rec, rev, err := s.store.Get(ctx, id)
	if err != nil {
		return err
	}
	state := handlers.JobStateOf(rec, rev != 0)
	if state == handlers.JobStateLive && !force {
		return fmt.Errorf("the service knows this job as live (last event %s %s); if it really is over, use --force", rec.Status,
			rec.Time.UTC().Format(time.RFC3339))
	}
	// Everything that exists now, in the server's clock.
	serverNow, err := s.store.ServerNow(ctx)
	if err != nil {
		return err
	}
	fence := queue.Fence{CreatedBefore: serverNow, Cut: "this command ran"}
	if state == handlers.JobStateTerminal && rec.Attempt != nil && !force {
		fence.AttemptKnown, fence.MaxAttempt = true, *rec.Attempt
	}
	out, err := s.handler.Sweep(ctx, handlers.SweepRequest{ID: id, Judged: rec, JudgedRev: rev, Fence: fence,
		Trigger: handlers.TriggerOperator, Announce: announce})
	var notReady *handlers.NotReadyError
	for errors.As(err, &notReady) {
		fmt.Fprintf(w, "job %d: waiting %s: %s\n", id, notReady.RetryAfter.Round(time.Millisecond), notReady.Reason)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(notReady.RetryAfter):
		}
		out, err = s.handler.Sweep(ctx, handlers.SweepRequest{ID: id, Judged: rec, JudgedRev: rev, Fence: fence,
			Trigger: handlers.TriggerOperator, Announce: announce})
	}
	if errors.Is(err, handlers.ErrRecordChanged) {
		return fmt.Errorf("an event for this job arrived meanwhile; look again (queue-janitor ls) and retry")
	}
	if err != nil {
		return err
	}
	r := out.Removal
	switch {
	case r == nil || (!r.Removed() && len(r.Kept) == 0):
		fmt.Fprintf(w, "job %d: nothing to remove\n", id)
	default:
		fmt.Fprintf(w, "job %d: deleted %s; %s discarded\n", id, orNone(r.Deleted), count(r.MessagesDiscarded, "message"))
		for _, k := range r.Kept {
			fmt.Fprintf(w, "job %d: kept %s\n", id, k)
		}
	}
	return nil
}

func orNone(list []string) string {
	if len(list) == 0 {
		return "nothing"
	}
	return strings.Join(list, ", ")
}

const emitAbout = `Publish a well-formed job-status CloudEvent into the event stream, as the
backend would: for operators, and for testing a deployment end to end.

--status must be a terminal status (--terminal-statuses), restart_requested,
or one of the backend's other states: created, pending, started, success,
failure, retry, canceling, revoked, received, unknown. --allow-any-status
publishes another one anyway (the service records it as a live status).`

// backendStates are the job backend's states, as status tokens.
var backendStates = []events.Status{
	events.StatusCreated, events.StatusPending, events.StatusStarted, events.StatusSuccess, events.StatusFailure,
	events.StatusRetry, events.StatusCanceling, events.StatusRevoked, events.StatusReceived, events.StatusUnknown,
}

func runEmit(ctx context.Context, args []string, cio cmdIO) error {
	cfg := opsDefaults()
	f := newFlagSet("emit", "", emitAbout)
	connFlags(f, &cfg)
	f.String(&cfg.Intake.Subject, "event-subject", envPrefix+"EVENT_SUBJECT", "subjects of job-status events; * is the status")
	f.String(&cfg.TerminalStatuses, "terminal-statuses", envPrefix+"TERMINAL_STATUSES", "statuses the service cleans up on, comma-separated (as serve's)")
	f.group("Event")
	var job, status, reason, actor, dispatch, at string
	attempt := -1
	var binary, anyStatus bool
	f.String(&job, "job", envPrefix+"EMIT_JOB", "job id (required)")
	f.String(&status, "status", envPrefix+"EMIT_STATUS", "status, e.g. revoked, failure, cancelled, restart_requested (required)")
	f.Bool(&anyStatus, "allow-any-status", envPrefix+"EMIT_ALLOW_ANY_STATUS", "publish a status that is neither terminal, restart_requested nor a backend state")
	f.Int(&attempt, "attempt", envPrefix+"EMIT_ATTEMPT", "run number (-1: not sent)")
	f.String(&reason, "reason", envPrefix+"EMIT_REASON", "reason of the transition")
	f.String(&actor, "actor", envPrefix+"EMIT_ACTOR", "who caused it")
	f.String(&dispatch, "dispatch-mode", envPrefix+"EMIT_DISPATCH_MODE", "the job's dispatch mode, e.g. async_api")
	f.String(&at, "time", envPrefix+"EMIT_TIME", "transition time, RFC 3339 (empty: now)")
	f.Bool(&binary, "binary", envPrefix+"EMIT_BINARY", "binary content mode (ce- headers) instead of structured")
	if err := parseFlags(f, args, cio); err != nil {
		return err
	}
	if job == "" {
		return fmt.Errorf("%w: --job is required", ErrUsage)
	}
	id, err := queue.ParseJobID(job)
	if err != nil {
		return fmt.Errorf("%w: --job: %w", ErrUsage, err)
	}
	st, err := emitStatus(status, cfg, anyStatus)
	if err != nil {
		return err
	}
	ev := events.StatusEvent{JobID: id, Status: st, Reason: reason, Actor: actor,
		DispatchMode: dispatch, Binary: binary, Source: "queue-janitor/emit"}
	if attempt >= 0 {
		ev.Attempt = events.Attempt(int64(attempt))
	}
	if at != "" {
		if ev.Time, err = time.Parse(time.RFC3339Nano, at); err != nil {
			return fmt.Errorf("%w: --time %q: want RFC 3339, e.g. 2026-11-28T12:00:00Z", ErrUsage, at)
		}
	}
	if err := cfg.NATS.Validate(false); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if err := cfg.Intake.Validate(); err != nil {
		return fmt.Errorf("%w: event intake: %w", ErrUsage, err)
	}
	nc, err := connect(ctx, cfg.NATS, "queue-janitor emit", zerolog.Nop())
	if err != nil {
		return err
	}
	defer nc.Close()
	msg, err := ev.Msg(ctx, cfg.Intake.SubjectPrefix())
	if err != nil {
		return err
	}
	js, err := jetStreamFor(nc, cfg)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.NATS.ConnectTimeout)
	defer cancel()
	ack, err := js.PublishMsg(pctx, msg)
	if errors.Is(err, jetstream.ErrNoStreamResponse) {
		return fmt.Errorf("publish %s: %w: is the event stream there? queue-janitor serve creates %s (subjects %s) when it starts",
			msg.Subject, err, cfg.Intake.Stream, cfg.Intake.Subject)
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w", msg.Subject, err)
	}
	fmt.Fprintf(cio.stdout, "published %s for job %d (stream %s, sequence %d)\n", msg.Subject, id, ack.Stream, ack.Sequence)
	return nil
}

// emitStatus checks --status: a terminal status, restart_requested or a
// backend state, unless anyStatus; in any case a single subject token.
func emitStatus(status string, cfg Config, anyStatus bool) (events.Status, error) {
	if strings.TrimSpace(status) == "" {
		return "", fmt.Errorf("%w: --status is required", ErrUsage)
	}
	st := events.ParseStatus(status)
	terminal := cfg.Terminal()
	known := append(append([]events.Status{}, terminal...), events.StatusRestartRequested)
	var others []string
	for _, s := range backendStates {
		if !slices.Contains(terminal, s) {
			others = append(others, string(s))
		}
	}
	for _, s := range others {
		known = append(known, events.Status(s))
	}
	if slices.Contains(known, st) {
		return st, nil
	}
	names := make([]string, len(known))
	for i, s := range known {
		names[i] = string(s)
	}
	validToken := st != "" && !strings.ContainsAny(string(st), " \t\r\n.*>")
	switch {
	case anyStatus && validToken:
		return st, nil
	case anyStatus:
		return "", fmt.Errorf("%w: --status %q cannot be a subject token (no spaces, dots or wildcards)%s", ErrUsage, status, didYouMean(string(st), names))
	}
	termNames := make([]string, len(terminal))
	for i, s := range terminal {
		termNames[i] = string(s)
	}
	return "", fmt.Errorf("%w: --status %q is not a known status%s\nwant a terminal status (%s), restart_requested, or one of the backend's other states (%s); --allow-any-status publishes another one anyway",
		ErrUsage, status, didYouMean(string(st), names), strings.Join(termNames, ", "), strings.Join(others, ", "))
}
