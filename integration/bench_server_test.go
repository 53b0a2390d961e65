package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The benchmark's NATS server runs as a process of its own, so that its CPU
// time is its own (/proc/<pid>/stat) and not mixed with the load generator's,
// and its monitoring port gives per-connection message counts (/connz). It is
// nats-server built from the module version in go.mod, the same code that
// the tests embed.

var (
	natsBuildOnce sync.Once
	natsBinPath   string
	natsBuildErr  error
)

// natsServerBinary builds nats-server once per run, from go.mod's version.
func natsServerBinary(tb testing.TB) string {
	tb.Helper()
	natsBuildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "qj-bench-nats-") //nolint:usetesting // outlives any one benchmark
		if err != nil {
			natsBuildErr = err
			return
		}
		natsBinPath = filepath.Join(dir, "nats-server")
		out, err := exec.Command("go", "build", "-o", natsBinPath, "github.com/nats-io/nats-server/v2").CombinedOutput()
		if err != nil {
			natsBuildErr = fmt.Errorf("go build nats-server: %w\n%s", err, out)
		}
	})
	if natsBuildErr != nil {
		tb.Fatal(natsBuildErr)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(filepath.Dir(natsBinPath)) })
	return natsBinPath
}

// serverProcess is a nats-server process with JetStream (file storage in a
// temporary directory), its monitoring port and its profiling port.
type serverProcess struct {
	cmd      *exec.Cmd
	logs     *lockedBuffer
	url      string
	monitor  string // http://host:port of /connz, /varz
	profiler string // http://host:port of /debug/pprof
}

func startServerProcess(tb testing.TB) *serverProcess {
	tb.Helper()
	bin := natsServerBinary(tb)
	client, monitor, profiler := freeAddr(tb), freeAddr(tb), freeAddr(tb)
	host, port, _ := net.SplitHostPort(client)
	_, mport, _ := net.SplitHostPort(monitor)
	_, pport, _ := net.SplitHostPort(profiler)
	s := &serverProcess{logs: &lockedBuffer{}, url: "nats://" + client, monitor: "http://" + monitor, profiler: "http://" + profiler}
	s.cmd = exec.Command(bin, "-a", host, "-p", port, "-js", "-sd", tb.TempDir(), "-m", mport, "--profile", pport)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	// One line per garbage collection on standard error, to count them.
	s.cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
	if err := s.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.stop(tb) })
	eventually(tb, 30*time.Second, "nats-server healthy", func() bool {
		resp, err := http.Get(s.monitor + "/healthz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return s
}

func (s *serverProcess) stop(tb testing.TB) {
	tb.Helper()
	if s.cmd.ProcessState != nil {
		return
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	if tb.Failed() {
		tb.Logf("nats-server output:\n%s", s.logs.String())
	}
}

// connCounts is one client connection's message counts, as the server keeps
// them: in is what the client sent, out what the server sent it.
type connCounts struct {
	Name    string `json:"name"`
	InMsgs  int64  `json:"in_msgs"`
	OutMsgs int64  `json:"out_msgs"`
}

// connz returns every client connection's counts, by connection name.
// Several connections of one name are added up.
func (s *serverProcess) connz(tb testing.TB) map[string]connCounts {
	tb.Helper()
	resp, err := http.Get(s.monitor + "/connz?limit=100000")
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var body struct {
		Connections []connCounts `json:"connections"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		tb.Fatalf("connz: %v", err)
	}
	out := map[string]connCounts{}
	for _, c := range body.Connections {
		cur := out[c.Name]
		cur.Name = c.Name
		cur.InMsgs += c.InMsgs
		cur.OutMsgs += c.OutMsgs
		out[c.Name] = cur
	}
	return out
}

// gcStats is what the server's garbage collector did so far: cycles, the
// CPU time they took (gctrace's "ms cpu", all phases), and the live heap
// the last one left, in MB.
func (s *serverProcess) gcStats() (cycles int, cpu time.Duration, liveMB int) {
	for _, line := range strings.Split(s.logs.String(), "\n") {
		if !strings.HasPrefix(line, "gc ") {
			continue
		}
		cycles++
		// "..., 4->4->2 MB, ..."
		if heap, _, ok := strings.Cut(line, " MB,"); ok {
			if i := strings.LastIndex(heap, "->"); i >= 0 {
				liveMB, _ = strconv.Atoi(heap[i+2:])
			}
		}
		// "... ms clock, 0.036+0.5/1.0/0+0.006 ms cpu, ..."
		if _, rest, ok := strings.Cut(line, " ms clock, "); ok {
			if phases, _, ok := strings.Cut(rest, " ms cpu"); ok {
				for _, f := range strings.FieldsFunc(phases, func(r rune) bool { return r == '+' || r == '/' }) {
					if v, err := strconv.ParseFloat(f, 64); err == nil {
						cpu += time.Duration(v * float64(time.Millisecond))
					}
				}
			}
		}
	}
	return cycles, cpu, liveMB
}

// allocated is how many bytes and objects the server has allocated so far
// (runtime.MemStats TotalAlloc and Mallocs, from its profiling port).
func (s *serverProcess) allocated(tb testing.TB) (bytes, objects uint64) {
	tb.Helper()
	resp, err := http.Get(s.profiler + "/debug/pprof/heap?debug=1")
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "# TotalAlloc = "); ok {
			bytes, _ = strconv.ParseUint(v, 10, 64)
		}
		if v, ok := strings.CutPrefix(line, "# Mallocs = "); ok {
			objects, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	return bytes, objects
}

// saveHeap writes the server's heap profile (allocations since it started)
// to path; two of them, before and after a chunk, give what the chunk
// allocated: go tool pprof -sample_index=alloc_space -base before after.
// It collects garbage first, since a heap profile is brought up to date
// only by a collection: call it outside measured windows.
func (s *serverProcess) saveHeap(tb testing.TB, path string) {
	tb.Helper()
	resp, err := http.Get(s.profiler + "/debug/pprof/heap?gc=1")
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, body, 0o600); err != nil {
		tb.Fatal(err)
	}
}

// lockedBuffer is a buffer that a process writes while the benchmark reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// cpu is the server process's CPU time so far.
func (s *serverProcess) cpu(tb testing.TB) time.Duration {
	tb.Helper()
	return procCPU(tb, s.cmd.Process.Pid)
}

// profile starts a CPU profile of the server for d and returns a function
// that waits for it and writes it to path.
func (s *serverProcess) profile(tb testing.TB, d time.Duration, path string) (wait func()) {
	tb.Helper()
	return fetchProfile(tb, s.profiler, d, path)
}

// fetchProfile takes a CPU profile over HTTP (net/http/pprof at base) for d,
// in the background; wait blocks until it is written to path.
func fetchProfile(tb testing.TB, base string, d time.Duration, path string) (wait func()) {
	tb.Helper()
	done := make(chan error, 1)
	go func() {
		secs := max(1, int((d+time.Second-1)/time.Second))
		resp, err := http.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, secs))
		if err != nil {
			done <- err
			return
		}
		defer func() { _ = resp.Body.Close() }()
		body, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("profile %s: %s: %s", base, resp.Status, body)
		}
		if err == nil {
			err = os.WriteFile(path, body, 0o600)
		}
		done <- err
	}()
	// The profile starts when the server has read the request.
	time.Sleep(50 * time.Millisecond)
	return func() {
		if err := <-done; err != nil {
			tb.Error(err)
		}
	}
}

// procCPU is a process's user plus system CPU time so far, all threads.
func procCPU(tb testing.TB, pid int) time.Duration {
	tb.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command name (which may contain spaces) start at ")".
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticksPerSecond = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticksPerSecond
}

// settle waits until the server has been quiet (at most one clock tick of
// CPU in a 200 ms window) or limit has passed, and says how long it waited.
func (s *serverProcess) settle(tb testing.TB, limit time.Duration) time.Duration {
	tb.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		before := s.cpu(tb)
		time.Sleep(200 * time.Millisecond)
		if s.cpu(tb)-before <= 10*time.Millisecond {
			break
		}
	}
	return time.Since(start)
}

// loadAverage is the one-minute load average, for the report.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Fields(string(b))[0]
}
