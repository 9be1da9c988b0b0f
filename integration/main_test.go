package integration

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/dpsync/dpsync/integration/harness"
)

// builder and backend are shared by every test of this binary: binaries are built once per
// `go test` run. DPSYNC_BACKEND selects the backend (harness.NewBackend).
var (
	builder *harness.Builder
	backend harness.Backend
)

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "dpsync-it-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	builder = harness.NewBuilder(dir, os.Getenv("DPSYNC_WORKER_RACE") == "1")
	if backend, err = harness.NewBackend(builder); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	return m.Run()
}

// testCtx is a context that ends a little before the test's deadline, so cleanup and the
// log dump still run.
func testCtx(t *testing.T) context.Context {
	ctx := t.Context()
	if dl, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-15*time.Second))
		t.Cleanup(cancel)
	}
	return ctx
}

// needWorker fails the test when cmd/worker does not build or lacks the flags the harness
// passes: a scenario that cannot run has not shown anything.
func needWorker(t *testing.T) {
	t.Helper()
	if _, err := builder.Worker(t.Context()); err != nil {
		t.Fatal(err)
	}
}
