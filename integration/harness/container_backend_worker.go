//go:build containers

package harness

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/moby/moby/api/types/container"
	mobynet "github.com/moby/moby/api/types/network"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// containerWorker is a worker container and its ambassador (the network namespace it runs
// in, see planForwards).
type containerWorker struct {
	id       string
	cli      *testcontainers.DockerClient
	httpAddr string
	logPath  string

	ctr  testcontainers.Container // the worker
	amb  testcontainers.Container // its ambassador
	logs *logFollower
}

var _ Worker = (*containerWorker)(nil)

// StartWorker starts the ambassador of the worker's addresses, then the worker in the
// ambassador's network namespace. The DPS connection string goes in the container's
// environment only.
func (b *ContainerBackend) StartWorker(ctx context.Context, t TB, spec WorkerSpec) (Worker, error) {
	t.Helper()
	if spec.ID == "" || len(spec.NATSURLs) == 0 || spec.DPS.ConnectionString == "" {
		return nil, errors.New("start worker: ID, NATSURLs and DPS.ConnectionString are required")
	}
	cli, err := b.engine(ctx)
	if err != nil {
		return nil, err
	}
	image, err := b.workerImageName(ctx)
	if err != nil {
		return nil, err
	}
	addrs, err := workerAddrs(spec)
	if err != nil {
		return nil, fmt.Errorf("start worker %s: %w", spec.ID, err)
	}
	plan, err := planForwards(addrs, b.routesSnapshot())
	if err != nil {
		return nil, fmt.Errorf("start worker %s: %w", spec.ID, err)
	}
	dir := t.TempDir()
	w := &containerWorker{id: spec.ID, cli: cli, logPath: filepath.Join(dir, "worker-"+spec.ID+".log")}
	ambLog := filepath.Join(dir, "worker-"+spec.ID+"-ambassador.log")
	var ambLogs *logFollower
	t.Cleanup(func() {
		if w.ctr != nil {
			killContainer(cli, "worker "+spec.ID, w.ctr.GetContainerID())
		}
		if t.Failed() {
			t.Logf("--- tail of worker %s (%s):\n%s", spec.ID, w.logPath, tailFile(w.logPath, 60))
			if ambLogs != nil {
				t.Logf("--- tail of the ambassador of worker %s (%s):\n%s", spec.ID, ambLog, tailFile(ambLog, 20))
			}
		}
		if err := errors.Join(terminate(w.ctr), terminate(w.amb)); err != nil {
			t.Logf("remove worker %s: %v", spec.ID, err)
		}
		if w.logs != nil {
			w.logs.Close()
		}
		if ambLogs != nil {
			ambLogs.Close()
		}
	})

	// The ambassador: listeners on the worker's loopback, the worker's HTTP port published.
	httpPort := mobynet.MustParsePort(strconv.Itoa(plan.HTTPPort) + "/tcp")
	var listening []int
	for _, f := range plan.Forwards {
		listening = append(listening, f.Port)
	}
	w.amb, err = testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{
			Image:           ambassadorImage,
			Entrypoint:      []string{"/bin/sh", "-c"},
			Cmd:             []string{ambassadorScript(plan.Forwards)},
			ExposedPorts:    []string{httpPort.String()},
			HostAccessPorts: plan.HostPorts,
			Networks:        plan.Networks,
			HostConfigModifier: func(hc *container.HostConfig) {
				hc.PortBindings = mobynet.PortMap{
					httpPort: {{HostIP: netip.MustParseAddr("127.0.0.1")}}, // a free port
				}
			},
			WaitingFor: wait.ForExec([]string{"/bin/sh", "-c", listeningCheck(listening)}).
				WithPollInterval(100 * time.Millisecond).WithStartupTimeout(30 * time.Second),
		},
		Started: true,
	})
	if w.amb != nil {
		ambLogs, _ = followLogs(cli, "ambassador of worker "+spec.ID, w.amb.GetContainerID(), ambLog)
	}
	if err != nil {
		return nil, fmt.Errorf("start the ambassador of worker %s: %w", spec.ID, err)
	}
	mapped, err := w.amb.MappedPort(ctx, httpPort.String())
	if err != nil {
		return nil, fmt.Errorf("worker %s: published http port: %w", spec.ID, err)
	}
	w.httpAddr = "127.0.0.1:" + mapped.Port()

	// The worker, in the ambassador's network namespace.
	inner := spec
	env := map[string]string{"DPSYNC_DPS_CONNECTION_STRING": spec.DPS.ConnectionString}
	if v := os.Getenv("GOTRACEBACK"); v != "" {
		env["GOTRACEBACK"] = v
	}
	var files []testcontainers.ContainerFile
	if spec.DPS.CAFile != "" {
		files = append(files, testcontainers.ContainerFile{HostFilePath: spec.DPS.CAFile, ContainerFilePath: workerCAPath, FileMode: 0o644})
		inner.DPS.CAFile = workerCAPath
	}
	ambID := w.amb.GetContainerID()
	w.ctr, err = testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{
			Image: image,
			Cmd:   workerArgs(inner, fmt.Sprintf("0.0.0.0:%d", plan.HTTPPort), workerDataDir),
			Env:   env,
			Files: files,
			Tmpfs: map[string]string{workerDataDir: "rw,mode=1777"},
			HostConfigModifier: func(hc *container.HostConfig) {
				hc.NetworkMode = container.NetworkMode("container:" + ambID)
			},
		},
		Started: true,
	})
	if w.ctr != nil {
		var lerr error
		if w.logs, lerr = followLogs(cli, "worker "+spec.ID, w.ctr.GetContainerID(), w.logPath); lerr != nil {
			err = errors.Join(err, lerr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("start worker %s: %w", spec.ID, err)
	}
	return w, nil
}

func (w *containerWorker) ID() string       { return w.id }
func (w *containerWorker) ConnName() string { return "dpsync-worker " + w.id }
func (w *containerWorker) HTTPAddr() string { return w.httpAddr }
func (w *containerWorker) LogFile() string  { return w.logPath }
func (w *containerWorker) name() string     { return "worker " + w.id }

func (w *containerWorker) Running() bool {
	return containerRunning(w.cli, w.ctr.GetContainerID())
}

func (w *containerWorker) Kill() error {
	return killContainer(w.cli, w.name(), w.ctr.GetContainerID())
}

func (w *containerWorker) Stop() error {
	return pauseContainer(w.cli, w.name(), w.ctr.GetContainerID(), false)
}
func (w *containerWorker) Cont() error {
	return pauseContainer(w.cli, w.name(), w.ctr.GetContainerID(), true)
}

func (w *containerWorker) WaitReady(ctx context.Context) error {
	url := "http://" + w.httpAddr + "/readyz"
	var last error
	for {
		if !w.Running() {
			return fmt.Errorf("worker %s exited before ready (see %s)", w.id, w.logPath)
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

// Term sends SIGTERM and waits up to timeout for exit code 0 (SIGKILL after the timeout).
func (w *containerWorker) Term(timeout time.Duration) error {
	id := w.ctr.GetContainerID()
	if err := signalAndWait(w.cli, w.name(), id, "TERM", timeout); err != nil {
		killContainer(w.cli, w.name(), id)
		return fmt.Errorf("graceful stop of worker %s: %w", w.id, err)
	}
	ctx, cancel := opCtx()
	defer cancel()
	st, err := containerState(ctx, w.cli, id)
	if err != nil {
		return fmt.Errorf("graceful stop of worker %s: %w", w.id, err)
	}
	if st.ExitCode != 0 {
		return fmt.Errorf("graceful stop of worker %s: %s, want exit code 0", w.id, describeContainerExit(st))
	}
	return nil
}
