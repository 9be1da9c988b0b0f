package dps_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/dpsync/dpsync/internal/dps"
)

// exampleService is a tiny stand-in for DPS, so that the examples run.
func exampleService() *httptest.Server {
	return httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		body, _ := io.ReadAll(r.Body)
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/enrollments":
			if strings.Contains(string(body), `"registrationId":"dev-2"`) {
				_, _ = io.WriteString(w, `{"errors":[{"registrationId":"dev-2","errorCode":409201,"errorStatus":"Enrollment already exists."}],"isSuccessful":false}`)
				return
			}
			_, _ = io.WriteString(w, `{"errors":[],"isSuccessful":true}`)
		case r.Method == http.MethodGet && r.URL.Path == "/enrollments/dev-1":
			_, _ = io.WriteString(w, `{"registrationId":"dev-1","attestation":{"type":"symmetricKey"},"etag":"IjEi","registrationState":{"registrationId":"dev-1","status":"unassigned"}}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"errorCode":404201,"message":"Enrollment not found."}`)
		}
	}))
}

func Example() {
	srv := exampleService()
	defer srv.Close()

	// A client of an emulator at https://127.0.0.1:<port>: the connection string's HostName
	// carries the port, and the transport trusts the emulator's CA.
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	transport := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer transport.CloseIdleConnections()
	u, _ := url.Parse(srv.URL)
	connStr := "HostName=" + u.Host + ";SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=c2VjcmV0LWtleS1mb3ItdGhlLWV4YW1wbGU="

	client, err := dps.NewClientFromConnectionString(connStr, &dps.ClientOptions{
		ClientOptions: azcore.ClientOptions{Transport: transport},
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	// Up to 10 enrollments per bulk call; failed items come back in Errors.
	res, err := client.RunBulkOperation(ctx, dps.BulkModeCreate, []dps.IndividualEnrollment{
		{RegistrationID: "dev-1", Attestation: &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey}},
		{RegistrationID: "dev-2", Attestation: &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey}},
	}, nil)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range res.Errors {
		fmt.Printf("bulk: %s failed with %d (%s)\n", e.RegistrationID, e.ErrorCode, e.ErrorStatus)
	}

	got, err := client.GetEnrollment(ctx, "dev-1", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("dev-1:", got.RegistrationState.Status, "etag", got.ETag)

	// Errors are classified without looking at strings.
	_, err = client.DeleteEnrollment(ctx, "dev-9", &dps.DeleteEnrollmentOptions{IfMatch: to(azcore.ETagAny)})
	var respErr *azcore.ResponseError
	fmt.Println("dev-9 not found:", dps.IsNotFound(err), errors.As(err, &respErr) && respErr.ErrorCode == "404201")

	// The client never refuses silently: 11 items are rejected before sending.
	_, err = client.RunBulkOperation(ctx, dps.BulkModeDelete, make([]dps.IndividualEnrollment, 11), nil)
	fmt.Println(errors.Is(err, dps.ErrBulkTooMany))

	// Output:
	// bulk: dev-2 failed with 409201 (Enrollment already exists.)
	// dev-1: unassigned etag IjEi
	// dev-9 not found: true true
	// true
}

func to[T any](v T) *T { return &v }

func ExampleDeriveDeviceKey() {
	key, err := dps.DeriveDeviceKey("8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==", "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(key)
	// Output: Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=
}

func ExampleDeviceClient_Register() {
	// A device of a symmetric-key enrollment group registers with its derived key.
	deviceKey, err := dps.DeriveDeviceKey("c2VjcmV0LWdyb3VwLWtleS1mb3ItdGhlLWV4YW1wbGU=", "sensor-42")
	if err != nil {
		log.Fatal(err)
	}
	d, err := dps.NewDeviceClient(dps.GlobalDeviceEndpoint, "0ne00111111", &dps.DeviceClientOptions{
		ClientOptions: policy.ClientOptions{Retry: policy.RetryOptions{MaxRetries: 5}},
	})
	if err != nil {
		log.Fatal(err)
	}
	_ = func(ctx context.Context) {
		res, err := d.Register(ctx, "sensor-42", &dps.RegisterOptions{SymmetricKey: deviceKey, Payload: []byte(`{"model":"x1"}`)})
		if err != nil {
			log.Print(err)
			return
		}
		fmt.Println(res.RegistrationState.AssignedHub, res.RegistrationState.DeviceID)
	}
}
