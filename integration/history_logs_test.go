package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"
)

// historyLogs keeps the replicas' log lines of a history group by job, for
// the printout of a history that failed (QJ_HISTORY_LOGS=debug or info;
// by default the replicas log errors only, to the test's output). Lines
// about no job (the bucket's recreation, the records' rebuild, the
// intake's recovery) are kept too.
type historyLogs struct {
	mu      sync.Mutex
	replica int
	jobs    map[int64][]string
	other   []string
}

func newHistoryLogs() *historyLogs { return &historyLogs{jobs: map[int64][]string{}} }

// writer returns the log writer of one replica.
func (l *historyLogs) writer() *replicaLog {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.replica++
	return &replicaLog{l: l, name: fmt.Sprintf("r%d", l.replica)}
}

type replicaLog struct {
	l    *historyLogs
	name string
}

func (w *replicaLog) Write(p []byte) (int, error) {
	stamp := time.Now().Format("15:04:05.000000")
	for line := range bytes.SplitSeq(bytes.TrimSpace(p), []byte("\n")) {
		var f struct {
			JobID int64 `json:"job_id"`
		}
		_ = json.Unmarshal(line, &f)
		s := stamp + " " + w.name + " " + string(line)
		w.l.mu.Lock()
		if f.JobID != 0 {
			w.l.jobs[f.JobID] = append(w.l.jobs[f.JobID], s)
		} else {
			w.l.other = append(w.l.other, s)
		}
		w.l.mu.Unlock()
	}
	return len(p), nil
}

// of prints the lines of h's jobs, and the other lines while h played.
func (l *historyLogs) of(h *history) string {
	if l == nil {
		return ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	from, to := h.start.Add(-time.Second).Format("15:04:05.000000"), h.end.Add(historyLease).Format("15:04:05.000000")
	for _, s := range l.other {
		if at := s[:15]; at >= from && at <= to {
			fmt.Fprintf(&b, "    log %s\n", s)
		}
	}
	for _, j := range h.jobs {
		for _, s := range l.jobs[int64(j.id)] {
			fmt.Fprintf(&b, "    log %s\n", s)
		}
	}
	return b.String()
}

// watchConsumer samples the service's event consumer every 250 ms while
// logs are kept, for the printout.
func (g *historyGroup) watchConsumer() {
	stop := make(chan struct{})
	done := make(chan struct{})
	g.t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			c, err := g.js.Consumer(ctx, "JOB_EVENTS", "queue-janitor")
			cancel()
			line := time.Now().Format("15:04:05.000000") + " consumer: "
			if err != nil {
				line += err.Error()
			} else {
				i := c.CachedInfo()
				line += fmt.Sprintf("created %s ack floor %d delivered %d ack pending %d pending %d redelivered %d",
					i.Created.Format("15:04:05.000"), i.AckFloor.Stream, i.Delivered.Stream, i.NumAckPending, i.NumPending, i.NumRedelivered)
			}
			g.logs.mu.Lock()
			g.logs.other = append(g.logs.other, line)
			g.logs.mu.Unlock()
		}
	}()
}
