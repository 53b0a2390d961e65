package integration

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/integration/natstest"
)

// TestCleanedWaitsForTheServer: a terminal job's answer goes out beside the
// effect's record write, and the event is acknowledged once both are done;
// so Cleaned returns only when the server has the answer (a flush), and an
// error when it cannot tell: the event is then handed back and answered
// again, instead of acknowledged with its answer lost in a broken
// connection (TestServerDownMidStorm met that). The proxy holds the
// server's replies for 3 s: Cleaned, given 500 ms, must fail; Flushed,
// which is sent only after the record and not waited for, returns at once.
func TestCleanedWaitsForTheServer(t *testing.T) {
	t.Parallel()
	e := setup(t)
	proxy := newWireProxy(t, e.url, 3*time.Second)
	nc, _ := natstest.Connect(t, proxy.URL(), nats.Timeout(10*time.Second))
	pub := events.NewPublisher(nc, events.DefaultPublisherConfig(), nil)
	r := events.QueueResult{JobID: 7, Status: events.StatusRevoked, CauseEventID: "e1", Outcome: events.OutcomeRemoved}

	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if err := pub.Cleaned(ctx, r); err == nil {
		t.Error("Cleaned returned before the server could have confirmed the answer (its replies are held 3 s)")
	}
	ctx2, cancel2 := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel2()
	if err := pub.Flushed(ctx2, r); err != nil {
		t.Errorf("Flushed: %v; it is not waited for", err)
	}
}
