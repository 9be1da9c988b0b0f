package cli

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
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

// running is a Main started by start: what it printed, and how to stop it.
type running struct {
	url, host, conn, scope, certFile, sasHosts string
	lines                                      []string
	stop                                       func() (code int, stderr string)
}

// start runs Main with args until it has printed its banner (through the "Admin:" line).
func start(t *testing.T, args ...string) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	var stderr strings.Builder
	code := make(chan int, 1)
	go func() {
		code <- Main(ctx, args, pw, &stderr)
		pw.Close()
	}()
	r := &running{}
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		line := sc.Text()
		r.lines = append(r.lines, line)
		switch {
		case strings.HasPrefix(line, "DPS emulator listening on "):
			r.url = strings.TrimPrefix(line, "DPS emulator listening on ")
			r.host = r.url[strings.Index(r.url, "://")+3:]
		case strings.HasPrefix(line, "  HostName="):
			r.conn = strings.TrimSpace(line)
		case strings.HasPrefix(line, "ID scope: "):
			r.scope = strings.TrimPrefix(line, "ID scope: ")
		case strings.HasPrefix(line, "Certificate to trust: "):
			r.certFile = strings.TrimPrefix(line, "Certificate to trust: ")
		case strings.HasPrefix(line, "Service SAS host name (sr): "):
			r.sasHosts = strings.TrimPrefix(line, "Service SAS host name (sr): ")
		}
		if strings.HasPrefix(line, "Admin:") {
			break
		}
	}
	drained := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, pr); close(drained) }()
	stopped := false
	var exit int
	r.stop = func() (int, string) {
		if !stopped {
			stopped = true
			cancel()
			exit = <-code
			<-drained
		}
		return exit, stderr.String()
	}
	t.Cleanup(func() { r.stop() })
	if r.url == "" {
		c, e := r.stop()
		t.Fatalf("no banner (exit %d): stdout %q, stderr %s", c, r.lines, e)
	}
	return r
}

// get sends GET url+path signed with the policy of the printed connection string.
func (r *running) get(t *testing.T, c *http.Client, path, policy, key string) (*http.Response, error) {
	t.Helper()
	req, _ := http.NewRequest("GET", r.url+path, nil)
	req.Header.Set("Authorization", contract.SAS(r.host, policy, key, time.Now().Add(time.Hour)))
	resp, err := c.Do(req)
	if err == nil {
		resp.Body.Close()
	}
	return resp, err
}

func writeKey(t *testing.T, dir string) (file, key string) {
	t.Helper()
	file = filepath.Join(dir, "key")
	key = "c2VjcmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OTA="
	if err := os.WriteFile(file, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return file, key
}

func TestMainServesAndStops(t *testing.T) {
	dir := t.TempDir()
	keyFile, key := writeKey(t, dir)
	r := start(t, "--addr", "127.0.0.1:0", "--http", "--policy", "ops=@"+keyFile, "--id-scope", "0ne00000042", "--hubs", "a.azure-devices.net", "--data-dir", filepath.Join(dir, "data"))
	if r.scope != "0ne00000042" || !strings.Contains(r.conn, "SharedAccessKeyName=ops;SharedAccessKey="+key) {
		t.Fatalf("got url %q, scope %q, connection string %q", r.url, r.scope, r.conn)
	}
	if !strings.Contains(r.conn, "HostName="+r.host+";") {
		t.Errorf("connection string %q does not name %s", r.conn, r.host)
	}
	if r.certFile != "" {
		t.Errorf("plain HTTP printed a certificate to trust: %q", r.certFile)
	}
	c := &http.Client{Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	resp, err := r.get(t, c, "/enrollments/none?api-version=2021-10-01", "ops", key)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 404 {
		t.Errorf("GET with the printed credentials: got %d, want 404", resp.StatusCode)
	}
	code, stderr := r.stop()
	if code != 0 {
		t.Errorf("got exit code %d, want 0 (stderr %s)", code, stderr)
	}
	if strings.Contains(stderr, key) {
		t.Errorf("stderr holds the key")
	}
}

// TestMainHTTPSKeepsCertificate starts the emulator as a user would (HTTPS, the default)
// with a data directory, connects trusting only the certificate file it printed, restarts
// it and connects again with the same trust: the certificate survives the restart.
func TestMainHTTPSKeepsCertificate(t *testing.T) {
	dir := t.TempDir()
	keyFile, key := writeKey(t, dir)
	args := []string{"--addr", "127.0.0.1:0", "--policy", "ops=@" + keyFile, "--data-dir", filepath.Join(dir, "data")}

	r1 := start(t, args...)
	if !strings.HasPrefix(r1.url, "https://") || r1.certFile == "" {
		t.Fatalf("got url %q, certificate %q; want https and a certificate file", r1.url, r1.certFile)
	}
	pemBytes, err := os.ReadFile(r1.certFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool() // only the printed certificate, not the system roots
	if !roots.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("%s holds no certificate", r1.certFile)
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	defer c.CloseIdleConnections()
	check := func(r *running, when string) {
		t.Helper()
		resp, err := r.get(t, c, "/enrollments/none?api-version=2021-10-01", "ops", key)
		if err != nil {
			t.Fatalf("%s: client trusting only %s: %v", when, r1.certFile, err)
		}
		if resp.StatusCode != 404 {
			t.Errorf("%s: got %d, want 404", when, resp.StatusCode)
		}
		c.CloseIdleConnections()
	}
	check(r1, "first start")
	if code, stderr := r1.stop(); code != 0 {
		t.Fatalf("stop: exit %d, stderr %s", code, stderr)
	}

	r2 := start(t, args...)
	if r2.certFile != r1.certFile {
		t.Errorf("restart: certificate file %q, want %q", r2.certFile, r1.certFile)
	}
	if !strings.Contains(strings.Join(r2.lines, "\n"), "kept in the data directory by an earlier start") {
		t.Errorf("restart: the banner does not say the certificate was reused: %q", r2.lines)
	}
	check(r2, "after restart")
}

// TestMainSASHostName: sr must be the printed host name (or an alias it prints), not any
// name the client puts in the Host header.
func TestMainSASHostName(t *testing.T) {
	dir := t.TempDir()
	keyFile, key := writeKey(t, dir)
	r := start(t, "--addr", "127.0.0.1:0", "--http", "--policy", "ops=@"+keyFile)
	_, port, _ := strings.Cut(r.host, ":")
	if want := r.host + " (also accepted: localhost:" + port + ")"; r.sasHosts != want {
		t.Errorf("printed SAS host names %q, want %q", r.sasHosts, want)
	}
	c := &http.Client{Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	for _, tc := range []struct {
		sr, hostHeader string
		want           int
	}{
		{r.host, "", 404},
		{"localhost:" + port, "", 404},
		{"elsewhere.example:" + port, "elsewhere.example:" + port, 401},
	} {
		req, _ := http.NewRequest("GET", r.url+"/enrollments/none?api-version=2021-10-01", nil)
		if tc.hostHeader != "" {
			req.Host = tc.hostHeader
		}
		req.Header.Set("Authorization", contract.SAS(tc.sr, "ops", key, time.Now().Add(time.Hour)))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("sr %q: got %d, want %d", tc.sr, resp.StatusCode, tc.want)
		}
	}
}

// TestMainFaultFlags: every fault of the admin endpoint can be set from the command line,
// per-operation error rates included.
func TestMainFaultFlags(t *testing.T) {
	dir := t.TempDir()
	keyFile, _ := writeKey(t, dir)
	r := start(t, "--addr", "127.0.0.1:0", "--http", "--policy", "ops=@"+keyFile,
		"--fault-error-rate", "bulkEnrollments=1", "--fault-error-rate", "getEnrollment=0.25", "--fault-error-rate", "0.01",
		"--fault-error-status", "500",
		"--fault-latency", "2ms", "--fault-jitter", "3ms", "--fault-drop-rate", "0.02",
		"--fault-throttle-for", "1h", "--fault-bulk-reject-next", "2",
		"--fault-bulk-reject-id", "poison-1,poison-2", "--fault-bulk-reject-id", "poison-3",
		"--fault-bulk-reject-rate", "0.5", "--fault-error-after-apply-rate", "0.1", "--fault-drop-after-apply-rate", "0.2")
	c := &http.Client{Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(r.url + "/admin/faults")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		ErrorRates          map[string]float64 `json:"errorRates"`
		ErrorStatus         int                `json:"errorStatus"`
		ErrorAfterApplyRate float64            `json:"errorAfterApplyRate"`
		DropRate            float64            `json:"dropRate"`
		DropAfterApplyRate  float64            `json:"dropAfterApplyRate"`
		Latency             string             `json:"latency"`
		Jitter              string             `json:"jitter"`
		ThrottleUntil       *time.Time         `json:"throttleUntil"`
		BulkRejectRate      float64            `json:"bulkRejectRate"`
		BulkRejectNext      int                `json:"bulkRejectNext"`
		BulkRejectIDs       []string           `json:"bulkRejectIds"`
	}
	err = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(got.ErrorRates) != 3 || got.ErrorRates["bulkEnrollments"] != 1 || got.ErrorRates["getEnrollment"] != 0.25 || got.ErrorRates["*"] != 0.01 {
		t.Errorf("errorRates: got %v", got.ErrorRates)
	}
	if got.ErrorStatus != 500 || got.ErrorAfterApplyRate != 0.1 || got.DropRate != 0.02 || got.DropAfterApplyRate != 0.2 ||
		got.Latency != "2ms" || got.Jitter != "3ms" || got.BulkRejectRate != 0.5 || got.BulkRejectNext != 2 ||
		strings.Join(got.BulkRejectIDs, ",") != "poison-1,poison-2,poison-3" {
		t.Errorf("faults: got %+v", got)
	}
	if got.ThrottleUntil == nil || time.Until(*got.ThrottleUntil) < 50*time.Minute {
		t.Errorf("throttleUntil: got %v, want about an hour from now", got.ThrottleUntil)
	}
}

// TestMainPerOperationErrorRate: an error rate for one operation fails that operation only.
func TestMainPerOperationErrorRate(t *testing.T) {
	dir := t.TempDir()
	keyFile, key := writeKey(t, dir)
	r := start(t, "--addr", "127.0.0.1:0", "--http", "--policy", "ops=@"+keyFile, "--quota-ops", "0",
		"--fault-error-rate", "bulkEnrollments=1", "--fault-error-status", "500")
	c := &http.Client{Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	do := func(method, path, body string) int {
		req, _ := http.NewRequest(method, r.url+path+"?api-version=2021-10-01", strings.NewReader(body))
		req.Header.Set("Authorization", contract.SAS(r.host, "ops", key, time.Now().Add(time.Hour)))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for range 3 {
		if got := do("POST", "/enrollments", `{"mode":"create","enrollments":[{"registrationId":"a","attestation":{"type":"symmetricKey"}}]}`); got != 500 {
			t.Errorf("bulk with rate 1: got %d, want 500", got)
		}
		if got := do("GET", "/enrollments/a", ""); got != 404 {
			t.Errorf("get, no fault: got %d, want 404 (the bulk was never applied)", got)
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--policy", "p=literal-key"},
		{"--policy", "p=env:DPS_EMULATOR_TEST_UNSET_VAR"},
		{"--no-such-flag"},
		{"extra"},
		{"--fault-drop-rate", "3"},
		{"--fault-error-rate", "noSuchOperation=0.5"},
		{"--fault-error-rate", "bulkEnrollments=1.5"},
		{"--fault-error-rate", "bulkEnrollments=often"},
		{"--fault-error-rate", "=0.5"},
		{"--fault-error-status", "404"},
		{"--fault-bulk-reject-next", "-1"},
		{"--fault-latency", "-1s"},
	} {
		var out, errOut strings.Builder
		args = append(args, "--addr", "127.0.0.1:0", "--http")
		if got := Main(context.Background(), args, &out, &errOut); got != 2 {
			t.Errorf("%v: got exit code %d, want 2 (stderr %s)", args, got, errOut.String())
		}
	}
}
