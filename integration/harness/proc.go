package harness

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one child process with its output in a log file. Methods are safe for concurrent
// use. A proc is started once; a restart makes a new proc.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	logFile *os.File
	done    chan struct{} // closed when the process has exited and been reaped

	mu      sync.Mutex
	exitErr error // valid after done
	state   *os.ProcessState
}

// startProc starts path with args and env (appended to a minimal environment), writing
// stdout and stderr to logPath (appended, so a restarted node keeps its history).
func startProc(name, logPath, path string, args, env []string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", name, err)
	}
	fmt.Fprintf(f, "=== harness: start %s at %s\n", name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(baseEnv(), env...)
	// Own process group: a signal sent to the test's group (Ctrl-C) is not the harness's fault
	// injection, and the harness's signals reach only this process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, logFile: f, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.exitErr, p.state = err, cmd.ProcessState
		p.mu.Unlock()
		fmt.Fprintf(f, "=== harness: %s exited at %s: %v\n", name, time.Now().Format(time.RFC3339Nano), describeExit(cmd.ProcessState))
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// baseEnv is what a child gets from the test's environment: enough to run, nothing that
// changes a worker's configuration by accident (no DPSYNC_* variables leak in).
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "PATH", "HOME", "TMPDIR", "GORACE", "GOTRACEBACK":
			env = append(env, kv)
		}
	}
	return env
}

func describeExit(st *os.ProcessState) string {
	if st == nil {
		return "unknown"
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return "exit code " + strconv.Itoa(st.ExitCode())
}

// Pid returns the process id.
func (p *proc) Pid() int { return p.cmd.Process.Pid }

// Running reports whether the process has not exited.
func (p *proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) signal(sig syscall.Signal) error {
	if !p.Running() {
		return fmt.Errorf("signal %s to %s: process has exited", sig, p.name)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s to %s: %w", sig, p.name, err)
	}
	return nil
}

// Kill sends SIGKILL and waits until the process is reaped. Killing an exited process is a
// no-op. A stopped process is killed too (SIGKILL needs no SIGCONT).
func (p *proc) Kill() error {
	if !p.Running() {
		return nil
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s: %w", p.name, err)
	}
	<-p.done
	return nil
}

// Wait waits up to timeout for the process to exit and returns its exit status.
func (p *proc) Wait(timeout time.Duration) (*os.ProcessState, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.state, nil
	case <-t.C:
		return nil, fmt.Errorf("%s did not exit within %v", p.name, timeout)
	}
}

// freePorts returns n distinct free TCP ports on 127.0.0.1. The ports are released before
// return, so another process could take one in between; on this single-user test machine
// that is rare, and a clash shows as a bind error in the node's log.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// tailFile returns the last n lines of a file.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
