package dps

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	azlog "github.com/Azure/azure-sdk-for-go/sdk/azcore/log"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestNoSecretLeaks drives the clients with a wrong key, bad connection strings and failing
// calls, and checks that no key, signature, token or connection string appears in any error,
// in the slog output, in azcore's own log or in a span.
func TestNoSecretLeaks(t *testing.T) {
	const (
		rightKey = "cmlnaHQta2V5LXRoYXQtdGhlLXNlcnZpY2UtZXhwZWN0cy0xMjM0NTY3ODkw"
		wrongKey = "d3Jvbmcta2V5LW9mLXRoZS1jbGllbnQtYWJjZGVmZ2hpamtsbW5vcHFyc3Q="
	)
	var secrets []string
	addSecret := func(s string) {
		if s != "" {
			secrets = append(secrets, s, strings.TrimRight(s, "="), url.QueryEscape(s))
		}
	}
	for _, k := range []string{rightKey, wrongKey} {
		addSecret(k)
		raw, _ := base64.StdEncoding.DecodeString(k)
		addSecret(string(raw))
	}

	// The fake service checks signatures against rightKey, answers 401 otherwise, and
	// records every signature it saw.
	var sigMu sync.Mutex
	var sigs []string
	f := &fake{route: func(r *http.Request, _ []byte) reply {
		auth := r.Header.Get("Authorization")
		sigMu.Lock()
		sigs = append(sigs, auth)
		if i := strings.Index(auth, "sig="); i >= 0 {
			sigs = append(sigs, strings.SplitN(auth[i+4:], "&", 2)[0])
		}
		sigMu.Unlock()
		if strings.Contains(r.URL.Path, "boom") {
			return reply{status: 500, body: `{"errorCode":500000,"message":"Internal error"}`}
		}
		return reply{status: 401, body: `{"errorCode":401002,"trackingId":"t","message":"Unauthorized"}`}
	}}
	srv := newTLSServer(t, f)
	u, _ := url.Parse(srv.URL)

	var logs syncBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var azlogs syncBuffer
	azlog.SetListener(func(ev azlog.Event, msg string) { fmt.Fprintf(&azlogs, "%s: %s\n", ev, msg) })
	t.Cleanup(func() { azlog.SetListener(nil) })
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	opts := &ClientOptions{
		ClientOptions: policy.ClientOptions{
			Transport: srv.Client(),
			Retry:     policy.RetryOptions{RetryDelay: 1, MaxRetryDelay: 1},
			Logging:   policy.LogOptions{IncludeBody: true},
		},
		Logger:         logger,
		TracerProvider: tp,
	}

	var outputs []string
	record := func(what string, err error) {
		if err == nil {
			t.Errorf("%s: got nil error, want one", what)
			return
		}
		outputs = append(outputs, err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err))
	}
	ctx := context.Background()

	// A wrong key: every call is refused.
	wrongConn := "HostName=" + u.Host + ";SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=" + wrongKey
	addSecret(wrongConn)
	c, err := NewClientFromConnectionString(wrongConn, opts)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.GetEnrollment(ctx, "dev-1", nil)
	record("wrong key get", err)
	_, err = c.RunBulkOperation(ctx, BulkModeCreate, []IndividualEnrollment{symKeyEnrollment("a")}, nil)
	record("wrong key bulk", err)
	_, err = c.NewEnrollmentQueryPager(nil).NextPage(ctx)
	record("wrong key query", err)
	_, err = c.GetEnrollment(ctx, "boom", nil)
	record("500 after retries", err)

	// Bad connection strings.
	for _, bad := range []string{
		"HostName=" + u.Host + ";SharedAccessKeyName=owner;SharedAccessKey=" + rightKey[:17] + "*" + rightKey[18:],
		"HostName=" + u.Host + ";SharedAccessKeyName=owner;" + rightKey,
		"HostName=" + u.Host + ";SharedAccessKeyName=owner;" + wrongKey,
		"HostName=https://" + u.Host + ";SharedAccessKeyName=owner;SharedAccessKey=" + rightKey,
		"SharedAccessKeyName=owner;SharedAccessKey=" + rightKey,
		rightKey,
		"HostName=" + u.Host + ";SharedAccessKeyName=owner;SharedAccessKey=" + rightKey + ";Extra=" + wrongKey,
	} {
		addSecret(bad)
		_, err := NewClientFromConnectionString(bad, opts)
		record("bad connection string", err)
	}

	// A connection string passed where an endpoint belongs.
	rightConn := "HostName=" + u.Host + ";SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=" + rightKey
	addSecret(rightConn)
	_, err = NewClient(rightConn, &fakeTokenCredential{}, opts)
	record("connection string as endpoint (Entra)", err)
	_, err = NewClientWithSharedKey(rightConn, &SharedAccessKeyCredential{}, opts)
	record("connection string as endpoint (shared key)", err)
	_, err = NewDeviceClient(rightConn, "scope", nil)
	record("connection string as device endpoint", err)
	_, err = NewDeviceClient("https://"+rightConn, "scope", nil)
	record("connection string as device endpoint with scheme", err)

	// A failing transport (server gone).
	down := newTLSServer(t, f)
	downURL := down.URL
	down.Close()
	cred, err := NewSharedAccessKeyCredential("owner", rightKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := NewClientWithSharedKey(downURL, cred, opts)
	if err != nil {
		t.Fatal(err)
	}
	_, err = dc.DeleteEnrollment(ctx, "dev-1", nil)
	record("server down", err)

	// A device with a wrong key, and keys that are not base64.
	d, err := NewDeviceClient(srv.URL, "0ne00111111", &DeviceClientOptions{ClientOptions: opts.ClientOptions, Logger: logger, TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Register(ctx, "dev-1", &RegisterOptions{SymmetricKey: wrongKey})
	record("device wrong key", err)
	_, err = d.Register(ctx, "dev-1", &RegisterOptions{SymmetricKey: "%" + rightKey})
	record("device bad key", err)
	_, err = DeriveDeviceKey("%"+rightKey, "dev-1")
	record("derive bad key", err)
	err = cred.SetKey(wrongKey + "!")
	record("SetKey bad key", err)

	sigMu.Lock()
	for _, s := range sigs {
		addSecret(s)
	}
	if len(sigs) == 0 {
		t.Fatal("the fake service saw no signature; the test checks nothing")
	}
	sigMu.Unlock()

	outputs = append(outputs, logs.String(), azlogs.String(), fmt.Sprintf("%v %+v %#v", cred, cred, cred))
	for _, s := range rec.Ended() {
		for _, kv := range s.Attributes() {
			outputs = append(outputs, kv.Value.Emit())
		}
		for _, e := range s.Events() {
			for _, kv := range e.Attributes {
				outputs = append(outputs, kv.Value.Emit())
			}
		}
		outputs = append(outputs, s.Status().Description)
	}
	if !strings.Contains(logs.String(), `"op":"GetEnrollment"`) || !strings.Contains(azlogs.String(), "Authorization") {
		t.Fatalf("logs were not captured; the test checks nothing:\nslog: %s\nazcore: %s", logs.String(), azlogs.String())
	}
	for _, out := range outputs {
		for _, s := range secrets {
			if len(s) >= 8 && strings.Contains(out, s) {
				t.Errorf("output leaks a secret %q…:\n%s", s[:8], out)
			}
		}
		if strings.Contains(out, "SharedAccessSignature sr=") || strings.Contains(out, "&sig=") {
			t.Errorf("output holds a SAS token:\n%s", out)
		}
	}
}
