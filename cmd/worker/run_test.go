package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/dpsync/dpsync/internal/app"
	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
)

// otlpCollector is an in-process OTLP/HTTP receiver.
type otlpCollector struct {
	srv *httptest.Server

	mu    sync.Mutex
	raw   []byte
	spans []string
}

func newOTLPCollector(t *testing.T) *otlpCollector {
	t.Helper()
	c := &otlpCollector{}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req coltrace.ExportTraceServiceRequest
		if r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
			http.Error(w, "not an OTLP trace export", http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		c.raw = append(c.raw, body...)
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				for _, sp := range ss.GetSpans() {
					c.spans = append(c.spans, sp.GetName())
				}
			}
		}
		c.mu.Unlock()
		b, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(b)
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *otlpCollector) received() (spans []string, raw string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.spans...), string(c.raw)
}

// worker run, as deployed: NATS with a password in its URL, DPS by connection string,
// spans to an OTLP collector. The spans arrive (batch and DPS calls), and neither they nor
// the worker's logs hold the NATS password or the DPS key.
func TestRunExportsSpansOverOTLPWithoutSecrets(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole worker")
	}
	srv := startNATS(t, withPassword)
	js := connectAdmin(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	emu, err := emulator.Serve(ctx, emulator.Options{Quotas: &emulator.Quotas{}}, emulator.ServeOptions{Addr: "127.0.0.1:0", CertFile: filepath.Join(t.TempDir(), "emu.pem")})
	if err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	dpsKey := ""
	for _, part := range strings.Split(emu.ConnectionString(), ";") {
		if v, ok := strings.CutPrefix(part, "SharedAccessKey="); ok {
			dpsKey = v
		}
	}
	if dpsKey == "" {
		t.Fatalf("no SharedAccessKey in the emulator's connection string")
	}
	col := newOTLPCollector(t)

	vars := map[string]string{"DPSYNC_DPS_CONNECTION_STRING": emu.ConnectionString()}
	var out, logs syncBuffer
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan int, 1)
	go func() {
		done <- run(runCtx, []string{"run", "--nats-url", passwordURL(srv, testPassword), "--dps-ca", emu.CAFile(),
			"--http-addr", "", "--partitions", "4", "--otlp-endpoint", col.srv.URL, "--log-level", "debug", "--worker-id", "otlp-test"},
			strings.NewReader(""), &out, &logs, func(k string) string { return vars[k] })
	}()

	// Publish once the worker made the stream; wait for DPS to hold the enrollment.
	waitFor(t, "events stream", func() bool { _, err := js.Stream(ctx, "DPS_EVENTS"); return err == nil }, done)
	line := `{"specversion":"1.0","id":"otlp-1","source":"t","type":"com.dpsync.enrollment.v1","data":{"operation":"create","enrollment":{"registrationId":"otlp-dev-1","attestation":{"type":"symmetricKey"}}}}`
	if _, err := js.Publish(ctx, "dpsync.events.enrollment.otlp-dev-1", []byte(line)); err != nil {
		t.Fatal(err)
	}
	hc, err := app.HTTPClient(emu.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	client, err := dps.NewClientFromConnectionString(emu.ConnectionString(), &dps.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: hc}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "enrollment on DPS", func() bool {
		_, err := client.GetEnrollment(ctx, "otlp-dev-1", nil)
		return err == nil
	}, done)
	stop()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("worker run exited %d:\n%.3000s", code, logs.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("worker run did not stop within a minute")
	}

	spans, raw := col.received()
	has := func(name string) bool {
		for _, s := range spans {
			if s == name {
				return true
			}
		}
		return false
	}
	if !has("dpsync.batch") {
		t.Errorf("spans received: %v, want a dpsync.batch span", spans)
	}
	if !strings.Contains(strings.Join(spans, ","), "dps.") {
		t.Errorf("spans received: %v, want the DPS client's spans", spans)
	}
	if !strings.Contains(logs.String(), "exporting spans over OTLP/HTTP") {
		t.Errorf("the worker does not log where its spans go")
	}
	for _, secret := range []string{testPassword, dpsKey, "SharedAccessSignature", "sig="} {
		if strings.Contains(raw, secret) {
			t.Errorf("the exported spans contain %q", secret)
		}
		if strings.Contains(logs.String()+out.String(), secret) {
			t.Errorf("the worker's output contains %q", secret)
		}
	}
}

// waitFor polls cond until it holds; it fails the test when the worker exits first or
// after 60 s.
func waitFor(t *testing.T, what string, cond func() bool, exited <-chan int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		select {
		case code := <-exited:
			t.Fatalf("%s: the worker exited (%d) first", what, code)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 60s", what)
		}
		time.Sleep(50 * time.Millisecond) // polling an outcome, not timing it
	}
}
