package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/dpsync/dpsync/internal/applier"
	"github.com/dpsync/dpsync/internal/consumer"
	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/telemetry"
)

// dpsConnection is the worker's way to DPS.
type dpsConnection struct {
	client      *dps.Client
	adapter     applier.DPS
	endpoint    string
	emulatorURL string
	emulatorCA  string
	emu         *emulator.Server
}

// connectDPS builds the DPS client from the options, starting the embedded emulator when
// no DPS is configured.
func connectDPS(ctx context.Context, o *Options, tel *telemetry.Telemetry, td *teardown, pace pacePolicy) (*dpsConnection, error) {
	log := o.Logger.With("component", "dps")
	conn := &dpsConnection{}
	connStr := o.DPSConnectionString
	caFile := o.DPSCAFile
	if connStr == "" && o.DPSEndpoint == "" {
		srv, err := emulator.Serve(ctx, emulator.Options{
			DataDir: filepath.Join(o.DataDir, "emulator"),
		}, emulator.ServeOptions{Addr: o.EmulatorAddr, CertFile: filepath.Join(o.DataDir, "emulator-cert.pem")})
		if err != nil {
			return nil, fmt.Errorf("embedded DPS emulator: %w", err)
		}
		td.add("embedded emulator", func(context.Context) error { return srv.Close() })
		conn.emu = srv
		conn.emulatorURL = srv.URL()
		conn.emulatorCA = srv.CAFile()
		connStr = srv.ConnectionString()
		caFile = srv.CAFile()
		log.Info("embedded DPS emulator started", "url", srv.URL(), "id_scope", srv.IDScope(), "ca_file", srv.CAFile())
	}
	transport, err := HTTPClient(caFile)
	if err != nil {
		return nil, err
	}
	copts := &dps.ClientOptions{
		ClientOptions:  azcoreOpts(transport, o.DPSTryTimeout, pace),
		TracerProvider: tel.TracerProvider(),
		Logger:         o.Logger.With("component", "dps-client"),
	}
	copts.APIVersion = o.DPSAPIVersion
	var client *dps.Client
	if connStr != "" {
		client, err = dps.NewClientFromConnectionString(connStr, copts)
	} else {
		var cred azcore.TokenCredential
		cred, err = azidentity.NewDefaultAzureCredential(nil)
		if err == nil {
			client, err = dps.NewClient(o.DPSEndpoint, cred, copts)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("dps client: %w", err)
	}
	conn.client = client
	conn.endpoint = client.Endpoint()
	conn.adapter = dpsAdapter{c: client}
	return conn, nil
}

// azcoreOpts are the worker's azcore options: the engine retries with a long budget, so
// azcore's own retries stay few and short. Each try waits for the fleet's DPS budget (pace),
// is bounded by tryTimeout, under the lease safety margin, and re-checks the partition
// fence right before it is sent (after the wait, which can be long).
func azcoreOpts(transport *http.Client, tryTimeout time.Duration, pace pacePolicy) azcore.ClientOptions {
	return azcore.ClientOptions{
		Transport: transport,
		Retry: policy.RetryOptions{MaxRetries: 2, RetryDelay: 200 * time.Millisecond, MaxRetryDelay: 5 * time.Second,
			TryTimeout: tryTimeout},
		PerRetryPolicies: []policy.Policy{pace, fencePolicy{}},
	}
}

// leaseSafetyMargin is how long before its lease expires a worker stops using it: longer
// than one DPS request (DPSTryTimeout), so a request that passed the fence check lands
// before another worker can own the partition.
func leaseSafetyMargin(o *Options) time.Duration { return o.DPSTryTimeout + time.Second }

// errFenced is returned for a request whose partition lease was lost before it was sent.
var errFenced = errors.New("partition lease lost: request not sent")

// fencePolicy refuses to send a request whose context's fence says the worker no longer
// owns the partitions it works for.
type fencePolicy struct{}

func (fencePolicy) Do(req *policy.Request) (*http.Response, error) {
	if fence := consumer.FenceFrom(req.Raw().Context()); fence != nil && !fence() {
		return nil, errFenced
	}
	return req.Next()
}

// HTTPClient returns an HTTP client for DPS trusting the system roots plus caFile (the
// emulator certificate), if given.
func HTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("dps ca file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("dps ca file %s: no PEM certificate in it", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, nil
}

// dpsAdapter gives the applier the kind-generic view of the DPS client.
type dpsAdapter struct{ c *dps.Client }

func (a dpsAdapter) Bulk(ctx context.Context, kind applier.Kind, mode dps.BulkMode, items []applier.Item) ([]applier.ItemError, error) {
	if kind == applier.KindGroup {
		groups := make([]dps.EnrollmentGroup, len(items))
		for i, it := range items {
			groups[i] = bulkGroup(mode, it.Group)
		}
		resp, err := a.c.RunBulkGroupOperation(ctx, mode, groups, nil)
		if err != nil {
			return nil, err
		}
		out := make([]applier.ItemError, len(resp.Errors))
		for i, e := range resp.Errors {
			out[i] = applier.ItemError{ID: e.EnrollmentGroupID, Code: e.ErrorCode, Status: e.ErrorStatus}
		}
		return out, nil
	}
	ens := make([]dps.IndividualEnrollment, len(items))
	for i, it := range items {
		ens[i] = bulkEnrollment(mode, it.Enrollment)
	}
	resp, err := a.c.RunBulkOperation(ctx, mode, ens, nil)
	if err != nil {
		return nil, err
	}
	out := make([]applier.ItemError, len(resp.Errors))
	for i, e := range resp.Errors {
		out[i] = applier.ItemError{ID: e.RegistrationID, Code: e.ErrorCode, Status: e.ErrorStatus}
	}
	return out, nil
}

// bulkEnrollment is what a bulk item carries: for delete only the id and etag.
func bulkEnrollment(mode dps.BulkMode, e *dps.IndividualEnrollment) dps.IndividualEnrollment {
	if mode == dps.BulkModeDelete {
		return dps.IndividualEnrollment{RegistrationID: e.RegistrationID, ETag: e.ETag}
	}
	return *e
}

func bulkGroup(mode dps.BulkMode, g *dps.EnrollmentGroup) dps.EnrollmentGroup {
	if mode == dps.BulkModeDelete {
		return dps.EnrollmentGroup{EnrollmentGroupID: g.EnrollmentGroupID, ETag: g.ETag}
	}
	return *g
}

func ifMatch(v string) *azcore.ETag {
	if v == "" {
		return nil
	}
	e := azcore.ETag(v)
	return &e
}

func (a dpsAdapter) Put(ctx context.Context, it applier.Item, match string) (string, error) {
	if it.Kind == applier.KindGroup {
		resp, err := a.c.CreateOrUpdateEnrollmentGroup(ctx, *it.Group, &dps.CreateOrUpdateEnrollmentGroupOptions{IfMatch: ifMatch(match)})
		if err != nil {
			return "", err
		}
		return resp.ETag, nil
	}
	resp, err := a.c.CreateOrUpdateEnrollment(ctx, *it.Enrollment, &dps.CreateOrUpdateEnrollmentOptions{IfMatch: ifMatch(match)})
	if err != nil {
		return "", err
	}
	return resp.ETag, nil
}

func (a dpsAdapter) Get(ctx context.Context, it applier.Item) (applier.Item, error) {
	if it.Kind == applier.KindGroup {
		resp, err := a.c.GetEnrollmentGroup(ctx, it.ID(), nil)
		if err != nil {
			return applier.Item{}, err
		}
		g := resp.EnrollmentGroup
		return applier.Item{Kind: applier.KindGroup, Group: &g}, nil
	}
	resp, err := a.c.GetEnrollment(ctx, it.ID(), nil)
	if err != nil {
		return applier.Item{}, err
	}
	e := resp.IndividualEnrollment
	return applier.Item{Kind: applier.KindEnrollment, Enrollment: &e}, nil
}

func (a dpsAdapter) Attestation(ctx context.Context, it applier.Item) (*dps.AttestationMechanism, error) {
	if it.Kind == applier.KindGroup {
		resp, err := a.c.GetEnrollmentGroupAttestationMechanism(ctx, it.ID(), nil)
		if err != nil {
			return nil, err
		}
		return &resp.AttestationMechanism, nil
	}
	resp, err := a.c.GetEnrollmentAttestationMechanism(ctx, it.ID(), nil)
	if err != nil {
		return nil, err
	}
	return &resp.AttestationMechanism, nil
}
