package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/integration/harness"
	"github.com/dpsync/dpsync/integration/workload"
)

const (
	eventsStream = "DPS_EVENTS"
	dlqStream    = "DPS_DLQ"
)

// full reports whether DPSYNC_FULL=1 asks for the full volumes.
func full() bool { return os.Getenv("DPSYNC_FULL") == "1" }

// pick returns reduced or full by DPSYNC_FULL.
func pick[T any](reduced, fullValue T) T {
	if full() {
		return fullValue
	}
	return reduced
}

// env is one scenario's world: a 3-node cluster, the emulator, optional proxies, workers,
// and a seeded random source for every choice the scenario makes.
type env struct {
	t       *testing.T
	ctx     context.Context
	seed    uint64
	rng     *rand.Rand
	rngMu   sync.Mutex
	cluster harness.Cluster
	emu     *harness.Emulator
	js      jetstream.JetStream

	// Workers reach NATS and DPS through these (the proxies' addresses when proxied).
	natsURLs    []string
	dps         harness.DPSTarget
	natsProxies []*harness.Proxy
	dpsProxy    *harness.Proxy

	mu      sync.Mutex
	workers []harness.Worker
	started int
	logs    []string
}

type envOptions struct {
	// proxied puts toxiproxy between the workers and NATS / DPS.
	proxied bool
}

// newEnv starts the world or skips the test while a piece of the system is missing.
func newEnv(t *testing.T, opts envOptions) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("fault scenario: starts a nats-server cluster and worker processes")
	}
	needWorker(t)
	seed := rand.Uint64()
	if s := os.Getenv("DPSYNC_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("DPSYNC_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (rerun with DPSYNC_SEED=%d)", seed, seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("seed %d: rerun with DPSYNC_SEED=%d go test -run '%s' ./integration/", seed, seed, t.Name())
		}
	})
	ctx := testCtx(t)
	e := &env{t: t, ctx: ctx, seed: seed, rng: rand.New(rand.NewPCG(seed, 1))}

	emu, err := harness.StartEmulator(ctx, t, harness.EmulatorOptions{Seed: seed})
	if errors.Is(err, harness.ErrMissing) {
		t.Skipf("emulator not available yet: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	e.emu = emu
	if e.cluster, err = backend.StartCluster(ctx, t, harness.ClusterSpec{}); err != nil {
		t.Fatal(err)
	}
	e.natsURLs, e.dps = e.cluster.URLs(), emu.Target()
	if opts.proxied {
		network := harness.NewNetwork(t)
		e.natsURLs = nil
		for i, u := range e.cluster.URLs() {
			p, err := network.Proxy(fmt.Sprintf("nats-n%d", i), u[len("nats://"):])
			if err != nil {
				t.Fatal(err)
			}
			e.natsProxies = append(e.natsProxies, p)
			e.natsURLs = append(e.natsURLs, "nats://"+p.Addr())
		}
		if e.dpsProxy, err = network.Proxy("dps", emu.Host()); err != nil {
			t.Fatal(err)
		}
		e.dps = emu.TargetVia(e.dpsProxy.Addr())
	}
	// The harness's own connection goes straight to the nodes and notices a frozen one fast.
	nc, err := nats.Connect(joinURLs(e.cluster.URLs()), nats.Name("dpsync-harness-publisher"),
		nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond),
		nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if e.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.scanSecrets)
	return e
}

func joinURLs(urls []string) string {
	s := ""
	for i, u := range urls {
		if i > 0 {
			s += ","
		}
		s += u
	}
	return s
}

// intn is the scenario's seeded random choice.
func (e *env) intn(n int) int {
	e.rngMu.Lock()
	defer e.rngMu.Unlock()
	return e.rng.IntN(n)
}

// mustStartWorker is startWorker for the test goroutine.
func (e *env) mustStartWorker(id string) harness.Worker {
	e.t.Helper()
	w, err := e.startWorker(id)
	if err != nil {
		e.t.Fatal(err)
	}
	return w
}

// startWorker starts a worker with the given id (a fresh one if "") and waits until ready.
// Safe to call from chaos goroutines.
func (e *env) startWorker(id string) (harness.Worker, error) {
	e.mu.Lock()
	if id == "" {
		id = fmt.Sprintf("w%d", e.started)
	}
	e.started++
	e.mu.Unlock()
	w, err := backend.StartWorker(e.ctx, e.t, harness.WorkerSpec{ID: id, NATSURLs: e.natsURLs, DPS: e.dps})
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.workers = append(e.workers, w)
	e.logs = append(e.logs, w.LogFile())
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
	defer cancel()
	if err := w.WaitReady(ctx); err != nil {
		return nil, err
	}
	return w, nil
}

// liveWorkers returns the workers whose process runs.
func (e *env) liveWorkers() []harness.Worker {
	e.mu.Lock()
	defer e.mu.Unlock()
	var live []harness.Worker
	for _, w := range e.workers {
		if w.Running() {
			live = append(live, w)
		}
	}
	return live
}

// sleep waits d or until the test's context ends. It paces fault injection against
// external processes; no result depends on it.
func (e *env) sleep(d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-e.ctx.Done():
		return false
	}
}

// runSpec is one scenario run.
type runSpec struct {
	workload workload.Config
	publish  workload.PublishOptions
	// chaos injects faults while events are published; it must undo its faults before it
	// returns (restart nodes, resume processes, clear toxics and emulator faults).
	chaos func(e *env)
	// converge bounds the wait for the final state after publishing and chaos ended.
	converge time.Duration
}

// run publishes the workload while chaos runs, waits until the workers drained the stream
// and the checker agrees, prints the table, and stops the workers gracefully.
func (e *env) run(spec runSpec) *workload.Report {
	t := e.t
	t.Helper()
	spec.workload.Seed = e.seed
	events := workload.Generate(spec.workload)
	ledger := workload.NewLedger()
	t.Logf("publishing %d events over %d ids (%d poisoned ids)", len(events), spec.workload.IDs, spec.workload.PoisonIDs)
	start := time.Now()

	var wg sync.WaitGroup
	var pubErr error
	wg.Go(func() {
		spec.publish.OnProgress = func(n int) {
			if n%10000 == 0 {
				t.Logf("%d events confirmed after %v", n, time.Since(start).Round(time.Second))
			}
		}
		pubErr = workload.Publish(e.ctx, e.js, events, ledger, spec.publish)
	})
	if spec.chaos != nil {
		wg.Go(func() { spec.chaos(e) })
	}
	wg.Wait()
	if pubErr != nil {
		t.Fatalf("publish: %v (ledger holds %d confirmed events)", pubErr, ledger.Len())
	}
	t.Logf("published %d events in %v; waiting for the workers to finish", ledger.Len(), time.Since(start).Round(time.Millisecond))

	report := e.converge(ledger, spec.converge)
	t.Logf("after %v:\n%s", time.Since(start).Round(time.Second), report)
	if !report.OK() {
		t.Errorf("the run broke a promise (lost must be 0 and the model equal); see the table above")
		e.logConsumers()
		return report
	}
	for _, w := range e.liveWorkers() {
		if err := w.Term(30 * time.Second); err != nil {
			t.Errorf("graceful stop: %v", err)
		}
	}
	return report
}

// converge polls until every consumer of the events stream has nothing pending or
// unacknowledged and the checker agrees, or until the bound.
func (e *env) converge(ledger *workload.Ledger, bound time.Duration) *workload.Report {
	deadline := time.Now().Add(bound)
	var report *workload.Report
	for {
		drained, derr := e.drained()
		report = e.check(ledger)
		if drained && report.OK() {
			return report
		}
		if time.Now().After(deadline) || e.ctx.Err() != nil {
			if derr != nil {
				e.t.Logf("consumers: %v", derr)
			} else if !drained {
				e.t.Logf("consumers still hold pending or unacknowledged events after %v", bound)
			}
			return report
		}
		e.sleep(time.Second)
	}
}

// check reads DPS and the dead-letter stream and runs the checker.
func (e *env) check(ledger *workload.Ledger) *workload.Report {
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	enrollments, err := e.emu.Client.QueryEnrollments(ctx)
	if err != nil {
		return &workload.Report{Problems: []string{"read DPS: " + err.Error()}}
	}
	letters, err := workload.ReadDeadLetters(ctx, e.js, dlqStream)
	if err != nil {
		return &workload.Report{Problems: []string{"read dead letters: " + err.Error()}}
	}
	return workload.Check(ledger, workload.StateOf(enrollments), letters, workload.Hold)
}

// drained reports whether every consumer of the events stream is caught up and acked.
func (e *env) drained() (bool, error) {
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, eventsStream)
	if err != nil {
		return false, err
	}
	lister := s.ListConsumers(ctx)
	n := 0
	for ci := range lister.Info() {
		n++
		if ci.NumPending > 0 || ci.NumAckPending > 0 {
			return false, nil
		}
	}
	if err := lister.Err(); err != nil {
		return false, err
	}
	return n > 0, nil
}

func (e *env) logConsumers() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, eventsStream)
	if err != nil {
		e.t.Logf("stream %s: %v", eventsStream, err)
		return
	}
	lister := s.ListConsumers(ctx)
	for ci := range lister.Info() {
		e.t.Logf("consumer %s: pending %d, ack pending %d, redelivered %d", ci.Name, ci.NumPending, ci.NumAckPending, ci.NumRedelivered)
	}
}

// scanSecrets fails the test if a worker or node log holds the DPS key or a signature.
func (e *env) scanSecrets() {
	e.mu.Lock()
	files := append(append([]string(nil), e.logs...), e.cluster.LogFiles()...)
	e.mu.Unlock()
	found, err := harness.ScanSecrets(files, harness.KeyOf(e.emu.ConnectionString), e.emu.ConnectionString)
	if err != nil {
		e.t.Errorf("secret scan: %v", err)
	}
	for _, f := range found {
		e.t.Errorf("secret in a log: %s", f)
	}
}
