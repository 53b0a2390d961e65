package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

// TestFrozenReplicaDoesNotBlockOtherJobs: replica A freezes (its network a
// black hole) while it holds some jobs' leases. Replica B, with a single
// concurrency slot, must clean every job A does not hold while A's leases
// still run: waiting for A's jobs holds no slot.
func TestFrozenReplicaDoesNotBlockOtherJobs(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const jobs = 30
	ensureEventStream(t, e.js)
	for id := queue.JobID(1); id <= jobs; id++ {
		e.provision(id, 5, nil)
	}
	proxy := newTCPProxy(t, strings.TrimPrefix(e.url, "nats://"))
	timing := []string{"--lease", "10s", "--ack-wait", "2s", "--retry-attempt-timeout", "1s"}
	cleaned := subscribe(t, e.nc, "job.queue.cleaned.*")
	startServe(t, e.js, append(append(baseArgs(proxy.URL()), timing...), "--concurrency", "4"), zerolog.NewTestWriter(t))
	// A is slowed by its own network: each job's claim, lookups and deletes
	// cross the proxy; it takes the first events and is frozen mid-storm.
	for id := queue.JobID(1); id <= jobs; id++ {
		e.emit(events.StatusEvent{JobID: id, Status: events.StatusRevoked})
	}
	eventually(t, 30*time.Second, "A's first answers", func() bool { return cleaned.count() >= 3 })
	proxy.freeze()
	frozen := time.Now()

	store := e.store(t)
	held := map[queue.JobID]bool{}
	for id := queue.JobID(1); id <= jobs; id++ {
		rec, _, err := store.Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Lease != nil {
			held[id] = true
		}
	}
	startServe(t, e.js, append(append(baseArgs(e.url), timing...), "--concurrency", "1"), zerolog.NewTestWriter(t))

	eventually(t, 60*time.Second, "every job A does not hold cleaned by B", func() bool {
		for id := queue.JobID(1); id <= jobs; id++ {
			if !held[id] && streamExists(t, e.js, e.names.StreamName(id)) {
				return false
			}
		}
		return true
	})
	others := time.Since(frozen)
	stillHeld := 0
	for id := range held {
		rec, _, err := store.Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Lease != nil && !rec.Done {
			stillHeld++
		}
	}
	t.Logf("A frozen holding %d jobs; B cleaned the other %d jobs %s after the freeze, with %d of A's leases still running",
		len(held), jobs-len(held), others.Round(100*time.Millisecond), stillHeld)
	if len(held) > 0 && stillHeld == 0 {
		t.Errorf("B cleaned the other jobs only after A's leases had run out (%s): waiting for A's jobs held B's slot", others)
	}
	e.awaitJobsGone(t, jobs, 60*time.Second, "A's jobs too, once its leases expired")
	t.Logf("every job gone %s after the freeze (lease 10s, ack wait 2s)", time.Since(frozen).Round(100*time.Millisecond))
}
