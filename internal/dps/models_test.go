package dps

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
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
			roundTrip[BulkEnrollmentOperationResult](t, "bulk result", withErrorsList(t, exampleResponseBody(t, ex("IndividualEnrollment_RunBulkOperation"), "200")))
			roundTrip[AttestationMechanism](t, "attestation", exampleResponseBody(t, ex("IndividualEnrollment_GetAttestationMechanism"), "200"))

			for _, op := range []string{"EnrollmentGroup_Get", "EnrollmentGroup_CreateOrUpdate"} {
				roundTrip[EnrollmentGroup](t, op, exampleResponseBody(t, ex(op), "200"))
			}
			roundTrip[EnrollmentGroup](t, "group param", exampleParam(t, ex("EnrollmentGroup_CreateOrUpdate"), "enrollmentGroup"))
			roundTrip[[]EnrollmentGroup](t, "group query", exampleResponseBody(t, ex("EnrollmentGroup_Query"), "200"))
			roundTrip[BulkEnrollmentGroupOperation](t, "group bulk param", exampleParam(t, ex("EnrollmentGroup_RunBulkOperation"), "bulkOperation"))
			roundTrip[BulkEnrollmentGroupOperationResult](t, "group bulk result", withErrorsList(t, exampleResponseBody(t, ex("EnrollmentGroup_RunBulkOperation"), "200")))
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

// withErrorsList adds "errors": null to a bulk result that has no errors list: the model
// always writes the list (DPS always sends it, "errors":[] on success), so a decoded nil list
// comes back as null.
func withErrorsList(t *testing.T, raw []byte) []byte {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["errors"]; ok {
		return raw
	}
	m["errors"] = json.RawMessage("null")
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
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
	if g.ProvisioningStatus == nil || *g.ProvisioningStatus != ProvisioningStatusDisabled || g.Capabilities == nil || g.Capabilities.IotEdge {
		t.Errorf("got %+v", g)
	}
}
