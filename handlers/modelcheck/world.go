package modelcheck

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// base is the model's epoch. It lies far ahead of the fake clock of a
// testing/synctest bubble (2000-01-01), so that no context deadline derived
// from a model time ever fires on its own: every timeout is a step.
var base = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)

// The model's job, the other job whose resources must never be touched, and
// the shared stream.
const (
	job      queue.JobID = 7
	otherJob queue.JobID = 8
)

var names = queue.DefaultNames()

// stamp is a server time: S whole ticks (seconds) and K server actions
// within the tick (milliseconds), so that two actions in one tick are
// ordered as the server would order them.
type stamp struct{ S, K int }

func (s stamp) time() time.Time {
	return base.Add(time.Duration(s.S)*time.Second + time.Duration(s.K)*time.Millisecond)
}

func (s stamp) String() string { return fmt.Sprintf("t=%d.%03d", s.S, s.K) }

// resource is a stream or a consumer on the model's server.
type resource struct {
	Key string // "job_7", "advisories/job-7-dlq"
	// Run is the run of job 7 whose tasks it holds; 0 for the other job's
	// resources and the shared stream, which must never be deleted.
	Run int
	// Created is the server's creation time; Since is when run Run took it
	// (its creation, or its reuse by a later run).
	Created, Since stamp
	// Attempt is the stamped job_attempt metadata, 0 when unstamped.
	Attempt   int
	Consumers int
	Msgs      uint64
}

func (r *resource) describe() string {
	if r.Run == 0 {
		return r.Key + " (not job 7's: must never be deleted)"
	}
	return fmt.Sprintf("%s (run %d's, created %s)", r.Key, r.Run, r.Created)
}

// modelEvent is a message on the event stream.
type modelEvent struct {
	ID      string
	Status  events.Status
	Attempt int // 0: no attempt sent
	Run     int // the run it is about
	Time    time.Time
	Stored  stamp
	Copy    int // >0: the Copy-th duplicate of an earlier publication
	State   evState
	Handler string // replica handling it, while in flight
}

type evState int

const (
	evPending evState = iota
	evInFlight
	evAcked
)

func (e *modelEvent) terminal() bool {
	return e.Status == events.StatusRevoked || e.Status == events.StatusFailure || e.Status == events.StatusCancelled
}

func (e *modelEvent) restart() bool { return e.Status == events.StatusRestartRequested }

func (e *modelEvent) label() string {
	s := fmt.Sprintf("%s[%s", e.ID, e.Status)
	if e.Attempt > 0 {
		s += fmt.Sprintf(" attempt=%d", e.Attempt)
	}
	if e.Copy > 0 {
		s += fmt.Sprintf(" copy %d", e.Copy)
	}
	return s + "]"
}

func (e *modelEvent) jobStatus() events.JobStatus {
	ev := events.JobStatus{
		ID: e.ID, Source: "modelcheck", Type: "org.example.job.status." + string(e.Status),
		Time: e.Time, Stored: e.Stored.time(), JobID: job, Status: e.Status, Subject: "job.status." + string(e.Status),
	}
	if e.Attempt > 0 {
		ev.Attempt, ev.HasAttempt = int64(e.Attempt), true
	}
	return ev
}

// answer is a job.queue.cleaned or job.queue.flushed event.
type answer struct {
	Kind    string
	Cause   string
	Outcome string
	Trigger string
	Lost    bool
}

// world is everything outside the replicas: the server (streams,
// consumers, the key-value bucket with its records and rebuild marker, the
// event stream, the clock) and the answers.
type world struct {
	Now       stamp
	Resources map[string]*resource

	// Bucket is the creation time of the bucket's current incarnation
	// (queue.Incarnation): long before the model's epoch, or the moment of
	// its last loss (world.lose).
	Bucket stamp
	// The record of each job: its value as the store keeps it, its
	// revision and the revision's server time.
	Recs map[queue.JobID]*storedRecord
	// Marker is the rebuild marker (queue.RebuildKey), nil when the bucket
	// has none.
	Marker *storedMarker
	// NextRev is the bucket's last revision. Revisions go on across a
	// loss: the bucket is created with its first sequence at the creation
	// instant in nanoseconds (queue.StoreConfig), above every revision of
	// the bucket before.
	NextRev uint64
	// tokens names each lease token by the claim that created it, so that
	// the random tokens do not make equal states look different.
	tokens map[string]string

	Events  []*modelEvent
	Answers []answer
	Deleted []string
}

// storedRecord is a record as the store keeps it: its JSON encoding (Rec
// decoded from it), its revision and the revision's server time. Canon is
// the encoding with its lease tokens named (world.canon), for the state
// hash: every field is in it.
type storedRecord struct {
	Rec   queue.Record
	JSON  []byte
	Canon string
	Rev   uint64
	At    stamp
}

// store encodes rec as the store would (queue.Store.Put).
func (w *world) store(rec queue.Record, rev uint64, at stamp) *storedRecord {
	rec.V = queue.RecordVersion
	b, err := json.Marshal(rec)
	if err != nil {
		panic(err)
	}
	sr := &storedRecord{JSON: b, Rev: rev, At: at}
	if err := json.Unmarshal(b, &sr.Rec); err != nil {
		panic(err)
	}
	sr.Canon = w.canonJSON(b)
	return sr
}

// record is the stored record as a Get returns it: decoded from its
// encoding (a deep copy of Rec, which was), with the revision's server
// time.
func (r *storedRecord) record() queue.Record {
	rec := r.Rec
	if rec.Attempt != nil {
		a := *rec.Attempt
		rec.Attempt = &a
	}
	if rec.RestartAttempt != nil {
		a := *rec.RestartAttempt
		rec.RestartAttempt = &a
	}
	rec.Seen = slices.Clone(rec.Seen)
	if rec.Lease != nil {
		l := *rec.Lease
		rec.Lease = &l
	}
	if rec.Effect != nil {
		e := *rec.Effect
		if e.Report != nil {
			rp := *e.Report
			rp.Deleted, rp.Kept, rp.Notes = slices.Clone(rp.Deleted), slices.Clone(rp.Kept), slices.Clone(rp.Notes)
			e.Report = &rp
		}
		rec.Effect = &e
	}
	rec.At = r.At.time()
	return rec
}

type storedMarker struct {
	M   queue.RebuildMarker
	Rev uint64
	At  stamp
}

// bucketEpoch is the creation of the model's first bucket: an hour before
// the model's epoch, so that it has long outlived the quarantine.
var bucketEpoch = stamp{S: -3600}

func newWorld() *world {
	w := &world{Resources: map[string]*resource{}, Recs: map[queue.JobID]*storedRecord{}, tokens: map[string]string{},
		Bucket: bucketEpoch}
	// The shared stream and the other job's queue exist from the start.
	w.Resources["advisories"] = &resource{Key: "advisories", Consumers: 2}
	w.Resources["advisories/job-8-dlq"] = &resource{Key: "advisories/job-8-dlq"}
	w.Resources["job_8"] = &resource{Key: "job_8", Consumers: 1, Msgs: 3}
	// The first bucket's records were rebuilt (from an empty event stream)
	// before the model begins.
	w.NextRev = 1
	w.Marker = &storedMarker{M: queue.RebuildMarker{State: queue.RebuildDone, Owner: "replica-A", Incarnation: w.Bucket.time()},
		Rev: w.NextRev, At: w.Bucket}
	return w
}

// tick stamps a server action: the clock moves on by one action.
func (w *world) tick() stamp {
	w.Now.K++
	return w.Now
}

func streamKey(name string) string           { return name }
func consumerKey(stream, name string) string { return stream + "/" + name }

func (w *world) streamInfo(name string) *jetstream.StreamInfo {
	r, ok := w.Resources[streamKey(name)]
	if !ok {
		return nil
	}
	info := &jetstream.StreamInfo{
		Config:    jetstream.StreamConfig{Name: name, Subjects: []string{subjectOf(name)}},
		Created:   r.Created.time(),
		State:     jetstream.StreamState{Msgs: r.Msgs, Consumers: r.Consumers},
		TimeStamp: w.Now.time(),
	}
	if r.Msgs > 0 {
		info.State.LastTime = r.Since.time()
	}
	if r.Attempt > 0 {
		info.Config.Metadata = map[string]string{queue.AttemptMetadataKey: fmt.Sprint(r.Attempt)}
	}
	return info
}

func subjectOf(stream string) string {
	if id, ok := names.JobFromStream(stream); ok {
		return names.SubjectName(id)
	}
	return "$JS.EVENT.ADVISORY.>"
}

func (w *world) consumerInfo(stream, name string) *jetstream.ConsumerInfo {
	if r, ok := w.Resources[consumerKey(stream, name)]; ok {
		info := &jetstream.ConsumerInfo{Stream: stream, Name: name, Created: r.Created.time(), TimeStamp: w.Now.time()}
		if r.Attempt > 0 {
			info.Config.Metadata = map[string]string{queue.AttemptMetadataKey: fmt.Sprint(r.Attempt)}
		}
		return info
	}
	// A task consumer goes with its stream.
	if id, ok := names.JobFromStream(stream); ok && name == names.ConsumerName(id) {
		if r, ok := w.Resources[streamKey(stream)]; ok && r.Consumers > 0 {
			return &jetstream.ConsumerInfo{Stream: stream, Name: name, Created: r.Created.time(), TimeStamp: w.Now.time()}
		}
	}
	return nil
}

// canon is a value as the store keeps it (its JSON encoding), with the
// lease tokens named by their claims.
func (w *world) canon(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return w.canonJSON(b)
}

func (w *world) canonJSON(b []byte) string {
	s := string(b)
	for tok, name := range w.tokens {
		s = strings.ReplaceAll(s, tok, name)
	}
	return s
}

// canonMarker is the rebuild marker without what varies from one execution
// to the next (how long the rebuild took in the bubble's clock).
func (w *world) canonMarker(m queue.RebuildMarker) string {
	m.TookMS = 0
	return w.canon(m)
}

// key is the canonical text of the world, for the state hash.
func (w *world) key(b *strings.Builder) {
	fmt.Fprintf(b, "now=%v;bucket=%v;", w.Now, w.Bucket)
	keys := make([]string, 0, len(w.Resources))
	for k := range w.Resources {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		r := w.Resources[k]
		fmt.Fprintf(b, "%s:%d:%v:%v:%d:%d:%d;", r.Key, r.Run, r.Created, r.Since, r.Attempt, r.Consumers, r.Msgs)
	}
	for _, id := range []queue.JobID{job, otherJob} {
		if r, ok := w.Recs[id]; ok {
			fmt.Fprintf(b, "rec%d=%d@%v:%s;", id, r.Rev, r.At, r.Canon)
		}
	}
	if m := w.Marker; m != nil {
		fmt.Fprintf(b, "marker=%d@%v:%s;", m.Rev, m.At, w.canonMarker(m.M))
	}
	for _, e := range w.Events {
		fmt.Fprintf(b, "ev=%s/%v/%d/%s;", e.ID, e.Stored, e.State, e.Handler)
	}
	for _, a := range w.Answers {
		fmt.Fprintf(b, "ans=%s:%s:%s:%s:%v;", a.Kind, a.Cause, a.Outcome, a.Trigger, a.Lost)
	}
}

// terminalPublished reports whether a terminal event of run run or later
// has been published.
func (w *world) terminalPublished(run int) bool {
	for _, e := range w.Events {
		if e.terminal() && e.Run >= run {
			return true
		}
	}
	return false
}

// restartAfter returns a restart request for a run after run, published
// after at, if any. A request for run itself (the request that started it,
// published again after it began) does not count: it must never flush the
// run it started.
func (w *world) restartAfter(run int, at stamp) *modelEvent {
	for _, e := range w.Events {
		if e.restart() && e.Run > run && (e.Stored.S > at.S || e.Stored.S == at.S && e.Stored.K > at.K) {
			return e
		}
	}
	return nil
}

// mayDelete is the safety property: run N's resource may go (or its tasks
// be purged) only once run N (or a later run) ended by a terminal event, or
// once a restart request for a later run was published after run N took
// it; nothing that is not job 7's may ever go. It returns "" when allowed,
// else why not.
func (w *world) mayDelete(r *resource, what string) string {
	switch {
	case r.Run == 0:
		return "VIOLATION: " + r.Key + " is not job 7's (the shared advisories stream or another job's queue)"
	case w.terminalPublished(r.Run):
		return ""
	case w.restartAfter(r.Run, r.Since) != nil:
		return ""
	}
	return fmt.Sprintf("VIOLATION: run %d's %s %s, but no terminal event of run %d or later and no restart request for a later run after its creation was published",
		r.Run, r.Key, what, r.Run)
}

// lose is the fault "the bucket is lost" (Config.MaxLosses): the bucket's
// stream KV_queue_janitor_jobs is deleted on the server, and the service's
// self-healing store (queue/heal.go: the next call finds the bucket gone,
// recreates it with the same configuration, and runs the call once more)
// carries on with an empty bucket, a new incarnation created now. Every
// record, lease and the rebuild marker are gone. The new bucket's revisions
// start at its creation instant in nanoseconds (queue.StoreConfig's
// FirstSeq), above every revision of the old one: the model's revisions go
// on (under MutRevisionsRestart they start again at 1, as a bucket created
// with the client library's defaults does). The bucket is recreated at the
// instant it is lost, the soonest the self-healing can: its quarantine ends
// as early as it can.
//
// With expiry (Config.RecordExpiry) it is instead job 7's record that
// expires (the bucket's TTL, --kv-ttl above 0): the record goes, the bucket
// and its revisions stay.
func (w *world) lose(expiry, restartRevisions bool) string {
	if expiry {
		delete(w.Recs, job)
		return "job 7's record expires (the bucket's TTL): gone, with any lease; the bucket stays"
	}
	w.Recs = map[queue.JobID]*storedRecord{}
	w.Marker = nil
	w.Bucket = w.tick()
	if restartRevisions {
		w.NextRev = 0
		return fmt.Sprintf("the bucket is deleted on the server; the store recreates it empty at %s: every record, lease and the rebuild marker are gone; revisions start again at 1 (MUTATION)", w.Bucket)
	}
	return fmt.Sprintf("the bucket is deleted on the server; the store recreates it empty at %s: every record, lease and the rebuild marker are gone; revisions go on (first_seq)", w.Bucket)
}
