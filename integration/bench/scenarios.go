package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/app"
	"github.com/dpsync/dpsync/internal/batcher"
	"github.com/dpsync/dpsync/internal/consumer"
	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/event"
)

// workload is the events every in-process scenario runs: the backlog that is drained for
// throughput, then the paced events that are published at half of that throughput for
// latency.
type workload struct {
	seedIDs []string
	backlog []planned
	paced   []planned
	mix     mix
}

func newWorkload(seed uint64, n, paced int) workload {
	g := newGenerator(seed, max(10, n/3))
	w := workload{seedIDs: g.seededIDs(), backlog: g.take(n), paced: g.take(paced)}
	w.mix = mixOf(append(append([]planned(nil), w.backlog...), w.paced...))
	return w
}

// expectedState is the last write of each id after all of evs (seeded ids start at seq 0;
// absent = deleted).
func expectedState(seedIDs []string, evs ...[]planned) map[string]int {
	want := make(map[string]int, len(seedIDs))
	for _, id := range seedIDs {
		want[id] = 0
	}
	for _, list := range evs {
		for _, e := range list {
			if e.Op == dps.BulkModeDelete {
				delete(want, e.ID)
			} else {
				want[e.ID] = e.Seq
			}
		}
	}
	return want
}

// verify compares DPS's enrollments with the expected state and returns how many ids
// differ (wrong seq, missing, or present though deleted).
func verify(got []dps.IndividualEnrollment, want map[string]int) int {
	bad := 0
	seen := make(map[string]bool, len(got))
	for _, e := range got {
		id := strings.ToLower(e.RegistrationID)
		seen[id] = true
		w, ok := want[id]
		if !ok || seqOf(e) != w {
			bad++
		}
	}
	for id := range want {
		if !seen[id] {
			bad++
		}
	}
	return bad
}

// latencyFromDPS turns DPS's lastUpdatedDateTimeUtc of each enrollment last written by a
// paced event into that event's publish→applied latency.
func latencyFromDPS(got []dps.IndividualEnrollment, sent map[int]time.Time) []time.Duration {
	var out []time.Duration
	for _, e := range got {
		t0, ok := sent[seqOf(e)]
		if !ok || e.LastUpdatedDateTimeUTC == nil {
			continue
		}
		out = append(out, e.LastUpdatedDateTimeUTC.Time.Sub(t0))
	}
	return out
}

// runBare drains the backlog with one pull consumer that acks every message: the broker's
// ceiling on this machine. Latency: JetStream's stored timestamp of each paced message to
// its delivery to the loop.
func runBare(ctx context.Context, cfg config, w workload) (*result, error) {
	e, err := newEnv(ctx, cfg, nil, 0)
	if err != nil {
		return nil, err
	}
	defer e.close()
	backlog, err := encodeAll(w.backlog, nil)
	if err != nil {
		return nil, err
	}
	if err := publishBacklog(ctx, e.js, backlog); err != nil {
		return nil, err
	}
	res := &result{Scenario: "bare", Title: "bare JetStream consume + ack", Events: len(backlog)}
	mem := startMemSampler(0)
	cons, err := e.js.CreateOrUpdateConsumer(ctx, e.stream.WithDefaults().Name, jetstream.ConsumerConfig{
		Durable: "bare", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 10000,
	})
	if err != nil {
		return nil, fmt.Errorf("create consumer: %w", err)
	}
	var (
		count    atomic.Int64
		target   atomic.Int64
		mu       sync.Mutex
		lats     []time.Duration
		measure  atomic.Bool
		finished = make(chan struct{}, 1)
	)
	target.Store(int64(len(backlog)))
	start := time.Now()
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		if measure.Load() {
			if md, err := msg.Metadata(); err == nil {
				d := time.Since(md.Timestamp)
				mu.Lock()
				lats = append(lats, d)
				mu.Unlock()
			}
		}
		_ = msg.Ack()
		if count.Add(1) == target.Load() {
			finished <- struct{}{}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("consume: %w", err)
	}
	defer cc.Stop()
	if err := waitSignal(ctx, finished, 10*time.Minute); err != nil {
		return nil, fmt.Errorf("bare drain: %w", err)
	}
	res.setThroughput(len(backlog), time.Since(start))
	if len(w.paced) > 0 {
		paced, err := encodeAll(w.paced, nil)
		if err != nil {
			return nil, err
		}
		rate := res.EventsPerSec / 2
		paced = paced[:pacedCount(len(paced), rate, cfg.PacedFor)]
		measure.Store(true)
		target.Store(int64(len(backlog) + len(paced)))
		if _, err := publishPaced(ctx, e.js, paced, rate); err != nil {
			return nil, err
		}
		if err := waitSignal(ctx, finished, 2*time.Minute); err != nil {
			return nil, fmt.Errorf("bare paced: %w", err)
		}
		mu.Lock()
		res.Latency = newLatency(rate, len(paced), lats, "JetStream stored timestamp → delivery to the consume callback")
		mu.Unlock()
	}
	res.setMem(mem, "bench process (consumer + embedded NATS)")
	return res, nil
}

func waitSignal(ctx context.Context, ch <-chan struct{}, timeout time.Duration) error {
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(timeout):
		return fmt.Errorf("not done within %v", timeout)
	}
}

// pacedCount bounds the paced phase to about d at rate.
func pacedCount(n int, rate float64, d time.Duration) int {
	return max(1, min(n, int(rate*d.Seconds())))
}

// dpsScenario is the common run of a scenario that applies the workload to a fresh
// seeded emulator (quotas off): publish the backlog, start the worker, wait until its
// consumers drained it, then publish the paced events at half the measured throughput
// and read each one's apply time from DPS.
type dpsScenario struct {
	name, title string
	consumers   []string
	// start starts the worker and returns once it consumes, with a stop function.
	start func(ctx context.Context, cfg config, e *env) (stop func() error, err error)
	// profile names a CPU profile file covering the worker's run ("" = none).
	profile string
}

func runDPSScenario(ctx context.Context, cfg config, w workload, sc dpsScenario) (*result, error) {
	e, err := newEnv(ctx, cfg, w.seedIDs, 0)
	if err != nil {
		return nil, err
	}
	defer e.close()
	backlog, err := encodeAll(w.backlog, e.etags)
	if err != nil {
		return nil, err
	}
	if err := publishBacklog(ctx, e.js, backlog); err != nil {
		return nil, err
	}
	// Encoded now, so that the CPU profile holds only the worker's run.
	paced, err := encodeAll(w.paced, e.etags)
	if err != nil {
		return nil, err
	}
	if cfg.DPSLatency > 0 {
		if err := e.emu.SetFaults(emulator.Faults{Latency: emulator.Duration(cfg.DPSLatency)}); err != nil {
			return nil, err
		}
	}
	cfg.logf("%s: seeded %d ids, published %d events", sc.name, len(w.seedIDs), len(backlog))
	res := &result{Scenario: sc.name, Title: sc.title, Events: len(backlog)}
	if sc.profile != "" {
		f, err := os.Create(sc.profile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	mem := startMemSampler(0)
	before := e.emu.Counters()
	stop, err := sc.start(ctx, cfg, e)
	if err != nil {
		return nil, err
	}
	defer func() {
		if stop != nil {
			_ = stop()
		}
	}()
	start := time.Now()
	end, err := waitDrained(ctx, e.js, e.stream.WithDefaults().Name, sc.consumers, 30*time.Minute)
	if err != nil {
		return nil, fmt.Errorf("%s drain: %w", sc.name, err)
	}
	res.setThroughput(len(backlog), end.Sub(start))
	res.setCost(costBetween(before, e.emu.Counters()), len(backlog))
	cfg.logf("%s: drained in %v; paced phase at %.0f events/s", sc.name, end.Sub(start).Round(time.Millisecond), res.EventsPerSec/2)

	want := expectedState(w.seedIDs, w.backlog)
	var sent map[int]time.Time
	if len(paced) > 0 {
		rate := res.EventsPerSec / 2
		n := pacedCount(len(paced), rate, cfg.PacedFor)
		paced = paced[:n]
		want = expectedState(w.seedIDs, w.backlog, w.paced[:n])
		if sent, err = publishPaced(ctx, e.js, paced, rate); err != nil {
			return nil, err
		}
		if _, err := waitDrained(ctx, e.js, e.stream.WithDefaults().Name, sc.consumers, 5*time.Minute); err != nil {
			return nil, fmt.Errorf("%s paced: %w", sc.name, err)
		}
		res.Latency = &latency{RatePerSec: rate, Events: n}
	}
	res.setMem(mem, "bench process (worker + embedded NATS + emulator)")
	t := time.Now()
	err = stop()
	stop = nil
	cfg.logf("%s: paced phase applied; worker stopped in %v", sc.name, time.Since(t).Round(time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("%s stop: %w", sc.name, err)
	}
	got, err := listEnrollments(ctx, e.client)
	if err != nil {
		return nil, err
	}
	res.WrongIDs = verify(got, want)
	res.DeadLetters, res.DeadLetterWhy = e.deadLetters(ctx)
	if res.Latency != nil {
		*res.Latency = *newLatency(res.Latency.RatePerSec, res.Latency.Events, latencyFromDPS(got, sent),
			"publish call → DPS lastUpdatedDateTimeUtc of the enrollment (events that are their id's last write)")
	}
	return res, nil
}

// startDpsync runs one dpsync worker in this process (app.Run) with the defaults of
// `worker run` and no pacing (quota -1).
func startDpsync(ctx context.Context, cfg config, e *env) (func() error, error) {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	if cfg.WorkerLog != "" {
		f, err := os.OpenFile(cfg.WorkerLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		defer func() { go func() { <-ctx.Done(); f.Close() }() }()
		logger = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	ready := make(chan app.Info, 1)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	o := app.Options{
		WorkerID:            "bench",
		DataDir:             e.dir,
		NATSURLs:            []string{e.nats.ClientURL()},
		DPSConnectionString: e.emu.ConnectionString(),
		DPSCAFile:           e.emu.CAFile(),
		Stream:              e.stream,
		QuotaPerMinute:      -1,
		// The defaults of `worker run` (cmd/worker/flags.go): coalescing on and room in the
		// batcher for every partition's MaxAckPending (16 × 1,000). The batcher's own default
		// of 10,000 is smaller, and when it fills the engine naks events whose later events
		// of the same key still go through (see BENCHMARKS.md, "Found while measuring").
		Batcher: withMaxPending(batcher.DefaultConfig(), 20000),
		Logger:  logger,
		OnReady: func(i app.Info) { ready <- i },
	}
	go func() { done <- app.Run(ctx, o) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		return nil, fmt.Errorf("dpsync did not start: %w", err)
	case <-time.After(60 * time.Second):
		cancel()
		return nil, errors.New("dpsync not ready within 60s")
	}
	return func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(60 * time.Second):
			return errors.New("dpsync did not stop within 60s")
		}
	}, nil
}

// startNaive runs the naive worker: one goroutine per partition reads its partition in
// order and applies each event with its own DPS call, acking after it:
//   - create: PUT without If-Match (on 409, PUT If-Match "*");
//   - update: PUT If-Match "*" (on 404, PUT without If-Match);
//   - updateIfMatchETag: PUT If-Match <the event's etag>;
//   - delete: DELETE (404 counts as done).
//
// A failed call (after azcore's retries) naks the event for redelivery.
func withMaxPending(c batcher.Config, n int) batcher.Config {
	c.MaxPending = n
	return c
}

func startNaive(ctx context.Context, _ config, e *env) (func() error, error) {
	client, hc, err := newDPSClient(e.emu)
	if err != nil {
		return nil, err
	}
	stream := e.stream.WithDefaults()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var iters []jetstream.MessagesContext
	for p := range partitions {
		cons, err := e.js.CreateOrUpdateConsumer(ctx, stream.Name, jetstream.ConsumerConfig{
			Durable: fmt.Sprintf("naive-p%03d", p), FilterSubject: stream.PartitionSubject(p),
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 1000,
		})
		if err != nil {
			cancel()
			return nil, fmt.Errorf("naive consumer: %w", err)
		}
		it, err := cons.Messages()
		if err != nil {
			cancel()
			return nil, fmt.Errorf("naive messages: %w", err)
		}
		iters = append(iters, it)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				msg, err := it.Next()
				if err != nil {
					return // iterator stopped
				}
				if err := naiveApply(ctx, client, msg.Data()); err != nil {
					_ = msg.Nak()
					continue
				}
				_ = msg.Ack()
			}
		}()
	}
	return func() error {
		cancel()
		for _, it := range iters {
			it.Stop()
		}
		wg.Wait()
		hc.CloseIdleConnections()
		return nil
	}, nil
}

func naiveApply(ctx context.Context, c *dps.Client, body []byte) error {
	ev, err := event.Decode(body)
	if err != nil {
		return nil // a bad event: a naive worker drops it
	}
	en := *ev.Enrollment
	any := azcore.ETagAny
	switch ev.Operation {
	case dps.BulkModeDelete:
		_, err := c.DeleteEnrollment(ctx, en.RegistrationID, nil)
		if dps.IsNotFound(err) {
			return nil
		}
		return err
	case dps.BulkModeCreate:
		_, err := c.CreateOrUpdateEnrollment(ctx, en, nil)
		if dps.IsConflict(err) {
			_, err = c.CreateOrUpdateEnrollment(ctx, en, &dps.CreateOrUpdateEnrollmentOptions{IfMatch: &any})
		}
		return err
	case dps.BulkModeUpdateIfMatchETag:
		etag := azcore.ETag(en.ETag)
		_, err := c.CreateOrUpdateEnrollment(ctx, en, &dps.CreateOrUpdateEnrollmentOptions{IfMatch: &etag})
		if dps.IsPreconditionFailed(err) {
			return nil // stale etag: dropped (dpsync dead-letters it)
		}
		return err
	default:
		en.ETag = ""
		_, err := c.CreateOrUpdateEnrollment(ctx, en, &dps.CreateOrUpdateEnrollmentOptions{IfMatch: &any})
		if dps.IsNotFound(err) {
			_, err = c.CreateOrUpdateEnrollment(ctx, en, nil)
		}
		return err
	}
}

func consumerNames() []string {
	cfg := consumer.StreamConfig{Partitions: partitions}
	names := make([]string, partitions)
	for p := range names {
		names[p] = cfg.ConsumerName(p)
	}
	return names
}
