package dps_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/emulator/emulatortest"
)

// These tests run every client operation end to end against the emulator over HTTPS: the
// client and the emulator are written separately and must agree on the wire.

func newE2E(t *testing.T, opts emulator.Options) (*emulator.Server, *dps.Client) {
	t.Helper()
	srv := emulatortest.New(t, opts)
	c, err := dps.NewClientFromConnectionString(srv.ConnectionString(), &dps.ClientOptions{
		ClientOptions: azcore.ClientOptions{Transport: srv.Client()},
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv, c
}

func symmetric() *dps.AttestationMechanism {
	return &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{}}
}

func TestE2EIndividualEnrollmentLifecycle(t *testing.T) {
	_, c := newE2E(t, emulator.Options{})
	ctx := context.Background()
	enabled := dps.ProvisioningStatusEnabled

	created, err := c.CreateOrUpdateEnrollment(ctx, dps.IndividualEnrollment{
		RegistrationID: "E2E.Dev:1", Attestation: symmetric(), ProvisioningStatus: &enabled,
		Capabilities: &dps.DeviceCapabilities{IotEdge: to(false)},
	}, nil)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if created.ETag == "" || created.Attestation.SymmetricKey == nil || len(created.Attestation.SymmetricKey.PrimaryKey) != 88 {
		t.Fatalf("create response: etag %q, keys %+v; want an etag and generated 64-byte keys", created.ETag, created.Attestation.SymmetricKey)
	}
	// Existing without If-Match: 409201, not retried.
	_, err = c.CreateOrUpdateEnrollment(ctx, dps.IndividualEnrollment{RegistrationID: "e2e.dev:1", Attestation: symmetric()}, nil)
	if !dps.IsConflict(err) || dps.ErrorCode(err) != 409201 {
		t.Fatalf("second create: got %v (code %d), want conflict 409201", err, dps.ErrorCode(err))
	}
	// Stale etag: 412. Quoted current etag and "*": accepted.
	stale := azcore.ETag("IjAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMCI=")
	_, err = c.CreateOrUpdateEnrollment(ctx, dps.IndividualEnrollment{RegistrationID: "e2e.dev:1", Attestation: symmetric()},
		&dps.CreateOrUpdateEnrollmentOptions{IfMatch: &stale})
	if !dps.IsPreconditionFailed(err) {
		t.Fatalf("stale If-Match: got %v, want 412", err)
	}
	quoted := azcore.ETag(`"` + created.ETag + `"`)
	updated, err := c.CreateOrUpdateEnrollment(ctx, dps.IndividualEnrollment{RegistrationID: "e2e.dev:1", Attestation: symmetric(),
		DeviceID: "dev-one"}, &dps.CreateOrUpdateEnrollmentOptions{IfMatch: &quoted})
	if err != nil {
		t.Fatalf("update with quoted etag: %v", err)
	}
	if updated.ETag == created.ETag {
		t.Fatal("etag did not change on update")
	}
	any := azcore.ETagAny
	// A PUT whose symmetricKey has no keys gets new generated keys, like a create.
	if latest, err := c.CreateOrUpdateEnrollment(ctx, dps.IndividualEnrollment{RegistrationID: "e2e.dev:1", Attestation: symmetric(),
		DeviceID: "dev-one"}, &dps.CreateOrUpdateEnrollmentOptions{IfMatch: &any}); err != nil {
		t.Fatalf("update with If-Match *: %v", err)
	} else {
		created = latest
	}

	got, err := c.GetEnrollment(ctx, "E2E.DEV:1", nil)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if got.DeviceID != "dev-one" || got.RegistrationState == nil || got.RegistrationState.Status != dps.EnrollmentStatusUnassigned {
		t.Fatalf("get: device %q, registration state %+v; want dev-one and unassigned", got.DeviceID, got.RegistrationState)
	}
	if got.Attestation.SymmetricKey != nil && got.Attestation.SymmetricKey.PrimaryKey != "" {
		t.Fatal("GET returned symmetric keys; DPS returns them only from the attestation mechanism")
	}
	att, err := c.GetEnrollmentAttestationMechanism(ctx, "e2e.dev:1", nil)
	if err != nil || att.SymmetricKey == nil || att.SymmetricKey.PrimaryKey != created.Attestation.SymmetricKey.PrimaryKey {
		t.Fatalf("attestation mechanism: %+v, %v; want the generated keys", att.AttestationMechanism, err)
	}
	if _, err := c.DeleteEnrollment(ctx, "e2e.dev:1", nil); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := c.GetEnrollment(ctx, "e2e.dev:1", nil); !dps.IsNotFound(err) || dps.ErrorCode(err) != 404201 {
		t.Fatalf("get after delete: %v, want 404201", err)
	}
	if _, err := c.DeleteEnrollment(ctx, "e2e.dev:1", nil); !dps.IsNotFound(err) {
		t.Fatalf("delete absent: %v, want not found", err)
	}
}

func TestE2EBulkAndQuery(t *testing.T) {
	_, c := newE2E(t, emulator.Options{})
	ctx := context.Background()
	var items []dps.IndividualEnrollment
	for i := 0; i < 10; i++ {
		items = append(items, dps.IndividualEnrollment{RegistrationID: fmt.Sprintf("bulk-%02d", i), Attestation: symmetric()})
	}
	res, err := c.RunBulkOperation(ctx, dps.BulkModeCreate, items, nil)
	if err != nil || !res.IsSuccessful || len(res.Errors) != 0 {
		t.Fatalf("bulk create: %+v, %v", res, err)
	}
	// Partial failure: two exist already, one is a TPM without endorsement key.
	mixed := []dps.IndividualEnrollment{
		{RegistrationID: "bulk-00", Attestation: symmetric()},
		{RegistrationID: "bulk-new", Attestation: symmetric()},
		{RegistrationID: "bulk-tpm", Attestation: &dps.AttestationMechanism{Type: dps.AttestationTypeTPM, TPM: &dps.TPMAttestation{}}},
		{RegistrationID: "bulk-01", Attestation: symmetric()},
	}
	res, err = c.RunBulkOperation(ctx, dps.BulkModeCreate, mixed, nil)
	if err != nil {
		t.Fatalf("bulk mixed: %v", err)
	}
	failed := map[string]int{}
	for _, e := range res.Errors {
		failed[e.RegistrationID] = e.ErrorCode
	}
	if res.IsSuccessful || failed["bulk-00"] != 409201 || failed["bulk-01"] != 409201 || failed["bulk-tpm"]/1000 != 400 || len(failed) != 3 {
		t.Fatalf("bulk mixed errors: %+v, want 409201 for bulk-00/01 and a 400xxx for bulk-tpm", res.Errors)
	}
	// Update without etag of an existing item: 409201 (seen live).
	res, err = c.RunBulkOperation(ctx, dps.BulkModeUpdate, []dps.IndividualEnrollment{{RegistrationID: "bulk-02", Attestation: symmetric()}}, nil)
	if err != nil || len(res.Errors) != 1 || res.Errors[0].ErrorCode != 409201 {
		t.Fatalf("bulk update without etag: %+v, %v; want 409201", res, err)
	}
	// Client-side refusals never reach the service.
	if _, err := c.RunBulkOperation(ctx, dps.BulkModeCreate, append(items, items[0]), nil); !errors.Is(err, dps.ErrBulkTooMany) {
		t.Fatalf("11 items: %v, want ErrBulkTooMany", err)
	}
	// Query over pages of 4: 11 enrollments → 3 pages.
	pager := c.NewEnrollmentQueryPager(&dps.EnrollmentQueryOptions{PageSize: to[int32](4)})
	pages, n := 0, 0
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		n += len(page.Enrollments)
		if page.ItemType != "Enrollment" {
			t.Fatalf("item type %q, want Enrollment", page.ItemType)
		}
	}
	if pages != 3 || n != 11 {
		t.Fatalf("query: %d pages, %d enrollments; want 3 and 11", pages, n)
	}
	// Bulk delete.
	res, err = c.RunBulkOperation(ctx, dps.BulkModeDelete, []dps.IndividualEnrollment{{RegistrationID: "bulk-00"}, {RegistrationID: "bulk-new"}}, nil)
	if err != nil || !res.IsSuccessful {
		t.Fatalf("bulk delete: %+v, %v", res, err)
	}
}

func TestE2EGroupsAndDeviceRegistration(t *testing.T) {
	srv, c := newE2E(t, emulator.Options{LinkedHubs: []string{"hub-a.azure-devices.net", "hub-b.azure-devices.net"}})
	ctx := context.Background()
	hashed := dps.AllocationPolicyHashed
	g, err := c.CreateOrUpdateEnrollmentGroup(ctx, dps.EnrollmentGroup{EnrollmentGroupID: "line-7", Attestation: symmetric(),
		AllocationPolicy: &hashed, IotHubs: []string{"hub-a.azure-devices.net", "hub-b.azure-devices.net"}}, nil)
	if err != nil {
		t.Fatalf("create group: %v", err)
	}
	groupKey := g.Attestation.SymmetricKey.PrimaryKey
	if _, err := c.CreateOrUpdateEnrollmentGroup(ctx, dps.EnrollmentGroup{EnrollmentGroupID: "line-7", Attestation: symmetric()}, nil); !dps.IsConflict(err) || dps.ErrorCode(err) != 409202 {
		t.Fatalf("second group create: %v, want 409202", err)
	}
	bres, err := c.RunBulkGroupOperation(ctx, dps.BulkModeCreate, []dps.EnrollmentGroup{{EnrollmentGroupID: "line-8", Attestation: symmetric()}}, nil)
	if err != nil || !bres.IsSuccessful {
		t.Fatalf("bulk group create: %+v, %v", bres, err)
	}
	dc, err := dps.NewDeviceClient(srv.URL(), srv.IDScope(), &dps.DeviceClientOptions{
		ClientOptions: azcore.ClientOptions{Transport: srv.Client()}, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// Group-derived keys, hashed allocation spreads devices over both hubs.
	hubs := map[string]int{}
	for i := 0; i < 20; i++ {
		id := fmt.Sprintf("sensor-%02d", i)
		key, err := dps.DeriveDeviceKey(groupKey, id)
		if err != nil {
			t.Fatal(err)
		}
		res, err := dc.Register(ctx, id, &dps.RegisterOptions{SymmetricKey: key, Payload: json.RawMessage(`{"line":7}`)})
		if err != nil {
			t.Fatalf("register %s: %v", id, err)
		}
		if res.Status != dps.EnrollmentStatusAssigned || res.RegistrationState == nil {
			t.Fatalf("register %s: %+v", id, res.RegistrationOperationStatus)
		}
		hubs[res.RegistrationState.AssignedHub]++
	}
	if len(hubs) != 2 || hubs["hub-a.azure-devices.net"] < 4 || hubs["hub-b.azure-devices.net"] < 4 {
		t.Fatalf("hashed allocation over 20 devices: %v, want both hubs used evenly", hubs)
	}
	// Registration states are listed per group, readable and deletable.
	rp := c.NewRegistrationStateQueryPager("line-7", nil)
	n := 0
	for rp.More() {
		page, err := rp.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n += len(page.RegistrationStates)
	}
	if n != 20 {
		t.Fatalf("registration states of line-7: %d, want 20", n)
	}
	st, err := c.GetRegistrationState(ctx, "sensor-00", nil)
	if err != nil || st.Status != dps.EnrollmentStatusAssigned {
		t.Fatalf("registration state: %+v, %v", st, err)
	}
	if _, err := c.DeleteRegistrationState(ctx, "sensor-00", nil); err != nil {
		t.Fatalf("delete registration state: %v", err)
	}
	// Individual enrollment with its own key; a wrong key is refused; unknown id → 404201.
	en, err := c.CreateOrUpdateEnrollment(ctx, dps.IndividualEnrollment{RegistrationID: "solo-1", Attestation: symmetric()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := dc.Register(ctx, "solo-1", &dps.RegisterOptions{SymmetricKey: en.Attestation.SymmetricKey.PrimaryKey})
	if err != nil || res.Status != dps.EnrollmentStatusAssigned {
		t.Fatalf("register solo-1: %+v, %v", res, err)
	}
	got, err := c.GetEnrollment(ctx, "solo-1", nil)
	if err != nil || got.RegistrationState == nil || got.RegistrationState.Status != dps.EnrollmentStatusAssigned {
		t.Fatalf("enrollment after registration: %+v, %v; want status assigned", got.RegistrationState, err)
	}
	if _, err := dc.Register(ctx, "solo-1", &dps.RegisterOptions{SymmetricKey: groupKey}); err == nil || dps.StatusCode(err) != 401 {
		t.Fatalf("register with a wrong key: %v, want 401", err)
	}
	// An unknown registration id is 404201 (DPS.md), as the service answers it: not a 401.
	_, err = dc.Register(ctx, "nobody", &dps.RegisterOptions{SymmetricKey: groupKey})
	if dps.StatusCode(err) != 404 || dps.ErrorCode(err) != dps.CodeEnrollmentNotFound || !dps.IsNotFound(err) {
		t.Fatalf("register unknown: %v (status %d, code %d), want 404 with 404201", err, dps.StatusCode(err), dps.ErrorCode(err))
	}
	if strings.Contains(fmt.Sprint(err), groupKey) {
		t.Fatal("an error contains the group key")
	}

	// The device's own view of its registration (POST /{idScope}/registrations/{id}).
	key01, err := dps.DeriveDeviceKey(groupKey, "sensor-01")
	if err != nil {
		t.Fatal(err)
	}
	status, err := dc.GetRegistrationStatus(ctx, "sensor-01", &dps.GetRegistrationStatusOptions{SymmetricKey: key01})
	if err != nil {
		t.Fatalf("registration status: %v", err)
	}
	want, err := c.GetRegistrationState(ctx, "sensor-01", nil)
	if err != nil {
		t.Fatal(err)
	}
	if status.RegistrationID != "sensor-01" || status.Status != dps.EnrollmentStatusAssigned || status.AssignedHub == "" ||
		status.AssignedHub != want.AssignedHub || status.ETag != want.ETag || status.DeviceID != "sensor-01" {
		t.Fatalf("registration status: got %+v, want the state the service API shows (%+v)", status.DeviceRegistrationResult, want.DeviceRegistrationState)
	}
	// A device of the group that never registered: registration not found.
	key99, _ := dps.DeriveDeviceKey(groupKey, "sensor-99")
	if _, err := dc.GetRegistrationStatus(ctx, "sensor-99", &dps.GetRegistrationStatusOptions{SymmetricKey: key99}); !dps.IsNotFound(err) || dps.ErrorCode(err) != dps.CodeRegistrationNotFound {
		t.Fatalf("status of an unregistered device: %v, want 404202", err)
	}
	// A key no enrollment accepts: the same answer as an unknown device, nothing revealed.
	if _, err := dc.GetRegistrationStatus(ctx, "sensor-01", &dps.GetRegistrationStatusOptions{SymmetricKey: key99}); dps.StatusCode(err) != 404 || dps.ErrorCode(err) != dps.CodeEnrollmentNotFound {
		t.Fatalf("status with another device's key: %v, want 404201", err)
	}
}

// TestE2EGroupReadQueryDelete covers the group calls not exercised above: get,
// attestation mechanism, query pages and delete, against the emulator over HTTPS.
func TestE2EGroupReadQueryDelete(t *testing.T) {
	srv, c := newE2E(t, emulator.Options{})
	ctx := context.Background()
	static := dps.AllocationPolicyStatic
	disabled := dps.ProvisioningStatusDisabled
	created, err := c.CreateOrUpdateEnrollmentGroup(ctx, dps.EnrollmentGroup{EnrollmentGroupID: "Line-9", Attestation: symmetric(),
		AllocationPolicy: &static, IotHubHostName: "hub-1.azure-devices.net", ProvisioningStatus: &disabled,
		ReprovisionPolicy: &dps.ReprovisionPolicy{MigrateDeviceData: to(false)}, Capabilities: &dps.DeviceCapabilities{IotEdge: to(true)}}, nil)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	groupKey := created.Attestation.SymmetricKey.PrimaryKey
	for i := 0; i < 4; i++ {
		if _, err := c.CreateOrUpdateEnrollmentGroup(ctx, dps.EnrollmentGroup{EnrollmentGroupID: fmt.Sprintf("extra-%d", i), Attestation: symmetric()}, nil); err != nil {
			t.Fatal(err)
		}
	}

	got, err := c.GetEnrollmentGroup(ctx, "LINE-9", nil)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	g := got.EnrollmentGroup
	switch {
	case g.EnrollmentGroupID != "Line-9", g.ETag != created.ETag, g.IotHubHostName != "hub-1.azure-devices.net",
		g.AllocationPolicy == nil || *g.AllocationPolicy != static,
		g.ProvisioningStatus == nil || *g.ProvisioningStatus != disabled,
		g.ReprovisionPolicy == nil || g.ReprovisionPolicy.UpdateHubAssignment != nil || g.ReprovisionPolicy.MigratesDeviceData(),
		!g.Capabilities.IsIotEdge(),
		g.CreatedDateTimeUTC == nil || g.LastUpdatedDateTimeUTC == nil:
		t.Fatalf("get: got %+v, want what was written", g)
	}
	if g.Attestation == nil || g.Attestation.Type != dps.AttestationTypeSymmetricKey || g.Attestation.SymmetricKey != nil {
		t.Fatalf("get: attestation %+v, want symmetricKey without keys", g.Attestation)
	}
	att, err := c.GetEnrollmentGroupAttestationMechanism(ctx, "line-9", nil)
	if err != nil || att.SymmetricKey == nil || att.SymmetricKey.PrimaryKey != groupKey || att.SymmetricKey.SecondaryKey != created.Attestation.SymmetricKey.SecondaryKey {
		t.Fatalf("attestation mechanism: %+v, %v; want the group's keys", att.AttestationMechanism, err)
	}
	if _, err := c.GetEnrollmentGroupAttestationMechanism(ctx, "no-such-group", nil); !dps.IsNotFound(err) || dps.ErrorCode(err) != dps.CodeEnrollmentGroupNotFound {
		t.Fatalf("attestation of an absent group: %v, want 404204", err)
	}

	// Pages of 2 over 5 groups: 3 pages, every group once, in creation order.
	pager := c.NewEnrollmentGroupQueryPager(&dps.EnrollmentGroupQueryOptions{PageSize: to[int32](2)})
	var ids []string
	pages := 0
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatalf("query page %d: %v", pages+1, err)
		}
		pages++
		if page.ItemType != "EnrollmentGroup" {
			t.Errorf("item type %q, want EnrollmentGroup", page.ItemType)
		}
		for _, g := range page.EnrollmentGroups {
			ids = append(ids, g.EnrollmentGroupID)
			if g.Attestation != nil && g.Attestation.SymmetricKey != nil {
				t.Errorf("query returned the keys of %s", g.EnrollmentGroupID)
			}
		}
	}
	if want := "Line-9,extra-0,extra-1,extra-2,extra-3"; pages != 3 || strings.Join(ids, ",") != want {
		t.Fatalf("query: %d pages %v, want 3 pages %s", pages, ids, want)
	}

	// Enable the group, register a device through it, then delete the group: a stale
	// If-Match is refused, the delete removes the group's registration states and the
	// device can no longer register.
	enabled := dps.ProvisioningStatusEnabled
	g.ProvisioningStatus = &enabled
	etag := azcore.ETag(g.ETag)
	updated, err := c.CreateOrUpdateEnrollmentGroup(ctx, g, &dps.CreateOrUpdateEnrollmentGroupOptions{IfMatch: &etag})
	if err != nil {
		t.Fatalf("enable: %v", err)
	}
	dc, err := dps.NewDeviceClient(srv.URL(), srv.IDScope(), &dps.DeviceClientOptions{
		ClientOptions: azcore.ClientOptions{Transport: srv.Client()}, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// The GET hid the keys, so the PUT of what it returned generated new ones.
	if updated.Attestation.SymmetricKey.PrimaryKey == groupKey {
		t.Fatal("a PUT without keys kept the old keys; DPS generates new ones")
	}
	devKey, _ := dps.DeriveDeviceKey(updated.Attestation.SymmetricKey.PrimaryKey, "line9-dev")
	if res, err := dc.Register(ctx, "line9-dev", &dps.RegisterOptions{SymmetricKey: devKey}); err != nil || res.RegistrationState.AssignedHub != "hub-1.azure-devices.net" {
		t.Fatalf("register through the group: %+v, %v", res, err)
	}
	if _, err := c.DeleteEnrollmentGroup(ctx, "line-9", &dps.DeleteEnrollmentGroupOptions{IfMatch: &etag}); !dps.IsPreconditionFailed(err) {
		t.Fatalf("delete with a stale etag: %v, want 412", err)
	}
	current := azcore.ETag(updated.ETag)
	if _, err := c.DeleteEnrollmentGroup(ctx, "LINE-9", &dps.DeleteEnrollmentGroupOptions{IfMatch: &current}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := c.GetEnrollmentGroup(ctx, "line-9", nil); !dps.IsNotFound(err) || dps.ErrorCode(err) != dps.CodeEnrollmentGroupNotFound {
		t.Fatalf("get after delete: %v, want 404204", err)
	}
	if _, err := c.DeleteEnrollmentGroup(ctx, "line-9", nil); !dps.IsNotFound(err) || dps.ErrorCode(err) != dps.CodeEnrollmentGroupNotFound {
		t.Fatalf("delete absent: %v, want 404204", err)
	}
	if _, err := c.GetRegistrationState(ctx, "line9-dev", nil); !dps.IsNotFound(err) {
		t.Fatalf("registration state after the group's delete: %v, want not found", err)
	}
	if _, err := dc.Register(ctx, "line9-dev", &dps.RegisterOptions{SymmetricKey: devKey}); dps.ErrorCode(err) != dps.CodeEnrollmentNotFound {
		t.Fatalf("register after the group's delete: %v, want 404201", err)
	}
}

// x509Certs are a CA (the signing certificate of a group), a device certificate it
// issued, and a self-signed device certificate (an individual enrollment).
type x509Certs struct {
	caPEM, selfPEM string
	leaf, self     tls.Certificate
}

func makeX509Certs(t *testing.T, leafCN, selfCN string) x509Certs {
	t.Helper()
	now := time.Now()
	mk := func(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (tls.Certificate, string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: c}, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	nb, na := now.Add(-time.Hour), now.Add(time.Hour)
	ca, caPEM := mk(&x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "E2E CA"}, NotBefore: nb, NotAfter: na,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}, nil, nil)
	leaf, _ := mk(&x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: leafCN}, NotBefore: nb, NotAfter: na,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca.Leaf, ca.PrivateKey.(*ecdsa.PrivateKey))
	self, selfPEM := mk(&x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: selfCN}, NotBefore: nb, NotAfter: na,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, nil, nil)
	return x509Certs{caPEM: caPEM, selfPEM: selfPEM, leaf: leaf, self: self}
}

// deviceWithCert is a DeviceClient whose transport presents cert as its TLS client
// certificate.
func deviceWithCert(t *testing.T, srv *emulator.Server, cert tls.Certificate) *dps.DeviceClient {
	t.Helper()
	hc := srv.Client()
	tr := hc.Transport.(*http.Transport)
	tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
	t.Cleanup(hc.CloseIdleConnections)
	dc, err := dps.NewDeviceClient(srv.URL(), srv.IDScope(), &dps.DeviceClientOptions{
		ClientOptions: azcore.ClientOptions{Transport: hc}, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return dc
}

// TestE2EX509Registration registers X.509 devices through the client, authenticated by
// their TLS client certificate only: one with an individual enrollment (thumbprint match),
// one through a group (the certificate chains to the group's signing certificate).
func TestE2EX509Registration(t *testing.T) {
	srv, c := newE2E(t, emulator.Options{LinkedHubs: []string{"x509-hub.azure-devices.net"}})
	ctx := context.Background()
	certs := makeX509Certs(t, "x509-group-dev", "x509-solo")
	x509Att := func(client bool, pemText string) *dps.AttestationMechanism {
		certsOf := &dps.X509Certificates{Primary: &dps.X509CertificateWithInfo{Certificate: pemText}}
		if client {
			return &dps.AttestationMechanism{Type: dps.AttestationTypeX509, X509: &dps.X509Attestation{ClientCertificates: certsOf}}
		}
		return &dps.AttestationMechanism{Type: dps.AttestationTypeX509, X509: &dps.X509Attestation{SigningCertificates: certsOf}}
	}
	en, err := c.CreateOrUpdateEnrollment(ctx, dps.IndividualEnrollment{RegistrationID: "x509-solo", Attestation: x509Att(true, certs.selfPEM)}, nil)
	if err != nil {
		t.Fatalf("create x509 enrollment: %v", err)
	}
	info := en.Attestation.X509.ClientCertificates.Primary.Info
	if info == nil || info.SubjectName != "CN=x509-solo" || en.Attestation.X509.ClientCertificates.Primary.Certificate != "" {
		t.Fatalf("x509 enrollment: primary %+v, want computed info and no echoed certificate", en.Attestation.X509.ClientCertificates.Primary)
	}
	if _, err := c.CreateOrUpdateEnrollmentGroup(ctx, dps.EnrollmentGroup{EnrollmentGroupID: "x509-line", Attestation: x509Att(false, certs.caPEM)}, nil); err != nil {
		t.Fatalf("create x509 group: %v", err)
	}

	solo := deviceWithCert(t, srv, certs.self)
	res, err := solo.Register(ctx, "x509-solo", nil)
	if err != nil {
		t.Fatalf("register x509-solo: %v", err)
	}
	rs := res.RegistrationState
	if res.Status != dps.EnrollmentStatusAssigned || rs == nil || rs.AssignedHub != "x509-hub.azure-devices.net" ||
		rs.X509 == nil || rs.X509.CertificateInfo == nil || rs.X509.CertificateInfo.SHA256Thumbprint != info.SHA256Thumbprint {
		t.Fatalf("register x509-solo: %+v, want assigned with the certificate's info", res.RegistrationOperationStatus)
	}
	st, err := solo.GetRegistrationStatus(ctx, "x509-solo", nil)
	if err != nil || st.Status != dps.EnrollmentStatusAssigned || st.AssignedHub != rs.AssignedHub {
		t.Fatalf("x509 registration status: %+v, %v", st.DeviceRegistrationResult, err)
	}
	// The certificate's CN is the registration id: another id is refused.
	if _, err := solo.Register(ctx, "someone-else", nil); dps.StatusCode(err) != 401 {
		t.Fatalf("register another id with x509-solo's certificate: %v, want 401", err)
	}

	grouped := deviceWithCert(t, srv, certs.leaf)
	res, err = grouped.Register(ctx, "x509-group-dev", nil)
	if err != nil {
		t.Fatalf("register x509-group-dev: %v", err)
	}
	if rs := res.RegistrationState; res.Status != dps.EnrollmentStatusAssigned || rs == nil || rs.X509 == nil || rs.X509.EnrollmentGroupID != "x509-line" {
		t.Fatalf("register x509-group-dev: %+v, want assigned through x509-line", res.RegistrationOperationStatus)
	}
	// Without a client certificate (and without a key) the device cannot authenticate.
	anon, err := dps.NewDeviceClient(srv.URL(), srv.IDScope(), &dps.DeviceClientOptions{ClientOptions: azcore.ClientOptions{Transport: srv.Client()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anon.Register(ctx, "x509-solo", nil); dps.StatusCode(err) != 401 {
		t.Fatalf("register without a certificate: %v, want 401", err)
	}
}
