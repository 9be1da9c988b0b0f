// Package telemetry sets up OpenTelemetry for a worker: a meter provider exported to
// Prometheus (served on /metrics) and a tracer provider, and carries trace context in NATS
// headers.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Telemetry holds a worker's providers. Each worker (and each test) gets its own: nothing is
// registered globally.
type Telemetry struct {
	registry *prometheus.Registry
	meters   *sdkmetric.MeterProvider
	tracers  *sdktrace.TracerProvider
}

// New creates the providers. Spans are recorded only when a span processor (an exporter)
// is given: without one they would cost time and go nowhere. With one, every batch is
// sampled; its span links the producers' traces (W3C traceparent from the NATS headers)
// and parents the DPS client's spans.
func New(processors ...sdktrace.SpanProcessor) (*Telemetry, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	sampler := sdktrace.NeverSample()
	if len(processors) > 0 {
		sampler = sdktrace.AlwaysSample()
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithSampler(sampler), sdktrace.WithResource(serviceResource())}
	for _, p := range processors {
		opts = append(opts, sdktrace.WithSpanProcessor(p))
	}
	return &Telemetry{
		registry: reg,
		meters:   sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp)),
		tracers:  sdktrace.NewTracerProvider(opts...),
	}, nil
}

// ServiceName is the service.name of the worker's spans unless OTEL_SERVICE_NAME (or
// service.name in OTEL_RESOURCE_ATTRIBUTES) names another.
const ServiceName = "dpsync-worker"

// serviceResource describes the worker: service.name, the SDK, and what the standard
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES variables add (they win).
func serviceResource() *resource.Resource {
	res, err := resource.New(context.Background(),
		resource.WithTelemetrySDK(),
		resource.WithAttributes(attribute.String("service.name", ServiceName)),
		resource.WithFromEnv(),
	)
	if err != nil && res == nil {
		return resource.Default()
	}
	return res // a malformed OTEL_RESOURCE_ATTRIBUTES leaves out only what it could not read
}

// Meter returns a meter for the named component.
func (t *Telemetry) Meter(name string) metric.Meter { return t.meters.Meter(name) }

// TracerProvider returns the worker's tracer provider.
func (t *Telemetry) TracerProvider() trace.TracerProvider { return t.tracers }

// Tracer returns a tracer for the named component.
func (t *Telemetry) Tracer(name string) trace.Tracer { return t.tracers.Tracer(name) }

// Handler serves the Prometheus exposition of every metric.
func (t *Telemetry) Handler() http.Handler {
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{})
}

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	return errors.Join(t.meters.Shutdown(ctx), t.tracers.Shutdown(ctx))
}

// HeaderCarrier adapts NATS headers to OpenTelemetry's propagation.
type HeaderCarrier nats.Header

// Get implements propagation.TextMapCarrier.
func (c HeaderCarrier) Get(k string) string { return nats.Header(c).Get(k) }

// Set implements propagation.TextMapCarrier.
func (c HeaderCarrier) Set(k, v string) { nats.Header(c).Set(k, v) }

// Keys implements propagation.TextMapCarrier.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Inject writes ctx's trace context (W3C traceparent) into h.
func Inject(ctx context.Context, h nats.Header) {
	propagation.TraceContext{}.Inject(ctx, HeaderCarrier(h))
}

// Extract reads a W3C traceparent from h.
func Extract(ctx context.Context, h nats.Header) context.Context {
	return propagation.TraceContext{}.Extract(ctx, HeaderCarrier(h))
}
