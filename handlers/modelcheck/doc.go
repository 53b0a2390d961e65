// Package modelcheck checks the per-job protocol exhaustively for small
// configurations: every interleaving, up to stated bounds, of the job
// backend, the event stream, two replicas, the reconciler and the rebuild
// loop, with crashes, lost, held and delayed requests, the bucket's loss,
// lease expiry and renewal as steps. The steps run the real decision code:
// each replica is a [handlers.Handler] (with its gate and its
// [handlers.Rebuilder]) over a real [queue.Janitor], whose JetStream calls,
// record reads and writes, the bucket's incarnation checks, the rebuild
// marker, the event stream's replay and the answers go to an in-memory
// server that the checker controls, one request per step.
//
// The safety property is checked at every state: a resource of run N of
// job 7 is deleted or purged only after a terminal event of run N (or
// later) or a restart request published after the resource was created;
// the shared advisories stream and job 8's queue are never deleted; a
// flushed answer never lets the backend publish while an earlier run's
// tasks or dead-letter consumer are still there. Liveness is checked at the
// end of every explored history, after a fair completion without faults: a
// job whose last event is terminal has no stream and no dead-letter
// consumer left, and the backend's restart request is answered (and, where
// the backend sends attempts, not answered stale unless a later request
// superseded it).
//
// The bucket can be lost (Config.MaxLosses): every record, lease and the
// rebuild marker vanish, the self-healing store carries on with a new
// bucket incarnation created at that instant whose revisions go on above
// the old ones (first_seq). Requests of one replica share its connection
// and leave it in the order sent: a request held in the client's buffer
// holds back the later ones until it leaves or the connection is closed.
// The exploration is depth first, or by iterative deepening on choice
// points (Config.DeepenFrom), and says how far it is complete. Script (and
// -modelcheck.script) writes a history down as step descriptions instead of
// choice numbers.
//
// Explore must run inside a testing/synctest bubble, whose Wait tells when
// every goroutine of the model waits for the scheduler.
package modelcheck
