// Package app wires a dpsync worker together and runs it. It never handles signals or
// exits the process: cmd/worker does that, tests embed Run directly.
package app

import (
	"errors"
	"fmt"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"log/slog"
	"os"
	"time"

	"github.com/dpsync/dpsync/internal/batcher"
	"github.com/dpsync/dpsync/internal/consumer"
	"github.com/dpsync/dpsync/internal/dlq"
	"github.com/dpsync/dpsync/internal/dps"
)

// Options hold every setting and dependency of a worker. The zero value runs the
// zero-config default: an embedded JetStream server in DataDir and an embedded DPS emulator.
type Options struct {
	// WorkerID names this worker in leases and dead letters (default hostname-pid).
	WorkerID string
	// DataDir holds the embedded JetStream's files (default "./dpsync-data").
	DataDir string

	// NATS. With no URL the worker starts an embedded JetStream server.
	NATSURLs      []string
	NATSCredsFile string // JWT credentials file
	NATSNKeyFile  string // NKey seed file
	NATSUser      string
	NATSPassword  string // secret: from env or file only
	NATSCAFile    string
	NATSCertFile  string
	NATSKeyFile   string
	// EmbeddedNATSAddr is where the embedded server listens for clients (default
	// "127.0.0.1:4222"; port 0 picks a free port).
	EmbeddedNATSAddr string

	// DPS. With neither a connection string nor an endpoint the worker starts an embedded
	// emulator.
	DPSConnectionString string // secret: from env or file only
	DPSEndpoint         string // with Entra ID (DefaultAzureCredential)
	DPSCAFile           string // extra CA to trust (the emulator's certificate)
	DPSAPIVersion       string
	// DPSTryTimeout bounds one DPS request (default 3 s). Leases stop being used this long
	// plus 1 s before they expire (fencing), so LeaseTTL must be at least twice that.
	DPSTryTimeout time.Duration
	// EmulatorAddr is where the embedded emulator listens (default 127.0.0.1:0).
	EmulatorAddr string

	Stream       consumer.StreamConfig
	Consumer     consumer.ConsumerConfig
	DLQStream    string // default "DPS_DLQ"
	Batcher      batcher.Config
	Retry        consumer.RetryPolicy
	HoldPolicy   consumer.HoldPolicy
	Read         consumer.ReadOptions
	RedriveEvery []time.Duration // schedule of automatic redrive of transient letters
	// RedriveLimit is the number of automatic redrives of a transient letter before it is
	// parked as permanent (0 = len(RedriveEvery); redrives beyond the schedule wait its
	// last entry).
	RedriveLimit int
	// RedriveClock tells the automatic redrive the time and, if it is a dlq.Timer, paces it
	// (default the system clock; tests inject a fake one).
	RedriveClock dlq.Clock

	// DLQMaxAge drops dead letters older than this. 0 (the default) keeps them until they
	// are replayed or purged: an expired letter is a lost event.
	DLQMaxAge time.Duration
	// DLQDuplicateWindow is how long the dead-letter stream remembers letter ids (default
	// 10 min, at least 100 ms, at most DLQMaxAge when that is set). It must outlast the time
	// between a letter's publish and its event's ack (AckWait plus a restart), or a
	// redelivered event stores its letter twice.
	DLQDuplicateWindow time.Duration

	// QuotaPerMinute is the DPS operation budget of the whole fleet (default 1,000; -1 =
	// unlimited).
	QuotaPerMinute int
	// LeaseTTL bounds how long a dead worker's partitions stay unowned (default 8.5 s, so
	// takeover completes within 10 s; at least 2 × (DPSTryTimeout + 1 s)).
	LeaseTTL time.Duration

	// HTTPAddr serves /healthz, /readyz and /metrics ("" = off).
	HTTPAddr string
	// ShutdownTimeout bounds the graceful stop (default 30 s).
	ShutdownTimeout time.Duration

	Logger *slog.Logger
	// SpanProcessors receive the worker's spans (an OTLP exporter, say). Without one no span
	// is recorded.
	SpanProcessors []sdktrace.SpanProcessor
	// OnReady is called once the worker consumes, with where to publish.
	OnReady func(Info)
}

// Info tells where a running worker's parts are.
type Info struct {
	NATSURL        string
	Stream         string
	SubjectPrefix  string
	DLQStream      string
	DPSEndpoint    string
	EmulatorURL    string // set when the emulator is embedded
	EmulatorCAFile string
	HTTPAddr       string
	// DPS is the worker's DPS client (to read back what it wrote).
	DPS *dps.Client
}

func (o *Options) setDefaults() error {
	if o.WorkerID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "worker"
		}
		o.WorkerID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if o.DataDir == "" {
		o.DataDir = "dpsync-data"
	}
	if o.EmbeddedNATSAddr == "" {
		o.EmbeddedNATSAddr = "127.0.0.1:4222"
	}
	if o.DLQStream == "" {
		o.DLQStream = "DPS_DLQ"
	}
	if o.QuotaPerMinute == 0 {
		o.QuotaPerMinute = 1000
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = 8500 * time.Millisecond // takeover ≈ TTL + ≤ 0.3 s of detection: within 10 s
	}
	if o.DPSTryTimeout == 0 {
		o.DPSTryTimeout = 3 * time.Second
	}
	if o.ShutdownTimeout == 0 {
		o.ShutdownTimeout = 30 * time.Second
	}
	if o.EmulatorAddr == "" {
		o.EmulatorAddr = "127.0.0.1:0"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o.validate()
}

func (o *Options) validate() error {
	var errs []error
	if err := o.Stream.Validate(); err != nil {
		errs = append(errs, err)
	}
	dlqCfg := o.dlqStreamConfig()
	dlqCfg.Replicas = 0 // the events stream's, checked above
	if err := dlqCfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if w := o.DLQDuplicateWindow; w != 0 && w < minDuplicateWindow {
		errs = append(errs, fmt.Errorf("dlq stream duplicate window: %v is under %v, the NATS server's minimum", w, minDuplicateWindow))
	}
	if err := o.Batcher.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("batcher: %w", err))
	}
	if o.DPSConnectionString != "" && o.DPSEndpoint != "" {
		errs = append(errs, errors.New("dps: set either a connection string or an endpoint (Entra ID), not both"))
	}
	if o.QuotaPerMinute < -1 {
		errs = append(errs, fmt.Errorf("quota per minute: %d is negative (use -1 for unlimited)", o.QuotaPerMinute))
	}
	if m := leaseSafetyMargin(o); o.LeaseTTL < 2*m {
		errs = append(errs, fmt.Errorf("lease ttl: %v is under %v, twice the fencing margin (DPS try timeout %v + 1s)", o.LeaseTTL, 2*m, o.DPSTryTimeout))
	}
	if o.RedriveEvery != nil && len(o.RedriveEvery) == 0 {
		errs = append(errs, errors.New("redrive schedule: empty (leave it unset for the default 1m,5m,30m,2h)"))
	}
	for i, d := range o.RedriveEvery {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("redrive schedule: entry %d (%v) is not positive", i+1, d))
		}
	}
	if o.RedriveLimit < 0 {
		errs = append(errs, fmt.Errorf("redrive limit: %d is negative", o.RedriveLimit))
	}
	if (o.NATSCertFile == "") != (o.NATSKeyFile == "") {
		errs = append(errs, errors.New("nats tls: client certificate and key go together"))
	}
	return errors.Join(errs...)
}

// minDuplicateWindow is the shortest duplicate window a NATS server accepts.
const minDuplicateWindow = 100 * time.Millisecond

// dlqStreamConfig is the dead-letter stream the options ask for; its replicas follow the
// events stream's.
func (o *Options) dlqStreamConfig() dlq.StreamConfig {
	return dlq.StreamConfig{
		Name:            o.DLQStream,
		Replicas:        o.Stream.WithDefaults().Replicas,
		MaxAge:          o.DLQMaxAge,
		DuplicateWindow: o.DLQDuplicateWindow,
	}
}
