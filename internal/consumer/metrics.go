package consumer

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// Metrics are the engine's instruments. Build them with NewMetrics from the process's
// meter; the zero value is not usable, NoopMetrics records nothing.
type Metrics struct {
	eventsIn     metric.Int64Counter
	outcomes     metric.Int64Counter
	deadLetters  metric.Int64Counter
	retries      metric.Int64Counter
	latency      metric.Float64Histogram
	inFlightCall metric.Int64UpDownCounter
	stale        metric.Int64Counter
	resyncs      metric.Int64Counter
}

// NewMetrics creates the engine's instruments on m.
func NewMetrics(m metric.Meter) (*Metrics, error) {
	var x Metrics
	var err error
	if x.eventsIn, err = m.Int64Counter("dpsync.events.in", metric.WithDescription("Events received from the stream.")); err != nil {
		return nil, err
	}
	if x.outcomes, err = m.Int64Counter("dpsync.events.applied", metric.WithDescription("Events applied on DPS.")); err != nil {
		return nil, err
	}
	if x.deadLetters, err = m.Int64Counter("dpsync.dead_letters", metric.WithDescription("Events dead-lettered, by class.")); err != nil {
		return nil, err
	}
	if x.retries, err = m.Int64Counter("dpsync.retries", metric.WithDescription("Transient failures scheduled for a retry.")); err != nil {
		return nil, err
	}
	if x.latency, err = m.Float64Histogram("dpsync.event.applied.latency", metric.WithUnit("s"),
		metric.WithDescription("Time from the stream storing an event to DPS applying it (backlog wait included)."),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)); err != nil {
		return nil, err
	}
	if x.inFlightCall, err = m.Int64UpDownCounter("dpsync.batches.in_flight", metric.WithDescription("Batches being applied.")); err != nil {
		return nil, err
	}
	if x.stale, err = m.Int64Counter("dpsync.redeliveries.stale", metric.WithDescription("Redelivered copies of events already settled, acknowledged and dropped.")); err != nil {
		return nil, err
	}
	if x.resyncs, err = m.Int64Counter("dpsync.partition.resyncs", metric.WithDescription("Gaps in a partition's deliveries (a delivery went to another request): the worker gave back what it held of the partition and read it again in order.")); err != nil {
		return nil, err
	}
	return &x, nil
}

// NoopMetrics returns instruments that record nothing.
func NoopMetrics() *Metrics {
	x, _ := NewMetrics(noop.NewMeterProvider().Meter("noop"))
	return x
}

func (m *Metrics) eventIn(ctx context.Context) { m.eventsIn.Add(ctx, 1) }
func (m *Metrics) applied(ctx context.Context, d time.Duration) {
	m.outcomes.Add(ctx, 1)
	m.latency.Record(ctx, d.Seconds())
}
func (m *Metrics) deadLettered(ctx context.Context, class string) {
	m.deadLetters.Add(ctx, 1, metric.WithAttributes(attribute.String("class", class)))
}
func (m *Metrics) retried(ctx context.Context)           { m.retries.Add(ctx, 1) }
func (m *Metrics) inFlight(ctx context.Context, d int64) { m.inFlightCall.Add(ctx, d) }
func (m *Metrics) staleDropped(ctx context.Context)      { m.stale.Add(ctx, 1) }
func (m *Metrics) resync(ctx context.Context, p int) {
	m.resyncs.Add(ctx, 1, metric.WithAttributes(attribute.Int("partition", p)))
}
