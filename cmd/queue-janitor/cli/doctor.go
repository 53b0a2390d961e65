package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/queue"
	"github.com/example/queue-janitor/telemetry"
)

const doctorAbout = `Check a deployment from the operator's seat and say what to fix, one line
per check: the NATS connection and credentials, the server's version,
JetStream, the event stream, its durable consumer and the key-value bucket,
every permission the service needs, and job streams that the naming
patterns do not match (which the service would never clean). Exit status 0
when no check FAILs, 1 otherwise.

Nothing is created, changed or deleted: each permission is tested with a
request that the server refuses after its permission check (a malformed or
non-empty body, on the names of job 999999999999999999), and a permission
that is denied shows as a violation in the server's log. Publishing on the
subjects the service announces on (cleaned, flushed, dead letters) would reach
the backend's subscribers, so those are tested only with --publish-probes.`

// doctorProbeJob is the job whose names the permission probes use: a valid
// id that no backend reaches.
const doctorProbeJob queue.JobID = 999999999999999999

// The versions CI tests against (make test: test-race on the embedded
// server, test-nats210 on a built 2.10).
var (
	minNATSVersion    = semver{2, 10, 0}
	testedNATSVersion = []semver{{2, 10, 27}, {2, 15, 2}}
)

// Check outcomes, worst last.
const (
	doctorOK   = "OK"
	doctorSkip = "SKIP"
	doctorWarn = "WARN"
	doctorFail = "FAIL"
)

// doctorCheck is one line of the report.
type doctorCheck struct {
	Check  string `json:"check"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
	// Subject is the subject a permission check published on, and
	// Permitted the server's verdict (nil: not tested).
	Subject   string `json:"subject,omitempty"`
	Permitted *bool  `json:"permitted,omitempty"`
}

// doctorReport is the whole report, also its JSON form.
type doctorReport struct {
	Server  doctorServer   `json:"server"`
	Checks  []doctorCheck  `json:"checks"`
	Summary map[string]int `json:"summary"`
	OK      bool           `json:"ok"`
}

type doctorServer struct {
	URL     string `json:"url"`
	Version string `json:"version,omitempty"`
	Name    string `json:"name,omitempty"`
	Cluster string `json:"cluster,omitempty"`
}

func runDoctor(ctx context.Context, args []string, cio cmdIO) error {
	cfg := opsDefaults()
	f := opsFlags("doctor", "", doctorAbout, &cfg)
	f.group("Event intake")
	eventStreamFlags(f, &cfg)
	f.group("Emitted events")
	announceFlags(f, &cfg)
	f.group("Doctor")
	var asJSON, publishProbes bool
	f.Bool(&asJSON, "json", envPrefix+"DOCTOR_JSON", "print the report as JSON")
	f.Bool(&publishProbes, "publish-probes", envPrefix+"DOCTOR_PUBLISH_PROBES",
		"also test publishing on the cleaned, flushed and dead-letter subjects: one empty message on each, for job 999999999999999999")
	if err := parseFlags(f, args, cio); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	log, err := telemetry.NewLogger(cio.stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	d := &doctor{cfg: cfg, log: log, publishProbes: publishProbes}
	d.run(ctx)
	rep := d.report()
	if asJSON {
		enc := json.NewEncoder(cio.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printDoctor(cio.stdout, rep)
	}
	if n := rep.Summary[doctorFail]; n > 0 {
		return fmt.Errorf("doctor: %s failed: fix what the FAIL lines say, then run it again", count(n, "check"))
	}
	return nil
}

func printDoctor(w io.Writer, rep doctorReport) {
	for _, c := range rep.Checks {
		line := fmt.Sprintf("%-4s  %s: %s", c.Status, c.Check, c.Detail)
		if c.Fix != "" {
			line += ". Fix: " + c.Fix
		}
		fmt.Fprintln(w, line)
	}
	fmt.Fprintf(w, "\n%d OK, %d WARN, %d FAIL, %d SKIP\n", rep.Summary[doctorOK], rep.Summary[doctorWarn],
		rep.Summary[doctorFail], rep.Summary[doctorSkip])
}

// doctor runs the checks in order; each later one needs what the earlier
// ones found.
type doctor struct {
	cfg           Config
	log           zerolog.Logger
	publishProbes bool

	nc     *nats.Conn
	js     jetstream.JetStream
	server doctorServer
	checks []doctorCheck

	inboxOK   bool // replies reach this connection
	bucket    *jetstream.StreamInfo
	records   uint64
	clustered bool
}

func (d *doctor) add(c doctorCheck) { d.checks = append(d.checks, c) }

func (d *doctor) report() doctorReport {
	rep := doctorReport{Server: d.server, Checks: d.checks, Summary: map[string]int{}}
	for _, c := range d.checks {
		rep.Summary[c.Status]++
	}
	rep.OK = rep.Summary[doctorFail] == 0
	return rep
}

// timeout bounds each request of the doctor.
func (d *doctor) timeout() time.Duration { return d.cfg.NATS.ConnectTimeout }

func (d *doctor) run(ctx context.Context) {
	d.server.URL = telemetry.RedactURL(d.cfg.NATS.URL)
	// Violations are read from the connection's last error right after each
	// probe; the default handler would log every expected one.
	nc, err := dial(d.cfg.NATS, "queue-janitor doctor", d.log, nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		d.add(doctorCheck{Check: "connection", Status: doctorFail, Detail: err.Error()})
		return
	}
	defer nc.Close()
	d.nc = nc
	d.server.URL = telemetry.RedactURL(nc.ConnectedUrl())
	d.server.Version, d.server.Name, d.server.Cluster = nc.ConnectedServerVersion(), nc.ConnectedServerName(), nc.ConnectedClusterName()
	d.clustered = d.server.Cluster != ""
	d.add(doctorCheck{Check: "connection", Status: doctorOK, Detail: fmt.Sprintf("connected to %s %s", d.server.URL, d.who())})
	d.checkVersion()
	if d.js, err = jetstream.New(nc, jetstream.WithDefaultTimeout(d.timeout())); err != nil {
		d.add(doctorCheck{Check: "jetstream", Status: doctorFail, Detail: err.Error()})
		return
	}
	d.checkInbox()
	if !d.checkJetStream(ctx) {
		return
	}
	d.checkEventStream(ctx)
	d.checkEventConsumer(ctx)
	d.checkBucket(ctx)
	d.checkPermissions()
	d.checkJobStreams(ctx)
}

// who says how the connection authenticated, without a secret.
func (d *doctor) who() string {
	c := d.cfg.NATS
	const accepted = "; the server accepted the credentials"
	switch {
	case c.User != "":
		return "as user " + c.User + accepted
	case c.Token != "":
		return "with a token" + accepted
	case c.NKeySeedFile != "":
		return "with the NKey seed in " + c.NKeySeedFile + accepted
	case c.CredsFile != "":
		return "with the credentials in " + c.CredsFile + accepted
	}
	return "without credentials"
}

// semver is a server version's major, minor and patch.
type semver [3]int

func parseSemver(s string) (semver, bool) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "v")
	if i := strings.IndexAny(s, "-+ "); i >= 0 {
		s = s[:i]
	}
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return semver{}, false
	}
	var v semver
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return semver{}, false
		}
		v[i] = n
	}
	return v, true
}

func (v semver) less(o semver) bool {
	for i := range v {
		if v[i] != o[i] {
			return v[i] < o[i]
		}
	}
	return false
}

func (v semver) String() string { return fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]) }

// versionVerdict judges a server version: below 2.10 fails (stream
// metadata, the fence's exact guard, needs 2.10), below the release CI
// tests on the same line warns.
func versionVerdict(version string) (status, detail, fix string) {
	tested := make([]string, len(testedNATSVersion))
	for i, t := range testedNATSVersion {
		tested[i] = t.String()
	}
	testedText := "CI tests " + strings.Join(tested, " and ")
	v, ok := parseSemver(version)
	switch {
	case !ok:
		return doctorWarn, fmt.Sprintf("nats-server %q: not a version this command can read; %s", version, testedText),
			"check that the server is nats-server 2.10 or later"
	case v.less(minNATSVersion):
		return doctorFail, fmt.Sprintf("nats-server %s is older than 2.10, which queue-janitor requires (stream metadata, the consumer API it uses)", v),
			"upgrade the server to 2.10.27 or later"
	}
	for _, t := range testedNATSVersion {
		if v[0] == t[0] && v[1] == t[1] && v.less(t) {
			return doctorWarn, fmt.Sprintf("nats-server %s is older than %s, the %d.%d release %s", v, t, t[0], t[1], testedText),
				fmt.Sprintf("upgrade the server to %s or later", t)
		}
	}
	return doctorOK, fmt.Sprintf("nats-server %s (2.10 or later required; %s)", v, testedText), ""
}

func (d *doctor) checkVersion() {
	status, detail, fix := versionVerdict(d.server.Version)
	if d.server.Name != "" {
		detail += ", server " + d.server.Name
	}
	if d.clustered {
		detail += ", cluster " + d.server.Cluster
	}
	d.add(doctorCheck{Check: "server version", Status: status, Detail: detail, Fix: fix})
}

// violated reports whether the connection's last error, if it changed
// since before, is the server's permissions violation for what (e.g.
// `Publish to "subject"`). The server sends the violation before it
// answers the PING of a flush, so it is known when the flush returns.
func (d *doctor) violated(before error, what string) bool {
	after := d.nc.LastError()
	if after == nil || errors.Is(after, before) { // the same error: no new violation
		return false
	}
	return errors.Is(after, nats.ErrPermissionViolation) && strings.Contains(after.Error(), what)
}

func (d *doctor) checkInbox() {
	prefix := d.cfg.NATS.InboxPrefix
	if prefix == "" {
		prefix = nats.InboxPrefix[:len(nats.InboxPrefix)-1]
	}
	check := doctorCheck{Check: "permission subscribe " + prefix + ".>"}
	inbox := d.nc.NewInbox()
	before := d.nc.LastError()
	sub, err := d.nc.SubscribeSync(inbox)
	if err == nil {
		defer func() { _ = sub.Unsubscribe() }()
		err = d.nc.FlushTimeout(d.timeout())
	}
	permitted := err == nil && !d.violated(before, `Subscription to "`+inbox+`"`)
	check.Subject, check.Permitted = inbox, &permitted
	switch {
	case err != nil:
		check.Status, check.Detail = doctorFail, fmt.Sprintf("could not subscribe to %s: %v", inbox, err)
	case !permitted:
		check.Status = doctorFail
		check.Detail = fmt.Sprintf("denied (probe %s): replies to every JetStream request of the service, and the events it pulls, arrive there", inbox)
		check.Fix = fmt.Sprintf("allow subscribing to %s.> for this user, or set --nats-inbox-prefix (NATS_INBOX_PREFIX) to the prefix it may subscribe to (deploy/nats/nats-server.conf: _INBOX_janitor)", prefix)
	default:
		check.Status, check.Detail = doctorOK, "allowed: replies reach the service's inbox"
		d.inboxOK = true
	}
	d.add(check)
}

func (d *doctor) checkJetStream(ctx context.Context) bool {
	if !d.inboxOK {
		d.add(doctorCheck{Check: "jetstream", Status: doctorSkip,
			Detail: "not checked, nor the stream, consumer, bucket and job streams: no reply can reach this connection (see the subscribe line)"})
		d.checkPermissions()
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout())
	defer cancel()
	before := d.nc.LastError()
	info, err := d.js.AccountInfo(ctx)
	switch {
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled):
		d.add(doctorCheck{Check: "jetstream", Status: doctorFail, Detail: "JetStream is not enabled on the server",
			Fix: "start nats-server with -js (or a jetstream {} block in its configuration)"})
		return false
	case errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		d.add(doctorCheck{Check: "jetstream", Status: doctorFail, Detail: "JetStream is not enabled for this user's account",
			Fix: "enable it for the account in the server's configuration (jetstream: enabled)"})
		return false
	case err != nil && d.violated(before, `Publish to "$JS.API.INFO"`):
		d.add(doctorCheck{Check: "jetstream", Status: doctorWarn,
			Detail: "account information not readable ($JS.API.INFO denied; see its permission line); going on as if JetStream were enabled"})
		return true
	case err != nil:
		d.add(doctorCheck{Check: "jetstream", Status: doctorFail, Detail: "account information: " + err.Error(),
			Fix: "check that JetStream answers (nats account info)"})
		return false
	}
	detail := fmt.Sprintf("enabled for the account: %s, %s", count(info.Streams, "stream"), count(info.Consumers, "consumer"))
	if info.Domain != "" {
		detail += ", domain " + info.Domain
	}
	d.add(doctorCheck{Check: "jetstream", Status: doctorOK, Detail: detail})
	return true
}

// streamInfo reads a stream's information, or says why not.
func (d *doctor) streamInfo(ctx context.Context, name string) (*jetstream.StreamInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout())
	defer cancel()
	s, err := d.js.Stream(ctx, name)
	if err != nil {
		return nil, err
	}
	return s.CachedInfo(), nil
}

func (d *doctor) checkEventStream(ctx context.Context) {
	in := d.cfg.Intake
	check := doctorCheck{Check: "event stream " + in.Stream}
	info, err := d.streamInfo(ctx, in.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound) && in.Bind:
		check.Status, check.Detail = doctorFail, "not found; with --bind-event-stream the service waits, unready, until it exists"
		check.Fix = fmt.Sprintf("create it: nats stream add %s --subjects '%s' --storage file --retention limits --max-age %s --defaults",
			in.Stream, in.Subject, in.MaxAge)
	case errors.Is(err, jetstream.ErrStreamNotFound):
		check.Status, check.Detail = doctorFail, "not found: the backend's events have nowhere to go"
		check.Fix = "start queue-janitor serve once (it creates the stream), then run doctor again"
	case err != nil:
		check.Status, check.Detail = doctorFail, "not readable: "+err.Error()
		check.Fix = "see the permission lines below ($JS.API.STREAM.INFO)"
	default:
		c := info.Config
		check.Detail = fmt.Sprintf("subjects %s, max age %s, %s, %s stored", strings.Join(c.Subjects, " "), ageText(c.MaxAge),
			count(c.Replicas, "replica"), count(info.State.Msgs, "event"))
		check.Status = doctorOK
		switch {
		case !slices.ContainsFunc(c.Subjects, func(s string) bool { return subjectCovers(s, in.Subject) }):
			check.Status = doctorFail
			check.Detail = fmt.Sprintf("its subjects %s do not cover --event-subject %s: the backend's events are not stored", strings.Join(c.Subjects, " "), in.Subject)
			check.Fix = fmt.Sprintf("add the subject (nats stream edit %s --subjects '%s'), or set --event-subject to what the backend publishes", in.Stream, in.Subject)
		case d.clustered && c.Replicas < 3:
			check.Status = doctorWarn
			check.Fix = fmt.Sprintf("in a cluster, losing one node stops the intake: nats stream edit %s --replicas 3", in.Stream)
		case c.MaxAge > 0 && c.MaxAge < time.Hour:
			check.Status = doctorWarn
			check.Fix = fmt.Sprintf("events not handled within %s (an outage of the service) are lost: nats stream edit %s --max-age %s", c.MaxAge, in.Stream, in.MaxAge)
		}
	}
	d.add(check)
}

func ageText(d time.Duration) string {
	if d == 0 {
		return "unlimited"
	}
	return d.String()
}

func (d *doctor) checkEventConsumer(ctx context.Context) {
	in := d.cfg.Intake
	check := doctorCheck{Check: "event consumer " + in.Stream + "/" + in.Consumer}
	cctx, cancel := context.WithTimeout(ctx, d.timeout())
	defer cancel()
	c, err := d.js.Consumer(cctx, in.Stream, in.Consumer)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		check.Status, check.Detail = doctorSkip, "not checked: the event stream is missing"
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		check.Status, check.Detail = doctorFail, "not found: events wait in the stream, handled by nobody"
		check.Fix = "start queue-janitor serve (it creates the consumer), then run doctor again"
	case err != nil:
		check.Status, check.Detail = doctorFail, "not readable: "+err.Error()
		check.Fix = "see the permission lines below ($JS.API.CONSUMER.INFO)"
	default:
		info := c.CachedInfo()
		check.Status = doctorOK
		check.Detail = fmt.Sprintf("%d events waiting, %d being handled, %s waiting (%s)", info.NumPending, info.NumAckPending,
			count(info.NumWaiting, "pull request"), map[bool]string{true: "a replica is pulling", false: "no replica is pulling right now"}[info.NumWaiting > 0])
		if !slices.ContainsFunc(append([]string{info.Config.FilterSubject}, info.Config.FilterSubjects...), func(s string) bool { return s == in.Subject }) {
			check.Detail += fmt.Sprintf("; its filter %q is not --event-subject %q (serve updates it when it starts)",
				strings.Join(append([]string{info.Config.FilterSubject}, info.Config.FilterSubjects...), " "), in.Subject)
		}
	}
	d.add(check)
}

func (d *doctor) checkBucket(ctx context.Context) {
	r := d.cfg.Records
	stream := "KV_" + r.Bucket
	check := doctorCheck{Check: "bucket " + r.Bucket}
	info, err := d.streamInfo(ctx, stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		check.Status, check.Detail = doctorFail, "not found: the service has no per-job records (every job is unknown to it)"
		check.Fix = fmt.Sprintf("start queue-janitor serve (it creates the bucket; a running serve recreates it within seconds), or create it: nats kv add %s --history 1 --storage file --replicas %d",
			r.Bucket, r.Replicas)
	case err != nil:
		check.Status, check.Detail = doctorFail, "not readable: "+err.Error()
		check.Fix = "see the permission lines below ($JS.API.STREAM.INFO)"
	default:
		d.bucket, d.records = info, info.State.Msgs
		c := info.Config
		check.Status = doctorOK
		check.Detail = fmt.Sprintf("%s, %s, no TTL", count(c.Replicas, "replica"), count(info.State.Msgs, "record"))
		switch {
		case c.MaxAge > 0:
			check.Status = doctorWarn
			check.Detail = fmt.Sprintf("%s, %s, records expire %s after their last write: a job not heard of for that long loses its record, and with it the ordering of its late events",
				count(c.Replicas, "replica"), count(info.State.Msgs, "record"), c.MaxAge)
			check.Fix = fmt.Sprintf("drop the TTL: nats stream edit %s --max-age 0 (an older queue-janitor created the bucket with 720h)", stream)
		case d.clustered && c.Replicas < 3:
			check.Status = doctorWarn
			check.Fix = fmt.Sprintf("in a cluster, losing one node stops every cleanup: nats stream edit %s --replicas 3", stream)
		case c.Replicas != r.Replicas:
			check.Detail += fmt.Sprintf(" (--kv-replicas is %d; the service does not change an existing bucket)", r.Replicas)
		}
	}
	d.add(check)
}

// Levels of a permission: what a denial costs.
const (
	permRequired = iota // the service fails without it: FAIL
	permDegraded        // a feature is lost: WARN
	permOptional        // not needed in this deployment: OK either way
)

// permProbe is one harmless test of a permission the service needs.
type permProbe struct {
	grant   string // the permission as deploy/nats/nats-server.conf writes it
	subject string // the subject published
	body    string
	header  nats.Header
	request bool   // with a reply inbox (a JetStream API request)
	need    string // what the service uses it for
	level   int
	lost    string // what is lost when it is denied, for permDegraded and permOptional
}

// badJSON is a JSON object that no JetStream API request accepts (a string
// where a number must be), so that a create, update, purge or pull request
// carrying it is refused after the permission check and does nothing.
const badJSON = `{"batch":"queue-janitor doctor: permission probe","seq":"queue-janitor doctor: permission probe","name":0,"config":0}`

// notEmpty is the body of a delete probe: the server refuses a delete
// request whose body is not empty.
const notEmpty = "queue-janitor doctor: permission probe"

// doctorHeader marks every message the doctor publishes.
const doctorHeader = "Queue-Janitor-Doctor"

// permissionProbes lists every publish permission of the service, with
// the subjects built from the configured names. The list follows the
// JetStream calls in queue/, events/ and handlers/, and
// deploy/nats/nats-server.conf; the replay of the event stream and the TTL
// removal are permissions the service is about to use.
func permissionProbes(cfg Config, bucketTTL, bucketDirect bool) []permProbe {
	n, in, id := cfg.Names, cfg.Intake, doctorProbeJob
	kvStream, kvKey := "KV_"+cfg.Records.Bucket, "$KV."+cfg.Records.Bucket+"."+queue.JobKey(id)
	jobStream, jobConsumer, dlq := n.StreamName(id), n.ConsumerName(id), n.DeadLetterConsumerName(id)
	const replay = "queue-janitor-doctor-probe"
	p := []permProbe{
		{grant: "$JS.API.INFO", subject: "$JS.API.INFO", request: true, level: permRequired,
			need: "account information, read when the bucket is created"},
		{grant: "$JS.API.STREAM.CREATE." + in.Stream, subject: "$JS.API.STREAM.CREATE." + in.Stream, body: badJSON, request: true,
			level: permRequired, need: "creating the event stream when it is missing"},
		{grant: "$JS.API.CONSUMER.CREATE." + in.Stream + "." + in.Consumer, subject: "$JS.API.CONSUMER.CREATE." + in.Stream + "." + in.Consumer,
			body: badJSON, request: true, level: permRequired, need: "creating or updating the durable event consumer"},
		{grant: "$JS.API.CONSUMER.MSG.NEXT." + in.Stream + "." + in.Consumer, subject: "$JS.API.CONSUMER.MSG.NEXT." + in.Stream + "." + in.Consumer,
			body: badJSON, request: true, level: permRequired, need: "pulling events"},
		{grant: "$JS.ACK." + in.Stream + "." + in.Consumer + ".>", subject: "$JS.ACK." + in.Stream + "." + in.Consumer + ".1.0.0.0.0",
			body: notEmpty, level: permRequired, need: "acking, nak-ing and terminating events"},
		{grant: "$JS.API.STREAM.CREATE." + kvStream, subject: "$JS.API.STREAM.CREATE." + kvStream, body: badJSON, request: true,
			level: permRequired, need: "creating the bucket when it is missing"},
		{grant: "$JS.API.DIRECT.GET." + kvStream + ".>", subject: "$JS.API.DIRECT.GET." + kvStream + "." + kvKey, request: true,
			level: permRequired, need: "reading records and leases"},
		{grant: "$JS.API.STREAM.MSG.GET." + kvStream, subject: "$JS.API.STREAM.MSG.GET." + kvStream,
			body: `{"last_by_subj":"` + kvKey + `"}`, request: true, level: permOptional,
			need: "reading records from a bucket without direct get", lost: "not needed: the bucket allows direct get"},
		{grant: "$KV." + cfg.Records.Bucket + ".>", subject: kvKey, request: true, level: permRequired,
			header: nats.Header{doctorHeader: {"permission probe"}, jetstream.ExpectedStreamHeader: {"queue-janitor-doctor-no-such-stream"},
				jetstream.ExpectedLastSubjSeqHeader: {"18446744073709551615"}},
			need: "writing records and leases (compare-and-set); the probe's expected stream makes the bucket refuse it"},
		{grant: "$JS.API.STREAM.INFO.*", subject: "$JS.API.STREAM.INFO." + in.Stream, request: true, level: permRequired,
			need: "binding the event stream"},
		{grant: "$JS.API.STREAM.INFO.*", subject: "$JS.API.STREAM.INFO." + kvStream, request: true, level: permRequired,
			need: "binding the bucket"},
		{grant: "$JS.API.STREAM.INFO.*", subject: "$JS.API.STREAM.INFO." + jobStream, request: true, level: permRequired,
			need: "the fence: reading a job stream's creation time and metadata before deleting it"},
		{grant: "$JS.API.STREAM.INFO.*", subject: "$JS.API.STREAM.INFO." + n.AdvisoryStream, request: true, level: permRequired,
			need: "the reconciler: the advisory stream"},
		{grant: "$JS.API.CONSUMER.INFO.*.*", subject: "$JS.API.CONSUMER.INFO." + in.Stream + "." + in.Consumer, request: true,
			level: permRequired, need: "binding the event consumer"},
		{grant: "$JS.API.CONSUMER.INFO.*.*", subject: "$JS.API.CONSUMER.INFO." + jobStream + "." + jobConsumer, request: true,
			level: permRequired, need: "the reconciler's verdict and ls: a job's task consumer"},
		{grant: "$JS.API.CONSUMER.INFO.*.*", subject: "$JS.API.CONSUMER.INFO." + n.AdvisoryStream + "." + dlq, request: true,
			level: permRequired, need: "the fence of a dead-letter consumer"},
		{grant: "$JS.API.STREAM.DELETE.*", subject: "$JS.API.STREAM.DELETE." + jobStream, body: notEmpty, request: true,
			level: permRequired, need: "deleting a finished job's stream"},
		{grant: "$JS.API.STREAM.PURGE.*", subject: "$JS.API.STREAM.PURGE." + jobStream, body: badJSON, request: true,
			level: permRequired, need: "emptying a job's stream before a restart flush deletes it"},
		{grant: "$JS.API.CONSUMER.DELETE." + n.AdvisoryStream + ".*", subject: "$JS.API.CONSUMER.DELETE." + n.AdvisoryStream + "." + dlq,
			body: notEmpty, request: true, level: permRequired, need: "deleting a job's dead-letter consumer"},
		{grant: "$JS.API.STREAM.LIST", subject: "$JS.API.STREAM.LIST", body: `{"subject":"` + n.SubjectName(id) + `"}`, request: true,
			level: permRequired, need: "the reconciler, ls and sweep page through the job streams"},
		{grant: "$JS.API.CONSUMER.LIST." + n.AdvisoryStream, subject: "$JS.API.CONSUMER.LIST." + n.AdvisoryStream, request: true,
			level: permDegraded, need: "the reconciler pages through the dead-letter consumers",
			lost: "dead-letter consumers left without their job's stream are not cleaned"},
		{grant: "$JS.API.CONSUMER.CREATE." + in.Stream + ".*", subject: "$JS.API.CONSUMER.CREATE." + in.Stream + "." + replay,
			body: badJSON, request: true, level: permDegraded, need: "a read-only replay of the event stream, to rebuild lost records",
			lost: "records lost with the bucket cannot be rebuilt from the event stream"},
		{grant: "$JS.API.CONSUMER.CREATE." + in.Stream + ".*.>", subject: "$JS.API.CONSUMER.CREATE." + in.Stream + "." + replay + "." + in.Subject,
			body: badJSON, request: true, level: permDegraded, need: "the same replay, in the form nats.go uses for a single filter subject",
			lost: "records lost with the bucket cannot be rebuilt from the event stream"},
		{grant: "$JS.API.CONSUMER.MSG.NEXT." + in.Stream + ".*", subject: "$JS.API.CONSUMER.MSG.NEXT." + in.Stream + "." + replay,
			body: badJSON, request: true, level: permDegraded, need: "reading the replay",
			lost: "records lost with the bucket cannot be rebuilt from the event stream"},
		{grant: "$JS.API.STREAM.MSG.GET." + in.Stream, subject: "$JS.API.STREAM.MSG.GET." + in.Stream, body: badJSON, request: true,
			level: permOptional, need: "reading an event back when its event stream may have been replaced while it was handled",
			lost: "judged by the event stream's creation time instead"},
		{grant: "$JS.API.STREAM.UPDATE." + kvStream, subject: "$JS.API.STREAM.UPDATE." + kvStream, body: badJSON, request: true,
			level: permOptional, need: "dropping the TTL of a bucket an older version created", lost: "not needed: the bucket has no TTL"},
	}
	for i := range p {
		switch {
		case p[i].subject == "$JS.API.STREAM.CREATE."+in.Stream && in.Bind:
			p[i].level, p[i].lost = permOptional, "not needed with --bind-event-stream"
		case p[i].subject == "$JS.API.STREAM.MSG.GET."+kvStream && !bucketDirect:
			p[i].level = permRequired
		case p[i].subject == "$JS.API.STREAM.UPDATE."+kvStream && bucketTTL:
			p[i].level, p[i].lost = permDegraded, "the bucket's TTL stays: records keep expiring"
		}
	}
	return p
}

// announceProbes are the core NATS subjects the service publishes on.
func announceProbes(cfg Config) []permProbe {
	id := doctorProbeJob.String()
	hdr := nats.Header{doctorHeader: {"permission probe: ignore"}, jetstream.ExpectedStreamHeader: {"queue-janitor-doctor-no-such-stream"}}
	fill := func(p string) string { return strings.Replace(p, queue.IDPlaceholder, id, 1) }
	return []permProbe{
		{grant: strings.Replace(cfg.Events.CleanedSubject, queue.IDPlaceholder, "*", 1), subject: fill(cfg.Events.CleanedSubject),
			header: hdr, level: permRequired, need: "announcing a cleanup (job.queue.cleaned)"},
		{grant: strings.Replace(cfg.Events.FlushedSubject, queue.IDPlaceholder, "*", 1), subject: fill(cfg.Events.FlushedSubject),
			header: hdr, level: permRequired, need: "answering a restart request; the backend publishes the new round only after it"},
		{grant: cfg.Events.DeadLetterSubject, subject: cfg.Events.DeadLetterSubject, header: hdr, level: permRequired,
			need: "dead-lettering invalid events"},
	}
}

// probe publishes p and reports whether the server let it through, and
// what it answered when the reply could be read.
func (d *doctor) probe(p permProbe) (permitted bool, answer string, err error) {
	msg := &nats.Msg{Subject: p.subject, Data: []byte(p.body), Header: p.header}
	var sub *nats.Subscription
	if p.request && d.inboxOK {
		msg.Reply = d.nc.NewInbox()
		if sub, err = d.nc.SubscribeSync(msg.Reply); err != nil {
			return false, "", err
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	before := d.nc.LastError()
	if err := d.nc.PublishMsg(msg); err != nil {
		return false, "", err
	}
	if err := d.nc.FlushTimeout(d.timeout()); err != nil {
		return false, "", err
	}
	if d.violated(before, `Publish to "`+p.subject+`"`) {
		return false, "", nil
	}
	if sub == nil {
		return true, "", nil
	}
	// The answer only confirms what the absence of a violation says, so
	// its wait is short; nothing answers a pull from a missing consumer.
	wait := min(d.timeout(), replyWait)
	reply, err := sub.NextMsg(wait)
	if err != nil {
		return true, "no answer within " + wait.String(), nil
	}
	return true, describeReply(reply), nil
}

// replyWait bounds the wait for a probe's answer.
const replyWait = time.Second

// describeReply renders a JetStream API answer: its error, a status, or
// "answered".
func describeReply(m *nats.Msg) string {
	if status := m.Header.Get("Status"); status != "" {
		if status == "503" {
			return "no responders"
		}
		return strings.TrimSpace(status + " " + m.Header.Get("Description"))
	}
	var resp struct {
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if json.Unmarshal(m.Data, &resp) == nil && resp.Error != nil {
		return resp.Error.Description
	}
	return "answered, no error"
}

func (d *doctor) checkPermissions() {
	hasTTL, direct := false, true
	if d.bucket != nil {
		hasTTL, direct = d.bucket.Config.MaxAge > 0, d.bucket.Config.AllowDirect
	}
	probes := permissionProbes(d.cfg, hasTTL, direct)
	if d.publishProbes {
		probes = append(probes, announceProbes(d.cfg)...)
	}
	for _, p := range probes {
		d.add(d.permissionCheck(p))
	}
	if !d.publishProbes {
		for _, p := range announceProbes(d.cfg) {
			d.add(doctorCheck{Check: "permission publish " + p.grant, Status: doctorSkip, Subject: p.subject,
				Detail: "not tested (" + p.need + "): a probe is a message the backend's subscribers receive; --publish-probes sends one empty message on " + p.subject})
		}
	}
}

func (d *doctor) permissionCheck(p permProbe) doctorCheck {
	c := doctorCheck{Check: "permission publish " + p.grant, Subject: p.subject}
	permitted, answer, err := d.probe(p)
	if err != nil {
		c.Status, c.Detail = doctorWarn, fmt.Sprintf("not tested (probe %s): %v", p.subject, err)
		return c
	}
	c.Permitted = &permitted
	if permitted {
		c.Status, c.Detail = doctorOK, "allowed ("+p.need+")"
		if answer != "" {
			c.Detail += "; the server's answer to the probe " + p.subject + ": " + answer
		}
		return c
	}
	fix := fmt.Sprintf("allow publishing to %s for this user (deploy/nats/nats-server.conf; deploy/README.md, \"A least-privilege NATS user\")", p.grant)
	switch p.level {
	case permRequired:
		c.Status, c.Fix = doctorFail, fix
		c.Detail = fmt.Sprintf("denied (probe %s): the service needs it for %s", p.subject, p.need)
	case permDegraded:
		c.Status, c.Fix = doctorWarn, fix
		c.Detail = fmt.Sprintf("denied (probe %s), used for %s: %s", p.subject, p.need, p.lost)
	default:
		c.Status = doctorOK
		c.Detail = fmt.Sprintf("denied (probe %s), used for %s; %s", p.subject, p.need, p.lost)
	}
	return c
}

// jobStreamSummary is what the naming check needs of a stream.
type jobStreamSummary struct {
	Name      string
	Subjects  []string
	Consumers int
}

// namingMismatch is a stream that looks like a job's task stream but that
// the naming patterns do not match.
type namingMismatch struct {
	Stream string
	Why    string
}

// classifyStreams splits streams into the job streams the patterns match
// and those that look like task streams (a single subject that the subject
// pattern matches with any id, or a name with the stream pattern's prefix)
// but do not match. skip names the shared streams.
func classifyStreams(n queue.Names, skip func(string) bool, streams []jobStreamSummary) (matched []jobStreamSummary, mismatched []namingMismatch) {
	prefix, _, _ := strings.Cut(n.Stream, queue.IDPlaceholder)
	taskSubject := func(subjects []string) bool {
		return len(subjects) == 1 && subjectMatches(n.SubjectFilter(), subjects[0])
	}
	for _, s := range streams {
		if skip(s.Name) {
			continue
		}
		id, ok := n.JobFromStream(s.Name)
		switch {
		case ok && len(s.Subjects) == 1 && s.Subjects[0] == n.SubjectName(id):
			matched = append(matched, s)
		case ok:
			mismatched = append(mismatched, namingMismatch{s.Name, fmt.Sprintf("subjects %s, not %s (--subject-pattern %s)",
				strings.Join(s.Subjects, " "), n.SubjectName(id), n.Subject)})
		case taskSubject(s.Subjects) || (prefix != "" && strings.HasPrefix(s.Name, prefix)):
			mismatched = append(mismatched, namingMismatch{s.Name, fmt.Sprintf("subject %s; the name does not match --stream-pattern %s",
				strings.Join(s.Subjects, " "), n.Stream)})
		}
	}
	return matched, mismatched
}

// subjectMatches reports whether the literal subject matches filter (with
// * and > wildcards).
func subjectMatches(filter, subject string) bool {
	return subjectCovers(filter, subject) && !strings.ContainsAny(subject, "*>")
}

// subjectCovers reports whether every subject that pattern b matches is
// also matched by pattern a (both may hold * and >).
func subjectCovers(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i, t := range at {
		switch {
		case t == ">":
			return i < len(bt)
		case i >= len(bt):
			return false
		case t == "*":
			if bt[i] == ">" {
				return false
			}
		case t != bt[i]:
			return false
		}
	}
	return len(at) == len(bt)
}

// maxConsumerChecks bounds the task-consumer names read per run.
const maxConsumerChecks = 50

func (d *doctor) checkJobStreams(ctx context.Context) {
	n := d.cfg.Names
	check := doctorCheck{Check: "job streams"}
	lctx, cancel := context.WithTimeout(ctx, 10*d.timeout())
	defer cancel()
	var streams []jobStreamSummary
	l := d.js.ListStreams(lctx)
	for info := range l.Info() {
		streams = append(streams, jobStreamSummary{Name: info.Config.Name, Subjects: info.Config.Subjects, Consumers: info.State.Consumers})
	}
	if err := l.Err(); err != nil {
		check.Status, check.Detail = doctorFail, "could not list the streams: "+err.Error()
		check.Fix = "see the $JS.API.STREAM.LIST permission line"
		d.add(check)
		return
	}
	skip := func(name string) bool {
		return name == d.cfg.Intake.Stream || name == n.AdvisoryStream || strings.HasPrefix(name, "KV_") || strings.HasPrefix(name, "OBJ_")
	}
	matched, mismatched := classifyStreams(n, skip, streams)
	// A matched stream with consumers, none of them named by the consumer
	// pattern: the backend names its consumers otherwise.
	checked := 0
	for _, s := range matched {
		if s.Consumers == 0 || checked == maxConsumerChecks {
			continue
		}
		checked++
		id, _ := n.JobFromStream(s.Name)
		cctx, cancel := context.WithTimeout(ctx, d.timeout())
		_, err := d.js.Consumer(cctx, s.Name, n.ConsumerName(id))
		cancel()
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			mismatched = append(mismatched, namingMismatch{s.Name, fmt.Sprintf("%s, none named %s (--consumer-pattern %s)",
				count(s.Consumers, "consumer"), n.ConsumerName(id), n.Consumer)})
		}
	}
	patterns := fmt.Sprintf("--stream-pattern %s, --subject-pattern %s, --consumer-pattern %s", n.Stream, n.Subject, n.Consumer)
	switch {
	case len(mismatched) > 0:
		var list []string
		for i, m := range mismatched {
			if i == 5 {
				list = append(list, fmt.Sprintf("and %d more", len(mismatched)-5))
				break
			}
			list = append(list, m.Stream+" ("+m.Why+")")
		}
		check.Status = doctorWarn
		check.Detail = fmt.Sprintf("%s the patterns do not match, though they look like job streams: %s; %s match",
			count(len(mismatched), "stream"), strings.Join(list, "; "), count(len(matched), "job stream"))
		check.Fix = "the service will never clean these; check " + patterns + " against the backend's names"
	case len(matched) == 0 && d.records == 0:
		check.Status = doctorWarn
		check.Detail = fmt.Sprintf("no job streams (%s) and no records: nothing to check the naming against", patterns)
		check.Fix = "run doctor again once the backend has run a job; if it has, its names differ from the patterns"
	default:
		check.Status = doctorOK
		check.Detail = fmt.Sprintf("%s match the patterns (%s); none looks like a job stream without matching", count(len(matched), "job stream"), patterns)
	}
	d.add(check)
}
