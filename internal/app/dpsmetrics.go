package app

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/dpsync/dpsync/internal/pacer"
)

// dpsMetrics count what the worker asks of DPS: calls by operation and outcome, items per
// bulk call, and every try (what the DPS quota counts) by status, 429s included.
type dpsMetrics struct {
	calls     metric.Int64Counter
	items     metric.Int64Histogram
	tries     metric.Int64Counter
	throttled metric.Int64Counter
}

func newDPSMetrics(m metric.Meter) (*dpsMetrics, error) {
	var x dpsMetrics
	var err error
	if x.calls, err = m.Int64Counter("dpsync.dps.calls",
		metric.WithDescription("DPS calls the applier made, by operation (bulk-<mode>, put, get) and outcome (ok, the HTTP status, or transport).")); err != nil {
		return nil, err
	}
	if x.items, err = m.Int64Histogram("dpsync.dps.bulk.items",
		metric.WithDescription("Items per DPS bulk call."),
		metric.WithExplicitBucketBoundaries(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)); err != nil {
		return nil, err
	}
	if x.tries, err = m.Int64Counter("dpsync.dps.operations",
		metric.WithDescription("DPS requests sent, retries included (each counts against the DPS quota), by HTTP status or transport.")); err != nil {
		return nil, err
	}
	if x.throttled, err = m.Int64Counter("dpsync.dps.throttled",
		metric.WithDescription("DPS requests answered 429 (throttled).")); err != nil {
		return nil, err
	}
	return &x, nil
}

// afterCall is the applier's AfterCall: one logical call and its outcome.
func (x *dpsMetrics) afterCall(op string, items int, err error) {
	ctx := context.Background()
	x.calls.Add(ctx, 1, metric.WithAttributes(attribute.String("op", op), attribute.String("outcome", outcomeOf(err))))
	if len(op) > 5 && op[:5] == "bulk-" {
		x.items.Record(ctx, int64(items), metric.WithAttributes(attribute.String("op", op)))
	}
}

func outcomeOf(err error) string {
	if err == nil {
		return "ok"
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return strconv.Itoa(re.StatusCode)
	}
	return "transport"
}

// pacePolicy runs on every try of every DPS request (a PerRetry policy): it waits for the
// fleet's DPS operation budget before the request is sent and feeds the answer back to the
// pacer (429 slows it down, success lets it recover), so azcore's own retries are paced and
// counted like any other operation.
type pacePolicy struct {
	pace *pacer.Pacer
	m    *dpsMetrics
}

func (p pacePolicy) Do(req *policy.Request) (*http.Response, error) {
	if err := p.pace.Wait(req.Raw().Context(), 1); err != nil {
		return nil, err
	}
	resp, err := req.Next()
	status := "transport"
	if resp != nil {
		status = strconv.Itoa(resp.StatusCode)
	}
	ctx := context.Background()
	p.m.tries.Add(ctx, 1, metric.WithAttributes(attribute.String("status", status)))
	switch {
	case resp != nil && resp.StatusCode == http.StatusTooManyRequests:
		p.m.throttled.Add(ctx, 1)
		p.pace.OnThrottle()
	case resp != nil && resp.StatusCode < 500:
		p.pace.OnSuccess()
	}
	return resp, err
}
