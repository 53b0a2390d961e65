package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Server is the part of the JetStream API that [Janitor.Remove] uses: one
// method per request, so that what reaches the server is explicit (the
// model checker drives the janitor through an in-memory Server).
type Server interface {
	// StreamInfo returns the stream's info, or nil and no error when it
	// does not exist.
	StreamInfo(ctx context.Context, stream string) (*jetstream.StreamInfo, error)
	// ConsumerInfo returns the consumer's info, or nil and no error when
	// it or its stream does not exist.
	ConsumerInfo(ctx context.Context, stream, consumer string) (*jetstream.ConsumerInfo, error)
	// DeleteStream deletes a stream; [ErrGone] when it does not exist.
	DeleteStream(ctx context.Context, stream string) error
	// PurgeStream removes every message of a stream; [ErrGone] when it
	// does not exist.
	PurgeStream(ctx context.Context, stream string) error
	// DeleteConsumer deletes a consumer; [ErrGone] when it or its stream
	// does not exist.
	DeleteConsumer(ctx context.Context, stream, consumer string) error
}

// ErrGone is what a [Server] returns when the resource to delete does not
// exist.
var ErrGone = errors.New("not found")

// jsServer is the [Server] of a real JetStream connection.
type jsServer struct{ js jetstream.JetStream }

func (s jsServer) StreamInfo(ctx context.Context, stream string) (*jetstream.StreamInfo, error) {
	st, err := s.js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return st.CachedInfo(), nil
}

func (s jsServer) ConsumerInfo(ctx context.Context, stream, consumer string) (*jetstream.ConsumerInfo, error) {
	c, err := s.js.Consumer(ctx, stream, consumer)
	if isGone(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return c.CachedInfo(), nil
}

func (s jsServer) DeleteStream(ctx context.Context, stream string) error {
	err := s.js.DeleteStream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return ErrGone
	}
	return err
}

// PurgeStream sends the purge request itself: the client library's purge
// needs a stream handle, which costs a stream-info request first.
func (s jsServer) PurgeStream(ctx context.Context, stream string) error {
	msg, err := s.js.Conn().RequestWithContext(ctx, apiPrefix(s.js)+"STREAM.PURGE."+stream, []byte("{}"))
	if err != nil {
		return err
	}
	var resp struct {
		Error   *jetstream.APIError `json:"error,omitempty"`
		Success bool                `json:"success"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return fmt.Errorf("purge stream %q: unreadable reply: %w", stream, err)
	}
	switch {
	case resp.Error == nil && resp.Success:
		return nil
	case resp.Error == nil:
		return fmt.Errorf("purge stream %q: the server did not confirm it", stream)
	case resp.Error.ErrorCode == jetstream.JSErrCodeStreamNotFound:
		return ErrGone
	}
	return resp.Error
}

// apiPrefix is the subject prefix of js's JetStream API requests.
func apiPrefix(js jetstream.JetStream) string {
	o := js.Options()
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	}
	return "$JS.API."
}

func (s jsServer) DeleteConsumer(ctx context.Context, stream, consumer string) error {
	err := s.js.DeleteConsumer(ctx, stream, consumer)
	if isGone(err) {
		return ErrGone
	}
	return err
}

// isGone reports whether err says the consumer or its stream does not exist.
func isGone(err error) bool {
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)
}
