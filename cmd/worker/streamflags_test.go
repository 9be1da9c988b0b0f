package main

import (
	"context"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/app"
)

// --stream-storage, --dlq-max-age and --dlq-duplicate-window (and their DPSYNC_
// variables) reach the options; a value the worker cannot use is refused with an error
// naming the flag or the variable.
func TestStreamStorageAndDeadLetterStreamFlags(t *testing.T) {
	for _, tt := range []struct {
		args   []string
		vars   map[string]string
		memory bool
		maxAge time.Duration
		window time.Duration
		err    string
	}{
		{nil, nil, false, 0, 10 * time.Minute, ""}, // defaults: file, no max age, 10 min
		{[]string{"--stream-storage", "memory"}, nil, true, 0, 10 * time.Minute, ""},
		{[]string{"--stream-storage", "File"}, nil, false, 0, 10 * time.Minute, ""},
		{nil, map[string]string{"DPSYNC_STREAM_STORAGE": "memory"}, true, 0, 10 * time.Minute, ""},
		{[]string{"--stream-storage", "file"}, map[string]string{"DPSYNC_STREAM_STORAGE": "memory"}, false, 0, 10 * time.Minute, ""},
		{[]string{"--dlq-max-age", "720h", "--dlq-duplicate-window", "5m"}, nil, false, 720 * time.Hour, 5 * time.Minute, ""},
		{nil, map[string]string{"DPSYNC_DLQ_MAX_AGE": "48h", "DPSYNC_DLQ_DUPLICATE_WINDOW": "2m"}, false, 48 * time.Hour, 2 * time.Minute, ""},

		{[]string{"--stream-storage", "ssd"}, nil, false, 0, 0, `-stream-storage: "ssd" is not a storage: want file or memory`},
		{[]string{"--stream-storage", ""}, nil, false, 0, 0, "-stream-storage"},
		{nil, map[string]string{"DPSYNC_STREAM_STORAGE": "disk"}, false, 0, 0, `DPSYNC_STREAM_STORAGE: "disk" is not a storage`},
		{[]string{"--dlq-max-age", "-1h"}, nil, false, 0, 0, "--dlq-max-age (DPSYNC_DLQ_MAX_AGE): -1h0m0s is negative"},
		{[]string{"--dlq-max-age", "forever"}, nil, false, 0, 0, "-dlq-max-age"},
		{[]string{"--dlq-duplicate-window", "0s"}, nil, false, 0, 0, "--dlq-duplicate-window (DPSYNC_DLQ_DUPLICATE_WINDOW): 0s is under 100ms"},
		{nil, map[string]string{"DPSYNC_DLQ_DUPLICATE_WINDOW": "50ms"}, false, 0, 0, "DPSYNC_DLQ_DUPLICATE_WINDOW): 50ms is under 100ms"},
		{[]string{"--dlq-max-age", "5m"}, nil, false, 0, 0, "--dlq-duplicate-window (DPSYNC_DLQ_DUPLICATE_WINDOW): 10m0s exceeds --dlq-max-age (DPSYNC_DLQ_MAX_AGE) 5m0s"},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(new(strings.Builder))
		var o app.Options
		finish := workerFlags(fs, &o)
		err := fs.Parse(tt.args)
		if err == nil {
			err = finish(func(k string) string { return tt.vars[k] })
		}
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%v %v: got %v, want an error containing %q", tt.args, tt.vars, err, tt.err)
			}
			continue
		}
		if err != nil || o.Stream.MemoryStorage != tt.memory || o.DLQMaxAge != tt.maxAge || o.DLQDuplicateWindow != tt.window {
			t.Errorf("%v %v: got memory %v, dlq max age %v, window %v, err %v; want %v, %v, %v",
				tt.args, tt.vars, o.Stream.MemoryStorage, o.DLQMaxAge, o.DLQDuplicateWindow, err, tt.memory, tt.maxAge, tt.window)
		}
	}
}

// worker run creates the streams as its flags say; run again with other dead-letter stream
// settings (from the environment, this time) it updates the dead-letter stream in place.
func TestRunCreatesAndUpdatesStreamsAsFlagsSay(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole worker, twice")
	}
	srv := startNATS(t, nil)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js := jetstreamOf(t, nc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dataDir := t.TempDir()
	config := func(name string) jetstream.StreamConfig {
		t.Helper()
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.Config
	}
	// runWorker runs worker run until the dead-letter stream has the duplicate window
	// want, then stops it.
	runWorker := func(vars map[string]string, want time.Duration, args ...string) {
		t.Helper()
		var out, logs syncBuffer
		runCtx, stop := context.WithCancel(ctx)
		defer stop()
		done := make(chan int, 1)
		go func() {
			done <- run(runCtx, append([]string{"run", "--nats-url", srv.ClientURL(), "--data-dir", dataDir, "--http-addr", "",
				"--partitions", "4", "--worker-id", "flags-test"}, args...), strings.NewReader(""), &out, &logs, func(k string) string { return vars[k] })
		}()
		waitFor(t, "dead-letter stream", func() bool {
			s, err := js.Stream(ctx, "DPS_DLQ")
			return err == nil && s.CachedInfo().Config.Duplicates == want
		}, done)
		stop()
		select {
		case code := <-done:
			if code != 0 {
				t.Fatalf("worker run exited %d:\n%.3000s", code, logs.String())
			}
		case <-time.After(time.Minute):
			t.Fatal("worker run did not stop within a minute")
		}
	}

	runWorker(nil, 5*time.Minute, "--stream-storage", "memory", "--dlq-max-age", "720h", "--dlq-duplicate-window", "5m")
	if c := config("DPS_EVENTS"); c.Storage != jetstream.MemoryStorage {
		t.Errorf("events stream storage %v, want memory", c.Storage)
	}
	if c := config("DPS_DLQ"); c.MaxAge != 720*time.Hour || c.Duplicates != 5*time.Minute || c.Storage != jetstream.FileStorage {
		t.Errorf("dead-letter stream: max age %v, window %v, storage %v; want 720h, 5m, file", c.MaxAge, c.Duplicates, c.Storage)
	}

	runWorker(map[string]string{"DPSYNC_DLQ_MAX_AGE": "2160h", "DPSYNC_DLQ_DUPLICATE_WINDOW": "15m"}, 15*time.Minute,
		"--stream-storage", "memory")
	if c := config("DPS_DLQ"); c.MaxAge != 2160*time.Hour || c.Duplicates != 15*time.Minute {
		t.Errorf("dead-letter stream after the restart: max age %v, window %v; want 2160h, 15m", c.MaxAge, c.Duplicates)
	}
}
