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
// Explore must run inside a testing/synctest bubble, whose Wait tells when
// every goroutine of the model waits for the scheduler.
package modelcheck
