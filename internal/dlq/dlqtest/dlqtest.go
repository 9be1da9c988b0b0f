// Package dlqtest starts the real NATS server the dead-letter tests run against.
package dlqtest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is a JetStream-enabled nats-server on a random local port, stopped when the test
// ends.
type Server struct {
	srv *server.Server
}

// Start starts a server storing its streams in a temporary directory of t.
func Start(t testing.TB) *Server {
	t.Helper()
	srv, err := server.NewServer(&server.Options{
		ServerName: "dlqtest",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   t.TempDir(),
		NoLog:      true,
		NoSigs:     true,
	})
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		t.Fatal("nats server: not ready within 10s")
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	return &Server{srv: srv}
}

// URL is the client URL of the server.
func (s *Server) URL() string { return s.srv.ClientURL() }

// Connect returns a JetStream context on a new connection, closed when the test ends.
func (s *Server) Connect(t testing.TB) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(s.URL(), nats.Name(t.Name()))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
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
