package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ErrMissing marks a piece of the system under test that does not build or lacks what the
// harness needs (for example a flag of cmd/worker). Scenarios fail on it.
var ErrMissing = errors.New("not built yet")

// Builder builds the programs the harness runs, each at most once, into one directory.
// Create one per test binary (in TestMain) and share it; it is safe for concurrent use.
type Builder struct {
	dir  string
	race bool

	natsOnce sync.Once
	natsPath string
	natsErr  error

	workerOnce sync.Once
	workerPath string
	workerErr  error
}

// NewBuilder returns a Builder that writes binaries into dir. With race set the worker is
// built with -race (slower, finds data races under faults).
func NewBuilder(dir string, race bool) *Builder { return &Builder{dir: dir, race: race} }

// ModuleRoot returns the directory of the go.mod the harness builds from.
func ModuleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("go env GOMOD: not inside a module")
	}
	return filepath.Dir(gomod), nil
}

// NATSServer builds nats-server at the version go.mod pins and returns its path.
func (b *Builder) NATSServer(ctx context.Context) (string, error) {
	b.natsOnce.Do(func() {
		b.natsPath = filepath.Join(b.dir, "nats-server")
		b.natsErr = b.goBuild(ctx, b.natsPath, "github.com/nats-io/nats-server/v2", false)
	})
	return b.natsPath, b.natsErr
}

// Worker builds cmd/worker and checks that it has the `run` subcommand with the flags the
// harness passes. A worker that does not build or lacks them yields an error wrapping
// ErrMissing, with the build output.
func (b *Builder) Worker(ctx context.Context) (string, error) {
	b.workerOnce.Do(func() {
		b.workerPath = filepath.Join(b.dir, "worker")
		if err := b.goBuild(ctx, b.workerPath, "./cmd/worker", b.race); err != nil {
			b.workerErr = fmt.Errorf("%w: cmd/worker: %w", ErrMissing, err)
			return
		}
		b.workerErr = checkWorkerFlags(ctx, b.workerPath)
	})
	return b.workerPath, b.workerErr
}

// requiredWorkerFlags are the `worker run` flags the harness passes.
var requiredWorkerFlags = []string{
	"nats-url", "worker-id", "partitions", "replicas", "quota", "lease-ttl", "dps-try-timeout", "http-addr",
	"dps-ca", "linger", "retry-budget", "ack-wait", "shutdown-timeout",
}

func checkWorkerFlags(ctx context.Context, path string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "run", "-h")
	out, _ := cmd.CombinedOutput() // -h exits 0 or 2 depending on the flag package's mode
	var missing []string
	for _, f := range requiredWorkerFlags {
		if !bytes.Contains(out, []byte("-"+f)) {
			missing = append(missing, "--"+f)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: `worker run -h` does not list %s (output: %s)",
			ErrMissing, strings.Join(missing, ", "), firstLines(string(out), 5))
	}
	return nil
}

func (b *Builder) goBuild(ctx context.Context, out, pkg string, race bool) error {
	root, err := ModuleRoot(ctx)
	if err != nil {
		return err
	}
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	args = append(args, pkg)
	if strings.HasPrefix(pkg, "./") {
		noteSources(root)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, firstLines(string(msg), 20))
	}
	return nil
}

// noteSources opens the module's Go sources, go.mod, go.sum and JSON files (schemas are
// embedded). go test caches a package's result keyed on its own build and on the files the
// test opens; the worker is built with go build, which the cache does not see, so without
// this a changed worker would be reported by a cached pass.
func noteSources(root string) {
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(name, ".go") || strings.HasSuffix(name, ".json") || name == "go.mod" || name == "go.sum" {
			if f, err := os.Open(path); err == nil {
				f.Close()
			}
		}
		return nil
	})
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(strings.TrimSpace(s), "\n", n+1)
	if len(lines) > n {
		lines = append(lines[:n], "…")
	}
	return strings.Join(lines, "\n")
}
