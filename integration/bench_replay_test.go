package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// With QJ_BENCH_DECOMPOSE=1 the storm gets three more sides that send the
// service's requests from the benchmark itself, without the service: what
// they cost the server, against the floor's and the service's, says which
// of the service's requests its extra server CPU comes from.
//
//   - "floor, purge first": the floor with each stream purged before its
//     delete, as the service does since the safety rework;
//   - "floor + record": that, with the record's requests in the service's
//     order (kv.create, the intent's kv.update beside the bucket's stream
//     info, the purge beside the dead-letter delete, the stream's delete,
//     kv.update), on a bucket like the service's;
//   - "replay": the whole path (the event stored, pulled and acked, the
//     record, the stream info, the purge and deletes, the answer
//     published), at the service's concurrency.
//
// The replay sends what the service sends (TestRequestsPerPath's table) and
// nothing else: when its server CPU matches the service's, the server's
// extra work is the requests', not the service's manner of sending them.

// replaySide sends the service's requests for one side.
type replaySide struct {
	w      *bench
	nc     *nats.Conn
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	intake bool   // the whole path, events included
	stream string // its event stream (intake)
	prefix string // its event subject prefix (intake)
	answer string // its answer subject prefix (intake)
	cc     jetstream.ConsumeContext
	sem    chan struct{}
}

// recordBody stands for the service's record: about its size.
var recordBody = bytes.Repeat([]byte("r"), 380)

// answerBody stands for the service's answer event: about its size.
var answerBody = bytes.Repeat([]byte("a"), 700)

// replayConcurrency is the service's default --concurrency.
const replayConcurrency = 32

func (w *bench) replaySide(name, tag string, intake bool) *benchSide {
	b := w.b
	b.Helper()
	conn := "bench replay " + tag
	nc, js := natstest.Connect(b, w.srv.url, nats.Name(conn))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "bench_replay_" + tag, History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		b.Fatal(err)
	}
	r := &replaySide{w: w, nc: nc, js: js, kv: kv, intake: intake, sem: make(chan struct{}, replayConcurrency)}
	s := &benchSide{name: name, conn: conn, replay: r, concurrency: replayConcurrency}
	if intake {
		r.stream, r.prefix, r.answer = "BENCH_EVENTS_"+strings.ToUpper(tag), "bench."+tag+".job.status.", "bench."+tag+".job.queue.cleaned."
		s.stream, s.eventPrefix = r.stream, r.prefix
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: r.stream, Subjects: []string{r.prefix + "*"}, Storage: jetstream.FileStorage}); err != nil {
			b.Fatal(err)
		}
		cons, err := js.CreateOrUpdateConsumer(ctx, r.stream, jetstream.ConsumerConfig{Durable: "queue-janitor", AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: 10 * time.Second, MaxDeliver: 10})
		if err != nil {
			b.Fatal(err)
		}
		r.cc, err = cons.Consume(r.handle, jetstream.PullMaxMessages(replayConcurrency), jetstream.PullExpiry(5*time.Second))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(r.cc.Stop)
	}
	return s
}

// run cleans n jobs from first: through the event stream (intake), or
// directly at the service's concurrency.
func (r *replaySide) run(first queue.JobID, n int) {
	b := r.w.b
	b.Helper()
	if r.intake {
		publishEvents(b, r.w.js, r.prefix, first, n, events.StatusRevoked)
		return
	}
	var wg sync.WaitGroup
	for i := range n {
		r.sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-r.sem; wg.Done() }()
			if err := r.path(first+queue.JobID(i), false, nil); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
}

// handle takes one event as the service's intake does: at most
// replayConcurrency at once, acked once the path is done.
func (r *replaySide) handle(msg jetstream.Msg) {
	r.sem <- struct{}{}
	go func() {
		defer func() { <-r.sem }()
		var ev struct {
			Data struct {
				JobID queue.JobID `json:"job_id"`
			} `json:"data"`
		}
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			r.w.b.Error(err)
			return
		}
		answer := func() error {
			if err := r.nc.Publish(fmt.Sprintf("%s%d", r.answer, ev.Data.JobID), answerBody); err != nil {
				return err
			}
			return r.nc.Flush()
		}
		if err := r.path(ev.Data.JobID, true, answer); err != nil {
			r.w.b.Error(err)
			return
		}
		if err := msg.Ack(); err != nil {
			r.w.b.Error(err)
		}
	}()
}

// path is the service's requests for one terminal job of a job it has no
// record of, as the effect path sends them (TestRequestsPerPath's
// "terminal, leftover"; keep the two in step): the claim (kv.create) beside
// the stream's read (with intake: the fence's stream info), the intent
// (kv.update) beside the bucket's incarnation check (its stream info), the
// stream's and the dead-letter consumer's deletes at once (no purge: the job's
// queue was not removed recently), the answer (when answer is set: published
// and flushed, as the service confirms `cleaned`) beside the record
// (kv.update). The service shares one incarnation check among the
// claims of its round trip; the replay sends one per job, an upper bound.
func (r *replaySide) path(id queue.JobID, info bool, answer func() error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := queue.JobKey(id)
	names := r.w.names
	stream := names.StreamName(id)
	var rev uint64
	err := atOnce(
		func() (err error) { rev, err = r.kv.Create(ctx, key, recordBody); return err },
		func() error {
			if !info {
				return nil
			}
			_, err := r.js.Stream(ctx, stream)
			return err
		})
	if err != nil {
		return err
	}
	err = atOnce(
		func() (err error) { rev, err = r.kv.Update(ctx, key, recordBody, rev); return err },
		func() error { _, err := r.kv.Status(ctx); return err })
	if err != nil {
		return err
	}
	err = atOnce(
		func() error { return r.js.DeleteStream(ctx, stream) },
		func() error { return r.js.DeleteConsumer(ctx, names.AdvisoryStream, names.DeadLetterConsumerName(id)) })
	if err != nil {
		return err
	}
	if answer == nil {
		answer = func() error { return nil }
	}
	return atOnce(answer, func() error { _, err := r.kv.Update(ctx, key, recordBody, rev); return err })
}
