// Package dlqtest starts the real NATS server the dead-letter tests run against.
package dlqtest

import (
	"context"
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
