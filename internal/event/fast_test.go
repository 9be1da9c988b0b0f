package event

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/schemas"
)

// agree checks the fast path's invariant on b: when decodeFast accepts b, the slow path
// accepts it too and builds an equal Event. It reports both verdicts.
func agree(t testing.TB, d *Decoder, b []byte) (fastOK, slowOK bool) {
	t.Helper()
	fe, fastOK := decodeFast(b)
	se, err := d.decodeSlow(b)
	slowOK = err == nil
	switch {
	case fastOK && !slowOK:
		t.Errorf("fast path accepts an event the slow path rejects (%v):\n%s", err, b)
	case fastOK && !reflect.DeepEqual(fe, se):
		t.Errorf("fast and slow paths build different events from\n%s\ngot  %s\nwant %s", b, describe(fe), describe(se))
	}
	return fastOK, slowOK
}

// describe shows an Event with its pointers followed, for failure messages.
func describe(e *Event) string {
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Sprintf("%+v", *e)
	}
	return string(b)
}

func newTestDecoder(t testing.TB) *Decoder {
	t.Helper()
	d, err := NewDecoder()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestFastPathTaken: the fast path (not the schema validator) decides every valid example,
// every valid demo event and every event Encode produces, and Decode uses it.
func TestFastPathTaken(t *testing.T) {
	d := newTestDecoder(t)
	inputs := readExamples(t, "valid")
	f, err := os.Open(filepath.Join(examples, "demo.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		if _, err := d.decodeSlow(sc.Bytes()); err == nil {
			inputs[fmt.Sprintf("demo line %d", n)] = bytes.Clone(sc.Bytes())
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	status := dps.ProvisioningStatusDisabled
	for i, e := range []*Event{
		NewEnrollment(dps.BulkModeCreate, &dps.IndividualEnrollment{RegistrationID: "a&b-<1>", ProvisioningStatus: &status,
			Attestation: &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey}}),
		NewGroup(dps.BulkModeDelete, &dps.EnrollmentGroup{EnrollmentGroupID: "g1"}),
	} {
		e.Source = "urn:a&b" // json.Marshal writes & as \u0026
		b, err := e.Encode()
		if err != nil && i == 0 {
			// "a&b-<1>" is not a valid id; use it only to see Encode reject it.
			e.Enrollment.RegistrationID = "ab-1"
			b, err = e.Encode()
		}
		if err != nil {
			t.Fatalf("Encode: %v", err)
		}
		inputs[fmt.Sprintf("encoded %d", i)] = b
	}
	for _, name := range slices.Sorted(maps.Keys(inputs)) {
		b := inputs[name]
		if fastOK, _ := agree(t, d, b); !fastOK {
			t.Errorf("%s: fast path rejects a valid event, got false, want true", name)
		}
	}

	// Decode takes the fast path: the slow path costs hundreds of allocations.
	b := inputs["enrollment-update-initial-twin"]
	if got, want := testing.AllocsPerRun(100, func() { _, _ = Decode(b) }), 40.0; got > want {
		t.Errorf("Decode allocations per valid event: got %v, want ≤ %v (is the fast path used?)", got, want)
	}
}

// fastPathSchemaSHA256 is the SHA-256 of the schema the fast path (fast.go) mirrors.
const fastPathSchemaSHA256 = "485a0133cecaf221c65c74555d3d18696b6316f4ff0e58d287edad4c491d54da"

// TestFastPathSchemaUnchanged fails when schemas/event.v1.schema.json changes: the fast path
// mirrors the schema by hand and must be reviewed (fast.go, then the additions and cases in
// this file) before the new hash is written here. A field the fast path does not know is
// safe (it gives up); a tightened rule is not (it would accept what the schema rejects).
func TestFastPathSchemaUnchanged(t *testing.T) {
	b, err := fs.ReadFile(schemas.FS(), schemas.EventV1)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("%x", sha256.Sum256(b)); got != fastPathSchemaSHA256 {
		t.Fatalf("%s SHA-256: got %s, want %s; review fast.go against the schema change, then update fastPathSchemaSHA256", schemas.EventV1, got, fastPathSchemaSHA256)
	}
}

// TestFastPathCases: hand-written inputs at the edges of what the fast path models. Each
// must satisfy the invariant; fast says whether the fast path must accept it (false: it must
// leave it to the slow path), slow whether the event is valid.
func TestFastPathCases(t *testing.T) {
	const (
		head = `{"specversion":"1.0","id":"e1","source":"urn:s","type":"com.dpsync.enrollment.v1",`
		en   = `"registrationId":"dev-1","attestation":{"type":"symmetricKey"}`
	)
	enr := func(fields string) string {
		return head + `"data":{"operation":"create","enrollment":{` + en + fields + `}}}`
	}
	tests := []struct {
		name       string
		in         string
		fast, slow bool
	}{
		{"minimal", enr(""), true, true},
		{"whitespace everywhere", " \t\r\n{ \"specversion\" : \"1.0\" , \"id\" :\"e1\",\"source\":\"s\",\"type\":\"com.dpsync.enrollment.v1\",\"data\":{\"operation\":\"delete\",\"enrollment\":{\"registrationId\":\"d\" } } }\n\n", true, true},
		{"type after data", `{"data":{"enrollment":{"registrationId":"d"},"operation":"delete"},"id":"1","source":"s","specversion":"1.0","type":"com.dpsync.enrollment.v1"}`, true, true},
		{"escapes in values", head + `"data":{"operation":"create","enrollment":{"registrationId":"d\u0041-\u0031","iotHubHostName":"\"\\\/\b\f\n\r\t\u00e9\u2028\ud83d\ude00","attestation":{"type":"symmetricKey"}}}}`, true, true},
		{"escaped enum", head + `"data":{"operation":"cre\u0061te","enrollment":{` + en + `}}}`, true, true},
		{"non-ASCII values", head + `"subject":"Grüße","data":{"operation":"create","enrollment":{` + en + `,"iotHubHostName":"日本"}}}`, true, true},
		{"non-ASCII twin key", enr(`,"initialTwin":{"tags":{"Grüße":1}}`), true, true},
		{"lone surrogate", enr(`,"iotHubHostName":"\ud800"`), false, true},
		{"lone low surrogate", enr(`,"iotHubHostName":"\udc00x"`), false, true},
		{"surrogate then non-surrogate", enr(`,"iotHubHostName":"\ud800\u0041"`), false, true},
		{"invalid UTF-8 in value", enr(",\"iotHubHostName\":\"\xff\""), false, true},
		{"invalid UTF-8 in twin value", enr(",\"initialTwin\":{\"tags\":{\"a\":\"\xff\"}}"), true, true},
		{"invalid UTF-8 in twin key", enr(",\"initialTwin\":{\"tags\":{\"\xff\":1}}"), false, true},
		{"escaped key", head + `"data":{"operation":"create","enrollment":{"registrationI\u0064":"d","attestation":{"type":"symmetricKey"}}}}`, false, true},
		{"escaped twin key", enr(`,"initialTwin":{"tags":{"\u0061":1}}`), false, true},
		{"control character", enr(",\"iotHubHostName\":\"a\tb\""), false, false},
		{"bad escape", enr(`,"iotHubHostName":"\x"`), false, false},
		{"short unicode escape", enr(`,"iotHubHostName":"\u12"`), false, false},
		{"duplicate envelope attribute", `{"id":"1",` + head[1:] + `"data":{"operation":"create","enrollment":{` + en + `}}}`, false, true},
		{"duplicate extension", head + `"ext":1,"ext":2,"data":{"operation":"create","enrollment":{` + en + `}}}`, false, true},
		{"duplicate data", head + `"data":{"operation":"create","enrollment":{` + en + `}},"data":{"operation":"delete","enrollment":{"registrationId":"d"}}}`, false, true},
		{"duplicate operation", head + `"data":{"operation":"create","operation":"delete","enrollment":{"registrationId":"d"}}}`, false, true},
		{"duplicate attestation", enr(`,"attestation":{"type":"symmetricKey"}`), false, true},
		{"duplicate twin key", enr(`,"initialTwin":{"tags":{"a":1,"a":2}}`), false, true},
		{"duplicate key deep in twin", enr(`,"initialTwin":{"tags":{"a":{"b":1,"b":2}}}`), true, true},
		{"extensions", head + `"traceparent":"00-ab","n1":-0.5e+10,"n2":0,"n3":[1,{"a":null}],"n4":{},"n5":true,"n6":false,"n7":null,"data":{"operation":"create","enrollment":{` + en + `}}}`, true, true},
		{"extension upper case", head + `"Ext":1,"data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"extension empty name", head + `"":1,"data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"extension with underscore", head + `"ext_1":1,"data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"number leading zero", head + `"n":01,"data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"number bare dot", head + `"n":1.,"data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"number bare exponent", head + `"n":1e,"data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"number plus", head + `"n":+1,"data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"huge number", head + `"n":1e999999,"data":{"operation":"create","enrollment":{` + en + `}}}`, true, true},
		{"bad literal", head + `"n":tru,"data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"literal run-on", head + `"n":truex,"data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"deep twin", enr(`,"initialTwin":{"tags":{"a":` + strings.Repeat("[", 150) + strings.Repeat("]", 150) + `}}`), true, true},
		{"too deep for the fast path", enr(`,"initialTwin":{"tags":{"a":` + strings.Repeat("[", 300) + strings.Repeat("]", 300) + `}}`), false, true},
		{"trailing comma", enr(`,`), false, false},
		{"trailing data", enr("") + `{}`, false, false},
		{"trailing whitespace", enr("") + " \n", true, true},
		{"byte order mark", "\ufeff" + enr(""), false, false},
		{"not an object", `[]`, false, false},
		{"empty", ``, false, false},
		{"time with offset", head + `"time":"2024-05-01T12:00:00.123456789+02:00","data":{"operation":"create","enrollment":{` + en + `}}}`, true, true},
		{"time with long fraction", head + `"time":"2024-05-01T12:00:00.1234567891234Z","data":{"operation":"create","enrollment":{` + en + `}}}`, true, true},
		{"time lower case", head + `"time":"2024-05-01t12:00:00z","data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"time leap second", head + `"time":"2024-12-31T23:59:60Z","data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"time February 30", head + `"time":"2024-02-30T12:00:00Z","data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"time February 29", head + `"time":"2024-02-29T12:00:00Z","data":{"operation":"create","enrollment":{` + en + `}}}`, true, true},
		{"time hour 24", head + `"time":"2024-05-01T24:00:00Z","data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"time offset 24", head + `"time":"2024-05-01T12:00:00+24:00","data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"time without zone", head + `"time":"2024-05-01T12:00:00","data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"time empty", head + `"time":"","data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"DPS timestamps", enr(`,"createdDateTimeUtc":"2023-05-19T23:10:45.1256254Z","lastUpdatedDateTimeUtc":"2023-05-19T23:10:45-07:30"`), true, true},
		{"source relative path", `{"specversion":"1.0","id":"e1","source":"/factory/line-7","type":"com.dpsync.enrollment.v1","data":{"operation":"delete","enrollment":{"registrationId":"d"}}}`, true, true},
		{"source first segment with colon", `{"specversion":"1.0","id":"e1","source":"1a:b","type":"com.dpsync.enrollment.v1","data":{"operation":"delete","enrollment":{"registrationId":"d"}}}`, false, false},
		{"source with backslash", `{"specversion":"1.0","id":"e1","source":"a\\b","type":"com.dpsync.enrollment.v1","data":{"operation":"delete","enrollment":{"registrationId":"d"}}}`, false, false},
		{"source IPv6 host", `{"specversion":"1.0","id":"e1","source":"http://[::1]:80/x","type":"com.dpsync.enrollment.v1","data":{"operation":"delete","enrollment":{"registrationId":"d"}}}`, false, true},
		{"source bad port", `{"specversion":"1.0","id":"e1","source":"http://h:port/","type":"com.dpsync.enrollment.v1","data":{"operation":"delete","enrollment":{"registrationId":"d"}}}`, false, false},
		{"source bad percent escape", `{"specversion":"1.0","id":"e1","source":"http://h/%zz","type":"com.dpsync.enrollment.v1","data":{"operation":"delete","enrollment":{"registrationId":"d"}}}`, false, false},
		{"dataschema relative", head + `"dataschema":"/schemas/x","data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"dataschema absolute", head + `"dataschema":"https://dpsync.dev/s#frag","data":{"operation":"create","enrollment":{` + en + `}}}`, true, true},
		{"id 256 characters", `{"specversion":"1.0","id":"` + strings.Repeat("é", 256) + `","source":"s","type":"com.dpsync.enrollment.v1","data":{"operation":"delete","enrollment":{"registrationId":"d"}}}`, true, true},
		{"id 257 characters", `{"specversion":"1.0","id":"` + strings.Repeat("a", 257) + `","source":"s","type":"com.dpsync.enrollment.v1","data":{"operation":"delete","enrollment":{"registrationId":"d"}}}`, false, false},
		{"registration id 128 characters", head + `"data":{"operation":"delete","enrollment":{"registrationId":"` + strings.Repeat("a", 128) + `"}}}`, true, true},
		{"registration id 129 characters", head + `"data":{"operation":"delete","enrollment":{"registrationId":"` + strings.Repeat("a", 129) + `"}}}`, false, false},
		{"registration id ending with colon", head + `"data":{"operation":"delete","enrollment":{"registrationId":"a:"}}}`, false, false},
		{"registration id with newline", head + `"data":{"operation":"delete","enrollment":{"registrationId":"a\n"}}}`, false, false},
		{"device id punctuation", enr(`,"deviceId":"a-.%_*?!(),:=@$'z"`), true, true},
		{"device id with slash", enr(`,"deviceId":"a/b"`), false, false},
		{"registrationState", enr(`,"registrationState":{"registrationId":"dev-1"}`), false, true},
		{"registrationState wrong field type", enr(`,"registrationState":{"errorCode":"x"}`), false, false},
		{"certificate info", head + `"data":{"operation":"create","enrollment":{"registrationId":"d","attestation":{"type":"x509","x509":{"caReferences":{"primary":"ca"},"clientCertificates":{"secondary":{"info":{}}}}}}}}`, false, false},
		{"empty iotHubs", enr(`,"iotHubs":[]`), true, true},
		{"empty string in iotHubs", enr(`,"iotHubs":["a",""]`), false, false},
		{"empty twin sections", enr(`,"optionalDeviceInformation":{},"initialTwin":{"tags":{},"properties":{}}`), true, true},
		{"empty desired", enr(`,"initialTwin":{"properties":{"desired":{}}}`), true, true},
		{"null twin", enr(`,"initialTwin":{"tags":null}`), false, false},
		{"all enrollment fields", enr(`,"deviceId":"d","optionalDeviceInformation":{"a":1},"capabilities":{"iotEdge":true},"iotHubHostName":"h","etag":"e","provisioningStatus":"disabled","reprovisionPolicy":{"migrateDeviceData":false,"updateHubAssignment":true},"allocationPolicy":"custom","iotHubs":["h1","h2"],"customAllocationDefinition":{"webhookUrl":"https://fn.example/api?code=1","apiVersion":"2021-10-01"}`), true, true},
		{"custom allocation without apiVersion", enr(`,"customAllocationDefinition":{"webhookUrl":"https://fn.example/api"}`), false, false},
		{"custom allocation relative webhook", enr(`,"customAllocationDefinition":{"webhookUrl":"/api","apiVersion":"1"}`), false, false},
		{"reprovision policy half", enr(`,"reprovisionPolicy":{"migrateDeviceData":false}`), false, false},
		{"capabilities empty", enr(`,"capabilities":{}`), false, false},
		{"group tpm", `{"specversion":"1.0","id":"e1","source":"s","type":"com.dpsync.enrollmentgroup.v1","data":{"operation":"create","enrollmentGroup":{"enrollmentGroupId":"g","attestation":{"type":"tpm","tpm":{"endorsementKey":"AAAA"}}}}}`, false, false},
		{"group with registrationId", `{"specversion":"1.0","id":"e1","source":"s","type":"com.dpsync.enrollmentgroup.v1","data":{"operation":"delete","enrollmentGroup":{"enrollmentGroupId":"g","registrationId":"d"}}}`, false, false},
		{"group with deviceId", `{"specversion":"1.0","id":"e1","source":"s","type":"com.dpsync.enrollmentgroup.v1","data":{"operation":"delete","enrollmentGroup":{"enrollmentGroupId":"g","deviceId":"d"}}}`, false, false},
		{"enrollment with enrollmentGroupId", head + `"data":{"operation":"delete","enrollment":{"registrationId":"d","enrollmentGroupId":"g"}}}`, false, false},
		{"group data under enrollment type", head + `"data":{"operation":"delete","enrollmentGroup":{"enrollmentGroupId":"g"}}}`, false, false},
		{"both data members", head + `"data":{"operation":"delete","enrollment":{"registrationId":"d"},"enrollmentGroup":{"enrollmentGroupId":"g"}}}`, false, false},
		{"tpm with storage root key", head + `"data":{"operation":"create","enrollment":{"registrationId":"d","attestation":{"type":"tpm","tpm":{"endorsementKey":"AAAA","storageRootKey":""}}}}}`, true, true},
		{"tpm key not base64", head + `"data":{"operation":"create","enrollment":{"registrationId":"d","attestation":{"type":"tpm","tpm":{"endorsementKey":"A"}}}}}`, false, false},
		{"symmetric key empty keys", head + `"data":{"operation":"create","enrollment":{"registrationId":"d","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"","secondaryKey":""}}}}}`, true, true},
		{"x509 CA reference without primary", head + `"data":{"operation":"create","enrollment":{"registrationId":"d","attestation":{"type":"x509","x509":{"caReferences":{"secondary":"ca"}}}}}}`, false, false},
		{"x509 empty certificate", head + `"data":{"operation":"create","enrollment":{"registrationId":"d","attestation":{"type":"x509","x509":{"clientCertificates":{"primary":{"certificate":""}}}}}}}`, false, false},
		{"delete with attestation", head + `"data":{"operation":"delete","enrollment":{` + en + `}}}`, true, true},
		{"updateIfMatchETag without etag", head + `"data":{"operation":"updateIfMatchETag","enrollment":{` + en + `}}}`, false, false},
		{"updateIfMatchEtag with etag", head + `"data":{"operation":"updateIfMatchEtag","enrollment":{` + en + `,"etag":"x"}}}`, true, true},
		{"specversion number", `{"specversion":1.0,"id":"e1","source":"s","type":"com.dpsync.enrollment.v1","data":{"operation":"delete","enrollment":{"registrationId":"d"}}}`, false, false},
		{"datacontenttype", head + `"datacontenttype":"application/json","data":{"operation":"create","enrollment":{` + en + `}}}`, true, true},
		{"datacontenttype other", head + `"datacontenttype":"text/json","data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
		{"subject empty", head + `"subject":"","data":{"operation":"create","enrollment":{` + en + `}}}`, false, false},
	}
	d := newTestDecoder(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fast, slow := agree(t, d, []byte(tt.in))
			if fast != tt.fast {
				t.Errorf("fast path accepts: got %v, want %v", fast, tt.fast)
			}
			if slow != tt.slow {
				t.Errorf("slow path accepts: got %v, want %v", slow, tt.slow)
			}
		})
	}
}

// TestCertificateErrorIsDeterministic: with both certificates bad, the error always names
// the primary one (the smallest field path), however often the event is decoded.
func TestCertificateErrorIsDeterministic(t *testing.T) {
	b := []byte(`{"specversion":"1.0","id":"1","source":"s","type":"com.dpsync.enrollment.v1","data":{"operation":"create","enrollment":{"registrationId":"d","attestation":{"type":"x509","x509":{"clientCertificates":{"primary":{"certificate":"AAAA"},"secondary":{"certificate":"!!"}}}}}}}`)
	const want = "data.enrollment.attestation.x509.clientCertificates.primary.certificate: is not a parseable X.509 certificate (x509: malformed certificate)"
	for range 50 {
		if _, err := Decode(b); err == nil || err.Error() != want {
			t.Fatalf("Decode error: got %v, want %q", err, want)
		}
	}
}

// TestFastPathAgrees runs the invariant over every example and many mutations of each:
// every member dropped, renamed, replaced by values of other types, by empty, long and
// malformed strings and by the other enum values, unknown and known members added at every
// level, and the event truncated at every byte.
func TestFastPathAgrees(t *testing.T) {
	d := newTestDecoder(t)
	var n, fastN, slowN int
	check := func(b []byte) {
		t.Helper()
		fast, slow := agree(t, d, b)
		n++
		if fast {
			fastN++
		}
		if slow {
			slowN++
		}
	}
	for _, dir := range []string{"valid", "invalid"} {
		ex := readExamples(t, dir)
		for _, name := range slices.Sorted(maps.Keys(ex)) {
			b := ex[name]
			check(b)
			var doc any
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.UseNumber()
			if err := dec.Decode(&doc); err != nil {
				continue // not JSON: nothing to mutate structurally
			}
			for _, m := range mutants(doc, 0) {
				out, err := json.Marshal(m)
				if err != nil {
					t.Fatal(err)
				}
				check(out)
			}
			if dir == "valid" && !testing.Short() {
				for i := range b {
					check(b[:i])
				}
			}
		}
	}
	t.Logf("%d inputs: the slow path accepts %d, the fast path %d", n, slowN, fastN)
	if fastN < slowN/2 {
		t.Errorf("the fast path accepts %d of %d valid mutants, want at least half", fastN, slowN)
	}
}

// replacements are the values every member of an example is replaced by in turn.
var replacements = []any{
	nil, true, false, json.Number("0"), json.Number("-1.5e3"), map[string]any{}, []any{}, []any{"x"},
	"", " ", "x", "X.", "a b", "a/b", "é", "<&>", "\u2028", "😀", strings.Repeat("a", 128), strings.Repeat("b", 129),
	strings.Repeat("c", 257), "1.0", "application/json", TypeEnrollment, TypeGroup,
	"create", "update", "updateIfMatchETag", "updateIfMatchEtag", "delete", "upsert",
	"tpm", "x509", "symmetricKey", "none", "enabled", "disabled", "hashed", "geoLatency", "static", "custom",
	"2024-05-01T12:00:00Z", "2024-05-01T12:00:00.5+05:30", "2024-02-30T12:00:00Z", "2024-05-01 12:00:00Z",
	"urn:x", "https://example.com/x?y#z", "/relative", "a:b:c", "http://[::1]/", "http://h:x/",
	"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "c2hvcnQ=", "AAAA", "not base64!",
}

// additions are members (with plausible valid values) added to every object of an example.
var additions = map[string]any{
	"time":                      "2024-05-01T12:00:00+02:00",
	"subject":                   "s",
	"dataschema":                "https://dpsync.dev/x",
	"datacontenttype":           "application/json",
	"traceparent":               "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
	"bogus":                     "x",
	"deviceId":                  "dev(1)@x",
	"registrationId":            "dev-9",
	"enrollmentGroupId":         "group-9",
	"registrationState":         map[string]any{"registrationId": "dev-9"},
	"optionalDeviceInformation": map[string]any{"a": json.Number("1")},
	"capabilities":              map[string]any{"iotEdge": true},
	"iotHubHostName":            "hub.azure-devices.net",
	"etag":                      "abc",
	"provisioningStatus":        "disabled",
	"reprovisionPolicy":         map[string]any{"updateHubAssignment": false, "migrateDeviceData": true},
	"createdDateTimeUtc":        "2023-05-19T23:10:45.1256254Z",
	"lastUpdatedDateTimeUtc":    "2023-05-19T23:10:45-03:00",
	"allocationPolicy":          "geoLatency",
	"iotHubs":                   []any{"a", "b"},
	"customAllocationDefinition": map[string]any{
		"webhookUrl": "https://fn.example/api", "apiVersion": "2021-10-01",
	},
	"initialTwin":         map[string]any{"tags": map[string]any{}, "properties": map[string]any{"desired": map[string]any{}}},
	"attestation":         map[string]any{"type": "symmetricKey"},
	"tpm":                 map[string]any{"endorsementKey": "AAAA"},
	"x509":                map[string]any{"caReferences": map[string]any{"primary": "ca"}},
	"symmetricKey":        map[string]any{},
	"caReferences":        map[string]any{"primary": "ca"},
	"clientCertificates":  map[string]any{},
	"signingCertificates": map[string]any{},
	"storageRootKey":      "AAAA",
	"primary":             "ca",
	"secondary":           "ca",
	"info":                map[string]any{},
	"operation":           "delete",
	"enrollment":          map[string]any{"registrationId": "dev-9"},
	"enrollmentGroup":     map[string]any{"enrollmentGroupId": "group-9"},
	"tags":                map[string]any{},
	"properties":          map[string]any{},
	"desired":             map[string]any{"a": "b"},
}

// mutants returns variants of v that each differ from it in one place (sub-trees are shared,
// never modified).
func mutants(v any, depth int) []any {
	var out []any
	switch v := v.(type) {
	case map[string]any:
		with := func(k string, x any) map[string]any {
			m := maps.Clone(v)
			m[k] = x
			return m
		}
		for _, k := range slices.Sorted(maps.Keys(v)) {
			m := maps.Clone(v)
			delete(m, k)
			out = append(out, m)
			renamed := maps.Clone(m)
			renamed[strings.ToUpper(k[:1])+k[1:]] = v[k]
			out = append(out, renamed)
			for _, x := range mutants(v[k], depth+1) {
				out = append(out, with(k, x))
			}
			for _, x := range replacements {
				out = append(out, with(k, x))
			}
		}
		for _, k := range slices.Sorted(maps.Keys(additions)) {
			if _, ok := v[k]; !ok {
				out = append(out, with(k, additions[k]))
			}
		}
	case []any:
		for i := range v {
			out = append(out, slices.Delete(slices.Clone(v), i, i+1))
			for _, x := range mutants(v[i], depth+1) {
				s := slices.Clone(v)
				s[i] = x
				out = append(out, s)
			}
		}
		out = append(out, append(slices.Clone(v), ""), append(slices.Clone(v), json.Number("1")))
	case string:
		out = append(out, strings.ToUpper(v), v+".", v+" ", " "+v, v+"\n")
	}
	return out
}

// FuzzFastPathAgrees: whatever the input, the fast path never accepts an event the slow path
// rejects, and when both accept they build equal events.
func FuzzFastPathAgrees(f *testing.F) {
	for _, dir := range []string{"valid", "invalid"} {
		paths, _ := filepath.Glob(filepath.Join(examples, dir, "*.json"))
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Add([]byte(`{"specversion":"1.0","id":"e\u0031","source":"urn:s","type":"com.dpsync.enrollment.v1","time":"2024-05-01T12:00:00.5+02:00","x1":[1,-2.5e3,{"a":null}],"data":{"operation":"update","enrollment":{"registrationId":"d","deviceId":"d!","etag":"e","attestation":{"type":"tpm","tpm":{"endorsementKey":"AAAA","storageRootKey":""}},"optionalDeviceInformation":{"k":"\ud83d\ude00"},"createdDateTimeUtc":"2023-05-19T23:10:45.1256254Z","customAllocationDefinition":{"webhookUrl":"https://f/x","apiVersion":"1"},"iotHubs":[]}}}`))
	d, err := NewDecoder()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		agree(t, d, b)
	})
}

// BenchmarkDecodeExamples decodes each valid example (the fast path) and a few invalid ones
// (the fast path gives up, then the slow path words the error).
func BenchmarkDecodeExamples(b *testing.B) {
	d := newTestDecoder(b)
	for _, dir := range []string{"valid", "invalid"} {
		ex := readExamples(b, dir)
		for _, name := range slices.Sorted(maps.Keys(ex)) {
			if dir == "invalid" && !slices.Contains([]string{"registration-id-with-space", "misspelled-enrollment-field", "symmetric-key-not-base64"}, name) {
				continue
			}
			ev := ex[name]
			b.Run(dir+"/"+name, func(b *testing.B) {
				b.SetBytes(int64(len(ev)))
				b.ReportAllocs()
				for b.Loop() {
					_, _ = d.Decode(ev)
				}
			})
		}
	}
}
