package queue

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// healRecorder counts a Store's bucket recreations.
type healRecorder struct {
	mu   sync.Mutex
	errs []error
}

func (h *healRecorder) observe(_ context.Context, _ string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.errs = append(h.errs, err)
}

func (h *healRecorder) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.errs)
}

// bucketStream returns the bucket's stream configuration, or nil when the
// stream does not exist.
func bucketStream(t *testing.T, js jetstream.JetStream, bucket string) *jetstream.StreamConfig {
	t.Helper()
	s, err := js.Stream(t.Context(), "KV_"+bucket)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("stream KV_%s: %v", bucket, err)
	}
	cfg := s.CachedInfo().Config
	return &cfg
}

// TestStoreRecreatesDeletedBucket: when the bucket's stream is deleted on
// the server, whichever call comes first (a read, a create, an update, a
// readiness ping, or the periodic check with no call at all) recreates the
// bucket with the configuration it was opened with, and the call succeeds
// (an update finds the record gone: a conflict, so the caller re-reads).
func TestStoreRecreatesDeletedBucket(t *testing.T) {
	t.Parallel()
	cfg := StoreConfig{Bucket: "records", Replicas: 1, TTL: time.Hour}
	tests := []struct {
		name  string
		first func(t *testing.T, s *Store, rev uint64)
	}{
		{"get", func(t *testing.T, s *Store, _ uint64) {
			t.Helper()
			rec, rev, err := s.Get(t.Context(), 3)
			if err != nil || rev != 0 || rec.Status != "" {
				t.Fatalf("Get after the bucket was deleted = %+v, %d, %v; want no record and no error", rec, rev, err)
			}
		}},
		{"create", func(t *testing.T, s *Store, _ uint64) {
			t.Helper()
			if _, err := s.Put(t.Context(), 4, Record{Status: "revoked", State: StateTerminal}, 0); err != nil {
				t.Fatalf("Put after the bucket was deleted: %v", err)
			}
		}},
		{"update", func(t *testing.T, s *Store, rev uint64) {
			t.Helper()
			_, err := s.Put(t.Context(), 3, Record{Status: "revoked", State: StateTerminal}, rev)
			if !errors.Is(err, ErrConflict) {
				t.Fatalf("Put at the lost revision %d = %v, want ErrConflict", rev, err)
			}
		}},
		{"ping", func(t *testing.T, s *Store, _ uint64) {
			t.Helper()
			if err := s.Ping(t.Context()); err != nil {
				t.Fatalf("Ping after the bucket was deleted: %v", err)
			}
		}},
		{"watch", func(t *testing.T, s *Store, _ uint64) {
			t.Helper()
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan struct{})
			go func() { defer close(done); s.Watch(ctx, 50*time.Millisecond) }()
			defer func() { cancel(); <-done }()
			eventually(t, 10*time.Second, "the periodic check to recreate the bucket", func() bool {
				return bucketStream(t, s.js, "records") != nil
			})
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			s := openStore(t, e.js, cfg)
			var healed healRecorder
			s.SetHealObserver(healed.observe)
			rev, err := s.Put(t.Context(), 3, Record{Status: "started", State: StateRunning}, 0)
			if err != nil {
				t.Fatal(err)
			}
			before := bucketStream(t, e.js, "records")
			if err := e.js.DeleteStream(t.Context(), "KV_records"); err != nil {
				t.Fatal(err)
			}

			tc.first(t, s, rev)

			after := bucketStream(t, e.js, "records")
			if after == nil {
				t.Fatal("the bucket's stream KV_records was not recreated")
			}
			if after.Replicas != before.Replicas || after.MaxAge != before.MaxAge || after.MaxMsgsPerSubject != before.MaxMsgsPerSubject ||
				after.Storage != before.Storage || after.Description != before.Description || after.AllowDirect != before.AllowDirect {
				t.Errorf("recreated bucket stream = %+v\nwant as at start: %+v", *after, *before)
			}
			if healed.count() != 1 {
				t.Errorf("heal observer called %d times, want once", healed.count())
			}
			// And the Store works on the new bucket.
			if _, err := s.Put(t.Context(), 9, Record{Status: "started", State: StateRunning}, 0); err != nil {
				t.Fatalf("Put on the recreated bucket: %v", err)
			}
			if got, rev, err := s.Get(t.Context(), 9); err != nil || rev == 0 || got.Status != "started" {
				t.Fatalf("Get on the recreated bucket = %+v, %d, %v", got, rev, err)
			}
		})
	}
}

// TestStorePingAnswersAtOnceWhenDisconnected: with the server down, Ping
// says so without waiting for a request that cannot be answered.
func TestStorePingAnswersAtOnceWhenDisconnected(t *testing.T) {
	t.Parallel()
	e := setup(t)
	s := openStore(t, e.js, StoreConfig{Bucket: "records", Replicas: 1})
	e.srv.Stop()
	eventually(t, 10*time.Second, "the client to notice", func() bool { return e.nc.Status() != nats.CONNECTED })

	// Before, Ping waited for its context: a minute here, which Ping must
	// not reach (it answers well under a millisecond).
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	start := time.Now()
	err := s.Ping(ctx)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "NATS connection is") {
		t.Errorf("Ping with the server down = %v, want the connection's state", err)
	}
	if ctx.Err() != nil {
		t.Errorf("Ping with the server down waited for its context (%s): %v", took, err)
	}
	t.Logf("Ping with the server down answered in %s: %v", took, err)
}

// TestBindStoreCreatesNothing: a Store bound for a read-only command never
// creates the bucket, reads no records from a missing one, refuses to
// write, and does not recreate a bucket deleted under it.
func TestBindStoreCreatesNothing(t *testing.T) {
	t.Parallel()
	t.Run("missing bucket", func(t *testing.T) {
		t.Parallel()
		e := setup(t)
		s, err := BindStore(t.Context(), e.js, StoreConfig{Bucket: "records", Replicas: 3}, WithRetryPolicy(fastRetry()))
		if err != nil {
			t.Fatalf("BindStore without the bucket: %v", err)
		}
		if !s.Missing() {
			t.Error("Missing() = false for a bucket that does not exist")
		}
		rec, rev, err := s.Get(t.Context(), 3)
		if err != nil || rev != 0 || rec.Status != "" {
			t.Errorf("Get = %+v, %d, %v; want no record", rec, rev, err)
		}
		if _, err := s.Put(t.Context(), 3, Record{Status: "revoked"}, 0); !errors.Is(err, ErrNoBucket) {
			t.Errorf("Put = %v, want ErrNoBucket", err)
		}
		if err := s.Ping(t.Context()); err == nil {
			t.Error("Ping = nil for a bucket that does not exist")
		}
		if cfg := bucketStream(t, e.js, "records"); cfg != nil {
			t.Errorf("BindStore created the bucket's stream: %+v", *cfg)
		}
	})
	t.Run("existing bucket deleted", func(t *testing.T) {
		t.Parallel()
		e := setup(t)
		if _, err := openStore(t, e.js, StoreConfig{Bucket: "records", Replicas: 1}).Put(t.Context(), 3,
			Record{Status: "revoked", State: StateTerminal}, 0); err != nil {
			t.Fatal(err)
		}
		s, err := BindStore(t.Context(), e.js, StoreConfig{Bucket: "records"}, WithRetryPolicy(fastRetry()))
		if err != nil {
			t.Fatal(err)
		}
		if rec, _, err := s.Get(t.Context(), 3); err != nil || rec.Status != "revoked" || s.Missing() {
			t.Fatalf("Get on the bound bucket = %+v, %v (missing %v); want the record", rec, err, s.Missing())
		}
		if err := e.js.DeleteStream(t.Context(), "KV_records"); err != nil {
			t.Fatal(err)
		}
		_, _, _ = s.Get(t.Context(), 3)
		_ = s.Ping(t.Context())
		if cfg := bucketStream(t, e.js, "records"); cfg != nil {
			t.Errorf("a bound Store recreated the bucket: %+v", *cfg)
		}
	})
}

// TestStorePingGivesTheReasonWhileRecreating: while a call recreates the
// deleted bucket, Ping (readiness) answers at once with which bucket and
// what is being done.
func TestStorePingGivesTheReasonWhileRecreating(t *testing.T) {
	t.Parallel()
	e := setup(t)
	s := openStore(t, e.js, StoreConfig{Bucket: "records", Replicas: 1})
	if err := e.js.DeleteStream(t.Context(), "KV_records"); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { _, _, err := s.Get(t.Context(), 3); got <- err }()
	// Ping itself would recreate the bucket if it came first: ask once the
	// Get has found the bucket gone.
	eventually(t, 10*time.Second, "the Get to find the bucket gone", func() bool { return s.problem.Load() != nil })
	reason := s.Ping(t.Context())
	if reason == nil || !strings.Contains(reason.Error(), `key-value bucket "records" was deleted on the server (stream KV_records missing); recreating it`) {
		t.Errorf("Ping while the bucket is recreated = %v, want the reason", reason)
	}
	t.Logf("Ping while recreating: %v", reason)
	if err := <-got; err != nil {
		t.Errorf("Get that recreated the bucket: %v", err)
	}
	if err := s.Ping(t.Context()); err != nil {
		t.Errorf("Ping after the bucket was recreated: %v", err)
	}
}
