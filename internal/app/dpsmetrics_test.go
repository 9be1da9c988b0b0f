package app

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/dpsync/dpsync/internal/pacer"
)

// unpaced is a pace policy with no budget and metrics that record nothing.
func unpaced(t *testing.T) pacePolicy {
	t.Helper()
	p, err := pacer.New(pacer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := newDPSMetrics(noop.NewMeterProvider().Meter("test"))
	if err != nil {
		t.Fatal(err)
	}
	return pacePolicy{pace: p, m: m}
}

// TestPacePolicyCountsEveryTry: azcore retries a throttled request by itself; each try is
// a DPS operation, so each must go through the pacer and each 429 must reach it.
func TestPacePolicyCountsEveryTry(t *testing.T) {
	var served atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if served.Add(1) <= 2 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	p, err := pacer.New(pacer.Options{Budget: 600_000})
	if err != nil {
		t.Fatal(err)
	}
	reader := sdkmetric.NewManualReader()
	m, err := newDPSMetrics(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test"))
	if err != nil {
		t.Fatal(err)
	}
	pl := runtime.NewPipeline("test", "v0", runtime.PipelineOptions{}, &policy.ClientOptions{
		Retry:            policy.RetryOptions{MaxRetries: 2, RetryDelay: time.Millisecond, MaxRetryDelay: time.Millisecond},
		PerRetryPolicies: []policy.Policy{pacePolicy{pace: p, m: m}},
	})
	req, err := runtime.NewRequest(context.Background(), http.MethodGet, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := pl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("got status %d, want 200 after two 429s", resp.StatusCode)
	}
	if got := p.Throttles(); got != 2 {
		t.Fatalf("429s reported to the pacer: got %d, want 2", got)
	}
	if p.Factor() >= 1 {
		t.Fatalf("pacer factor %v after 429s, want < 1", p.Factor())
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			if sum, ok := mt.Data.(metricdata.Sum[int64]); ok {
				for _, dp := range sum.DataPoints {
					k := mt.Name
					if v, ok := dp.Attributes.Value("status"); ok {
						k += "/" + v.AsString()
					}
					got[k] += dp.Value
				}
			}
		}
	}
	want := map[string]int64{"dpsync.dps.operations/429": 2, "dpsync.dps.operations/200": 1, "dpsync.dps.throttled": 2}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
}
