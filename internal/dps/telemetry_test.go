package dps

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func spanAttrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, a := range s.Attributes() {
		m[a.Key] = a.Value
	}
	return m
}

func TestOneSpanPerOperation(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	f := &fake{route: func(r *http.Request, _ []byte) reply {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/enrollments":
			return reply{status: 200, body: `{"errors":[{"registrationId":"a","errorCode":409201,"errorStatus":"Enrollment already exists."}],"isSuccessful":false}`}
		case r.URL.Path == "/enrollments/query":
			if r.Header.Get("x-ms-continuation") == "" {
				return reply{status: 200, header: map[string]string{"x-ms-continuation": "t"}, body: `[{"registrationId":"a"}]`}
			}
			return reply{status: 200, body: `[]`}
		}
		return reply{status: 404, body: `{"errorCode":404201,"message":"Enrollment not found."}`}
	}}
	c, _ := newTLSClient(t, f, &ClientOptions{TracerProvider: tp})
	ctx := context.Background()
	if _, err := c.RunBulkOperation(ctx, BulkModeCreate, []IndividualEnrollment{symKeyEnrollment("a"), symKeyEnrollment("b")}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetEnrollment(ctx, "missing", nil); !IsNotFound(err) {
		t.Fatalf("got %v, want not found", err)
	}
	pager := c.NewEnrollmentQueryPager(nil)
	for pager.More() {
		if _, err := pager.NextPage(ctx); err != nil {
			t.Fatal(err)
		}
	}
	spans := rec.Ended()
	var names []string
	for _, s := range spans {
		names = append(names, s.Name())
	}
	if got, want := strings.Join(names, ","), "dps.RunBulkOperation,dps.GetEnrollment,dps.QueryEnrollments,dps.QueryEnrollments"; got != want {
		t.Fatalf("spans: got %s, want %s", got, want)
	}

	bulk := spans[0]
	a := spanAttrs(bulk)
	if bulk.SpanKind() != trace.SpanKindClient || bulk.Status().Code != codes.Ok {
		t.Errorf("bulk span: kind %v status %v, want client ok", bulk.SpanKind(), bulk.Status())
	}
	for k, want := range map[attribute.Key]any{"dps.operation": "RunBulkOperation", "dps.item_count": int64(2), "dps.failed_item_count": int64(1), "http.response.status_code": int64(200), "dps.bulk_mode": "create"} {
		if got := a[k].AsInterface(); got != want {
			t.Errorf("bulk span %s: got %v, want %v", k, got, want)
		}
	}

	get := spans[1]
	a = spanAttrs(get)
	if get.Status().Code != codes.Error {
		t.Errorf("get span status: got %v, want error", get.Status())
	}
	if a["dps.error_code"].AsInt64() != 404201 || a["http.response.status_code"].AsInt64() != 404 {
		t.Errorf("get span: got code %v status %v, want 404201 404", a["dps.error_code"], a["http.response.status_code"])
	}
	if a := spanAttrs(spans[2]); a["dps.item_count"].AsInt64() != 1 || !a["dps.more"].AsBool() {
		t.Errorf("first page span: got %v", a)
	}

	// No span carries a secret.
	for _, s := range spans {
		var all []string
		for _, kv := range s.Attributes() {
			all = append(all, kv.Value.Emit())
		}
		for _, e := range s.Events() {
			for _, kv := range e.Attributes {
				all = append(all, kv.Value.Emit())
			}
		}
		all = append(all, s.Status().Description)
		for _, v := range all {
			if strings.Contains(v, "SharedAccessSignature") || strings.Contains(v, "sig=") || strings.Contains(v, strings.TrimRight(testKey, "=")) {
				t.Errorf("span %s carries a secret: %q", s.Name(), v)
			}
		}
	}
}

// fakeTokenCredential hands out a fixed token and records the scopes asked for.
type fakeTokenCredential struct {
	mu     sync.Mutex
	scopes [][]string
}

func (f *fakeTokenCredential) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scopes = append(f.scopes, o.Scopes)
	return azcore.AccessToken{Token: "entra-token-123", ExpiresOn: timeNowPlusHour()}, nil
}

func TestEntraIDCredential(t *testing.T) {
	f := &fake{replies: []reply{{status: 200, body: `{"registrationId":"a","attestation":{"type":"symmetricKey"}}`}}}
	srv := newTLSServer(t, f)
	cred := &fakeTokenCredential{}
	c, err := NewClient(srv.URL, cred, &ClientOptions{ClientOptions: policy.ClientOptions{Transport: srv.Client()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetEnrollment(context.Background(), "a", nil); err != nil {
		t.Fatal(err)
	}
	r := f.requests()[0]
	if got := r.Header.Get("Authorization"); got != "Bearer entra-token-123" {
		t.Errorf("Authorization: got %q, want the bearer token", got)
	}
	if len(cred.scopes) == 0 || len(cred.scopes[0]) != 1 || cred.scopes[0][0] != Scope {
		t.Errorf("scopes: got %v, want [%s]", cred.scopes, Scope)
	}

	// Bearer tokens are not sent over plain http unless allowed.
	hc, err := NewClient("http://dps.test", cred, &ClientOptions{ClientOptions: policy.ClientOptions{Transport: handlerTransport{f}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hc.GetEnrollment(context.Background(), "a", nil); err == nil {
		t.Error("bearer over http: got nil error")
	}
	if _, err := NewClient(srv.URL, nil, nil); err == nil {
		t.Error("nil credential: got nil error")
	}
}
