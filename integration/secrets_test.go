package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/example/queue-janitor/cmd/queue-janitor/cli"
	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// secretCase is one way of handing the commands a secret: flags or
// variables, against a server that accepts or refuses them.
type secretCase struct {
	name    string
	url     string            // the server, for --nats-url unless the URL is the secret
	args    []string          // flags given to every command
	env     map[string]string // variables seen by every command
	secrets []string          // none may appear in any output
	refused bool
	job     queue.JobID // its own jobs: job for clean, job+1 for flush, job+2 for emit
}

// both returns the case with the secret given as flags and as variables.
func both(name, url string, refused bool, secrets []string, flags ...string) []secretCase {
	env := map[string]string{}
	for i := 0; i+1 < len(flags); i += 2 {
		env[strings.ToUpper(strings.ReplaceAll(strings.TrimPrefix(flags[i], "--"), "-", "_"))] = flags[i+1]
	}
	return []secretCase{
		{name: name + "/flags", url: url, args: flags, secrets: secrets, refused: refused},
		{name: name + "/env", url: url, env: env, secrets: secrets, refused: refused},
	}
}

// TestNoSecretInAnyOutput runs every command and serve with secrets given
// through each flag and variable, against servers that accept and refuse
// them, and looks for the secrets in standard output and error, the
// returned error, the spans (recorded and printed by the console
// exporter), /readyz and /metrics. None may appear.
func TestNoSecretInAnyOutput(t *testing.T) {
	t.Parallel()
	servers := map[string]func(*testing.T) []secretCase{
		"user-password": userPasswordSecrets,
		"token":         tokenSecrets,
		"nkey":          nkeySecrets,
		"creds":         credsSecrets,
		"tls":           tlsSecrets,
	}
	for name, build := range servers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			for _, c := range build(t) {
				t.Run(c.name, func(t *testing.T) {
					t.Parallel()
					checkNoSecret(t, c)
				})
			}
		})
	}
}

// runSecretCommand runs one command of case c and returns everything it
// let out: stdout, stderr, its error and its spans.
func runSecretCommand(t *testing.T, c secretCase, args ...string) (string, error) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	var stdout, stderr syncBuffer
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := cli.RunWithHooks(ctx, append(args, c.args...), c.getenv(), &stdout, &stderr,
		cli.Hooks{SpanProcessors: []sdktrace.SpanProcessor{rec}})
	return fmt.Sprintf("stdout:\n%s\nstderr:\n%s\nerror: %v\nspans:\n%s", stdout.String(), stderr.String(), err,
		dumpSpans(rec.Ended())), err
}

func (c secretCase) getenv() func(string) string {
	env := map[string]string{"NATS_URL": c.url, "NATS_CONNECT_TIMEOUT": "3s", "OTEL_TRACES_EXPORTER": "console",
		"QUEUE_JANITOR_LOG_LEVEL": "debug", "QUEUE_JANITOR_RECONCILE_GRACE": "0s",
		"QUEUE_JANITOR_TRUST_NEW_BUCKET": "true"} // the test's server started empty
	for k, v := range c.env {
		env[k] = v
	}
	return func(k string) string { return env[k] }
}

func dumpSpans(spans []sdktrace.ReadOnlySpan) string {
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "%s %v status=%v links=%v resource=%v\n", s.Name(), s.Attributes(), s.Status(), s.Links(), s.Resource().Attributes())
		for _, e := range s.Events() {
			fmt.Fprintf(&b, "  event %s %v\n", e.Name, e.Attributes)
		}
	}
	return b.String()
}

// checkNoSecret runs every command, --help, and serve for case c.
func checkNoSecret(t *testing.T, c secretCase) {
	t.Helper()
	commands := [][]string{
		{"ls"}, {"ls", "--json"}, {"sweep", "--dry-run"}, {"clean", c.job.String()}, {"flush", (c.job + 1).String()},
		{"emit", "--job", (c.job + 2).String(), "--status", "revoked"}, {"ls", "--help"}, {"serve", "--help"}, {"ls", "--no-such-flag"},
	}
	for _, args := range commands {
		out, err := runSecretCommand(t, c, args...)
		assertNoSecret(t, c, strings.Join(args, " "), out)
		if args[len(args)-1] == "--help" || strings.HasPrefix(args[len(args)-1], "--no-such") {
			continue
		}
		if c.refused != (err != nil) {
			t.Errorf("%s: err = %v, want refused %v\n%s", strings.Join(args, " "), err, c.refused, out)
		}
	}
	out, err := runSecretServe(t, c)
	assertNoSecret(t, c, "serve", out)
	if c.refused != (err != nil) {
		t.Errorf("serve: err = %v, want refused %v\n%s", err, c.refused, out)
	}
	// The capture must hold what it is meant to search: the spans, the
	// metrics and the health answer of a running service, the masked URL of
	// a refusal.
	switch {
	case !c.refused:
		assertContains(t, out, "process job.status.", "queue_janitor_", `"status":"ready"`, "queue-janitor serving")
	case strings.Contains(c.name, "/url"):
		assertContains(t, out, Mask+"@127.0.0.1:")
	}
}

// Mask is what a secret is replaced with.
const Mask = "xxxxx"

// runSecretServe runs serve until /readyz answers 200 (or it fails), and
// returns its output with the /readyz and /metrics answers.
func runSecretServe(t *testing.T, c secretCase) (string, error) {
	t.Helper()
	addr := freeAddr(t)
	rec := tracetest.NewSpanRecorder()
	var stdout, stderr syncBuffer
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	args := append([]string{"serve", "--http-addr", addr, "--log-format", "json", "--reconcile-interval", "200ms", "--trust-new-bucket",
		"--consumer", "janitor-" + strings.NewReplacer("/", "-").Replace(c.name)}, c.args...)
	go func() {
		done <- cli.RunWithHooks(ctx, args, c.getenv(), &stdout, &stderr, cli.Hooks{SpanProcessors: []sdktrace.SpanProcessor{rec}})
	}()
	var readyz, metrics string
	var err error
	deadline := time.Now().Add(30 * time.Second)
wait:
	for {
		select {
		case err = <-done:
			break wait
		default:
		}
		code, body := httpGet(t, "http://"+addr+"/readyz")
		readyz = body
		if code == http.StatusOK {
			// What the capture must hold: an event handled (its span). A
			// busy machine takes its time; the minute guards a hang.
			for end := time.Now().Add(time.Minute); !spanEnded(rec, "process job.status."); time.Sleep(50 * time.Millisecond) {
				if time.Now().After(end) {
					t.Errorf("serve was ready but handled no event within a minute")
					break
				}
			}
			time.Sleep(500 * time.Millisecond) // a reconciler pass or two, more output to search
			_, metrics = httpGet(t, "http://"+addr+"/metrics")
			// Both answers are searched; the later one may be unready on a
			// busy machine (a check out of its time), which is not this
			// test's matter.
			_, later := httpGet(t, "http://"+addr+"/readyz")
			readyz += "\n" + later
			cancel()
			err = <-done
			break
		}
		if time.Now().After(deadline) {
			cancel()
			err = <-done
			t.Errorf("serve was not ready within 30s (last /readyz: %s)", readyz)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Sprintf("stdout:\n%s\nstderr:\n%s\nerror: %v\n/readyz: %s\n/metrics:\n%s\nspans:\n%s", stdout.String(),
		stderr.String(), err, readyz, metrics, dumpSpans(rec.Ended())), err
}

// spanEnded reports whether a span whose name starts with prefix has ended.
func spanEnded(rec *tracetest.SpanRecorder, prefix string) bool {
	for _, s := range rec.Ended() {
		if strings.HasPrefix(s.Name(), prefix) {
			return true
		}
	}
	return false
}

func assertNoSecret(t *testing.T, c secretCase, what, out string) {
	t.Helper()
	for _, s := range c.secrets {
		if strings.Contains(out, s) {
			t.Errorf("%s: the secret %q appears in the output:\n%s", what, s, out)
		}
	}
}

// withJobs gives each case its own jobs, and the server's account the
// event stream and those jobs' queues, so that the commands have something
// to list, clean and flush, and cases running in parallel do not contend
// for one job's lease.
func withJobs(t *testing.T, url string, cases []secretCase, opts ...nats.Option) []secretCase {
	t.Helper()
	_, js := natstest.Connect(t, url, opts...)
	ensureEventStream(t, js)
	for i := range cases {
		cases[i].job = queue.JobID(100 + 10*i)
		for _, id := range []queue.JobID{cases[i].job, cases[i].job + 1} {
			if err := queue.Provision(t.Context(), js, queue.DefaultNames(), id, events.Attempt(1)); err != nil {
				t.Fatal(err)
			}
			publishTasks(t, js, queue.DefaultNames().SubjectName(id), 0, 3)
		}
	}
	return cases
}

func userPasswordSecrets(t *testing.T) []secretCase {
	t.Helper()
	const user, password, wrong = "qj-url-user", "pw-accepted-Q7x", "pw-refused-Z9k"
	srv := natstest.RunServer(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "backend", Password: "backend-pw"}, {Username: user, Password: password}}
	})
	url := srv.URL()
	backend := []nats.Option{nats.UserInfo("backend", "backend-pw")}
	hostPort := strings.TrimPrefix(url, "nats://")
	dead := strings.TrimPrefix(natstestDeadURL(t), "nats://")
	var cases []secretCase
	for _, refused := range []bool{false, true} {
		pw, tag := password, "accepted"
		if refused {
			pw, tag = wrong, "refused"
		}
		inURL := fmt.Sprintf("nats://%s:%s@%s", user, pw, hostPort)
		list := fmt.Sprintf("nats://other-user:pw-second-K2v@%s, %s", dead, inURL)
		cases = append(cases, both(tag+"/user-password", url, refused, []string{pw}, "--nats-user", user, "--nats-password", pw)...)
		cases = append(cases, both(tag+"/url", url, refused, []string{pw, user}, "--nats-url", inURL)...)
		cases = append(cases, both(tag+"/url-list", url, refused, []string{pw, user, "pw-second-K2v", "other-user"}, "--nats-url", list)...)
	}
	return withJobs(t, url, cases, backend...)
}

func tokenSecrets(t *testing.T) []secretCase {
	t.Helper()
	const token, wrong = "tok-accepted-K3m", "tok-refused-J8n"
	srv := natstest.RunServer(t, func(o *server.Options) { o.Authorization = token })
	url := srv.URL()
	backend := []nats.Option{nats.Token(token)}
	hostPort := strings.TrimPrefix(url, "nats://")
	var cases []secretCase
	for _, refused := range []bool{false, true} {
		tok, tag := token, "accepted"
		if refused {
			tok, tag = wrong, "refused"
		}
		cases = append(cases, both(tag+"/token", url, refused, []string{tok}, "--nats-token", tok)...)
		cases = append(cases, both(tag+"/url", url, refused, []string{tok}, "--nats-url", "nats://"+tok+"@"+hostPort)...)
	}
	return withJobs(t, url, cases, backend...)
}

// seedOf returns the secrets in an NKey seed or .creds file: the seed and
// any JWT.
func seedOf(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path) //nolint:gosec // the test's own file
	if err != nil {
		t.Fatal(err)
	}
	kp, err := nkeys.ParseDecoratedNKey(data)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{string(seed)}
	if j, err := jwt.ParseDecoratedJWT(data); err == nil && j != string(data) {
		out = append(out, j)
	}
	return out
}

func nkeySecrets(t *testing.T) []secretCase {
	t.Helper()
	m := nkeyMode(t)
	srv := natstest.RunServer(t, m.server)
	url := srv.URL()
	backend := m.backend
	cases := both("accepted/seed", url, false, seedOf(t, m.args[1]), m.args...)
	cases = append(cases, both("refused/seed", url, true, seedOf(t, m.refused[0].args[1]), m.refused[0].args...)...)
	// A seed with a broken checksum is refused before connecting; its
	// content must not be quoted either.
	broken := []byte(seedOf(t, m.args[1])[0])
	broken[20] ^= 'A' ^ 'B' // a data character: the last one holds padding bits
	path := filepath.Join(t.TempDir(), "broken.nk")
	if err := os.WriteFile(path, broken, 0o600); err != nil {
		t.Fatal(err)
	}
	cases = append(cases, both("refused/broken-seed", url, true, []string{string(broken), string(broken[4:40])}, "--nats-nkey-seed", path)...)
	return withJobs(t, url, cases, backend...)
}

func credsSecrets(t *testing.T) []secretCase {
	t.Helper()
	m := credsMode(t)
	srv := natstest.RunServer(t, m.server)
	url := srv.URL()
	backend := m.backend
	cases := both("accepted/creds", url, false, seedOf(t, m.args[1]), m.args...)
	for _, r := range m.refused[:2] { // unknown account, revoked user
		cases = append(cases, both("refused/creds-"+strings.ReplaceAll(r.name, " ", "-"), url, true, seedOf(t, r.args[1]), r.args...)...)
	}
	return withJobs(t, url, cases, backend...)
}

// tlsSecrets: key paths may be shown, key material never.
func tlsSecrets(t *testing.T) []secretCase {
	t.Helper()
	m := tlsMode(t)
	srv := natstest.RunServer(t, m.server)
	url := srv.URL()
	backend := m.backend
	keyPath := m.args[len(m.args)-1]
	data, err := os.ReadFile(keyPath) //nolint:gosec // the test's own file
	if err != nil {
		t.Fatal(err)
	}
	var material []string
	for _, line := range strings.Split(string(data), "\n") {
		if len(line) > 20 && !strings.HasPrefix(line, "-----") {
			material = append(material, line)
		}
	}
	cases := both("accepted/tls", url, false, material, m.args...)
	cases = append(cases, both("refused/tls-unknown-ca", url, true, material, m.refused[1].args...)...)
	return withJobs(t, url, cases, backend...)
}

// natstestDeadURL is a URL nobody listens on.
func natstestDeadURL(t *testing.T) string {
	t.Helper()
	return "nats://" + freeAddr(t)
}

// TestPanicMessageIsRedacted: a panic inside a command (here provoked by a
// span processor) comes back as an error whose message masks the secret.
func TestPanicMessageIsRedacted(t *testing.T) {
	t.Parallel()
	const token = "tok-panic-P4n"
	srv := natstest.RunServer(t, func(o *server.Options) { o.Authorization = token })
	withJobs(t, srv.URL(), nil, nats.Token(token))
	var stdout, stderr syncBuffer
	err := cli.RunWithHooks(t.Context(), []string{"ls", "--nats-url", srv.URL(), "--nats-token", token}, func(string) string { return "" },
		&stdout, &stderr, cli.Hooks{SpanProcessors: []sdktrace.SpanProcessor{panicky{msg: "boom with " + token}}})
	if err == nil || !strings.Contains(err.Error(), "panic: boom with xxxxx") {
		t.Fatalf("err = %v, want the panic's message, redacted", err)
	}
	if out := err.Error() + stdout.String() + stderr.String(); strings.Contains(out, token) {
		t.Errorf("the token appears:\n%s", out)
	}
}

// panicky panics when the reconciler's span starts (after the command has
// connected, so that its deferred cleanup closes the connection).
type panicky struct{ msg string }

func (p panicky) OnStart(_ context.Context, s sdktrace.ReadWriteSpan) {
	if s.Name() == "reconcile" {
		panic(p.msg)
	}
}
func (panicky) OnEnd(sdktrace.ReadOnlySpan)      {}
func (panicky) Shutdown(context.Context) error   { return nil }
func (panicky) ForceFlush(context.Context) error { return nil }
