package integration

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/example/queue-janitor/integration/natstest"
	"github.com/example/queue-janitor/queue"
)

// TestIncarnationChecksAreShared: the bucket's incarnation check, which
// every claim waits for, is one request in flight at a time; the claims
// that come while it is in flight share the next one. A storm of claims
// thus costs two requests per round trip, not one per claim, and each
// caller still gets an answer from a request sent after it asked (the
// server, in this process, answers with its time: never before the call).
// The proxy holds the server's replies for 100 ms so that the callers
// certainly arrive while the first request is in flight.
func TestIncarnationChecksAreShared(t *testing.T) {
	t.Parallel()
	store, sent := storeBehindProxy(t, wireDelay, "shared_jobs")
	count := func() int { return len(sent()) }
	before := count()

	const callers = 30
	var wg sync.WaitGroup
	errs := make(chan error, callers+1)
	call := func() {
		began := time.Now()
		inc, err := store.Incarnation(t.Context())
		switch {
		case err != nil:
			errs <- err
		case inc.Now.Before(began):
			t.Errorf("an answer read at %s for a call made at %s: the request was sent before the call",
				inc.Now.Format(time.RFC3339Nano), began.Format(time.RFC3339Nano))
		}
	}
	wg.Go(call)
	eventually(t, 5*time.Second, "the first check sent", func() bool { return count() > before })
	for range callers {
		wg.Go(call)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := count() - before; got != 2 {
		t.Errorf("%d callers, the first alone: %d stream-info requests of the bucket; want 2 (the first, then one shared by "+
			"everyone who came while it was in flight)", callers+1, got)
	}
}

// TestIncarnationCheckNotHeldBySlowReply: a check whose reply is slow (held
// here for a second by the proxy, as a lost or delayed reply would be)
// holds the callers that came after it for the sharing window only; then
// their own request goes out.
func TestIncarnationCheckNotHeldBySlowReply(t *testing.T) {
	t.Parallel()
	const held = time.Second
	store, sent := storeBehindProxy(t, held, "slow_jobs")
	before := len(sent())
	var wg sync.WaitGroup
	call := func() {
		if _, err := store.Incarnation(t.Context()); err != nil {
			t.Error(err)
		}
	}
	wg.Go(call)
	eventually(t, 5*time.Second, "the first check sent", func() bool { return len(sent()) > before })
	wg.Go(call)
	wg.Wait()
	at := sent()[before:]
	if len(at) != 2 {
		t.Fatalf("%d stream-info requests of the bucket for two callers; want 2", len(at))
	}
	if gap := at[1].Sub(at[0]); gap >= held {
		t.Errorf("the second caller's request went out %s after the first, whose reply was held %s: it waited for that reply "+
			"instead of the sharing window", gap.Round(time.Millisecond), held)
	}
}

// storeBehindProxy opens a record store in bucket through a proxy that holds
// the server's replies for delay, and returns it with a function listing
// when each stream-info request of the bucket (its incarnation check) went
// out.
func storeBehindProxy(t *testing.T, delay time.Duration, bucket string) (*queue.Store, func() []time.Time) {
	t.Helper()
	e := setup(t)
	proxy := newWireProxy(t, e.url, delay)
	_, js := natstest.Connect(t, proxy.URL(), nats.Timeout(10*time.Second))
	store, err := queue.OpenStore(t.Context(), js, queue.StoreConfig{Bucket: bucket, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	infoSubject := "STREAM.INFO.KV_" + bucket
	return store, func() []time.Time {
		var at []time.Time
		for _, op := range proxy.snapshot() {
			if op.fromClient && strings.HasSuffix(op.subject, infoSubject) {
				at = append(at, op.at)
			}
		}
		return at
	}
}
