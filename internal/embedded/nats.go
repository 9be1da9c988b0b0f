// Package embedded starts an in-process NATS server with JetStream: the zero-config default
// of the worker and the server of the package tests.
package embedded

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options shape the embedded server.
type Options struct {
	// StoreDir holds JetStream's files. Required.
	StoreDir string
	// Host to listen on (default 127.0.0.1). Port 0 picks a free port; -1 accepts no
	// network clients (in-process connections only).
	Host string
	Port int
	// SyncAlways makes JetStream fsync every write before acknowledging it (slower; what
	// the fault tests use). By default NATS syncs every 2 minutes: a machine crash (not a
	// process crash) can lose acknowledged writes of that window.
	SyncAlways bool
	// ServerName (default "dpsync-embedded").
	ServerName string
}

// NATS is a running embedded server.
type NATS struct {
	srv *server.Server
}

// StartNATS starts a JetStream-enabled server and waits until it accepts clients.
func StartNATS(o Options) (*NATS, error) {
	if o.StoreDir == "" {
		return nil, errors.New("embedded nats: StoreDir is required")
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.ServerName == "" {
		o.ServerName = "dpsync-embedded"
	}
	port := o.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName: o.ServerName,
		Host:       o.Host,
		Port:       port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		NoLog:      true,
		// Bound memory: the stream lives on disk.
		JetStreamMaxMemory: 256 << 20,
	}
	if o.SyncAlways {
		opts.SyncAlways = true
	}
	if o.Port == -1 {
		opts.DontListen = true
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("embedded nats: not ready within 10s")
	}
	return &NATS{srv: srv}, nil
}

// ClientURL is the URL clients connect to.
func (n *NATS) ClientURL() string { return n.srv.ClientURL() }

// Server returns the underlying server (for in-process connections).
func (n *NATS) Server() *server.Server { return n.srv }

// Shutdown stops the server and waits for it.
func (n *NATS) Shutdown() {
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}
