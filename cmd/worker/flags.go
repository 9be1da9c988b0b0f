package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/dpsync/dpsync/internal/app"
	"github.com/dpsync/dpsync/internal/consumer"
)

// envPrefix: every flag --some-name can also be set as DPSYNC_SOME_NAME.
const envPrefix = "DPSYNC_"

// applyEnv sets every flag not given on the command line from its environment variable.
func applyEnv(fs *flag.FlagSet, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		name := envName(f.Name)
		if v := getenv(name); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
	})
	return errors.Join(errs...)
}

// coalesceGiven reports whether --coalesce was set on the command line or, once applyEnv
// ran (it sets flags with fs.Set), in the environment.
func coalesceGiven(fs *flag.FlagSet) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "coalesce" })
	return given
}

func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// secretFrom reads a secret from env (preferred) or a file; secrets are never flag values,
// so they do not show in ps or shell history.
func secretFrom(getenv func(string) string, envVar, file string) (string, error) {
	if v := getenv(envVar); v != "" {
		return v, nil
	}
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

type durationList []time.Duration

func (d *durationList) String() string {
	s := make([]string, len(*d))
	for i, v := range *d {
		s[i] = v.String()
	}
	return strings.Join(s, ",")
}

// Set parses a comma-separated list of positive durations.
func (d *durationList) Set(v string) error {
	var out []time.Duration
	for _, part := range strings.Split(v, ",") {
		x, err := time.ParseDuration(strings.TrimSpace(part))
		if err != nil {
			return fmt.Errorf("%q is not a list of durations like 1m,5m,30m", v)
		}
		if x <= 0 {
			return fmt.Errorf("%q: every wait must be positive, %s is not", v, strings.TrimSpace(part))
		}
		out = append(out, x)
	}
	*d = out
	return nil
}

// storageFlag is --stream-storage: "file" or "memory", kept as MemoryStorage.
type storageFlag struct{ memory *bool }

func (s storageFlag) String() string {
	if s.memory != nil && *s.memory {
		return "memory"
	}
	return "file"
}

// Set accepts file or memory (any case).
func (s storageFlag) Set(v string) error {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "file":
		*s.memory = false
	case "memory":
		*s.memory = true
	default:
		return fmt.Errorf("%q is not a storage: want file or memory", v)
	}
	return nil
}

// checkDLQStreamFlags checks --dlq-max-age and --dlq-duplicate-window, naming the flags and
// their environment variables (app.Options checks them again, naming the options).
func checkDLQStreamFlags(o *app.Options) error {
	name := func(flag string) string { return "--" + flag + " (" + envName(flag) + ")" }
	switch age, w := o.DLQMaxAge, o.DLQDuplicateWindow; {
	case age < 0:
		return fmt.Errorf("%s: %v is negative (0 keeps dead letters until replayed or purged)", name("dlq-max-age"), age)
	case w < 100*time.Millisecond:
		return fmt.Errorf("%s: %v is under 100ms, the NATS server's minimum", name("dlq-duplicate-window"), w)
	case age > 0 && w > age:
		return fmt.Errorf("%s: %v exceeds %s %v", name("dlq-duplicate-window"), w, name("dlq-max-age"), age)
	}
	return nil
}

type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	*s = nil
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}

// workerFlags binds every worker option to fs and returns a function that finishes the
// Options after parsing (env, secret files).
func workerFlags(fs *flag.FlagSet, o *app.Options) func(getenv func(string) string) error {
	fs.StringVar(&o.WorkerID, "worker-id", "", "name of this worker in leases and dead letters (default hostname-pid)")
	fs.StringVar(&o.DataDir, "data-dir", "dpsync-data", "directory of the embedded JetStream server's files")
	var conn natsFlags
	conn.register(fs, "NATS server `URLs`, comma-separated (empty: start an embedded JetStream server)")
	fs.StringVar(&o.EmbeddedNATSAddr, "embedded-nats-addr", "127.0.0.1:4222", "client address of the embedded JetStream server (port 0 = any free port)")

	dpsConnFile := fs.String("dps-connection-string-file", "", "file holding the DPS service connection string (or set DPSYNC_DPS_CONNECTION_STRING); empty with no endpoint: embedded emulator")
	fs.StringVar(&o.DPSEndpoint, "dps-endpoint", "", "DPS endpoint for Entra ID auth (DefaultAzureCredential), e.g. https://mydps.azure-devices-provisioning.net")
	fs.StringVar(&o.DPSCAFile, "dps-ca", "", "extra CA file to trust for DPS (e.g. the emulator's certificate)")
	fs.StringVar(&o.DPSAPIVersion, "dps-api-version", "", "DPS api-version (default 2021-10-01)")
	fs.DurationVar(&o.DPSTryTimeout, "dps-try-timeout", 3*time.Second, "bound of one DPS request; --lease-ttl must be at least twice this plus 2s")
	fs.StringVar(&o.EmulatorAddr, "emulator-addr", "127.0.0.1:0", "listen address of the embedded emulator")

	fs.StringVar(&o.Stream.Name, "stream", "DPS_EVENTS", "events stream name")
	fs.IntVar(&o.Stream.Partitions, "partitions", 16, "partitions of the events stream (fixed at creation)")
	fs.IntVar(&o.Stream.Replicas, "replicas", 1, "stream replicas (3 in a cluster)")
	fs.DurationVar(&o.Stream.MaxAge, "stream-max-age", 7*24*time.Hour, "drop events older than this")
	fs.DurationVar(&o.Stream.DuplicateWindow, "duplicate-window", 2*time.Minute, "Nats-Msg-Id dedupe window")
	fs.Var(storageFlag{&o.Stream.MemoryStorage}, "stream-storage", "storage of the events stream, file or memory (memory loses unapplied events when NATS restarts; fixed when the stream is created)")
	fs.StringVar(&o.DLQStream, "dlq-stream", "DPS_DLQ", "dead-letter stream name")
	fs.DurationVar(&o.DLQMaxAge, "dlq-max-age", 0, "drop dead letters older than this (0 = keep them until replayed or purged: an expired letter is a lost event)")
	fs.DurationVar(&o.DLQDuplicateWindow, "dlq-duplicate-window", 10*time.Minute, "how long the dead-letter stream remembers letter ids; longer than --ack-wait plus a restart, so a redelivered event does not store its letter twice")
	fs.DurationVar(&o.Consumer.AckWait, "ack-wait", 15*time.Second, "consumer AckWait")
	fs.IntVar(&o.Consumer.MaxAckPending, "max-ack-pending", consumer.DefaultMaxAckPending, "unacknowledged events per partition: bounds memory (partitions owned × this many events held); deeper coalesces more under the quota")

	fs.IntVar(&o.Batcher.MaxItems, "batch-size", 10, "items per DPS bulk call (1-10)")
	fs.DurationVar(&o.Batcher.Linger, "linger", 25*time.Millisecond, "how long a partial batch waits for more items")
	fs.IntVar(&o.Batcher.MaxInFlight, "max-in-flight", 4, "DPS calls in flight")
	fs.IntVar(&o.Batcher.MaxPending, "max-pending", 20000, "events waiting in the batcher (bounds memory)")
	fs.BoolVar(&o.Batcher.Coalesce, "coalesce", true, "fold pending update events of one device where the DPS result is the same (see internal/batcher)")
	fs.DurationVar(&o.Retry.Budget, "retry-budget", 2*time.Minute, "how long a transient failure is retried before it is dead-lettered")
	holdContinue := fs.Bool("hold-continue", false, "let later events of a key continue past its dead letter (default: they follow it); turns --coalesce off (docs/OPERATIONS.md)")
	redrive := (*durationList)(&o.RedriveEvery)
	fs.Var(redrive, "redrive-schedule", "waits before the automatic redrives of a transient dead letter, e.g. 1m,5m,30m,2h (default 1m,5m,30m,2h)")
	fs.IntVar(&o.RedriveLimit, "redrive-limit", 0, "automatic redrives of a transient dead letter before it is parked as permanent (0 = one per --redrive-schedule entry; beyond the schedule each waits its last entry)")

	fs.IntVar(&o.QuotaPerMinute, "quota", 1000, "DPS operations per minute for the whole fleet (-1 = unlimited)")
	fs.DurationVar(&o.LeaseTTL, "lease-ttl", 8500*time.Millisecond, "partition lease TTL: bound on takeover after a worker dies (at least twice --dps-try-timeout plus 2s)")
	fs.StringVar(&o.HTTPAddr, "http-addr", ":8080", "address of /healthz, /readyz, /metrics (empty = off)")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "bound of the graceful stop")

	return func(getenv func(string) string) error {
		if err := applyEnv(fs, getenv); err != nil {
			return err
		}
		if err := conn.resolve(getenv); err != nil {
			return err
		}
		conn.apply(o)
		var err error
		if o.DPSConnectionString, err = secretFrom(getenv, envPrefix+"DPS_CONNECTION_STRING", *dpsConnFile); err != nil {
			return fmt.Errorf("dps connection string: %w", err)
		}
		if o.RedriveLimit < 0 {
			return fmt.Errorf("--redrive-limit: %d is negative", o.RedriveLimit)
		}
		if err := checkDLQStreamFlags(o); err != nil {
			return err
		}
		if *holdContinue {
			// Coalescing relies on a failed event holding its key (internal/batcher,
			// "Coalescing"): with later events continuing, create + update folded into one
			// create would drop the update when the create fails.
			if coalesceGiven(fs) && o.Batcher.Coalesce {
				return errors.New("--hold-continue and --coalesce cannot be combined: coalescing needs a failed event to hold its key")
			}
			o.HoldPolicy = consumer.HoldContinue
			o.Batcher.Coalesce = false
		}
		return nil
	}
}
