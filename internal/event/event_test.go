package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsync/dpsync/internal/dps"
)

func TestSubjectToken(t *testing.T) {
	tests := []struct{ id, token string }{
		{"sensor-0001", "sensor-0001"},
		{"Sensor-0001", "sensor-0001"},
		{"Line-7.Station:3_sensor", "line-7%2Estation:3_sensor"},
		{"a.b.c", "a%2Eb%2Ec"},
		{"sensor 0001", "sensor%200001"},
		{"line/7", "line%2F7"},
		{"*", "%2A"},
		{">", "%3E"},
		{"100%", "100%25"},
		{"Grüße", "gr%C3%BC%C3%9Fe"},
	}
	for _, tt := range tests {
		if got := SubjectToken(tt.id); got != tt.token {
			t.Errorf("SubjectToken(%q) = %q, want %q", tt.id, got, tt.token)
		}
		if got, want := ParseSubjectToken(tt.token), strings.ToLower(tt.id); got != want {
			t.Errorf("ParseSubjectToken(%q) = %q, want %q", tt.token, got, want)
		}
		if strings.ContainsAny(SubjectToken(tt.id), ". *>\t\r\n") {
			t.Errorf("token of %q contains a subject separator or wildcard", tt.id)
		}
	}
	for token, want := range map[string]string{"a%2eb": "a.b", "a%": "a%", "a%2": "a%2", "a%zz": "a%zz", "%2E%2e": ".."} {
		if got := ParseSubjectToken(token); got != want {
			t.Errorf("ParseSubjectToken(%q) = %q, want %q", token, got, want)
		}
	}
}

func TestSubjects(t *testing.T) {
	if got, want := SubjectFor(KindEnrollment, "Line-7.S1"), "dpsync.events.enrollment.line-7%2Es1"; got != want {
		t.Errorf("SubjectFor = %q, want %q", got, want)
	}
	if got, want := Subject("x.y", KindGroup, "G.1"), "x.y.group.g%2E1"; got != want {
		t.Errorf("Subject = %q, want %q", got, want)
	}
	tests := []struct {
		subject string
		kind    Kind
		token   string
		part    int
		err     bool
	}{
		{"dpsync.events.enrollment.line-7%2Es1", KindEnrollment, "line-7%2Es1", -1, false},
		{"dpsync.part.12.group.g1", KindGroup, "g1", 12, false},
		{"dpsync.part.0.enrollment.a:b", KindEnrollment, "a:b", 0, false},
		{"dpsync.events.device.x", "", "", 0, true},
		{"dpsync.part.x.group.g1", "", "", 0, true},
		{"dpsync.part.-1.group.g1", "", "", 0, true},
		{"dpsync.events.enrollment.a.b", "", "", 0, true},
		{"dpsync.events.enrollment", "", "", 0, true},
		{"other.events.enrollment.a", "", "", 0, true},
		{"dpsync.events.group.", "", "", 0, true},
	}
	for _, tt := range tests {
		kind, token, part, err := ParseSubject(tt.subject)
		if (err != nil) != tt.err {
			t.Errorf("ParseSubject(%q) error = %v, want error %v", tt.subject, err, tt.err)
			continue
		}
		if !tt.err && (kind != tt.kind || token != tt.token || part != tt.part) {
			t.Errorf("ParseSubject(%q) = %q, %q, %d, want %q, %q, %d", tt.subject, kind, token, part, tt.kind, tt.token, tt.part)
		}
	}
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(examples, path))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeFields(t *testing.T) {
	e, err := Decode(mustRead(t, "valid/enrollment-with-extensions.json"))
	if err != nil {
		t.Fatal(err)
	}
	if e.ID != "evt-0011" || e.Source != "urn:factory:line-7" || e.Type != TypeEnrollment || e.SpecVersion != "1.0" ||
		e.Subject != "sensor-0004" || e.DataContentType != "application/json" || !e.Time.Equal(time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)) {
		t.Fatalf("envelope = %+v", e)
	}
	if got := string(e.Extensions["traceparent"]); got != `"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"` {
		t.Fatalf("traceparent extension = %s", got)
	}
	if _, ok := e.Extensions["id"]; ok {
		t.Fatal("envelope attribute listed as an extension")
	}
	if e.Kind != KindEnrollment || e.Operation != dps.BulkModeUpdate || e.Enrollment.RegistrationID != "sensor-0004" || e.Group != nil {
		t.Fatalf("data = %+v", e)
	}

	e, err = Decode(mustRead(t, "valid/enrollment-update-if-match-etag-node-spelling.json"))
	if err != nil {
		t.Fatal(err)
	}
	if e.Operation != dps.BulkModeUpdateIfMatchETag || e.ETag() == "" {
		t.Fatalf("Operation = %q, ETag = %q, want updateIfMatchETag and an etag", e.Operation, e.ETag())
	}

	e, err = Decode(mustRead(t, "valid/group-update.json"))
	if err != nil {
		t.Fatal(err)
	}
	if e.Kind != KindGroup || e.Group.EnrollmentGroupID != "line-7-sensors" || e.Enrollment != nil {
		t.Fatalf("group event = %+v", e)
	}
	if got, want := string(e.Group.InitialTwin.Tags["line"]), `"7"`; got != want {
		t.Fatalf("tag line = %s, want %s", got, want)
	}
}

func TestKeyAndTarget(t *testing.T) {
	e, err := Decode(mustRead(t, "valid/enrollment-id-with-dots-and-colons.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := e.TargetID(), "Line-7.Station:3_sensor-"; got != want {
		t.Errorf("TargetID = %q, want %q", got, want)
	}
	if got, want := e.Key(), "enrollment/line-7.station:3_sensor-"; got != want {
		t.Errorf("Key = %q, want %q", got, want)
	}
	if got, want := e.StreamSubject(SubjectPrefix), "dpsync.events.enrollment.line-7%2Estation:3_sensor-"; got != want {
		t.Errorf("StreamSubject = %q, want %q", got, want)
	}
	g := NewGroup(dps.BulkModeDelete, &dps.EnrollmentGroup{EnrollmentGroupID: "Line-7"})
	if got, want := g.Key(), "group/line-7"; got != want {
		t.Errorf("group Key = %q, want %q", got, want)
	}
}

func TestSizeLimit(t *testing.T) {
	// A valid event padded with twin tags to just over and just under 96 KB.
	build := func(size int) []byte {
		head := `{"specversion":"1.0","id":"big","source":"s","type":"com.dpsync.enrollment.v1","data":{"operation":"create","enrollment":{"registrationId":"big","attestation":{"type":"symmetricKey"},"initialTwin":{"tags":{"pad":"`
		tail := `"}}}}}`
		return []byte(head + strings.Repeat("x", size-len(head)-len(tail)) + tail)
	}
	if _, err := Decode(build(MaxSize)); err != nil {
		t.Fatalf("Decode of exactly %d bytes: %v", MaxSize, err)
	}
	_, err := Decode(build(MaxSize + 1))
	var ie *InvalidError
	if !errors.As(err, &ie) {
		t.Fatalf("Decode of %d bytes = %v, want *InvalidError", MaxSize+1, err)
	}
	if got, want := err.Error(), "event is 98305 bytes, over DPS's 96 KB message limit (98304 bytes)"; got != want {
		t.Fatalf("error = %q, want %q", got, want)
	}
}

// TestErrorsNeverQuoteSecrets: rejected keys and certificates never appear in the error.
func TestErrorsNeverQuoteSecrets(t *testing.T) {
	rejected := 0
	defer func() {
		if rejected < 10 {
			t.Errorf("only %d of 12 cases were rejected; the test checks nothing", rejected)
		}
	}()
	secrets := []string{"c2hvcnQtc2VjcmV0", "NOT-BASE64-SECRET!!", "-----BEGIN CERTIFICATE-----\nTUlJQm9nSUJBQUtCZ1FD\n-----END CERTIFICATE-----\n"}
	for _, s := range secrets {
		for _, att := range []string{
			fmt.Sprintf(`{"type":"symmetricKey","symmetricKey":{"primaryKey":%q}}`, s),
			fmt.Sprintf(`{"type":"symmetricKey","symmetricKey":{"secondaryKey":%q}}`, s),
			fmt.Sprintf(`{"type":"tpm","tpm":{"endorsementKey":%q}}`, s),
			fmt.Sprintf(`{"type":"x509","x509":{"clientCertificates":{"primary":{"certificate":%q}}}}`, s),
		} {
			b := fmt.Sprintf(`{"specversion":"1.0","id":"1","source":"s","type":"com.dpsync.enrollment.v1","data":{"operation":"create","enrollment":{"registrationId":"d","attestation":%s}}}`, att)
			_, err := Decode([]byte(b))
			if err == nil {
				continue // e.g. a short base64 string is a well-formed endorsement key
			}
			rejected++
			if strings.Contains(err.Error(), strings.TrimSpace(s)) || strings.Contains(err.Error(), "TUlJQm9n") {
				t.Fatalf("error %q quotes the secret", err)
			}
		}
	}
}

func TestInvalidErrorFormat(t *testing.T) {
	tests := []struct {
		err  InvalidError
		want string
	}{
		{InvalidError{Field: "data.operation", Reason: "is required"}, "data.operation: is required"},
		{InvalidError{Reason: "not JSON: x"}, "not JSON: x"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
	var wrapped error = fmt.Errorf("decode: %w", &InvalidError{Field: "id", Reason: "is required"})
	var ie *InvalidError
	if !errors.As(wrapped, &ie) || ie.Field != "id" {
		t.Fatalf("errors.As through a wrap = %v, %+v", errors.As(wrapped, &ie), ie)
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	status := dps.ProvisioningStatusEnabled
	tests := []*Event{
		NewEnrollment(dps.BulkModeCreate, &dps.IndividualEnrollment{
			RegistrationID: "Dev.1", ProvisioningStatus: &status,
			Attestation: &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{}},
			InitialTwin: &dps.InitialTwin{Tags: dps.TwinCollection{"line": json.RawMessage(`"7"`)}},
		}),
		NewEnrollment(dps.BulkModeDelete, &dps.IndividualEnrollment{RegistrationID: "dev-2"}),
		NewGroup(dps.BulkModeUpdateIfMatchETag, &dps.EnrollmentGroup{EnrollmentGroupID: "g1", ETag: "IjAxIg==",
			Attestation: &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey}}),
	}
	for _, e := range tests {
		e.Extensions = map[string]json.RawMessage{"traceparent": json.RawMessage(`"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"`)}
		b, err := e.Encode()
		if err != nil {
			t.Fatalf("Encode(%s %s): %v", e.Operation, e.TargetID(), err)
		}
		if e.ID == "" || e.Time.IsZero() || e.Source != DefaultSource || !bytes.Equal(e.Raw, b) {
			t.Fatalf("Encode did not fill id/time/source/raw: %+v", e)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(Encode()) = %v\n%s", err, b)
		}
		if got.ID != e.ID || got.Kind != e.Kind || got.Operation != e.Operation || got.TargetID() != e.TargetID() ||
			got.Key() != e.Key() || !got.Time.Equal(e.Time) || got.ETag() != e.ETag() || len(got.Extensions) != 1 {
			t.Fatalf("round trip: got %+v, want %+v", got, e)
		}
	}
	a, _ := NewEnrollment(dps.BulkModeDelete, &dps.IndividualEnrollment{RegistrationID: "x"}).Encode()
	b, _ := NewEnrollment(dps.BulkModeDelete, &dps.IndividualEnrollment{RegistrationID: "x"}).Encode()
	var ea, eb map[string]any
	_ = json.Unmarshal(a, &ea)
	_ = json.Unmarshal(b, &eb)
	if ea["id"] == eb["id"] {
		t.Fatalf("two events got the same generated id %v", ea["id"])
	}
}

func TestEncodeRejectsInvalid(t *testing.T) {
	tests := []struct {
		e    *Event
		want string
	}{
		{NewEnrollment(dps.BulkModeCreate, &dps.IndividualEnrollment{RegistrationID: "bad id"}), "data.enrollment.attestation: is required for create, update and updateIfMatchETag"},
		{NewEnrollment(dps.BulkModeCreate, nil), "data.enrollment: is required"},
		{NewGroup("upsert", &dps.EnrollmentGroup{EnrollmentGroupID: "g"}), `data.operation: must be create, update, updateIfMatchETag or delete, not "upsert"`},
		{&Event{Kind: "device"}, `kind: must be "enrollment" or "group"`},
	}
	for _, tt := range tests {
		_, err := tt.e.Encode()
		var ie *InvalidError
		if !errors.As(err, &ie) || err.Error() != tt.want {
			t.Errorf("Encode() = %v, want %q", err, tt.want)
		}
	}
}

func TestDecoderIsReusable(t *testing.T) {
	d, err := NewDecoder()
	if err != nil {
		t.Fatal(err)
	}
	good := mustRead(t, "valid/enrollment-create-tpm.json")
	bad := mustRead(t, "invalid/registration-id-with-space.json")
	for range 3 {
		if _, err := d.Decode(good); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Decode(bad); err == nil {
			t.Fatal("accepted an invalid event")
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	ev := mustRead(b, "valid/enrollment-update-initial-twin.json")
	d, err := NewDecoder()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(ev)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Decode(ev); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzDecode(f *testing.F) {
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
	d, err := NewDecoder()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := d.Decode(b)
		if err != nil {
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("error %v (%T) is not an *InvalidError", err, err)
			}
			return
		}
		// A valid event has a target, a key and a subject that parses back.
		if e.TargetID() == "" {
			t.Fatalf("valid event without target: %s", b)
		}
		kind, token, _, perr := ParseSubject(e.StreamSubject(SubjectPrefix))
		if perr != nil || kind != e.Kind || ParseSubjectToken(token) != strings.ToLower(e.TargetID()) {
			t.Fatalf("subject of %q does not round-trip: %v", e.TargetID(), perr)
		}
	})
}

func FuzzSubjectToken(f *testing.F) {
	for _, s := range []string{"sensor-1", "A.b:c_d", "a b", "%2E", "*", ">", "Grüße", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		tok := SubjectToken(id)
		if strings.ContainsAny(tok, ". *>\t\r\n") {
			t.Fatalf("SubjectToken(%q) = %q holds a subject separator, wildcard or space", id, tok)
		}
		if got, want := ParseSubjectToken(tok), strings.ToLower(id); got != want {
			t.Fatalf("ParseSubjectToken(SubjectToken(%q)) = %q, want %q", id, got, want)
		}
	})
}

// TestWrongEnumValueIsNotQuotedWhenItMayBeASecret: a key pasted into an enum field must not
// reach the dead-letter reason; a short name is quoted to help.
func TestWrongEnumValueIsNotQuotedWhenItMayBeASecret(t *testing.T) {
	key := "bXkga2V5IG9mIDMyIGJ5dGVzIC4uLi4uLi4uLi4uLi4="
	for _, tc := range []struct {
		value     string
		wantShown bool
	}{{"symmetrickey", true}, {"text/plain", true}, {"com.example.device.v1", true}, {key, false}, {key[:24], false},
		{"bXkga2V5IG9mIDMyIGJ5dGVzIC4uLi4uLi", false}, {"a b", false}} {
		got := gotValue(tc.value)
		if shown := strings.Contains(got, tc.value); shown != tc.wantShown {
			t.Errorf("gotValue(%q) = %q: value shown %v, want %v", tc.value, got, shown, tc.wantShown)
		}
	}
}
