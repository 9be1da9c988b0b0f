package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/integration/harness"
	"github.com/dpsync/dpsync/integration/workload"
	"github.com/dpsync/dpsync/internal/dps"
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
	opts        envOptions
	// writes holds every enrollment write when opts.tap is set.
	writes harness.WriteLog

	mu      sync.Mutex
	workers []harness.Worker
	started int
	logs    []string
}

type envOptions struct {
	// proxied puts toxiproxy between the workers and NATS / DPS.
	proxied bool
	// tap gives every worker its own emulator tap (harness.Emulator.Tap, named by the worker
	// id): every enrollment write lands in env.writes, attributed to its worker.
	tap bool
	// quota is the emulator's service operations per minute (0: off).
	quota int
	// worker is the template of every worker's spec (ID, NATSURLs and DPS are filled in).
	worker harness.WorkerSpec
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
	e := &env{t: t, ctx: ctx, seed: seed, rng: rand.New(rand.NewPCG(seed, 1)), opts: opts}

	emu, err := harness.StartEmulator(ctx, t, harness.EmulatorOptions{Seed: seed, QuotaPerMinute: opts.quota})
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
	t.Cleanup(e.keepLogs) // runs before the temp dirs are removed (cleanups run last-in first-out)
	return e
}

// keepLogs copies every log of a failed test (of every test with DPSYNC_KEEP_LOGS=1) to a
// directory that outlives it.
func (e *env) keepLogs() {
	if !e.t.Failed() && os.Getenv("DPSYNC_KEEP_LOGS") != "1" {
		return
	}
	dir, err := os.MkdirTemp("", "dpsync-it-"+strings.ReplaceAll(e.t.Name(), "/", "_")+"-")
	if err != nil {
		e.t.Logf("keep logs: %v", err)
		return
	}
	e.mu.Lock()
	files := append(append([]string(nil), e.logs...), e.cluster.LogFiles()...)
	e.mu.Unlock()
	for i, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("%02d-%s", i, filepath.Base(f))), b, 0o600)
	}
	e.t.Logf("logs kept in %s", dir)
}

// explain logs, for each key the checker complained about, the key's confirmed events,
// its dead letters, what DPS holds and the worker log lines that name the key or its events.
func (e *env) explain(ledger *workload.Ledger, report *workload.Report) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(e.ctx), 30*time.Second)
	defer cancel()
	letters, _ := workload.ReadDeadLetters(ctx, e.js, dlqStream)
	state := workload.StateOf(stateEnrollments(e.emu))
	e.mu.Lock()
	files := append([]string(nil), e.logs...)
	e.mu.Unlock()
	for i, key := range report.BadKeys {
		if i == 5 {
			e.t.Logf("(%d more keys not explained)", len(report.BadKeys)-i)
			break
		}
		var b strings.Builder
		fmt.Fprintf(&b, "history of key %s (DPS now: %+v):\n", key, state[key])
		ids := map[string]bool{}
		for _, ev := range ledger.Events(key) {
			ids[ev.ID] = true
			fmt.Fprintf(&b, "  event %s seq %d %s %s\n", ev.ID, ev.Seq, ev.Op, ev.Poison)
		}
		for _, dl := range letters {
			if dl.Key == key || ids[dl.EventID] {
				fmt.Fprintf(&b, "  letter dlq-seq %d event %s class %s origin-seq %s position %s worker %s reason %q\n",
					dl.StreamSeq, dl.EventID, dl.Class, dl.OriginSeq, dl.Position, dl.Worker, dl.Reason)
			}
		}
		for _, f := range files {
			for _, line := range grepFile(f, key, ids, 40) {
				fmt.Fprintf(&b, "  %s: %s\n", filepath.Base(f), line)
			}
		}
		e.t.Log(b.String())
	}
}

// grepFile returns up to n lines of file that contain key or one of ids.
func grepFile(file, key string, ids map[string]bool, n int) []string {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		hit := strings.Contains(strings.ToLower(line), key)
		for id := range ids {
			if hit {
				break
			}
			hit = strings.Contains(line, id)
		}
		if hit {
			out = append(out, truncate(line, 400))
			if len(out) == n {
				break
			}
		}
	}
	return out
}

// stateEnrollments reads the emulator's state directly (not a DPS operation, not subject to
// injected faults).
func stateEnrollments(emu *harness.Emulator) []dps.IndividualEnrollment {
	st := emu.Server.State()
	out := make([]dps.IndividualEnrollment, len(st.Enrollments))
	for i, x := range st.Enrollments {
		out[i] = x.IndividualEnrollment
	}
	return out
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
	spec := e.opts.worker
	spec.ID, spec.NATSURLs, spec.DPS = id, e.natsURLs, e.dps
	if e.opts.tap {
		target, err := e.emu.Tap(e.t, id, &e.writes)
		if err != nil {
			return nil, err
		}
		spec.DPS = target
	}
	w, err := backend.StartWorker(e.ctx, e.t, spec)
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
	t.Logf("published %d events in %v (%d confirmed as duplicates of an attempt whose answer was lost); waiting for the workers to finish",
		ledger.Len(), time.Since(start).Round(time.Millisecond), ledger.DuplicateAcks())

	report := e.converge(ledger, spec.converge)
	t.Logf("after %v:\n%s", time.Since(start).Round(time.Second), report)
	e.logStoredTwice()
	if !report.OK() {
		t.Errorf("the run broke a promise (lost must be 0 and the model equal); see the table above")
		e.logConsumers()
		e.explain(ledger, report)
		return report
	}
	e.stopAll()
	return report
}

// stopAll stops every live worker with SIGTERM, all at once, and requires exit code 0.
func (e *env) stopAll() {
	start := time.Now()
	var wg sync.WaitGroup
	for _, w := range e.liveWorkers() {
		wg.Go(func() {
			if err := w.Term(30 * time.Second); err != nil {
				e.t.Errorf("graceful stop: %v", err)
			}
		})
	}
	wg.Wait()
	e.t.Logf("workers stopped gracefully in %v", time.Since(start).Round(time.Millisecond))
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

// logStoredTwice logs the events the stream holds more than once (one Nats-Msg-Id at several
// sequences: a publish attempt stored after the stream's duplicate check let it through).
// The workers see such a copy as a new event, so a run's model, built from the ledger, would
// not match what they were given; the log tells that apart from a worker's fault.
func (e *env) logStoredTwice() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	twice, err := storedTwice(ctx, e.js)
	if err != nil {
		e.t.Logf("scan %s for duplicates: %v", eventsStream, err)
		return
	}
	if len(twice) > 0 {
		e.t.Logf("the stream holds %d event(s) more than once: %s", len(twice), strings.Join(twice, "; "))
	}
}

// storedTwice returns, sorted, "<msg id> at [seqs]" for every Nats-Msg-Id the events stream
// holds at more than one sequence.
func storedTwice(ctx context.Context, js jetstream.JetStream) ([]string, error) {
	s, err := js.Stream(ctx, eventsStream)
	if err != nil {
		return nil, err
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	seqs := map[string][]uint64{}
	for {
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		var last *jetstream.MsgMetadata
		for m := range batch.Messages() {
			n++
			if meta, err := m.Metadata(); err == nil {
				last = meta
				id := m.Headers().Get(jetstream.MsgIDHeader)
				seqs[id] = append(seqs[id], meta.Sequence.Stream)
			}
		}
		if n == 0 || last != nil && last.NumPending == 0 {
			break
		}
	}
	var twice []string
	for id, ss := range seqs {
		if len(ss) > 1 {
			twice = append(twice, fmt.Sprintf("%s at %v", id, ss))
		}
	}
	slices.Sort(twice)
	return twice, nil
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
