package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/dlq"
)

// startRedrive runs the automatic redrive of transient dead letters. Every worker runs the
// loop, but only the owner of partition 0 acts on a pass: one redriver per fleet without
// another election, and its republished events are deduplicated by their derived
// Nats-Msg-Id should two ever overlap during a handover. Per key, the redriver republishes
// a letter and waits until the worker owning the key's partition settled it (removed the
// letter) before the key's next letter; the wait is bounded by redriveSettle.
func startRedrive(ctx context.Context, js jetstream.JetStream, o *Options, f *fleet, dl *deadLetters, log *slog.Logger) <-chan struct{} {
	done := make(chan struct{})
	r, err := dlq.NewRedriver(dlq.RedriverOptions{
		JS:          js,
		Stream:      o.DLQStream,
		Schedule:    o.RedriveEvery,
		MaxRedrives: o.RedriveLimit,
		Interval:    redriveInterval(o.RedriveEvery),
		Settle:      redriveSettle(o.Retry.Budget),
		Clock:       o.RedriveClock,
		Owns: func(string) bool {
			_, ok := f.m.Owns(0)
			return ok
		},
		Index:  dl.index,
		Logger: o.Logger.With("component", "redrive"),
	})
	if err != nil {
		// Not reached: Options.validate checks the schedule and the limit before Run
		// starts anything.
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

// redriveInterval is how often the redriver looks: 15 s, or more often when the schedule's
// first step is shorter.
func redriveInterval(schedule []time.Duration) time.Duration {
	iv := 15 * time.Second
	if len(schedule) > 0 && schedule[0]/2 < iv {
		iv = max(schedule[0]/2, 100*time.Millisecond)
	}
	return iv
}

// redriveSettle bounds the redriver's wait for one republished letter to be settled: twice
// the retry budget (the engine's default budget when unset), the longest a worker takes to
// apply an event or give up on it, but at least 10 s (batching and a short backlog).
func redriveSettle(budget time.Duration) time.Duration {
	if budget <= 0 {
		budget = 2 * time.Minute
	}
	return max(2*budget, 10*time.Second)
}
