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

func (d *durationList) Set(v string) error {
	*d = nil
	for _, part := range strings.Split(v, ",") {
		x, err := time.ParseDuration(strings.TrimSpace(part))
		if err != nil {
			return fmt.Errorf("%q is not a duration list like 1m,5m,30m", v)
		}
		*d = append(*d, x)
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
	urls := (*stringList)(&o.NATSURLs)
	fs.Var(urls, "nats-url", "NATS server URLs, comma-separated (empty: start an embedded JetStream server)")
	fs.StringVar(&o.EmbeddedNATSAddr, "embedded-nats-addr", "127.0.0.1:4222", "client address of the embedded JetStream server (port 0 = any free port)")
	fs.StringVar(&o.NATSCredsFile, "nats-creds", "", "NATS credentials (JWT) file")
	fs.StringVar(&o.NATSNKeyFile, "nats-nkey", "", "NATS NKey seed file")
	fs.StringVar(&o.NATSUser, "nats-user", "", "NATS user (password from DPSYNC_NATS_PASSWORD or --nats-password-file)")
	natsPassFile := fs.String("nats-password-file", "", "file holding the NATS password")
	fs.StringVar(&o.NATSCAFile, "nats-ca", "", "CA file to verify the NATS server")
	fs.StringVar(&o.NATSCertFile, "nats-cert", "", "client certificate for NATS TLS")
	fs.StringVar(&o.NATSKeyFile, "nats-key", "", "client key for NATS TLS")

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
	fs.StringVar(&o.DLQStream, "dlq-stream", "DPS_DLQ", "dead-letter stream name")
	fs.DurationVar(&o.Consumer.AckWait, "ack-wait", 15*time.Second, "consumer AckWait")
	fs.IntVar(&o.Consumer.MaxAckPending, "max-ack-pending", 1000, "unacknowledged events per partition")

	fs.IntVar(&o.Batcher.MaxItems, "batch-size", 10, "items per DPS bulk call (1-10)")
	fs.DurationVar(&o.Batcher.Linger, "linger", 25*time.Millisecond, "how long a partial batch waits for more items")
	fs.IntVar(&o.Batcher.MaxInFlight, "max-in-flight", 4, "DPS calls in flight")
	fs.IntVar(&o.Batcher.MaxPending, "max-pending", 20000, "events waiting in the batcher (bounds memory)")
	fs.BoolVar(&o.Batcher.Coalesce, "coalesce", true, "fold pending update events of one device where the DPS result is the same (see internal/batcher)")
	fs.DurationVar(&o.Retry.Budget, "retry-budget", 2*time.Minute, "how long a transient failure is retried before it is dead-lettered")
	holdContinue := fs.Bool("hold-continue", false, "let later events of a key continue past its dead letter (default: they follow it)")
	redrive := (*durationList)(&o.RedriveEvery)
	fs.Var(redrive, "redrive-schedule", "automatic redrive of transient dead letters, e.g. 1m,5m,30m,2h")

	fs.IntVar(&o.QuotaPerMinute, "quota", 1000, "DPS operations per minute for the whole fleet (-1 = unlimited)")
	fs.DurationVar(&o.LeaseTTL, "lease-ttl", 9*time.Second, "partition lease TTL: bound on takeover after a worker dies")
	fs.StringVar(&o.HTTPAddr, "http-addr", ":8080", "address of /healthz, /readyz, /metrics (empty = off)")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "bound of the graceful stop")

	return func(getenv func(string) string) error {
		if err := applyEnv(fs, getenv); err != nil {
			return err
		}
		var err error
		if o.NATSPassword, err = secretFrom(getenv, envPrefix+"NATS_PASSWORD", *natsPassFile); err != nil {
			return fmt.Errorf("nats password: %w", err)
		}
		if o.DPSConnectionString, err = secretFrom(getenv, envPrefix+"DPS_CONNECTION_STRING", *dpsConnFile); err != nil {
			return fmt.Errorf("dps connection string: %w", err)
		}
		if *holdContinue {
			o.HoldPolicy = consumer.HoldContinue
		}
		return nil
	}
}
