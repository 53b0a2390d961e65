package queue

import (
	"encoding/json"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/integration/natstest"
)

func openStore(t *testing.T, js jetstream.JetStream, cfg StoreConfig) *Store {
	t.Helper()
	s, err := OpenStore(t.Context(), js, cfg, WithRetryPolicy(fastRetry()))
	if err != nil {
		t.Fatalf("OpenStore(%+v): %v", cfg, err)
	}
	return s
}

func bucketReplicas(t *testing.T, js jetstream.JetStream, bucket string) int {
	t.Helper()
	kv, err := js.KeyValue(t.Context(), bucket)
	if err != nil {
		t.Fatalf("bucket %s: %v", bucket, err)
	}
	st, err := kv.Status(t.Context())
	if err != nil {
		t.Fatalf("bucket %s status: %v", bucket, err)
	}
	return st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Replicas
}

func TestOpenStoreCreatesThenBinds(t *testing.T) {
	t.Parallel()
	e := setup(t)
	first := openStore(t, e.js, StoreConfig{Bucket: "records", Replicas: 1})
	if got := bucketReplicas(t, e.js, "records"); got != 1 || first.Bucket() != "records" {
		t.Fatalf("bucket %q with %d replicas, want records with 1", first.Bucket(), got)
	}
	if err := first.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	rev, err := first.Put(t.Context(), 3, Record{Status: "started", State: StateRunning}, 0)
	if err != nil {
		t.Fatal(err)
	}
	second := openStore(t, e.js, StoreConfig{Bucket: "records", Replicas: 1})
	got, gotRev, err := second.Get(t.Context(), 3)
	if err != nil || gotRev != rev || got.Status != "started" {
		t.Fatalf("second store Get = %+v, %d, %v; want the first store's record at revision %d", got, gotRev, err, rev)
	}
}

func TestOpenStoreConcurrently(t *testing.T) {
	t.Parallel()
	e := setup(t)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = OpenStore(t.Context(), e.js, StoreConfig{Bucket: "records", Replicas: 1}, WithRetryPolicy(fastRetry()))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent OpenStore: %v", err)
	}
}

func TestStoreGetMissing(t *testing.T) {
	t.Parallel()
	s := openStore(t, setup(t).js, StoreConfig{Bucket: "records"})
	rec, rev, err := s.Get(t.Context(), 7)
	if err != nil || rev != 0 || !reflect.DeepEqual(rec, Record{}) {
		t.Fatalf("Get = %+v, %d, %v; want the zero Record at revision 0", rec, rev, err)
	}
}

func TestStorePutCompareAndSet(t *testing.T) {
	t.Parallel()
	s := openStore(t, setup(t).js, StoreConfig{Bucket: "records"})
	ctx := t.Context()
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	first := Record{Attempt: ptr(int64(2)), Time: at, EventID: "e1", Status: "started", State: StateRunning}

	rev1, err := s.Put(ctx, 7, first, 0)
	if err != nil || rev1 == 0 {
		t.Fatalf("create: %d, %v", rev1, err)
	}
	if _, err := s.Put(ctx, 7, first, 0); !errors.Is(err, ErrConflict) {
		t.Fatalf("second create = %v, want ErrConflict", err)
	}
	second := first
	second.EventID, second.Status, second.State, second.Done = "e2", "revoked", StateTerminal, true
	second.Lease = &Lease{Owner: "replica-a", Until: at.Add(time.Minute)}
	rev2, err := s.Put(ctx, 7, second, rev1)
	if err != nil || rev2 <= rev1 {
		t.Fatalf("update at the current revision = %d, %v; want a revision after %d", rev2, err, rev1)
	}
	for _, stale := range []uint64{rev1, rev2 + 100} {
		if _, err := s.Put(ctx, 7, first, stale); !errors.Is(err, ErrConflict) {
			t.Fatalf("update at revision %d = %v, want ErrConflict", stale, err)
		}
	}
	got, rev, err := s.Get(ctx, 7)
	second.V = RecordVersion
	if got.At.IsZero() || time.Since(got.At) > time.Minute {
		t.Errorf("At = %v; want the revision's server time, just now", got.At)
	}
	second.At = got.At
	if err != nil || rev != rev2 || !reflect.DeepEqual(got, second) {
		t.Fatalf("Get = %+v, %d, %v; want %+v at revision %d", got, rev, err, second, rev2)
	}
}

func TestStoreGetAfterDelete(t *testing.T) {
	t.Parallel()
	e := setup(t)
	s := openStore(t, e.js, StoreConfig{Bucket: "records"})
	if _, err := s.Put(t.Context(), 7, Record{Status: "started"}, 0); err != nil {
		t.Fatal(err)
	}
	kv, err := e.js.KeyValue(t.Context(), "records")
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(t.Context(), JobKey(7)); err != nil {
		t.Fatal(err)
	}
	rec, rev, err := s.Get(t.Context(), 7)
	if err != nil || rev != 0 || !reflect.DeepEqual(rec, Record{}) {
		t.Fatalf("Get of a deleted key = %+v, %d, %v; want the zero Record at revision 0", rec, rev, err)
	}
	if rev, err := s.Put(t.Context(), 7, Record{Status: "revoked"}, 0); err != nil || rev == 0 {
		t.Fatalf("create over a deleted key = %d, %v", rev, err)
	}
}

func TestStoreWritesVersionedJSON(t *testing.T) {
	t.Parallel()
	e := setup(t)
	s := openStore(t, e.js, StoreConfig{Bucket: "records"})
	if _, err := s.Put(t.Context(), 12, Record{V: 99, EventID: "e1", State: StateFlushed}, 0); err != nil {
		t.Fatal(err)
	}
	kv, err := e.js.KeyValue(t.Context(), "records")
	if err != nil {
		t.Fatal(err)
	}
	entry, err := kv.Get(t.Context(), "job.12")
	if err != nil {
		t.Fatalf("key job.12: %v", err)
	}
	var raw map[string]any
	if err := json.Unmarshal(entry.Value(), &raw); err != nil {
		t.Fatal(err)
	}
	if raw["v"] != float64(RecordVersion) || raw["event_id"] != "e1" || raw["state"] != "flushed" {
		t.Errorf("stored %s; want v %d, event_id e1, state flushed", entry.Value(), RecordVersion)
	}
	for _, absent := range []string{"attempt", "lease", "cleaned_at", "stored", "At"} {
		if _, ok := raw[absent]; ok {
			t.Errorf("stored %s; want no %q when unset", entry.Value(), absent)
		}
	}
}

// TestStoreConcurrentCompareAndSet: read-modify-write loops from several
// goroutines lose no increment.
func TestStoreConcurrentCompareAndSet(t *testing.T) {
	t.Parallel()
	s := openStore(t, setup(t).js, StoreConfig{Bucket: "records"})
	const workers, increments = 8, 50
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Go(func() {
			for done := 0; done < increments; {
				rec, rev, err := s.Get(t.Context(), 1)
				if err != nil {
					errs[w] = err
					return
				}
				var n int64
				if rec.Attempt != nil {
					n = *rec.Attempt
				}
				rec.Attempt = ptr(n + 1)
				switch _, err := s.Put(t.Context(), 1, rec, rev); {
				case errors.Is(err, ErrConflict):
				case err != nil:
					errs[w] = err
					return
				default:
					done++
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	rec, _, err := s.Get(t.Context(), 1)
	if err != nil || rec.Attempt == nil || *rec.Attempt != workers*increments {
		t.Fatalf("counter = %v, %v; want %d", rec.Attempt, err, workers*increments)
	}
}

// TestRecordHeldBy: a lease is judged by its claim's token (the same
// replica's other claims hold it too) and in server time: the revision's
// timestamp plus the TTL, whatever the holder's own clock wrote in Until.
func TestRecordHeldBy(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	at := now.Add(-5 * time.Second) // the revision's server time
	tests := []struct {
		name  string
		lease *Lease
		want  bool
	}{
		{"no lease", nil, false},
		{"this claim's lease", &Lease{Owner: "me", Token: "mine", TTL: time.Minute}, false},
		{"another claim of this replica", &Lease{Owner: "me", Token: "other", TTL: time.Minute}, true},
		{"another replica's lease", &Lease{Owner: "other", Token: "t", TTL: time.Minute}, true},
		{"lease ending now", &Lease{Owner: "other", Token: "t", TTL: 5 * time.Second}, false},
		{"expired lease", &Lease{Owner: "other", Token: "t", TTL: time.Second}, false},
		{"holder's clock far ahead: judged in server time", &Lease{Owner: "other", Token: "t", TTL: time.Second, Until: now.Add(time.Hour)}, false},
		{"holder's clock far behind: judged in server time", &Lease{Owner: "other", Token: "t", TTL: time.Minute, Until: now.Add(-time.Hour)}, true},
		{"version 1 record: Until", &Lease{Owner: "other", Until: now.Add(time.Minute)}, true},
		{"version 1 record: Until passed", &Lease{Owner: "other", Until: now}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := (Record{Lease: tt.lease, At: at}).HeldBy("mine", now); got != tt.want {
				t.Fatalf("HeldBy = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestOpenStoreOnACluster(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	c := natstest.RunCluster(t, 3)
	_, js := natstest.Connect(t, c.URLs())
	// A young cluster answers 503 until its meta group settles: a long
	// policy rides that out.
	policy := RetryPolicy{Initial: 50 * time.Millisecond, Max: time.Second, MaxElapsed: time.Minute, AttemptTimeout: 10 * time.Second}
	s, err := OpenStore(t.Context(), js, StoreConfig{Bucket: "records", Replicas: 3}, WithRetryPolicy(policy))
	if err != nil {
		t.Fatalf("OpenStore: %v", err)
	}
	if got := bucketReplicas(t, js, "records"); got != 3 {
		t.Fatalf("bucket has %d replicas, want 3", got)
	}
	rev, err := s.Put(t.Context(), 5, Record{Status: "started"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, gotRev, err := s.Get(t.Context(), 5); err != nil || gotRev != rev || got.Status != "started" {
		t.Fatalf("Get = %+v, %d, %v; want the record at revision %d", got, gotRev, err, rev)
	}
}

// TestRecreatedBucketNeverReusesARevision: a bucket created again after a
// deletion starts its revisions past any the deleted one handed out, so a
// compare-and-set write of a claim held in the old bucket (a renewal, a
// release) fails instead of landing, by coincidence, on a record of the new
// one.
func TestRecreatedBucketNeverReusesARevision(t *testing.T) {
	t.Parallel()
	e := setup(t)
	s, err := OpenStore(t.Context(), e.js, StoreConfig{Bucket: "revs", Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	old, err := s.Put(t.Context(), 1, Record{EventID: "a"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.js.DeleteKeyValue(t.Context(), "revs"); err != nil {
		t.Fatal(err)
	}
	// The new bucket's first record is written at the revision the old
	// one's was, as two fresh buckets would number them.
	if _, _, err := s.Get(t.Context(), 1); err != nil { // heals: recreates the bucket
		t.Fatal(err)
	}
	fresh, err := s.Put(t.Context(), 1, Record{EventID: "b"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fresh <= old {
		t.Fatalf("the new bucket's first revision %d is not past the old bucket's %d", fresh, old)
	}
	if _, err := s.Put(t.Context(), 1, Record{EventID: "stray"}, old); !errors.Is(err, ErrConflict) {
		t.Fatalf("a write at the old bucket's revision: %v; want ErrConflict", err)
	}
}
