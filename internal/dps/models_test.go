package dps

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

// normalizeJSON decodes b into generic JSON with every RFC 3339 timestamp rewritten in one
// form, so that "…04.759Z" and "…04.7590000Z" compare equal.
func normalizeJSON(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	var walk func(any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				x[k] = walk(e)
			}
		case []any:
			for i, e := range x {
				x[i] = walk(e)
			}
		case string:
			if ts, err := time.Parse(time.RFC3339Nano, x); err == nil {
				return ts.UTC().Format(time.RFC3339Nano)
			}
		}
		return v
	}
	return walk(v)
}

// roundTrip decodes raw as T, encodes it again and fails unless the JSON is the same.
// An example without that body (some spec examples have none) is skipped.
func roundTrip[T any](t *testing.T, name string, raw []byte) T {
	t.Helper()
	var v T
	if len(raw) == 0 || string(raw) == "null" {
		return v
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: decode: %v", name, err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("%s: encode: %v", name, err)
	}
	if got, want := normalizeJSON(t, out), normalizeJSON(t, raw); !reflect.DeepEqual(got, want) {
		t.Errorf("%s: round trip changed the JSON\n got %s\nwant %s", name, out, raw)
	}
	return v
}

func exampleParam(t *testing.T, name, param string) []byte {
	t.Helper()
	var params map[string]json.RawMessage
	if err := json.Unmarshal(readExample(t, name)["parameters"], &params); err != nil {
		t.Fatal(err)
	}
	p, ok := params[param]
	if !ok {
		p, ok = params["body"] // some examples name every body parameter "body"
	}
	if !ok {
		t.Fatalf("example %s has no parameter %s", name, param)
	}
	return p
}

// TestModelsRoundTripSpecExamples decodes and re-encodes every request and response body of
// the REST spec examples: no field may be lost or added.
func TestModelsRoundTripSpecExamples(t *testing.T) {
	for _, set := range []string{"MaximumSet", "MinimumSet"} {
		ex := func(op string) string { return op + "_" + set + "_Gen" }
		t.Run(set, func(t *testing.T) {
			for _, op := range []string{"IndividualEnrollment_Get", "IndividualEnrollment_CreateOrUpdate"} {
				roundTrip[IndividualEnrollment](t, op, exampleResponseBody(t, ex(op), "200"))
			}
			roundTrip[IndividualEnrollment](t, "enrollment param", exampleParam(t, ex("IndividualEnrollment_CreateOrUpdate"), "enrollment"))
			roundTrip[[]IndividualEnrollment](t, "enrollment query", exampleResponseBody(t, ex("IndividualEnrollment_Query"), "200"))
			roundTrip[QuerySpecification](t, "query spec", exampleParam(t, ex("IndividualEnrollment_Query"), "querySpecification"))
			roundTrip[BulkEnrollmentOperation](t, "bulk param", exampleParam(t, ex("IndividualEnrollment_RunBulkOperation"), "bulkOperation"))
			roundTrip[BulkEnrollmentOperationResult](t, "bulk result", exampleResponseBody(t, ex("IndividualEnrollment_RunBulkOperation"), "200"))
			roundTrip[AttestationMechanism](t, "attestation", exampleResponseBody(t, ex("IndividualEnrollment_GetAttestationMechanism"), "200"))

			for _, op := range []string{"EnrollmentGroup_Get", "EnrollmentGroup_CreateOrUpdate"} {
				roundTrip[EnrollmentGroup](t, op, exampleResponseBody(t, ex(op), "200"))
			}
			roundTrip[EnrollmentGroup](t, "group param", exampleParam(t, ex("EnrollmentGroup_CreateOrUpdate"), "enrollmentGroup"))
			roundTrip[[]EnrollmentGroup](t, "group query", exampleResponseBody(t, ex("EnrollmentGroup_Query"), "200"))
			roundTrip[BulkEnrollmentGroupOperation](t, "group bulk param", exampleParam(t, ex("EnrollmentGroup_RunBulkOperation"), "bulkOperation"))
			roundTrip[BulkEnrollmentGroupOperationResult](t, "group bulk result", exampleResponseBody(t, ex("EnrollmentGroup_RunBulkOperation"), "200"))
			roundTrip[AttestationMechanism](t, "group attestation", exampleResponseBody(t, ex("EnrollmentGroup_GetAttestationMechanism"), "200"))

			roundTrip[DeviceRegistrationState](t, "registration state", exampleResponseBody(t, ex("DeviceRegistrationState_Get"), "200"))
			roundTrip[[]DeviceRegistrationState](t, "registration query", exampleResponseBody(t, ex("DeviceRegistrationState_Query"), "200"))

			roundTrip[DeviceRegistration](t, "register param", exampleParam(t, ex("RuntimeRegistration_RegisterDevice"), "body"))
			for _, status := range []string{"200", "202"} {
				roundTrip[RegistrationOperationStatus](t, "register "+status, exampleResponseBody(t, ex("RuntimeRegistration_RegisterDevice"), status))
				roundTrip[RegistrationOperationStatus](t, "operation "+status, exampleResponseBody(t, ex("RuntimeRegistration_OperationStatusLookup"), status))
			}
			roundTrip[DeviceRegistration](t, "status lookup param", exampleParam(t, ex("RuntimeRegistration_DeviceRegistrationStatusLookup"), "body"))
			roundTrip[DeviceRegistrationResult](t, "status lookup", exampleResponseBody(t, ex("RuntimeRegistration_DeviceRegistrationStatusLookup"), "200"))
		})
	}
}

func TestModelsKeepExplicitValuesAndAbsence(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"absent stays absent", `{"registrationId":"a","attestation":{"type":"symmetricKey"}}`},
		{"explicit false survives", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"capabilities":{"iotEdge":false},"reprovisionPolicy":{"updateHubAssignment":false,"migrateDeviceData":false}}`},
		{"disabled survives", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"provisioningStatus":"disabled"}`},
		{"empty symmetric key asks for generated keys", `{"registrationId":"a","attestation":{"type":"symmetricKey","symmetricKey":{}}}`},
		{"unknown twin properties kept", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"initialTwin":{"tags":{"site":{"line":7,"cells":["a",null,true]},"$custom":1.5e3},"properties":{"desired":{"fw":{"v":"1.2.3"},"$metadata":{"$lastUpdated":"x"},"$version":4}}},"optionalDeviceInformation":{"vendor":"acme"}}`},
		{"timestamps with 7 digits", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"createdDateTimeUtc":"2023-05-19T23:10:45.1256254Z","lastUpdatedDateTimeUtc":"2023-05-19T23:10:45.0000000Z"}`},
		// Partial objects: a field left out must not come back with a Go zero value (the
		// spec default of both reprovision fields is true, not false).
		{"partial reprovision policy: only migrateDeviceData", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"reprovisionPolicy":{"migrateDeviceData":false}}`},
		{"partial reprovision policy: only updateHubAssignment", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"reprovisionPolicy":{"updateHubAssignment":false}}`},
		{"empty reprovision policy", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"reprovisionPolicy":{}}`},
		{"empty capabilities", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"capabilities":{}}`},
		{"explicit true survives", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"capabilities":{"iotEdge":true},"reprovisionPolicy":{"updateHubAssignment":true,"migrateDeviceData":true}}`},
		{"provisioningStatus null is echoed", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"provisioningStatus":null}`},
		{"empty tpm gains no endorsementKey", `{"registrationId":"a","attestation":{"type":"tpm","tpm":{}}}`},
		{"tpm without storageRootKey", `{"registrationId":"a","attestation":{"type":"tpm","tpm":{"endorsementKey":"AToAAQ=="}}}`},
		{"empty x509 parts", `{"registrationId":"a","attestation":{"type":"x509","x509":{"clientCertificates":{},"caReferences":{}}}}`},
		{"empty twin", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"initialTwin":{}}`},
		{"empty twin properties", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"initialTwin":{"properties":{}}}`},
		{"empty twin sections", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"initialTwin":{"tags":{},"properties":{"desired":{}}},"optionalDeviceInformation":{}}`},
		{"empty iotHubs list", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"iotHubs":[]}`},
		{"empty registration state", `{"registrationId":"a","attestation":{"type":"symmetricKey"},"registrationState":{}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e IndividualEnrollment
			if err := json.Unmarshal([]byte(tt.in), &e); err != nil {
				t.Fatal(err)
			}
			out, err := json.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			// Byte for byte, apart from key order and number spelling inside raw twins.
			if !jsonEqual(t, out, []byte(tt.in)) {
				t.Errorf("got  %s\nwant %s", out, tt.in)
			}
		})
	}
	g := roundTrip[EnrollmentGroup](t, "group", []byte(`{"enrollmentGroupId":"g","attestation":{"type":"x509","x509":{"caReferences":{"primary":"ca1"}}},"provisioningStatus":"disabled","capabilities":{"iotEdge":false},"allocationPolicy":"static","iotHubs":["h1"]}`))
	if g.ProvisioningStatus == nil || *g.ProvisioningStatus != ProvisioningStatusDisabled || g.Capabilities == nil || g.Capabilities.IotEdge == nil || g.Capabilities.IsIotEdge() {
		t.Errorf("got %+v", g)
	}
	g = roundTrip[EnrollmentGroup](t, "group null status, partial policy", []byte(`{"enrollmentGroupId":"g","attestation":{"type":"symmetricKey"},"provisioningStatus":null,"reprovisionPolicy":{"migrateDeviceData":false}}`))
	if !azcore.IsNullValue(g.ProvisioningStatus) {
		t.Errorf("provisioningStatus null: got %v, want the azcore null sentinel", g.ProvisioningStatus)
	}
	if p := g.ReprovisionPolicy; p == nil || p.UpdateHubAssignment != nil || !p.UpdatesHubAssignment() || p.MigratesDeviceData() {
		t.Errorf("reprovisionPolicy {migrateDeviceData:false}: got %+v, want updateHubAssignment absent (default true), migrateDeviceData false", p)
	}
	for _, tt := range []struct {
		name string
		in   string
	}{
		{"no errors list stays without one", `{"isSuccessful":true}`},
		{"empty errors list stays empty", `{"errors":[],"isSuccessful":true}`},
		{"errors kept", `{"errors":[{"registrationId":"a","errorCode":409201,"errorStatus":"exists"}],"isSuccessful":false}`},
	} {
		roundTrip[BulkEnrollmentOperationResult](t, "bulk result: "+tt.name, []byte(tt.in))
		roundTrip[BulkEnrollmentGroupOperationResult](t, "group bulk result: "+tt.name, []byte(strings.ReplaceAll(tt.in, "registrationId", "enrollmentGroupId")))
	}
}

// TestModelsDefaults checks the spec defaults the helper methods apply to absent fields.
func TestModelsDefaults(t *testing.T) {
	var nilPolicy *ReprovisionPolicy
	var nilCaps *DeviceCapabilities
	tests := []struct {
		name                string
		p                   *ReprovisionPolicy
		wantUpdate, wantMig bool
	}{
		{"nil policy", nilPolicy, true, true},
		{"empty policy", &ReprovisionPolicy{}, true, true},
		{"update false", &ReprovisionPolicy{UpdateHubAssignment: ptr(false)}, false, true},
		{"migrate false", &ReprovisionPolicy{MigrateDeviceData: ptr(false)}, true, false},
		{"both true", &ReprovisionPolicy{UpdateHubAssignment: ptr(true), MigrateDeviceData: ptr(true)}, true, true},
	}
	for _, tt := range tests {
		if got := tt.p.UpdatesHubAssignment(); got != tt.wantUpdate {
			t.Errorf("%s: UpdatesHubAssignment got %v, want %v", tt.name, got, tt.wantUpdate)
		}
		if got := tt.p.MigratesDeviceData(); got != tt.wantMig {
			t.Errorf("%s: MigratesDeviceData got %v, want %v", tt.name, got, tt.wantMig)
		}
	}
	if nilCaps.IsIotEdge() || (&DeviceCapabilities{}).IsIotEdge() || !(&DeviceCapabilities{IotEdge: ptr(true)}).IsIotEdge() {
		t.Error("IsIotEdge: want false for nil and absent, true for true")
	}
	// Sending null: the sentinel encodes as null.
	b, err := json.Marshal(IndividualEnrollment{RegistrationID: "a", ProvisioningStatus: azcore.NullValue[*ProvisioningStatus]()})
	if err != nil || string(b) != `{"registrationId":"a","provisioningStatus":null}` {
		t.Errorf("got %s, %v; want provisioningStatus null", b, err)
	}
}

// TestModelsTypeErrorsNameTheField checks that a value of the wrong JSON type is reported
// with the JSON path of its field, timestamps and provisioningStatus included.
func TestModelsTypeErrorsNameTheField(t *testing.T) {
	tests := []struct {
		in        string
		wantField string
	}{
		{`{"registrationId":"a","createdDateTimeUtc":5}`, "createdDateTimeUtc"},
		{`{"registrationId":"a","lastUpdatedDateTimeUtc":"yesterday"}`, "lastUpdatedDateTimeUtc"},
		{`{"registrationId":"a","registrationState":{"createdDateTimeUtc":true}}`, "registrationState.createdDateTimeUtc"},
		{`{"registrationId":"a","provisioningStatus":1}`, "provisioningStatus"},
		{`{"registrationId":"a","attestation":{"type":7}}`, "attestation.type"},
		{`{"registrationId":"a","capabilities":{"iotEdge":"yes"}}`, "capabilities.iotEdge"},
	}
	for _, tt := range tests {
		var e IndividualEnrollment
		err := json.Unmarshal([]byte(tt.in), &e)
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) {
			t.Errorf("%s: got %v, want a *json.UnmarshalTypeError", tt.in, err)
			continue
		}
		if te.Field != tt.wantField {
			t.Errorf("%s: field got %q, want %q (%v)", tt.in, te.Field, tt.wantField, err)
		}
		// Nested in a bulk body, the path starts at the list.
		var bulk BulkEnrollmentOperation
		err = json.Unmarshal([]byte(`{"mode":"create","enrollments":[`+tt.in+`]}`), &bulk)
		if !errors.As(err, &te) || te.Field != "enrollments."+tt.wantField {
			t.Errorf("bulk %s: got %v, want field enrollments.%s", tt.in, err, tt.wantField)
		}
	}
}
