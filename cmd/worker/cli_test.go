package main

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dpsync/dpsync/internal/app"
	"github.com/dpsync/dpsync/internal/consumer"
	"github.com/dpsync/dpsync/internal/dlq"
)

var noEnv = map[string]string{}

func TestTopLevelHelpListsEveryCommand(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-help", "help"} {
		r := runCmd(context.Background(), noEnv, "", arg)
		if r.code != 0 {
			t.Errorf("worker %s: %v", arg, r)
			continue
		}
		for _, cmd := range []string{"run", "demo", "publish", "dlq", "emulator", "register"} {
			found := false
			for _, line := range strings.Split(r.stdout, "\n") {
				if f := strings.Fields(line); len(f) > 1 && f[0] == cmd {
					found = true
				}
			}
			if !found {
				t.Errorf("worker %s: no line for %q:\n%s", arg, cmd, r.stdout)
			}
		}
		if strings.Contains(r.stdout+r.stderr, "-nats-url") {
			t.Errorf("worker %s: shows run's flags instead of the command overview:\n%v", arg, r)
		}
	}
}

func TestCommandHelpExitsZero(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"run", "-h"}, []string{"-nats-url", "-redrive-limit", "-otlp-endpoint"}},
		{[]string{"-nats-url", "x", "-h"}, []string{"usage: worker run"}},
		{[]string{"demo", "--help"}, []string{"-data-dir", "-timeout"}},
		{[]string{"publish", "-h"}, []string{"-nats-url", "-nats-cert", "-subject-prefix"}},
		{[]string{"dlq", "--help"}, []string{"list", "show", "stats", "replay", "purge", "-nats-url", "-nats-cert", "-nats-key", "-nats-creds"}},
		{[]string{"dlq", "-h"}, []string{"replay", "-nats-key"}},
		{[]string{"dlq", "help"}, []string{"purge", "-nats-cert"}},
		{[]string{"dlq", "list", "-h"}, []string{"-class", "-nats-url", "-nats-cert"}},
	} {
		r := runCmd(context.Background(), noEnv, "", tt.args...)
		if r.code != 0 {
			t.Errorf("worker %s: %v", strings.Join(tt.args, " "), r)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(r.stdout+r.stderr, w) {
				t.Errorf("worker %s: lacks %q:\n%v", strings.Join(tt.args, " "), w, r)
			}
		}
	}
	// A bad flag is still a usage error, with the usage on stderr.
	if r := runCmd(context.Background(), noEnv, "", "run", "--no-such-flag"); r.code != 2 || !strings.Contains(r.stderr, "flag provided but not defined") {
		t.Errorf("run --no-such-flag: %v", r)
	}
}

// flagsOf returns the flags of fs whose name starts with prefix, with their usage.
func flagsOf(fs *flag.FlagSet, prefix string) map[string]string {
	out := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		if strings.HasPrefix(f.Name, prefix) {
			out[f.Name] = f.Usage
		}
	})
	return out
}

// run, dlq and publish take the same NATS connection flags, so the operator tools reach
// every NATS the worker can; the password is never a flag.
func TestNATSConnectionFlagsAreShared(t *testing.T) {
	runFS := flag.NewFlagSet("run", flag.ContinueOnError)
	var o app.Options
	finish := workerFlags(runFS, &o)
	dlqFS := flag.NewFlagSet("dlq", flag.ContinueOnError)
	var dlqConn natsFlags
	dlqFlags(dlqFS, &dlqConn)
	pubFS := flag.NewFlagSet("publish", flag.ContinueOnError)
	var pubConn natsFlags
	publishFlags(pubFS, &pubConn)

	want := append([]string(nil), natsFlagNames...)
	sort.Strings(want)
	sets := map[string]map[string]string{"run": flagsOf(runFS, "nats-"), "dlq": flagsOf(dlqFS, "nats-"), "publish": flagsOf(pubFS, "nats-")}
	for name, fl := range sets {
		var got []string
		for n := range fl {
			got = append(got, n)
		}
		sort.Strings(got)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: NATS flags %v, want %v", name, got, want)
		}
		if _, ok := fl["nats-password"]; ok {
			t.Errorf("%s: the NATS password is a flag; it must come from the environment or a file", name)
		}
		for n, usage := range fl {
			if n != "nats-url" && usage != sets["run"][n] {
				t.Errorf("%s --%s: usage %q differs from run's %q", name, n, usage, sets["run"][n])
			}
		}
	}

	// The same command line gives the worker and the tools the same settings.
	dir := t.TempDir()
	passFile := filepath.Join(dir, "pass")
	if err := os.WriteFile(passFile, []byte(testPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--nats-url", "tls://a:4222,tls://b:4222", "--nats-creds", "c.creds", "--nats-nkey", "n.seed",
		"--nats-user", "u", "--nats-password-file", passFile, "--nats-ca", "ca.pem", "--nats-cert", "c.pem", "--nats-key", "k.pem"}
	for _, fs := range []*flag.FlagSet{runFS, dlqFS, pubFS} {
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
	}
	if err := finish(func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*natsFlags{"dlq": &dlqConn, "publish": &pubConn} {
		if err := c.resolve(func(string) string { return "" }); err != nil {
			t.Fatal(err)
		}
		var got app.Options
		c.apply(&got)
		if !reflect.DeepEqual([]any{got.NATSURLs, got.NATSCredsFile, got.NATSNKeyFile, got.NATSUser, got.NATSPassword, got.NATSCAFile, got.NATSCertFile, got.NATSKeyFile},
			[]any{o.NATSURLs, o.NATSCredsFile, o.NATSNKeyFile, o.NATSUser, o.NATSPassword, o.NATSCAFile, o.NATSCertFile, o.NATSKeyFile}) {
			t.Errorf("%s: settings %+v differ from the worker's", name, got)
		}
	}
	if o.NATSPassword != testPassword || len(o.NATSURLs) != 2 || o.NATSCertFile != "c.pem" {
		t.Errorf("worker: %+v", o)
	}
	// The password from the environment wins over the file.
	var c natsFlags
	c.passFile = passFile
	if err := c.resolve(func(k string) string { return map[string]string{"DPSYNC_NATS_PASSWORD": "from-env"}[k] }); err != nil || c.password != "from-env" {
		t.Errorf("password: got %q %v, want from-env", c.password, err)
	}
	c = natsFlags{cert: "c.pem"}
	if err := c.resolve(func(string) string { return "" }); err == nil {
		t.Error("--nats-cert without --nats-key: no error")
	}
}

// worker dlq and worker publish reach a NATS that requires TLS with a client certificate,
// as the worker does (--nats-ca, --nats-cert, --nats-key), with the flags before or after
// the dlq command.
func TestCLIsReachNATSWithClientCertificate(t *testing.T) {
	f := makeTLSFiles(t)
	srv := startNATS(t, withClientTLS(t, f))
	url := "tls://" + srv.Addr().String()
	tlsArgs := []string{"--nats-url", url, "--nats-ca", f.ca, "--nats-cert", f.clientCert, "--nats-key", f.clientKey}
	ctx := context.Background()

	// Without the client certificate the server refuses.
	if r := runCmd(ctx, noEnv, "", "dlq", "--nats-url", url, "--nats-ca", f.ca, "stats"); r.code != 1 {
		t.Fatalf("dlq without a client certificate: %v, want a connect failure", r)
	}
	// Create the streams through the CLI's own connection settings.
	var conn natsFlags
	conn.urls = urlList{url}
	conn.ca, conn.cert, conn.key = f.ca, f.clientCert, f.clientKey
	nc, err := conn.connect("test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js := jetstreamOf(t, nc)
	eventsStream(t, js)
	if _, err := dlq.EnsureStream(ctx, js, dlq.StreamConfig{}); err != nil {
		t.Fatal(err)
	}

	events := filepath.Join(t.TempDir(), "events.jsonl")
	line := `{"specversion":"1.0","id":"e1","source":"t","type":"com.dpsync.enrollment.v1","data":{"operation":"create","enrollment":{"registrationId":"dev-1","attestation":{"type":"symmetricKey"}}}}`
	if err := os.WriteFile(events, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runCmd(ctx, noEnv, "", append(append([]string{"publish"}, tlsArgs...), events)...); r.code != 0 || !strings.Contains(r.stdout, "published 1 events") {
		t.Errorf("publish over TLS with a client certificate: %v", r)
	}
	if r := runCmd(ctx, noEnv, "", append([]string{"dlq"}, append(tlsArgs, "stats")...)...); r.code != 0 || !strings.Contains(r.stdout, "no dead letters") {
		t.Errorf("dlq (flags before the command) over TLS: %v", r)
	}
	if r := runCmd(ctx, noEnv, "", append([]string{"dlq", "list"}, tlsArgs...)...); r.code != 0 || !strings.Contains(r.stdout, "no dead letters") {
		t.Errorf("dlq list (flags after the command) over TLS: %v", r)
	}
	// The environment works too, and a flag after the command overrides it.
	vars := map[string]string{"DPSYNC_NATS_URL": "tls://127.0.0.1:1", "DPSYNC_NATS_CA": f.ca, "DPSYNC_NATS_CERT": f.clientCert, "DPSYNC_NATS_KEY": f.clientKey}
	if r := runCmd(ctx, vars, "", "dlq", "list", "--nats-url", url); r.code != 0 {
		t.Errorf("dlq list with the TLS files from the environment: %v", r)
	}
}

// The password in a NATS URL, or from the environment, never appears in what the
// commands print: results, errors, usage texts, logs.
func TestNATSPasswordNeverPrinted(t *testing.T) {
	srv := startNATS(t, withPassword)
	js := connectAdmin(t, srv)
	eventsStream(t, js)
	ctx := context.Background()
	if _, err := dlq.EnsureStream(ctx, js, dlq.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	good := passwordURL(srv, testPassword)
	wrong := passwordURL(srv, "wrong-"+testPassword)
	closed := "nats://" + testUser + ":" + testPassword + "@127.0.0.1:1"
	malformed := "nats://" + testUser + ":" + testPassword + "/x@127.0.0.1:bad"
	tokenURL := "nats://" + testPassword + "@127.0.0.1:1"
	events := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(events, []byte(`{"specversion":"1.0","id":"e1","source":"t","type":"com.dpsync.enrollment.v1","data":{"operation":"create","enrollment":{"registrationId":"dev-1","attestation":{"type":"symmetricKey"}}}}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	passEnv := map[string]string{"DPSYNC_NATS_PASSWORD": testPassword}
	for _, tt := range []struct {
		name string
		vars map[string]string
		args []string
		code int
	}{
		{"publish", noEnv, []string{"publish", "--nats-url", good, events}, 0},
		{"publish, wrong password", noEnv, []string{"publish", "--nats-url", wrong, events}, 1},
		{"publish, server down", noEnv, []string{"publish", "--nats-url", closed, events}, 1},
		{"publish, malformed URL", noEnv, []string{"publish", "--nats-url", malformed, events}, 2},
		{"publish, token URL", noEnv, []string{"publish", "--nats-url", tokenURL, events}, 1},
		{"publish, password from env", passEnv, []string{"publish", "--nats-url", srv.ClientURL(), "--nats-user", testUser, events}, 0},
		{"publish, wrong user, password from env", passEnv, []string{"publish", "--nats-url", srv.ClientURL(), "--nats-user", "nobody", events}, 1},
		{"publish -h, URL from env", map[string]string{"DPSYNC_NATS_URL": good}, []string{"publish", "-h"}, 0},
		{"dlq list", noEnv, []string{"dlq", "--nats-url", good, "list"}, 0},
		{"dlq list, URL after the command", noEnv, []string{"dlq", "list", "--nats-url", good}, 0},
		{"dlq stats, wrong password", noEnv, []string{"dlq", "--nats-url", wrong, "stats"}, 1},
		{"dlq stats, server down", noEnv, []string{"dlq", "stats", "--nats-url", closed}, 1},
		{"dlq stats, malformed URL", noEnv, []string{"dlq", "stats", "--nats-url", malformed}, 1},
		{"dlq replay, password from env", passEnv, []string{"dlq", "replay", "--nats-url", srv.ClientURL(), "--nats-user", testUser}, 0},
		{"dlq list -h, URL from env", map[string]string{"DPSYNC_NATS_URL": good}, []string{"dlq", "list", "-h"}, 0},
		{"dlq, URL from env, no command", map[string]string{"DPSYNC_NATS_URL": good}, []string{"dlq"}, 2},
		{"run, bad flag value", map[string]string{"DPSYNC_NATS_URL": good}, []string{"run", "--linger", "soon"}, 2},
	} {
		r := runCmd(ctx, tt.vars, "", tt.args...)
		if r.code != tt.code {
			t.Errorf("%s: got %v, want exit %d", tt.name, r, tt.code)
		}
		for _, secret := range []string{testPassword, "s3cret"} {
			if strings.Contains(r.stdout+r.stderr, secret) {
				t.Errorf("%s: the password is printed:\n%v", tt.name, r)
			}
		}
	}
}

// A redrive schedule or limit the worker cannot use fails at the start, naming the flag or
// the environment variable.
func TestBadRedriveSettingsFailAtStart(t *testing.T) {
	for _, tt := range []struct {
		vars map[string]string
		args []string
		want string
	}{
		{noEnv, []string{"--redrive-schedule", "0s"}, "-redrive-schedule"},
		{noEnv, []string{"--redrive-schedule", "1m,-5m"}, "-redrive-schedule"},
		{noEnv, []string{"--redrive-schedule", "soon"}, "-redrive-schedule"},
		{noEnv, []string{"--redrive-schedule", ""}, "-redrive-schedule"},
		{noEnv, []string{"--redrive-schedule", "1m,,5m"}, "-redrive-schedule"},
		{map[string]string{"DPSYNC_REDRIVE_SCHEDULE": "0s"}, nil, "DPSYNC_REDRIVE_SCHEDULE"},
		{noEnv, []string{"--redrive-limit", "-1"}, "--redrive-limit"},
		{noEnv, []string{"--redrive-limit", "many"}, "-redrive-limit"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		r := runCmd(ctx, tt.vars, "", append([]string{"run", "--http-addr", ""}, tt.args...)...)
		cancel()
		if r.code != 2 || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("run %v (env %v): got %v, want exit 2 and an error naming %s", tt.args, tt.vars, r, tt.want)
		}
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var o app.Options
	finish := workerFlags(fs, &o)
	if err := fs.Parse([]string{"--redrive-schedule", "30s, 2m", "--redrive-limit", "6"}); err != nil {
		t.Fatal(err)
	}
	if err := finish(func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(o.RedriveEvery, []time.Duration{30 * time.Second, 2 * time.Minute}) || o.RedriveLimit != 6 {
		t.Errorf("got schedule %v limit %d, want [30s 2m] 6", o.RedriveEvery, o.RedriveLimit)
	}
}

// --hold-continue turns coalescing off (the batcher's rules need a failed event to hold
// its key) and refuses an explicit --coalesce.
func TestHoldContinueTurnsCoalescingOff(t *testing.T) {
	for _, tt := range []struct {
		args     []string
		vars     map[string]string
		coalesce bool
		hold     consumer.HoldPolicy
		err      string
	}{
		{nil, nil, true, consumer.HoldFollow, ""},
		{[]string{"--hold-continue"}, nil, false, consumer.HoldContinue, ""},
		{nil, map[string]string{"DPSYNC_HOLD_CONTINUE": "true"}, false, consumer.HoldContinue, ""},
		{[]string{"--hold-continue", "--coalesce=false"}, nil, false, consumer.HoldContinue, ""},
		{[]string{"--hold-continue", "--coalesce"}, nil, false, 0, "cannot be combined"},
		{[]string{"--hold-continue"}, map[string]string{"DPSYNC_COALESCE": "true"}, false, 0, "cannot be combined"},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		var o app.Options
		finish := workerFlags(fs, &o)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		err := finish(func(k string) string { return tt.vars[k] })
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%v %v: got %v, want an error containing %q", tt.args, tt.vars, err, tt.err)
			}
			continue
		}
		if err != nil || o.Batcher.Coalesce != tt.coalesce || o.HoldPolicy != tt.hold {
			t.Errorf("%v %v: got coalesce %v hold %v err %v, want coalesce %v hold %v", tt.args, tt.vars, o.Batcher.Coalesce, o.HoldPolicy, err, tt.coalesce, tt.hold)
		}
	}
}

func TestDemoFlagsFromEnvironment(t *testing.T) {
	r := runCmd(context.Background(), map[string]string{"DPSYNC_TIMEOUT": "soon"}, "", "demo")
	if r.code != 2 || !strings.Contains(r.stderr, "DPSYNC_TIMEOUT") {
		t.Errorf("demo with DPSYNC_TIMEOUT=soon: %v, want exit 2 naming DPSYNC_TIMEOUT", r)
	}
}

func TestDemoClosingHint(t *testing.T) {
	if got := demoNext(""); !strings.Contains(got, "--data-dir DIR") || !strings.Contains(got, "removed") {
		t.Errorf("hint without --data-dir: %q, want it to say the data is gone and how to keep it", got)
	}
	if got := demoNext("/tmp/d"); !strings.Contains(got, "worker run --data-dir /tmp/d") || !strings.Contains(got, "worker dlq list") {
		t.Errorf("hint with --data-dir: %q, want how to serve the kept data and list it", got)
	}
	for n, want := range map[int]string{0: "0 groups", 1: "1 group", 2: "2 groups"} {
		if got := plural(n, "group"); got != want {
			t.Errorf("plural(%d): got %q, want %q", n, got, want)
		}
	}
}
