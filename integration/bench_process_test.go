package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/integration/natstest"
)

// process is the service running as its own process: the real binary with
// its defaults, so that its CPU and memory are its own.
type process struct {
	cmd    *exec.Cmd
	logs   *bytes.Buffer
	addr   string // its HTTP listener: /metrics, /debug/pprof
	traced bool
}

// processConfig is how to start a service process.
type processConfig struct {
	// url is the NATS URL the service uses; ready, when set, is where the
	// benchmark checks that it consumes (the server, when url is a proxy).
	url, ready string
	// traced exports every span over OTLP/HTTP to sink (created, batched
	// and exported, as a collector would receive them); otherwise tracing
	// is off (OTEL_TRACES_EXPORTER=none).
	traced bool
	sink   *otlpSink
	// args are serve's flags beyond the common ones.
	args []string
}

// startProcess runs `queue-janitor serve` and waits until it pulls events.
func startProcess(b *testing.B, bin string, c processConfig) *process {
	b.Helper()
	p := &process{logs: &bytes.Buffer{}, traced: c.traced}
	p.addr = freeAddr(b)
	args := append([]string{"serve", "--nats-url", c.url, "--http-addr", p.addr, "--pprof", "--log-level", "warn",
		"--log-format", "json", "--reconcile-interval", "0"}, c.args...)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	p.cmd.Env = append(os.Environ(), "OTEL_METRICS_EXPORTER=none", "OTEL_TRACES_EXPORTER=none")
	if c.traced {
		p.cmd.Env = append(p.cmd.Env, "OTEL_TRACES_EXPORTER=otlp", "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
			"OTEL_EXPORTER_OTLP_ENDPOINT="+c.sink.URL)
	}
	if err := p.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.stop(b) })
	stream := "JOB_EVENTS"
	for i, a := range c.args {
		if a == "--event-stream" && i+1 < len(c.args) {
			stream = c.args[i+1]
		}
	}
	ready := c.ready
	if ready == "" {
		ready = c.url
	}
	_, js := natstest.Connect(b, ready)
	eventually(b, 30*time.Second, "the service consuming", func() bool { return pullWaitingOn(js, stream) > 0 })
	return p
}

// pullWaitingOn is the number of pull requests waiting on the service's
// consumer of stream.
func pullWaitingOn(js jetstream.JetStream, stream string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, stream, "queue-janitor")
	if err != nil {
		return 0
	}
	info, err := c.Info(ctx)
	if err != nil {
		return 0
	}
	return info.NumWaiting
}

func (p *process) stop(b *testing.B) {
	b.Helper()
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	_ = p.cmd.Wait()
	if b.Failed() {
		b.Logf("service output:\n%s", p.logs.String())
	}
}

// connName is the name of the process's NATS connection in /connz: the
// service names it "queue-janitor <host>-<pid>-<random>".
func (p *process) connName(b *testing.B, srv *serverProcess) string {
	b.Helper()
	mark := fmt.Sprintf("-%d-", p.cmd.Process.Pid)
	for name := range srv.connz(b) {
		if strings.HasPrefix(name, "queue-janitor ") && strings.Contains(name, mark) {
			return name
		}
	}
	b.Fatalf("no connection of process %d in /connz", p.cmd.Process.Pid)
	return ""
}

// cpu is the process's user plus system CPU time so far.
func (p *process) cpu(b *testing.B) time.Duration {
	b.Helper()
	return procCPU(b, p.cmd.Process.Pid)
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
