package telemetry

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// The standard OpenTelemetry environment variables OTLPConfig honours.
const (
	EnvOTLPEndpoint       = "OTEL_EXPORTER_OTLP_ENDPOINT"        // base URL; /v1/traces is appended
	EnvOTLPTracesEndpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" // the traces URL, used as is
	EnvTracesExporter     = "OTEL_TRACES_EXPORTER"               // "none" turns export off
)

// OTLPConfig says where a worker exports its spans over OTLP/HTTP (protobuf).
type OTLPConfig struct {
	// Endpoint is the collector's base URL, e.g. "http://otel-collector:4318": spans go to
	// <Endpoint>/v1/traces. A URL with a path is used as is. It takes precedence over the
	// environment. "http" sends in plain text, "https" over TLS.
	Endpoint string
	// Getenv reads the environment (default: nothing is set). Without Endpoint,
	// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then OTEL_EXPORTER_OTLP_ENDPOINT is used;
	// OTEL_TRACES_EXPORTER=none turns export off. The exporter itself reads the other
	// OTEL_EXPORTER_OTLP_* variables (headers, timeout, compression, certificates) from the
	// process environment.
	Getenv func(string) string
}

// OTLPExporter is a configured span export.
type OTLPExporter struct {
	// Processor batches spans to the exporter; hand it to New. The tracer provider's
	// Shutdown flushes it.
	Processor sdktrace.SpanProcessor
	// Endpoint is the traces URL spans go to, without user info (safe to log).
	Endpoint string
}

// NewOTLPProcessor returns the span export cfg describes, or nil when none is configured
// (no span is then recorded, see New). It does not connect: export errors are reported by
// the OpenTelemetry error handler and never stop the worker.
func NewOTLPProcessor(ctx context.Context, cfg OTLPConfig) (*OTLPExporter, error) {
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	endpoint, source := strings.TrimSpace(cfg.Endpoint), "--otlp-endpoint"
	if endpoint == "" && strings.EqualFold(strings.TrimSpace(getenv(EnvTracesExporter)), "none") {
		return nil, nil
	}
	asIs := false
	if endpoint == "" {
		if v := strings.TrimSpace(getenv(EnvOTLPTracesEndpoint)); v != "" {
			endpoint, source, asIs = v, EnvOTLPTracesEndpoint, true
		} else if v := strings.TrimSpace(getenv(EnvOTLPEndpoint)); v != "" {
			endpoint, source = v, EnvOTLPEndpoint
		}
	}
	if endpoint == "" {
		return nil, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%s: %q is not an http:// or https:// URL like http://otel-collector:4318", source, redactUserInfo(endpoint))
	}
	if !asIs && (u.Path == "" || u.Path == "/") {
		u.Path = "/v1/traces"
	}
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(u.String()))
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	u.User = nil
	return &OTLPExporter{Processor: sdktrace.NewBatchSpanProcessor(exp), Endpoint: u.String()}, nil
}

// redactUserInfo drops user:password@ from a URL-like string.
func redactUserInfo(s string) string {
	rest := s
	prefix := ""
	if i := strings.Index(s, "://"); i >= 0 {
		prefix, rest = s[:i+3], s[i+3:]
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		return prefix + "[REDACTED]" + rest[at:]
	}
	return s
}
