package handlers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/example/queue-janitor/queue"
)

// ErrLeaseLost is [queue.ErrLeaseLost].
var ErrLeaseLost = queue.ErrLeaseLost

// claim is one hold of a job's lease: a token of its own, written with
// compare-and-set, renewed while the effect runs. It is the [queue.Authority]
// of the effect's requests: its Deadline is the end of the lease as this
// process can prove it (the moment the claim or its last renewal was sent,
// plus the lease, minus a safety margin), never judged by another clock.
type claim struct {
	h     *Handler
	id    queue.JobID
	token string

	mu        sync.Mutex
	rec       queue.Record // as last written by this claim
	rev       uint64
	deadline  time.Time
	lost      bool
	last      queue.Record // the record as a reload found it when the lease was lost
	first     uint64       // the revision the claim wrote
	intentRev uint64       // the revision its intent wrote, if any
	// foreign says that another writer changed the record while the claim
	// held it (a status recorded, the rebuild's merge): a reload found it.
	foreign bool

	stop chan struct{}
	done chan struct{}
}

// newLease returns a fresh lease for a claim starting at now.
func (h *Handler) newLease(now time.Time) queue.Lease {
	return queue.Lease{Owner: h.cfg.Owner, Token: newToken(), TTL: h.cfg.Lease, Until: now.Add(h.cfg.Lease)}
}

// margin is how long before the lease's end a holder stops sending
// requests: the time a request may take to reach the server.
func (h *Handler) margin() time.Duration { return h.cfg.Lease / 4 }

// take writes next, whose Lease is a new one, over revision rev. On success
// the claim is held and renewed until it ends; [queue.ErrConflict] means
// another writer got there first. A write whose reply was lost and whose
// retry conflicted with itself is recognized by its token.
func (h *Handler) take(ctx context.Context, id queue.JobID, next queue.Record, rev uint64) (*claim, error) {
	sent := h.now()
	newRev, err := h.records.Put(ctx, id, next, rev)
	if errors.Is(err, queue.ErrConflict) {
		cur, curRev, gerr := h.records.Get(ctx, id)
		if gerr != nil || cur.Lease == nil || cur.Lease.Token != next.Lease.Token {
			return nil, err
		}
		next, newRev, err = cur, curRev, nil // ours landed
	}
	if err != nil {
		return nil, err
	}
	c := &claim{h: h, id: id, token: next.Lease.Token, rec: next, rev: newRev, first: newRev,
		deadline: sent.Add(h.cfg.Lease - h.margin()), stop: make(chan struct{}), done: make(chan struct{})}
	if h.renew {
		go c.renewLoop(ctx)
	} else {
		close(c.done)
	}
	if h.onClaim != nil {
		h.onClaim(c)
	}
	return c, nil
}

// Deadline implements [queue.Authority].
func (c *claim) Deadline() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deadline
}

// held reports whether the claim is still held as far as this process
// knows: no write or renewal found it taken over.
func (c *claim) held() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.lost
}

// renewLoop renews the lease every third of its length until stopped.
func (c *claim) renewLoop(ctx context.Context) {
	defer close(c.done)
	t := time.NewTicker(c.h.cfg.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
			if !c.Renew(ctx) {
				return
			}
		}
	}
}

// Renew extends the lease by writing it again; it reports whether the claim
// is still held. A failed write leaves the deadline where it was, so the
// authority runs out unless a later renewal succeeds.
func (c *claim) Renew(ctx context.Context) bool {
	for range 3 {
		c.mu.Lock()
		rec, rev, lost := c.rec, c.rev, c.lost
		c.mu.Unlock()
		if lost {
			return false
		}
		lease := *rec.Lease
		sent := c.h.now()
		lease.Until, lease.Since = sent.Add(c.h.cfg.Lease), time.Time{}
		next := rec
		next.Lease = &lease
		newRev, err := c.h.records.Put(ctx, c.id, next, rev)
		switch {
		case err == nil:
			c.mu.Lock()
			c.rec, c.rev = next, newRev
			c.deadline = sent.Add(c.h.cfg.Lease - c.h.margin())
			c.mu.Unlock()
			return true
		case errors.Is(err, queue.ErrConflict):
			if !c.reload(ctx) {
				return false
			}
		default:
			return true // transient: the deadline stays; a later renewal may succeed
		}
	}
	return true
}

// reload reads the record after a conflicting write. A newer non-acting
// status keeps the lease with its holder; anything else means the lease was
// taken over (or the record lost with its bucket), and the claim's authority
// ends at once: no request of its effect is sent after that.
func (c *claim) reload(ctx context.Context) bool {
	cur, rev, err := c.h.records.Get(ctx, c.id)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err != nil:
		return true // unknown: keep the deadline, try again later
	case cur.Lease == nil || cur.Lease.Token != c.token:
		c.lost, c.deadline, c.last = true, time.Time{}, cur
		return false
	}
	c.rec, c.rev, c.foreign = cur, rev, true
	return true
}

// write puts next (a record carrying this claim's lease) over the claim's
// revision, reloading after a concurrent non-acting write, and counts as a
// renewal. It returns [ErrLeaseLost] when the lease was taken over.
func (c *claim) write(ctx context.Context, change func(queue.Record) queue.Record) error {
	for range 8 {
		c.mu.Lock()
		rec, rev, lost := c.rec, c.rev, c.lost
		c.mu.Unlock()
		if lost {
			return ErrLeaseLost
		}
		next := change(rec)
		lease := *rec.Lease
		sent := c.h.now()
		lease.Until, lease.Since = sent.Add(c.h.cfg.Lease), time.Time{}
		next.Lease = &lease
		newRev, err := c.h.records.Put(ctx, c.id, next, rev)
		switch {
		case err == nil:
			c.mu.Lock()
			c.rec, c.rev = next, newRev
			if !c.lost {
				c.deadline = sent.Add(c.h.cfg.Lease - c.h.margin())
			}
			c.mu.Unlock()
			return nil
		case !errors.Is(err, queue.ErrConflict):
			return err
		case !c.reload(ctx):
			c.mu.Lock()
			lost = c.lost
			c.mu.Unlock()
			if lost {
				return ErrLeaseLost
			}
		}
	}
	return fmt.Errorf("record of job %d kept changing; could not write it", c.id)
}

// intend records, before the first destructive request, what the effect is
// about to remove.
func (c *claim) intend(ctx context.Context, e queue.Effect) error {
	e.Token = c.token
	err := c.write(ctx, func(r queue.Record) queue.Record { r.Effect = &e; return r })
	if err == nil {
		c.mu.Lock()
		c.intentRev = c.rev
		c.mu.Unlock()
	}
	return err
}

// halt stops the renewals.
func (c *claim) halt() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}

// finish records the effect with mark (applied to the record as it is then)
// and gives the lease back. It returns [ErrLeaseLost] when the lease was
// taken over meanwhile: that claim records the effect.
func (c *claim) finish(ctx context.Context, mark func(queue.Record) queue.Record) error {
	c.halt()
	for range 8 {
		c.mu.Lock()
		rec, rev, lost := c.rec, c.rev, c.lost
		c.mu.Unlock()
		if lost {
			return ErrLeaseLost
		}
		next := mark(rec)
		next.Lease = nil
		_, err := c.h.records.Put(ctx, c.id, next, rev)
		if !errors.Is(err, queue.ErrConflict) {
			return err
		}
		if !c.reload(ctx) {
			c.mu.Lock()
			lost, last := c.lost, c.last
			c.mu.Unlock()
			if landed(last, c.token) {
				return nil // this very write landed; its reply was lost
			}
			if lost {
				return ErrLeaseLost
			}
		}
	}
	return fmt.Errorf("record of job %d kept changing; could not record the effect", c.id)
}

// landed reports whether rec is a finishing write of the claim token: the
// lease given back and the effect recorded as finished by it.
func landed(rec queue.Record, token string) bool {
	return rec.Lease == nil && rec.Effect != nil && rec.Effect.Token == token && rec.Effect.Finished
}

// release gives the lease back after a failure, so that the retry need not
// wait for it to expire. A failure here is harmless: the lease expires. The
// effect the claim intended stays recorded (a later attempt learns from it
// what this one may have removed). With unsent (no destructive request was
// sent), the record is put back as it was before the claim (before) when
// no other writer changed it since: the event the claim was for has not
// been acted on, and may never be (an event of a deleted stream). When
// another writer did (a status recorded, the rebuild's merge of the event
// stream's order), what it wrote stays and only the claim's intent is taken
// back: putting back the earlier snapshot would erase it.
func (c *claim) release(ctx context.Context, unsent bool, before queue.Record) {
	c.halt()
	c.mu.Lock()
	rec, rev, lost, first, intentRev, foreign := c.rec, c.rev, c.lost, c.first, c.intentRev, c.foreign
	c.mu.Unlock()
	if lost {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for range 3 {
		ours := rec.Effect != nil && rec.Effect.Token == c.token
		next := rec
		switch {
		case unsent && !foreign && (rev == first || ours && rev == intentRev):
			next = before
		case unsent && ours:
			next.Effect = before.Effect
		}
		next.Lease = nil
		_, err := c.h.records.Put(ctx, c.id, next, rev)
		if !errors.Is(err, queue.ErrConflict) {
			return
		}
		// Written over since the claim's last write (the rebuild's merge
		// carries the lease): give the lease back on what is there now.
		cur, curRev, err := c.h.records.Get(ctx, c.id)
		if err != nil || cur.Lease == nil || cur.Lease.Token != c.token {
			return
		}
		rec, rev, foreign = cur, curRev, true
	}
}

func newToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
