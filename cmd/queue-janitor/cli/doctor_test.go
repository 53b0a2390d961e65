package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/example/queue-janitor/queue"
)

func TestVersionVerdict(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"2.9.25":       doctorFail,
		"2.10.0":       doctorWarn,
		"2.10.26":      doctorWarn,
		"2.10.27":      doctorOK,
		"v2.10.29":     doctorOK,
		"2.11.4":       doctorOK,
		"2.15.1":       doctorWarn,
		"2.15.2":       doctorOK,
		"2.16.0-beta1": doctorOK,
		"3.0.0":        doctorOK,
		"":             doctorWarn,
		"two.ten":      doctorWarn,
	}
	for version, want := range cases {
		status, detail, fix := versionVerdict(version)
		if status != want {
			t.Errorf("%q: %s (%s), want %s", version, status, detail, want)
		}
		if status != doctorOK && fix == "" {
			t.Errorf("%q: %s without a fix", version, status)
		}
		if status == doctorOK && !strings.Contains(detail, "2.10.27 and 2.15.2") {
			t.Errorf("%q: detail %q does not name the versions CI tests", version, detail)
		}
	}
}

func TestSubjectCovers(t *testing.T) {
	t.Parallel()
	cases := []struct {
		a, b string
		want bool
	}{
		{"job.status.*", "job.status.*", true},
		{"job.status.>", "job.status.*", true},
		{"job.>", "job.status.*", true},
		{">", "job.status.*", true},
		{"job.*.*", "job.status.*", true},
		{"job.status.revoked", "job.status.*", false},
		{"job.status.*", "job.status.>", false},
		{"job.status", "job.status.*", false},
		{"job.status.*.x", "job.status.*", false},
		{"job.status.>", "job.status", false},
	}
	for _, c := range cases {
		if got := subjectCovers(c.a, c.b); got != c.want {
			t.Errorf("subjectCovers(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
	if subjectMatches("job.*.tasks", "job.*.tasks") || !subjectMatches("job.*.tasks", "job.42.tasks") {
		t.Error("subjectMatches must take the subject literally")
	}
}

func TestClassifyStreams(t *testing.T) {
	t.Parallel()
	n := queue.DefaultNames()
	streams := []jobStreamSummary{
		{Name: "job_7", Subjects: []string{"job.7.tasks"}},
		{Name: "jobs_42", Subjects: []string{"job.42.tasks"}},            // renamed stream
		{Name: "job_8", Subjects: []string{"tasks.8"}},                   // its subject renamed
		{Name: "job_9_old", Subjects: []string{"job.archive.9"}},         // the prefix, not the pattern
		{Name: "queue_10", Subjects: []string{"job.10.tasks", "x.y"}},    // two subjects: not a task stream
		{Name: "ORDERS", Subjects: []string{"orders.>"}},                 // unrelated
		{Name: "advisories", Subjects: []string{"$JS.EVENT.ADVISORY.>"}}, // shared
		{Name: "JOB_EVENTS", Subjects: []string{"job.status.*"}},
	}
	skip := func(name string) bool { return name == "advisories" || name == "JOB_EVENTS" }
	matched, mismatched := classifyStreams(n, skip, streams)
	if len(matched) != 1 || matched[0].Name != "job_7" {
		t.Errorf("matched %+v, want job_7", matched)
	}
	var names []string
	for _, m := range mismatched {
		names = append(names, m.Stream)
		if m.Why == "" {
			t.Errorf("%s: no reason", m.Stream)
		}
	}
	if got := strings.Join(names, " "); got != "jobs_42 job_8 job_9_old" {
		t.Errorf("mismatched %q, want jobs_42 job_8 job_9_old", got)
	}
}

// doctorJSON runs doctor --json and decodes its report.
func doctorJSON(t *testing.T, args ...string) (doctorReport, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := Run(t.Context(), append([]string{"doctor", "--json", "--nats-connect-timeout", "2s"}, args...), noEnv, &out, &errOut)
	var rep doctorReport
	if jerr := json.Unmarshal(out.Bytes(), &rep); jerr != nil {
		t.Fatalf("doctor --json printed no report (%v): %v\n%s\n%s", err, jerr, out.String(), errOut.String())
	}
	return rep, err
}

// TestDoctorStopsAtWhatIsMissing: an unreachable server, wrong
// credentials, a server without JetStream and an account without it are
// each one FAIL saying what to do, exit status 1 (not a usage error).
func TestDoctorStopsAtWhatIsMissing(t *testing.T) {
	t.Parallel()
	noJS := runServer(t, func(o *server.Options) { o.JetStream = false })
	acc := server.NewAccount("NOJS")
	noJSAccount := runServer(t, func(o *server.Options) {
		o.Accounts = []*server.Account{acc}
		o.Users = []*server.User{{Username: "nojs", Password: "nojs-pw", Account: acc}}
	})
	cases := map[string]struct {
		args       []string
		check, say string
	}{
		"unreachable":   {[]string{"--nats-url", "nats://" + deadAddr(t)}, "connection", "is the server running?"},
		"bad password":  {[]string{"--nats-url", noJSAccount.ClientURL(), "--nats-user", "nojs", "--nats-password", "wrong"}, "connection", "refused the credentials"},
		"no JetStream":  {[]string{"--nats-url", noJS.ClientURL()}, "jetstream", "start nats-server with -js"},
		"account no JS": {[]string{"--nats-url", noJSAccount.ClientURL(), "--nats-user", "nojs", "--nats-password", "nojs-pw"}, "jetstream", "jetstream: enabled"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rep, err := doctorJSON(t, c.args...)
			if err == nil || errors.Is(err, ErrUsage) {
				t.Errorf("err = %v, want exit status 1", err)
			}
			if rep.OK || rep.Summary[doctorFail] != 1 {
				t.Errorf("ok=%v with %d FAIL, want one FAIL", rep.OK, rep.Summary[doctorFail])
			}
			last := rep.Checks[len(rep.Checks)-1]
			if last.Check != c.check || last.Status != doctorFail || !strings.Contains(last.Detail+" "+last.Fix, c.say) {
				t.Errorf("last line %+v, want %s FAIL saying %q", last, c.check, c.say)
			}
			if strings.Contains(last.Detail+last.Fix, "wrong") {
				t.Errorf("the password shows: %+v", last)
			}
		})
	}
}

// TestDoctorTextSaysWhatToFix: the text form has one line per check,
// starting with its status, the fix on the same line, and a summary.
func TestDoctorTextSaysWhatToFix(t *testing.T) {
	t.Parallel()
	srv := runServer(t, nil)
	var out bytes.Buffer
	err := Run(t.Context(), []string{"doctor", "--nats-url", srv.ClientURL()}, noEnv, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "2 checks failed") {
		t.Errorf("err = %v, want the two missing resources counted", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	for _, l := range lines[:len(lines)-2] {
		status, _, _ := strings.Cut(l, " ")
		if !oneOf(status, doctorOK, doctorWarn, doctorFail, doctorSkip) {
			t.Errorf("line without a status: %q", l)
		}
		if (status == doctorFail || status == doctorWarn) && !strings.Contains(l, ". Fix: ") {
			t.Errorf("%s line without a fix: %q", status, l)
		}
	}
	for _, want := range []string{"FAIL  event stream JOB_EVENTS: not found", "FAIL  bucket queue_janitor_jobs: not found",
		"OK    permission publish $JS.API.STREAM.DELETE.*: allowed"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if last := lines[len(lines)-1]; !strings.HasSuffix(last, "2 FAIL, 4 SKIP") {
		t.Errorf("summary %q", last)
	}
}
