package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/telemetry"
)

// connect opens the NATS connection, reconnecting forever once it is up,
// and checks at once that the server offers JetStream to this account
// (else a [JetStreamOffError]). A failure to reach the server says what to
// check. Nothing published while the connection is down is buffered for
// later: such a publish fails at once (and is retried by its caller), so
// that no request can reach the server long after its sender gave up on it.
func connect(ctx context.Context, c NATSConfig, name string, log zerolog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	nc, err := dial(c, name, log, extra...)
	if err != nil {
		return nil, err
	}
	if err := checkJetStream(ctx, nc, c.ConnectTimeout); err != nil {
		nc.Close()
		return nil, err
	}
	return nc, nil
}

// dial is connect without the JetStream check.
func dial(c NATSConfig, name string, log zerolog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.ReconnectBufSize(-1),
		nats.Timeout(c.ConnectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn().Err(err).Msg("disconnected from NATS; reconnecting")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("server", nc.ConnectedUrlRedacted()).Msg("reconnected to NATS")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			e := log.Warn().Err(err)
			if errors.Is(err, nats.ErrPermissionViolation) {
				// Requests then time out with nothing more to say: name the cause here.
				e = log.Error().Err(err).Str("hint", "the NATS user lacks a permission the service needs: "+
					"see deploy/README.md (Permissions); if it may subscribe to its own inbox only, set --nats-inbox-prefix (NATS_INBOX_PREFIX) to match")
			}
			if sub != nil {
				e = e.Str("nats_subject", sub.Subject)
			}
			e.Msg("NATS asynchronous error")
		}),
	}
	switch {
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	case c.NKeySeedFile != "":
		opt, err := nats.NkeyOptionFromSeed(c.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("NKey seed %q: %w", c.NKeySeedFile, err)
		}
		opts = append(opts, opt)
	case c.CredsFile != "":
		if err := checkCreds(c.CredsFile); err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(c.InboxPrefix))
	}
	if c.TLSCAFile != "" {
		opts = append(opts, nats.RootCAs(c.TLSCAFile))
	}
	if c.TLSCertFile != "" {
		opts = append(opts, nats.ClientCert(c.TLSCertFile, c.TLSKeyFile))
	}
	nc, err := nats.Connect(c.URL, append(opts, extra...)...)
	if err != nil {
		return nil, connectError(c, err)
	}
	return nc, nil
}

// JetStreamOffError is returned when the server, or the account, has no
// JetStream: the most common first mistake (nats-server started without
// -js). It wraps jetstream.ErrJetStreamNotEnabled or
// jetstream.ErrJetStreamNotEnabledForAccount.
type JetStreamOffError struct {
	// URL is the server connected to, its user information masked.
	URL string
	Err error
}

// Error says what is missing and what to do.
func (e *JetStreamOffError) Error() string {
	if errors.Is(e.Err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return fmt.Sprintf("JetStream is not enabled for this account on %s: enable it for the account in the server's configuration (jetstream: enabled)", e.URL)
	}
	return fmt.Sprintf("JetStream is not enabled on %s: start nats-server with -js", e.URL)
}

// Unwrap returns nats.go's error.
func (e *JetStreamOffError) Unwrap() error { return e.Err }

// checkJetStream asks the server for the account's JetStream information
// once, within timeout. Only a definite "not enabled" fails: any other
// answer (a timeout, a permission the user lacks) is left to the calls
// that follow, which retry and report it.
func checkJetStream(ctx context.Context, nc *nats.Conn, timeout time.Duration) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return &JetStreamOffError{URL: telemetry.RedactURL(nc.ConnectedUrl()), Err: err}
	}
	return nil
}

// checkCreds reads a .creds file before connecting, so that a missing or
// malformed file is reported as such rather than as a connection failure.
func checkCreds(path string) error {
	data, err := os.ReadFile(path) //nolint:gosec // the operator names the file
	if err != nil {
		return fmt.Errorf("NATS creds file: %w: set NATS_CREDS (or --nats-creds) to the file `nsc generate creds` wrote", err)
	}
	if _, err := nkeys.ParseDecoratedJWT(data); err != nil {
		return fmt.Errorf("NATS creds file %s: no user JWT in it (%w): want the file `nsc generate creds` writes", path, err)
	}
	if _, err := nkeys.ParseDecoratedNKey(data); err != nil {
		return fmt.Errorf("NATS creds file %s: no user seed in it (%w): want the file `nsc generate creds` writes", path, err)
	}
	return nil
}

func connectError(c NATSConfig, err error) error {
	url := telemetry.RedactURL(c.URL)
	switch {
	case errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked):
		return fmt.Errorf("NATS at %s refused the credentials: %w: check NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_NKEY_SEED or NATS_CREDS", url, err)
	case errors.Is(err, nats.ErrNoServers) && c.offerEmbedded:
		return fmt.Errorf("cannot reach NATS at %s: %w: is the server running? set NATS_URL (or --nats-url), or try --embedded-nats", url, err)
	case errors.Is(err, nats.ErrNoServers):
		return fmt.Errorf("cannot reach NATS at %s: %w: is the server running? set NATS_URL (or --nats-url)", url, err)
	}
	return fmt.Errorf("cannot connect to NATS at %s: %w: check the URL and the TLS settings (NATS_TLS_CA, NATS_TLS_CERT, NATS_TLS_KEY)", url, err)
}

// embedded is an in-process JetStream server.
type embedded struct {
	srv     *server.Server
	tempDir string
	// fresh says the server started with an empty data directory.
	fresh bool
}

// startEmbedded starts a JetStream server listening on c.Listen with its
// data in c.StoreDir (a temporary directory when empty).
func startEmbedded(c EmbeddedConfig) (*embedded, error) {
	host, portText, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return nil, fmt.Errorf("--embedded-listen %q: %w", c.Listen, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("--embedded-listen %q: bad port: %w", c.Listen, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	} else {
		// The server reports a taken port only by never becoming ready; try
		// the address first so that the error says what is wrong, at once.
		ln, err := net.Listen("tcp", c.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded NATS cannot listen on %s: %w: is the port taken? try --embedded-listen 127.0.0.1:0", c.Listen, err)
		}
		_ = ln.Close()
	}
	e := &embedded{}
	dir := c.StoreDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "queue-janitor-nats-"); err != nil {
			return nil, fmt.Errorf("embedded NATS data directory: %w", err)
		}
		e.tempDir = dir
	}
	e.fresh = emptyDir(dir)
	srv, err := server.NewServer(&server.Options{
		ServerName: "queue-janitor-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   dir,
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 8 << 20,
	})
	if err != nil {
		e.removeTemp()
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	e.srv = srv
	srv.Start()
	if !srv.ReadyForConnections(15 * time.Second) {
		e.stop()
		return nil, fmt.Errorf("embedded NATS did not start listening on %s: is the port taken? try --embedded-listen 127.0.0.1:0", c.Listen)
	}
	return e, nil
}

// emptyDir reports whether dir holds nothing (or does not exist yet).
func emptyDir(dir string) bool {
	entries, err := os.ReadDir(dir)
	return (err == nil || os.IsNotExist(err)) && len(entries) == 0
}

// URL is where clients reach the embedded server.
func (e *embedded) URL() string { return e.srv.ClientURL() }

// StoreDir is where its data lives.
func (e *embedded) StoreDir() string { return e.srv.JetStreamConfig().StoreDir }

func (e *embedded) stop() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
	e.removeTemp()
}

func (e *embedded) removeTemp() {
	if e.tempDir != "" {
		_ = os.RemoveAll(e.tempDir)
	}
}
