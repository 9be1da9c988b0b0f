package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/app"
	"github.com/dpsync/dpsync/internal/consumer"
	"github.com/dpsync/dpsync/internal/dlq"
	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/embedded"
	"github.com/dpsync/dpsync/internal/emulator"
)

// partitions of the events stream in every scenario (the worker's default).
const partitions = 16

// env is what one scenario runs against: a fresh embedded JetStream server and, unless
// the scenario needs no DPS, a fresh emulator over HTTPS seeded with the workload's
// existing devices.
type env struct {
	logf   func(format string, args ...any)
	dir    string
	nats   *embedded.NATS
	nc     *nats.Conn
	js     jetstream.JetStream
	stream consumer.StreamConfig

	emu    *emulator.Server
	client *dps.Client
	hc     *http.Client      // client's transport
	etags  map[string]string // seeded id → etag
}

// newEnv starts NATS, creates the events stream and, with seedIDs != nil, starts the
// emulator and seeds it. quota > 0 runs the emulator at that many service operations per
// minute; the seeding then happens on an unthrottled instance that persists its state to
// a data directory, which the throttled instance loads (so seeding spends no quota).
func newEnv(ctx context.Context, cfg config, seedIDs []string, quota int) (e *env, err error) {
	dir, err := os.MkdirTemp(cfg.TmpDir, "scenario-")
	if err != nil {
		return nil, err
	}
	e = &env{logf: cfg.logf, dir: dir, stream: consumer.StreamConfig{Partitions: partitions}}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	e.nats, err = embedded.StartNATS(embedded.Options{StoreDir: filepath.Join(dir, "nats"), Port: 0})
	if err != nil {
		return nil, err
	}
	e.nc, err = nats.Connect(e.nats.ClientURL(), nats.Name("dpsync-bench"))
	if err != nil {
		return nil, fmt.Errorf("connect nats: %w", err)
	}
	e.js, err = jetstream.New(e.nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		return nil, err
	}
	if _, err := consumer.EnsureStream(ctx, e.js, e.stream); err != nil {
		return nil, fmt.Errorf("create events stream: %w", err)
	}
	if seedIDs == nil {
		return e, nil
	}
	emuDir := ""
	if quota > 0 {
		emuDir = filepath.Join(dir, "emulator")
	}
	if err := e.startEmulator(ctx, emuDir, &emulator.Quotas{}); err != nil {
		return nil, err
	}
	if e.etags, err = seed(ctx, e.client, seedIDs); err != nil {
		return nil, err
	}
	if quota > 0 {
		if err := e.closeEmulator(); err != nil {
			return nil, fmt.Errorf("close seeding emulator: %w", err)
		}
		e.emu = nil
		if err := e.startEmulator(ctx, emuDir, &emulator.Quotas{ServiceOpsPerMinute: quota}); err != nil {
			return nil, err
		}
	}
	return e, nil
}

func (e *env) startEmulator(ctx context.Context, dataDir string, q *emulator.Quotas) error {
	emu, err := emulator.Serve(ctx, emulator.Options{Quotas: q, DataDir: dataDir},
		emulator.ServeOptions{Addr: "127.0.0.1:0", CertFile: filepath.Join(e.dir, fmt.Sprintf("emu-%d.pem", time.Now().UnixNano()))})
	if err != nil {
		return fmt.Errorf("start emulator: %w", err)
	}
	e.emu = emu
	e.client, e.hc, err = newDPSClient(emu)
	return err
}

// closeEmulator closes the bench's own connections first: the server's graceful close
// waits (up to 5 s) for open connections.
func (e *env) closeEmulator() error {
	if e.hc != nil {
		e.hc.CloseIdleConnections()
	}
	t := time.Now()
	err := e.emu.Close()
	if d := time.Since(t); d > time.Second {
		e.logf("emulator close took %v", d.Round(time.Millisecond))
	}
	return err
}

// newDPSClient is a DPS client on the emulator with the worker's transport (64 idle
// connections per host) and azcore's retries of 408/429/5xx.
func newDPSClient(emu *emulator.Server) (*dps.Client, *http.Client, error) {
	hc, err := app.HTTPClient(emu.CAFile())
	if err != nil {
		return nil, nil, err
	}
	c, err := dps.NewClientFromConnectionString(emu.ConnectionString(), &dps.ClientOptions{ClientOptions: azcore.ClientOptions{
		Transport: hc,
		Retry:     policy.RetryOptions{MaxRetries: 5, RetryDelay: 200 * time.Millisecond, MaxRetryDelay: 5 * time.Second, TryTimeout: 10 * time.Second},
	}})
	return c, hc, err
}

// deadLetters counts the letters in the dead-letter stream by "class code reason" (none
// when the stream does not exist).
func (e *env) deadLetters(ctx context.Context) (int, map[string]int) {
	if _, err := e.js.Stream(ctx, "DPS_DLQ"); err != nil {
		return 0, nil
	}
	store, err := dlq.OpenStore(ctx, e.js, dlq.StoreOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return 0, map[string]int{"unreadable: " + err.Error(): 1}
	}
	ls, err := store.List(ctx, dlq.Filter{})
	if err != nil {
		return 0, map[string]int{"unreadable: " + err.Error(): 1}
	}
	why := map[string]int{}
	for _, l := range ls {
		r := l.Reason
		if len(r) > 120 {
			r = r[:120] + "…"
		}
		why[fmt.Sprintf("%s %d %s", l.Class, l.Code, r)]++
	}
	return len(ls), why
}

func (e *env) close() {
	var errs []error
	if e.emu != nil {
		errs = append(errs, e.closeEmulator())
	}
	if e.nc != nil {
		e.nc.Close()
	}
	if e.nats != nil {
		e.nats.Shutdown()
	}
	errs = append(errs, os.RemoveAll(e.dir))
	_ = errors.Join(errs...)
}

func partitionConsumers(prefix string) []string {
	names := make([]string, partitions)
	for p := range names {
		names[p] = fmt.Sprintf("%s%03d", prefix, p)
	}
	return names
}

// dpsRoundTrip is the median time of one bulk create of 10 on a fresh emulator (quotas
// off) from this process: "one DPS round trip" in the latency target.
func dpsRoundTrip(ctx context.Context, cfg config) (float64, error) {
	emu, err := emulator.Serve(ctx, emulator.Options{Quotas: &emulator.Quotas{}},
		emulator.ServeOptions{Addr: "127.0.0.1:0", CertFile: filepath.Join(cfg.TmpDir, "rtt.pem")})
	if err != nil {
		return 0, err
	}
	defer emu.Close()
	c, hc, err := newDPSClient(emu)
	if err != nil {
		return 0, err
	}
	defer hc.CloseIdleConnections()
	var ds []time.Duration
	for i := range 60 {
		items := make([]dps.IndividualEnrollment, 10)
		for j := range items {
			items[j] = *enrollmentOf(planned{ID: fmt.Sprintf("rtt-%d-%d", i, j), Op: dps.BulkModeCreate}, nil)
		}
		t := time.Now()
		if _, err := c.RunBulkOperation(ctx, dps.BulkModeCreate, items, nil); err != nil {
			return 0, err
		}
		if i >= 10 {
			ds = append(ds, time.Since(t))
		}
	}
	return ms(percentile(ds, 50)), nil
}
