package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dpsync/dpsync/integration/harness"
)

// workerProc is one `worker run` process. The DPS connection string reaches it through
// the environment only (DPSYNC_DPS_CONNECTION_STRING), never its command line.
type workerProc struct {
	id       string
	httpAddr string
	cmd      *exec.Cmd
	log      string
	done     chan struct{}
}

// buildWorker returns cfg.WorkerBin or builds cmd/worker into dir (harness.Builder).
func buildWorker(ctx context.Context, cfg config) (string, error) {
	if cfg.WorkerBin != "" {
		return cfg.WorkerBin, nil
	}
	return harness.NewBuilder(cfg.TmpDir, false).Worker(ctx)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func startWorkerProc(cfg config, bin string, e *env, id string, quota int) (*workerProc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	w := &workerProc{id: id, httpAddr: fmt.Sprintf("127.0.0.1:%d", port), log: filepath.Join(e.dir, "worker-"+id+".log"), done: make(chan struct{})}
	f, err := os.Create(w.log)
	if err != nil {
		return nil, err
	}
	w.cmd = exec.Command(bin, "run",
		"--worker-id", id,
		"--nats-url", e.nats.ClientURL(),
		"--data-dir", filepath.Join(e.dir, "data-"+id),
		"--partitions", strconv.Itoa(partitions),
		"--quota", strconv.Itoa(quota),
		"--dps-ca", e.emu.CAFile(),
		"--http-addr", w.httpAddr,
		"--log-level", "warn",
		"--shutdown-timeout", cfg.WorkerStop.String(),
	)
	w.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"DPSYNC_DPS_CONNECTION_STRING=" + e.emu.ConnectionString()}
	// Worker settings and Go runtime knobs of the benchmark's environment reach the worker
	// processes (DPSYNC_MAX_ACK_PENDING=…, GOMEMLIMIT=…, GOGC=…), so they can be compared.
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if name != "DPSYNC_DPS_CONNECTION_STRING" && (strings.HasPrefix(name, "DPSYNC_") || name == "GOMEMLIMIT" || name == "GOGC") {
			w.cmd.Env = append(w.cmd.Env, kv)
		}
	}
	w.cmd.Stdout, w.cmd.Stderr = f, f
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := w.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start worker %s: %w", id, err)
	}
	go func() {
		_ = w.cmd.Wait()
		f.Close()
		close(w.done)
	}()
	return w, nil
}

func (w *workerProc) pid() int { return w.cmd.Process.Pid }

func (w *workerProc) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-w.done:
			return fmt.Errorf("worker %s exited before ready; log %s:\n%s", w.id, w.log, tail(w.log, 20))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		resp, err := http.Get("http://" + w.httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("worker %s not ready within %v; log %s:\n%s", w.id, timeout, w.log, tail(w.log, 20))
}

// stop sends SIGTERM and waits up to 60 s (then SIGKILL).
func (w *workerProc) stop() error {
	select {
	case <-w.done:
		return nil
	default:
	}
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
		if code := w.cmd.ProcessState.ExitCode(); code != 0 {
			return fmt.Errorf("worker %s exited with %d; log %s", w.id, code, w.log)
		}
		return nil
	case <-time.After(60 * time.Second):
		_ = w.cmd.Process.Kill()
		<-w.done
		return fmt.Errorf("worker %s did not stop within 60s (killed)", w.id)
	}
}

// applied reads dpsync_events_applied_total from the worker's /metrics.
func (w *workerProc) applied() (float64, error) {
	resp, err := http.Get("http://" + w.httpAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sum, found := 0.0, false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "dpsync_events_applied_total") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
			found = true
		}
	}
	if !found {
		return 0, nil // nothing applied yet: the counter is not exported before its first add
	}
	return sum, sc.Err()
}

// stopAll stops the workers at once (each hands its partitions over) and waits for all.
func stopAll(ws []*workerProc) error {
	errs := make(chan error, len(ws))
	for _, w := range ws {
		go func() { errs <- w.stop() }()
	}
	var all []error
	for range ws {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// runBacklog drains a large backlog with one worker process (quotas off) and records the
// process's peak RSS: the memory bound under a backlog.
func runBacklog(ctx context.Context, cfg config, bin string) (*result, error) {
	g := newGenerator(cfg.Seed, max(10, cfg.Backlog/3))
	ids := g.seededIDs()
	evs := g.take(cfg.Backlog)
	e, err := newEnv(ctx, cfg, ids, 0)
	if err != nil {
		return nil, err
	}
	defer e.close()
	enc, err := encodeAll(evs, e.etags)
	if err != nil {
		return nil, err
	}
	if err := publishBacklog(ctx, e.js, enc); err != nil {
		return nil, err
	}
	cfg.logf("backlog: %d events published", len(enc))
	res := &result{Scenario: "backlog", Title: fmt.Sprintf("dpsync, 1 worker process, %d-event backlog, quotas off", cfg.Backlog), Events: cfg.Backlog, Workers: 1}
	before := e.emu.Counters()
	w, err := startWorkerProc(cfg, bin, e, "b1", -1)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	mem := startMemSampler(w.pid())
	if err := w.waitReady(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	start := time.Now()
	end, err := waitDrained(ctx, e.js, e.stream.WithDefaults().Name, consumerNames(), 60*time.Minute)
	if err != nil {
		return nil, fmt.Errorf("backlog drain: %w", err)
	}
	res.setThroughput(cfg.Backlog, end.Sub(start))
	res.setCost(costBetween(before, e.emu.Counters()), cfg.Backlog)
	res.setMem(mem, "worker process (/proc/<pid>/status VmHWM)")
	if err := w.stop(); err != nil {
		return nil, err
	}
	got, err := listEnrollments(ctx, e.client)
	if err != nil {
		return nil, err
	}
	res.WrongIDs = verify(got, expectedState(ids, evs))
	res.DeadLetters, res.DeadLetterWhy = e.deadLetters(ctx)
	return res, nil
}

// quotaCeiling is the events/s a fleet can apply under a quota when every call is a full
// bulk of 10: 10 × quota / 60.
func quotaCeiling(quota int) float64 { return 10 * float64(quota) / 60 }

// runFleet runs 3 worker processes against the emulator at the real quota with a backlog
// that outlasts the run, and measures a steady window after a warm-up.
func runFleet(ctx context.Context, cfg config, bin string) (*result, error) {
	const workers = 3
	// Enough events that the backlog outlasts the run even if every call were a full bulk.
	n := int(math.Ceil(quotaCeiling(cfg.Quota)*(cfg.FleetFor+cfg.FleetWarmup).Seconds()*1.3)) + 500
	g := newGenerator(cfg.Seed, max(10, n/3))
	ids := g.seededIDs()
	evs := g.take(n)
	e, err := newEnv(ctx, cfg, ids, cfg.Quota)
	if err != nil {
		return nil, err
	}
	defer e.close()
	enc, err := encodeAll(evs, e.etags)
	if err != nil {
		return nil, err
	}
	if err := publishBacklog(ctx, e.js, enc); err != nil {
		return nil, err
	}
	cfg.logf("fleet: %d events published over %d ids (%d seeded)", n, g.pool, len(ids))
	res := &result{Scenario: "fleet", Title: fmt.Sprintf("dpsync, %d worker processes, emulator at %d ops/min", workers, cfg.Quota), Workers: workers}
	var ws []*workerProc
	var mems []*memSampler
	defer func() { _ = stopAll(ws) }()
	for i := range workers {
		w, err := startWorkerProc(cfg, bin, e, fmt.Sprintf("w%d", i+1), cfg.Quota)
		if err != nil {
			return nil, err
		}
		ws = append(ws, w)
		mems = append(mems, startMemSampler(w.pid()))
	}
	for _, w := range ws {
		if err := w.waitReady(ctx, 60*time.Second); err != nil {
			return nil, err
		}
	}
	sumApplied := func() (float64, error) {
		total := 0.0
		for _, w := range ws {
			v, err := w.applied()
			if err != nil {
				return 0, fmt.Errorf("metrics of %s: %w", w.id, err)
			}
			total += v
		}
		return total, nil
	}
	cfg.logf("fleet: %d workers ready; warm-up %v, then a %v window", workers, cfg.FleetWarmup, cfg.FleetFor)
	time.Sleep(cfg.FleetWarmup)
	a0, err := sumApplied()
	if err != nil {
		return nil, err
	}
	c0, t0 := e.emu.Counters(), time.Now()
	time.Sleep(cfg.FleetFor)
	a1, err := sumApplied()
	if err != nil {
		return nil, err
	}
	c1, window := e.emu.Counters(), time.Since(t0)
	cfg.logf("fleet: window over; stopping the workers")
	res.Events = int(a1 - a0)
	res.setThroughput(res.Events, window)
	res.setCost(costBetween(c0, c1), res.Events)
	res.WindowSeconds = window.Seconds()
	ops := c1.ServiceOps - c0.ServiceOps
	res.OpsPerMinute = float64(ops) / window.Minutes()
	res.QuotaUse = res.OpsPerMinute / float64(cfg.Quota)
	if res.DPS.Calls > 0 {
		res.ThrottledShare = float64(res.DPS.Throttled) / float64(res.DPS.Calls)
	}
	res.CeilingEventsPerSec = quotaCeiling(cfg.Quota)
	if res.OpsPerEvent > 0 {
		res.MixCeilingEventsPerSec = float64(cfg.Quota) / 60 / res.OpsPerEvent
	}
	for i := range ws {
		_, rss := mems[i].finish()
		res.WorkerRSSMB = append(res.WorkerRSSMB, mb(rss))
		res.PeakRSSMB = max(res.PeakRSSMB, mb(rss))
	}
	if err := stopAll(ws); err != nil {
		return nil, err
	}
	res.MemScope = "largest worker process (/proc/<pid>/status VmHWM)"
	res.DeadLetters, res.DeadLetterWhy = e.deadLetters(ctx)
	return res, nil
}
