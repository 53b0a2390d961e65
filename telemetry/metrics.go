package telemetry

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// Metrics holds the service's instruments. The Prometheus names are the
// OpenTelemetry names with dots as underscores, plus _total for counters and
// _seconds for durations; docs/OBSERVABILITY.md lists them all.
type Metrics struct {
	events            metric.Int64Counter
	actionDuration    metric.Float64Histogram
	retries           metric.Int64Counter
	deadLetters       metric.Int64Counter
	messagesDiscarded metric.Int64Counter
	eventLag          metric.Float64Histogram
	sweeps            metric.Int64Counter
	orphans           metric.Int64Counter

	mu        sync.Mutex
	inventory Inventory

	optsMu sync.Mutex
	opts   map[optKey]metric.MeasurementOption
}

// optKey names one series of one instrument: the attribute set of a
// measurement, built once and kept (building it sorts and allocates, a few
// per cent of the service's CPU in a storm when done per event).
type optKey struct {
	instrument string
	a, b, c    string
}

// maxCachedOpts bounds the cache: label values come from a small set, but
// an event's status is the producer's word.
const maxCachedOpts = 1024

// option returns the attribute set of k's series, built by build.
func (m *Metrics) option(k optKey, build func() metric.MeasurementOption) metric.MeasurementOption {
	m.optsMu.Lock()
	defer m.optsMu.Unlock()
	if o, ok := m.opts[k]; ok {
		return o
	}
	o := build()
	if m.opts == nil {
		m.opts = map[optKey]metric.MeasurementOption{}
	}
	if len(m.opts) < maxCachedOpts {
		m.opts[k] = o
	}
	return o
}

// Inventory is the triage signal: job streams present and the messages they
// hold, by what the service knows of the job ("terminal", "live",
// "unknown"). The reconciler sets it after each pass.
type Inventory struct {
	Streams  map[string]int64
	Messages map[string]int64
	// Pending counts tasks not yet done: the task consumer's pending plus
	// ack-pending, or all of a stream's messages when it has no consumer.
	Pending map[string]int64
	At      time.Time
}

// NewMetrics registers the instruments on mp. A nil mp gives no-op metrics.
func NewMetrics(mp metric.MeterProvider) (*Metrics, error) {
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	m := mp.Meter(InstrumentationName)
	x := &Metrics{}
	var err error
	must := func(e error) {
		if err == nil && e != nil {
			err = e
		}
	}
	x.events, err = m.Int64Counter("queue_janitor.events",
		metric.WithDescription("Job-status events handled, by status, decision and result."), metric.WithUnit("{event}"))
	var e error
	x.actionDuration, e = m.Float64Histogram("queue_janitor.action.duration",
		metric.WithDescription("Time from an event's receipt to its settlement, by decision and result."), metric.WithUnit("s"))
	must(e)
	x.retries, e = m.Int64Counter("queue_janitor.retries",
		metric.WithDescription("JetStream calls retried after a transient error, by operation."), metric.WithUnit("{retry}"))
	must(e)
	x.deadLetters, e = m.Int64Counter("queue_janitor.deadletters",
		metric.WithDescription("Events terminated and copied to the dead-letter subject, by reason."), metric.WithUnit("{event}"))
	must(e)
	x.messagesDiscarded, e = m.Int64Counter("queue_janitor.messages.discarded",
		metric.WithDescription("Task messages removed with their stream, by action (cleanup, flush)."), metric.WithUnit("{message}"))
	must(e)
	x.eventLag, e = m.Float64Histogram("queue_janitor.event.lag",
		metric.WithDescription("Time from the event's transition time to its handling, by status."), metric.WithUnit("s"))
	must(e)
	x.sweeps, e = m.Int64Counter("queue_janitor.reconciler.actions",
		metric.WithDescription("Reconciler verdicts on job streams, by verdict."), metric.WithUnit("{stream}"))
	must(e)
	x.orphans, e = m.Int64Counter("queue_janitor.reconciler.orphans",
		metric.WithDescription("Job streams of jobs unknown to the service found idle past the threshold."), metric.WithUnit("{stream}"))
	must(e)
	streams, e := m.Int64ObservableGauge("queue_janitor.job_streams",
		metric.WithDescription("Job task streams present at the last reconciler pass, by job_state (terminal, live, unknown)."),
		metric.WithUnit("{stream}"))
	must(e)
	msgs, e := m.Int64ObservableGauge("queue_janitor.job_messages",
		metric.WithDescription("Messages held by job task streams at the last reconciler pass, by job_state."),
		metric.WithUnit("{message}"))
	must(e)
	pending, e := m.Int64ObservableGauge("queue_janitor.job_messages.pending",
		metric.WithDescription("Tasks not yet done (consumer pending plus ack-pending) at the last reconciler pass, by job_state."),
		metric.WithUnit("{message}"))
	must(e)
	if err != nil {
		return nil, fmt.Errorf("metric instruments: %w", err)
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		x.mu.Lock()
		defer x.mu.Unlock()
		if x.inventory.At.IsZero() {
			return nil
		}
		for _, state := range []string{"terminal", "live", "unknown"} {
			attrs := metric.WithAttributes(attribute.String("job_state", state))
			o.ObserveInt64(streams, x.inventory.Streams[state], attrs)
			o.ObserveInt64(msgs, x.inventory.Messages[state], attrs)
			o.ObserveInt64(pending, x.inventory.Pending[state], attrs)
		}
		return nil
	}, streams, msgs, pending)
	if err != nil {
		return nil, fmt.Errorf("metric callback: %w", err)
	}
	return x, nil
}

// EventHandled counts one settled event and its duration and lag.
func (m *Metrics) EventHandled(ctx context.Context, status, decision, result string, took, lag time.Duration) {
	m.events.Add(ctx, 1, m.option(optKey{"events", status, decision, result}, func() metric.MeasurementOption {
		return metric.WithAttributes(attribute.String("status", status), attribute.String("decision", decision),
			attribute.String("result", result))
	}))
	m.actionDuration.Record(ctx, took.Seconds(), m.option(optKey{"action", decision, result, ""}, func() metric.MeasurementOption {
		return metric.WithAttributes(attribute.String("decision", decision), attribute.String("result", result))
	}))
	if lag > 0 {
		m.eventLag.Record(ctx, lag.Seconds(), m.option(optKey{"lag", status, "", ""}, func() metric.MeasurementOption {
			return metric.WithAttributes(attribute.String("status", status))
		}))
	}
}

// Retried counts one retried JetStream call.
func (m *Metrics) Retried(ctx context.Context, operation string) {
	m.retries.Add(ctx, 1, metric.WithAttributes(attribute.String("operation", operation)))
}

// DeadLettered counts one dead-lettered event.
func (m *Metrics) DeadLettered(ctx context.Context, reason string) {
	m.deadLetters.Add(ctx, 1, metric.WithAttributes(attribute.String("reason", reason)))
}

// Discarded counts task messages removed by action ("cleanup" or "flush").
func (m *Metrics) Discarded(ctx context.Context, action string, n uint64) {
	if n > 0 {
		m.messagesDiscarded.Add(ctx, int64(min(n, math.MaxInt64)), m.option(optKey{"discarded", action, "", ""}, func() metric.MeasurementOption {
			return metric.WithAttributes(attribute.String("action", action))
		}))
	}
}

// Swept counts one reconciler verdict.
func (m *Metrics) Swept(ctx context.Context, verdict string) {
	m.sweeps.Add(ctx, 1, metric.WithAttributes(attribute.String("verdict", verdict)))
}

// Orphan counts one orphan found.
func (m *Metrics) Orphan(ctx context.Context) { m.orphans.Add(ctx, 1) }

// Series names the label values the counters take, so that [Metrics.Prime]
// can create each series at zero before anything happens.
type Series struct {
	// Events are the status, decision and result triples of
	// queue_janitor_events_total.
	Events []EventSeries
	// Operations are the JetStream calls that may be retried.
	Operations []string
	// DeadLetterReasons are the reasons an event is dead-lettered.
	DeadLetterReasons []string
	// DiscardActions are the actions that discard task messages.
	DiscardActions []string
	// Verdicts are the reconciler verdicts it acts on.
	Verdicts []string
}

// EventSeries is one label set of queue_janitor_events_total.
type EventSeries struct {
	Status, Decision, Result string
}

// Prime creates every counter series of s at zero, so that the first scrape
// shows them: a dashboard's rate() then counts the first event, and an
// absent() alert means the service is not exporting at all. The histograms
// are left alone: a series with no observation would only add NaN
// quantiles, and the SDK cannot create one without recording a value.
func (m *Metrics) Prime(ctx context.Context, s Series) {
	for _, e := range s.Events {
		m.events.Add(ctx, 0, metric.WithAttributes(attribute.String("status", e.Status),
			attribute.String("decision", e.Decision), attribute.String("result", e.Result)))
	}
	for _, op := range s.Operations {
		m.retries.Add(ctx, 0, metric.WithAttributes(attribute.String("operation", op)))
	}
	for _, r := range s.DeadLetterReasons {
		m.deadLetters.Add(ctx, 0, metric.WithAttributes(attribute.String("reason", r)))
	}
	for _, a := range s.DiscardActions {
		m.messagesDiscarded.Add(ctx, 0, metric.WithAttributes(attribute.String("action", a)))
	}
	for _, v := range s.Verdicts {
		m.sweeps.Add(ctx, 0, metric.WithAttributes(attribute.String("verdict", v)))
	}
	m.orphans.Add(ctx, 0)
}

// SetInventory publishes the reconciler's latest inventory.
func (m *Metrics) SetInventory(inv Inventory) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.inventory = inv
}
