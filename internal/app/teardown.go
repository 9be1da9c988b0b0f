package app

import (
	"context"
	"log/slog"
	"time"
)

// teardown runs named steps in reverse order of registration, each bounded by what is left
// of one overall deadline.
type teardown struct {
	steps []step
}

type step struct {
	name string
	fn   func(ctx context.Context) error
}

func (t *teardown) add(name string, fn func(ctx context.Context) error) {
	t.steps = append(t.steps, step{name, fn})
}

func (t *teardown) run(log *slog.Logger, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for i := len(t.steps) - 1; i >= 0; i-- {
		s := t.steps[i]
		start := time.Now()
		if err := s.fn(ctx); err != nil {
			log.Warn("teardown step", "step", s.name, "err", err)
			continue
		}
		log.Debug("teardown step done", "step", s.name, "took", time.Since(start))
	}
	t.steps = nil
}
