package modelcheck

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/queue"
)

// Mutation weakens one guard, inside the model only, to show that the
// checker finds what the guard prevents. The production code is never
// changed.
type Mutation int

// The mutations.
const (
	// MutNone checks the code as it is.
	MutNone Mutation = iota
	// MutAuthorityNeverExpires gives each janitor a clock that never
	// reaches a claim's deadline: requests go out after the claim ended.
	MutAuthorityNeverExpires
	// MutFenceIgnoresCreation reports every stream and consumer as created
	// at the epoch and unstamped, so the fence cannot tell runs apart.
	MutFenceIgnoresCreation
	// MutLeaseByHolderClock hides the record revision's server time, so
	// leases are judged by the holder's own clock (its Until), as before
	// the rewrite.
	MutLeaseByHolderClock
	// MutAnswerBeforeRecord answers as soon as the effect's record write is
	// sent, before it is applied: a crash in between leaves an answer for an
	// effect that is not recorded. (A terminal job's cleanup is answered so
	// in the product; the mutation does it for a restart's flush too.)
	MutAnswerBeforeRecord
	// MutReconnectBuffer lets a request held in the client's buffer survive
	// the janitor's abort and its replica's crash (a reconnect buffer): it
	// may reach the server at any later step, even after its claim ended.
	MutReconnectBuffer
	// MutRetryIgnoresCreation disables the retried delete's comparison of
	// creation times (queue.Janitor.deleteOnce: a retry deletes only the
	// resource the fence judged): a task's later lookups of a resource report
	// the creation time its first lookup saw, so a resource recreated since
	// looks like the one judged.
	MutRetryIgnoresCreation
	// MutNoCheckAfterPurge disables the second authority check of a flush,
	// between its purge and its delete (queue.Janitor.deleteStream): the
	// check that follows a purge's reply sees no deadline.
	MutNoCheckAfterPurge
	// MutQuarantineOff turns the quarantine of a new bucket off
	// (handlers.Config.Quarantine 0, as --trust-new-bucket does): a claim
	// may act in a bucket created a moment ago, while a claim held in the
	// deleted one still acts.
	MutQuarantineOff
	// MutRebuildOff configures no Rebuilder: a new bucket's records are not
	// rebuilt from the event stream, and claims do not wait for them.
	MutRebuildOff
	// MutRestartDoneIgnored hands the decision every record as version 2
	// (handlers.restartDone then ignores restart_done: a restart request
	// counts as flushed once a later status of its run is recorded).
	MutRestartDoneIgnored
	// MutRevisionsRestart recreates a lost bucket with its revisions
	// starting again at 1 (the client library's default stream, without
	// first_seq): a compare-and-set of a claim held in the old bucket may
	// land on a record of the new one.
	MutRevisionsRestart
)

var mutationNames = map[Mutation]string{
	MutNone:                  "none",
	MutAuthorityNeverExpires: "authority-never-expires",
	MutFenceIgnoresCreation:  "fence-ignores-creation",
	MutLeaseByHolderClock:    "lease-by-holder-clock",
	MutAnswerBeforeRecord:    "answer-before-record",
	MutReconnectBuffer:       "reconnect-buffer",
	MutRetryIgnoresCreation:  "retry-ignores-creation",
	MutNoCheckAfterPurge:     "no-check-after-purge",
	MutQuarantineOff:         "quarantine-off",
	MutRebuildOff:            "rebuild-off",
	MutRestartDoneIgnored:    "restart-done-ignored",
	MutRevisionsRestart:      "revisions-restart",
}

func (m Mutation) String() string { return mutationNames[m] }

// ancientServer reports every resource as created at the epoch, without
// its attempt stamp.
type ancientServer struct{ server }

func (s ancientServer) StreamInfo(ctx context.Context, stream string) (*jetstream.StreamInfo, error) {
	info, err := s.server.StreamInfo(ctx, stream)
	if info != nil {
		c := *info
		c.Created, c.Config.Metadata = time.Unix(0, 0), nil
		info = &c
	}
	return info, err
}

func (s ancientServer) ConsumerInfo(ctx context.Context, stream, consumer string) (*jetstream.ConsumerInfo, error) {
	info, err := s.server.ConsumerInfo(ctx, stream, consumer)
	if info != nil {
		c := *info
		c.Created, c.Config.Metadata = time.Unix(0, 0), nil
		info = &c
	}
	return info, err
}

// holderClockRecords hides the revision's server time: a lease is then
// judged by the Until its holder computed from its own clock.
type holderClockRecords struct{ records }

func (r holderClockRecords) Get(ctx context.Context, id queue.JobID) (queue.Record, uint64, error) {
	rec, rev, err := r.records.Get(ctx, id)
	rec.At = time.Time{}
	return rec, rev, err
}

// version2Records (MutRestartDoneIgnored) reads every record as version 2:
// the only use of the version is handlers.restartDone, which then judges a
// restart's flush done by the newest event's state instead of the record's
// restart_done.
type version2Records struct{ records }

func (r version2Records) Get(ctx context.Context, id queue.JobID) (queue.Record, uint64, error) {
	rec, rev, err := r.records.Get(ctx, id)
	if rev != 0 {
		rec.V = 2
	}
	return rec, rev, err
}

// sameCreationServer (MutRetryIgnoresCreation) reports, to each of a
// task's lookups of a resource after the first, the creation time the
// first saw. Within one Remove the only repeated lookups are a retried
// delete's re-reads, so this blinds exactly the comparison of creation
// times that decides whether the retry may delete.
type sameCreationServer struct {
	server
	x *exec
	a *actor
}

func (s sameCreationServer) first(key string, created time.Time) time.Time {
	s.x.mu.Lock()
	defer s.x.mu.Unlock()
	t := s.a.task
	if t == nil {
		return created
	}
	if t.seen == nil {
		t.seen = map[string]time.Time{}
	}
	if c, ok := t.seen[key]; ok {
		return c
	}
	t.seen[key] = created
	return created
}

func (s sameCreationServer) StreamInfo(ctx context.Context, stream string) (*jetstream.StreamInfo, error) {
	info, err := s.server.StreamInfo(ctx, stream)
	if info != nil {
		c := *info
		c.Created = s.first(streamKey(stream), info.Created)
		info = &c
	}
	return info, err
}

func (s sameCreationServer) ConsumerInfo(ctx context.Context, stream, consumer string) (*jetstream.ConsumerInfo, error) {
	info, err := s.server.ConsumerInfo(ctx, stream, consumer)
	if info != nil {
		c := *info
		c.Created = s.first(consumerKey(stream, consumer), info.Created)
		info = &c
	}
	return info, err
}

// purgeMarkingServer (MutNoCheckAfterPurge) marks the task when a purge is
// answered: the authority check that follows (the delete's) is skipped by
// uncheckedAfterPurge.
type purgeMarkingServer struct {
	server
	x *exec
	a *actor
}

func (s purgeMarkingServer) PurgeStream(ctx context.Context, stream string) error {
	err := s.server.PurgeStream(ctx, stream)
	if err == nil {
		s.x.mu.Lock()
		if t := s.a.task; t != nil {
			t.skipCheck = true
		}
		s.x.mu.Unlock()
	}
	return err
}

// uncheckedAfterPurge (MutNoCheckAfterPurge) is the janitor whose Execute
// sees an authority that, once, right after a purge was answered, reports
// no deadline: the delete that follows the purge is sent unchecked, however
// late. Every other check is the claim's own.
type uncheckedAfterPurge struct {
	*queue.Janitor
	x *exec
	a *actor
}

func (q uncheckedAfterPurge) Execute(ctx context.Context, plan queue.Plan, auth queue.Authority) (queue.Removal, error) {
	if auth == nil {
		return q.Janitor.Execute(ctx, plan, nil)
	}
	return q.Janitor.Execute(ctx, plan, skippingAuthority{auth, q.x, q.a})
}

type skippingAuthority struct {
	queue.Authority
	x *exec
	a *actor
}

func (s skippingAuthority) Deadline() time.Time {
	s.x.mu.Lock()
	t := s.a.task
	skip := t != nil && t.skipCheck
	if skip {
		t.skipCheck = false
	}
	s.x.mu.Unlock()
	if skip {
		return base.Add(1000 * time.Hour)
	}
	return s.Authority.Deadline()
}
