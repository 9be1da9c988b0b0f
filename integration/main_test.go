package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/dpsync/dpsync/integration/harness"
)

// backend is shared by every test of this binary: binaries are built once per `go test` run.
var backend *harness.ProcessBackend

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "dpsync-it-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	backend = &harness.ProcessBackend{Builder: harness.NewBuilder(dir, os.Getenv("DPSYNC_WORKER_RACE") == "1")}
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

// needWorker skips the test while cmd/worker is missing or lacks the flags the harness passes.
func needWorker(t *testing.T) {
	t.Helper()
	if _, err := backend.Builder.Worker(t.Context()); err != nil {
		if errors.Is(err, harness.ErrMissing) {
			t.Skipf("worker not available yet: %v", err)
		}
		t.Fatal(err)
	}
}
