package harness

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func buildFakeWorker(t *testing.T) string {
	t.Helper()
	root, err := ModuleRoot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "fakeworker")
	cmd := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "./integration/harness/testdata/fakeworker")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build fake worker: %v\n%s", err, out)
	}
	return bin
}

func TestWorkerProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a process")
	}
	bin := buildFakeWorker(t)
	const conn = "HostName=127.0.0.1:1;SharedAccessKeyName=owner;SharedAccessKey=c2VjcmV0c2VjcmV0c2VjcmV0"
	spec := WorkerSpec{ID: "w1", NATSURLs: []string{"nats://a:1", "nats://b:2"}, DPS: DPSTarget{ConnectionString: conn}}

	w, err := startWorkerProc(t, bin, spec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := w.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := w.Cont(); err != nil {
		t.Fatal(err)
	}
	if err := w.Term(5 * time.Second); err != nil {
		t.Errorf("got %v from a worker that exits 0 on SIGTERM, want nil", err)
	}
	log, err := os.ReadFile(w.LogFile())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), `"nats":"nats://a:1,nats://b:2"`) {
		t.Errorf("got log\n%s\nwant the NATS URLs passed as one flag", log)
	}
	if found, err := ScanSecrets([]string{w.LogFile()}, KeyOf(conn), conn); err != nil || len(found) > 0 {
		t.Errorf("got secret findings %v (err %v), want none: the connection string goes in the environment", found, err)
	}
	for _, a := range workerArgs(spec, "x", "d") {
		if strings.Contains(a, "SharedAccessKey") {
			t.Errorf("got argument %q: the connection string must not be on the command line", a)
		}
	}

	// A worker that exits non-zero on SIGTERM fails Term; Kill of a running one works.
	spec.ExtraArgs = []string{"--term-exit-code", "7"}
	w2, err := startWorkerProc(t, bin, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := w2.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w2.Term(5 * time.Second); err == nil || !strings.Contains(err.Error(), "exit code 7") {
		t.Errorf("got %v, want an error naming exit code 7", err)
	}
	w3, err := startWorkerProc(t, bin, WorkerSpec{ID: "w3", NATSURLs: spec.NATSURLs, DPS: spec.DPS})
	if err != nil {
		t.Fatal(err)
	}
	if err := w3.Kill(); err != nil || w3.Running() {
		t.Errorf("got err %v, running %v after Kill; want nil, false", err, w3.Running())
	}
}
