// Package natstest starts the real, embedded JetStream server that package tests run
// against, one per test, stopped when the test ends.
package natstest

import (
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/embedded"
)

// Server is a JetStream-enabled server on a random loopback port with its store in a
// temporary directory of the test.
type Server struct {
	n *embedded.NATS
}

// Start starts a server; it is shut down when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	n, err := embedded.StartNATS(embedded.Options{StoreDir: t.TempDir(), ServerName: "natstest"})
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	t.Cleanup(n.Shutdown)
	return &Server{n: n}
}

// URL is the client URL.
func (s *Server) URL() string { return s.n.ClientURL() }

// Server is the underlying server (to shut it down early, say).
func (s *Server) Server() *server.Server { return s.n.Server() }

// Connect opens a connection named after the test and its JetStream context; the
// connection is closed when t ends.
func (s *Server) Connect(t testing.TB) (jetstream.JetStream, *nats.Conn) {
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
	return js, nc
}
