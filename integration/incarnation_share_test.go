package integration

import (
	"strings"
	"sync"
	"testing"
	"time"

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
	e := setup(t)
	proxy := newWireProxy(t, e.url, wireDelay)
	_, js := natstest.Connect(t, proxy.URL())
	store, err := queue.OpenStore(t.Context(), js, queue.StoreConfig{Bucket: "shared_jobs", Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	infoSubject := "STREAM.INFO.KV_shared_jobs"
	count := func() int {
		n := 0
		for _, op := range proxy.snapshot() {
			if op.fromClient && strings.HasSuffix(op.subject, infoSubject) {
				n++
			}
		}
		return n
	}
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
