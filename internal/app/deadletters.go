package app

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/consumer"
	"github.com/dpsync/dpsync/internal/dlq"
)

// deadLetters gives the engine the dead-letter stream: publish, and the hold index.
type deadLetters struct {
	pub   *dlq.Publisher
	index *dlq.HoldIndex
}

func newDeadLetters(ctx context.Context, js jetstream.JetStream, o *Options) (*deadLetters, error) {
	if _, err := dlq.EnsureStream(ctx, js, dlq.StreamConfig{Name: o.DLQStream, Replicas: o.Stream.WithDefaults().Replicas}); err != nil {
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
	return &deadLetters{pub: pub, index: index}, nil
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
