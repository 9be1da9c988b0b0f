package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type processWorker struct {
	id       string
	httpAddr string
	p        *proc
}

// StartWorker starts `worker run` with the spec's flags. The DPS connection string goes in
// the child's environment only.
func (b *ProcessBackend) StartWorker(ctx context.Context, t TB, spec WorkerSpec) (Worker, error) {
	t.Helper()
	if spec.ID == "" || len(spec.NATSURLs) == 0 || spec.DPS.ConnectionString == "" {
		return nil, errors.New("start worker: ID, NATSURLs and DPS.ConnectionString are required")
	}
	bin, err := b.Builder.Worker(ctx)
	if err != nil {
		return nil, err
	}
	return startWorkerProc(t, bin, spec)
}

func startWorkerProc(t TB, bin string, spec WorkerSpec) (*processWorker, error) {
	ports, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	w := &processWorker{id: spec.ID, httpAddr: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	dir := t.TempDir()
	args := workerArgs(spec, w.httpAddr, filepath.Join(dir, "data"))
	env := []string{"DPSYNC_DPS_CONNECTION_STRING=" + spec.DPS.ConnectionString}
	logPath := filepath.Join(dir, "worker-"+spec.ID+".log")
	p, err := startProc("worker "+spec.ID, logPath, bin, args, env)
	if err != nil {
		return nil, err
	}
	w.p = p
	t.Cleanup(func() {
		w.p.Kill()
		if t.Failed() {
			t.Logf("--- tail of worker %s (%s):\n%s", spec.ID, logPath, tailFile(logPath, 60))
		}
	})
	return w, nil
}

func workerArgs(s WorkerSpec, httpAddr, dataDir string) []string {
	def := func(d, v time.Duration) time.Duration {
		if v == 0 {
			return d
		}
		return v
	}
	partitions, replicas, quota := s.Partitions, s.Replicas, s.Quota
	if partitions == 0 {
		partitions = 16
	}
	if replicas == 0 {
		replicas = 3
	}
	if quota == 0 {
		quota = -1
	}
	args := []string{
		"run",
		"--worker-id", s.ID,
		"--nats-url", strings.Join(s.NATSURLs, ","),
		"--data-dir", dataDir,
		"--partitions", strconv.Itoa(partitions),
		"--replicas", strconv.Itoa(replicas),
		"--quota", strconv.Itoa(quota),
		"--lease-ttl", def(4*time.Second, s.LeaseTTL).String(),
		"--dps-try-timeout", def(time.Second, s.DPSTryTimeout).String(),
		"--linger", def(20*time.Millisecond, s.Linger).String(),
		"--retry-budget", def(2*time.Minute, s.RetryBudget).String(),
		"--ack-wait", def(5*time.Second, s.AckWait).String(),
		"--shutdown-timeout", def(20*time.Second, s.ShutdownTimeout).String(),
		"--http-addr", httpAddr,
	}
	if s.DPS.CAFile != "" {
		args = append(args, "--dps-ca", s.DPS.CAFile)
	}
	if len(s.RedriveSchedule) > 0 {
		parts := make([]string, len(s.RedriveSchedule))
		for i, d := range s.RedriveSchedule {
			parts[i] = d.String()
		}
		args = append(args, "--redrive-schedule", strings.Join(parts, ","))
	}
	if lvl := os.Getenv("DPSYNC_WORKER_LOG_LEVEL"); lvl != "" {
		args = append(args, "--log-level", lvl) // debug: every event's delivery and outcome
	}
	return append(args, s.ExtraArgs...)
}

func (w *processWorker) ID() string       { return w.id }
func (w *processWorker) ConnName() string { return "dpsync-worker " + w.id }
func (w *processWorker) HTTPAddr() string { return w.httpAddr }
func (w *processWorker) LogFile() string  { return w.p.logPath }
func (w *processWorker) Running() bool    { return w.p.Running() }
func (w *processWorker) Kill() error      { return w.p.Kill() }
func (w *processWorker) Stop() error      { return w.p.signal(syscall.SIGSTOP) }
func (w *processWorker) Cont() error      { return w.p.signal(syscall.SIGCONT) }

func (w *processWorker) WaitReady(ctx context.Context) error {
	url := "http://" + w.httpAddr + "/readyz"
	var last error
	for {
		if !w.p.Running() {
			return fmt.Errorf("worker %s exited before ready (see %s)", w.id, w.p.logPath)
		}
		if last = httpOK(ctx, url); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("worker %s not ready: %w (last: %w)", w.id, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (w *processWorker) Term(timeout time.Duration) error {
	if err := w.p.signal(syscall.SIGTERM); err != nil {
		return err
	}
	st, err := w.p.Wait(timeout)
	if err != nil {
		w.p.Kill()
		return fmt.Errorf("graceful stop of worker %s: %w", w.id, err)
	}
	if code := st.ExitCode(); code != 0 {
		return fmt.Errorf("graceful stop of worker %s: %s, want exit code 0", w.id, describeExit(st))
	}
	return nil
}
