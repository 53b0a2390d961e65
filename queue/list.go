package queue

import (
	"context"
	"errors"
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

// DeadLetterConsumers calls fn for every job's dead-letter consumer on the
// shared advisory stream (consumers whose name the dead-letter pattern
// builds from a valid job id; no other consumer is listed). A missing
// advisory stream lists nothing.
func (j *Janitor) DeadLetterConsumers(ctx context.Context, fn func(JobID, *jetstream.ConsumerInfo) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := j.js.Stream(ctx, j.names.AdvisoryStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("advisory stream %q: %w", j.names.AdvisoryStream, err)
	}
	l := s.ListConsumers(ctx)
	for info := range l.Info() {
		id, ok := j.names.JobFromDeadLetterConsumer(info.Name)
		if !ok {
			continue
		}
		if err := fn(id, info); err != nil {
			return err
		}
	}
	if err := l.Err(); err != nil {
		return fmt.Errorf("list dead-letter consumers on %q: %w", j.names.AdvisoryStream, err)
	}
	return nil
}
