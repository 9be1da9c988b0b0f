package main

import (
	"bytes"
	"context"
	"flag"
	"strings"
	"testing"

	"github.com/dpsync/dpsync/internal/app"
)

// TestDemo runs the README's first command in-process: embedded JetStream, embedded
// emulator, the bundled events; it must end with enrollments applied and the two bad
// examples dead-lettered, and print no secret.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole worker")
	}
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"demo", "-data-dir", t.TempDir(), "-v"}, strings.NewReader(""), &out, &errb, func(string) string { return "" })
	if code != 0 {
		t.Fatalf("worker demo exited %d\nstdout:\n%s\nstderr:\n%.3000s", code, out.String(), errb.String())
	}
	got := out.String()
	for _, want := range []string{"published 30 example events", "ENROLLMENTS ON DPS (20)", "DEAD LETTERS (2)", "0 events waiting", "invalid"} {
		if !strings.Contains(got, want) {
			t.Errorf("demo output lacks %q:\n%s", want, got)
		}
	}
	for _, secret := range []string{"SharedAccessKey=", "sig=", "SharedAccessSignature "} {
		if strings.Contains(got+errb.String(), secret) {
			t.Errorf("demo output or logs contain %q", secret)
		}
	}
	if !strings.Contains(errb.String(), `"msg":"worker stopped cleanly"`) {
		t.Errorf("the worker did not report a clean stop:\n%.2000s", errb.String())
	}
}

func TestFlagsFromEnvironmentAndSecretsOnlyFromEnvOrFiles(t *testing.T) {
	env := map[string]string{
		"DPSYNC_NATS_URL":              "nats://a:4222,nats://b:4222",
		"DPSYNC_PARTITIONS":            "32",
		"DPSYNC_LINGER":                "40ms",
		"DPSYNC_DPS_CONNECTION_STRING": "HostName=x.azure-devices-provisioning.net;SharedAccessKeyName=p;SharedAccessKey=c2VjcmV0",
		"DPSYNC_HOLD_CONTINUE":         "true",
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var o app.Options
	finish := workerFlags(fs, &o)
	if err := fs.Parse([]string{"--partitions", "8"}); err != nil {
		t.Fatal(err)
	}
	if err := finish(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if len(o.NATSURLs) != 2 || o.NATSURLs[1] != "nats://b:4222" {
		t.Errorf("nats urls from env: %v", o.NATSURLs)
	}
	if o.Stream.Partitions != 8 {
		t.Errorf("partitions: got %d, want 8 (the flag wins over the environment)", o.Stream.Partitions)
	}
	if o.Batcher.Linger.String() != "40ms" || o.Batcher.Coalesce {
		t.Errorf("batcher: %+v, want linger 40ms from env and coalescing off (DPSYNC_HOLD_CONTINUE turns it off)", o.Batcher)
	}
	if o.DPSConnectionString == "" || o.HoldPolicy == 0 {
		t.Errorf("secret or hold policy not read from the environment")
	}
	if fs.Lookup("dps-connection-string") != nil || fs.Lookup("nats-password") != nil {
		t.Error("a secret can be given as a flag value; secrets come only from env or files")
	}
	fs2 := flag.NewFlagSet("t", flag.ContinueOnError)
	finish2 := workerFlags(fs2, &app.Options{})
	_ = fs2.Parse(nil)
	if err := finish2(func(k string) string {
		if k == "DPSYNC_LINGER" {
			return "soon"
		}
		return ""
	}); err == nil || !strings.Contains(err.Error(), "DPSYNC_LINGER") {
		t.Errorf("a bad env value: got %v, want an error naming DPSYNC_LINGER", err)
	}
}

func TestRouteEvent(t *testing.T) {
	tests := []struct {
		line, subject, err string
	}{
		{`{"id":"e1","type":"com.dpsync.enrollment.v1","data":{"operation":"create","enrollment":{"registrationId":"Dev.One:1"}}}`, "dpsync.events.enrollment.dev%2Eone:1", ""},
		{`{"id":"e2","data":{"operation":"delete","enrollmentGroup":{"enrollmentGroupId":"line-7"}}}`, "dpsync.events.group.line-7", ""},
		{`{"id":"e3","data":{"operation":"create"}}`, "", "neither enrollment nor enrollmentGroup"},
		{`{"id":"e4","data":{"enrollment":{}}}`, "", "data.enrollment.registrationId"},
		{`{"data":{"enrollment":{"registrationId":"x"}}}`, "", "id: missing"},
		{`not json`, "", "not a JSON event"},
	}
	for _, tt := range tests {
		rt, err := routeEvent("dpsync.events", []byte(tt.line))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("routeEvent(%s): got %v, want an error containing %q", tt.line, err, tt.err)
			}
			continue
		}
		if err != nil || rt.subject != tt.subject {
			t.Errorf("routeEvent(%s): got %q, %v; want %q", tt.line, rt.subject, err, tt.subject)
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"frobnicate"}, nil, &out, &errb, func(string) string { return "" }); code != 2 || !strings.Contains(errb.String(), `unknown command "frobnicate"`) {
		t.Fatalf("got %d, %q; want 2 and a clear message", code, errb.String())
	}
}
