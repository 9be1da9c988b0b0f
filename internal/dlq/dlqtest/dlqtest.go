// Package dlqtest starts the real NATS server the dead-letter tests run against.
package dlqtest

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/embedded/natstest"
)

// Server is a JetStream-enabled nats-server on a random local port, stopped when the test
// ends.
type Server struct {
	*natstest.Server
}

// Start starts a server storing its streams in a temporary directory of t.
func Start(t testing.TB) *Server { return &Server{natstest.Start(t)} }

// Connect returns a JetStream context on a new connection, closed when the test ends.
func (s *Server) Connect(t testing.TB) jetstream.JetStream {
	t.Helper()
	js, _ := s.Server.Connect(t)
	return js
}

// StartJetStream starts a server and connects to it.
func StartJetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	return Start(t).Connect(t)
}

// EventsStream creates the events stream a replay publishes to: name DPS_EVENTS (or
// name), subjects "dpsync.events.>", memory storage, the given duplicate window.
func EventsStream(t testing.TB, js jetstream.JetStream, name string, window time.Duration) jetstream.Stream {
	t.Helper()
	if name == "" {
		name = "DPS_EVENTS"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:       name,
		Subjects:   []string{"dpsync.events.>"},
		Storage:    jetstream.MemoryStorage,
		Duplicates: window,
	})
	if err != nil {
		t.Fatalf("events stream: %v", err)
	}
	return s
}

// Messages returns every message of stream s, in order.
func Messages(t testing.TB, s jetstream.Stream) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	var out []*jetstream.RawStreamMsg
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		out = append(out, m)
	}
	return out
}

// headerReplayOf is dlq.HeaderReplayOf (this package cannot import dlq: dlq's own tests
// import it).
const headerReplayOf = "Dpsync-Replay-Of"

// SettlerOptions configure a Settler.
type SettlerOptions struct {
	// Events is the events stream (default "DPS_EVENTS").
	Events string
	// DLQ is the dead-letter stream (default "DPS_DLQ").
	DLQ string
	// Handle, if set, is called with every event before its letter is removed: the test
	// plays the worker's outcome there, e.g. publishes the new letter of an event that fails
	// again. Events are handled one at a time, in stream order. An error leaves the event
	// unacknowledged and its letter in place; the event comes back 20 ms later, and the
	// events behind it are handled meanwhile.
	Handle func(ctx context.Context, m jetstream.Msg) error
}

// Settler plays the worker's part of the replay protocol: it consumes the events stream
// from its first event and, for every event with a Dpsync-Replay-Of header, removes the
// dead letter it names (one already gone is fine) before it acknowledges the event.
// It stops when the test ends, or at Stop.
type Settler struct {
	t      testing.TB
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	settled []uint64
}

// StartSettler starts a Settler on js; the streams must exist.
func StartSettler(t testing.TB, js jetstream.JetStream, opts SettlerOptions) *Settler {
	t.Helper()
	if opts.Events == "" {
		opts.Events = "DPS_EVENTS"
	}
	if opts.DLQ == "" {
		opts.DLQ = "DPS_DLQ"
	}
	ctx, cancel := context.WithCancel(context.Background())
	setup, setupCancel := context.WithTimeout(ctx, 10*time.Second)
	defer setupCancel()
	events, err := js.Stream(setup, opts.Events)
	if err != nil {
		cancel()
		t.Fatalf("settler: events stream %s: %v", opts.Events, err)
	}
	dlq, err := js.Stream(setup, opts.DLQ)
	if err != nil {
		cancel()
		t.Fatalf("settler: dead-letter stream %s: %v", opts.DLQ, err)
	}
	cons, err := events.CreateConsumer(setup, jetstream.ConsumerConfig{
		AckPolicy:         jetstream.AckExplicitPolicy,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckWait:           5 * time.Second,
		InactiveThreshold: time.Minute,
	})
	if err != nil {
		cancel()
		t.Fatalf("settler: consumer: %v", err)
	}
	it, err := cons.Messages()
	if err != nil {
		cancel()
		t.Fatalf("settler: consume: %v", err)
	}
	s := &Settler{t: t, cancel: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		it.Stop()
	}()
	go func() {
		defer wg.Done()
		defer cancel()
		for {
			m, err := it.Next()
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				return
			}
			if err != nil {
				continue
			}
			s.handle(ctx, dlq, m, opts.Handle)
		}
	}()
	go func() {
		wg.Wait()
		close(s.done)
	}()
	t.Cleanup(s.Stop)
	return s
}

func (s *Settler) handle(ctx context.Context, dlq jetstream.Stream, m jetstream.Msg, h func(context.Context, jetstream.Msg) error) {
	if h != nil {
		if err := h(ctx, m); err != nil {
			_ = m.NakWithDelay(20 * time.Millisecond)
			return
		}
	}
	if v := m.Headers().Get(headerReplayOf); v != "" {
		seq, err := strconv.ParseUint(v, 10, 64)
		if err == nil && seq > 0 {
			if err := dlq.DeleteMsg(ctx, seq); err != nil {
				if _, gerr := dlq.GetMsg(ctx, seq); !errors.Is(gerr, jetstream.ErrMsgNotFound) {
					_ = m.NakWithDelay(20 * time.Millisecond)
					return
				}
			}
			s.mu.Lock()
			s.settled = append(s.settled, seq)
			s.mu.Unlock()
		}
	}
	_ = m.DoubleAck(ctx)
}

// Settled returns the sequences of the letters the Settler removed, in order.
func (s *Settler) Settled() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]uint64(nil), s.settled...)
}

// Stop stops the Settler and waits for it; calling it again does nothing.
func (s *Settler) Stop() {
	s.cancel()
	<-s.done
}
