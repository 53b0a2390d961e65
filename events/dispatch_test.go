package events

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// waitTimeout bounds every wait in these tests; reaching it is a failure,
// never the thing asserted.
const waitTimeout = 10 * time.Second

// waitClosed fails the test unless ch is closed within waitTimeout.
func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// waitDispatcher fails the test unless every item finishes within
// waitTimeout.
func waitDispatcher(t *testing.T, d *dispatcher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if !d.wait(ctx) {
		t.Fatal("dispatcher.wait timed out")
	}
}

// eventually polls cond until it holds, failing after waitTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// gate is closed once, by the test or at its cleanup, so that no work item
// is left blocked (and leaked) when a test fails.
func gate(t *testing.T) (ch chan struct{}, open func()) {
	t.Helper()
	ch = make(chan struct{})
	var once sync.Once
	open = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(open)
	return ch, open
}

func TestDispatcherSameKeyRunsOneAtATimeInOrder(t *testing.T) {
	t.Parallel()
	const perKey = 200
	keys := []string{"1", "2", "3"}
	d := newDispatcher(4)
	var (
		mu     sync.Mutex
		order  = map[string][]int{}
		active = map[string]*atomic.Int32{}
	)
	for _, k := range keys {
		active[k] = new(atomic.Int32)
	}
	var overlaps atomic.Int32
	for i := range perKey {
		for _, k := range keys {
			d.submit(k, func() {
				if active[k].Add(1) != 1 {
					overlaps.Add(1)
				}
				runtime.Gosched()
				mu.Lock()
				order[k] = append(order[k], i)
				mu.Unlock()
				active[k].Add(-1)
			})
		}
	}
	waitDispatcher(t, d)
	if n := overlaps.Load(); n != 0 {
		t.Errorf("%d items ran while another item of the same key was running", n)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, k := range keys {
		if got := order[k]; len(got) != perKey || !slices.IsSorted(got) {
			t.Errorf("key %s ran %d items in order %v, want 0..%d in order", k, len(got), got, perKey-1)
		}
	}
	// Each key's drain goroutine forgets the key just after its last item.
	eventually(t, "every key to be forgotten", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.queues) == 0
	})
}

// TestDispatcherRunsConcurrently proves concurrency with a barrier: every
// item waits until all have started, which only happens if they run at once.
func TestDispatcherRunsConcurrently(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		keys []string
	}{
		{name: "different keys", keys: []string{"1", "2", "3", "4"}},
		{name: "empty key is never serialized", keys: []string{"", "", "", ""}},
		{name: "empty key beside a keyed item", keys: []string{"", "7", ""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := newDispatcher(len(tc.keys))
			var started sync.WaitGroup
			started.Add(len(tc.keys))
			all, openAll := gate(t)
			go func() { started.Wait(); openAll() }()
			var finished atomic.Int32
			for _, k := range tc.keys {
				d.submit(k, func() {
					started.Done()
					select {
					case <-all:
						finished.Add(1)
					case <-time.After(waitTimeout):
					}
				})
			}
			waitClosed(t, all, "every item to be running at once")
			waitDispatcher(t, d)
			if got := finished.Load(); got != int32(len(tc.keys)) {
				t.Errorf("%d items passed the barrier, want %d", got, len(tc.keys))
			}
		})
	}
}

func TestDispatcherBoundsConcurrency(t *testing.T) {
	t.Parallel()
	const limit, total = 3, 60
	d := newDispatcher(limit)
	var inFlight, peak, done, submitted atomic.Int32
	full, openFull := gate(t)
	release, openRelease := gate(t)
	work := func() {
		n := inFlight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		if n >= limit {
			openFull()
		}
		<-release
		runtime.Gosched()
		inFlight.Add(-1)
		done.Add(1)
	}
	allSubmitted := make(chan struct{})
	go func() {
		defer close(allSubmitted)
		for i := range total {
			// Distinct keys first, so that the limit is reachable; then
			// a mix of keys, repeated keys and the empty key.
			d.submit([]string{"a", "b", "c", "", "a", "d"}[i%6], work)
			submitted.Add(1)
		}
	}()
	waitClosed(t, full, fmt.Sprintf("%d items in flight", limit))
	// Every slot is taken, so the next submit blocks: back-pressure.
	if got := submitted.Load(); got != limit {
		t.Errorf("%d submits returned with %d items blocked, want %d", got, limit, limit)
	}
	openRelease()
	waitClosed(t, allSubmitted, "every submit to return")
	waitDispatcher(t, d)
	if got := peak.Load(); got != limit {
		t.Errorf("peak in flight = %d, want exactly the limit %d", got, limit)
	}
	if got := done.Load(); got != total {
		t.Errorf("%d items ran, want %d", got, total)
	}
}

func TestDispatcherWait(t *testing.T) {
	t.Parallel()
	d := newDispatcher(2)
	if !d.wait(t.Context()) {
		t.Fatal("wait on an idle dispatcher = false, want true")
	}
	release, openRelease := gate(t)
	var done atomic.Int32
	for _, k := range []string{"1", ""} {
		d.submit(k, func() { <-release; done.Add(1) })
	}

	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	if d.wait(cancelled) {
		t.Error("wait with a cancelled ctx and blocked work = true, want false")
	}
	expiring, cancel2 := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel2()
	if d.wait(expiring) {
		t.Error("wait with an expiring ctx and blocked work = true, want false")
	}
	if got := done.Load(); got != 0 {
		t.Fatalf("%d items finished before release", got)
	}

	openRelease()
	waitDispatcher(t, d)
	if got := done.Load(); got != 2 {
		t.Errorf("wait returned true with %d of 2 items done", got)
	}
}

// TestDispatcherKeepsItsWorkers: items that come one after another are run
// by the workers already started (a goroutine per item would grow a fresh
// stack for each), and a successful wait lets them all go.
func TestDispatcherKeepsItsWorkers(t *testing.T) {
	t.Parallel()
	const total = 200
	d := newDispatcher(4)
	for i := range total {
		done := make(chan struct{})
		d.submit([]string{"1", "2", ""}[i%3], func() { close(done) })
		waitClosed(t, done, fmt.Sprintf("item %d", i))
		eventually(t, "the worker parked", func() bool {
			d.mu.Lock()
			defer d.mu.Unlock()
			return d.active == 0
		})
	}
	waitDispatcher(t, d)
	d.mu.Lock()
	started, parked := d.started, len(d.parked)
	d.mu.Unlock()
	if started != 1 {
		t.Errorf("%d workers started for %d items one after another, want 1", started, total)
	}
	if parked != 0 {
		t.Errorf("%d workers still parked after wait, want none", parked)
	}
	// A submit after the wait starts a worker again.
	done := make(chan struct{})
	d.submit("1", func() { close(done) })
	waitClosed(t, done, "an item submitted after wait")
	waitDispatcher(t, d)
}

// TestDispatcherCloseLeavesNoWorker: after close, a worker whose task
// outlived the shutdown's wait, and one handed a task late, exit when done
// instead of parking. Not parallel: goleak looks at the whole process.
func TestDispatcherCloseLeavesNoWorker(t *testing.T) {
	before := goleak.IgnoreCurrent()
	d := newDispatcher(2)
	release, openRelease := gate(t)
	finished := make(chan struct{})
	d.submit("1", func() { <-release; close(finished) })
	expiring, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if d.wait(expiring) {
		t.Fatal("wait with blocked work = true, want false")
	}
	d.close()
	openRelease()
	waitClosed(t, finished, "the item that outlived the wait")
	late := make(chan struct{})
	d.submit("2", func() { close(late) })
	waitClosed(t, late, "an item submitted after close")
	goleak.VerifyNone(t, before)
}
