package telemetry

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestRedactorMasksSecrets(t *testing.T) {
	t.Parallel()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	account, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	userJWT, err := jwt.NewUserClaims(pub).Encode(account)
	if err != nil {
		t.Fatal(err)
	}
	r := NewRedactor(append([]string{"pa\"ss wörd", "t0ken-value"}, URLSecrets("nats://alice:url-pw@a:4222, nats://tok-in-url@b:4222,nats//bob:malformed-pw@c")...)...)
	cases := map[string]struct{ in, want string }{
		"password in URL":    {"NATS at nats://alice:url-pw@127.0.0.1:4222 refused", "NATS at nats://xxxxx:xxxxx@127.0.0.1:4222 refused"},
		"token in URL":       {"cannot reach nats://tok-in-url@b:4222", "cannot reach nats://xxxxx@b:4222"},
		"URL list":           {"nats://u:p@a:1,nats://v:q@b:2", "nats://xxxxx:xxxxx@a:1,nats://xxxxx:xxxxx@b:2"},
		"unknown URL secret": {`{"url":"tls://someone:else@h"}`, `{"url":"tls://xxxxx:xxxxx@h"}`},
		"malformed URL":      {"nats//bob:malformed-pw@c", "nats//xxxxx:xxxxx@c"},
		"bare password":      {"password t0ken-value given", "password xxxxx given"},
		"JSON-escaped":       {`{"password":"pa\"ss wörd"}`, `{"password":"xxxxx"}`},
		"quoted":             {fmt.Sprintf("%q", "pa\"ss wörd"), `"xxxxx"`},
		"URL-escaped":        {"pa%22ss+w%C3%B6rd", "xxxxx"},
		"seed":               {"seed " + string(seed) + " in a message", "seed xxxxx in a message"},
		"jwt":                {"jwt " + userJWT + " here", "jwt xxxxx here"},
		"public key kept":    {"user " + pub, "user " + pub},
		"nothing secret":     {"job 7 (job_7): clean: terminal", "job 7 (job_7): clean: terminal"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if got := r.String(tc.in); got != tc.want {
				t.Errorf("String(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestRedactedErrorKeepsTheChain(t *testing.T) {
	t.Parallel()
	sentinel := errors.New("refused")
	r := NewRedactor("hunter2")
	err := r.Error(fmt.Errorf("password hunter2: %w", sentinel))
	if err.Error() != "password xxxxx: refused" || !errors.Is(err, sentinel) {
		t.Errorf("Error() = %q, Is(sentinel) = %v", err, errors.Is(err, sentinel))
	}
	var wrapped *redactedError
	if got := r.Error(sentinel); !errors.Is(got, sentinel) || errors.As(got, &wrapped) || r.Error(nil) != nil {
		t.Error("an error without a secret must come back as it is")
	}
	var buf bytes.Buffer
	if _, err := fmt.Fprintf(r.Writer(&buf), "url nats://u:hunter2@h\n"); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "url nats://xxxxx:xxxxx@h\n" {
		t.Errorf("Writer wrote %q", buf.String())
	}
}

func TestRedactedSpans(t *testing.T) {
	t.Parallel()
	r := NewRedactor("hunter2")
	rec := tracetest.NewSpanRecorder()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(r.SpanProcessor(rec)),
		sdktrace.WithSyncer(r.SpanExporter(exp)))
	_, span := tp.Tracer("test").Start(t.Context(), "connect nats://u:hunter2@h")
	span.SetAttributes(attribute.String("url", "nats://tok@h"), attribute.StringSlice("list", []string{"hunter2"}))
	span.RecordError(errors.New("refused hunter2"))
	span.SetStatus(codes.Error, "hunter2")
	span.End()
	ended := rec.Ended()
	stubs := exp.GetSpans() // the syncer exported it at End; Shutdown empties the exporter
	if err := tp.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if len(ended) != 1 || len(stubs) != 1 {
		t.Fatalf("spans: %d recorded, %d exported", len(ended), len(stubs))
	}
	text := fmt.Sprint(ended[0].Name(), ended[0].Attributes(), ended[0].Events(), ended[0].Status(), stubs[0])
	for _, secret := range []string{"hunter2", "tok@", "u:"} {
		if strings.Contains(text, secret) {
			t.Errorf("span holds %q: %s", secret, text)
		}
	}
	if !strings.Contains(text, "xxxxx") {
		t.Errorf("span shows no mask: %s", text)
	}
}

// TestRedactorFiltersNeverSkipAMatch: the cheap checks that spare most text
// the regular expressions hold for every text the expressions match.
func TestRedactorFiltersNeverSkipAMatch(t *testing.T) {
	t.Parallel()
	seed := "SUAM" + strings.Repeat("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 2)[:48]
	texts := []string{
		seed, "x " + seed + " y", seed[:51], "S" + seed[1:51] + "7", // 52 characters: the shortest seed
		"eyJhbGciOiJlZDI1NTE5In0.eyJqdGkiOiJBQkNEIn0.sig", "token=eyJabcdefgh.ijklmnopq.r",
	}
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567 abcxyz019.-_eyJ"
	for range 20000 {
		b := make([]byte, rng.IntN(120))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		texts = append(texts, string(b))
	}
	seeds, jwts := 0, 0
	for _, s := range texts {
		if seedRE.MatchString(s) {
			seeds++
			if !mayHoldSeed(s) {
				t.Errorf("%q holds a seed but the filter skips it", s)
			}
		}
		if jwtRE.MatchString(s) {
			jwts++
			if !strings.Contains(s, jwtPrefix) {
				t.Errorf("%q holds a JWT but the filter skips it", s)
			}
		}
	}
	if seeds < 3 || jwts < 2 {
		t.Fatalf("only %d seeds and %d JWTs among the texts: the test checks nothing", seeds, jwts)
	}
	if mayHoldSeed(seed[:51]) || mayHoldSeed("lower case text with an @ and no seed") {
		t.Error("the seed filter lets through text that cannot hold one")
	}
}

// TestRedactedSpanCopiesOnlyWhatChanges: clean attributes and events are
// passed through as they are, and a secret is masked in a copy, never in
// the span's own data.
func TestRedactedSpanCopiesOnlyWhatChanges(t *testing.T) {
	t.Parallel()
	r := NewRedactor("hunter2")
	clean := []attribute.KeyValue{attribute.String("jetstream.stream", "job_7"), attribute.Int("retry.attempts", 1)}
	if got := r.attributes(clean); !sameSlice(got, clean) {
		t.Errorf("clean attributes were copied: %v", got)
	}
	secret := []attribute.KeyValue{attribute.String("jetstream.stream", "job_7"), attribute.String("error", "auth hunter2"),
		attribute.StringSlice("list", []string{"a", "hunter2"})}
	got := r.attributes(secret)
	if sameSlice(got, secret) || got[1].Value.AsString() != "auth "+Mask || got[2].Value.AsStringSlice()[1] != Mask ||
		got[0] != secret[0] {
		t.Errorf("attributes with a secret: got %v", got)
	}
	if secret[1].Value.AsString() != "auth hunter2" || secret[2].Value.AsStringSlice()[1] != "hunter2" {
		t.Errorf("the span's own attributes were changed: %v", secret)
	}

	events := []sdktrace.Event{{Name: "kv.create", Attributes: clean}, {Name: "kv.update failed", Attributes: secret}}
	span := &redactedSpan{ReadOnlySpan: tracetest.SpanStub{Name: "process", Events: events}.Snapshot(), r: r}
	out := span.Events()
	if len(out) != 2 || !sameSlice(out[0].Attributes, clean) || out[1].Attributes[1].Value.AsString() != "auth "+Mask {
		t.Errorf("events: got %v", out)
	}
	if events[1].Attributes[1].Value.AsString() != "auth hunter2" {
		t.Error("the span's own event was changed")
	}
	cleanOnly := []sdktrace.Event{{Name: "kv.create", Attributes: clean}}
	span = &redactedSpan{ReadOnlySpan: tracetest.SpanStub{Name: "process", Events: cleanOnly}.Snapshot(), r: r}
	if out := span.Events(); len(out) != 1 || &out[0] != &span.ReadOnlySpan.Events()[0] {
		t.Errorf("clean events were copied: %v", out)
	}
}
