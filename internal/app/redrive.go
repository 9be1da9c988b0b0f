package app

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/dlq"
)

// startRedrive runs the automatic redrive of transient dead letters. Every worker runs the
// loop, but only the owner of partition 0 acts on a pass: one redriver per fleet without
// another election, and its republished events are deduplicated by their derived
// Nats-Msg-Id should two ever overlap during a handover.
func startRedrive(ctx context.Context, js jetstream.JetStream, o *Options, f *fleet, dl *deadLetters, log *slog.Logger) <-chan struct{} {
	done := make(chan struct{})
	r, err := dlq.NewRedriver(dlq.RedriverOptions{
		JS:       js,
		Stream:   o.DLQStream,
		Schedule: o.RedriveEvery,
		Owns: func(string) bool {
			_, ok := f.m.Owns(0)
			return ok
		},
		Index:  dl.index,
		Logger: o.Logger.With("component", "redrive"),
	})
	if err != nil {
		log.Error("automatic redrive disabled", "err", err)
		close(done)
		return done
	}
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	return done
}
