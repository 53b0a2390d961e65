package integration

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/cmd/queue-janitor/cli"
	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

var update = flag.Bool("update", false, "rewrite the golden files of the CLI output tests")

type bytesBuffer = bytes.Buffer

// runCLI runs a queue-janitor command in-process and fails the test if it
// fails.
func runCLI(t *testing.T, out *bytes.Buffer, args ...string) {
	t.Helper()
	if err := runCLIErr(t, out, args...); err != nil {
		t.Fatalf("queue-janitor %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
}

func runCLIErr(t *testing.T, out *bytes.Buffer, args ...string) error {
	t.Helper()
	return cli.Run(t.Context(), args, testEnv, out, zerolog.NewTestWriter(t))
}

// testEnv is the environment of the commands the tests run: every test's
// server started empty, so no earlier bucket can have held a claim (the
// bucket-loss tests set up their own).
func testEnv(k string) string {
	if k == "QUEUE_JANITOR_TRUST_NEW_BUCKET" {
		return "true"
	}
	return ""
}

func assertContains(t *testing.T, text string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(text, w) {
			t.Errorf("output lacks %q:\n%s", w, text)
		}
	}
}

// normalize removes what changes from run to run: times, ages, durations,
// ids, ports, and the alignment that their widths cause.
var volatile = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?Z?`), "<TIME>"},
	{regexp.MustCompile(`"age_seconds": [0-9.e+-]+`), `"age_seconds": <AGE>`},
	{regexp.MustCompile(`\b\d+(\.\d+)?(ms|µs|s|m|h)(\d+(\.\d+)?(ms|s|m))*\b`), "<DUR>"},
	{regexp.MustCompile(`\b\d+d\d+h\b`), "<DUR>"},
	{regexp.MustCompile(`127\.0\.0\.1:\d+`), "127.0.0.1:<PORT>"},
	{regexp.MustCompile(`[ \t]+`), " "},
}

func normalize(s string) string {
	for _, v := range volatile {
		s = v.re.ReplaceAllString(s, v.with)
	}
	return s
}

// golden compares output with testdata/golden/name.golden (go test
// ./integration -run TestCLIGolden -update rewrites it).
func golden(t *testing.T, name, output string) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name+".golden")
	got := normalize(output)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o600); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from %s:\n--- got\n%s\n--- want\n%s", name, path, got, want)
	}
}

// TestCLIGolden: the output of ls (table and JSON), sweep --dry-run, clean,
// and the error for an unreachable server, against golden files.
func TestCLIGolden(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startService()
	store := e.store(t)
	two := int64(2)
	e.provision(11, 25, events.Attempt(2))
	e.provision(12, 7, events.Attempt(1))
	e.provision(13, 3, nil)
	if _, err := store.Put(t.Context(), 11, queue.Record{Attempt: &two, Time: time.Now(), EventID: "ev-11", Status: "revoked",
		State: queue.StateTerminal, Done: true}, 0); err != nil {
		t.Fatal(err)
	}
	e.emit(events.StatusEvent{JobID: 12, Status: events.StatusStarted, Attempt: events.Attempt(1)})
	e.waitSettled(t)
	if n := drainTasks(t, e.js, e.names, 12, 4, nil); n != 4 {
		t.Fatalf("worker took %d", n)
	}

	var out bytes.Buffer
	runCLI(t, &out, "ls", "--nats-url", e.url, "--reconcile-grace", "0s")
	golden(t, "ls", out.String())

	out.Reset()
	runCLI(t, &out, "ls", "--json", "--nats-url", e.url, "--state", "terminal", "--reconcile-grace", "0s")
	golden(t, "ls-json-terminal", out.String())

	out.Reset()
	runCLI(t, &out, "sweep", "--dry-run", "--nats-url", e.url, "--reconcile-grace", "0s")
	golden(t, "sweep-dry-run", out.String())
	e.assertRun(t, 11, 25)

	out.Reset()
	runCLI(t, &out, "clean", "11", "13", "--nats-url", e.url)
	golden(t, "clean", out.String())
	if streamExists(t, e.js, "job_11") || streamExists(t, e.js, "job_13") {
		t.Error("clean left a stream")
	}

	out.Reset()
	err := runCLIErr(t, &out, "clean", "12", "--nats-url", e.url)
	if err == nil || !strings.Contains(err.Error(), "use --force") {
		t.Errorf("cleaning a live job: err = %v, want a refusal naming --force", err)
	}
	e.assertRun(t, 12, 7)

	out.Reset()
	err = runCLIErr(t, &out, "ls", "--nats-url", "nats://127.0.0.1:1", "--nats-connect-timeout", "1s")
	if err == nil {
		t.Fatal("ls against a dead server succeeded")
	}
	golden(t, "unreachable", err.Error()+"\n")
}
