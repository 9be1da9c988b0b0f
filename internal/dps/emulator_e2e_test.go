package dps_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	if _, err := dc.Register(ctx, "nobody", &dps.RegisterOptions{SymmetricKey: groupKey}); !dps.IsNotFound(err) && dps.StatusCode(err) != 401 {
		t.Fatalf("register unknown: %v, want 404201 or 401", err)
	}
	if strings.Contains(fmt.Sprint(err), groupKey) {
		t.Fatal("an error contains the group key")
	}
}
