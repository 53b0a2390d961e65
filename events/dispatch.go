package events

import (
	"context"
	"sync"
)

// dispatcher runs work concurrently with a bound, one item at a time per
// key, in submission order within a key. An empty key is never serialized.
type dispatcher struct {
	slots chan struct{}
	wg    sync.WaitGroup

	mu     sync.Mutex
	queues map[string][]func()
}

func newDispatcher(limit int) *dispatcher {
	return &dispatcher{slots: make(chan struct{}, limit), queues: map[string][]func(){}}
}

// submit blocks while limit items are pending (queued or running), which is
// how a slow job back-pressures the consumer.
func (d *dispatcher) submit(key string, work func()) {
	d.slots <- struct{}{}
	d.wg.Add(1)
	if key == "" {
		go d.run(work)
		return
	}
	d.mu.Lock()
	q, busy := d.queues[key]
	d.queues[key] = append(q, work)
	d.mu.Unlock()
	if !busy {
		go d.drain(key)
	}
}

func (d *dispatcher) run(work func()) {
	defer func() { <-d.slots; d.wg.Done() }()
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
// reports whether everything finished.
func (d *dispatcher) wait(ctx context.Context) bool {
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}
