//go:build containers

package harness

// Docker operations shared by the container cluster and workers: state, the fault
// operations, and the log follower.

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
)

// containerState returns the container's state.
func containerState(ctx context.Context, cli *testcontainers.DockerClient, id string) (*container.State, error) {
	res, err := cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return nil, err
	}
	if res.Container.State == nil {
		return nil, fmt.Errorf("inspect %.12s: no state", id)
	}
	return res.Container.State, nil
}

// containerRunning reports whether the container's process is alive (a paused one is).
func containerRunning(cli *testcontainers.DockerClient, id string) bool {
	ctx, cancel := opCtx()
	defer cancel()
	st, err := containerState(ctx, cli, id)
	return err == nil && st.Running
}

// killContainer sends SIGKILL to the container's PID 1 and waits until the container is
// not running. Killing a stopped container is a no-op; a paused one is killed too (the
// engine resumes it so the signal is delivered; if it does not, this unpauses it).
func killContainer(cli *testcontainers.DockerClient, name, id string) error {
	return signalAndWait(cli, name, id, "KILL", opTimeout)
}

// signalAndWait sends sig to the container and waits up to timeout until it is not
// running.
func signalAndWait(cli *testcontainers.DockerClient, name, id, sig string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+opTimeout)
	defer cancel()
	st, err := containerState(ctx, cli, id)
	if err != nil {
		return fmt.Errorf("%s %s: %w", sig, name, err)
	}
	if !st.Running {
		if sig == "KILL" {
			return nil
		}
		return fmt.Errorf("signal %s to %s: container is not running", sig, name)
	}
	if _, err := cli.ContainerKill(ctx, id, client.ContainerKillOptions{Signal: sig}); err != nil {
		if st, serr := containerState(ctx, cli, id); serr == nil && !st.Running {
			return nil // exited in between
		}
		return fmt.Errorf("signal %s to %s: %w", sig, name, err)
	}
	return waitNotRunning(ctx, cli, name, id, timeout, sig == "KILL")
}

// waitNotRunning polls until the container is not running, up to timeout. With unpause
// set it unpauses a container still paused after a second (a pending SIGKILL is then
// delivered).
func waitNotRunning(ctx context.Context, cli *testcontainers.DockerClient, name, id string, timeout time.Duration, unpause bool) error {
	start := time.Now()
	unpaused := false
	for {
		st, err := containerState(ctx, cli, id)
		if err != nil {
			return fmt.Errorf("wait for %s to exit: %w", name, err)
		}
		if !st.Running {
			return nil
		}
		if unpause && !unpaused && st.Paused && time.Since(start) > time.Second {
			unpaused = true
			if _, err := cli.ContainerUnpause(ctx, id, client.ContainerUnpauseOptions{}); err != nil {
				return fmt.Errorf("unpause %s to let SIGKILL through: %w", name, err)
			}
		}
		if time.Since(start) > timeout {
			return fmt.Errorf("%s did not exit within %v", name, timeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to exit: %w", name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// pauseContainer freezes every process of the container (cgroup freezer); with resume set
// it thaws them.
func pauseContainer(cli *testcontainers.DockerClient, name, id string, resume bool) error {
	ctx, cancel := opCtx()
	defer cancel()
	var err error
	if resume {
		_, err = cli.ContainerUnpause(ctx, id, client.ContainerUnpauseOptions{})
	} else {
		_, err = cli.ContainerPause(ctx, id, client.ContainerPauseOptions{})
	}
	if err != nil {
		op := "pause"
		if resume {
			op = "unpause"
		}
		return fmt.Errorf("%s %s: %w", op, name, err)
	}
	return nil
}

// terminate removes the container at once (no grace period), with its anonymous volumes.
func terminate(c testcontainers.Container) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return testcontainers.TerminateContainer(c, testcontainers.StopContext(ctx), testcontainers.StopTimeout(0))
}

// describeContainerExit is describeExit for a container: the exit code, and the signal
// when the code says the process died of one (128 + n).
func describeContainerExit(st *container.State) string {
	s := "exit code " + strconv.Itoa(st.ExitCode)
	if st.ExitCode > 128 && st.ExitCode < 128+65 {
		s += " (signal " + syscall.Signal(st.ExitCode-128).String() + ")"
	}
	if st.OOMKilled {
		s += ", OOM-killed"
	}
	return s
}

// logFollower copies a container's output into a log file for the container's whole life:
// across kills and starts, each line once, with "=== harness:" lines at every start and
// exit it sees, like the process backend's logs.
type logFollower struct {
	name string
	path string
	cli  *testcontainers.DockerClient
	id   string

	mu   sync.Mutex // guards f and last
	f    *os.File
	last time.Time // timestamp of the last line written

	wake   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// followLogs starts following the container's output into path (appended).
func followLogs(cli *testcontainers.DockerClient, name, id, path string) (*logFollower, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &logFollower{name: name, path: path, cli: cli, id: id, f: f,
		wake: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	go l.run(ctx)
	return l, nil
}

// Wake tells the follower the container was started again.
func (l *logFollower) Wake() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Close stops following (after at most a few seconds) and closes the file.
func (l *logFollower) Close() {
	l.cancel()
	select {
	case <-l.done:
	case <-time.After(5 * time.Second):
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

func (l *logFollower) marker(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		fmt.Fprintf(l.f, "=== harness: "+format+"\n", args...)
	}
}

// Write lets tsLineWriter write lines (called with l.mu held).
func (l *logFollower) Write(p []byte) (int, error) {
	if l.f == nil {
		return len(p), nil
	}
	return l.f.Write(p)
}

func (l *logFollower) run(ctx context.Context) {
	defer close(l.done)
	var announced, exited string // StartedAt of the last run whose start / exit was written
	for ctx.Err() == nil {
		st, err := containerState(ctx, l.cli, l.id)
		if err != nil {
			if !sleepCtx(ctx, 500*time.Millisecond) {
				return
			}
			continue
		}
		if st.StartedAt != "" && st.StartedAt != announced {
			announced = st.StartedAt
			l.marker("start %s at %s", l.name, st.StartedAt)
		}
		l.copy(ctx)
		if st, err = containerState(ctx, l.cli, l.id); err != nil {
			continue
		}
		if st.Running {
			sleepCtx(ctx, 100*time.Millisecond) // the stream broke; resume after the last line
			continue
		}
		if announced != "" && exited != announced {
			exited = announced
			l.marker("%s exited at %s: %s", l.name, st.FinishedAt, describeContainerExit(st))
		}
		select { // stopped: wait for a Start (or look again now and then)
		case <-ctx.Done():
			return
		case <-l.wake:
		case <-time.After(time.Second):
		}
	}
}

// copy streams the lines after the last one written until the stream ends (the container
// stops, or the connection breaks).
func (l *logFollower) copy(ctx context.Context) {
	l.mu.Lock()
	since := dockerSince(l.last)
	l.mu.Unlock()
	rc, err := l.cli.ContainerLogs(ctx, l.id, client.ContainerLogsOptions{
		ShowStdout: true, ShowStderr: true, Follow: true, Timestamps: true, Since: since,
	})
	if err != nil {
		return
	}
	defer rc.Close()
	stdout := &tsLineWriter{mu: &l.mu, out: l, last: &l.last}
	stderr := &tsLineWriter{mu: &l.mu, out: l, last: &l.last}
	stdcopy.StdCopy(stdout, stderr, rc)
	stdout.Flush()
	stderr.Flush()
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
