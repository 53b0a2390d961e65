package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// authMode is one way of authenticating to NATS: how the server is set up,
// how the backend connects, the serve flags that work, and flags that must
// be refused with a clear error.
type authMode struct {
	server  natstest.Option
	backend []nats.Option
	args    []string
	refused []refusal
}

// refusal is a configuration that must not start, and what its error says.
type refusal struct {
	name string
	args []string
	want []string // each must appear in the error
}

// credentialsHint is what connect says when the server refuses credentials.
const credentialsHint = "refused the credentials"

func userPasswordMode(t *testing.T) authMode {
	t.Helper()
	return authMode{
		server: func(o *server.Options) {
			o.Users = []*server.User{
				{Username: "backend", Password: "backend-secret"},
				{Username: "janitor", Password: "janitor-secret"},
			}
		},
		backend: []nats.Option{nats.UserInfo("backend", "backend-secret")},
		args:    []string{"--nats-user", "janitor", "--nats-password", "janitor-secret"},
		refused: []refusal{
			{name: "wrong password", args: []string{"--nats-user", "janitor", "--nats-password", "guess"}, want: []string{credentialsHint}},
			{name: "no credentials", want: []string{credentialsHint}},
		},
	}
}

func tokenMode(t *testing.T) authMode {
	t.Helper()
	return authMode{
		server:  func(o *server.Options) { o.Authorization = "s3cr3t-token" },
		backend: []nats.Option{nats.Token("s3cr3t-token")},
		args:    []string{"--nats-token", "s3cr3t-token"},
		refused: []refusal{
			{name: "wrong token", args: []string{"--nats-token", "guess"}, want: []string{credentialsHint}},
		},
	}
}

func nkeyMode(t *testing.T) authMode {
	t.Helper()
	dir := t.TempDir()
	seedFile := func(name string) (pub, path string) {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		seed, err := kp.Seed()
		if err != nil {
			t.Fatal(err)
		}
		if pub, err = kp.PublicKey(); err != nil {
			t.Fatal(err)
		}
		path = filepath.Join(dir, name+".nk")
		if err := os.WriteFile(path, seed, 0o600); err != nil {
			t.Fatal(err)
		}
		return pub, path
	}
	backendPub, backendSeed := seedFile("backend")
	janitorPub, janitorSeed := seedFile("janitor")
	_, strangerSeed := seedFile("stranger") // a valid seed the server does not know
	backendOpt, err := nats.NkeyOptionFromSeed(backendSeed)
	if err != nil {
		t.Fatal(err)
	}
	return authMode{
		server: func(o *server.Options) {
			o.Nkeys = []*server.NkeyUser{{Nkey: backendPub}, {Nkey: janitorPub}}
		},
		backend: []nats.Option{backendOpt},
		args:    []string{"--nats-nkey-seed", janitorSeed},
		refused: []refusal{
			{name: "unknown seed", args: []string{"--nats-nkey-seed", strangerSeed}, want: []string{credentialsHint}},
		},
	}
}

// tlsMode: the server requires a client certificate signed by the test CA
// (verify: true) and no other credentials.
func tlsMode(t *testing.T) authMode {
	t.Helper()
	p := writePKI(t, t.TempDir())
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: p.ServerCert, KeyFile: p.ServerKey, CaFile: p.CA, Verify: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	return authMode{
		server: func(o *server.Options) {
			o.TLSConfig, o.TLS, o.TLSVerify, o.TLSTimeout = tc, true, true, 5
		},
		backend: []nats.Option{nats.RootCAs(p.CA), nats.ClientCert(p.ClientCert, p.ClientKey)},
		args:    []string{"--nats-tls-ca", p.CA, "--nats-tls-cert", p.ClientCert, "--nats-tls-key", p.ClientKey},
		refused: []refusal{
			// The server refuses the handshake: "tls: certificate required", or
			// with TLS 1.3 sometimes only "tls error: connection closed".
			{name: "no client certificate", args: []string{"--nats-tls-ca", p.CA}, want: []string{"TLS settings", "tls"}},
			// The server's certificate is not trusted without the CA.
			{name: "unknown server CA", args: []string{"--nats-tls-cert", p.ClientCert, "--nats-tls-key", p.ClientKey}, want: []string{"TLS settings", "unknown authority"}},
		},
	}
}

// credsMode: decentralized JWT auth. The test builds the whole chain: an
// operator the server trusts, a system account, an application account with
// JetStream enabled (in operator mode JetStream needs account limits), and
// users whose .creds files (user JWT and seed) the clients load. The server
// resolves accounts from memory.
func credsMode(t *testing.T) authMode {
	t.Helper()
	dir := t.TempDir()
	operator, opPub := newNKey(t, nkeys.CreateOperator)
	sign := func(c interface {
		Encode(nkeys.KeyPair) (string, error)
	}, kp nkeys.KeyPair) string {
		t.Helper()
		s, err := c.Encode(kp)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// accountJWT is the operator-signed JWT of account pub.
	accountJWT := func(pub, name string, edit func(*jwt.AccountClaims)) string {
		t.Helper()
		ac := jwt.NewAccountClaims(pub)
		ac.Name = name
		if edit != nil {
			edit(ac)
		}
		return sign(ac, operator)
	}
	// credsFile writes a .creds file for a new user signed by account and
	// returns its path and the user's public key.
	credsFile := func(name string, account nkeys.KeyPair) (path, pub string) {
		t.Helper()
		kp, pub := newNKey(t, nkeys.CreateUser)
		uc := jwt.NewUserClaims(pub)
		uc.Name = name
		seed, err := kp.Seed()
		if err != nil {
			t.Fatal(err)
		}
		creds, err := jwt.FormatUserConfig(sign(uc, account), seed)
		if err != nil {
			t.Fatal(err)
		}
		path = filepath.Join(dir, name+".creds")
		if err := os.WriteFile(path, creds, 0o600); err != nil {
			t.Fatal(err)
		}
		return path, pub
	}

	_, sysPub := newNKey(t, nkeys.CreateAccount)
	sysJWT := accountJWT(sysPub, "SYS", nil)
	app, appPub := newNKey(t, nkeys.CreateAccount)
	backendCreds, _ := credsFile("backend", app)
	janitorCreds, _ := credsFile("janitor", app)
	revokedCreds, revokedPub := credsFile("revoked", app)
	appJWT := accountJWT(appPub, "APP", func(ac *jwt.AccountClaims) {
		ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		ac.Revoke(revokedPub)
	})
	// A well-formed user of an account the server has never heard of.
	stranger, _ := newNKey(t, nkeys.CreateAccount)
	strangerCreds, _ := credsFile("stranger", stranger)
	corrupt := filepath.Join(dir, "corrupt.creds")
	if err := os.WriteFile(corrupt, []byte("-----BEGIN NATS USER JWT-----\nnot a jwt\n------END NATS USER JWT------\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = "OP"
	oc.SystemAccount = sysPub
	opJWT := sign(oc, operator)
	opClaims, err := jwt.DecodeOperatorClaims(opJWT)
	if err != nil {
		t.Fatal(err)
	}
	resolver := &server.MemAccResolver{}
	for pub, j := range map[string]string{sysPub: sysJWT, appPub: appJWT} {
		if err := resolver.Store(pub, j); err != nil {
			t.Fatal(err)
		}
	}
	return authMode{
		server: func(o *server.Options) {
			o.TrustedOperators = []*jwt.OperatorClaims{opClaims}
			o.SystemAccount = sysPub
			o.AccountResolver = resolver
		},
		backend: []nats.Option{nats.UserCredentials(backendCreds)},
		args:    []string{"--nats-creds", janitorCreds},
		refused: []refusal{
			{name: "unknown account", args: []string{"--nats-creds", strangerCreds}, want: []string{credentialsHint}},
			{name: "revoked user", args: []string{"--nats-creds", revokedCreds}, want: []string{credentialsHint}},
			{name: "no credentials", want: []string{credentialsHint}},
			{name: "missing file", args: []string{"--nats-creds", filepath.Join(dir, "absent.creds")}, want: []string{"creds file", "absent.creds"}},
			// nats.go reads the file while connecting; its error names the
			// file and what is missing.
			{name: "corrupt file", args: []string{"--nats-creds", corrupt}, want: []string{"corrupt.creds", "no nkey seed found"}},
		},
	}
}

// newNKey creates a key pair with create and returns it with its public key.
func newNKey(t *testing.T, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, string) {
	t.Helper()
	kp, err := create()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return kp, pub
}

// TestAuthModes: for each way of authenticating, the service started with
// the right credentials cleans a revoked job, and started with wrong or
// missing ones it stops at once with an error that says what to check.
func TestAuthModes(t *testing.T) {
	t.Parallel()
	modes := map[string]func(*testing.T) authMode{
		"user-password": userPasswordMode,
		"token":         tokenMode,
		"nkey":          nkeyMode,
		"tls":           tlsMode,
		"creds":         credsMode,
	}
	for name, mode := range modes {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m := mode(t)
			srv := natstest.RunServer(t, m.server)
			nc, js := natstest.Connect(t, srv.URL(), m.backend...)
			e := &env{t: t, srv: srv, url: srv.URL(), nc: nc, js: js, names: queue.DefaultNames()}
			e.provision(7, 25, events.Attempt(1))
			cleaned := subscribe(t, nc, "job.queue.cleaned.7")

			startServe(t, js, append(baseArgs(e.url), m.args...), zerolog.NewTestWriter(t))
			e.emit(events.StatusEvent{JobID: 7, Status: events.StatusRevoked, Attempt: events.Attempt(1)})
			eventually(t, 15*time.Second, "job 7 cleaned", func() bool { return cleaned.count() == 1 })
			if streamExists(t, js, "job_7") {
				t.Error("job_7 survived REVOKED")
			}

			for _, r := range m.refused {
				err := serveOnce(t, append(baseArgs(e.url), r.args...), 30*time.Second)
				if err == nil {
					t.Errorf("%s: serve started", r.name)
					continue
				}
				t.Logf("%s refused: %v", r.name, err)
				for _, want := range r.want {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("%s: error %q does not say %q", r.name, err, want)
					}
				}
			}
		})
	}
}
