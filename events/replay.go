package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Replayer reads the event stream from its first retained event, for
// rebuilding the job records after the key-value bucket was lost. It only
// reads: an ordered (ephemeral, in-memory) consumer of its own, and the
// service's durable consumer's info.
type Replayer struct {
	js        jetstream.JetStream
	stream    string
	consumer  string
	decoder   Decoder
	maxFuture time.Duration
}

// NewReplayer returns a Replayer of stream, whose durable consumer consumer
// is the service's; events are decoded with decoder, and those the intake
// rejects as future-dated (DefaultMaxFuture; see WithMaxFuture) are left
// out.
func NewReplayer(js jetstream.JetStream, stream, consumer string, decoder Decoder) *Replayer {
	return &Replayer{js: js, stream: stream, consumer: consumer, decoder: decoder, maxFuture: DefaultMaxFuture}
}

// WithMaxFuture sets the intake's limit on an event's time ahead of its
// arrival (IntakeConfig.MaxFuture; 0 turns the check off), and returns r.
func (r *Replayer) WithMaxFuture(d time.Duration) *Replayer {
	r.maxFuture = d
	return r
}

// replayBatch is how many events one fetch asks for.
const replayBatch = 1000

// Events calls fn with every event in the stream that decodes, oldest first,
// with its stream sequence; its Stored is when it reached the stream. Events
// that do not decode, or are future-dated, are skipped (the intake
// dead-letters them: acknowledged at the consumer's ack floor, never acted
// on). It returns the last sequence read (events published after it began
// are left to the intake) and when the stream was created (zero when it
// does not exist).
func (r *Replayer) Events(ctx context.Context, fn func(seq uint64, ev JobStatus)) (uint64, time.Time, error) {
	st, err := r.js.Stream(ctx, r.stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, time.Time{}, nil // nothing kept: the intake creates it
	}
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("replay event stream %q: %w", r.stream, err)
	}
	info := st.CachedInfo()
	last, born := info.State.LastSeq, info.Created
	if info.State.Msgs == 0 {
		return last, born, nil
	}
	// A consumer of its own that nothing acknowledges and the server
	// removes once idle (the service may not delete consumers on the event
	// stream: see deploy/nats).
	oc, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Name: "queue-janitor-rebuild-" + randomName(), DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: 30 * time.Second, MemoryStorage: true,
		MaxWaiting: 1,
	})
	if err != nil {
		return 0, born, fmt.Errorf("replay event stream %q: %w", r.stream, err)
	}
	seq := uint64(0)
	for seq < last {
		if err := ctx.Err(); err != nil {
			return seq, born, err
		}
		// Ask for no more than is left, so that the fetch returns as soon
		// as it has them instead of waiting out its time for more.
		batch, err := oc.Fetch(int(min(last-seq, replayBatch)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return seq, born, fmt.Errorf("replay event stream %q: %w", r.stream, err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			meta, err := msg.Metadata()
			if err != nil {
				continue
			}
			seq = meta.Sequence.Stream
			ev, err := r.decoder.Decode(msg.Subject(), msg.Headers(), msg.Data()) //nolint:contextcheck // no I/O
			if err != nil {
				continue
			}
			ev.Stored = meta.Timestamp
			if checkFuture(ev, ev.Stored, r.maxFuture) != nil {
				continue // dead-lettered by the intake: acknowledged, never acted on
			}
			fn(seq, ev)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return seq, born, fmt.Errorf("replay event stream %q: %w", r.stream, err)
		}
		if n == 0 {
			// Nothing came: the rest aged out or was deleted meanwhile, or
			// the fetch got no reply (a slow server ends it without an
			// error). A read cut short would pass for the whole stream.
			if err := r.cutShort(ctx, st, seq, last, born); err != nil {
				return seq, born, err
			}
			break
		}
	}
	return seq, born, nil
}

// cutShort returns an error when the stream created at born still holds
// events after seq, up to last, that the replay did not get.
func (r *Replayer) cutShort(ctx context.Context, st jetstream.Stream, seq, last uint64, born time.Time) error {
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("replay event stream %q: %w", r.stream, err)
	}
	if from := max(seq+1, info.State.FirstSeq); from <= last && info.Created.Equal(born) {
		return fmt.Errorf("replay event stream %q: no events came after sequence %d, though the stream holds them from %d to %d; the rebuild will read it again",
			r.stream, seq, from, last)
	}
	return nil
}

// AckFloor is the service's durable consumer's ack floor (0 when the
// consumer does not exist): every event at or below it was acknowledged. It
// also returns when the stream the floor belongs to was created (zero when
// there is none): a floor counts only against the events of that stream, not
// of one that replaced it since (see [Events]).
func (r *Replayer) AckFloor(ctx context.Context) (uint64, time.Time, error) {
	// The stream first: a consumer read after it belongs to it, or to a
	// stream created later, which a caller comparing the creation time
	// with the one Events returns then sees.
	st, err := r.js.Stream(ctx, r.stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, time.Time{}, nil
	}
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("read event stream %q: %w", r.stream, err)
	}
	born := st.CachedInfo().Created
	c, err := st.Consumer(ctx, r.consumer)
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, born, nil
	}
	if err != nil {
		return 0, born, fmt.Errorf("read consumer %q on %q: %w", r.consumer, r.stream, err)
	}
	return c.CachedInfo().AckFloor.Stream, born, nil
}

func randomName() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
