package consumer

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/embedded/natstest"
)

func startJS(t *testing.T) (jetstream.JetStream, *nats.Conn) {
	t.Helper()
	return natstest.Start(t).Connect(t)
}

func TestEnsureStreamPartitionsByKey(t *testing.T) {
	js, _ := startJS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := StreamConfig{Partitions: 4}
	s, err := EnsureStream(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Idempotent.
	if _, err := EnsureStream(ctx, js, cfg); err != nil {
		t.Fatalf("second EnsureStream: %v", err)
	}
	// Same key always lands in the same partition; keys spread over partitions.
	seen := map[string]string{}
	for i := 0; i < 40; i++ {
		key := fmt.Sprintf("dev-%d", i%20)
		subj := "dpsync.events.enrollment." + key
		ack, err := js.Publish(ctx, subj, []byte("{}"))
		if err != nil {
			t.Fatal(err)
		}
		m, err := s.GetMsg(ctx, ack.Sequence)
		if err != nil {
			t.Fatal(err)
		}
		origin, p, err := cfg.OriginSubject(m.Subject)
		if err != nil {
			t.Fatal(err)
		}
		if origin != subj {
			t.Fatalf("origin of %q: got %q, want %q", m.Subject, origin, subj)
		}
		if prev, ok := seen[key]; ok && prev != m.Subject {
			t.Fatalf("key %s stored as %q and %q", key, prev, m.Subject)
		}
		seen[key] = m.Subject
		_ = p
	}
	parts := map[string]bool{}
	for _, subj := range seen {
		parts[strings.Split(subj, ".")[2]] = true
	}
	if len(parts) < 3 {
		t.Fatalf("20 keys landed in %d of 4 partitions, want ≥ 3", len(parts))
	}
	// A consumer per partition sees only its partition.
	total := 0
	for p := 0; p < 4; p++ {
		c, err := EnsureConsumer(ctx, s, cfg, ConsumerConfig{}, p)
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		total += int(info.NumPending)
	}
	if total != 40 {
		t.Fatalf("pending over all partition consumers: got %d, want 40", total)
	}
	// Changing the partition count of an existing stream is refused.
	if _, err := EnsureStream(ctx, js, StreamConfig{Partitions: 8}); err == nil || !strings.Contains(err.Error(), "partitioned as") {
		t.Fatalf("EnsureStream with another partition count: got %v, want a refusal", err)
	}
}

func TestStreamConfigValidate(t *testing.T) {
	tests := []struct {
		cfg  StreamConfig
		want string
	}{
		{StreamConfig{Partitions: -1}, "partitions"},
		{StreamConfig{Partitions: 2000}, "partitions"},
		{StreamConfig{Replicas: 7}, "replicas"},
		{StreamConfig{DuplicateWindow: time.Hour, MaxAge: time.Minute}, "duplicate window"},
		{StreamConfig{DuplicateWindow: 50 * time.Millisecond}, "100ms"},
		{StreamConfig{Prefix: "a.*"}, "wildcards"},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%+v): got %v, want an error about %s", tt.cfg, err, tt.want)
		}
	}
	if err := (StreamConfig{}).Validate(); err != nil {
		t.Errorf("defaults: got %v, want nil", err)
	}
}

// TestEnsureStreamRefusesAStorageChange: JetStream cannot change a stream's storage; asking
// for it is a configuration error the worker reports at start, not something it ignores.
func TestEnsureStreamRefusesAStorageChange(t *testing.T) {
	js, _ := startJS(t)
	ctx := context.Background()
	if _, err := EnsureStream(ctx, js, StreamConfig{Name: "S1", MemoryStorage: true}); err != nil {
		t.Fatal(err)
	}
	_, err := EnsureStream(ctx, js, StreamConfig{Name: "S1"})
	if err == nil || !strings.Contains(err.Error(), "memory storage") || !strings.Contains(err.Error(), "file") {
		t.Fatalf("file storage asked of a memory stream: got %v, want an error naming both", err)
	}
	if _, err := EnsureStream(ctx, js, StreamConfig{Name: "S1", MemoryStorage: true}); err != nil {
		t.Fatalf("same storage again: got %v, want nil", err)
	}
}
