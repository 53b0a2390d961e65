// Package modelcheck checks the per-job protocol exhaustively for small
// configurations: every interleaving, up to stated bounds, of the job
// backend, the event stream, two replicas and the reconciler, with crashes,
// lost and delayed requests, lease expiry and renewal as steps. The steps
// run the real decision code: each replica is a [handlers.Handler] over a
// real [queue.Janitor], whose JetStream calls, record reads and writes and
// answers go to an in-memory server that the checker controls, one request
// per step.
//
// The safety property is checked at every state: a resource of run N of
// job 7 is deleted only after a terminal event of run N (or later) or a
// restart request published after the resource was created; the shared
// advisories stream and job 8's queue are never deleted; a flushed answer
// is never sent while an earlier run's queue is still there. Liveness is
// checked at the end of every explored history, after a fair completion
// without faults: a job whose last event is terminal has no stream and no
// dead-letter consumer left, and the backend's restart request is
// answered.
//
// Issue #23 added faults and properties, in scenarios of their own
// (-modelcheck.issue23): the bucket lost (every record and lease gone, the
// self-healing store going on with an empty bucket whose revisions start
// again at 1) or one record expired; the backend's pending status of the
// new attempt published before the answer; a replica pausing after the
// reply to one of an effect's requests, before its next authority check,
// while time passes. A purge empties the stream and is judged like a
// delete; a flushed answer must not leave an earlier run's tasks or
// dead-letter consumer behind (an emptied stream may stay); a restart
// request published again after its run began never permits deleting that
// run; and, in those scenarios, a restart request answered stale without a
// later request superseding it breaks liveness (the backend never starts
// the run). Script (and -modelcheck.script) writes a history down as step
// descriptions instead of choice numbers.
//
// Explore must run inside a testing/synctest bubble, whose Wait tells when
// every goroutine of the model waits for the scheduler.
package modelcheck
