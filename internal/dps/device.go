package dps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// GlobalDeviceEndpoint is the runtime (device) endpoint of the public cloud.
const GlobalDeviceEndpoint = "https://global.azure-devices-provisioning.net"

// DefaultPollInterval is how long Register waits between two status polls when the service
// sends no Retry-After (DPS.md; the service allows 5 polls per 10 s per device).
const DefaultPollInterval = 2 * time.Second

// DeviceClientOptions configure a DeviceClient. A nil *DeviceClientOptions means defaults.
type DeviceClientOptions struct {
	// ClientOptions are azcore's options (see ClientOptions). For X.509 attestation, give a
	// Transport (e.g. an *http.Client) whose TLS config presents the device certificate.
	// APIVersion defaults to DefaultAPIVersion.
	azcore.ClientOptions

	// TracerProvider provides the OpenTelemetry tracer; nil means otel.GetTracerProvider().
	TracerProvider trace.TracerProvider

	// Logger receives one debug record per operation; nil means no logging.
	Logger *slog.Logger

	// PollInterval is the wait between status polls when the service sends no Retry-After;
	// zero means DefaultPollInterval.
	PollInterval time.Duration

	// TokenLifetime is the lifetime of device SAS tokens; zero means DefaultTokenLifetime.
	TokenLifetime time.Duration
}

// DeviceClient registers devices with the DPS runtime API, as a device would. It is safe
// for concurrent use.
type DeviceClient struct {
	endpoint      string
	idScope       string
	apiVersion    string
	pl            runtime.Pipeline
	inst          instrumentation
	pollInterval  time.Duration
	tokenLifetime time.Duration
}

// NewDeviceClient returns a client of the runtime API at endpoint ("" means
// GlobalDeviceEndpoint) for the DPS instance with ID scope idScope. opts may be nil.
func NewDeviceClient(endpoint, idScope string, opts *DeviceClientOptions) (*DeviceClient, error) {
	if endpoint == "" {
		endpoint = GlobalDeviceEndpoint
	}
	if idScope == "" {
		return nil, errors.New("dps: ID scope is empty")
	}
	ep, host, err := checkEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	var o DeviceClientOptions
	if opts != nil {
		o = *opts
	}
	if o.PollInterval < 0 || o.TokenLifetime < 0 {
		return nil, errors.New("dps: PollInterval and TokenLifetime must not be negative")
	}
	if o.PollInterval == 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.TokenLifetime == 0 {
		o.TokenLifetime = DefaultTokenLifetime
	}
	co, apiVersion, inst := prepareOptions(&ClientOptions{ClientOptions: o.ClientOptions, TracerProvider: o.TracerProvider, Logger: o.Logger}, host)
	azc, err := azcore.NewClient(moduleName, moduleVersion, runtime.PipelineOptions{
		PerRetry:               []policy.Policy{&deviceSASPolicy{allowInsecure: o.InsecureAllowCredentialWithHTTP}},
		AllowedHeaders:         loggedHeaders,
		AllowedQueryParameters: []string{"api-version"},
	}, &co)
	if err != nil {
		return nil, fmt.Errorf("dps: %w", err)
	}
	return &DeviceClient{
		endpoint: ep, idScope: idScope, apiVersion: apiVersion, pl: azc.Pipeline(), inst: inst,
		pollInterval: o.PollInterval, tokenLifetime: o.TokenLifetime,
	}, nil
}

// RegisterOptions are the options of Register.
type RegisterOptions struct {
	// SymmetricKey is the device key (base64): the key of an individual enrollment, or the
	// key DeriveDeviceKey computes from a group key. Every request then carries a fresh SAS
	// token (sr "{idScope}/registrations/{registrationId}", skn "registration"). Empty means
	// X.509: the transport's TLS client certificate authenticates the device.
	SymmetricKey string
	// Payload is a custom JSON payload passed to custom allocation; nil sends none.
	Payload json.RawMessage
}

// RegisterResponse is the final status of a registration operation: Status assigned, with
// RegistrationState naming the assigned hub and device id.
type RegisterResponse struct {
	RegistrationOperationStatus
	// Polls is the number of status requests made after the register request.
	Polls int
}

// Register registers device registrationID: PUT /{idScope}/registrations/{id}/register, then
// GET …/operations/{operationId} every Retry-After (default PollInterval) until the status is
// assigned, failed or disabled, or ctx ends. On failed or disabled it returns the response
// together with a *RegistrationError. Throttling (429) and 5xx answers are retried by the
// pipeline; other failures are *ServiceError (unknown registration: 404201, IsNotFound).
func (d *DeviceClient) Register(ctx context.Context, registrationID string, opts *RegisterOptions) (RegisterResponse, error) {
	var o RegisterOptions
	if opts != nil {
		o = *opts
	}
	ctx, span := d.inst.begin(ctx, "Register", attribute.Bool("dps.symmetric_key", o.SymmetricKey != ""))
	out, status, err := d.register(ctx, registrationID, o)
	span.set(attribute.Int("dps.polls", out.Polls))
	if out.Status != "" {
		span.set(attribute.String("dps.registration_status", string(out.Status)))
	}
	span.end(status, err)
	return out, err
}

func (d *DeviceClient) register(ctx context.Context, registrationID string, o RegisterOptions) (RegisterResponse, int, error) {
	const op = "Register"
	var out RegisterResponse
	if registrationID == "" {
		return out, 0, fmt.Errorf("dps: %s: %w", op, ErrEmptyID)
	}
	if o.Payload != nil && !json.Valid(o.Payload) {
		return out, 0, fmt.Errorf("dps: %s: payload is not valid JSON", op)
	}
	ctx, err := d.withAuth(ctx, registrationID, o.SymmetricKey)
	if err != nil {
		return out, 0, fmt.Errorf("dps: %s: %w", op, err)
	}
	base := "/" + url.PathEscape(d.idScope) + "/registrations/" + url.PathEscape(registrationID)
	resp, err := send(ctx, d.pl, d.endpoint, d.apiVersion, request{
		op: op, method: http.MethodPut, path: base + "/register",
		body: DeviceRegistration{RegistrationID: registrationID, Payload: o.Payload},
		ok:   []int{http.StatusOK, http.StatusAccepted},
	})
	if err != nil {
		return out, 0, err
	}
	if err := decode(op, resp, &out.RegistrationOperationStatus); err != nil {
		return out, resp.StatusCode, err
	}
	for !isTerminal(operationStatus(out.RegistrationOperationStatus)) {
		if out.OperationID == "" {
			return out, resp.StatusCode, fmt.Errorf("dps: %s: the service sent status %q without an operationId", op, operationStatus(out.RegistrationOperationStatus))
		}
		wait := retryAfter(resp.Header, d.pollInterval)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return out, resp.StatusCode, fmt.Errorf("dps: %s: waiting for operation %s: %w", op, out.OperationID, ctx.Err())
		case <-t.C:
		}
		out.Polls++
		resp, err = send(ctx, d.pl, d.endpoint, d.apiVersion, request{
			op: op, method: http.MethodGet, path: base + "/operations/" + url.PathEscape(out.OperationID),
			ok: []int{http.StatusOK, http.StatusAccepted},
		})
		if err != nil {
			return out, 0, err
		}
		var st RegistrationOperationStatus
		if err := decode(op, resp, &st); err != nil {
			return out, resp.StatusCode, err
		}
		if st.OperationID == "" {
			st.OperationID = out.OperationID
		}
		out.RegistrationOperationStatus = st
	}
	out.Status = operationStatus(out.RegistrationOperationStatus)
	if out.Status != EnrollmentStatusAssigned {
		re := &RegistrationError{RegistrationID: registrationID, Status: out.Status}
		if rs := out.RegistrationState; rs != nil {
			if rs.ErrorCode != nil {
				re.ErrorCode = *rs.ErrorCode
			}
			re.Message = rs.ErrorMessage
		}
		return out, resp.StatusCode, re
	}
	return out, resp.StatusCode, nil
}

// GetRegistrationStatusOptions are the options of GetRegistrationStatus.
type GetRegistrationStatusOptions struct {
	// SymmetricKey is the device key (see RegisterOptions); empty means X.509.
	SymmetricKey string
}

// GetRegistrationStatusResponse is the registration state of a device.
type GetRegistrationStatusResponse struct {
	DeviceRegistrationResult
}

// GetRegistrationStatus reads the registration state of device registrationID as the device
// sees it (POST /{idScope}/registrations/{id}).
func (d *DeviceClient) GetRegistrationStatus(ctx context.Context, registrationID string, opts *GetRegistrationStatusOptions) (GetRegistrationStatusResponse, error) {
	const op = "GetRegistrationStatus"
	var o GetRegistrationStatusOptions
	if opts != nil {
		o = *opts
	}
	ctx, span := d.inst.begin(ctx, op)
	var out GetRegistrationStatusResponse
	status, err := func() (int, error) {
		if registrationID == "" {
			return 0, fmt.Errorf("dps: %s: %w", op, ErrEmptyID)
		}
		ctx, err := d.withAuth(ctx, registrationID, o.SymmetricKey)
		if err != nil {
			return 0, fmt.Errorf("dps: %s: %w", op, err)
		}
		resp, err := send(ctx, d.pl, d.endpoint, d.apiVersion, request{
			op: op, method: http.MethodPost, path: "/" + url.PathEscape(d.idScope) + "/registrations/" + url.PathEscape(registrationID),
			body: DeviceRegistration{RegistrationID: registrationID}, ok: []int{http.StatusOK},
		})
		if err != nil {
			return 0, err
		}
		return resp.StatusCode, decode(op, resp, &out.DeviceRegistrationResult)
	}()
	span.end(status, err)
	if err != nil {
		return GetRegistrationStatusResponse{}, err
	}
	return out, nil
}

// operationStatus is the status of st, taken from the registration state when the
// operation itself carries none.
func operationStatus(st RegistrationOperationStatus) EnrollmentStatus {
	if st.Status == "" && st.RegistrationState != nil {
		return st.RegistrationState.Status
	}
	return st.Status
}

func isTerminal(s EnrollmentStatus) bool {
	switch s {
	case EnrollmentStatusAssigned, EnrollmentStatusFailed, EnrollmentStatusDisabled:
		return true
	}
	return false
}

// retryAfter returns the wait a Retry-After header asks for (seconds or an HTTP date), or def.
func retryAfter(h http.Header, def time.Duration) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return def
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n <= 0 {
			return def
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return def
}

// deviceAuth is what the device SAS policy needs to sign the requests of one call.
type deviceAuth struct {
	resource string
	key      []byte
	lifetime time.Duration
}

type deviceAuthKey struct{}

// withAuth returns ctx carrying the signing key of registrationID, or ctx unchanged for X.509.
func (d *DeviceClient) withAuth(ctx context.Context, registrationID, key string) (context.Context, error) {
	if key == "" {
		return ctx, nil
	}
	k, err := decodeKey(key)
	if err != nil {
		return nil, fmt.Errorf("device key: %w", err)
	}
	return context.WithValue(ctx, deviceAuthKey{}, &deviceAuth{
		resource: DeviceRegistrationResource(d.idScope, registrationID),
		key:      k,
		lifetime: d.tokenLifetime,
	}), nil
}

// deviceSASPolicy signs every try of a device request with a fresh device SAS token.
type deviceSASPolicy struct{ allowInsecure bool }

// Do implements policy.Policy.
func (p *deviceSASPolicy) Do(req *policy.Request) (*http.Response, error) {
	a, ok := req.Raw().Context().Value(deviceAuthKey{}).(*deviceAuth)
	if ok {
		if s := req.Raw().URL.Scheme; s != "https" && !p.allowInsecure {
			return nil, nonRetriableError{errors.New("dps: refusing to send a device SAS token over " + s + "; use https or set InsecureAllowCredentialWithHTTP")}
		}
		req.Raw().Header.Set("Authorization", BuildSASToken(a.resource, DeviceKeyName, a.key, time.Now().Add(a.lifetime)))
	}
	return req.Next()
}
