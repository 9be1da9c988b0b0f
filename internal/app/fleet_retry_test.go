package app

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"
)

// TestRetryWhile: a partition that is owned must be read, so setting it up is retried
// until it works (JetStream unavailable during an election), and given up only when the
// partition is no longer ours.
func TestRetryWhile(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	unavailable := errors.New("JetStream system temporarily unavailable")
	t.Run("succeeds after failures", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			calls := 0
			start := time.Now()
			ok := retryWhile(context.Background(), func() bool { return true }, log, "create consumer", func(context.Context) error {
				calls++
				if calls < 6 {
					return unavailable
				}
				return nil
			})
			if !ok || calls != 6 {
				t.Fatalf("got ok=%v after %d calls, want true after 6", ok, calls)
			}
			// Backoff 200, 400, 800, 1600, 3200 ms before the 6th call.
			if got, want := time.Since(start), 6200*time.Millisecond; got != want {
				t.Fatalf("retried for %v, want %v (exponential backoff from 200 ms)", got, want)
			}
		})
	})
	t.Run("gives up when no longer owned", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			calls := 0
			owned := true
			ok := retryWhile(context.Background(), func() bool { return owned }, log, "create consumer", func(context.Context) error {
				calls++
				if calls == 3 {
					owned = false
				}
				return unavailable
			})
			if ok || calls != 3 {
				t.Fatalf("got ok=%v after %d calls, want false after 3", ok, calls)
			}
		})
	})
	t.Run("backoff is capped at 5 s", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var at []time.Time
			retryWhile(context.Background(), func() bool { return len(at) < 10 }, log, "refresh", func(context.Context) error {
				at = append(at, time.Now())
				return unavailable
			})
			if gap := at[9].Sub(at[8]); gap != 5*time.Second {
				t.Fatalf("gap between late attempts %v, want 5s", gap)
			}
		})
	})
}
