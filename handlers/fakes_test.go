package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// fakeQueue records every removal's fence and answers with a canned
// Removal.
type fakeQueue struct {
	mu      sync.Mutex
	calls   []queue.Fence
	removal queue.Removal
	err     error
	// during, when set, runs inside Execute (to race other writers).
	during func()
	// gone makes Inspect find no stream.
	gone bool
}

func (q *fakeQueue) Inspect(_ context.Context, id queue.JobID, _ queue.Authority) (queue.Inspection, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	ins := queue.Inspection{Stream: q.StreamName(id)}
	if !q.gone {
		ins.Info = &jetstream.StreamInfo{Created: time.Unix(100, 0)}
	}
	return ins, nil
}

func (q *fakeQueue) Plan(_ context.Context, id queue.JobID, _ queue.Inspection, f queue.Fence, _ queue.Authority) (queue.Plan, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.calls = append(q.calls, f)
	p := queue.Plan{ID: id, Stream: q.StreamName(id), StreamFound: q.removal.StreamFound}
	if q.removal.Removed() || q.err != nil {
		p.DropStream, p.Created, p.Messages = true, time.Unix(100, 0), q.removal.MessagesDiscarded
	}
	return p, nil
}

func (q *fakeQueue) Execute(_ context.Context, p queue.Plan, _ queue.Authority) (queue.Removal, error) {
	q.mu.Lock()
	during, r, err := q.during, q.removal, q.err
	q.mu.Unlock()
	if during != nil {
		during()
	}
	r.Stream = p.Stream
	if r.Deleted == nil {
		r.Deleted = []string{}
	}
	return r, err
}

func (q *fakeQueue) StreamName(id queue.JobID) string { return queue.DefaultNames().StreamName(id) }

func (q *fakeQueue) removes() []queue.Fence {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]queue.Fence(nil), q.calls...)
}

// fakeRecords is an in-memory CAS store with the same revision semantics
// as the key-value bucket.
type fakeRecords struct {
	mu   sync.Mutex
	data map[queue.JobID][]byte
	rev  map[queue.JobID]uint64
	at   map[queue.JobID]time.Time
	next uint64
	// clock is the server's clock: revisions are stamped with it.
	clock func() time.Time
	// beforePut, when set, runs before each Put (to inject a conflict).
	beforePut func()
	// failPuts, when it points to true, makes every Put fail.
	failPuts *bool
	// loseNextReply makes the next Put land but report a conflict, as a
	// retried write whose first reply was lost does.
	loseNextReply bool
}

func newFakeRecords() *fakeRecords {
	return &fakeRecords{data: map[queue.JobID][]byte{}, rev: map[queue.JobID]uint64{}, at: map[queue.JobID]time.Time{},
		clock: time.Now}
}

func (s *fakeRecords) Get(_ context.Context, id queue.JobID) (queue.Record, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var rec queue.Record
	if b, ok := s.data[id]; ok {
		if err := json.Unmarshal(b, &rec); err != nil {
			return rec, 0, err
		}
	}
	rec.At = s.at[id]
	return rec, s.rev[id], nil
}

func (s *fakeRecords) ServerNow(context.Context) (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clock(), nil
}

// fakeBucketCreated is when the fake bucket was created: long ago.
var fakeBucketCreated = time.Unix(1, 0)

func (s *fakeRecords) Incarnation(context.Context) (queue.Incarnation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return queue.Incarnation{Created: fakeBucketCreated, Now: s.clock()}, nil
}

func (s *fakeRecords) Put(_ context.Context, id queue.JobID, rec queue.Record, rev uint64) (uint64, error) {
	if hook := s.takeHook(); hook != nil {
		hook()
	}
	s.mu.Lock()
	fail := s.failPuts != nil && *s.failPuts
	s.mu.Unlock()
	if fail {
		return 0, errors.New("nats: timeout")
	}
	s.mu.Lock()
	lose := s.loseNextReply
	s.loseNextReply = false
	s.mu.Unlock()
	n, err := s.put(id, rec, rev)
	if lose && err == nil {
		return 0, queue.ErrConflict
	}
	return n, err
}

func (s *fakeRecords) takeHook() func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.beforePut
	s.beforePut = nil
	return h
}

func (s *fakeRecords) put(id queue.JobID, rec queue.Record, rev uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rev[id] != rev {
		return 0, queue.ErrConflict
	}
	rec.V = queue.RecordVersion
	b, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	s.next++
	s.data[id], s.rev[id], s.at[id] = b, s.next, s.clock()
	return s.next, nil
}

// fakeEmitter records what would have been announced.
type fakeEmitter struct {
	mu      sync.Mutex
	cleaned []events.QueueResult
	flushed []events.QueueResult
	// failCleaned, when set, is what Cleaned returns (after recording the
	// answer): it was sent, but not confirmed.
	failCleaned error
}

func (e *fakeEmitter) Cleaned(_ context.Context, r events.QueueResult) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cleaned = append(e.cleaned, r)
	return e.failCleaned
}

func (e *fakeEmitter) Flushed(_ context.Context, r events.QueueResult) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.flushed = append(e.flushed, r)
	return nil
}

func (e *fakeEmitter) counts() (cleaned, flushed int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.cleaned), len(e.flushed)
}

// failRecordsDuringEffect makes every record write fail from the moment the
// effect runs (the claim and intent are written), until the flag it
// returns is set to false.
func (w *world) failRecordsDuringEffect() *bool {
	failing := true
	w.q.during = func() {
		w.q.during = nil
		w.records.failPuts = &failing
	}
	return &failing
}
