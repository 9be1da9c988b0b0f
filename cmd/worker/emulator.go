package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/dpsync/dpsync/internal/emulator"
)

// cmdEmulator runs the DPS emulator until interrupted.
func cmdEmulator(ctx context.Context, args []string, e env) int {
	fs := flag.NewFlagSet("worker emulator", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	addr := fs.String("addr", "127.0.0.1:8443", "listen address")
	plain := fs.Bool("http", false, "serve plain HTTP instead of HTTPS (clients then need InsecureAllowCredentialWithHTTP)")
	certOut := fs.String("cert-out", "emulator-cert.pem", "where to write the self-signed certificate for clients to trust")
	hostName := fs.String("host-name", "", "host[:port] clients use, which SAS tokens must name (default: the request's Host)")
	dataDir := fs.String("data-dir", "", "keep state in this directory across restarts (default: memory only)")
	idScope := fs.String("id-scope", emulator.DefaultIDScope, "ID scope of the emulated instance")
	hubs := fs.String("hubs", strings.Join(emulator.DefaultLinkedHubs(), ","), "linked IoT hubs, comma-separated")
	policy := fs.String("policy", emulator.DefaultPolicyName, "shared access policy name")
	keyFile := fs.String("policy-key-file", "", "file with the policy's key (or env DPSYNC_EMULATOR_POLICY_KEY); default: a random key")
	connOut := fs.String("connection-string-out", "", "also write the service connection string to this file (mode 0600)")
	quotaOps := fs.Int("quota-ops", 1000, "service operations per minute (0 = off)")
	quotaReg := fs.Int("quota-registrations", 1000, "device registrations per minute (0 = off)")
	quotaPolls := fs.Int("quota-polls", 5, "operation status polls per 10 s per device (0 = off)")
	seed := fs.Uint64("seed", 1, "seed of the fault injector (reproducible faults)")
	faults := fs.String("faults", "", `initial faults as JSON, e.g. {"errorRates":{"*":0.05},"latency":"20ms"} (also PUT /admin/faults)`)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := applyEnv(fs, e.getenv); err != nil {
		fmt.Fprintf(e.stderr, "worker emulator: %v\n", err)
		return 2
	}
	key, err := secretFrom(e.getenv, envPrefix+"EMULATOR_POLICY_KEY", *keyFile)
	if err != nil {
		fmt.Fprintf(e.stderr, "worker emulator: policy key: %v\n", err)
		return 2
	}
	opts := emulator.Options{
		ServiceHostName: *hostName,
		IDScope:         *idScope,
		LinkedHubs:      splitList(*hubs),
		DataDir:         *dataDir,
		Seed:            *seed,
		Quotas:          &emulator.Quotas{ServiceOpsPerMinute: *quotaOps, RegistrationsPerMinute: *quotaReg, PollsPer10s: *quotaPolls},
		Logger:          newLogger(e.stderr, "info"),
	}
	if key != "" {
		opts.Policies = []emulator.Policy{{Name: *policy, Key: key}}
	}
	if *faults != "" {
		if err := json.Unmarshal([]byte(*faults), &opts.Faults); err != nil {
			fmt.Fprintf(e.stderr, "worker emulator: --faults: %v\n", err)
			return 2
		}
	}
	srv, err := emulator.Serve(ctx, opts, emulator.ServeOptions{Addr: *addr, PlainHTTP: *plain, CertFile: *certOut})
	if err != nil {
		fmt.Fprintf(e.stderr, "worker emulator: %v\n", err)
		return 1
	}
	defer srv.Close()
	if *connOut != "" {
		if err := os.WriteFile(*connOut, []byte(srv.ConnectionString()+"\n"), 0o600); err != nil {
			fmt.Fprintf(e.stderr, "worker emulator: %v\n", err)
			return 1
		}
	}
	// The connection string is printed once, on purpose: this is a local emulator and the
	// key exists only for it. Nothing else of dpsync ever prints a key.
	fmt.Fprintf(e.stdout, "DPS emulator listening on %s\n", srv.URL())
	if !*plain {
		fmt.Fprintf(e.stdout, "  certificate (trust it):  %s\n", srv.CAFile())
	}
	fmt.Fprintf(e.stdout, "  connection string:       %s\n", srv.ConnectionString())
	fmt.Fprintf(e.stdout, "  ID scope:                %s\n", srv.IDScope())
	fmt.Fprintf(e.stdout, "  linked hubs:             %s\n", strings.Join(srv.LinkedHubs(), ", "))
	fmt.Fprintf(e.stdout, "  admin:                   %s/admin/counters, %s/admin/faults\n", srv.URL(), srv.URL())
	<-ctx.Done()
	fmt.Fprintln(e.stdout, "stopping emulator")
	if err := srv.Close(); err != nil {
		fmt.Fprintf(e.stderr, "worker emulator: close: %v\n", err)
		return 1
	}
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
