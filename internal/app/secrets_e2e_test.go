package app

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/event"
)

// secretKey returns n random bytes in base64, as a supplied symmetric key or TPM
// endorsement key is written in an event.
func secretKey(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// secretFragments returns what must not appear of secret: every 16-character stretch of it,
// of its URL-safe spelling and, when it is base64, of the hex of the decoded bytes, and
// every 16-byte stretch of the decoded bytes themselves.
func secretFragments(secret string) []string {
	var out []string
	windows := func(s string) {
		if len(s) < 16 {
			out = append(out, s)
			return
		}
		for i := 0; i+16 <= len(s); i++ {
			out = append(out, s[i:i+16])
		}
	}
	windows(secret)
	windows(strings.NewReplacer("+", "-", "/", "_").Replace(secret))
	if raw, err := base64.StdEncoding.DecodeString(secret); err == nil && len(raw) > 0 {
		windows(string(raw))
		windows(hex.EncodeToString(raw))
		windows(strings.ToUpper(hex.EncodeToString(raw)))
	}
	return out
}

// findSecret returns a description of the first secret (or fragment of one) in text.
func findSecret(text string, secrets map[string]string) (string, bool) {
	for name, secret := range secrets {
		for _, f := range secretFragments(secret) {
			if strings.Contains(text, f) {
				return fmt.Sprintf("%s (fragment %.6s…)", name, f), true
			}
		}
	}
	return "", false
}

// rawEvent is a CloudEvents envelope around data, encoded as a producer would.
func rawEvent(t *testing.T, typ, id string, data any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"specversion": "1.0", "id": id, "source": "urn:test", "type": typ, "data": data,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A worker logging at DEBUG handles events that carry supplied symmetric keys (32 and 64
// bytes) and a TPM endorsement key: applied ones, and ones that fail at DPS (409, 412, a
// rejected bulk call) or are invalid. Neither its logs nor its /metrics hold any of the
// keys, any 16-character fragment of them or of their decoded bytes, the DPS connection
// string, its key or a SAS token.
func TestSecretsNeverInLogsOrMetrics(t *testing.T) {
	s := newStack(t, emulator.Options{Faults: emulator.Faults{BulkRejectIDs: []string{"sk-poison"}}})
	ctx := context.Background()
	secrets := map[string]string{}
	key := func(name string, n int) string {
		k := secretKey(t, n)
		secrets[name] = k
		return k
	}
	symmetric := func(primary, secondary string) *dps.AttestationMechanism {
		return &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey,
			SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: primary, SecondaryKey: secondary}}
	}
	withKeys := func(id string, v int, primary, secondary string) *dps.IndividualEnrollment {
		e := tagged(id, v)
		e.Attestation = symmetric(primary, secondary)
		return e
	}
	groupWithKeys := func(id string, primary, secondary string) *dps.EnrollmentGroup {
		return &dps.EnrollmentGroup{EnrollmentGroupID: id, Attestation: symmetric(primary, secondary),
			InitialTwin: &dps.InitialTwin{Tags: dps.TwinCollection{"v": json.RawMessage("1")}}}
	}

	// Targets that exist already (without the twin tag of the events): their creates fail
	// with 409. DPS generated their keys: those are secrets too.
	exists, err := s.client.CreateOrUpdateEnrollment(ctx, *tagged("sk-exists", 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	secrets["DPS's primary key of sk-exists"] = exists.Attestation.SymmetricKey.PrimaryKey
	secrets["DPS's secondary key of sk-exists"] = exists.Attestation.SymmetricKey.SecondaryKey
	gexists, err := s.client.CreateOrUpdateEnrollmentGroup(ctx, dps.EnrollmentGroup{EnrollmentGroupID: "grp-exists", Attestation: symKey()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	secrets["DPS's primary key of grp-exists"] = gexists.Attestation.SymmetricKey.PrimaryKey

	var info Info
	s.worker(func(o *Options) {
		o.HTTPAddr = "127.0.0.1:0"
		o.OnReady = func(i Info) { info = i }
		o.Batcher.Linger = 100 * time.Millisecond // the poison item shares its bulk call
	})

	tpm := &dps.IndividualEnrollment{RegistrationID: "tpm-1", Attestation: &dps.AttestationMechanism{
		Type: dps.AttestationTypeTPM, TPM: &dps.TPMAttestation{EndorsementKey: key("TPM endorsement key", 256)}}}
	s.publish(
		event.NewEnrollment(dps.BulkModeCreate, withKeys("sk-32", 1, key("32-byte primary key", 32), key("32-byte secondary key", 32))),
		event.NewEnrollment(dps.BulkModeCreate, withKeys("sk-64", 1, key("64-byte primary key", 64), key("64-byte secondary key", 64))),
		event.NewEnrollment(dps.BulkModeCreate, tpm),
		event.NewGroup(dps.BulkModeCreate, groupWithKeys("grp-keys", key("group primary key", 32), key("group secondary key", 64))),
		// 409: the enrollment and the group exist.
		event.NewEnrollment(dps.BulkModeCreate, withKeys("sk-exists", 1, key("409 primary key", 32), key("409 secondary key", 32))),
		event.NewGroup(dps.BulkModeCreate, groupWithKeys("grp-exists", key("409 group key", 32), "")),
		// 400: DPS rejects the whole bulk call; the worker splits it down to this item.
		event.NewEnrollment(dps.BulkModeCreate, withKeys("sk-poison", 1, key("400 primary key", 32), key("400 secondary key", 64))),
	)
	s.settle(30 * time.Second)
	got, err := s.client.GetEnrollment(ctx, "sk-32", nil)
	if err != nil {
		t.Fatal(err)
	}
	// 412: an update with a stale etag, carrying keys.
	stale := withKeys("sk-32", 2, key("412 primary key", 32), key("412 secondary key", 32))
	stale.ETag = got.ETag + "x"
	s.publish(event.NewEnrollment(dps.BulkModeUpdateIfMatchETag, stale))
	// Invalid events the worker refuses itself, each with keys in it.
	invalid := map[string][]byte{
		"short key": rawEvent(t, event.TypeEnrollment, "inv-1", map[string]any{"operation": "create", "enrollment": map[string]any{
			"registrationId": "inv-short", "attestation": map[string]any{"type": "symmetricKey", "symmetricKey": map[string]any{
				"primaryKey": key("valid key beside a short one", 32), "secondaryKey": key("8-byte key", 8)}}}}),
		"key not base64": rawEvent(t, event.TypeEnrollment, "inv-2", map[string]any{"operation": "create", "enrollment": map[string]any{
			"registrationId": "inv-b64", "attestation": map[string]any{"type": "symmetricKey", "symmetricKey": map[string]any{
				"primaryKey": "!" + key("key made invalid by one character", 32)[1:]}}}}),
		"unknown field beside keys": rawEvent(t, event.TypeEnrollment, "inv-3", map[string]any{"operation": "create", "enrollment": map[string]any{
			"registrationId": "inv-field", "attestation": map[string]any{"type": "symmetricKey", "symmetricKey": map[string]any{
				"primaryKey": key("key beside an unknown field", 32), "tertiaryKey": key("unknown key field", 32)}}}}),
		"tpm on a group": rawEvent(t, event.TypeGroup, "inv-4", map[string]any{"operation": "create", "enrollmentGroup": map[string]any{
			"enrollmentGroupId": "inv-group", "attestation": map[string]any{"type": "tpm", "tpm": map[string]any{
				"endorsementKey": key("TPM key of a group", 128)}}}}),
	}
	for name, b := range invalid {
		var probe struct {
			Data struct {
				Enrollment struct {
					ID string `json:"registrationId"`
				} `json:"enrollment"`
				Group struct {
					ID string `json:"enrollmentGroupId"`
				} `json:"enrollmentGroup"`
			} `json:"data"`
		}
		if err := json.Unmarshal(b, &probe); err != nil {
			t.Fatal(err)
		}
		subject := event.SubjectFor(event.KindEnrollment, probe.Data.Enrollment.ID)
		if probe.Data.Group.ID != "" {
			subject = event.SubjectFor(event.KindGroup, probe.Data.Group.ID)
		}
		if _, err := s.js.Publish(ctx, subject, b); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	s.settle(30 * time.Second)

	// The events did what they should: otherwise the logs were not made by the paths meant.
	ens := s.enrollments()
	for _, id := range []string{"sk-32", "sk-64", "tpm-1"} {
		if _, ok := ens[id]; !ok {
			t.Errorf("%s: not applied", id)
		}
	}
	if att, err := s.client.GetEnrollmentAttestationMechanism(ctx, "sk-64", nil); err != nil ||
		att.SymmetricKey == nil || att.SymmetricKey.SecondaryKey != secrets["64-byte secondary key"] {
		t.Errorf("sk-64: DPS does not hold the supplied keys (%v)", err)
	}
	classes := map[string]string{}
	for _, l := range s.letters() {
		classes[l.Key] = fmt.Sprintf("%s %d", l.Class, l.Status)
	}
	for k, want := range map[string]string{
		"enrollment/sk-exists": "permanent 409", "group/grp-exists": "permanent 409",
		"enrollment/sk-poison": "permanent 400", "enrollment/sk-32": "permanent 412",
		"enrollment/inv-short": "invalid 0", "enrollment/inv-b64": "invalid 0",
		"enrollment/inv-field": "invalid 0", "group/inv-group": "invalid 0",
	} {
		if classes[k] != want {
			t.Errorf("letter of %s: %q, want %q (all: %v)", k, classes[k], want, classes)
		}
	}

	logs := s.logs.String()
	if !strings.Contains(logs, `"level":"DEBUG"`) || !strings.Contains(logs, `"msg":"dps call failed"`) {
		t.Fatalf("the logs hold no DEBUG record of a failed DPS call: the check would prove nothing:\n%.2000s", logs)
	}
	resp, err := http.Get("http://" + info.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "dpsync_dead_letters_total") {
		t.Fatalf("/metrics lacks the dead-letter counts: the check would prove nothing:\n%.1000s", metrics)
	}

	cs := s.emu.ConnectionString()
	_, policyKey, _ := strings.Cut(cs, "SharedAccessKey=")
	policyKey, _, _ = strings.Cut(policyKey, ";")
	secrets["DPS policy key"] = policyKey
	for what, text := range map[string]string{"logs": logs, "/metrics": string(metrics)} {
		if name, found := findSecret(text, secrets); found {
			t.Errorf("%s contain the %s", what, name)
		}
		for _, s := range []string{cs, "SharedAccessKey", "SharedAccessSignature", "sig=", "HostName="} {
			if strings.Contains(text, s) {
				t.Errorf("%s contain %.20q", what, s)
			}
		}
	}
}
