package dps

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

const (
	testIDScope = "0ne00111111"
	testOpID    = "5.316aac5bdc130deb.b1e02da8-25c2-4ff5-8d5d-5e8e4e9c2c3b"
)

func newDeviceClient(t *testing.T, f *fake) *DeviceClient {
	t.Helper()
	d, err := NewDeviceClient("https://global.test", testIDScope, &DeviceClientOptions{ClientOptions: policy.ClientOptions{Transport: handlerTransport{f}}})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

const assignedBody = `{"operationId":"` + testOpID + `","status":"assigned","registrationState":{"registrationId":"my dev","createdDateTimeUtc":"2023-05-19T23:10:45.1256254Z","assignedHub":"hub-1.azure-devices.net","deviceId":"my dev","status":"assigned","substatus":"initialAssignment","lastUpdatedDateTimeUtc":"2023-05-19T23:10:45.1256254Z","etag":"IjAwIg==","symmetricKey":{"enrollmentGroupId":"line-7"}}}`

func TestRegisterPollsHonouringRetryAfter(t *testing.T) {
	tests := []struct {
		name string
		key  func(t *testing.T) string
	}{
		{"individual key", func(*testing.T) string { return testKey }},
		{"group-derived key", func(t *testing.T) string {
			k, err := DeriveDeviceKey(testKey, "my dev")
			if err != nil {
				t.Fatal(err)
			}
			return k
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := &fake{replies: []reply{
					{status: 202, header: map[string]string{"Retry-After": "3", "Location": "/x"}, body: `{"operationId":"` + testOpID + `","status":"assigning"}`},
					{status: 202, body: `{"operationId":"` + testOpID + `","status":"assigning"}`},
					{status: 200, body: assignedBody},
				}}
				d := newDeviceClient(t, f)
				key := tt.key(t)
				start := time.Now()
				resp, err := d.Register(context.Background(), "my dev", &RegisterOptions{SymmetricKey: key, Payload: []byte(`{"model":"x1"}`)})
				if err != nil {
					t.Fatal(err)
				}
				if got, want := time.Since(start), 5*time.Second; got != want {
					t.Errorf("elapsed: got %s, want %s (Retry-After 3 s, then the 2 s default)", got, want)
				}
				if resp.Status != EnrollmentStatusAssigned || resp.Polls != 2 || resp.RegistrationState == nil ||
					resp.RegistrationState.AssignedHub != "hub-1.azure-devices.net" || resp.RegistrationState.Substatus != SubstatusInitialAssignment ||
					resp.RegistrationState.SymmetricKey == nil || resp.RegistrationState.SymmetricKey.EnrollmentGroupID != "line-7" {
					t.Errorf("got %+v (state %+v)", resp, resp.RegistrationState)
				}
				reqs := f.requests()
				if len(reqs) != 3 {
					t.Fatalf("got %d requests, want 3", len(reqs))
				}
				if r := reqs[0]; r.Method != http.MethodPut || r.Path != "/0ne00111111/registrations/my%20dev/register" || !jsonEqual(t, r.Body, []byte(`{"registrationId":"my dev","payload":{"model":"x1"}}`)) {
					t.Errorf("register request: got %s %s %s", r.Method, r.Path, r.Body)
				}
				for i, r := range reqs {
					if r.Query.Get("api-version") != DefaultAPIVersion {
						t.Errorf("request %d api-version: got %q", i, r.Query.Get("api-version"))
					}
					verifySAS(t, r.Header.Get("Authorization"), "0ne00111111/registrations/my dev", "registration", key)
					if i > 0 && (r.Method != http.MethodGet || r.Path != "/0ne00111111/registrations/my%20dev/operations/"+testOpID) {
						t.Errorf("poll %d: got %s %s", i, r.Method, r.Path)
					}
				}
			})
		})
	}
}

func TestRegisterX509SendsNoAuthorization(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fake{replies: []reply{{status: 200, body: assignedBody}}}
		d := newDeviceClient(t, f)
		resp, err := d.Register(context.Background(), "my dev", nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Polls != 0 || resp.Status != EnrollmentStatusAssigned {
			t.Errorf("got polls %d status %s, want 0 assigned", resp.Polls, resp.Status)
		}
		r := f.requests()[0]
		if h := r.Header.Get("Authorization"); h != "" {
			t.Errorf("Authorization: got %q, want none (the TLS client certificate authenticates)", h)
		}
		if !jsonEqual(t, r.Body, []byte(`{"registrationId":"my dev"}`)) {
			t.Errorf("body: got %s", r.Body)
		}
	})
}

func TestRegisterOutcomes(t *testing.T) {
	tests := []struct {
		name       string
		replies    []reply
		timeout    time.Duration
		wantStatus EnrollmentStatus
		check      func(t *testing.T, err error)
	}{
		{
			name: "failed",
			replies: []reply{
				{status: 202, header: map[string]string{"Retry-After": "1"}, body: `{"operationId":"op","status":"assigning"}`},
				{status: 200, body: `{"operationId":"op","status":"failed","registrationState":{"registrationId":"my dev","status":"failed","errorCode":400209,"errorMessage":"Custom allocation failed."}}`},
			},
			wantStatus: EnrollmentStatusFailed,
			check: func(t *testing.T, err error) {
				var re *RegistrationError
				if !errors.As(err, &re) || re.ErrorCode != CodeCustomAllocationFailed || re.Message != "Custom allocation failed." {
					t.Errorf("got %v, want a *RegistrationError 400209", err)
				}
			},
		},
		{
			name:       "disabled",
			replies:    []reply{{status: 202, body: `{"operationId":"op","status":"assigning"}`}, {status: 200, body: `{"operationId":"op","status":"disabled"}`}},
			wantStatus: EnrollmentStatusDisabled,
			check: func(t *testing.T, err error) {
				var re *RegistrationError
				if !errors.As(err, &re) || re.Status != EnrollmentStatusDisabled {
					t.Errorf("got %v, want a *RegistrationError with status disabled", err)
				}
			},
		},
		{
			name:    "unknown registration",
			replies: []reply{{status: 404, body: `{"errorCode":404201,"message":"Enrollment not found."}`}},
			check: func(t *testing.T, err error) {
				if !IsNotFound(err) || ErrorCode(err) != CodeEnrollmentNotFound {
					t.Errorf("got %v, want 404201", err)
				}
			},
		},
		{
			name: "throttled poll is retried by the pipeline",
			replies: []reply{
				{status: 202, body: `{"operationId":"op","status":"assigning"}`},
				{status: 429, header: map[string]string{"Retry-After": "5"}},
				{status: 200, body: `{"operationId":"op","status":"assigned","registrationState":{"status":"assigned","assignedHub":"h"}}`},
			},
			wantStatus: EnrollmentStatusAssigned,
			check: func(t *testing.T, err error) {
				if err != nil {
					t.Errorf("got %v, want success", err)
				}
			},
		},
		{
			name:       "context ends while assigning",
			replies:    []reply{{status: 202, body: `{"operationId":"op","status":"assigning"}`}},
			timeout:    7 * time.Second,
			wantStatus: EnrollmentStatusAssigning,
			check: func(t *testing.T, err error) {
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("got %v, want DeadlineExceeded", err)
				}
			},
		},
		{
			name:       "202 without operationId",
			replies:    []reply{{status: 202, body: `{"status":"assigning"}`}},
			wantStatus: EnrollmentStatusAssigning,
			check: func(t *testing.T, err error) {
				if err == nil || !strings.Contains(err.Error(), "without an operationId") {
					t.Errorf("got %v, want an error about the missing operationId", err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := &fake{replies: tt.replies}
				d := newDeviceClient(t, f)
				ctx := context.Background()
				if tt.timeout > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, tt.timeout)
					defer cancel()
				}
				resp, err := d.Register(ctx, "my dev", &RegisterOptions{SymmetricKey: testKey})
				if resp.Status != tt.wantStatus {
					t.Errorf("status: got %q, want %q", resp.Status, tt.wantStatus)
				}
				tt.check(t, err)
			})
		})
	}
}

func TestRegisterRefusesBadInput(t *testing.T) {
	f := &fake{}
	d := newDeviceClient(t, f)
	ctx := context.Background()
	if _, err := d.Register(ctx, "", nil); !errors.Is(err, ErrEmptyID) {
		t.Errorf("empty id: got %v, want ErrEmptyID", err)
	}
	if _, err := d.Register(ctx, "a", &RegisterOptions{SymmetricKey: "not base64 %%"}); !errors.Is(err, ErrInvalidKey) || strings.Contains(err.Error(), "%%") {
		t.Errorf("bad key: got %v, want ErrInvalidKey without the key", err)
	}
	if _, err := d.Register(ctx, "a", &RegisterOptions{Payload: []byte(`{`)}); err == nil {
		t.Error("bad payload: got nil error")
	}
	if len(f.requests()) != 0 {
		t.Error("a request was sent")
	}
	if _, err := NewDeviceClient("", "", nil); err == nil {
		t.Error("empty ID scope: got nil error")
	}
	dc, err := NewDeviceClient("", "scope", nil)
	if err != nil || dc.endpoint != GlobalDeviceEndpoint {
		t.Errorf("default endpoint: got %v %v", dc, err)
	}
}

func TestGetRegistrationStatus(t *testing.T) {
	f := &fake{replies: []reply{{status: 200, body: string(exampleResponseBody(t, "RuntimeRegistration_DeviceRegistrationStatusLookup_MaximumSet_Gen", "200"))}}}
	d := newDeviceClient(t, f)
	resp, err := d.GetRegistrationStatus(context.Background(), "my dev", &GetRegistrationStatusOptions{SymmetricKey: testKey})
	if err != nil {
		t.Fatal(err)
	}
	if resp.RegistrationID == "" || resp.X509 == nil || resp.TPM == nil {
		t.Errorf("got %+v", resp.DeviceRegistrationResult)
	}
	r := f.requests()[0]
	if r.Method != http.MethodPost || r.Path != "/0ne00111111/registrations/my%20dev" || !jsonEqual(t, r.Body, []byte(`{"registrationId":"my dev"}`)) {
		t.Errorf("got %s %s %s", r.Method, r.Path, r.Body)
	}
	verifySAS(t, r.Header.Get("Authorization"), "0ne00111111/registrations/my dev", "registration", testKey)
}

func TestRetryAfterParsing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		def := 2 * time.Second
		tests := []struct {
			in   string
			want time.Duration
		}{
			{"", def},
			{"3", 3 * time.Second},
			{"0", def},
			{"-4", def},
			{"soon", def},
			{time.Now().Add(10 * time.Second).UTC().Format(http.TimeFormat), 10 * time.Second},
			{time.Now().Add(-10 * time.Second).UTC().Format(http.TimeFormat), def},
		}
		for _, tt := range tests {
			h := http.Header{}
			if tt.in != "" {
				h.Set("Retry-After", tt.in)
			}
			if got := retryAfter(h, def); got != tt.want {
				t.Errorf("retryAfter(%q): got %s, want %s", tt.in, got, tt.want)
			}
		}
	})
}

// TestRegisterX509OverTLS registers a device whose identity is the TLS client certificate
// configured in the transport; the service sees the certificate and no Authorization header.
func TestRegisterX509OverTLS(t *testing.T) {
	cert := selfSignedClientCert(t, "x509-dev-1")
	var mu sync.Mutex
	var sawCN, sawAuth string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			sawCN = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		sawAuth = r.Header.Get("Authorization")
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"operationId":"op","status":"assigned","registrationState":{"registrationId":"x509-dev-1","status":"assigned","assignedHub":"h","x509":{"certificateInfo":{"subjectName":"CN=x509-dev-1","sha1Thumbprint":"A","sha256Thumbprint":"B","issuerName":"CN=x509-dev-1","notBeforeUtc":"2023-05-19T23:10:43Z","notAfterUtc":"2024-05-19T23:10:43Z","serialNumber":"0A","version":3}}}}`)
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	base := srv.Client().Transport.(*http.Transport).Clone()
	base.TLSClientConfig.Certificates = []tls.Certificate{cert}
	hc := &http.Client{Transport: base}
	t.Cleanup(hc.CloseIdleConnections)
	d, err := NewDeviceClient(srv.URL, testIDScope, &DeviceClientOptions{ClientOptions: policy.ClientOptions{Transport: hc}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := d.Register(context.Background(), "x509-dev-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if sawCN != "x509-dev-1" || sawAuth != "" {
		t.Errorf("service saw certificate CN %q and Authorization %q, want x509-dev-1 and none", sawCN, sawAuth)
	}
	if x := resp.RegistrationState.X509; x == nil || x.CertificateInfo == nil || x.CertificateInfo.SubjectName != "CN=x509-dev-1" {
		t.Errorf("got %+v, want the certificate info", resp.RegistrationState)
	}
}

func selfSignedClientCert(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(10),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestAPIVersionOption(t *testing.T) {
	f := &fake{replies: []reply{{status: 200, body: `{"registrationId":"a"}`}}}
	c := newInProcessClient(t, f, &ClientOptions{ClientOptions: policy.ClientOptions{APIVersion: "2019-03-31"}})
	if _, err := c.GetEnrollment(context.Background(), "a", nil); err != nil {
		t.Fatal(err)
	}
	if got := f.requests()[0].Query.Get("api-version"); got != "2019-03-31" {
		t.Errorf("api-version: got %q, want 2019-03-31", got)
	}
}
