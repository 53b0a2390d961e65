package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds cmd/queue-janitor once per test run.
func binary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		// Shared by every test of the run, so not a t.TempDir.
		dir, err := os.MkdirTemp("", "queue-janitor-bin-") //nolint:usetesting // outlives any one test
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "queue-janitor")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/queue-janitor").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return binPath
}

// TestSIGTERMMidBurst: SIGTERM in the middle of a burst of events. The
// process exits 0 within its shutdown bound; after a restart every job's
// cleanup has happened, each stream removed exactly once.
func TestSIGTERMMidBurst(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const jobs = 80
	for id := queue.JobID(1); id <= jobs; id++ {
		e.provision(id, 100, nil)
	}
	answers := collectAnswers(t, e.nc)

	svc := startServeProcess(t, e, "--shutdown-timeout", "10s", "--concurrency", "4")

	for id := queue.JobID(1); id <= jobs; id++ {
		e.emit(events.StatusEvent{ID: fmt.Sprintf("revoke-%d", id), JobID: id, Status: events.StatusRevoked})
	}
	eventually(t, 30*time.Second, "a few cleanups", func() bool { return answers.count() >= 5 })
	took := svc.sigterm(t, 20*time.Second)
	t.Logf("exited 0 %s after SIGTERM (--shutdown-timeout 10s), %d of %d jobs answered by then", took, answers.count(), jobs)

	e.startService()
	e.awaitJobsGone(t, jobs, 30*time.Second, "every job cleaned after the restart")
	e.waitSettled(t)
	if twice := answers.removedMoreThanOnce(); len(twice) > 0 {
		t.Errorf("streams removed more than once: %v", twice)
	}
	for id := queue.JobID(1); id <= jobs; id++ {
		if !answers.has(fmt.Sprintf("revoke-%d", id)) {
			t.Errorf("job %d's REVOKED was never answered", id)
		}
	}
}

func (a *answerLog) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byCause)
}

// TestSIGTERMWithEffectsStuck: SIGTERM while NATS is down and the effects
// in flight are retrying. The process does not wait for them past
// --shutdown-timeout: it exits 0 within that bound plus the margin the
// deploy files allow for closing (15s), leaves the events unacked, and
// after NATS and the service come back every job is cleaned, those it was
// working on once their per-job leases (--lease) have expired.
func TestSIGTERMWithEffectsStuck(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const jobs = 10
	const shutdownTimeout, closeMargin = 2 * time.Second, 15 * time.Second
	for id := queue.JobID(1); id <= jobs; id++ {
		e.provision(id, 10, nil)
	}
	svc := startServeProcess(t, e, "--shutdown-timeout", shutdownTimeout.String(), "--effect-timeout", "2m",
		"--retry-max-elapsed", "5s", "--retry-attempt-timeout", "300ms", "--ack-wait", "5s", "--lease", "10s")
	logs := svc.logs
	// Only retries once the service consumes count: on a busy machine its
	// start-up can retry too (opening the bucket), with no effect in flight.
	consuming := len(logs.String())
	retrying := func() bool { return strings.Contains(logs.String()[consuming:], "transient NATS error; retrying") }

	// Stop NATS under a burst until effects are caught retrying.
	var id queue.JobID
	for id = 1; id <= jobs && !retrying(); id++ {
		e.emit(events.StatusEvent{JobID: id, Status: events.StatusRevoked})
		if id%5 == 0 {
			e.srv.Stop()
			for down := time.Now(); time.Since(down) < 2*time.Second && !retrying(); {
				time.Sleep(50 * time.Millisecond)
			}
			if !retrying() {
				e.srv.Restart(t)
			}
		}
	}
	if !retrying() {
		t.Fatal("no effect was caught in flight by the outages")
	}
	took := svc.sigterm(t, shutdownTimeout+closeMargin)
	t.Logf("exited 0 %s after SIGTERM with effects stuck (--shutdown-timeout %s)", took, shutdownTimeout)
	if !strings.Contains(logs.String(), "shutdown: events still in flight") {
		t.Error("the shutdown did not say that events in flight were left for redelivery")
	}

	e.srv.Restart(t)
	for ; id <= jobs; id++ {
		e.emit(events.StatusEvent{JobID: id, Status: events.StatusRevoked})
	}
	e.startService()
	e.awaitJobsGone(t, jobs, 60*time.Second, "every job cleaned after the restart and the leases' expiry")
}

// serveProcess is `queue-janitor serve` running as its own process.
type serveProcess struct {
	cmd    *exec.Cmd
	logs   *syncBuffer
	exited chan error
}

// startServeProcess runs the binary's serve against e's server with extra
// flags, and waits until it consumes. It is killed at the end of the test,
// and its output shown if the test failed.
func startServeProcess(t *testing.T, e *env, extra ...string) *serveProcess {
	t.Helper()
	p := &serveProcess{logs: &syncBuffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(binary(t), append([]string{"serve", "--nats-url", e.url, "--http-addr", "",
		"--reconcile-interval", "0", "--log-format", "json", "--trust-new-bucket"}, extra...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("service output:\n%s", p.logs.String())
		}
	})
	eventually(t, 30*time.Second, "the process consuming", func() bool { return pullWaiting(e.js) > 0 })
	return p
}

// sigterm sends SIGTERM and requires exit status 0 within bound; it returns
// how long the process took.
func (p *serveProcess) sigterm(t *testing.T, bound time.Duration) time.Duration {
	t.Helper()
	sent := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			t.Fatalf("exit status %d after SIGTERM, want 0", exitErr.ExitCode())
		} else if err != nil {
			t.Fatal(err)
		}
		return time.Since(sent).Round(time.Millisecond)
	case <-time.After(bound):
		t.Fatalf("still running %s after SIGTERM: the shutdown waited past its bound", bound)
		return 0
	}
}
