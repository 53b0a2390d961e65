package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/cmd/queue-janitor/cli"
	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// doctorCheck and doctorReport are `queue-janitor doctor --json`.
type doctorCheck struct {
	Check     string `json:"check"`
	Status    string `json:"status"`
	Detail    string `json:"detail"`
	Fix       string `json:"fix"`
	Subject   string `json:"subject"`
	Permitted *bool  `json:"permitted"`
}

type doctorReport struct {
	Server struct {
		Version string `json:"version"`
	} `json:"server"`
	Checks  []doctorCheck  `json:"checks"`
	Summary map[string]int `json:"summary"`
	OK      bool           `json:"ok"`
}

// runDoctor runs `queue-janitor doctor --json` with args and returns its
// report and error.
func runDoctor(t *testing.T, url string, args ...string) (doctorReport, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := cli.Run(t.Context(), append([]string{"doctor", "--json", "--nats-url", url}, args...), func(string) string { return "" }, &out, &errOut)
	if errors.Is(err, cli.ErrUsage) {
		t.Fatalf("doctor: %v", err)
	}
	var rep doctorReport
	if jerr := json.Unmarshal(out.Bytes(), &rep); jerr != nil {
		t.Fatalf("doctor --json: %v\n%s\nstderr: %s", jerr, out.String(), errOut.String())
	}
	if (err == nil) != rep.OK || (rep.Summary["FAIL"] == 0) != rep.OK {
		t.Errorf("doctor returned %v with ok=%v and %d FAIL", err, rep.OK, rep.Summary["FAIL"])
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("doctor report:\n%s", out.String())
		}
	})
	return rep, err
}

// find returns the checks whose name starts with prefix.
func (r doctorReport) find(prefix string) []doctorCheck {
	var out []doctorCheck
	for _, c := range r.Checks {
		if strings.HasPrefix(c.Check, prefix) {
			out = append(out, c)
		}
	}
	return out
}

// healthy is a server on which serve has run once (with a bucket without
// TTL), with one job cleaned and one job's queue still there.
func healthy(t *testing.T, extra ...string) *env {
	t.Helper()
	e := setup(t)
	e.provision(1, 5, events.Attempt(1))
	e.provision(2, 5, events.Attempt(1))
	cleaned := subscribe(t, e.nc, "job.queue.cleaned.1")
	svc := e.startService(append([]string{"--kv-ttl", "0"}, extra...)...)
	e.emit(events.StatusEvent{JobID: 1, Status: events.StatusRevoked, Attempt: events.Attempt(1)})
	eventually(t, 15*time.Second, "job 1 cleaned", func() bool { return cleaned.count() == 1 })
	if err := svc.stop(); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestDoctorHealthyDeploymentIsAllOK: after serve has run, every check is
// OK (the announcement subjects are skipped without --publish-probes, and
// OK with it), the exit status is 0, and the report names the server's
// version.
func TestDoctorHealthyDeploymentIsAllOK(t *testing.T) {
	t.Parallel()
	e := healthy(t)
	for _, args := range [][]string{nil, {"--publish-probes"}} {
		rep, err := runDoctor(t, e.url, args...)
		if err != nil {
			t.Fatalf("doctor %v: %v", args, err)
		}
		for _, c := range rep.Checks {
			skipped := c.Status == "SKIP" && len(args) == 0 && strings.HasPrefix(c.Check, "permission publish job.")
			if c.Status != "OK" && !skipped {
				t.Errorf("doctor %v: %s %s: %s (fix: %s)", args, c.Status, c.Check, c.Detail, c.Fix)
			}
		}
		if got := len(rep.find("permission publish job.")); got != 3 {
			t.Errorf("doctor %v: %d lines for the announcement subjects, want 3", args, got)
		}
		if rep.Server.Version == "" {
			t.Error("no server version in the report")
		}
		if js := rep.find("job streams"); len(js) != 1 || !strings.Contains(js[0].Detail, "1 job stream match") {
			t.Errorf("doctor %v: job streams line %+v, want job_2 counted", args, js)
		}
	}
}

// TestDoctorChangesNothing: the probes use the names of job
// 999999999999999999; even when that job's stream, task consumer and
// dead-letter consumer exist, with messages, and with every publish probe,
// doctor deletes, purges, creates and writes nothing: the same streams and
// consumers with the same messages, the same records, the event consumer
// with the same deliveries.
func TestDoctorChangesNothing(t *testing.T) {
	t.Parallel()
	e := healthy(t)
	const absurd = queue.JobID(999999999999999999)
	e.provision(absurd, 7, nil)
	state := func() string {
		var b strings.Builder
		l := e.js.ListStreams(t.Context())
		for info := range l.Info() {
			b.WriteString(info.Config.Name + " " + strings.Join(info.Config.Subjects, ",") + " msgs=" +
				itoa(info.State.Msgs) + " last=" + itoa(info.State.LastSeq) + " consumers=" + itoa(uint64(info.State.Consumers)) + "\n")
			s, err := e.js.Stream(t.Context(), info.Config.Name)
			if err != nil {
				t.Fatal(err)
			}
			cons := s.ListConsumers(t.Context())
			for ci := range cons.Info() {
				b.WriteString("  " + ci.Name + " delivered=" + itoa(ci.Delivered.Stream) + " acked=" + itoa(ci.AckFloor.Stream) +
					" pending=" + itoa(ci.NumPending) + " ackpending=" + itoa(uint64(ci.NumAckPending)) + "\n")
			}
			if err := cons.Err(); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Err(); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	before := state()
	if !strings.Contains(before, "job_999999999999999999") || !strings.Contains(before, "job-999999999999999999-dlq") {
		t.Fatalf("setup: the probe job's queue is missing:\n%s", before)
	}
	announced := subscribe(t, e.nc, "job.queue.>")
	rep, err := runDoctor(t, e.url, "--publish-probes")
	if err != nil {
		t.Fatalf("doctor: %v", err)
	}
	if after := state(); after != before {
		t.Errorf("doctor changed the server:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// The only messages: the two announcement probes, empty, marked, for the probe job.
	eventually(t, 5*time.Second, "the two announcement probes", func() bool { return announced.count() == 2 })
	for _, m := range announced.all() {
		if len(m.Data) != 0 || m.Header.Get("Queue-Janitor-Doctor") == "" || !strings.HasSuffix(m.Subject, "."+absurd.String()) {
			t.Errorf("announcement probe %s %q %v: want empty, marked, for job %d", m.Subject, m.Data, m.Header, absurd)
		}
	}
	if rep.Summary["OK"] == 0 {
		t.Error("no check OK")
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// TestDoctorMissingBucket: a deleted bucket is a FAIL that says how to get
// it back; the exit status is 1.
func TestDoctorMissingBucket(t *testing.T) {
	t.Parallel()
	e := healthy(t)
	if err := e.js.DeleteStream(t.Context(), "KV_queue_janitor_jobs"); err != nil {
		t.Fatal(err)
	}
	rep, err := runDoctor(t, e.url)
	if err == nil {
		t.Error("doctor exited 0 with the bucket missing")
	}
	b := rep.find("bucket queue_janitor_jobs")
	if len(b) != 1 || b[0].Status != "FAIL" || !strings.Contains(b[0].Fix, "queue-janitor serve") || !strings.Contains(b[0].Fix, "nats kv add queue_janitor_jobs") {
		t.Errorf("bucket line %+v, want a FAIL saying to start serve or create it", b)
	}
	if rep.Summary["FAIL"] != 1 {
		t.Errorf("%d FAIL lines, want only the bucket's", rep.Summary["FAIL"])
	}
}

// TestDoctorBucketWithTTLWarns: a bucket created with a TTL (720h, as an
// older version did) is a WARN that says how to drop it.
func TestDoctorBucketWithTTLWarns(t *testing.T) {
	t.Parallel()
	e := setup(t)
	svc := e.startService("--kv-ttl", "720h")
	if err := svc.stop(); err != nil {
		t.Fatal(err)
	}
	rep, err := runDoctor(t, e.url)
	if err != nil {
		t.Fatalf("doctor: %v", err)
	}
	b := rep.find("bucket queue_janitor_jobs")
	if len(b) != 1 || b[0].Status != "WARN" || !strings.Contains(b[0].Detail, "720h") || !strings.Contains(b[0].Fix, "--max-age 0") {
		t.Errorf("bucket line %+v, want a WARN about the 720h TTL with the fix", b)
	}
}

// TestDoctorRenamedJobStreams: a backend that names its streams otherwise
// (jobs_42 on job.42.tasks) or its consumers otherwise is a WARN naming the
// streams and the pattern flags; the service would never clean them.
func TestDoctorRenamedJobStreams(t *testing.T) {
	t.Parallel()
	e := healthy(t)
	ctx := t.Context()
	if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: "jobs_42", Subjects: []string{"job.42.tasks"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: "job_43", Subjects: []string{"job.43.tasks"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.CreateOrUpdateConsumer(ctx, "job_43", jetstream.ConsumerConfig{Durable: "worker-43", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	rep, err := runDoctor(t, e.url)
	if err != nil {
		t.Fatalf("doctor: %v (a naming mismatch is a warning)", err)
	}
	js := rep.find("job streams")
	if len(js) != 1 || js[0].Status != "WARN" {
		t.Fatalf("job streams line %+v, want a WARN", js)
	}
	for _, want := range []string{"jobs_42", "job.42.tasks", "--stream-pattern job_{id}", "job_43", "none named job-43-consumer"} {
		if !strings.Contains(js[0].Detail, want) {
			t.Errorf("job streams line does not say %q: %s", want, js[0].Detail)
		}
	}
	if !strings.Contains(js[0].Fix, "never clean") || !strings.Contains(js[0].Fix, "--consumer-pattern") {
		t.Errorf("fix %q does not say what to check", js[0].Fix)
	}
}

// TestDoctorJanitorUser: as the janitor user of
// deploy/nats/nats-server.conf, with its inbox prefix, every permission
// the doctor tests is reported as that configuration grants it, and the
// server logs a violation for exactly the subjects reported denied.
func TestDoctorJanitorUser(t *testing.T) {
	t.Parallel()
	srv, e := deployEnv(t)
	svc := startServe(t, e.js, append(janitorArgs(e.url), "--kv-ttl", "0"), zerolog.NewTestWriter(t))
	if err := svc.stop(); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(deployNATSConf)
	if err != nil {
		t.Fatal(err)
	}
	var perms *server.Permissions
	for _, u := range opts.Users {
		if u.Username == janitorUser {
			perms = u.Permissions
		}
	}
	if perms == nil || perms.Publish == nil || perms.Subscribe == nil {
		t.Fatalf("no publish and subscribe permissions for %s in %s", janitorUser, deployNATSConf)
	}
	before := len(srv.log.violations())
	rep, _ := runDoctor(t, e.url, "--nats-user", janitorUser, "--nats-password", janitorPassword, "--nats-inbox-prefix", janitorInbox)
	tested, denied := 0, map[string]bool{}
	for _, c := range rep.Checks {
		if c.Permitted == nil {
			continue
		}
		tested++
		sp := perms.Publish
		if strings.HasPrefix(c.Check, "permission subscribe") {
			sp = perms.Subscribe
		}
		if want := permits(sp, c.Subject); *c.Permitted != want {
			t.Errorf("%s: doctor says permitted=%v for %s, the configuration says %v", c.Check, *c.Permitted, c.Subject, want)
		}
		if !*c.Permitted {
			denied[c.Subject] = true
			if c.Status == "OK" && !strings.Contains(c.Detail, "not needed") {
				t.Errorf("%s: denied but OK without saying it is not needed: %s", c.Check, c.Detail)
			}
		}
	}
	if tested < 25 {
		t.Errorf("only %d permissions tested", tested)
	}
	for _, want := range []string{"$JS.API.STREAM.DELETE.job_999999999999999999", "$JS.API.STREAM.PURGE.job_999999999999999999",
		"$JS.API.CONSUMER.DELETE.advisories.job-999999999999999999-dlq", "$KV.queue_janitor_jobs.job.999999999999999999",
		"$JS.API.CONSUMER.MSG.NEXT.JOB_EVENTS.queue-janitor"} {
		if denied[want] {
			t.Errorf("%s reported denied; the service needs it and the configuration grants it", want)
		}
	}
	// The server's log: a violation for each subject reported denied, and no other.
	logged := map[string]bool{}
	for _, v := range srv.log.violations()[before:] {
		if _, subj, ok := strings.Cut(v, `Publish Violation - Subject "`); ok {
			logged[strings.TrimSuffix(subj, `"`)] = true
		} else {
			t.Errorf("unexpected violation: %s", v)
		}
	}
	for s := range denied {
		if !logged[s] {
			t.Errorf("reported denied, but no violation logged for %s", s)
		}
	}
	for s := range logged {
		if !denied[s] {
			t.Errorf("violation logged for %s, not reported denied", s)
		}
	}
	// The janitor may not subscribe to _INBOX.>: without its prefix the doctor says so and what to set.
	rep, err = runDoctor(t, e.url, "--nats-user", janitorUser, "--nats-password", janitorPassword)
	if err == nil {
		t.Error("doctor exited 0 without the inbox prefix")
	}
	sub := rep.find("permission subscribe _INBOX.>")
	if len(sub) != 1 || sub[0].Status != "FAIL" || !strings.Contains(sub[0].Fix, "--nats-inbox-prefix") {
		t.Errorf("subscribe line %+v, want a FAIL pointing to --nats-inbox-prefix", sub)
	}
}

// permits evaluates a subject against permissions as nats-server does: an
// empty allow list allows everything, deny wins.
func permits(p *server.SubjectPermission, subject string) bool {
	allowed := len(p.Allow) == 0 || slices.ContainsFunc(p.Allow, func(a string) bool { return matchSubject(a, subject) })
	return allowed && !slices.ContainsFunc(p.Deny, func(d string) bool { return matchSubject(d, subject) })
}

// matchSubject matches a literal subject against a pattern with * and >.
func matchSubject(pattern, subject string) bool {
	pt, st := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, t := range pt {
		switch {
		case t == ">":
			return i < len(st)
		case i >= len(st):
			return false
		case t != "*" && t != st[i]:
			return false
		}
	}
	return len(pt) == len(st)
}

// TestDoctorDeniedStreamDelete: a user that may do everything but delete
// streams gets a FAIL naming the subject and the grant to add.
func TestDoctorDeniedStreamDelete(t *testing.T) {
	t.Parallel()
	srv := natstest.RunServer(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "ops", Password: "ops-pw", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$JS.API.STREAM.DELETE.*"}},
		}}}
	})
	_, js := natstest.Connect(t, srv.URL(), nats.UserInfo("ops", "ops-pw"))
	ensureEventStream(t, js)
	rep, err := runDoctor(t, srv.URL(), "--nats-user", "ops", "--nats-password", "ops-pw")
	if err == nil {
		t.Error("doctor exited 0 though the user may not delete streams")
	}
	del := rep.find("permission publish $JS.API.STREAM.DELETE.*")
	if len(del) != 1 || del[0].Status != "FAIL" || !strings.Contains(del[0].Detail, "$JS.API.STREAM.DELETE.job_999999999999999999") ||
		!strings.Contains(del[0].Fix, "allow publishing to $JS.API.STREAM.DELETE.*") {
		t.Errorf("delete line %+v, want a FAIL naming the subject and the grant", del)
	}
	for _, c := range rep.find("permission publish") {
		if c.Status == "FAIL" && c != del[0] {
			t.Errorf("another permission FAILs: %+v", c)
		}
	}
}
