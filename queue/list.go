package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// JobStream is a job's task stream as the server lists it.
type JobStream struct {
	ID   JobID
	Info *jetstream.StreamInfo
}

// LastActivity is the latest of the stream's creation and its last message.
func (s JobStream) LastActivity() time.Time {
	last := s.Info.Created
	if s.Info.State.LastTime.After(last) {
		last = s.Info.State.LastTime
	}
	return last
}

// JobStreams calls fn for every job stream on the server, a page at a time
// (the server sends 256 stream infos per page), so memory stays bounded
// however many streams there are. Streams are found by the task subject
// filter and kept only when their name is a job stream name, so the shared
// advisory stream and any other stream are never listed. It stops at the
// first error fn returns.
func (j *Janitor) JobStreams(ctx context.Context, fn func(JobStream) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the lister if fn returns early
	l := j.js.ListStreams(ctx, jetstream.WithStreamListSubject(j.names.SubjectFilter()))
	for info := range l.Info() {
		id, ok := j.names.JobFromStream(info.Config.Name)
		if !ok {
			continue
		}
		if err := fn(JobStream{ID: id, Info: info}); err != nil {
			return err
		}
	}
	if err := l.Err(); err != nil {
		return fmt.Errorf("list job streams: %w", err)
	}
	return nil
}

// TaskConsumer returns the job's task consumer info, or nil when it does
// not exist.
func (j *Janitor) TaskConsumer(ctx context.Context, id JobID) (*jetstream.ConsumerInfo, error) {
	return j.ConsumerInfo(ctx, j.names.StreamName(id), j.names.ConsumerName(id))
}
