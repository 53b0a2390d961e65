package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// BenchmarkInterleaved measures the service against the physical floor (the
// same deletes issued directly) on one NATS server, interleaved so that both
// meet the same machine at the same moments:
//
//   - storm: chunks of QJ_BENCH_CHUNK fresh jobs (250) of QJ_BENCH_TASKS
//     tasks (500), QJ_BENCH_JOBS per side in all (2000); each round runs one
//     chunk per side, in an order rotated from round to round, each on a
//     settled server, timed from its first REVOKED publication (the floor:
//     its first delete) to the server's last stream-deleted advisory; the
//     ratio is taken per round, and the report gives its median and spread;
//   - one at a time (QJ_BENCH_LATENCY each, 300): REVOKED → stream gone, the
//     restart handshake with nothing left and with a leftover of
//     QJ_BENCH_TASKS tasks, each against its fair floor, interleaved;
//   - on the wire: what each path sends, how many round trips and how many
//     of them in sequence, read by a delaying protocol proxy (the same
//     reading as TestRequestsPerPath, with the real binary);
//   - cost: CPU per job of the service and of the server (each its own
//     process), messages per job as the server counts them (/connz), and the
//     service's peak RSS.
//
// Every side is its own `serve` process (the real binary, defaults, tracing
// exported over OTLP/HTTP to a local sink) with its own event stream and
// bucket; QJ_BENCH_NOTRACE=1 adds a side with tracing off, interleaved with
// the others, to measure tracing's cost in the same run. The floor deletes
// at the service's concurrency (QJ_BENCH_FLOOR_CONCURRENCY, 32: the
// service's --concurrency default). QJ_BENCH_DECOMPOSE=1 adds sides that
// send the service's requests from the benchmark, to tell which of them
// the server's extra work comes from. QJ_BENCH_BASELINE=<binary> adds a
// traced side running another build (before a change, after it: one run). QJ_BENCH_PROFILE_DIR takes a CPU profile
// of the server and of the service during every storm chunk. QJ_BENCH_OUT
// writes the report to a file as well.
func BenchmarkInterleaved(b *testing.B) {
	cfg := benchConfig{
		jobs: benchEnv(b, "QJ_BENCH_JOBS", 2000), tasks: benchEnv(b, "QJ_BENCH_TASKS", 500),
		chunk: benchEnv(b, "QJ_BENCH_CHUNK", 250), latency: benchEnv(b, "QJ_BENCH_LATENCY", 300),
		floorConcurrency: benchList(b, "QJ_BENCH_FLOOR_CONCURRENCY", []int{32}),
		noTrace:          os.Getenv("QJ_BENCH_NOTRACE") == "1", profileDir: os.Getenv("QJ_BENCH_PROFILE_DIR"),
		decompose: os.Getenv("QJ_BENCH_DECOMPOSE") == "1", baseline: os.Getenv("QJ_BENCH_BASELINE"),
	}
	if cfg.chunk > cfg.jobs {
		cfg.chunk = cfg.jobs
	}
	for range b.N {
		report := runInterleaved(b, cfg)
		fmt.Print("\n" + report)
		if out := os.Getenv("QJ_BENCH_OUT"); out != "" {
			if err := os.WriteFile(out, []byte(report), 0o600); err != nil {
				b.Fatal(err)
			}
		}
	}
}

type benchConfig struct {
	jobs, tasks, chunk, latency int
	// floorConcurrency lists the floor's concurrencies, each a side of its
	// own; the first is the one the ratios are taken against.
	floorConcurrency []int
	noTrace          bool
	profileDir       string
	// decompose adds the sides that send the service's requests from the
	// benchmark (bench_replay_test.go).
	decompose bool
	// baseline is another build of queue-janitor (a binary's path), run as
	// a traced side of its own: before and after a change, in one run.
	baseline string
}

// benchList reads a comma-separated list of positive integers.
func benchList(b *testing.B, key string, def []int) []int {
	b.Helper()
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			b.Fatalf("%s=%q: want positive integers, comma-separated", key, v)
		}
		out = append(out, n)
	}
	return out
}

func benchEnv(b *testing.B, key string, def int) int {
	b.Helper()
	if v := os.Getenv(key); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("%s=%q: want a positive integer", key, v)
		}
		return n
	}
	return def
}

// bench is one run's world.
type bench struct {
	b       *testing.B
	cfg     benchConfig
	srv     *serverProcess
	js      jetstream.JetStream // provisioning and events
	floorJS jetstream.JetStream // the floor's deletes, a connection of its own
	nc      *nats.Conn
	names   queue.Names
	gone    *goneWatcher
	sink    *otlpSink
	floor   *benchSide // the floor the ratios are taken against
	// idleServer is the server's CPU per second of wall time while idle.
	idleServer float64

	mu     sync.Mutex
	nextID queue.JobID
}

// ids reserves n fresh job ids.
func (w *bench) ids(n int) queue.JobID {
	w.mu.Lock()
	defer w.mu.Unlock()
	first := w.nextID
	w.nextID += queue.JobID(n)
	return first
}

func runInterleaved(b *testing.B, cfg benchConfig) string {
	b.Helper()
	bin := binary(b)
	w := &bench{b: b, cfg: cfg, names: queue.DefaultNames(), nextID: 1}
	w.srv = startServerProcess(b)
	w.nc, _ = natstest.Connect(b, w.srv.url, nats.Name("bench"))
	// Room for provisionMany's 16 publishers of 1,024 tasks at a time.
	js, err := jetstream.New(w.nc, jetstream.WithDefaultTimeout(30*time.Second), jetstream.WithPublishAsyncMaxPending(1<<15))
	if err != nil {
		b.Fatal(err)
	}
	w.js = js
	_, w.floorJS = natstest.Connect(b, w.srv.url, nats.Name("bench floor"))
	w.gone = watchGone(b, w.nc)
	w.sink = newOTLPSink(b)
	if cfg.profileDir != "" {
		if err := os.MkdirAll(cfg.profileDir, 0o750); err != nil {
			b.Fatal(err)
		}
	}
	// The shared advisory stream, as the backend's first job creates it.
	if _, err := w.js.CreateStream(context.Background(), w.names.AdvisoryStreamConfig()); err != nil {
		b.Fatal(err)
	}

	sides := []*benchSide{w.serviceSide(bin, "queue-janitor", "t", true)}
	if cfg.noTrace {
		sides = append(sides, w.serviceSide(bin, "queue-janitor, tracing off", "n", false))
	}
	var baseline *benchSide
	if cfg.baseline != "" {
		baseline = w.serviceSide(cfg.baseline, "baseline ("+filepath.Base(cfg.baseline)+")", "b", true)
		sides = append(sides, baseline)
	}
	for i, c := range cfg.floorConcurrency {
		name := "floor"
		if i > 0 {
			name = fmt.Sprintf("floor, concurrency %d", c)
		}
		sides = append(sides, &benchSide{name: name, conn: "bench floor", concurrency: c})
	}
	w.floor = sides[len(sides)-len(cfg.floorConcurrency)]
	if cfg.decompose {
		sides = append(sides, &benchSide{name: "floor, purge first", conn: "bench floor", concurrency: w.floor.concurrency, purge: true},
			w.replaySide("floor + record", "k", false), w.replaySide("replay", "r", true))
	}

	// What each path puts on the wire, through a delaying proxy, with a
	// service process of its own.
	wire := w.wirePaths(bin)

	// The server's CPU while every side idles (pull requests waiting,
	// heartbeats, the services' periodic checks), to judge the per-job
	// figures by.
	w.srv.settle(b, 10*time.Second)
	idle0, idleStart := w.srv.cpu(b), time.Now()
	time.Sleep(5 * time.Second)
	w.idleServer = float64(w.srv.cpu(b)-idle0) / float64(time.Since(idleStart))

	// A warm-up round, not counted: every side's first chunk.
	b.Logf("warm-up: %d jobs per side", min(cfg.chunk, 100))
	for _, s := range sides {
		w.stormChunk(s, min(cfg.chunk, 100), false, "")
	}

	b.Logf("one at a time: %d events per path and side", cfg.latency)
	one := slices.DeleteFunc(slices.Clone(sides), func(s *benchSide) bool { return s.svc == nil && s != w.floor })
	for _, p := range onePaths {
		w.oneAtATime(one, p)
	}

	rounds := (cfg.jobs + cfg.chunk - 1) / cfg.chunk
	for r := range rounds {
		n := min(cfg.chunk, cfg.jobs-r*cfg.chunk)
		order := rotate(sides, r)
		b.Logf("storm round %d of %d: %d jobs per side, order %s", r+1, rounds, n, sideNames(order))
		for _, s := range order {
			w.stormChunk(s, n, true, fmt.Sprintf("%02d", r+1))
		}
	}
	for _, s := range sides {
		if s.svc != nil {
			s.peakRSS = s.svc.peakRSS(b)
		}
	}
	return w.report(sides, wire, baseline)
}

// benchSide is one contestant: a service process, or the floor (svc nil).
type benchSide struct {
	name string
	svc  *process
	// concurrency is the floor's (svc nil).
	concurrency int
	// replay sends the service's requests from the benchmark.
	replay *replaySide
	// purge: the floor empties each stream before deleting it.
	purge bool
	conn  string // its connection's name in /connz
	// Its own event stream, subjects and bucket (service sides).
	stream, eventPrefix, flushedPrefix string

	// Storm, summed over the counted chunks.
	chunks                   []time.Duration
	jobs                     int
	svcCPU, srvCPU, benchCPU time.Duration
	sent, received           int64
	oneAt                    map[string][]time.Duration // path → durations
	oneAtSent, oneAtReceived map[string]int64
	terminalStages, emptyStg stageSamples
	leftStages               stageSamples
	peakRSS                  int64
	gcCycles                 int           // the server's garbage collections during the chunks
	gcCPU                    time.Duration // and their CPU
	allocBytes, allocObjects uint64        // what the server allocated during the chunks
	window                   time.Duration // measured: first request to settled, summed
}

// serviceSide starts a service process with its own event stream, consumer,
// bucket and answer subjects.
func (w *bench) serviceSide(bin, name, tag string, traced bool) *benchSide {
	w.b.Helper()
	s := &benchSide{name: name, stream: "BENCH_EVENTS_" + strings.ToUpper(tag), eventPrefix: "bench." + tag + ".job.status.",
		flushedPrefix: "bench." + tag + ".job.queue.flushed."}
	s.svc = startProcess(w.b, bin, processConfig{url: w.srv.url, traced: traced, sink: w.sink, args: []string{
		"--event-stream", s.stream, "--event-subject", s.eventPrefix + "*", "--kv-bucket", "bench_jobs_" + tag,
		"--cleaned-subject", "bench." + tag + ".job.queue.cleaned.{id}", "--flushed-subject", s.flushedPrefix + "{id}"}})
	s.conn = s.svc.connName(w.b, w.srv)
	return s
}

func rotate(sides []*benchSide, r int) []*benchSide {
	out := make([]*benchSide, 0, len(sides))
	for i := range sides {
		out = append(out, sides[(i+r)%len(sides)])
	}
	return out
}

func sideNames(sides []*benchSide) string {
	var n []string
	for _, s := range sides {
		n = append(n, s.name)
	}
	return strings.Join(n, ", ")
}

// stormChunk runs one chunk of n fresh jobs on side s, on a settled server:
// provision, settle, measure, wait for the side to finish and the server to
// settle again, so that the chunk's CPU and messages include its tail.
func (w *bench) stormChunk(s *benchSide, n int, count bool, label string) {
	b := w.b
	b.Helper()
	first := w.ids(n)
	provisionMany(b, w.js, w.names, first, n, w.cfg.tasks)
	w.srv.settle(b, 10*time.Second)

	var waitProfiles []func()
	heapProfile := func(string) {}
	if count && w.cfg.profileDir != "" {
		// Long enough for the chunk and its tail: the profile holds
		// only what the process did, so the idle end adds nothing.
		d := 4 * time.Second
		if len(s.chunks) > 0 {
			d = max(d, 3*s.chunks[len(s.chunks)-1]+2*time.Second)
		}
		tag := strings.ReplaceAll(s.name, " ", "")
		tag = strings.ReplaceAll(tag, ",", "-")
		heapProfile = func(when string) {
			w.srv.saveHeap(b, filepath.Join(w.cfg.profileDir, "server-heap-"+tag+"-"+label+"-"+when+".pb.gz"))
		}
		heapProfile("before")
		waitProfiles = append(waitProfiles, w.srv.profile(b, d, filepath.Join(w.cfg.profileDir, "server-"+tag+"-"+label+".pb.gz")))
		if s.svc != nil {
			waitProfiles = append(waitProfiles, fetchProfile(b, "http://"+s.svc.addr, d, filepath.Join(w.cfg.profileDir, "service-"+tag+"-"+label+".pb.gz")))
		}
	}
	conn0 := w.srv.connz(b)[s.conn]
	gc0, gcCPU0, _ := w.srv.gcStats()
	alloc0, objects0 := w.srv.allocated(b)
	srv0, bench0 := w.srv.cpu(b), procCPU(b, os.Getpid())
	var svc0 time.Duration
	if s.svc != nil {
		svc0 = s.svc.cpu(b)
	}
	start := time.Now()
	switch {
	case s.svc != nil:
		publishEvents(b, w.js, s.eventPrefix, first, n, events.StatusRevoked)
	case s.replay != nil:
		s.replay.run(first, n)
	default:
		w.deleteMany(first, n, s.concurrency, s.purge)
	}
	last := w.gone.waitAll(b, w.names, first, n, 5*time.Minute)
	took := last.Sub(start)
	if s.stream != "" {
		w.waitSettled(s)
	}
	w.srv.settle(b, 10*time.Second)
	for _, wait := range waitProfiles {
		wait()
	}
	heapProfile("after")
	if !count {
		return
	}
	conn1 := w.srv.connz(b)[s.conn]
	gc1, gcCPU1, _ := w.srv.gcStats()
	alloc1, objects1 := w.srv.allocated(b)
	s.allocBytes += alloc1 - alloc0
	s.allocObjects += objects1 - objects0
	s.gcCycles += gc1 - gc0
	s.gcCPU += gcCPU1 - gcCPU0
	s.chunks = append(s.chunks, took)
	s.jobs += n
	s.srvCPU += w.srv.cpu(b) - srv0
	s.benchCPU += procCPU(b, os.Getpid()) - bench0
	if s.svc != nil {
		s.svcCPU += s.svc.cpu(b) - svc0
	}
	s.sent += conn1.InMsgs - conn0.InMsgs
	s.received += conn1.OutMsgs - conn0.OutMsgs
	s.window += time.Since(start)
	b.Logf("  %s: %d jobs in %s", s.name, n, ms(took))
}

// waitSettled waits until the side's service has acked every event.
func (w *bench) waitSettled(s *benchSide) {
	w.b.Helper()
	eventually(w.b, 5*time.Minute, s.name+" acking every event", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := w.js.Consumer(ctx, s.stream, "queue-janitor")
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
}

// deleteMany is the floor of a storm: n jobs cleaned directly with the given
// concurrency, each job's stream (its task consumer goes with it) and
// dead-letter consumer deleted at once, as the service does, without reading
// or fencing anything. purge empties each stream before deleting it.
func (w *bench) deleteMany(first queue.JobID, n, concurrency int, purge bool) {
	w.b.Helper()
	var wg sync.WaitGroup
	next := make(chan queue.JobID)
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range next {
				if err := w.floorClean(id, purge); err != nil {
					w.b.Error(err)
				}
			}
		}()
	}
	for i := range n {
		next <- first + queue.JobID(i)
	}
	close(next)
	wg.Wait()
}

// floorClean is the floor of one job: delete its stream (after a purge when
// asked) and its dead-letter consumer at once; "not found" is clean.
func (w *bench) floorClean(id queue.JobID, purge bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return atOnce(
		func() error {
			name := w.names.StreamName(id)
			if purge {
				// The purge request itself, without the stream lookup that
				// jetstream.Stream would add.
				resp, err := w.floorJS.Conn().RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+name, nil)
				if err != nil {
					return err
				}
				if !strings.Contains(string(resp.Data), `"success":true`) && !strings.Contains(string(resp.Data), "not found") {
					return fmt.Errorf("purge %s: %s", name, resp.Data)
				}
			}
			err := w.floorJS.DeleteStream(ctx, name)
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				return nil
			}
			return err
		},
		func() error {
			err := w.floorJS.DeleteConsumer(ctx, w.names.AdvisoryStream, w.names.DeadLetterConsumerName(id))
			if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
				return nil
			}
			return err
		})
}

// atOnce runs a and b at once and returns the first error.
func atOnce(a, b func() error) error {
	errB := make(chan error, 1)
	go func() { errB <- b() }()
	errA := a()
	if err := <-errB; errA == nil {
		return err
	}
	return errA
}

// provisionMany creates n jobs' queues (attempt 1) with tasks each, in
// parallel.
func provisionMany(b *testing.B, js jetstream.JetStream, names queue.Names, first queue.JobID, n, tasks int) {
	b.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	errs := make(chan error, n)
	one := int64(1)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			id := first + queue.JobID(i)
			if err := queue.Provision(context.Background(), js, names, id, &one); err != nil {
				errs <- err
				return
			}
			if tasks > 0 {
				publishTasks(b, js, names.SubjectName(id), 0, tasks)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// publishEvents publishes one status event for each of n jobs from first
// on prefix+status, asynchronously, and waits for the stream's acks.
func publishEvents(b *testing.B, js jetstream.JetStream, prefix string, first queue.JobID, n int, status events.Status) {
	b.Helper()
	attempt := int64(1) // the provisioned run
	if status == events.StatusRestartRequested {
		attempt = 2
	}
	for i := range n {
		msg, err := events.StatusEvent{JobID: first + queue.JobID(i), Status: status, Attempt: &attempt}.Msg(context.Background(), prefix)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := js.PublishMsgAsync(msg); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 {
			<-js.PublishAsyncComplete()
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("event publish acks did not arrive")
	}
}

// goneWatcher records when each stream-deleted advisory arrived.
type goneWatcher struct {
	mu   sync.Mutex
	gone map[string]time.Time
	cond *sync.Cond
}

func watchGone(b *testing.B, nc *nats.Conn) *goneWatcher {
	b.Helper()
	w := &goneWatcher{gone: map[string]time.Time{}}
	w.cond = sync.NewCond(&w.mu)
	_, err := nc.Subscribe("$JS.EVENT.ADVISORY.STREAM.DELETED.*", func(m *nats.Msg) {
		at := time.Now()
		name := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		w.mu.Lock()
		w.gone[name] = at
		w.mu.Unlock()
		w.cond.Broadcast()
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	return w
}

// waitAll blocks until every stream of n jobs from first is gone and
// returns when the last advisory arrived.
func (w *goneWatcher) waitAll(b *testing.B, names queue.Names, first queue.JobID, n int, timeout time.Duration) time.Time {
	b.Helper()
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, w.cond.Broadcast)
	defer timer.Stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	var last time.Time
	for i := range n {
		name := names.StreamName(first + queue.JobID(i))
		for w.gone[name].IsZero() {
			if time.Now().After(deadline) {
				b.Fatalf("%s not gone within %s", name, timeout)
			}
			w.cond.Wait()
		}
		if at := w.gone[name]; at.After(last) {
			last = at
		}
	}
	return last
}

// wirePaths reads, through a delaying proxy, what each path of one event
// puts on the wire, with a service process of its own.
func (w *bench) wirePaths(bin string) map[string]wirePath {
	b := w.b
	b.Helper()
	proxy := newWireProxy(b, w.srv.url, wireDelay)
	svc := startProcess(b, bin, processConfig{url: proxy.URL(), ready: w.srv.url, args: []string{
		"--event-stream", "BENCH_EVENTS_W", "--event-subject", "bench.w.job.status.*", "--kv-bucket", "bench_jobs_w",
		"--ack-wait", "60s", "--cleaned-subject", "bench.w.job.queue.cleaned.{id}", "--flushed-subject", "bench.w.job.queue.flushed.{id}"}})
	defer svc.stop(b)
	n := wireNames{Names: w.names, eventStream: "BENCH_EVENTS_W", consumer: "queue-janitor", bucket: "bench_jobs_w",
		answerPrefixes: []string{"bench.w.job.queue."}}
	paths, err := runWirePaths(b, proxy, w.js, n, "bench.w.job.status.", w.ids(100))
	if err != nil {
		b.Fatal(err)
	}
	return paths
}

// The one-at-a-time paths.
type onePath struct {
	name  string
	tasks func(cfg benchConfig) int // -1: no queue at all
}

var onePaths = []onePath{
	{"REVOKED → stream gone", func(benchConfig) int { return 10 }},
	{wirePathRestartEmpty, func(benchConfig) int { return -1 }},
	{wirePathRestartLeftover, func(cfg benchConfig) int { return cfg.tasks }},
}

// oneAtATime runs path p cfg.latency times on every side, one event at a
// time, the sides interleaved (order rotated every time), each side's jobs
// provisioned before any is measured.
func (w *bench) oneAtATime(sides []*benchSide, p onePath) {
	b := w.b
	b.Helper()
	conn0 := w.srv.connz(b)
	w.sink.collecting.Store(true)
	defer w.sink.collecting.Store(false)
	type sample struct {
		id                queue.JobID
		published, answer time.Time
	}
	samples := map[*benchSide][]sample{}
	for i := range w.cfg.latency {
		ids := map[*benchSide]queue.JobID{}
		for _, s := range sides {
			ids[s] = w.ids(1)
			if t := p.tasks(w.cfg); t >= 0 {
				provisionMany(b, w.js, w.names, ids[s], 1, t)
			}
		}
		for _, s := range rotate(sides, i) {
			id := ids[s]
			var start, end time.Time
			switch {
			case s.svc != nil && p.name == onePaths[0].name:
				start = time.Now()
				publishEvents(b, w.js, s.eventPrefix, id, 1, events.StatusRevoked)
				end = w.gone.waitAll(b, w.names, id, 1, 30*time.Second)
			case s.svc != nil:
				start, end = handshake(b, w.nc, w.js, s, id)
			case p.name == onePaths[0].name:
				start = time.Now()
				if err := w.floorClean(id, false); err != nil {
					b.Fatal(err)
				}
				end = w.gone.waitAll(b, w.names, id, 1, 30*time.Second)
			default:
				start = time.Now()
				if err := w.floorClean(id, p.tasks(w.cfg) > 0); err != nil {
					b.Fatal(err)
				}
				end = time.Now()
			}
			if s.oneAt == nil {
				s.oneAt, s.oneAtSent, s.oneAtReceived = map[string][]time.Duration{}, map[string]int64{}, map[string]int64{}
			}
			s.oneAt[p.name] = append(s.oneAt[p.name], end.Sub(start))
			samples[s] = append(samples[s], sample{id, start, end})
		}
	}
	for _, s := range sides {
		if s.svc == nil {
			continue
		}
		w.waitSettled(s)
	}
	conn1 := w.srv.connz(b)
	for _, s := range sides {
		s.oneAtSent[p.name] = conn1[s.conn].InMsgs - conn0[s.conn].InMsgs
		s.oneAtReceived[p.name] = conn1[s.conn].OutMsgs - conn0[s.conn].OutMsgs
		if s.svc == nil || !s.svc.traced {
			continue
		}
		// The spans arrive with the exporter's batches, after the events.
		for _, x := range samples[s] {
			switch p.name {
			case onePaths[0].name:
				s.terminalStages.record(b, w.sink, "process "+s.eventPrefix+"revoked", x.id, x.published, x.answer, goneStages)
			case wirePathRestartEmpty:
				s.emptyStg.record(b, w.sink, "process "+s.eventPrefix+"restart_requested", x.id, x.published, x.answer, flushedStages(s.flushedPrefix))
			default:
				s.leftStages.record(b, w.sink, "process "+s.eventPrefix+"restart_requested", x.id, x.published, x.answer, flushedStages(s.flushedPrefix))
			}
		}
	}
}

// handshake is the backend's Start path: subscribe, publish
// restart_requested, receive the flushed answer. It returns when it
// published and when the answer arrived.
func handshake(b *testing.B, nc *nats.Conn, js jetstream.JetStream, s *benchSide, id queue.JobID) (published, received time.Time) {
	b.Helper()
	sub, err := nc.SubscribeSync(s.flushedPrefix + id.String())
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	publishEvents(b, js, s.eventPrefix, id, 1, events.StatusRestartRequested)
	if _, err := sub.NextMsg(30 * time.Second); err != nil {
		b.Fatalf("%s, job %d: no flushed: %v", s.name, id, err)
	}
	return start, time.Now()
}

// report is the run's markdown.
func (w *bench) report(sides []*benchSide, wire map[string]wirePath, baseline *benchSide) string {
	var out strings.Builder
	cfg := w.cfg
	floor := w.floor
	host, _ := os.Hostname()
	fmt.Fprintf(&out, "Interleaved storm and one-at-a-time paths, %s, host %s, %d cores, load average %s at the end.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), host, runtime.NumCPU(), loadAverage())
	fmt.Fprintf(&out, "Storm: %d jobs × %d tasks per side in %d chunks of %d, order rotated per round; floor concurrency %d.\n\n",
		cfg.jobs, cfg.tasks, len(floor.chunks), cfg.chunk, floor.concurrency)
	out.WriteString("| side | chunk time, median (min–max) | per-round ratio to the floor: median (min / p25 / p75 / max) | service CPU per job | server CPU per job | bench CPU per job | messages per job, sent / received (connz) | peak RSS |\n|---|---|---|---|---|---|---|---|\n")
	for _, s := range sides {
		ratio := "1"
		if s != floor {
			ratio = spread(chunkRatios(s.chunks, floor.chunks))
		}
		svcCPU, rss := "", ""
		if s.svc != nil {
			svcCPU = perJob(s.svcCPU, s.jobs)
			rss = fmt.Sprintf("%.1f MiB", float64(s.peakRSS)/(1<<20))
		}
		fmt.Fprintf(&out, "| %s | %s (%s–%s) | %s | %s | %s | %s | %.2f / %.2f | %s |\n", s.name, ms(median(s.chunks)),
			ms(percentile(s.chunks, 0)), ms(percentile(s.chunks, 100)), ratio, svcCPU, perJob(s.srvCPU, s.jobs),
			perJob(s.benchCPU, s.jobs), float64(s.sent)/float64(s.jobs), float64(s.received)/float64(s.jobs), rss)
	}
	if cfg.noTrace {
		on, off := sides[0], sides[1]
		fmt.Fprintf(&out, "\nTracing on against off, per round: %s; service CPU per job %s against %s (%+.0f%%).\n",
			spread(chunkRatios(on.chunks, off.chunks)), perJob(on.svcCPU, on.jobs), perJob(off.svcCPU, off.jobs),
			100*(float64(on.svcCPU)/float64(on.jobs)/(float64(off.svcCPU)/float64(off.jobs))-1))
	}
	if baseline != nil {
		now, was := sides[0], baseline
		fmt.Fprintf(&out, "\nThis build against the %s, both traced, per round: %s; service CPU per job %s against %s (%+.0f%%); "+
			"server CPU per job %s against %s; messages sent per job %.2f against %.2f.\n", was.name,
			spread(chunkRatios(now.chunks, was.chunks)), perJob(now.svcCPU, now.jobs), perJob(was.svcCPU, was.jobs),
			100*(float64(now.svcCPU)/float64(now.jobs)/(float64(was.svcCPU)/float64(was.jobs))-1),
			perJob(now.srvCPU, now.jobs), perJob(was.srvCPU, was.jobs),
			float64(now.sent)/float64(now.jobs), float64(was.sent)/float64(was.jobs))
	}

	fmt.Fprintf(&out, "\nThe server's CPU during each side's chunks (every chunk measured from its first request until the server is quiet again; "+
		"the server idles at %.1f ms of CPU per second, which the idle column spreads over the measured windows):\n\n", 1000*w.idleServer)
	// A collection falls in whichever window crosses the heap goal, most
	// of the allocation being the provisioning's: a side's fair share of
	// the collector is its allocation at the run's cost per byte.
	cycles, gcCPU, live := w.srv.gcStats()
	allocated, _ := w.srv.allocated(w.b)
	perByte := float64(gcCPU) / float64(max(allocated, 1))
	fmt.Fprintf(&out, "The server collected garbage %d times in the run (%s of CPU for %.0f MB allocated, %.2f ms per MB); "+
		"the last collection left a live heap of %d MB.\n\n", cycles, ms(gcCPU), float64(allocated)/1e6, perByte, live) // ns per byte = ms per MB
	out.WriteString("| side | server CPU per job | allocated per job | collections in its windows: per 1,000 jobs, CPU per job | server CPU per job, collections at the run's cost per MB | idle share per job |\n|---|---|---|---|---|---|\n")
	for _, s := range sides {
		jobs := float64(max(s.jobs, 1))
		amortized := s.srvCPU - s.gcCPU + time.Duration(perByte*float64(s.allocBytes))
		fmt.Fprintf(&out, "| %s | %s | %.1f KB in %.0f objects | %.1f, %s | %s | %s |\n", s.name, perJob(s.srvCPU, s.jobs),
			float64(s.allocBytes)/jobs/1000, float64(s.allocObjects)/jobs, 1000*float64(s.gcCycles)/jobs, perJob(s.gcCPU, s.jobs),
			perJob(amortized, s.jobs), perJob(time.Duration(w.idleServer*float64(s.window)), s.jobs))
	}
	fmt.Fprintf(&out, "\nOne at a time (%d of each, each side's own event, sides interleaved):\n\n"+
		"| path | side | p50 (× floor) | p90 | p99 (× floor) | messages per event, sent / received (connz) |\n|---|---|---|---|---|---|\n", cfg.latency)
	for _, p := range onePaths {
		fl := floor.oneAt[p.name]
		for _, s := range sides {
			d := s.oneAt[p.name]
			if len(d) == 0 {
				continue
			}
			fmt.Fprintf(&out, "| %s | %s | %s (%.2f×) | %s | %s (%.2f×) | %.2f / %.2f |\n", p.name, s.name,
				ms(percentile(d, 50)), ratio(percentile(d, 50), percentile(fl, 50)), ms(percentile(d, 90)),
				ms(percentile(d, 99)), ratio(percentile(d, 99), percentile(fl, 99)),
				float64(s.oneAtSent[p.name])/float64(len(d)), float64(s.oneAtReceived[p.name])/float64(len(d)))
		}
	}
	fmt.Fprintf(&out, "\nFloors: REVOKED → stream gone against the stream and dead-letter deletes sent at once (to the advisory); "+
		"nothing left against the same two deletes finding nothing (to both replies); a leftover against a purge then delete of "+
		"the stream with the dead-letter delete beside it (to both replies).\n")

	out.WriteString("\nOn the wire, per event (a delaying proxy; background pull requests and checks left out):\n\n| path | sent | round trips | sequential before the answer | the path |\n|---|---|---|---|---|\n")
	for _, name := range wirePathOrder {
		p := wire[name]
		fmt.Fprintf(&out, "| %s | %d (%s) | %d | %d | %s |\n", name, total(p.sent), counts(p.sent), p.roundTrips, p.sequential, p.shape())
	}
	for _, s := range sides {
		if s.svc != nil && s.svc.traced {
			out.WriteString(s.terminalStages.markdown("Where REVOKED → stream gone goes (" + s.name + ")"))
			out.WriteString(s.emptyStg.markdown("Where the handshake goes, nothing left (" + s.name + ")"))
			out.WriteString(s.leftStages.markdown(fmt.Sprintf("Where the handshake goes, leftover of %d tasks (%s)", cfg.tasks, s.name)))
		}
	}
	fmt.Fprintf(&out, "\nOTLP sink received %.1f MB of spans.\n", float64(w.sink.received.Load())/1e6)
	return out.String()
}

// chunkRatios divides each round's a by its b.
func chunkRatios(a, b []time.Duration) []float64 {
	var out []float64
	for i := range min(len(a), len(b)) {
		out = append(out, ratio(a[i], b[i]))
	}
	return out
}

// spread is "median× (min / p25 / p75 / max)".
func spread(xs []float64) string {
	if len(xs) == 0 {
		return ""
	}
	ds := make([]time.Duration, len(xs))
	for i, x := range xs {
		ds[i] = time.Duration(x * 1e6)
	}
	f := func(p int) float64 { return float64(percentile(ds, p)) / 1e6 }
	return fmt.Sprintf("**%.2f×** (%.2f / %.2f / %.2f / %.2f)", f(50), f(0), f(25), f(75), f(100))
}

func perJob(d time.Duration, jobs int) string {
	if jobs == 0 {
		return ""
	}
	return strconv.FormatFloat(float64(d.Microseconds())/1000/float64(jobs), 'f', 3, 64) + " ms"
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	idx := (len(s)*p + 99) / 100
	return s[min(max(idx-1, 0), len(s)-1)]
}

func median(ds []time.Duration) time.Duration { return percentile(ds, 50) }

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) + " ms"
}
