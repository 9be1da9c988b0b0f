package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/applier"
	"github.com/dpsync/dpsync/internal/consumer"
	"github.com/dpsync/dpsync/internal/telemetry"
)

// Run runs a worker until ctx ends, then stops it gracefully within ShutdownTimeout:
// no more pulls, in-flight DPS calls and dead letters finish, events are acknowledged, the
// NATS connection drains. It returns nil after a clean stop.
func Run(ctx context.Context, o Options) error {
	if err := o.setDefaults(); err != nil {
		return err
	}
	if pe := o.Read.PullExpiry; pe != 0 && 2*pe > o.LeaseTTL-leaseSafetyMargin(&o) {
		// A paused owner's open pull request must end well before its lease can pass to
		// another worker (see partitionManager.start).
		return fmt.Errorf("pull expiry %v: must be at most half the usable lease (lease TTL %v − safety margin %v)",
			pe, o.LeaseTTL, leaseSafetyMargin(&o))
	}
	log := o.Logger.With("component", "app", "worker", o.WorkerID)
	var td teardown
	defer td.run(log, o.ShutdownTimeout)

	tel, err := telemetry.New(o.SpanProcessors...)
	if err != nil {
		return err
	}
	td.add("telemetry", tel.Shutdown)

	nc, natsURL, err := connectNATS(ctx, &o, &td)
	if err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	// A cluster that is electing leaders answers "no responders" or 503 for a moment: the
	// steps below retry such errors (startupRetry); a configuration error fails at once.
	var stream jetstream.Stream
	if err := startupRetry(ctx, log, "events stream", func(ctx context.Context) (err error) {
		stream, err = consumer.EnsureStream(ctx, js, o.Stream)
		return err
	}); err != nil {
		return err
	}
	var dl *deadLetters
	if err := startupRetry(ctx, log, "dead-letter stream", func(ctx context.Context) (err error) {
		dl, err = newDeadLetters(ctx, js, &o)
		return err
	}); err != nil {
		return err
	}
	var fleet *fleet
	if err := startupRetry(ctx, log, "membership", func(ctx context.Context) (err error) {
		fleet, err = startFleet(ctx, js, &o, &td)
		return err
	}); err != nil {
		return err
	}
	dm, err := newDPSMetrics(tel.Meter("dpsync/dps"))
	if err != nil {
		return err
	}
	dpsConn, err := connectDPS(ctx, &o, tel, &td, pacePolicy{pace: fleet.pace, m: dm})
	if err != nil {
		return err
	}

	ap, err := applier.New(dpsConn.adapter, applier.Options{AfterCall: dm.afterCall})
	if err != nil {
		return err
	}
	decode, err := eventDecoder()
	if err != nil {
		return err
	}
	metrics, err := consumer.NewMetrics(tel.Meter("dpsync/consumer"))
	if err != nil {
		return err
	}
	eng, err := consumer.NewEngine(consumer.Options{
		Stream:      o.Stream,
		Batcher:     o.Batcher,
		Decode:      decode,
		Apply:       ap,
		DeadLetters: dl,
		HoldPolicy:  o.HoldPolicy,
		Retry:       o.Retry,
		KeepAlive:   keepAliveFor(o.Consumer.AckWait),
		Successor:   successorIn(stream),
		Budget:      fleet.pace.Available,
		Class:       ap.Class,
		// A letter, like a DPS write, is made under the lease: each attempt within the margin.
		LetterTimeout: o.DPSTryTimeout,
		Fence:         fleet.fence,
		InStep:        fleet.m.InStep,
		WorkerID:      o.WorkerID,
		Logger:        o.Logger.With("component", "consumer"),
		Tracer:        tel.Tracer("dpsync/consumer"),
		Metrics:       metrics,
	})
	if err != nil {
		return err
	}

	engCtx, hardStop := context.WithCancel(context.WithoutCancel(ctx))
	defer hardStop()
	engDone := make(chan error, 1)
	go func() { engDone <- eng.Run(engCtx) }()

	parts := newPartitionManager(stream, eng, fleet, dl, &o)
	if err := registerFleetMetrics(tel.Meter("dpsync/fleet"), fleet, parts); err != nil {
		hardStop()
		<-engDone
		return err
	}
	fleet.onChange(parts.apply)

	redriveDone := startRedrive(ctx, js, &o, fleet, dl, log)

	httpAddr := ""
	if o.HTTPAddr != "" {
		checks := []readiness{
			{"nats", func(context.Context) error {
				if nc.Status() != nats.CONNECTED {
					return fmt.Errorf("NATS connection is %s", nc.Status())
				}
				return nil
			}},
			{"stream", func(ctx context.Context) error {
				_, err := stream.Info(ctx)
				return err
			}},
		}
		httpAddr, err = serveHTTP(o.HTTPAddr, tel.Handler(), checks, &td)
		if err != nil {
			hardStop()
			<-engDone
			return fmt.Errorf("http %s: %w", o.HTTPAddr, err)
		}
	}
	log.Info("worker running", "nats", natsURL, "stream", o.Stream.WithDefaults().Name,
		"publish_to", o.Stream.WithDefaults().Prefix+".<enrollment|group>.<token>", "subject_token", "lower-cased id, . written as %2E (event.SubjectToken)", "dlq", o.DLQStream,
		"dps", dpsConn.endpoint, "http", httpAddr)
	if o.OnReady != nil {
		o.OnReady(Info{
			NATSURL: natsURL, Stream: o.Stream.WithDefaults().Name, SubjectPrefix: o.Stream.WithDefaults().Prefix,
			DLQStream: o.DLQStream, DPSEndpoint: dpsConn.endpoint, EmulatorURL: dpsConn.emulatorURL,
			EmulatorCAFile: dpsConn.emulatorCA, HTTPAddr: httpAddr, DPS: dpsConn.client,
		})
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("stop requested: finishing in-flight work", "timeout", o.ShutdownTimeout)
	case runErr = <-engDone:
		engDone = nil
		if runErr == nil {
			runErr = errors.New("engine stopped unexpectedly")
		}
	}
	// Graceful stop: leases go after the engine stopped touching DPS.
	stopCtx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
	defer cancel()
	settled := false // every event acknowledged or given back: the leases are released settled
	if engDone != nil {
		eng.Stop()
		select {
		case runErr = <-engDone:
			settled = runErr == nil
		case <-stopCtx.Done():
			log.Warn("graceful stop timed out; unacknowledged events will be redelivered")
			hardStop()
			runErr = <-engDone
		}
	}
	<-redriveDone
	closeCtx := stopCtx
	if stopCtx.Err() != nil { // the stop used the whole timeout: still release the leases
		var cancelClose context.CancelFunc
		closeCtx, cancelClose = context.WithTimeout(context.Background(), 5*time.Second)
		defer cancelClose()
	}
	if err := fleet.close(closeCtx, settled); err != nil {
		log.Warn("leases not all released; the others take them over when they expire", "err", err)
	}
	if runErr != nil && !errors.Is(runErr, context.Canceled) {
		return runErr
	}
	log.Info("worker stopped cleanly")
	return nil
}

// startupTimeout bounds how long startupRetry keeps trying one step.
const startupTimeout = time.Minute

// startupRetry runs fn until it succeeds, fails with an error that is not transient, ctx
// ends, or startupTimeout passed; each try is bounded by 15 s.
func startupRetry(ctx context.Context, log *slog.Logger, what string, fn func(context.Context) error) error {
	deadline := time.Now().Add(startupTimeout)
	delay := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		tctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := fn(tctx)
		cancel()
		if err == nil || !transientNATSError(err) || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		log.Warn("start: "+what+" not ready; retrying", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// transientNATSError reports whether err is one a JetStream cluster gives for a moment
// (leader election, a node restarting, a reconnect) rather than for a wrong configuration.
func transientNATSError(err error) bool {
	switch {
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrNoServers):
		return true
	}
	// Only "unavailable" and timeouts: JetStream answers 500 to some configuration errors
	// too (a duplicate window under its minimum), which must fail at once.
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.Code == 408 || apiErr.Code == 503 || apiErr.Code == 504)
}

// successorIn reads the next event stored on a subject of s (one key's subject) after a
// sequence: a direct get, no consumer involved.
func successorIn(s jetstream.Stream) func(ctx context.Context, subject string, after uint64) ([]byte, uint64, bool, error) {
	return func(ctx context.Context, subject string, after uint64) ([]byte, uint64, bool, error) {
		m, err := s.GetMsg(ctx, after+1, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, 0, false, nil
		}
		if err != nil {
			return nil, 0, false, fmt.Errorf("read next event on %s: %w", subject, err)
		}
		return m.Data, m.Sequence, true, nil
	}
}

func keepAliveFor(ackWait time.Duration) time.Duration {
	if ackWait == 0 {
		ackWait = 15 * time.Second
	}
	return ackWait / 3
}
