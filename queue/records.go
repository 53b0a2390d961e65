package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
)

// RecordVersion is the version of [Record]'s encoding written by this code.
// Version 2 added the event's server time (Stored) and per-claim lease
// tokens judged in server time; version 3 the restart request's own
// progress (RestartStored, RestartDone) and the effect in progress
// (Effect). Versions 1 and 2 are still read.
const RecordVersion = 3

// ErrConflict is returned by [Store.Put] when the key's revision changed since
// it was read: another replica updated the record. Re-read and decide again.
var ErrConflict = errors.New("record changed concurrently")

// State is what the service knows of a job's queue.
type State string

// The states a [Record] can be in.
const (
	// StateRunning: the newest event seen says a run is live.
	StateRunning State = "running"
	// StateTerminal: the newest event seen ended the job; its queue is
	// cleaned (or being cleaned, see [Record.Done]).
	StateTerminal State = "terminal"
	// StateFlushed: the newest event seen is a restart; leftovers of earlier
	// runs are flushed (or being flushed) and the new run may publish.
	StateFlushed State = "flushed"
)

// Record is the per-job state kept in the key-value bucket. It is small and
// versioned by V so that its encoding can evolve.
type Record struct {
	// V is the encoding version, [RecordVersion].
	V int `json:"v"`
	// Attempt is the newest attempt seen; nil while the backend has sent
	// none.
	Attempt *int64 `json:"attempt,omitempty"`
	// Time is the newest event's time (its transition time) as the
	// producer's clock gave it; for display only.
	Time time.Time `json:"time"`
	// Stored is when the newest event reached the event stream, in the
	// NATS server's clock. Events are ordered, and streams fenced, by it.
	// For a restart request it is the first copy's: the flush removes only
	// what was created before the request reached the server.
	Stored time.Time `json:"stored,omitzero"`
	// EventID is the newest event's CloudEvents id.
	EventID string `json:"event_id"`
	// Status is the newest event's status, lower case.
	Status string `json:"status"`
	// RestartID is the id of the last restart request acted on, kept when
	// later events move the record on, so that the same request published
	// again later is known as a repeat and never flushes the run it started.
	RestartID string `json:"restart_event_id,omitempty"`
	// RestartAttempt is that request's attempt, when it had one.
	RestartAttempt *int64 `json:"restart_attempt,omitempty"`
	// RestartStored is when that request first reached the event stream
	// (server time): its flush removes only what was created before.
	RestartStored time.Time `json:"restart_stored,omitzero"`
	// RestartDone says that request's flush has finished. Later events of
	// the run it starts (a `pending`, a `started`) move the record on
	// without marking it: a request whose flush never finished is flushed
	// again when it comes back, never answered as done.
	RestartDone bool `json:"restart_done,omitempty"`
	// State is the job's state as far as the service knows.
	State State `json:"state"`
	// Done says the effect of EventID has finished.
	Done bool `json:"done"`
	// CleanedAt is when the job's queue was last cleaned or flushed.
	CleanedAt time.Time `json:"cleaned_at,omitzero"`
	// Seen holds the ids of the last events that became the record's
	// newest, oldest first: a copy of one of them published again later is
	// not a newer event.
	Seen []string `json:"seen,omitempty"`
	// Effect is the last effect a claim set out to do on the job's queue:
	// written before its first destructive request, and again, with its
	// report, when it finished. A later attempt at the same effect (after a
	// failure, a crash or a takeover) learns from it what an earlier one
	// removed.
	Effect *Effect `json:"effect,omitempty"`
	// Lease, while set and unexpired, gives one claim the sole right to act
	// on the job's queue.
	Lease *Lease `json:"lease,omitempty"`

	// At is the server time at which this revision of the record was
	// written (the key-value entry's timestamp). [Store.Get] sets it; it is
	// not part of the stored value.
	At time.Time `json:"-"`
}

// Effect is what a claim judged removable and set out to remove, and, once
// Finished, what came of it.
type Effect struct {
	// Cause names whose effect it is: the event id, or for a sweep the
	// trigger and the claim's token.
	Cause string `json:"cause"`
	// Token is the claim that wrote it.
	Token string `json:"token"`
	// Stream is the task stream judged removable, with its server-side
	// creation time and what it held then; empty when none was.
	Stream        string    `json:"stream,omitempty"`
	StreamCreated time.Time `json:"stream_created,omitzero"`
	Messages      uint64    `json:"messages,omitempty"`
	Consumers     int       `json:"consumers,omitempty"`
	// TaskConsumer names the consumer that goes with the stream.
	TaskConsumer string `json:"task_consumer,omitempty"`
	// DeadLetter says the job's dead-letter consumer was judged removable.
	DeadLetter bool `json:"dead_letter,omitempty"`
	// Finished says the effect finished; Outcome and Report say how.
	Finished bool     `json:"finished,omitempty"`
	Outcome  string   `json:"outcome,omitempty"`
	Report   *Removal `json:"report,omitempty"`
}

// Lease is one claim's time-bounded right to act on a job's queue.
//
// Every claim has its own Token, so two claims never hold a job at once,
// whether they come from two replicas or from the event intake and the
// reconciler of one process. Expiry is judged in the NATS server's clock:
// the lease runs for TTL from the server timestamp of the record revision
// that wrote it ([Record.At]), so a replica whose clock runs ahead cannot
// take over a lease that is still running.
type Lease struct {
	// Owner names the replica, for logs and `ls`.
	Owner string `json:"owner"`
	// Token identifies the claim.
	Token string `json:"token,omitempty"`
	// TTL is the lease's length from the revision's server time.
	TTL time.Duration `json:"ttl,omitempty"`
	// Since, when set, is the server time of the revision its holder last
	// wrote it in: a record rewritten by another writer (a newer status
	// recorded while the lease runs) carries the lease over without
	// renewing it.
	Since time.Time `json:"since,omitzero"`
	// Until is when the holder expected it to end, by its own clock; for
	// display, and for judging version 1 records that have no TTL.
	Until time.Time `json:"until"`
}

// LeaseLive reports whether the record's lease is still running at
// serverNow, a time read from the NATS server after the record was read.
func (r Record) LeaseLive(serverNow time.Time) bool {
	return r.Lease != nil && serverNow.Before(r.LeaseEnds())
}

// LeaseEnds is when a running lease ends, in server time: its TTL after the
// revision its holder last wrote.
func (r Record) LeaseEnds() time.Time {
	switch {
	case r.Lease == nil:
		return time.Time{}
	case r.Lease.TTL <= 0 || r.At.IsZero():
		return r.Lease.Until // a version 1 record
	case !r.Lease.Since.IsZero():
		return r.Lease.Since.Add(r.Lease.TTL)
	}
	return r.At.Add(r.Lease.TTL)
}

// CarryLease returns r's lease as another writer must carry it over when
// it rewrites the record: still ending when its holder's last write says.
func (r Record) CarryLease() *Lease {
	if r.Lease == nil {
		return nil
	}
	l := *r.Lease
	if l.Since.IsZero() {
		l.Since = r.At
	}
	return &l
}

// HeldBy reports whether the record holds a running lease of a claim other
// than token at serverNow.
func (r Record) HeldBy(token string, serverNow time.Time) bool {
	return r.LeaseLive(serverNow) && r.Lease.Token != token
}

// StoreConfig describes the key-value bucket of per-job records.
type StoreConfig struct {
	// Bucket is the bucket name.
	Bucket string
	// Replicas is the bucket's replication factor (1, 3 or 5 in a cluster).
	Replicas int
	// TTL, when positive, lets records of jobs not heard of for that long
	// expire.
	TTL time.Duration
}

// Store keeps per-job [Record]s in a JetStream key-value bucket. Updates are
// compare-and-set on the key's revision. It is safe for concurrent use.
//
// A Store opened with [OpenStore] heals: when a call finds the bucket gone
// (its stream KV_<bucket> deleted on the server), it recreates the bucket
// with the configuration it was opened with and retries the call once; the
// records it held are lost. A Store opened with [BindStore] never creates
// anything.
type Store struct {
	js       jetstream.JetStream
	cfg      StoreConfig
	bindOnly bool
	retry    retrier

	mu sync.RWMutex
	kv jetstream.KeyValue // nil: the bucket does not exist (BindStore only)

	healing  sync.Mutex
	problem  atomic.Pointer[string]
	observer atomic.Pointer[HealObserver]

	checkMu      sync.Mutex
	pendingCheck *incarnationCheck // the check callers arriving now wait for, not sent yet
	inFlight     int               // checks sent whose reply has not come
	lastSent     time.Time         // when the last check was sent
}

// OpenStore binds to the bucket, creating it when it does not exist.
func OpenStore(ctx context.Context, js jetstream.JetStream, cfg StoreConfig, opts ...Option) (*Store, error) {
	o := buildOptions(opts)
	s := &Store{js: js, cfg: cfg, retry: newRetrier(o.policy, o.tracer, o.observer)}
	attrs := []attribute.KeyValue{attribute.String("kv.bucket", cfg.Bucket)}
	err := s.retry.do(ctx, "kv.open", attrs, func(ctx context.Context) error {
		kv, err := js.KeyValue(ctx, cfg.Bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			kv, err = s.create(ctx)
		}
		s.setHandle(kv)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open key-value bucket %q: %w", cfg.Bucket, err)
	}
	return s, nil
}

// BindStore binds to the bucket without ever creating it, for commands that
// must change nothing. When the bucket does not exist it returns a Store
// that holds no records ([Store.Missing] is true): Get finds none and Put
// fails with [ErrNoBucket].
func BindStore(ctx context.Context, js jetstream.JetStream, cfg StoreConfig, opts ...Option) (*Store, error) {
	o := buildOptions(opts)
	s := &Store{js: js, cfg: cfg, bindOnly: true, retry: newRetrier(o.policy, o.tracer, o.observer)}
	attrs := []attribute.KeyValue{attribute.String("kv.bucket", cfg.Bucket)}
	err := s.retry.do(ctx, "kv.bind", attrs, func(ctx context.Context) error {
		kv, err := js.KeyValue(ctx, cfg.Bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil
		}
		s.setHandle(kv)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("bind key-value bucket %q: %w", cfg.Bucket, err)
	}
	return s, nil
}

// create creates the bucket with the Store's configuration, or binds to it
// when another process created it first.
//
// The bucket is created as its stream, with the key-value configuration the
// client library would give it, and one thing more: its sequence numbers
// (the records' revisions) start at the creation instant in nanoseconds. A
// bucket created again after a deletion so never hands out a revision that
// a claim of the deleted bucket may still hold, and a compare-and-set write
// of such a claim (a renewal, a release) always fails instead of landing by
// coincidence on a record of the new bucket.
func (s *Store) create(ctx context.Context) (jetstream.KeyValue, error) {
	_, err := s.js.CreateStream(ctx, s.cfg.streamConfig(time.Now()))
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return nil, err
	}
	return s.js.KeyValue(ctx, s.cfg.Bucket)
}

// streamConfig is the bucket's stream as the service creates it at start
// and when it recreates a deleted one: the client library's key-value
// configuration (history 1, file storage, rollups allowed, deletes denied,
// direct gets) with sequences starting at now, in nanoseconds.
func (c StoreConfig) streamConfig(now time.Time) jetstream.StreamConfig {
	dup := 2 * time.Minute
	if c.TTL > 0 && c.TTL < dup {
		dup = c.TTL
	}
	replicas := c.Replicas
	if replicas == 0 {
		replicas = 1
	}
	return jetstream.StreamConfig{
		Name:              "KV_" + c.Bucket,
		Description:       "queue-janitor: per-job records (newest event, state, lease)",
		Subjects:          []string{"$KV." + c.Bucket + ".>"},
		MaxMsgsPerSubject: 1,
		MaxBytes:          -1,
		MaxAge:            c.TTL,
		MaxMsgSize:        -1,
		Storage:           jetstream.FileStorage,
		Replicas:          replicas,
		AllowRollup:       true,
		DenyDelete:        true,
		Duplicates:        dup,
		MaxMsgs:           -1,
		MaxConsumers:      -1,
		AllowDirect:       true,
		Discard:           jetstream.DiscardNew,
		FirstSeq:          uint64(max(now.UnixNano(), 1)), //nolint:gosec // positive
	}
}

func (s *Store) handle() jetstream.KeyValue {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.kv
}

func (s *Store) setHandle(kv jetstream.KeyValue) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kv = kv
}

// Bucket returns the bucket's name.
func (s *Store) Bucket() string { return s.cfg.Bucket }

// Missing reports whether the Store was bound with [BindStore] to a bucket
// that does not exist: no record has been written yet.
func (s *Store) Missing() bool { return s.handle() == nil }

// JobKey is the record key of a job.
func JobKey(id JobID) string { return "job." + id.String() }

// Get returns the job's record and its revision; a job without a record gives
// the zero Record and revision 0. The record's At is the revision's server
// time.
func (s *Store) Get(ctx context.Context, id JobID) (Record, uint64, error) {
	var rec Record
	var rev uint64
	at, err := s.getJSON(ctx, JobKey(id), &rec, &rev)
	rec.At = at
	return rec, rev, err
}

// ServerNow returns the NATS server's current time, read by a request sent
// after the call began (see [Store.Incarnation]). Leases are judged against
// it.
func (s *Store) ServerNow(ctx context.Context) (time.Time, error) {
	inc, err := s.Incarnation(ctx)
	return inc.Now, err
}

// Put writes the job's record if the key is still at revision rev (0: if it
// has no record). It returns the new revision, or [ErrConflict].
func (s *Store) Put(ctx context.Context, id JobID, rec Record, rev uint64) (uint64, error) {
	rec.V = RecordVersion
	return s.PutJSON(ctx, JobKey(id), rec, rev)
}

// GetJSON reads key into v and its revision into rev; a missing key leaves v
// alone and sets rev to 0.
func (s *Store) GetJSON(ctx context.Context, key string, v any, rev *uint64) error {
	_, err := s.getJSON(ctx, key, v, rev)
	return err
}

// getJSON is GetJSON that also returns the revision's server time.
func (s *Store) getJSON(ctx context.Context, key string, v any, rev *uint64) (time.Time, error) {
	var at time.Time
	attrs := []attribute.KeyValue{attribute.String("kv.bucket", s.cfg.Bucket), attribute.String("kv.key", key)}
	err := s.retry.do(ctx, "kv.get", attrs, func(ctx context.Context) error {
		if s.Missing() {
			*rev = 0
			return nil
		}
		e, err := withHeal(ctx, s, func(kv jetstream.KeyValue) (jetstream.KeyValueEntry, error) { return kv.Get(ctx, key) })
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			*rev = 0
			return nil
		}
		if err != nil {
			return err
		}
		if err := json.Unmarshal(e.Value(), v); err != nil {
			return fmt.Errorf("decode record %q at revision %d: %w", key, e.Revision(), err)
		}
		*rev, at = e.Revision(), e.Created()
		return nil
	})
	return at, err
}

// PutJSON writes v at key if the key is still at revision rev (0: absent).
// It returns the new revision, or [ErrConflict].
func (s *Store) PutJSON(ctx context.Context, key string, v any, rev uint64) (uint64, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("encode record %q: %w", key, err)
	}
	attrs := []attribute.KeyValue{attribute.String("kv.bucket", s.cfg.Bucket), attribute.String("kv.key", key),
		attribute.String("kv.expected_revision", strconv.FormatUint(rev, 10))}
	var next uint64
	err = s.retry.do(ctx, "kv.update", attrs, func(ctx context.Context) error {
		if s.Missing() {
			return ErrNoBucket
		}
		var err error
		next, err = withHeal(ctx, s, func(kv jetstream.KeyValue) (uint64, error) {
			if rev == 0 {
				return kv.Create(ctx, key, body)
			}
			return kv.Update(ctx, key, body, rev)
		})
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return ErrConflict
		}
		return err
	})
	if err != nil {
		if errors.Is(err, ErrConflict) {
			return 0, ErrConflict
		}
		return 0, fmt.Errorf("write record %q: %w", key, err)
	}
	return next, nil
}

// seenMax is how many event ids a record remembers.
const seenMax = 8

// Remember returns seen with id added at the end, keeping the last few.
func Remember(seen []string, id string) []string {
	out := append(append(make([]string, 0, len(seen)+1), seen...), id)
	if len(out) > seenMax {
		out = out[len(out)-seenMax:]
	}
	return out
}
