package cli

// The flag groups. Each command registers the groups it uses, so that its
// --help lists exactly the flags it reads.

const envPrefix = "QUEUE_JANITOR_"

func connFlags(f *flagSet, c *Config) {
	f.group("NATS connection")
	f.String(&c.NATS.URL, "nats-url", "NATS_URL", "NATS server URL(s), comma-separated")
	f.String(&c.NATS.User, "nats-user", "NATS_USER", "user name (with --nats-password)")
	f.String(&c.NATS.Password, "nats-password", "NATS_PASSWORD", "password for --nats-user")
	f.String(&c.NATS.Token, "nats-token", "NATS_TOKEN", "authentication token")
	f.String(&c.NATS.NKeySeedFile, "nats-nkey-seed", "NATS_NKEY_SEED", "file holding an NKey user seed")
	f.String(&c.NATS.CredsFile, "nats-creds", "NATS_CREDS", "decentralized-auth .creds file (JWT and seed)")
	f.String(&c.NATS.TLSCAFile, "nats-tls-ca", "NATS_TLS_CA", "CA certificate file to verify the server")
	f.String(&c.NATS.TLSCertFile, "nats-tls-cert", "NATS_TLS_CERT", "client certificate file (mutual TLS)")
	f.String(&c.NATS.TLSKeyFile, "nats-tls-key", "NATS_TLS_KEY", "client key file (mutual TLS)")
	f.String(&c.NATS.InboxPrefix, "nats-inbox-prefix", "NATS_INBOX_PREFIX", "prefix of reply subjects instead of _INBOX (lets permissions allow subscribing to <prefix>.> only)")
	f.Duration(&c.NATS.ConnectTimeout, "nats-connect-timeout", "NATS_CONNECT_TIMEOUT", "timeout of the first connection")
}

func embeddedFlags(f *flagSet, c *Config) {
	f.group("Embedded NATS (for trying it out: not for production)")
	c.NATS.offerEmbedded = true
	f.Bool(&c.Embedded.Enabled, "embedded-nats", envPrefix+"EMBEDDED_NATS", "run an in-process JetStream server and use it instead of --nats-url")
	f.String(&c.Embedded.Listen, "embedded-listen", envPrefix+"EMBEDDED_LISTEN", "client address of the embedded server (port 0: any free port)")
	f.String(&c.Embedded.StoreDir, "embedded-store-dir", envPrefix+"EMBEDDED_STORE_DIR", "JetStream data directory of the embedded server (empty: a temporary one, removed at exit)")
}

func namesFlags(f *flagSet, c *Config) {
	f.group("The backend's naming ({id} is the job id)")
	f.String(&c.Names.Stream, "stream-pattern", envPrefix+"STREAM_PATTERN", "task stream of a job")
	f.String(&c.Names.Subject, "subject-pattern", envPrefix+"SUBJECT_PATTERN", "task subject of a job (its stream's only subject)")
	f.String(&c.Names.Consumer, "consumer-pattern", envPrefix+"CONSUMER_PATTERN", "durable task consumer of a job")
	f.String(&c.Names.DeadLetterConsumer, "dlq-consumer-pattern", envPrefix+"DLQ_CONSUMER_PATTERN", "a job's consumer on the shared advisory stream")
	f.String(&c.Names.AdvisoryStream, "advisory-stream", envPrefix+"ADVISORY_STREAM", "shared advisory stream (never deleted)")
}

func intakeFlags(f *flagSet, c *Config) {
	f.group("Event intake")
	eventStreamFlags(f, c)
	f.Int(&c.Intake.Replicas, "event-stream-replicas", envPrefix+"EVENT_STREAM_REPLICAS", "replicas of the event stream when created")
	f.Duration(&c.Intake.MaxAge, "event-max-age", envPrefix+"EVENT_MAX_AGE", "how long the event stream keeps events when created")
	f.Int(&c.Intake.MaxDeliver, "max-deliver", envPrefix+"MAX_DELIVER", "deliveries of an event that fails for a reason of its own before it is dead-lettered (failures of NATS itself are retried until they pass)")
	f.Duration(&c.Intake.AckWait, "ack-wait", envPrefix+"ACK_WAIT", "redelivery wait for an event left unacknowledged")
	f.Int(&c.Intake.Concurrency, "concurrency", envPrefix+"CONCURRENCY", "events handled at once per process (one at a time per job)")
	f.Int(&c.Intake.MaxEventBytes, "max-event-bytes", envPrefix+"MAX_EVENT_BYTES", "largest accepted event (body and headers)")
	f.Duration(&c.Intake.EffectTimeout, "effect-timeout", envPrefix+"EFFECT_TIMEOUT", "bound on handling one event once started")
	f.Duration(&c.Intake.ShutdownTimeout, "shutdown-timeout", envPrefix+"SHUTDOWN_TIMEOUT", "wait for in-flight events at shutdown")
}

// eventStreamFlags are the names of the event stream and the durable
// consumer, and whether the service creates the stream.
func eventStreamFlags(f *flagSet, c *Config) {
	f.String(&c.Intake.Stream, "event-stream", envPrefix+"EVENT_STREAM", "JetStream stream holding job-status events")
	f.String(&c.Intake.Subject, "event-subject", envPrefix+"EVENT_SUBJECT", "subjects of job-status events; * is the status")
	f.String(&c.Intake.Consumer, "consumer", envPrefix+"CONSUMER", "durable consumer shared by all replicas")
	f.Bool(&c.Intake.Bind, "bind-event-stream", envPrefix+"BIND_EVENT_STREAM", "require the event stream to exist instead of creating it")
}

func eventsFlags(f *flagSet, c *Config) {
	f.group("Emitted events")
	f.String(&c.Events.Source, "event-source", envPrefix+"EVENT_SOURCE", "CloudEvents source of emitted events")
	announceFlags(f, c)
}

// announceFlags are the subjects the service publishes on.
func announceFlags(f *flagSet, c *Config) {
	f.String(&c.Events.CleanedSubject, "cleaned-subject", envPrefix+"CLEANED_SUBJECT", "subject announcing a terminal cleanup")
	f.String(&c.Events.FlushedSubject, "flushed-subject", envPrefix+"FLUSHED_SUBJECT", "subject announcing a restart flush")
	f.String(&c.Events.DeadLetterSubject, "deadletter-subject", envPrefix+"DEADLETTER_SUBJECT", "subject receiving rejected events")
}

func decisionFlags(f *flagSet, c *Config) {
	f.group("Decisions and safety")
	f.String(&c.TerminalStatuses, "terminal-statuses", envPrefix+"TERMINAL_STATUSES", "statuses whose queue is cleaned, comma-separated")
	f.Duration(&c.Lease, "lease", envPrefix+"LEASE", "how long a claim on one job lasts from its last renewal (renewed every third of it while acting); a dead replica blocks its jobs this long")
	f.Duration(&c.Intake.MaxPark, "busy-wait", envPrefix+"BUSY_WAIT", "longest an event waits, parked, for another claim on its job before it is handed back to the server")
	f.Duration(&c.Intake.MaxFuture, "max-event-future", envPrefix+"MAX_EVENT_FUTURE", "dead-letter events whose time is further ahead of their arrival at NATS (a broken producer clock); 0: no limit")
}

func recordFlags(f *flagSet, c *Config) {
	f.group("Per-job records")
	f.String(&c.Records.Bucket, "kv-bucket", envPrefix+"KV_BUCKET", "key-value bucket of per-job records")
	f.Int(&c.Records.Replicas, "kv-replicas", envPrefix+"KV_REPLICAS", "replicas of the bucket when created")
	f.Bool(&c.TrustNewBucket, "trust-new-bucket", envPrefix+"TRUST_NEW_BUCKET", "act at once in a newly created key-value bucket instead of waiting one --lease first (a replica that held a claim in a deleted bucket of the same name may still act that long): only when no other process can have used an earlier bucket of that name")
	f.Duration(&c.Records.TTL, "kv-ttl", envPrefix+"KV_TTL", "when creating the bucket, let records of jobs not heard of for this long expire (0: never); an expired record's order is lost, so a late event of that job is judged by the fence alone")
}

func retryFlags(f *flagSet, c *Config) {
	f.group("Retries of JetStream calls")
	f.Duration(&c.Retry.Initial, "retry-initial", envPrefix+"RETRY_INITIAL", "first backoff interval")
	f.Duration(&c.Retry.Max, "retry-max-interval", envPrefix+"RETRY_MAX_INTERVAL", "longest backoff interval")
	f.Duration(&c.Retry.MaxElapsed, "retry-max-elapsed", envPrefix+"RETRY_MAX_ELAPSED", "give up on one call after this long (the event is retried later)")
	f.Duration(&c.Retry.AttemptTimeout, "retry-attempt-timeout", envPrefix+"RETRY_ATTEMPT_TIMEOUT", "deadline of each attempt")
}

func reconcileFlags(f *flagSet, c *Config) {
	f.group("Reconciler")
	f.Duration(&c.Reconcile.Interval, "reconcile-interval", envPrefix+"RECONCILE_INTERVAL", "time between passes (0: off)")
	f.Duration(&c.Reconcile.Grace, "reconcile-grace", envPrefix+"RECONCILE_GRACE", "wait after a terminal event before cleaning a stream created after it")
	f.Duration(&c.Reconcile.OrphanIdle, "orphan-idle", envPrefix+"ORPHAN_IDLE", "idle time after which a stream of an unknown job is an orphan")
	f.Bool(&c.Reconcile.SweepOrphans, "sweep-orphans", envPrefix+"SWEEP_ORPHANS", "delete orphans instead of only reporting them")
	f.Duration(&c.Reconcile.LeaseTTL, "reconcile-lease", envPrefix+"RECONCILE_LEASE", "sweeper lease; a crashed sweeper blocks others at most this long")
}

func logFlags(f *flagSet, c *Config) {
	f.group("Logs")
	f.String(&c.LogLevel, "log-level", envPrefix+"LOG_LEVEL", "debug, info, warn or error")
	f.String(&c.LogFormat, "log-format", envPrefix+"LOG_FORMAT", "json, console, or auto (console on a terminal)")
}

func httpFlags(f *flagSet, c *Config) {
	f.group("Health and metrics")
	f.String(&c.HTTPAddr, "http-addr", envPrefix+"HTTP_ADDR", "address of /healthz, /readyz and /metrics (empty: off)")
	f.Bool(&c.Pprof, "pprof", envPrefix+"PPROF", "also serve Go's profiler at /debug/pprof/ on --http-addr (keep it off the public network)")
}
