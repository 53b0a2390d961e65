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
	// effect that is not recorded.
	MutAnswerBeforeRecord
	// MutReconnectBuffer lets a request that timed out stay in a reconnect
	// buffer (the abort does not discard it) and reach the server later, at
	// any step, even after its claim ended or its replica crashed.
	MutReconnectBuffer
)

var mutationNames = map[Mutation]string{
	MutNone:                  "none",
	MutAuthorityNeverExpires: "authority-never-expires",
	MutFenceIgnoresCreation:  "fence-ignores-creation",
	MutLeaseByHolderClock:    "lease-by-holder-clock",
	MutAnswerBeforeRecord:    "answer-before-record",
	MutReconnectBuffer:       "reconnect-buffer",
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
