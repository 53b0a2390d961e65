package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// BenchmarkSweep measures one reconciler pass over many job streams (10,000
// by default, QJ_BENCH_STREAMS) beside a plain listing of the same streams
// on the same server. The sweep runs as `queue-janitor sweep --dry-run`, its
// own process, so that its time and peak memory are its own; it judges
// every stream (the job's record and its task consumer are read for each),
// which is the work of a real pass minus the removals.
func BenchmarkSweep(b *testing.B) {
	n := benchEnv(b, "QJ_BENCH_STREAMS", 10_000)
	bin := binary(b)
	srv := natstest.RunServer(b)
	_, js := natstest.Connect(b, srv.URL())
	names := queue.DefaultNames()
	createJobStreams(b, js, names, n)
	// The bucket, as a running service would have created it.
	if _, err := queue.OpenStore(context.Background(), js, queue.StoreConfig{Bucket: "queue_janitor_jobs", Replicas: 1}); err != nil {
		b.Fatal(err)
	}

	var list, sweep []time.Duration
	var rss []int64
	for i := 0; i < b.N; i++ {
		start := time.Now()
		seen := 0
		l := js.ListStreams(context.Background(), jetstream.WithStreamListSubject(names.SubjectFilter()))
		for range l.Info() {
			seen++
		}
		if err := l.Err(); err != nil || seen != n {
			b.Fatalf("listing saw %d streams (%v), want %d", seen, err, n)
		}
		list = append(list, time.Since(start))

		var out bytes.Buffer
		cmd := exec.Command(bin, "sweep", "--dry-run", "--nats-url", srv.URL())
		cmd.Stdout, cmd.Stderr = &out, &out
		start = time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		peak := watchPeakRSS(cmd.Process.Pid)
		if err := cmd.Wait(); err != nil {
			b.Fatalf("sweep: %v\n%s", err, out.String())
		}
		sweep = append(sweep, time.Since(start))
		rss = append(rss, peak())
		if !strings.Contains(out.String(), fmt.Sprintf("streams seen %d;", n)) {
			b.Fatalf("sweep did not see %d streams:\n%s", n, out.String())
		}
	}
	b.StopTimer()
	table := fmt.Sprintf("| %d job streams | sweep --dry-run (process): %s, peak RSS %.1f MiB | plain listing: %s | ratio %.1f× |\n",
		n, ms(median(sweep)), float64(medianInt64(rss))/(1<<20), ms(median(list)), ratio(median(sweep), median(list)))
	fmt.Print("\n" + table)
	if out := os.Getenv("QJ_BENCH_SWEEP_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(table), 0o600); err != nil {
			b.Fatal(err)
		}
	}
}

// watchPeakRSS polls the process's high-water RSS (VmHWM) until it exits
// and returns a function giving the last value read. (The child's rusage
// would not do: Go starts children with a shared address space until exec,
// so their ru_maxrss counts the parent's pages.)
func watchPeakRSS(pid int) func() int64 {
	var mu sync.Mutex
	var peak int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err != nil {
				return
			}
			for _, line := range strings.Split(string(status), "\n") {
				if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
					var kb int64
					_, _ = fmt.Sscan(rest, &kb)
					mu.Lock()
					peak = max(peak, kb<<10)
					mu.Unlock()
				}
			}
			if !strings.Contains(string(status), "VmHWM:") { // a zombie: it has exited
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return func() int64 {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
}

// createJobStreams creates n job streams with their task consumers, as the
// backend would (without the dead-letter consumers, which a sweep does not
// read).
func createJobStreams(b *testing.B, js jetstream.JetStream, names queue.Names, n int) {
	b.Helper()
	var wg sync.WaitGroup
	ids := make(chan queue.JobID)
	var mu sync.Mutex
	var firstErr error
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := js.CreateStream(ctx, names.TaskStreamConfig(id, nil))
				if err == nil || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
					_, err = js.CreateOrUpdateConsumer(ctx, names.StreamName(id), jetstream.ConsumerConfig{
						Durable: names.ConsumerName(id), AckPolicy: jetstream.AckExplicitPolicy})
				}
				cancel()
				if err != nil {
					mu.Lock()
					firstErr = errors.Join(firstErr, fmt.Errorf("job %d: %w", id, err))
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		ids <- queue.JobID(i + 1)
	}
	close(ids)
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
}

func medianInt64(xs []int64) int64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]int64(nil), xs...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}
