package dps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

const (
	// DefaultAPIVersion is the api-version the clients send unless told otherwise.
	DefaultAPIVersion = "2021-10-01"
	// Scope is the Entra ID scope of the DPS service API.
	Scope = "https://azure-devices-provisioning.net/.default"
	// DefaultMaxRetryDelay is the MaxRetryDelay used when RetryOptions leaves it zero. azcore
	// gives up (returns the 429/503) when a Retry-After is longer than MaxRetryDelay; its own
	// default of 60 s would drop DPS's longer throttling hints, so ours is 5 minutes.
	DefaultMaxRetryDelay = 5 * time.Minute
	// DefaultRetryDelay is the first backoff step when the service sends no Retry-After
	// (DPS.md: back off with jitter from 1 s).
	DefaultRetryDelay = time.Second

	moduleName    = "dpsync/dps"
	moduleVersion = "v0.1.0"
	tracerName    = "github.com/dpsync/dpsync/internal/dps"
)

// RetryStatusCodes are the HTTP statuses the clients retry by default: 408, 429, 500, 502,
// 503 and 504. Every method is retried on them, POST included: a bulk call retried after a
// lost response can answer per-item 409201 for items the first try created (the applier
// treats that as applied after checking).
func RetryStatusCodes() []int {
	return []int{
		http.StatusRequestTimeout,
		http.StatusTooManyRequests,
		http.StatusInternalServerError,
		http.StatusBadGateway,
		http.StatusServiceUnavailable,
		http.StatusGatewayTimeout,
	}
}

// ClientOptions configure a Client. A nil *ClientOptions means all defaults.
type ClientOptions struct {
	// ClientOptions are azcore's options: Transport (swap it for tests, or give an
	// *http.Client whose TLS config trusts a custom CA), Retry, Logging, Telemetry,
	// PerCallPolicies/PerRetryPolicies, InsecureAllowCredentialWithHTTP (send credentials
	// over plain http, for tests only). Its APIVersion is the api-version sent with every
	// request (default DefaultAPIVersion). Retry defaults differ from azcore's: StatusCodes
	// RetryStatusCodes(), RetryDelay DefaultRetryDelay, MaxRetryDelay DefaultMaxRetryDelay;
	// MaxRetries keeps azcore's default of 3. TracingProvider is not used: see TracerProvider.
	// azcore's logging redacts the Authorization header, but Logging.IncludeBody would log
	// enrollment bodies, symmetric keys included: do not set it in production.
	azcore.ClientOptions

	// TracerProvider provides the OpenTelemetry tracer; nil means otel.GetTracerProvider().
	// Every operation (every page of a pager) is one client span named "dps.<Method>".
	TracerProvider trace.TracerProvider

	// Logger receives one debug record per operation (method, status, error code, duration;
	// never a secret). Nil means no logging.
	Logger *slog.Logger
}

// Client calls the DPS service API (enrollments, enrollment groups, registration states).
// It is safe for concurrent use.
type Client struct {
	endpoint   string
	apiVersion string
	pl         runtime.Pipeline
	inst       instrumentation
}

// NewClient returns a client of the DPS instance at endpoint (e.g.
// "https://myprov.azure-devices-provisioning.net") authenticating with Entra ID: cred gets
// tokens for Scope. opts may be nil.
func NewClient(endpoint string, cred azcore.TokenCredential, opts *ClientOptions) (*Client, error) {
	if cred == nil {
		return nil, errors.New("dps: credential is nil")
	}
	var allowHTTP bool
	if opts != nil {
		allowHTTP = opts.InsecureAllowCredentialWithHTTP
	}
	auth := runtime.NewBearerTokenPolicy(cred, []string{Scope}, &policy.BearerTokenOptions{InsecureAllowCredentialWithHTTP: allowHTTP})
	return newClient(endpoint, auth, opts)
}

// NewClientWithSharedKey returns a client of the DPS instance at endpoint authenticating with
// a shared access policy key. Every try of every request carries a freshly signed token
// whose "sr" is the lower-cased host (and port) of endpoint. opts may be nil.
func NewClientWithSharedKey(endpoint string, cred *SharedAccessKeyCredential, opts *ClientOptions) (*Client, error) {
	if cred == nil {
		return nil, errors.New("dps: credential is nil")
	}
	var allowHTTP bool
	if opts != nil {
		allowHTTP = opts.InsecureAllowCredentialWithHTTP
	}
	return newClient(endpoint, &sasPolicy{cred: cred, allowInsecure: allowHTTP}, opts)
}

// NewClientFromConnectionString returns a client for a DPS service connection string
// ("HostName=…;SharedAccessKeyName=…;SharedAccessKey=…"); the endpoint is "https://<HostName>".
// Tokens live DefaultTokenLifetime; use ParseConnectionString and NewClientWithSharedKey to
// choose another lifetime. opts may be nil. Errors never quote the connection string.
func NewClientFromConnectionString(connStr string, opts *ClientOptions) (*Client, error) {
	endpoint, cred, err := ParseConnectionString(connStr, nil)
	if err != nil {
		return nil, err
	}
	return NewClientWithSharedKey(endpoint, cred, opts)
}

func newClient(endpoint string, auth policy.Policy, opts *ClientOptions) (*Client, error) {
	ep, host, err := checkEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	o, apiVersion, inst := prepareOptions(opts, host)
	azc, err := azcore.NewClient(moduleName, moduleVersion, runtime.PipelineOptions{
		PerRetry:               []policy.Policy{auth},
		AllowedHeaders:         loggedHeaders,
		AllowedQueryParameters: []string{"api-version"},
	}, &o)
	if err != nil {
		return nil, fmt.Errorf("dps: %w", err)
	}
	return &Client{endpoint: ep, apiVersion: apiVersion, pl: azc.Pipeline(), inst: inst}, nil
}

// loggedHeaders are the headers azcore's logging policy may show unredacted.
var loggedHeaders = []string{"x-ms-continuation", "x-ms-max-item-count", "x-ms-item-type", "x-ms-error-code", "Retry-After", "Location"}

// checkEndpoint validates endpoint and returns it without a trailing slash, and its host.
// Its errors never quote endpoint: a connection string passed by mistake must not leak.
func checkEndpoint(endpoint string) (string, string, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", "", errors.New("dps: endpoint is not a valid URL")
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return "", "", errors.New("dps: endpoint must be an https URL (or http, for tests)")
	}
	if u.Host == "" {
		return "", "", errors.New("dps: endpoint has no host")
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", "", errors.New("dps: endpoint must not have user info, query or fragment")
	}
	return strings.TrimRight(endpoint, "/"), u.Host, nil
}

// prepareOptions copies opts and applies the DPS defaults.
func prepareOptions(opts *ClientOptions, host string) (policy.ClientOptions, string, instrumentation) {
	var o ClientOptions
	if opts != nil {
		o = *opts
	}
	co := o.ClientOptions
	apiVersion := co.APIVersion
	if apiVersion == "" {
		apiVersion = DefaultAPIVersion
	}
	// The client sets api-version itself; azcore's API version policy would need a name.
	co.APIVersion = ""
	co.Retry = withRetryDefaults(co.Retry)
	tp := o.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	inst := instrumentation{
		tracer: tp.Tracer(tracerName, trace.WithInstrumentationVersion(moduleVersion)),
		logger: logger.With("component", "dps"),
		host:   host,
	}
	return co, apiVersion, inst
}

func withRetryDefaults(r policy.RetryOptions) policy.RetryOptions {
	if r.StatusCodes == nil {
		r.StatusCodes = RetryStatusCodes()
	}
	if r.RetryDelay == 0 {
		r.RetryDelay = DefaultRetryDelay
	}
	if r.MaxRetryDelay == 0 {
		r.MaxRetryDelay = DefaultMaxRetryDelay
	}
	return r
}

// Endpoint returns the endpoint the client calls.
func (c *Client) Endpoint() string { return c.endpoint }

// request describes one HTTP exchange.
type request struct {
	op      string
	method  string
	path    string // escaped, starting with "/"
	ifMatch *azcore.ETag
	header  map[string]string
	body    any // nil: no body
	ok      []int
}

// send runs r through the pipeline and returns the response of a success status, or a
// *ServiceError for any other status.
func send(ctx context.Context, pl runtime.Pipeline, endpoint, apiVersion string, r request) (*http.Response, error) {
	req, err := runtime.NewRequest(ctx, r.method, endpoint+r.path)
	if err != nil {
		return nil, fmt.Errorf("dps: %s: %w", r.op, err)
	}
	q := req.Raw().URL.Query()
	q.Set("api-version", apiVersion)
	req.Raw().URL.RawQuery = q.Encode()
	req.Raw().Header.Set("Accept", "application/json")
	if r.ifMatch != nil {
		req.Raw().Header.Set("If-Match", string(*r.ifMatch))
	}
	for k, v := range r.header {
		req.Raw().Header.Set(k, v)
	}
	if r.body != nil {
		if err := runtime.MarshalAsJSON(req, r.body); err != nil {
			return nil, fmt.Errorf("dps: %s: encode request: %w", r.op, err)
		}
	}
	resp, err := pl.Do(req)
	if err != nil {
		return nil, fmt.Errorf("dps: %s: %w", r.op, err)
	}
	if !runtime.HasStatusCode(resp, r.ok...) {
		return nil, newServiceError(r.op, resp)
	}
	return resp, nil
}

func (c *Client) send(ctx context.Context, r request) (*http.Response, error) {
	return send(ctx, c.pl, c.endpoint, c.apiVersion, r)
}

// decode reads a JSON response body into out.
func decode(op string, resp *http.Response, out any) error {
	body, err := runtime.Payload(resp)
	if err != nil {
		return fmt.Errorf("dps: %s: read response: %w", op, err)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("dps: %s: decode response: %w", op, err)
	}
	return nil
}

func escapeID(id string) (string, error) {
	if id == "" {
		return "", ErrEmptyID
	}
	return url.PathEscape(id), nil
}

// instrumentation is the tracer and logger shared by Client and DeviceClient.
type instrumentation struct {
	tracer trace.Tracer
	logger *slog.Logger
	host   string
}

// operation is one traced client operation.
type operation struct {
	inst  *instrumentation
	op    string
	span  trace.Span
	start time.Time
	attrs []attribute.KeyValue
}

// begin starts the span of op.
func (in *instrumentation) begin(ctx context.Context, op string, attrs ...attribute.KeyValue) (context.Context, *operation) {
	attrs = append([]attribute.KeyValue{
		attribute.String("dps.operation", op),
		attribute.String("server.address", in.host),
	}, attrs...)
	ctx, span := in.tracer.Start(ctx, "dps."+op, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return ctx, &operation{inst: in, op: op, span: span, start: time.Now(), attrs: attrs}
}

// set adds attributes to the span.
func (o *operation) set(attrs ...attribute.KeyValue) {
	o.span.SetAttributes(attrs...)
	o.attrs = append(o.attrs, attrs...)
}

// end ends the span with the outcome: status is the HTTP status of a success (0 if unknown).
func (o *operation) end(status int, err error) {
	defer o.span.End()
	if err != nil {
		status = StatusCode(err)
	}
	logAttrs := []any{"op", o.op, "duration", time.Since(o.start)}
	if status != 0 {
		o.span.SetAttributes(attribute.Int("http.response.status_code", status))
		logAttrs = append(logAttrs, "status", status)
	}
	for _, a := range o.attrs {
		if a.Key == "dps.item_count" || a.Key == "dps.failed_item_count" {
			logAttrs = append(logAttrs, string(a.Key), a.Value.AsInt64())
		}
	}
	if err == nil {
		o.span.SetStatus(codes.Ok, "")
		o.inst.logger.Debug("dps call", logAttrs...)
		return
	}
	if code := ErrorCode(err); code != 0 {
		o.span.SetAttributes(attribute.Int("dps.error_code", code))
		logAttrs = append(logAttrs, "code", code)
	}
	o.span.SetAttributes(attribute.Bool("dps.transient", IsTransient(err)))
	o.span.RecordError(err)
	o.span.SetStatus(codes.Error, err.Error())
	// The error is returned to the caller, who decides whether to log it; this record only
	// says that the call failed.
	o.inst.logger.Debug("dps call failed", logAttrs...)
}
