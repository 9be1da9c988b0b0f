package app

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/event"
	"github.com/dpsync/dpsync/internal/telemetry"
)

// The producer's trace context travels in the NATS headers; the worker's batch span links
// to it and the DPS call is a child of the batch span.
func TestTraceContextLinksProducerToDPSCall(t *testing.T) {
	s := newStack(t, emulator.Options{})
	rec := tracetest.NewSpanRecorder()
	s.worker(func(o *Options) { o.SpanProcessors = []sdktrace.SpanProcessor{rec} })

	producer := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	ctx, span := producer.Tracer("erp").Start(context.Background(), "erp.device-built")
	ev := event.NewEnrollment(dps.BulkModeCreate, tagged("traced-1", 1))
	b, err := ev.Encode()
	if err != nil {
		t.Fatal(err)
	}
	msg := &nats.Msg{Subject: ev.StreamSubject(event.SubjectPrefix), Data: b, Header: nats.Header{}}
	telemetry.Inject(ctx, msg.Header)
	span.End()
	if _, err := s.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	s.settle(20 * time.Second)

	want := span.SpanContext().TraceID()
	var batch sdktrace.ReadOnlySpan
	for _, sp := range rec.Ended() {
		if sp.Name() != "dpsync.batch" {
			continue
		}
		for _, l := range sp.Links() {
			if l.SpanContext.TraceID() == want {
				batch = sp
			}
		}
	}
	if batch == nil {
		t.Fatalf("no dpsync.batch span links the producer's trace %s (%d spans recorded)", want, len(rec.Ended()))
	}
	for _, sp := range rec.Ended() {
		if sp.Parent().SpanID() == batch.SpanContext().SpanID() && sp.Name() == "dps.RunBulkOperation" {
			return
		}
	}
	t.Fatal("no dps.RunBulkOperation span is a child of the batch span")
}
