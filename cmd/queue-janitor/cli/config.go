package cli

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/handlers"
	"github.com/example/queue-janitor/queue"
)

// Config is every setting of every command, filled from flags and
// environment variables over the defaults of [DefaultConfig].
type Config struct {
	NATS     NATSConfig
	Embedded EmbeddedConfig
	Names    queue.Names
	Intake   events.IntakeConfig
	Events   events.PublisherConfig
	Retry    queue.RetryPolicy
	Records  queue.StoreConfig

	// TerminalStatuses is a comma-separated list of statuses to clean up on.
	TerminalStatuses string
	Lease            time.Duration
	// TrustNewBucket lets claims act at once in a newly created key-value
	// bucket instead of waiting a lease first (see handlers.Config).
	TrustNewBucket bool

	Reconcile ReconcileConfig

	LogLevel  string
	LogFormat string
	// HTTPAddr is the health and metrics listener; "" turns it off.
	HTTPAddr string
	// Pprof serves /debug/pprof/ on the HTTP listener.
	Pprof bool

	// trustFirstBucket is set by serve when its embedded server started
	// with an empty store: the bucket created then had no predecessor.
	trustFirstBucket bool
}

// NATSConfig says how to reach and authenticate to NATS.
type NATSConfig struct {
	URL          string
	User         string
	Password     string
	Token        string
	NKeySeedFile string
	CredsFile    string
	TLSCAFile    string
	TLSCertFile  string
	TLSKeyFile   string
	// InboxPrefix replaces _INBOX for replies and pulled messages, so that
	// a least-privilege user can be allowed to subscribe to its own inboxes
	// only ("" keeps _INBOX).
	InboxPrefix string
	// ConnectTimeout bounds the first connection.
	ConnectTimeout time.Duration

	// offerEmbedded is set for commands that have --embedded-nats, so that
	// their errors may suggest it.
	offerEmbedded bool
}

// EmbeddedConfig configures the in-process JetStream server.
type EmbeddedConfig struct {
	Enabled bool
	// Listen is host:port for clients (port 0 picks a free one).
	Listen string
	// StoreDir keeps JetStream data; "" uses a temporary directory that is
	// removed at exit.
	StoreDir string
}

// ReconcileConfig configures the periodic reconciler.
type ReconcileConfig struct {
	// Interval between passes; 0 turns the reconciler off.
	Interval time.Duration
	// Grace is how long after a job's terminal event a stream created after
	// it is left alone, in case a restart request is still on its way.
	Grace time.Duration
	// OrphanIdle is how long a stream of a job unknown to the service must
	// be idle to be reported as an orphan.
	OrphanIdle time.Duration
	// SweepOrphans deletes orphans instead of only reporting them.
	SweepOrphans bool
	// LeaseTTL bounds how long a crashed sweeper blocks the others.
	LeaseTTL time.Duration
}

// DefaultNATSURL is where the service looks for NATS when told nothing.
const DefaultNATSURL = "nats://127.0.0.1:4222"

// EmbeddedHTTPAddr is serve's default --http-addr with --embedded-nats: the
// loopback interface only, like the embedded server itself, instead of
// every interface. An --http-addr or QUEUE_JANITOR_HTTP_ADDR that is set
// wins; `healthcheck` probes 127.0.0.1 either way.
const EmbeddedHTTPAddr = "127.0.0.1:8080"

// DefaultConfig returns the contract's defaults.
func DefaultConfig() Config {
	return Config{
		NATS:     NATSConfig{URL: DefaultNATSURL, ConnectTimeout: 5 * time.Second},
		Embedded: EmbeddedConfig{Listen: "127.0.0.1:4222"},
		Names:    queue.DefaultNames(),
		Intake:   events.DefaultIntakeConfig(),
		Events:   events.DefaultPublisherConfig(),
		Retry:    queue.DefaultRetryPolicy(),
		Records:  queue.StoreConfig{Bucket: "queue_janitor_jobs", Replicas: 1},

		TerminalStatuses: "revoked,failure,cancelled",
		Lease:            handlers.DefaultLease,

		Reconcile: ReconcileConfig{
			Interval:   time.Minute,
			Grace:      2 * time.Minute,
			OrphanIdle: time.Hour,
			LeaseTTL:   2 * time.Minute,
		},

		LogLevel:  "info",
		LogFormat: "auto",
		HTTPAddr:  ":8080",
	}
}

// Terminal returns the parsed terminal statuses.
func (c Config) Terminal() []events.Status {
	var out []events.Status
	for _, s := range splitList(c.TerminalStatuses) {
		out = append(out, events.ParseStatus(s))
	}
	return out
}

// Handler returns the decisions' configuration for replica owner.
func (c Config) Handler(owner string) handlers.Config {
	hc := handlers.Config{Terminal: c.Terminal(), Lease: c.Lease, Owner: owner, Quarantine: c.Lease}
	if c.TrustNewBucket {
		hc.Quarantine = 0
	}
	return hc
}

// Validate checks the settings a command uses and names the first bad one
// with its flag.
func (c Config) Validate() error {
	if err := c.NATS.Validate(c.Embedded.Enabled); err != nil {
		return err
	}
	if c.Embedded.Enabled {
		_, port, err := net.SplitHostPort(c.Embedded.Listen)
		if err != nil {
			return fmt.Errorf("--embedded-listen %q: want host:port: %w", c.Embedded.Listen, err)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("--embedded-listen %q: bad port %q: want a number from 0 (any free port) to 65535", c.Embedded.Listen, port)
		}
	}
	if err := c.Names.Validate(); err != nil {
		return fmt.Errorf("naming: %w", err)
	}
	if err := c.Intake.Validate(); err != nil {
		return fmt.Errorf("event intake: %w", err)
	}
	if err := c.Events.Validate(); err != nil {
		return fmt.Errorf("emitted events: %w", err)
	}
	if strings.HasPrefix(c.Events.DeadLetterSubject, c.Intake.SubjectPrefix()) {
		return fmt.Errorf("--deadletter-subject %q is under --event-subject %q: rejected events would be read again",
			c.Events.DeadLetterSubject, c.Intake.Subject)
	}
	if err := c.Retry.Validate(); err != nil {
		return fmt.Errorf("--retry-*: %w", err)
	}
	if c.Records.Bucket == "" || strings.ContainsAny(c.Records.Bucket, ".*> ") {
		return fmt.Errorf("--kv-bucket %q: not a valid bucket name", c.Records.Bucket)
	}
	if c.Records.Replicas < 1 || c.Records.Replicas > 5 {
		return fmt.Errorf("--kv-replicas %d: must be 1 to 5", c.Records.Replicas)
	}
	if err := c.Handler("validate").Validate(); err != nil {
		return fmt.Errorf("decisions: %w", err)
	}
	if c.Reconcile.Interval < 0 || c.Reconcile.Grace < 0 || c.Reconcile.OrphanIdle <= 0 || c.Reconcile.LeaseTTL <= 0 {
		return errors.New("--reconcile-*: durations must not be negative (interval 0 turns the reconciler off)")
	}
	return nil
}

// Validate checks that the authentication options make one coherent choice.
func (c NATSConfig) Validate(embedded bool) error {
	if !embedded && c.URL == "" {
		if c.offerEmbedded {
			return errors.New("--nats-url is empty: set NATS_URL, or use --embedded-nats")
		}
		return errors.New("--nats-url is empty: set NATS_URL")
	}
	if !embedded {
		if err := validateURLs(c.URL); err != nil {
			return err
		}
	}
	methods := 0
	for _, set := range []bool{c.User != "", c.Token != "", c.NKeySeedFile != "", c.CredsFile != ""} {
		if set {
			methods++
		}
	}
	switch {
	case methods > 1:
		return errors.New("NATS authentication: choose one of user/password, token, NKey seed or creds file")
	case c.Password != "" && c.User == "":
		return errors.New("--nats-password given without --nats-user")
	case (c.TLSCertFile == "") != (c.TLSKeyFile == ""):
		return errors.New("--nats-tls-cert and --nats-tls-key go together")
	case c.InboxPrefix != "" && (strings.ContainsAny(c.InboxPrefix, "*> ") || strings.HasSuffix(c.InboxPrefix, ".")):
		return fmt.Errorf("--nats-inbox-prefix %q: want a subject prefix without wildcards or a trailing dot", c.InboxPrefix)
	case c.ConnectTimeout <= 0:
		return errors.New("--nats-connect-timeout must be positive")
	}
	return nil
}

// validateURLs checks each comma-separated NATS URL, so that a malformed
// one (nats//host) is reported as such rather than as a failure to connect.
// Like nats.go it accepts host:port without a scheme.
func validateURLs(list string) error {
	if strings.Trim(list, ", \t") == "" {
		return errors.New("--nats-url has no URL: want nats://host:port, several separated by commas")
	}
	for _, item := range strings.Split(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue // as nats.go does
		}
		full := item
		if !strings.Contains(item, "://") {
			full = "nats://" + item
		}
		u, err := url.Parse(full)
		if err != nil {
			return fmt.Errorf("--nats-url: %q is not a valid URL (%w): want nats://host:port", item, errors.Unwrap(err))
		}
		switch {
		case !oneOf(u.Scheme, "nats", "tls", "ws", "wss"):
			return fmt.Errorf("--nats-url: %q has scheme %q: want nats://, tls://, ws:// or wss://", item, u.Scheme)
		case u.Hostname() == "" || (u.Path != "" && u.Path != "/" && !strings.HasPrefix(u.Scheme, "ws")) || u.RawQuery != "" || u.Fragment != "":
			return fmt.Errorf("--nats-url: %q is not a valid NATS URL: want nats://host:port", item)
		}
	}
	return nil
}
