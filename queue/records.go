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
const RecordVersion = 1

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
	// Time is the newest event's time (its transition time).
	Time time.Time `json:"time"`
	// EventID is the newest event's CloudEvents id.
	EventID string `json:"event_id"`
	// Status is the newest event's status, lower case.
	Status string `json:"status"`
	// State is the job's state as far as the service knows.
	State State `json:"state"`
	// Done says the effect of EventID has finished.
	Done bool `json:"done"`
	// CleanedAt is when the job's queue was last cleaned or flushed.
	CleanedAt time.Time `json:"cleaned_at,omitzero"`
	// Lease, while set and unexpired, gives its owner the sole right to act
	// on the job's queue.
	Lease *Lease `json:"lease,omitempty"`
}

// Lease is a replica's time-bounded claim on a job's queue.
type Lease struct {
	Owner string    `json:"owner"`
	Until time.Time `json:"until"`
}

// HeldBy reports whether the lease is held by someone other than owner at now.
func (r Record) HeldBy(owner string, now time.Time) bool {
	return r.Lease != nil && r.Lease.Owner != owner && now.Before(r.Lease.Until)
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
func (s *Store) create(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := s.js.CreateKeyValue(ctx, s.cfg.keyValueConfig())
	if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		kv, err = s.js.KeyValue(ctx, s.cfg.Bucket)
	}
	return kv, err
}

// keyValueConfig is the bucket as the service creates it, at start and when
// it recreates a deleted one.
func (c StoreConfig) keyValueConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      c.Bucket,
		Description: "queue-janitor: per-job records (newest event, state, lease)",
		History:     1,
		TTL:         c.TTL,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
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
// the zero Record and revision 0.
func (s *Store) Get(ctx context.Context, id JobID) (Record, uint64, error) {
	var rec Record
	var rev uint64
	err := s.GetJSON(ctx, JobKey(id), &rec, &rev)
	return rec, rev, err
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
	attrs := []attribute.KeyValue{attribute.String("kv.bucket", s.cfg.Bucket), attribute.String("kv.key", key)}
	return s.retry.do(ctx, "kv.get", attrs, func(ctx context.Context) error {
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
		*rev = e.Revision()
		return nil
	})
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
