package cli

import (
	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/telemetry"
)

// retriedOperations are the JetStream calls queue retries (the op names of
// queue's retry.do calls), the label values of queue_janitor_retries_total.
var retriedOperations = []string{
	"jetstream.stream_info", "jetstream.consumer_info", "jetstream.delete_consumer", "jetstream.delete_stream",
	"kv.open", "kv.bind", "kv.get", "kv.update", "kv.incarnation",
}

// knownSeries are the counter series serve creates at zero on start, so
// that the first scrape shows what the dashboard (deploy/grafana/) and an
// absent() alert need: the outcomes of the events that act on a queue (a
// terminal status and restart_requested), every dead-letter reason, the
// retried operations, both discard actions and the reconciler's removals.
// Statuses that only update a record appear with their first event.
func knownSeries(cfg Config) telemetry.Series {
	results := []string{events.OutcomeRemoved, events.OutcomeNothing, events.OutcomeKeptLaterRun,
		events.OutcomeAlreadyDone, "retry"}
	var s telemetry.Series
	add := func(status events.Status, decision events.Decision) {
		for _, r := range results {
			s.Events = append(s.Events, telemetry.EventSeries{Status: string(status), Decision: string(decision), Result: r})
		}
		s.Events = append(s.Events,
			telemetry.EventSeries{Status: string(status), Decision: string(events.DecisionStale), Result: "skipped"},
			telemetry.EventSeries{Status: string(status), Decision: string(events.DecisionIgnore), Result: "no_queue"})
	}
	for _, status := range cfg.Terminal() {
		add(status, events.DecisionCleanup)
	}
	add(events.StatusRestartRequested, events.DecisionFlush)
	for _, r := range []events.Reason{events.ReasonOversized, events.ReasonNotCloudEvent, events.ReasonMalformed,
		events.ReasonSpecVersion, events.ReasonMissingAttribute, events.ReasonBadType, events.ReasonBadSubject,
		events.ReasonBadJobID, events.ReasonJobIDMismatch, events.ReasonStatusMismatch, events.ReasonMissingTime,
		events.ReasonBadData, events.ReasonFutureTime, events.ReasonRetriesExhausted, events.ReasonRejected} {
		s.DeadLetterReasons = append(s.DeadLetterReasons, string(r))
	}
	s.Operations = retriedOperations
	s.DiscardActions = []string{string(events.DecisionCleanup), string(events.DecisionFlush)}
	s.Verdicts = []string{string(handlers.VerdictClean), string(handlers.VerdictOrphan)}
	return s
}
