package handlers

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/events"
	"github.com/example/queue-janitor/queue"
)

func jobStream(createdSec, lastMsgSec int, stampedAttempt string) queue.JobStream {
	info := &jetstream.StreamInfo{Config: jetstream.StreamConfig{Name: "job_7"}, Created: at(createdSec)}
	if lastMsgSec != 0 {
		info.State.LastTime = at(lastMsgSec)
	}
	if stampedAttempt != "" {
		info.Config.Metadata = map[string]string{queue.AttemptMetadataKey: stampedAttempt}
	}
	return queue.JobStream{ID: 7, Info: info}
}

func TestJudge(t *testing.T) {
	t.Parallel()
	cfg := SweepConfig{Grace: 60 * time.Second, OrphanIdle: 600 * time.Second}
	sweeping := cfg
	sweeping.SweepOrphans = true
	terminal := rec("t", events.StatusRevoked, 1, 1000, true)
	terminal.State = queue.StateTerminal
	live := rec("s", events.StatusStarted, 2, 1000, true)
	live.State = queue.StateRunning
	delivered := at(1500)
	cases := []struct {
		name       string
		stream     queue.JobStream
		consumer   *jetstream.ConsumerInfo
		rec        queue.Record
		exists     bool
		now        int
		cfg        SweepConfig
		want       Verdict
		wantRemove bool
	}{
		{"terminal, stream older, past grace", jobStream(900, 950, ""), nil, terminal, true, 1100, cfg, VerdictClean, true},
		{"terminal, stream older than the end: at once, no grace", jobStream(900, 950, ""), nil, terminal, true, 1030, cfg, VerdictClean, true},
		{"terminal, recreated after the end, young", jobStream(1050, 1050, ""), nil, terminal, true, 1100, cfg, VerdictGrace, false},
		{"terminal, recreated after the end, past grace", jobStream(1050, 1050, ""), nil, terminal, true, 1200, cfg, VerdictClean, true},
		{"terminal, but stamped with a later attempt", jobStream(900, 950, "2"), nil, terminal, true, 5000, cfg, VerdictKeep, false},
		{"terminal, stamped with its own attempt", jobStream(900, 950, "1"), nil, terminal, true, 5000, cfg, VerdictClean, true},
		{"live job is kept however old", jobStream(10, 10, ""), nil, live, true, 90000, cfg, VerdictKeep, false},
		{"unknown and active", jobStream(900, 950, ""), nil, queue.Record{}, false, 1200, cfg, VerdictKeep, false},
		{"unknown and idle: reported", jobStream(100, 200, ""), nil, queue.Record{}, false, 1200, cfg, VerdictOrphan, false},
		{"unknown and idle: swept when enabled", jobStream(100, 200, ""), nil, queue.Record{}, false, 1200, sweeping, VerdictOrphan, true},
		{"unknown, consumer still advancing", jobStream(100, 200, ""), &jetstream.ConsumerInfo{Delivered: jetstream.SequenceInfo{Last: &delivered}},
			queue.Record{}, false, 1600, sweeping, VerdictKeep, false},
		{"unknown, a worker busy on a task for long", jobStream(100, 200, ""), &jetstream.ConsumerInfo{NumAckPending: 1},
			queue.Record{}, false, 5000, sweeping, VerdictKeep, false},
		{"unknown, a worker waiting for tasks", jobStream(100, 200, ""), &jetstream.ConsumerInfo{NumWaiting: 2},
			queue.Record{}, false, 5000, sweeping, VerdictKeep, false},
		{"leased by a replica", jobStream(900, 950, ""), nil, leased(terminal, "other", 2000), true, 1100, cfg, VerdictBusy, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			j := Judge(tc.stream, tc.consumer, tc.rec, tc.exists, at(tc.now), tc.cfg)
			if j.Verdict != tc.want || j.Remove != tc.wantRemove {
				t.Errorf("Judge = %s remove=%v (%s), want %s remove=%v", j.Verdict, j.Remove, j.Reason, tc.want, tc.wantRemove)
			}
			if j.Remove && !j.Fence.CreatedBefore.Before(at(tc.now)) {
				t.Errorf("a removal's fence must keep streams created in the grace window: %+v", j.Fence)
			}
		})
	}
}

func TestJudgeFenceKeepsLaterAttempts(t *testing.T) {
	t.Parallel()
	terminal := rec("t", events.StatusRevoked, 3, 1000, true)
	terminal.State = queue.StateTerminal
	j := Judge(jobStream(900, 950, ""), nil, terminal, true, at(2000), SweepConfig{Grace: time.Minute})
	if !j.Fence.AttemptKnown || j.Fence.MaxAttempt != 3 || !j.Fence.CreatedBefore.Equal(at(1000)) {
		t.Errorf("fence = %+v, want attempts up to 3, created before the terminal event reached NATS", j.Fence)
	}
	j = Judge(jobStream(1500, 1500, ""), nil, terminal, true, at(2000), SweepConfig{Grace: time.Minute})
	if !j.Fence.CreatedBefore.Equal(at(1940)) || !strings.Contains(j.Reason, "after the job ended") {
		t.Errorf("judgement = %+v, want created before now-grace for a stream made after the end", j)
	}
	j = Judge(jobStream(900, 950, ""), nil, terminal, true, at(2000), SweepConfig{Grace: time.Minute})
	if strings.Contains(j.Reason, "after the job ended") {
		t.Errorf("reason %q: the stream was created before the job ended", j.Reason)
	}
}
