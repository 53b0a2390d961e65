package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// runServer starts an embedded nats-server on a free port, adjusted by
// edit, and stops it at the end of the test.
func runServer(t *testing.T, edit func(*server.Options)) *server.Server {
	t.Helper()
	o := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true}
	if edit != nil {
		edit(o)
	}
	srv, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	return srv
}

// deadAddr is a loopback address nobody listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// TestJetStreamOffIsReportedAtOnce: against a server started without -js,
// and as a user whose account has no JetStream, every command stops at
// once (no retries) with an error that says so, exit status 1.
func TestJetStreamOffIsReportedAtOnce(t *testing.T) {
	t.Parallel()
	noJS := runServer(t, func(o *server.Options) { o.JetStream = false })
	acc := server.NewAccount("NOJS")
	noJSAccount := runServer(t, func(o *server.Options) {
		o.Accounts = []*server.Account{acc}
		o.Users = []*server.User{{Username: "nojs", Password: "nojs-pw", Account: acc}}
	})
	servers := map[string]struct {
		url, want string
		creds     []string
	}{
		"server without -js": {url: noJS.ClientURL(),
			want: "JetStream is not enabled on " + noJS.ClientURL() + ": start nats-server with -js"},
		"account without JetStream": {url: noJSAccount.ClientURL(), creds: []string{"--nats-user", "nojs", "--nats-password", "nojs-pw"},
			want: "JetStream is not enabled for this account on " + noJSAccount.ClientURL()},
	}
	commands := [][]string{
		{"serve", "--http-addr", ""}, {"ls"}, {"sweep"}, {"sweep", "--dry-run"}, {"clean", "7"}, {"flush", "7"},
		{"emit", "--job", "7", "--status", "revoked"},
	}
	for name, s := range servers {
		for _, args := range commands {
			t.Run(name+"/"+strings.Join(args, " "), func(t *testing.T) {
				t.Parallel()
				// A command that waited or retried would run into this
				// context; one that stops at once is far from it.
				ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				defer cancel()
				var out bytes.Buffer
				start := time.Now()
				err := Run(ctx, append(append(args, "--nats-url", s.url), s.creds...), noEnv, &out, &out)
				took := time.Since(start)
				var off *JetStreamOffError
				if !errors.As(err, &off) || errors.Is(err, ErrUsage) {
					t.Fatalf("err = %v, want a JetStreamOffError (exit status 1)\n%s", err, out.String())
				}
				if !strings.Contains(err.Error(), s.want) {
					t.Errorf("error %q does not say %q", err, s.want)
				}
				if ctx.Err() != nil {
					t.Errorf("ran into its context (%s), want an error at once", took)
				}
				if strings.Contains(out.String(), "retrying") {
					t.Errorf("retried:\n%s", out.String())
				}
			})
		}
	}
}

// TestEmitRefusesUnknownStatuses: against a real event stream, a
// misspelled status is refused and nothing is published; the backend's
// states, the terminal statuses (also a configured one) and
// restart_requested are published; --allow-any-status publishes another.
func TestEmitRefusesUnknownStatuses(t *testing.T) {
	t.Parallel()
	srv := runServer(t, nil)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "JOB_EVENTS", Subjects: []string{"job.status.*"}})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args      []string
		published string // the subject, or "" when refused
	}{
		{[]string{"--status", "canceled"}, ""},
		{[]string{"--status", "rev oked"}, ""},
		{[]string{"--status", "deleted"}, ""},
		{[]string{"--status", "cancelled"}, "job.status.cancelled"},
		{[]string{"--status", "CANCELING"}, "job.status.canceling"},
		{[]string{"--status", "success"}, "job.status.success"},
		{[]string{"--status", "restart_requested", "--attempt", "2"}, "job.status.restart_requested"},
		{[]string{"--status", "deleted", "--terminal-statuses", "revoked,failure,cancelled,deleted"}, "job.status.deleted"},
		{[]string{"--status", "canceled", "--allow-any-status"}, "job.status.canceled"},
	}
	for _, tc := range cases {
		before := streamMsgs(t, stream)
		var out bytes.Buffer
		err := Run(t.Context(), append([]string{"emit", "--job", "7", "--nats-url", srv.ClientURL()}, tc.args...), noEnv, &out, &out)
		after := streamMsgs(t, stream)
		if tc.published == "" {
			if !errors.Is(err, ErrUsage) || after != before {
				t.Errorf("emit %v: err = %v, %d messages published; want a usage error and none", tc.args, err, after-before)
			}
			continue
		}
		if err != nil || after != before+1 {
			t.Errorf("emit %v: err = %v, %d messages published; want one", tc.args, err, after-before)
			continue
		}
		msg, err := stream.GetLastMsgForSubject(t.Context(), tc.published)
		if err != nil {
			t.Errorf("emit %v: nothing on %s: %v", tc.args, tc.published, err)
			continue
		}
		var body struct {
			Data struct {
				Status string `json:"status"`
			} `json:"data"`
		}
		if err := json.Unmarshal(msg.Data, &body); err != nil || !strings.EqualFold(body.Data.Status, strings.TrimPrefix(tc.published, "job.status.")) {
			t.Errorf("emit %v: data.status %q (%v)", tc.args, body.Data.Status, err)
		}
	}
}

func streamMsgs(t *testing.T, s jetstream.Stream) uint64 {
	t.Helper()
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}
