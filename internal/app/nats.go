package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/dpsync/dpsync/internal/embedded"
)

// connectNATS connects to the configured servers, or starts the embedded one.
func connectNATS(ctx context.Context, o *Options, td *teardown) (*nats.Conn, string, error) {
	log := o.Logger.With("component", "nats")
	urls := strings.Join(o.NATSURLs, ",")
	if urls == "" {
		host, portStr, err := net.SplitHostPort(o.EmbeddedNATSAddr)
		if err != nil {
			return nil, "", fmt.Errorf("embedded nats address %q: %w", o.EmbeddedNATSAddr, err)
		}
		port, err := strconv.Atoi(portStr)
		if err != nil {
			return nil, "", fmt.Errorf("embedded nats address %q: port is not a number", o.EmbeddedNATSAddr)
		}
		srv, err := embedded.StartNATS(embedded.Options{
			StoreDir: filepath.Join(o.DataDir, "jetstream"),
			Host:     host,
			Port:     port,
		})
		if err != nil {
			return nil, "", err
		}
		td.add("embedded nats", func(context.Context) error { srv.Shutdown(); return nil })
		urls = srv.ClientURL()
		log.Info("embedded JetStream server started", "url", urls, "store", filepath.Join(o.DataDir, "jetstream"))
	}
	opts := []nats.Option{
		nats.Name("dpsync-worker " + o.WorkerID),
		// Notice a hung server within seconds: a ping every 2 s, 2 outstanding → ~6 s.
		nats.PingInterval(2 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("disconnected from NATS", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("reconnected to NATS", "url", nc.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("NATS async error", "err", err)
		}),
	}
	if o.NATSCredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.NATSCredsFile))
	}
	if o.NATSNKeyFile != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NATSNKeyFile)
		if err != nil {
			return nil, "", fmt.Errorf("nats nkey file %s: %w", o.NATSNKeyFile, redactNATSErr(err))
		}
		opts = append(opts, opt)
	}
	if o.NATSUser != "" {
		opts = append(opts, nats.UserInfo(o.NATSUser, o.NATSPassword))
	}
	if o.NATSCAFile != "" {
		opts = append(opts, nats.RootCAs(o.NATSCAFile))
	}
	if o.NATSCertFile != "" {
		opts = append(opts, nats.ClientCert(o.NATSCertFile, o.NATSKeyFile))
	}
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		return nil, "", fmt.Errorf("connect to NATS: %w", redactNATSErr(err))
	}
	td.add("nats connection", func(ctx context.Context) error {
		done := make(chan struct{})
		nc.SetClosedHandler(func(*nats.Conn) { close(done) })
		if err := nc.Drain(); err != nil {
			nc.Close()
			return err
		}
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			nc.Close()
			return ctx.Err()
		}
	})
	// Wait for the first connection (RetryOnFailedConnect returns before it).
	deadline := time.Now().Add(30 * time.Second)
	for !nc.IsConnected() {
		if time.Now().After(deadline) {
			return nil, "", errors.New("connect to NATS: no server reachable within 30s")
		}
		select {
		case <-ctx.Done():
			return nil, "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	log.Info("connected to NATS", "url", nc.ConnectedUrlRedacted())
	return nc, nc.ConnectedUrlRedacted(), nil
}

// redactNATSErr keeps user:password@ out of error text.
func redactNATSErr(err error) error {
	if err == nil {
		return nil
	}
	return errors.New(RedactURLs(err.Error()))
}

// RedactURLs replaces the user info (user:password@) of every URL in s.
func RedactURLs(s string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, "://")
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i+3])
		s = s[i+3:]
		end := strings.IndexAny(s, " /,\"'")
		if end < 0 {
			end = len(s)
		}
		if at := strings.LastIndex(s[:end], "@"); at >= 0 {
			b.WriteString("[REDACTED]")
			s = s[at:]
		}
	}
}
