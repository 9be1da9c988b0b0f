package app

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/event"
)

// e2eStreamConfig is the configuration the server holds for stream name.
func e2eStreamConfig(t *testing.T, s *stack, name string) jetstream.StreamConfig {
	t.Helper()
	st, err := s.js.Stream(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.Config
}

// The events stream is created with the storage the options name (file by default,
// memory on request), and the worker applies events from either.
func TestEventsStreamStorageFollowsOptions(t *testing.T) {
	for _, tt := range []struct {
		memory bool
		want   jetstream.StorageType
	}{
		{false, jetstream.FileStorage},
		{true, jetstream.MemoryStorage},
	} {
		t.Run(tt.want.String(), func(t *testing.T) {
			s := newStack(t, emulator.Options{})
			s.worker(func(o *Options) { o.Stream.MemoryStorage = tt.memory })
			if got := e2eStreamConfig(t, s, "DPS_EVENTS").Storage; got != tt.want {
				t.Fatalf("events stream storage: got %v, want %v", got, tt.want)
			}
			// Dead letters stay on file whatever the events stream uses.
			if got := e2eStreamConfig(t, s, "DPS_DLQ").Storage; got != jetstream.FileStorage {
				t.Errorf("dead-letter stream storage: got %v, want file", got)
			}
			s.publish(event.NewEnrollment(dps.BulkModeCreate, tagged("stored-1", 1)))
			s.settle(20 * time.Second)
			if tag := tagOf(s.enrollments()["stored-1"]); tag != 1 {
				t.Fatalf("stored-1: tag %d, want 1", tag)
			}
		})
	}
}

// The dead-letter stream is created with the options' max age and duplicate window
// (defaults: no max age, letters stay until replayed or purged; a 10 min window). A worker
// restarted with other values updates the stream in place, its letters kept; restarted
// with the same values it changes nothing.
func TestDeadLetterStreamSettingsAreCreatedThenUpdatedInPlace(t *testing.T) {
	s := newStack(t, emulator.Options{})
	check := func(when string, maxAge, window time.Duration) {
		t.Helper()
		c := e2eStreamConfig(t, s, "DPS_DLQ")
		if c.MaxAge != maxAge || c.Duplicates != window || c.Replicas != 1 || c.Storage != jetstream.FileStorage {
			t.Fatalf("%s: DPS_DLQ max age %v, duplicate window %v, replicas %d, storage %v; want %v, %v, 1, file",
				when, c.MaxAge, c.Duplicates, c.Replicas, c.Storage, maxAge, window)
		}
	}
	stop := s.worker(nil)
	check("created with the defaults", 0, 10*time.Minute)
	// A letter, to see it survive the updates.
	s.publishRaw("dpsync.events.enrollment.kept-1", []byte(`{"not":"an event"}`))
	s.settle(20 * time.Second)
	if ls := s.letters(); len(ls) != 1 {
		t.Fatalf("%d letters, want 1", len(ls))
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	for _, step := range []struct {
		when           string
		maxAge, window time.Duration
		wantWindow     time.Duration
	}{
		{"restarted with other values", 30 * 24 * time.Hour, 5 * time.Minute, 5 * time.Minute},
		{"restarted with the same values", 30 * 24 * time.Hour, 5 * time.Minute, 5 * time.Minute},
		{"restarted with the defaults again", 0, 0, 10 * time.Minute},
	} {
		stop := s.worker(func(o *Options) { o.DLQMaxAge, o.DLQDuplicateWindow = step.maxAge, step.window })
		check(step.when, step.maxAge, step.wantWindow)
		if ls := s.letters(); len(ls) != 1 || ls[0].Key != "enrollment/kept-1" {
			t.Fatalf("%s: letters %+v, want the one letter kept", step.when, ls)
		}
		if err := stop(); err != nil {
			t.Fatalf("%s: %v", step.when, err)
		}
	}
}

// Dead-letter stream settings the server would refuse, or that would lose letters'
// deduplication, stop the worker before it starts, with an error naming the setting.
func TestDeadLetterStreamSettingsAreValidated(t *testing.T) {
	for _, tt := range []struct {
		name           string
		maxAge, window time.Duration
		want           string
	}{
		{"negative max age", -time.Hour, 0, "dlq stream max age: -1h0m0s is negative"},
		{"negative window", 0, -time.Minute, "dlq stream duplicate window"},
		{"window over the max age", time.Hour, 2 * time.Hour, "dlq stream duplicate window: 2h0m0s must be between 0 and the max age 1h0m0s"},
		{"default window over the max age", 5 * time.Minute, 0, "dlq stream duplicate window: 10m0s must be between 0 and the max age 5m0s"},
		{"window under the server's minimum", 0, 10 * time.Millisecond, "dlq stream duplicate window: 10ms is under 100ms"},
	} {
		o := Options{DLQMaxAge: tt.maxAge, DLQDuplicateWindow: tt.window}
		err := o.setDefaults()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
	o := Options{DLQMaxAge: 90 * 24 * time.Hour, DLQDuplicateWindow: time.Minute}
	if err := o.setDefaults(); err != nil {
		t.Errorf("a valid max age and window: got %v", err)
	}
}
