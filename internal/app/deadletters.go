package app

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/consumer"
	"github.com/dpsync/dpsync/internal/dlq"
)

// deadLetters gives the engine the dead-letter stream: publish, and the hold index.
type deadLetters struct {
	pub    *dlq.Publisher
	index  *dlq.HoldIndex
	stream jetstream.Stream
}

func newDeadLetters(ctx context.Context, js jetstream.JetStream, o *Options) (*deadLetters, error) {
	stream, err := dlq.EnsureStream(ctx, js, o.dlqStreamConfig())
	if err != nil {
		return nil, err
	}
	index, err := dlq.LoadHoldIndex(ctx, js, o.DLQStream)
	if err != nil {
		return nil, fmt.Errorf("load dead-letter hold index: %w", err)
	}
	pub, err := dlq.NewPublisher(js, dlq.PublisherOptions{
		Stream:   o.DLQStream,
		WorkerID: o.WorkerID,
		Index:    index,
		Logger:   o.Logger,
	})
	if err != nil {
		return nil, err
	}
	return &deadLetters{pub: pub, index: index, stream: stream}, nil
}

// Publish implements consumer.DeadLetters.
func (d *deadLetters) Publish(ctx context.Context, l consumer.Letter) error {
	letter := dlq.Letter{
		Data:          l.Data,
		Reason:        l.Reason,
		Class:         dlq.Class(l.Class),
		Code:          l.Code,
		Status:        l.Status,
		Attempts:      l.Attempts,
		FirstFailure:  l.FirstFailure,
		LastFailure:   l.LastFailure,
		OriginStream:  l.OriginStream,
		OriginSubject: l.OriginSubject,
		OriginSeq:     l.OriginSeq,
		Position:      l.Position,
		TraceID:       l.TraceID,
		Key:           l.Key,
		Kind:          l.Kind,
		Operation:     l.Operation,
		EventID:       l.EventID,
	}
	letter.FromEvent(l.Header)
	_, err := d.pub.Publish(ctx, letter)
	return err
}

// Held implements consumer.DeadLetters.
func (d *deadLetters) Held(ctx context.Context, key string, position uint64) (string, bool, error) {
	h, held, err := d.index.Blocker(ctx, key, position)
	if err != nil || !held {
		return "", false, err
	}
	return h.HeldReason(), true, nil
}

// Settled implements consumer.DeadLetters: the replay of the letter at seq is settled, so
// the letter goes (and with it the hold it put on its key).
func (d *deadLetters) Settled(ctx context.Context, key string, seq uint64) error {
	if err := dlq.RemoveLetter(ctx, d.stream, seq); err != nil {
		return fmt.Errorf("remove replayed dead letter %d: %w", seq, err)
	}
	d.index.Remove(key, seq)
	return nil
}

// LetterExists implements consumer.DeadLetters.
func (d *deadLetters) LetterExists(ctx context.Context, seq uint64) (bool, error) {
	_, err := d.stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up dead letter %d: %w", seq, err)
	}
	return true, nil
}
