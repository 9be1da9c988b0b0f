// Package cli is the standalone DPS emulator command ("worker emulator"): flags to
// emulator.Options, serve until the context ends, print what a client needs to connect.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dpsync/dpsync/internal/emulator"
)

// listFlag collects repeated values of a flag.
type listFlag []string

func (p *listFlag) String() string     { return strings.Join(*p, ",") }
func (p *listFlag) Set(v string) error { *p = append(*p, v); return nil }

// errorRatesFlag collects repeated --fault-error-rate values: OP=RATE, or RATE alone for
// every operation ("*").
type errorRatesFlag map[string]float64

func (e errorRatesFlag) String() string {
	parts := make([]string, 0, len(e))
	for op, r := range e {
		parts = append(parts, op+"="+strconv.FormatFloat(r, 'g', -1, 64))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func (e errorRatesFlag) Set(v string) error {
	op, rate, ok := strings.Cut(v, "=")
	if !ok {
		op, rate = "*", v
	}
	op = strings.TrimSpace(op)
	r, err := strconv.ParseFloat(strings.TrimSpace(rate), 64)
	if err != nil || r < 0 || r > 1 {
		return fmt.Errorf("rate %q is not a number in [0, 1]", rate)
	}
	if op == "" {
		return errors.New("empty operation name")
	}
	// The emulator checks the operation name (emulator.Faults.Validate).
	e[op] = r
	return nil
}

// Main runs the emulator command with args (without the program and subcommand names)
// until ctx ends, and returns the process exit code: 0 after a clean stop, 2 for bad flags,
// 1 for other failures. It prints the service connection string once on start: it holds
// the policy key, which is the intended exception to "never print secrets" for a local
// emulator whose whole point is to be connected to.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("emulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		addr        = fs.String("addr", "127.0.0.1:8443", "listen address")
		plain       = fs.Bool("http", false, "serve plain HTTP instead of HTTPS")
		certOut     = fs.String("cert-out", "", "write the self-signed certificate (PEM) here (default: in --data-dir or a temporary directory)")
		keyOut      = fs.String("key-out", "", "write the certificate's private key (PEM) here")
		dataDir     = fs.String("data-dir", "", "persist state in this directory (default: memory only)")
		quotaOps    = fs.Int("quota-ops", 1000, "service operations per minute (0 = off)")
		quotaRegs   = fs.Int("quota-registrations", 1000, "device registrations per minute (0 = off)")
		quotaPolls  = fs.Int("quota-polls", 5, "operation polls per device per 10 s (0 = off)")
		idScope     = fs.String("id-scope", emulator.DefaultIDScope, "ID scope of the runtime API")
		hubs        = fs.String("hubs", strings.Join(emulator.DefaultLinkedHubs(), ","), "linked IoT hubs, comma-separated")
		hostName    = fs.String("host-name", "", "host:port service SAS tokens must name in sr, and the HostName of the connection string (default: the listen host:port, with its loopback aliases also accepted)")
		seed        = fs.Uint64("seed", 1, "seed of fault decisions")
		retryAfter  = fs.Duration("retry-after", emulator.DefaultRuntimeRetryAfter, "Retry-After of the runtime API")
		assignDelay = fs.Duration("assignment-delay", 0, "how long registrations stay assigning")
		adminToken  = fs.String("admin-token", os.Getenv("DPS_EMULATOR_ADMIN_TOKEN"), "bearer token required on /admin/ (default $DPS_EMULATOR_ADMIN_TOKEN; empty = none)")
		bearer      = fs.String("bearer-tokens", "", "comma-separated bearer tokens accepted on the service API (Entra tokens cannot be validated)")
		errStatus   = fs.Int("fault-error-status", 503, "status of injected errors (500-599)")
		errAfter    = fs.Float64("fault-error-after-apply-rate", 0, "probability that a write is applied and then answered 5xx")
		dropRate    = fs.Float64("fault-drop-rate", 0, "probability of a dropped connection")
		dropAfter   = fs.Float64("fault-drop-after-apply-rate", 0, "probability that a write is applied and its connection dropped")
		latency     = fs.Duration("fault-latency", 0, "latency added to every call")
		jitter      = fs.Duration("fault-jitter", 0, "random extra latency, up to this much")
		bulkReject  = fs.Float64("fault-bulk-reject-rate", 0, "probability that a bulk call is rejected whole with 400")
		throttleFor = fs.Duration("fault-throttle-for", 0, "answer every call 429 for this long after start")
		bulkNext    = fs.Int("fault-bulk-reject-next", 0, "reject the next N bulk calls whole with 400")
		verbose     = fs.Bool("v", false, "log debug messages")
		connOut     = fs.String("connection-string-out", "", "also write the service connection string to this file (mode 0600), for workers started next to the emulator")
		policies    listFlag
		rejectIDs   listFlag
		errRates    = errorRatesFlag{}
	)
	fs.Var(&policies, "policy", "shared access policy NAME (random key), NAME=@FILE (key read from a file) or NAME=env:VAR (key read from an environment variable); repeatable; default one random provisioningserviceowner")
	fs.Var(errRates, "fault-error-rate", "probability of an injected 5xx before applying: OP=RATE for one operation (e.g. bulkEnrollments=0.05; names as in /admin/counters) or RATE for every operation; repeatable")
	fs.Var(&rejectIDs, "fault-bulk-reject-id", "reject whole with 400 every bulk call holding this id (a poison item); repeatable or comma-separated")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "emulator: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	pols, err := parsePolicies(policies)
	if err != nil {
		fmt.Fprintf(stderr, "emulator: %v\n", err)
		return 2
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	opts := emulator.Options{
		ServiceHostName:   *hostName,
		IDScope:           *idScope,
		Policies:          pols,
		LinkedHubs:        splitList(*hubs),
		Quotas:            &emulator.Quotas{ServiceOpsPerMinute: *quotaOps, RegistrationsPerMinute: *quotaRegs, PollsPer10s: *quotaPolls},
		DataDir:           *dataDir,
		Seed:              *seed,
		RuntimeRetryAfter: *retryAfter,
		AssignmentDelay:   *assignDelay,
		AdminToken:        *adminToken,
		BearerTokens:      splitList(*bearer),
		Logger:            logger,
		Faults: emulator.Faults{
			ErrorStatus:         *errStatus,
			ErrorAfterApplyRate: *errAfter,
			DropRate:            *dropRate,
			DropAfterApplyRate:  *dropAfter,
			Latency:             emulator.Duration(*latency),
			Jitter:              emulator.Duration(*jitter),
			BulkRejectRate:      *bulkReject,
			ThrottleFor:         emulator.Duration(*throttleFor),
		},
	}
	if *retryAfter == 0 {
		opts.RuntimeRetryAfter = -1
	}
	if len(errRates) > 0 {
		opts.Faults.ErrorRates = errRates
	}
	opts.Faults.BulkRejectNext = *bulkNext
	for _, v := range rejectIDs {
		opts.Faults.BulkRejectIDs = append(opts.Faults.BulkRejectIDs, splitList(v)...)
	}
	if err := opts.Faults.Validate(); err != nil {
		fmt.Fprintf(stderr, "emulator: fault flags: %v\n", err)
		return 2
	}
	s, err := emulator.Serve(ctx, opts, emulator.ServeOptions{Addr: *addr, PlainHTTP: *plain, CertFile: *certOut, KeyFile: *keyOut})
	if err != nil {
		fmt.Fprintf(stderr, "emulator: %v\n", err)
		return 1
	}
	if *connOut != "" {
		if err := os.WriteFile(*connOut, []byte(s.ConnectionString()+"\n"), 0o600); err != nil {
			s.Close()
			fmt.Fprintf(stderr, "emulator: %v\n", err)
			return 1
		}
	}
	fmt.Fprintf(stdout, "DPS emulator listening on %s\n", s.URL())
	if !strings.HasSuffix(s.URL(), "://"+s.ListenAddr()) {
		fmt.Fprintf(stdout, "Bound to: %s\n", s.ListenAddr())
	}
	fmt.Fprintf(stdout, "Service connection string (holds the policy key; printed once because this is a local emulator):\n  %s\n", s.ConnectionString())
	names := s.ServiceHostNames()
	fmt.Fprintf(stdout, "Service SAS host name (sr): %s", names[0])
	if len(names) > 1 {
		fmt.Fprintf(stdout, " (also accepted: %s)", strings.Join(names[1:], ", "))
	}
	fmt.Fprintln(stdout)
	fmt.Fprintf(stdout, "ID scope: %s\n", s.IDScope())
	fmt.Fprintf(stdout, "Linked hubs: %s\n", strings.Join(s.LinkedHubs(), ", "))
	if f := s.CAFile(); f != "" {
		fmt.Fprintf(stdout, "Certificate to trust: %s\n", f)
		switch {
		case s.CertificateReused():
			fmt.Fprintln(stdout, "  (the certificate kept in the data directory by an earlier start)")
		case *dataDir != "":
			fmt.Fprintln(stdout, "  (new; kept in the data directory and reused by the next start)")
		}
	}
	if *dataDir != "" {
		fmt.Fprintf(stdout, "Data directory: %s\n", *dataDir)
	}
	fmt.Fprintf(stdout, "Admin: %s/admin/counters, /admin/faults, /admin/state, /admin/reset\n", s.URL())
	<-ctx.Done()
	start := time.Now()
	if err := s.Close(); err != nil {
		fmt.Fprintf(stderr, "emulator: stop: %v\n", err)
		return 1
	}
	logger.Info("emulator stopped", "component", "emulator", "took", time.Since(start))
	return 0
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// parsePolicies reads NAME, NAME=@FILE and NAME=env:VAR. Keys are never taken from the
// command line itself, where other users of the machine could read them.
func parsePolicies(vals []string) ([]emulator.Policy, error) {
	var out []emulator.Policy
	for _, v := range vals {
		name, src, hasKey := strings.Cut(v, "=")
		if name == "" {
			return nil, fmt.Errorf("--policy %q: empty name", v)
		}
		if !hasKey {
			// A random key: let emulator.New make one by giving it a fresh one here.
			k, err := randomKey()
			if err != nil {
				return nil, err
			}
			out = append(out, emulator.Policy{Name: name, Key: k})
			continue
		}
		var key string
		switch {
		case strings.HasPrefix(src, "@"):
			b, err := os.ReadFile(src[1:])
			if err != nil {
				return nil, fmt.Errorf("--policy %s: read key file: %w", name, err)
			}
			key = strings.TrimSpace(string(b))
		case strings.HasPrefix(src, "env:"):
			key = strings.TrimSpace(os.Getenv(src[4:]))
			if key == "" {
				return nil, fmt.Errorf("--policy %s: environment variable %s is empty", name, src[4:])
			}
		default:
			return nil, fmt.Errorf("--policy %s: give the key as @FILE or env:VAR, not on the command line", name)
		}
		out = append(out, emulator.Policy{Name: name, Key: key})
	}
	return out, nil
}
