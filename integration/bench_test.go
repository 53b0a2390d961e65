package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"sort"
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

// BenchmarkSideBySide measures the service against the physical floor, raw
// JetStream calls on the same embedded server (file storage, like the
// backend's), in one run, and prints a markdown table of medians:
//
//   - storm: N job streams of M tasks, N terminal events at once, time until
//     the last stream is gone; beside it the same N deletes issued directly
//     with the best concurrency found;
//   - latency: one event at a time, event published → stream gone; beside it
//     a raw delete's round trip;
//   - handshake: restart_requested published → job.queue.flushed received,
//     with and without a leftover stream;
//   - large queue: one stream of many messages, through the service and raw;
//   - cost: the service's CPU per event and peak RSS during the storm.
//
// The service runs as a separate process (the real binary, telemetry and
// safety checks on), so its CPU and memory are its own. Sizes come from
// QJ_BENCH_JOBS (2000), QJ_BENCH_TASKS (500), QJ_BENCH_ROUNDS (3),
// QJ_BENCH_LATENCY (300), QJ_BENCH_LARGE (1000000). Run with
// `make bench` or `go test -run '^$' -bench SideBySide -benchtime 1x ./integration/`.
func BenchmarkSideBySide(b *testing.B) {
	cfg := benchConfig{
		jobs: benchEnv(b, "QJ_BENCH_JOBS", 2000), tasks: benchEnv(b, "QJ_BENCH_TASKS", 500),
		rounds: benchEnv(b, "QJ_BENCH_ROUNDS", 3), latency: benchEnv(b, "QJ_BENCH_LATENCY", 300),
		large: benchEnv(b, "QJ_BENCH_LARGE", 1_000_000),
	}
	bin := binary(b)
	var res benchResults
	for i := 0; i < b.N; i++ {
		for round := range cfg.rounds {
			b.Logf("round %d of %d", round+1, cfg.rounds)
			benchRound(b, bin, cfg, &res)
		}
	}
	b.StopTimer()
	table := res.markdown(cfg)
	fmt.Print("\n" + table)
	if out := os.Getenv("QJ_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(table), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(ratio(median(res.stormService), median(res.stormRaw)), "storm-ratio")
}

type benchConfig struct{ jobs, tasks, rounds, latency, large int }

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

type benchResults struct {
	stormService, stormRaw             []time.Duration
	rawConcurrency                     []int
	latencyStages                      stageSamples
	handshakeStages                    stageSamples
	handshakeLeftStages                stageSamples
	largeStages                        stageSamples
	latencyP50, latencyP90, latencyP99 []time.Duration
	rawP50, rawP99                     []time.Duration
	handshakeP50, handshakeP99         []time.Duration
	handshakeLeftP50, handshakeLeftP99 []time.Duration
	largeService, largeRaw             []time.Duration
	cpuPerEvent                        []time.Duration
	peakRSS                            []int64
}

// benchRound runs every scenario once on a fresh server.
func benchRound(b *testing.B, bin string, cfg benchConfig, res *benchResults) {
	b.Helper()
	srv := natstest.RunServer(b)
	nc, js := natstest.Connect(b, srv.URL())
	names := queue.DefaultNames()
	gone := watchGone(b, nc)

	svc := startProcess(b, bin, srv.URL())
	defer svc.stop(b)

	// Latency, one event at a time, and a raw delete's round trip.
	latBase := queue.JobID(1)
	var lat, raw []time.Duration
	published := map[queue.JobID][2]time.Time{} // event published, stream seen gone
	svc.sink.collecting.Store(true)
	for i := range cfg.latency {
		id := latBase + queue.JobID(i)
		provisionMany(b, js, names, id, 1, 10)
		start := time.Now()
		publishEvents(b, js, id, 1, events.StatusRevoked)
		gone.waitAll(b, names, id, 1, 30*time.Second)
		seen := time.Now()
		lat = append(lat, seen.Sub(start))
		published[id] = [2]time.Time{start, seen}

		rid := id + queue.JobID(cfg.latency)
		provisionMany(b, js, names, rid, 1, 10)
		start = time.Now()
		if err := js.DeleteStream(context.Background(), names.StreamName(rid)); err != nil {
			b.Fatal(err)
		}
		raw = append(raw, time.Since(start))
	}
	for i := range cfg.latency {
		id := latBase + queue.JobID(i)
		res.latencyStages.record(b, svc.sink, "process job.status.revoked", id, published[id][0], published[id][1], goneStages)
	}
	res.latencyP50 = append(res.latencyP50, percentile(lat, 50))
	res.latencyP90 = append(res.latencyP90, percentile(lat, 90))
	res.latencyP99 = append(res.latencyP99, percentile(lat, 99))
	res.rawP50 = append(res.rawP50, percentile(raw, 50))
	res.rawP99 = append(res.rawP99, percentile(raw, 99))

	// The restart handshake, without and with a leftover stream.
	hsBase := latBase + queue.JobID(2*cfg.latency) + 1000
	var plain, leftover []time.Duration
	shaken := map[queue.JobID][2]time.Time{} // restart published, flushed received
	shake := func(id queue.JobID, into *[]time.Duration) {
		start, received := handshake(b, nc, js, id)
		*into = append(*into, received.Sub(start))
		shaken[id] = [2]time.Time{start, received}
	}
	for i := range cfg.latency {
		shake(hsBase+queue.JobID(i), &plain)
		id := hsBase + queue.JobID(cfg.latency+i)
		provisionMany(b, js, names, id, 1, 500)
		shake(id, &leftover)
	}
	// The spans arrive with the exporter's batches, after the measurements.
	for i := range 2 * cfg.latency {
		id := hsBase + queue.JobID(i)
		stages := &res.handshakeStages
		if i >= cfg.latency {
			stages = &res.handshakeLeftStages
		}
		stages.record(b, svc.sink, "process job.status.restart_requested", id, shaken[id][0], shaken[id][1], flushedStages)
	}
	svc.sink.collecting.Store(false)
	res.handshakeP50 = append(res.handshakeP50, percentile(plain, 50))
	res.handshakeP99 = append(res.handshakeP99, percentile(plain, 99))
	res.handshakeLeftP50 = append(res.handshakeLeftP50, percentile(leftover, 50))
	res.handshakeLeftP99 = append(res.handshakeLeftP99, percentile(leftover, 99))

	// Storm through the service, on the same server once the one-at-a-time
	// measurements are done (a storm leaves the server busy for a while).
	base := hsBase + queue.JobID(2*cfg.latency) + 1000
	provisionMany(b, js, names, base, cfg.jobs, cfg.tasks)
	cpu0 := svc.cpu(b)
	profiled := svc.profile(b, 3*time.Second)
	start := time.Now()
	publishEvents(b, js, base, cfg.jobs, events.StatusRevoked)
	gone.waitAll(b, names, base, cfg.jobs, 5*time.Minute)
	res.stormService = append(res.stormService, time.Since(start))
	res.cpuPerEvent = append(res.cpuPerEvent, (svc.cpu(b)-cpu0)/time.Duration(cfg.jobs))
	res.peakRSS = append(res.peakRSS, svc.peakRSS(b))
	profiled()

	// The floor: the same deletes, directly, at the best concurrency found.
	conc := bestConcurrency(b, js, names, base+queue.JobID(cfg.jobs), cfg.tasks)
	rawBase := base + queue.JobID(cfg.jobs) + 1000
	provisionMany(b, js, names, rawBase, cfg.jobs, cfg.tasks)
	start = time.Now()
	deleteMany(b, js, names, rawBase, cfg.jobs, conc)
	res.stormRaw = append(res.stormRaw, time.Since(start))
	res.rawConcurrency = append(res.rawConcurrency, conc)

	// One large queue, through the service and raw.
	big := rawBase + queue.JobID(cfg.jobs) + 1000
	provisionMany(b, js, names, big, 1, cfg.large)
	svc.sink.collecting.Store(true)
	start = time.Now()
	publishEvents(b, js, big, 1, events.StatusRevoked)
	gone.waitAll(b, names, big, 1, 5*time.Minute)
	seen := time.Now()
	res.largeService = append(res.largeService, seen.Sub(start))
	res.largeStages.record(b, svc.sink, "process job.status.revoked", big, start, seen, goneStages)
	svc.sink.collecting.Store(false)
	provisionMany(b, js, names, big+1, 1, cfg.large)
	start = time.Now()
	if err := js.DeleteStream(context.Background(), names.StreamName(big+1)); err != nil {
		b.Fatal(err)
	}
	res.largeRaw = append(res.largeRaw, time.Since(start))
}

// handshake is the backend's Start path: subscribe, publish
// restart_requested, receive job.queue.flushed. It returns when it
// published and when the answer arrived.
func handshake(b *testing.B, nc *nats.Conn, js jetstream.JetStream, id queue.JobID) (published, received time.Time) {
	b.Helper()
	sub, err := nc.SubscribeSync(fmt.Sprintf("job.queue.flushed.%d", id))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	start := time.Now()
	publishEvents(b, js, id, 1, events.StatusRestartRequested)
	if _, err := sub.NextMsg(30 * time.Second); err != nil {
		b.Fatalf("job %d: no flushed: %v", id, err)
	}
	return start, time.Now()
}

// provisionMany creates n jobs' queues with tasks each, in parallel.
func provisionMany(b *testing.B, js jetstream.JetStream, names queue.Names, first queue.JobID, n, tasks int) {
	b.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			id := first + queue.JobID(i)
			if err := queue.Provision(context.Background(), js, names, id, events.Attempt(1)); err != nil {
				errs <- err
				return
			}
			publishTasks(b, js, names.SubjectName(id), 0, tasks)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// publishEvents publishes one status event for each of n jobs from first,
// asynchronously, and waits for the stream's acks.
func publishEvents(b *testing.B, js jetstream.JetStream, first queue.JobID, n int, status events.Status) {
	b.Helper()
	for i := range n {
		attempt := int64(1) // the provisioned run
		if status == events.StatusRestartRequested {
			attempt = 2
		}
		msg, err := events.StatusEvent{JobID: first + queue.JobID(i), Status: status, Attempt: &attempt}.Msg(context.Background(), "job.status.")
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

// deleteMany cleans n jobs directly, with the given concurrency: the same
// deletes as the service's (the stream, which takes its task consumer with
// it, and the dead-letter consumer), without reading or fencing anything.
func deleteMany(b *testing.B, js jetstream.JetStream, names queue.Names, first queue.JobID, n, concurrency int) {
	b.Helper()
	var wg sync.WaitGroup
	next := make(chan queue.JobID)
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range next {
				if err := js.DeleteStream(context.Background(), names.StreamName(id)); err != nil {
					b.Error(err)
				}
				err := js.DeleteConsumer(context.Background(), names.AdvisoryStream, names.DeadLetterConsumerName(id))
				if err != nil {
					b.Error(err)
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

// bestConcurrency calibrates the raw floor: it deletes small batches of
// streams at several concurrencies and returns the fastest.
func bestConcurrency(b *testing.B, js jetstream.JetStream, names queue.Names, first queue.JobID, tasks int) int {
	b.Helper()
	const batch = 200
	best, bestRate := 1, 0.0
	for i, c := range []int{1, 8, 32, 128} {
		base := first + queue.JobID(i*batch)
		provisionMany(b, js, names, base, batch, tasks)
		start := time.Now()
		deleteMany(b, js, names, base, batch, c)
		if rate := batch / time.Since(start).Seconds(); rate > bestRate {
			best, bestRate = c, rate
		}
	}
	return best
}

// goneWatcher records stream-deleted advisories.
type goneWatcher struct {
	mu   sync.Mutex
	gone map[string]bool
	cond *sync.Cond
}

func watchGone(b *testing.B, nc *nats.Conn) *goneWatcher {
	b.Helper()
	w := &goneWatcher{gone: map[string]bool{}}
	w.cond = sync.NewCond(&w.mu)
	_, err := nc.Subscribe("$JS.EVENT.ADVISORY.STREAM.DELETED.*", func(m *nats.Msg) {
		name := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		w.mu.Lock()
		w.gone[name] = true
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

// waitAll blocks until every stream of n jobs from first is gone.
func (w *goneWatcher) waitAll(b *testing.B, names queue.Names, first queue.JobID, n int, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, w.cond.Broadcast)
	defer timer.Stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range n {
		name := names.StreamName(first + queue.JobID(i))
		for !w.gone[name] {
			if time.Now().After(deadline) {
				b.Fatalf("%s not gone within %s", name, timeout)
			}
			w.cond.Wait()
		}
	}
}

// process is the service running as its own process.
type process struct {
	cmd  *exec.Cmd
	logs *bytes.Buffer
	addr string
	sink *otlpSink // where its spans go
}

// profile fetches a CPU profile of the service for d into QJ_BENCH_CPUPROFILE,
// when set, in the background; wait blocks until it is written.
func (p *process) profile(b *testing.B, d time.Duration) (wait func()) {
	b.Helper()
	out := os.Getenv("QJ_BENCH_CPUPROFILE")
	if out == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.addr, int(d.Seconds())))
		if err != nil {
			b.Error(err)
			return
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(resp.Body)
		if err := os.WriteFile(out, body, 0o600); err != nil {
			b.Error(err)
		}
	}()
	return func() { <-done }
}

func startProcess(b *testing.B, bin, url string) *process {
	b.Helper()
	p := &process{logs: &bytes.Buffer{}}
	p.addr = freeAddr(b)
	p.cmd = exec.Command(bin, "serve", "--nats-url", url, "--http-addr", p.addr, "--pprof", "--log-level", "warn",
		"--log-format", "json", "--reconcile-interval", "0")
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	// Telemetry stays on while measuring: every span is created, batched and
	// exported over OTLP/HTTP to a local sink that accepts and discards, as
	// a collector would take them; /metrics is served as always.
	p.sink = newOTLPSink(b)
	sink := p.sink
	p.cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=otlp", "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_EXPORTER_OTLP_ENDPOINT="+sink.URL, "OTEL_METRICS_EXPORTER=none")
	if err := p.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	_, js := natstest.Connect(b, url)
	eventually(b, 30*time.Second, "the service consuming", func() bool { return pullWaiting(js) > 0 })
	return p
}

func (p *process) stop(b *testing.B) {
	b.Helper()
	_ = p.cmd.Process.Signal(os.Interrupt)
	_ = p.cmd.Wait()
	if b.Failed() {
		b.Logf("service output:\n%s", p.logs.String())
	}
}

// cpu is the process's user plus system CPU time so far.
func (p *process) cpu(b *testing.B) time.Duration {
	b.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may contain spaces) start at ")".
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticksPerSecond = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticksPerSecond
}

// peakRSS is the process's high-water resident set size in bytes.
func (p *process) peakRSS(b *testing.B) int64 {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmHWM in /proc status")
	return 0
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
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

func (r *benchResults) markdown(cfg benchConfig) string {
	var w strings.Builder
	medInt := func(xs []int) int {
		s := append([]int(nil), xs...)
		sort.Ints(s)
		return s[len(s)/2]
	}
	medRSS := func(xs []int64) int64 {
		s := append([]int64(nil), xs...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2]
	}
	fmt.Fprintf(&w, "Medians of %d rounds; %d cores, GOMAXPROCS %d.\n\n", cfg.rounds, runtime.NumCPU(), runtime.GOMAXPROCS(0))
	fmt.Fprintf(&w, "| scenario | queue-janitor | raw JetStream | ratio | target |\n|---|---|---|---|---|\n")
	fmt.Fprintf(&w, "| storm: %d streams × %d tasks, all gone | %s | %s (concurrency %d) | %.2f× | ≤ 1.3× |\n",
		cfg.jobs, cfg.tasks, ms(median(r.stormService)), ms(median(r.stormRaw)), medInt(r.rawConcurrency),
		ratio(median(r.stormService), median(r.stormRaw)))
	fmt.Fprintf(&w, "| latency p50, event → stream gone (%d events) | %s | %s (delete round trip) | %.2f× | |\n",
		cfg.latency, ms(median(r.latencyP50)), ms(median(r.rawP50)), ratio(median(r.latencyP50), median(r.rawP50)))
	fmt.Fprintf(&w, "| latency p90 | %s | | | |\n", ms(median(r.latencyP90)))
	fmt.Fprintf(&w, "| latency p99 | %s | %s | %.2f× | ≤ 2× raw p99 + 2 ms = %s |\n", ms(median(r.latencyP99)), ms(median(r.rawP99)),
		ratio(median(r.latencyP99), median(r.rawP99)), ms(2*median(r.rawP99)+2*time.Millisecond))
	fmt.Fprintf(&w, "| handshake p50, restart → flushed, nothing left | %s | | | |\n", ms(median(r.handshakeP50)))
	fmt.Fprintf(&w, "| handshake p99, nothing left | %s | %s (raw delete p99) | %.2f× | ≤ 3× |\n", ms(median(r.handshakeP99)),
		ms(median(r.rawP99)), ratio(median(r.handshakeP99), median(r.rawP99)))
	fmt.Fprintf(&w, "| handshake p50, leftover of 500 tasks | %s | | | |\n", ms(median(r.handshakeLeftP50)))
	fmt.Fprintf(&w, "| handshake p99, leftover of 500 tasks | %s | %s (raw delete p99) | %.2f× | ≤ 3× |\n", ms(median(r.handshakeLeftP99)),
		ms(median(r.rawP99)), ratio(median(r.handshakeLeftP99), median(r.rawP99)))
	fmt.Fprintf(&w, "| large queue: one stream of %d messages | %s | %s | %.2f× | |\n", cfg.large, ms(median(r.largeService)),
		ms(median(r.largeRaw)), ratio(median(r.largeService), median(r.largeRaw)))
	fmt.Fprintf(&w, "| service CPU per event (storm) | %s | | | |\n", strconv.FormatFloat(float64(median(r.cpuPerEvent).Microseconds())/1000, 'f', 3, 64)+" ms")
	fmt.Fprintf(&w, "| service peak RSS (storm) | %.1f MiB | | | < 64 MiB |\n", float64(medRSS(r.peakRSS))/(1<<20))
	var per []string
	var ratios []time.Duration // ratio × 1000, to reuse the median helper
	for i := range r.stormService {
		q := ratio(r.stormService[i], r.stormRaw[i])
		per = append(per, fmt.Sprintf("%.2f×", q))
		ratios = append(ratios, time.Duration(q*1000))
	}
	fmt.Fprintf(&w, "\nStorm ratio per round (service / raw, same server, same round): %s; median %.2f×.\n",
		strings.Join(per, ", "), float64(median(ratios))/1000)
	w.WriteString(r.latencyStages.markdown("Where the latency goes, event published → stream gone"))
	w.WriteString(r.handshakeStages.markdown("Where the handshake goes, nothing left"))
	w.WriteString(r.handshakeLeftStages.markdown("Where the handshake goes, leftover of 500 tasks"))
	w.WriteString(r.largeStages.markdown(fmt.Sprintf("Where the large queue's time goes, one stream of %d messages", cfg.large)))
	return w.String()
}
