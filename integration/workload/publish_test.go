package workload

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func startJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func createStream(ctx context.Context, t *testing.T, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "E", Subjects: []string{"dpsync.events.>"}, Duplicates: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPublishKeepsKeyOrder publishes concurrently and checks that the stream holds every
// confirmed event once, each key's events in generation order, as the ledger says.
func TestPublishKeepsKeyOrder(t *testing.T) {
	ctx := t.Context()
	js := startJS(t)
	stream := createStream(ctx, t, js)
	events := Generate(Config{Seed: 3, IDs: 40, Events: 1000})
	l := NewLedger()
	if err := Publish(ctx, js, events, l, PublishOptions{Concurrency: 8}); err != nil {
		t.Fatal(err)
	}
	if got, want := l.Len(), len(events); got != want {
		t.Fatalf("got %d confirmed, want %d", got, want)
	}
	// Publishing the same events again is deduplicated by Nats-Msg-Id.
	if err := Publish(ctx, js, events[:100], NewLedger(), PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := info.State.Msgs, uint64(len(events)); got != want {
		t.Errorf("got %d messages in the stream, want %d", got, want)
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	keyOf := map[string]string{}
	for _, e := range events {
		keyOf[e.ID] = e.Key
	}
	next := map[string]int{} // key → index of its next expected event in the ledger
	for range len(events) {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		id := msg.Headers().Get(jetstream.MsgIDHeader)
		key := keyOf[id]
		want := l.Events(key)[next[key]]
		if want.ID != id {
			t.Fatalf("key %s: stream has %s at position %d, ledger has %s", key, id, next[key], want.ID)
		}
		next[key]++
	}
}

// TestPublishRetriesUntilConfirmed publishes before the stream exists: attempts fail (no
// responders) and are retried with the same id until the stream appears.
func TestPublishRetriesUntilConfirmed(t *testing.T) {
	ctx := t.Context()
	js := startJS(t)
	events := Generate(Config{Seed: 4, IDs: 5, Events: 20})
	l := NewLedger()
	done := make(chan error, 1)
	go func() { done <- Publish(ctx, js, events, l, PublishOptions{Concurrency: 2, AckTimeout: time.Second}) }()
	// Let the first attempts fail, then create the stream.
	time.Sleep(300 * time.Millisecond)
	if n := l.Len(); n != 0 {
		t.Fatalf("got %d confirmed before the stream exists, want 0", n)
	}
	stream := createStream(ctx, t, js)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := info.State.Msgs, uint64(len(events)); got != want || l.Len() != len(events) {
		t.Errorf("got %d in stream and %d in ledger, want %d", got, l.Len(), want)
	}
}

// TestPublishGivesUpWithContext: the ledger holds only confirmed events when ctx ends.
func TestPublishGivesUpWithContext(t *testing.T) {
	js := startJS(t)
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	l := NewLedger()
	err := Publish(ctx, js, Generate(Config{Seed: 5, IDs: 2, Events: 4}), l, PublishOptions{AckTimeout: 100 * time.Millisecond})
	if err == nil {
		t.Fatal("got nil error publishing to no stream, want the context error")
	}
	if l.Len() != 0 {
		t.Errorf("got %d confirmed events, want 0", l.Len())
	}
}
