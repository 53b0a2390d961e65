package events

import (
	"context"
	"sync"
)

// dispatcher runs work concurrently with a bound, one item at a time per
// key, in submission order within a key. An empty key is never serialized.
//
// Its workers are kept between items (up to the bound) instead of a
// goroutine started per item: an event's work runs deep call chains (JSON,
// the NATS client, tracing), and a fresh goroutine grows its stack to that
// depth, copying it each time, for every event (15% of the service's CPU in
// a storm's profile). A successful wait lets the parked workers go; close
// lets every worker go once its task is done.
type dispatcher struct {
	slots chan struct{}
	limit int

	mu     sync.Mutex
	queues map[string][]func()
	parked []chan task // idle workers, each waiting on its own channel
	// active counts the workers not parked: a worker is counted from the
	// moment it is handed a task until it parks or exits, so that while it
	// is zero no item is pending. idle is closed while active is zero (a
	// new one is made when it leaves zero).
	active  int
	idle    chan struct{}
	stopped bool // closed: a worker exits when its task is done
	started int  // workers started, for tests
}

// task is one hand-off to a worker: a key whose queue to drain, or, for the
// empty key, the work itself.
type task struct {
	key  string
	work func()
}

func newDispatcher(limit int) *dispatcher {
	idle := make(chan struct{})
	close(idle)
	return &dispatcher{slots: make(chan struct{}, limit), limit: limit, queues: map[string][]func(){}, idle: idle}
}

// submit blocks while limit items are pending (queued or running), which is
// how a slow job back-pressures the consumer.
func (d *dispatcher) submit(key string, work func()) {
	d.slots <- struct{}{}
	d.mu.Lock()
	defer d.mu.Unlock()
	if key == "" {
		d.hand(task{work: work})
		return
	}
	q, busy := d.queues[key]
	d.queues[key] = append(q, work)
	if !busy {
		d.hand(task{key: key})
	}
}

// hand gives t to a parked worker, or to a new one when none is parked.
// d.mu is held.
func (d *dispatcher) hand(t task) {
	if d.active == 0 {
		d.idle = make(chan struct{})
	}
	d.active++
	if n := len(d.parked); n > 0 {
		ch := d.parked[n-1]
		d.parked = d.parked[:n-1]
		ch <- t // buffered: the worker is parked on it
		return
	}
	d.started++
	go d.worker(t)
}

// worker carries out t, then parks until it is handed another task or let
// go; it exits instead when limit workers are parked already or the
// dispatcher is closed.
func (d *dispatcher) worker(t task) {
	ch := make(chan task, 1)
	for {
		if t.work != nil {
			d.run(t.work)
		} else {
			d.drain(t.key)
		}
		d.mu.Lock()
		keep := !d.stopped && len(d.parked) < d.limit
		if keep {
			d.parked = append(d.parked, ch)
		}
		if d.active--; d.active == 0 {
			close(d.idle)
		}
		d.mu.Unlock()
		if !keep {
			return
		}
		var ok bool
		if t, ok = <-ch; !ok {
			return
		}
	}
}

func (d *dispatcher) run(work func()) {
	defer func() { <-d.slots }()
	work()
}

// drain runs the key's queue until it is empty, then forgets the key.
func (d *dispatcher) drain(key string) {
	for {
		d.mu.Lock()
		q := d.queues[key]
		if len(q) == 0 {
			delete(d.queues, key)
			d.mu.Unlock()
			return
		}
		work := q[0]
		q[0] = nil
		d.queues[key] = q[1:]
		d.mu.Unlock()
		d.run(work)
	}
}

// wait blocks until every submitted item has finished or ctx is done; it
// reports whether everything finished. When it did, the parked workers
// exit (a later submit starts new ones).
func (d *dispatcher) wait(ctx context.Context) bool {
	d.mu.Lock()
	idle := d.idle
	d.mu.Unlock()
	select {
	case <-idle:
	case <-ctx.Done():
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.release()
	return true
}

// close lets the parked workers go, and every other one when its task is
// done, whether or not wait saw everything finish: the intake's last word,
// after which no worker stays behind (an event still running at the end of
// the shutdown's wait, a parked event handed back late).
func (d *dispatcher) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = true
	d.release()
}

// release lets the parked workers go. d.mu is held.
func (d *dispatcher) release() {
	for _, ch := range d.parked {
		close(ch)
	}
	d.parked = nil
}
