package queue

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/example/queue-janitor/integration/natstest"
)

// hookedJS is the real JetStream with a hook after each lookup and before
// each delete, to let "another replica" act at an exact point of a Remove.
type hookedJS struct {
	jetstream.JetStream
	afterStream          func(name string)
	afterConsumer        func(stream, name string)
	beforeDeleteConsumer func(stream, name string)
	beforeDeleteStream   func(name string)
}

func (h hookedJS) DeleteStream(ctx context.Context, name string) error {
	if h.beforeDeleteStream != nil {
		h.beforeDeleteStream(name)
	}
	return h.JetStream.DeleteStream(ctx, name)
}

func (h hookedJS) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	s, err := h.JetStream.Stream(ctx, name)
	if h.afterStream != nil {
		h.afterStream(name)
	}
	return s, err
}

func (h hookedJS) Consumer(ctx context.Context, stream, name string) (jetstream.Consumer, error) {
	c, err := h.JetStream.Consumer(ctx, stream, name)
	if h.afterConsumer != nil {
		h.afterConsumer(stream, name)
	}
	return c, err
}

func (h hookedJS) DeleteConsumer(ctx context.Context, stream, name string) error {
	if h.beforeDeleteConsumer != nil {
		h.beforeDeleteConsumer(stream, name)
	}
	return h.JetStream.DeleteConsumer(ctx, stream, name)
}

// byOther runs f in another goroutine, as another replica would, and waits.
func byOther(t *testing.T, f func(ctx context.Context) error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f(context.WithoutCancel(t.Context())) }()
	if err := <-done; err != nil {
		t.Fatalf("the other replica failed: %v", err)
	}
}

func TestRemoveWhenAnotherReplicaGetsThereFirst(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		hook func(e *testEnv) hookedJS
		want Removal
	}{
		{
			// The task consumer goes with the stream; it is reported as the
			// stream's lookup saw it, even when another replica deleted it
			// between the lookup and the stream's delete.
			name: "task consumer gone after the stream lookup",
			hook: func(e *testEnv) hookedJS {
				return hookedJS{afterStream: func(string) {
					byOther(e.t, func(ctx context.Context) error { return e.js.DeleteConsumer(ctx, "job_1", "job-1-consumer") })
				}}
			},
			want: Removal{Stream: "job_1", StreamFound: true, MessagesDiscarded: 6, ConsumersRemoved: 2,
				Deleted: []string{"consumer job_1/job-1-consumer", "stream job_1", "consumer advisories/job-1-dlq"}},
		},
		{
			name: "stream deleted by another replica just before this delete",
			hook: func(e *testEnv) hookedJS {
				return hookedJS{beforeDeleteStream: func(name string) {
					byOther(e.t, func(ctx context.Context) error { return e.js.DeleteStream(ctx, name) })
				}}
			},
			want: Removal{Stream: "job_1", StreamFound: true, ConsumersRemoved: 1,
				Deleted: []string{"consumer advisories/job-1-dlq"},
				Notes:   []string{"stream job_1: gone before this service's delete reached it (removed by someone else)"}},
		},
		{
			name: "dead-letter consumer gone just before its delete",
			hook: func(e *testEnv) hookedJS {
				return hookedJS{beforeDeleteConsumer: func(stream, name string) {
					byOther(e.t, func(ctx context.Context) error { return e.js.DeleteConsumer(ctx, stream, name) })
				}}
			},
			want: Removal{Stream: "job_1", StreamFound: true, MessagesDiscarded: 6, ConsumersRemoved: 1,
				Deleted: []string{"consumer job_1/job-1-consumer", "stream job_1"},
				Notes:   []string{"consumer advisories/job-1-dlq: gone before this service's delete reached it (removed by someone else)"}},
		},
		{
			name: "stream already gone, dead-letter consumer gone after its lookup",
			hook: func(e *testEnv) hookedJS {
				byOther(e.t, func(ctx context.Context) error { return e.js.DeleteStream(ctx, "job_1") })
				return hookedJS{afterConsumer: func(stream, name string) {
					byOther(e.t, func(ctx context.Context) error { return e.js.DeleteConsumer(ctx, stream, name) })
				}}
			},
			want: Removal{Stream: "job_1", Deleted: []string{},
				Notes: []string{"consumer advisories/job-1-dlq: gone before this service's delete reached it (removed by someone else)"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			e.provision(1, 6, nil)
			js := tt.hook(e)
			js.JetStream = e.js
			r, err := NewJanitor(js, e.names, WithRetryPolicy(fastRetry())).Remove(t.Context(), 1, openFence(), nil)
			if err != nil {
				t.Fatalf("Remove: %v", err)
			}
			assertRemoval(t, r, tt.want)
			if e.streamMsgs("job_1") != -1 || e.consumerExists("advisories", "job-1-dlq") {
				t.Error("job 1's queue is not gone")
			}
		})
	}
}

// TestConcurrentRemoves runs two replicas' Removes of the same job at once:
// both succeed, the queue is gone, and every resource is reported deleted by
// at least one of them. (Not exactly one: the server may answer two
// concurrent deletes of the same consumer or stream both with success.)
func TestConcurrentRemoves(t *testing.T) {
	t.Parallel()
	e := setup(t)
	_, js2 := natstest.Connect(t, e.srv.URL())
	janitors := []*Janitor{e.janitor(), NewJanitor(js2, e.names, WithRetryPolicy(fastRetry()))}
	want := []string{"consumer advisories/job-1-dlq", "consumer job_1/job-1-consumer", "stream job_1"}
	for round := range 10 {
		e.provision(1, 2, nil)
		var wg sync.WaitGroup
		results := make([]Removal, len(janitors))
		errs := make([]error, len(janitors))
		for i, j := range janitors {
			wg.Go(func() { results[i], errs[i] = j.Remove(t.Context(), 1, openFence(), nil) })
		}
		wg.Wait()
		all := slices.Concat(results[0].Deleted, results[1].Deleted)
		slices.Sort(all)
		all = slices.Compact(all)
		if errs[0] != nil || errs[1] != nil || !slices.Equal(all, want) {
			t.Fatalf("round %d: errors %v, %v; deleted %q and %q, want together %q",
				round, errs[0], errs[1], results[0].Deleted, results[1].Deleted, want)
		}
		if e.streamMsgs("job_1") != -1 || e.consumerExists("advisories", "job-1-dlq") {
			t.Fatalf("round %d: job 1's queue is not gone", round)
		}
	}
}
