package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// collector is an in-process OTLP/HTTP receiver: it records every export request.
type collector struct {
	srv *httptest.Server

	mu       sync.Mutex
	paths    []string
	requests []*coltrace.ExportTraceServiceRequest
	raw      [][]byte
}

func newCollector(t *testing.T) *collector {
	t.Helper()
	c := &collector{}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "want a protobuf POST", http.StatusBadRequest)
			return
		}
		var req coltrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		c.paths = append(c.paths, r.URL.Path)
		c.requests = append(c.requests, &req)
		c.raw = append(c.raw, body)
		c.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		b, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
		w.Write(b)
	}))
	t.Cleanup(c.srv.Close)
	return c
}

// spans returns the names of the spans received, with the service.name of each request
// and the paths they were posted to.
func (c *collector) spans() (names []string, services []string, paths []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, req := range c.requests {
		for _, rs := range req.GetResourceSpans() {
			for _, kv := range rs.GetResource().GetAttributes() {
				if kv.GetKey() == "service.name" {
					services = append(services, kv.GetValue().GetStringValue())
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, sp := range ss.GetSpans() {
					names = append(names, sp.GetName())
				}
			}
		}
	}
	return names, services, append([]string(nil), c.paths...)
}

func env(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

// exportOne records one span through a Telemetry built with the config and shuts it down
// (which flushes the batch).
func exportOne(t *testing.T, cfg OTLPConfig, name string) {
	t.Helper()
	ctx := context.Background()
	exp, err := NewOTLPProcessor(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if exp == nil {
		t.Fatal("no exporter although one is configured")
	}
	tel, err := New(exp.Processor)
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.Tracer("test").Start(ctx, name)
	span.End()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tel.Shutdown(sctx); err != nil {
		t.Fatalf("shutdown (flushes the export): %v", err)
	}
}

func TestOTLPExportReachesTheCollector(t *testing.T) {
	for _, tt := range []struct {
		name     string
		cfg      func(url string) OTLPConfig
		wantPath string
	}{
		{"flag, base URL", func(u string) OTLPConfig { return OTLPConfig{Endpoint: u} }, "/v1/traces"},
		{"flag wins over the environment", func(u string) OTLPConfig {
			return OTLPConfig{Endpoint: u + "/", Getenv: env(map[string]string{EnvOTLPTracesEndpoint: "http://127.0.0.1:1/nowhere"})}
		}, "/v1/traces"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT", func(u string) OTLPConfig {
			return OTLPConfig{Getenv: env(map[string]string{EnvOTLPEndpoint: u})}
		}, "/v1/traces"},
		{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as is and wins", func(u string) OTLPConfig {
			return OTLPConfig{Getenv: env(map[string]string{EnvOTLPTracesEndpoint: u + "/custom/traces", EnvOTLPEndpoint: "http://127.0.0.1:1"})}
		}, "/custom/traces"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCollector(t)
			exportOne(t, tt.cfg(c.srv.URL), "dpsync.batch")
			names, services, paths := c.spans()
			if len(names) != 1 || names[0] != "dpsync.batch" {
				t.Errorf("spans: got %v, want [dpsync.batch]", names)
			}
			if len(services) == 0 || services[0] != ServiceName {
				t.Errorf("service.name: got %v, want %s", services, ServiceName)
			}
			if len(paths) == 0 || paths[0] != tt.wantPath {
				t.Errorf("path: got %v, want %s", paths, tt.wantPath)
			}
		})
	}
}

func TestOTLPOffUnlessConfigured(t *testing.T) {
	for name, cfg := range map[string]OTLPConfig{
		"nothing set":               {},
		"empty environment":         {Getenv: env(nil)},
		"OTEL_TRACES_EXPORTER=none": {Getenv: env(map[string]string{EnvTracesExporter: "none", EnvOTLPEndpoint: "http://127.0.0.1:4318"})},
	} {
		exp, err := NewOTLPProcessor(context.Background(), cfg)
		if err != nil || exp != nil {
			t.Errorf("%s: got %v, %v; want no exporter and no error", name, exp, err)
		}
	}
}

func TestOTLPBadEndpointNamesItsSourceAndHidesCredentials(t *testing.T) {
	for _, tt := range []struct {
		cfg  OTLPConfig
		want string
	}{
		{OTLPConfig{Endpoint: "collector:4318"}, "--otlp-endpoint"},
		{OTLPConfig{Endpoint: "ftp://user:hunter2@collector"}, "--otlp-endpoint"},
		{OTLPConfig{Getenv: env(map[string]string{EnvOTLPEndpoint: "grpc://collector:4317"})}, EnvOTLPEndpoint},
		{OTLPConfig{Getenv: env(map[string]string{EnvOTLPTracesEndpoint: "::"})}, EnvOTLPTracesEndpoint},
	} {
		_, err := NewOTLPProcessor(context.Background(), tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%+v: got %v, want an error naming %s without the password", tt.cfg, err, tt.want)
		}
	}
	exp, err := NewOTLPProcessor(context.Background(), OTLPConfig{Endpoint: "https://user:hunter2@collector:4318"})
	if err != nil {
		t.Fatal(err)
	}
	defer exp.Processor.Shutdown(context.Background())
	if strings.Contains(exp.Endpoint, "hunter2") || exp.Endpoint != "https://collector:4318/v1/traces" {
		t.Errorf("Endpoint: got %q, want https://collector:4318/v1/traces", exp.Endpoint)
	}
}
