package cli

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dpsync/dpsync/internal/emulator/contract"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMainServesAndStops(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	const key = "c2VjcmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OTA="
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var stderr strings.Builder
	code := make(chan int, 1)
	go func() {
		code <- Main(ctx, []string{"--addr", "127.0.0.1:0", "--http", "--policy", "ops=@" + keyFile, "--id-scope", "0ne00000042", "--hubs", "a.azure-devices.net", "--data-dir", filepath.Join(dir, "data")}, pw, &stderr)
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	var url, conn, scope string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "DPS emulator listening on "):
			url = strings.TrimPrefix(line, "DPS emulator listening on ")
		case strings.HasPrefix(line, "  HostName="):
			conn = strings.TrimSpace(line)
		case strings.HasPrefix(line, "ID scope: "):
			scope = strings.TrimPrefix(line, "ID scope: ")
		}
		if strings.HasPrefix(line, "Admin:") {
			break
		}
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	if url == "" || scope != "0ne00000042" || !strings.Contains(conn, "SharedAccessKeyName=ops;SharedAccessKey="+key) {
		t.Fatalf("got url %q, scope %q, connection string %q", url, scope, conn)
	}
	host := strings.TrimPrefix(url, "http://")
	if !strings.Contains(conn, "HostName="+host+";") {
		t.Errorf("connection string %q does not name %s", conn, host)
	}
	req, _ := http.NewRequest("GET", url+"/enrollments/none?api-version=2021-10-01", nil)
	req.Header.Set("Authorization", contract.SAS(host, "ops", key, time.Now().Add(time.Hour)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	if resp.StatusCode != 404 {
		t.Errorf("GET with the printed credentials: got %d, want 404", resp.StatusCode)
	}
	cancel()
	if c := <-code; c != 0 {
		t.Errorf("got exit code %d, want 0 (stderr %s)", c, stderr.String())
	}
	if strings.Contains(stderr.String(), key) {
		t.Errorf("stderr holds the key")
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--policy", "p=literal-key"},
		{"--policy", "p=env:DPS_EMULATOR_TEST_UNSET_VAR"},
		{"--no-such-flag"},
		{"extra"},
	} {
		var out, errOut strings.Builder
		if got := Main(context.Background(), args, &out, &errOut); got != 2 {
			t.Errorf("%v: got exit code %d, want 2", args, got)
		}
	}
	var out, errOut strings.Builder
	if got := Main(context.Background(), []string{"--fault-drop-rate", "3", "--addr", "127.0.0.1:0", "--http"}, &out, &errOut); got != 1 {
		t.Errorf("bad fault rate: got exit code %d, want 1", got)
	}
}
