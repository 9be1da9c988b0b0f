package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestTransientNATSError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("hold index: scan DPS_DLQ: %w", nats.ErrNoResponders), true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{fmt.Errorf("create stream: %w", context.DeadlineExceeded), true},
		{nats.ErrTimeout, true},
		{&jetstream.APIError{Code: 400, ErrorCode: 10058, Description: "stream name already in use with a different configuration"}, false},
		{&jetstream.APIError{Code: 500, ErrorCode: 10049, Description: "duplicates window can not be less than 100ms"}, false},
		{errors.New("stream DPS_EVENTS is partitioned 8 ways, the worker is configured for 16"), false},
	} {
		if got := transientNATSError(tc.err); got != tc.want {
			t.Errorf("transientNATSError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestStartupRetry: a start step rides out a cluster's moment of unavailability, and fails
// at once on a configuration error.
func TestStartupRetry(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	synctest.Test(t, func(t *testing.T) {
		calls := 0
		err := startupRetry(context.Background(), log, "dead-letter stream", func(context.Context) error {
			calls++
			if calls < 4 {
				return fmt.Errorf("scan: %w", nats.ErrNoResponders)
			}
			return nil
		})
		if err != nil || calls != 4 {
			t.Fatalf("got %v after %d calls, want nil after 4", err, calls)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		calls := 0
		bad := errors.New("partitioned 8 ways, configured for 16")
		err := startupRetry(context.Background(), log, "events stream", func(context.Context) error { calls++; return bad })
		if !errors.Is(err, bad) || calls != 1 {
			t.Fatalf("got %v after %d calls, want the configuration error after 1", err, calls)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		err := startupRetry(context.Background(), log, "membership", func(context.Context) error { return nats.ErrNoResponders })
		if !errors.Is(err, nats.ErrNoResponders) || time.Since(start) < startupTimeout {
			t.Fatalf("got %v after %v, want the last error once %v passed", err, time.Since(start), startupTimeout)
		}
	})
}
