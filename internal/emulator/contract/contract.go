// Package contract is a suite of the DPS wire behaviour (DPS.md) over raw HTTP: exact
// status codes, bodies and headers. It runs against any implementation reachable by URL —
// the emulator in CI, and the same checks could run against a real instance — and uses no
// DPS client code, so a client bug cannot hide an emulator bug or the other way round.
package contract

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Target is an implementation under test.
type Target struct {
	// BaseURL is the scheme and host of the service and runtime APIs ("https://127.0.0.1:8443").
	BaseURL string
	// Client sends the requests (it must trust the target's certificate).
	Client *http.Client
	// HostName is what service SAS tokens name in sr (host[:port], lower case).
	HostName string
	// PolicyName and PolicyKey (base64) sign service SAS tokens.
	PolicyName, PolicyKey string
	// IDScope is the runtime API's ID scope.
	IDScope string
	// Runtime enables the device registration checks; the target must then assign on the
	// first poll after Retry-After.
	Runtime bool
	// LinkedHubs are the hubs hashed allocation may assign (for the even-spread check).
	LinkedHubs []string
}

// APIVersion is the api-version the suite sends.
const APIVersion = "2021-10-01"

// SAS returns a SharedAccessSignature for resource, signed with key (base64).
func SAS(resource, keyName, key string, expiry time.Time) string {
	k, _ := base64.StdEncoding.DecodeString(key)
	sr := url.QueryEscape(resource)
	se := strconv.FormatInt(expiry.Unix(), 10)
	mac := hmac.New(sha256.New, k)
	mac.Write([]byte(sr + "\n" + se))
	sig := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	s := "SharedAccessSignature sr=" + sr + "&sig=" + url.QueryEscape(sig) + "&se=" + se
	if keyName != "" {
		s += "&skn=" + url.QueryEscape(keyName)
	}
	return s
}

// DeriveKey returns the group-derived device key base64(HMAC-SHA256(b64dec(groupKey), regID)).
func DeriveKey(groupKey, regID string) string {
	k, _ := base64.StdEncoding.DecodeString(groupKey)
	mac := hmac.New(sha256.New, k)
	mac.Write([]byte(regID))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// Response is a raw answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into a generic value.
func (r *Response) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", r.Body, err)
	}
	return m
}

// Do sends one request. hdr holds extra headers; "Authorization" defaults to a service SAS.
func (tg Target) Do(t testing.TB, method, path string, body any, hdr map[string]string) *Response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	u := tg.BaseURL + path
	if !strings.Contains(path, "api-version=") && !strings.Contains(path, "?noapi") {
		if strings.Contains(path, "?") {
			u += "&api-version=" + APIVersion
		} else {
			u += "?api-version=" + APIVersion
		}
	}
	u = strings.Replace(u, "?noapi", "", 1)
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", tg.ServiceAuth())
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := tg.Client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// ServiceAuth returns a valid service SAS for the next hour.
func (tg Target) ServiceAuth() string {
	return SAS(tg.HostName, tg.PolicyName, tg.PolicyKey, time.Now().Add(time.Hour))
}

// NewID returns a fresh id with prefix, unique per call.
func NewID(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

var (
	sevenDigits = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$`)
	quotedTag   = regexp.MustCompile(`^"[^"]+"$`)
)

// ExpectError checks an error answer: status, x-ms-error-code, body shape and code.
func ExpectError(t testing.TB, r *Response, status, code int) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("got status %d, want %d (body %s)", r.Status, status, r.Body)
	}
	if got := r.Header.Get("x-ms-error-code"); got != strconv.Itoa(code) {
		t.Errorf("got x-ms-error-code %q, want %d", got, code)
	}
	m := r.JSON(t)
	if got, _ := m["errorCode"].(float64); int(got) != code {
		t.Errorf("got errorCode %v, want %d", m["errorCode"], code)
	}
	for _, f := range []string{"trackingId", "message", "timestampUtc"} {
		if s, _ := m[f].(string); s == "" {
			t.Errorf("error body lacks %s: %s", f, r.Body)
		}
	}
	if info, ok := m["info"].(map[string]any); !ok || len(info) != 0 {
		t.Errorf("got info %v, want {}", m["info"])
	}
}

func expectStatus(t testing.TB, r *Response, status int) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("got status %d, want %d (body %s)", r.Status, status, r.Body)
	}
}

func checkETag(t testing.TB, etag any) string {
	t.Helper()
	s, _ := etag.(string)
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil || !quotedTag.Match(raw) {
		t.Errorf("got etag %q, want base64 of a double-quoted tag", s)
	}
	return s
}

func symEnrollment(id string) map[string]any {
	return map[string]any{"registrationId": id, "attestation": map[string]any{"type": "symmetricKey"}}
}

// Run runs the whole suite against tg.
func Run(t *testing.T, tg Target) {
	t.Run("EnrollmentLifecycle", func(t *testing.T) { testEnrollmentLifecycle(t, tg) })
	t.Run("IfMatchForms", func(t *testing.T) { testIfMatchForms(t, tg) })
	t.Run("Groups", func(t *testing.T) { testGroups(t, tg) })
	t.Run("Bulk", func(t *testing.T) { testBulk(t, tg) })
	t.Run("BulkGroups", func(t *testing.T) { testBulkGroups(t, tg) })
	t.Run("Query", func(t *testing.T) { testQuery(t, tg) })
	t.Run("Validation", func(t *testing.T) { testValidation(t, tg) })
	t.Run("Attestations", func(t *testing.T) { testAttestations(t, tg) })
	t.Run("Routing", func(t *testing.T) { testRouting(t, tg) })
	t.Run("ServiceAuth", func(t *testing.T) { testServiceAuth(t, tg) })
	if tg.Runtime {
		t.Run("Runtime", func(t *testing.T) { testRuntime(t, tg) })
	}
}

func testEnrollmentLifecycle(t *testing.T, tg Target) {
	id := NewID("life")
	p := "/enrollments/" + id
	r := tg.Do(t, "PUT", p, symEnrollment(id), nil)
	expectStatus(t, r, 200)
	if got := r.Header.Get("ETag"); got != "" {
		t.Errorf("PUT create: got ETag header %q, want none (the etag lives in the body)", got)
	}
	if got := r.Header.Get("Content-Type"); got != "application/json; charset=utf-8" {
		t.Errorf("got Content-Type %q, want application/json; charset=utf-8", got)
	}
	created := r.JSON(t)
	etag1 := checkETag(t, created["etag"])
	sk, _ := created["attestation"].(map[string]any)["symmetricKey"].(map[string]any)
	for _, k := range []string{"primaryKey", "secondaryKey"} {
		s, _ := sk[k].(string)
		if b, err := base64.StdEncoding.DecodeString(s); err != nil || len(b) != 64 || len(s) != 88 {
			t.Errorf("PUT echo: got %s of %d chars, want a generated 64-byte key (88 base64 chars)", k, len(s))
		}
	}
	for _, f := range []string{"createdDateTimeUtc", "lastUpdatedDateTimeUtc"} {
		if s, _ := created[f].(string); !sevenDigits.MatchString(s) {
			t.Errorf("got %s %q, want 7 fractional digits", f, s)
		}
	}
	if _, ok := created["registrationState"]; ok {
		t.Errorf("PUT response has registrationState; want it only in GET")
	}

	// PUT on an existing id without If-Match is 409201.
	ExpectError(t, tg.Do(t, "PUT", p, symEnrollment(id), nil), 409, 409201)

	// GET hides keys and shows the registration state.
	r = tg.Do(t, "GET", p, nil, nil)
	expectStatus(t, r, 200)
	got := r.JSON(t)
	if att, _ := json.Marshal(got["attestation"]); string(att) != `{"type":"symmetricKey"}` {
		t.Errorf("GET attestation: got %s, want {\"type\":\"symmetricKey\"}", att)
	}
	if rs, _ := json.Marshal(got["registrationState"]); string(rs) != `{"registrationId":"`+id+`","status":"unassigned"}` {
		t.Errorf("GET registrationState: got %s, want unassigned", rs)
	}
	if got["etag"] != etag1 {
		t.Errorf("GET etag: got %v, want %v", got["etag"], etag1)
	}

	// The keys come from the attestation mechanism call.
	r = tg.Do(t, "POST", p+"/attestationmechanism", nil, nil)
	expectStatus(t, r, 200)
	am := r.JSON(t)
	if sk2, _ := am["symmetricKey"].(map[string]any); sk2["primaryKey"] != sk["primaryKey"] || sk2["secondaryKey"] != sk["secondaryKey"] {
		t.Errorf("attestationmechanism: got keys %v, want the generated ones", sk2)
	}

	// Update with If-Match keeps createdDateTimeUtc and changes the etag.
	upd := symEnrollment(id)
	upd["deviceId"] = "dev-" + id
	time.Sleep(2 * time.Millisecond) // let the wall clock move so lastUpdated can too
	r = tg.Do(t, "PUT", p, upd, map[string]string{"If-Match": etag1})
	expectStatus(t, r, 200)
	u := r.JSON(t)
	etag2 := checkETag(t, u["etag"])
	if etag2 == etag1 {
		t.Errorf("update: etag did not change")
	}
	if u["createdDateTimeUtc"] != created["createdDateTimeUtc"] {
		t.Errorf("update: got createdDateTimeUtc %v, want %v kept", u["createdDateTimeUtc"], created["createdDateTimeUtc"])
	}
	if u["deviceId"] != "dev-"+id {
		t.Errorf("update: got deviceId %v, want dev-%s", u["deviceId"], id)
	}

	// Stale etag → 412; DELETE with a stale etag → 412.
	ExpectError(t, tg.Do(t, "PUT", p, symEnrollment(id), map[string]string{"If-Match": etag1}), 412, 412002)
	ExpectError(t, tg.Do(t, "DELETE", p, nil, map[string]string{"If-Match": etag1}), 412, 412002)

	// DELETE → 204 with no body; then GET and DELETE → 404201.
	r = tg.Do(t, "DELETE", p, nil, nil)
	expectStatus(t, r, 204)
	if len(r.Body) != 0 {
		t.Errorf("DELETE: got body %q, want none", r.Body)
	}
	ExpectError(t, tg.Do(t, "GET", p, nil, nil), 404, 404201)
	ExpectError(t, tg.Do(t, "DELETE", p, nil, nil), 404, 404201)
	// PUT with If-Match on an absent id → 404 (the emulator's documented choice).
	ExpectError(t, tg.Do(t, "PUT", p, symEnrollment(id), map[string]string{"If-Match": etag2}), 404, 404201)
}

func testIfMatchForms(t *testing.T, tg Target) {
	id := NewID("ifm")
	p := "/enrollments/" + id
	r := tg.Do(t, "PUT", p, symEnrollment(id), nil)
	expectStatus(t, r, 200)
	etag := r.JSON(t)["etag"].(string)
	for _, form := range []struct{ name, v string }{{"raw", ""}, {"quoted", ""}, {"star", "*"}} {
		v := form.v
		switch form.name {
		case "raw":
			v = etag
		case "quoted":
			v = `"` + etag + `"`
		}
		r := tg.Do(t, "PUT", p, symEnrollment(id), map[string]string{"If-Match": v})
		if r.Status != 200 {
			t.Fatalf("If-Match %s: got status %d, want 200 (%s)", form.name, r.Status, r.Body)
		}
		etag = r.JSON(t)["etag"].(string)
	}
	expectStatus(t, tg.Do(t, "DELETE", p, nil, map[string]string{"If-Match": `"` + etag + `"`}), 204)
}

func testGroups(t *testing.T, tg Target) {
	id := NewID("grp")
	p := "/enrollmentGroups/" + id
	body := map[string]any{"enrollmentGroupId": id, "attestation": map[string]any{"type": "symmetricKey"}, "provisioningStatus": nil}
	r := tg.Do(t, "PUT", p, body, nil)
	expectStatus(t, r, 200)
	g := r.JSON(t)
	if v, ok := g["provisioningStatus"]; !ok || v != nil {
		t.Errorf("provisioningStatus sent as null: got %v (present %v), want null", v, ok)
	}
	checkETag(t, g["etag"])
	ExpectError(t, tg.Do(t, "PUT", p, body, nil), 409, 409202)
	r = tg.Do(t, "GET", "/enrollmentgroups/"+id, nil, nil) // lower-case path, as the Node SDK sends
	expectStatus(t, r, 200)
	if att, _ := json.Marshal(r.JSON(t)["attestation"]); string(att) != `{"type":"symmetricKey"}` {
		t.Errorf("GET group attestation: got %s, want keys hidden", att)
	}
	expectStatus(t, tg.Do(t, "POST", p+"/attestationmechanism", nil, nil), 200)
	expectStatus(t, tg.Do(t, "DELETE", p, nil, nil), 204)
	ExpectError(t, tg.Do(t, "GET", p, nil, nil), 404, 404204)
	ExpectError(t, tg.Do(t, "DELETE", p, nil, nil), 404, 404204)
}

func bulk(items []map[string]any, mode string) map[string]any {
	return map[string]any{"enrollments": items, "mode": mode}
}

func testBulk(t *testing.T, tg Target) {
	a, b := NewID("bulk-a"), NewID("bulk-b")
	r := tg.Do(t, "POST", "/enrollments", bulk([]map[string]any{symEnrollment(a), symEnrollment(b)}, "create"), nil)
	expectStatus(t, r, 200)
	if string(r.Body) != `{"errors":[],"isSuccessful":true}` {
		t.Errorf("bulk success: got body %s, want exactly {\"errors\":[],\"isSuccessful\":true}", r.Body)
	}
	// Create again: per-item 409201, HTTP 200.
	r = tg.Do(t, "POST", "/enrollments", bulk([]map[string]any{symEnrollment(a)}, "create"), nil)
	expectStatus(t, r, 200)
	want := `{"errors":[{"registrationId":"` + a + `","errorCode":409201,"errorStatus":"Enrollment already exists."}],"isSuccessful":false}`
	if string(r.Body) != want {
		t.Errorf("bulk create of an existing id: got %s, want %s", r.Body, want)
	}
	// Update without etag of existing items: 409201 (seen live).
	r = tg.Do(t, "POST", "/enrollments", bulk([]map[string]any{symEnrollment(a)}, "update"), nil)
	if !strings.Contains(string(r.Body), `"errorCode":409201`) {
		t.Errorf("bulk update without etag: got %s, want 409201", r.Body)
	}
	// Update with the item's etag works; updateIfMatchEtag (Node spelling) with a stale one → 412.
	ra := tg.Do(t, "GET", "/enrollments/"+a, nil, nil)
	etag := ra.JSON(t)["etag"].(string)
	item := symEnrollment(a)
	item["etag"] = etag
	r = tg.Do(t, "POST", "/enrollments", bulk([]map[string]any{item}, "update"), nil)
	if string(r.Body) != `{"errors":[],"isSuccessful":true}` {
		t.Errorf("bulk update with etag: got %s, want success", r.Body)
	}
	r = tg.Do(t, "POST", "/enrollments", bulk([]map[string]any{item}, "updateIfMatchEtag"), nil)
	if !strings.Contains(string(r.Body), `"errorCode":412`) {
		t.Errorf("bulk updateIfMatchEtag with a stale etag: got %s, want a 412xxx item error", r.Body)
	}
	// Not atomic: a TPM item without endorsementKey fails alone.
	c, d := NewID("bulk-c"), NewID("bulk-d")
	bad := map[string]any{"registrationId": d, "attestation": map[string]any{"type": "tpm"}}
	r = tg.Do(t, "POST", "/enrollments", bulk([]map[string]any{symEnrollment(c), bad}, "create"), nil)
	expectStatus(t, r, 200)
	var res struct {
		Errors []struct {
			RegistrationID string `json:"registrationId"`
			ErrorCode      int    `json:"errorCode"`
		} `json:"errors"`
		IsSuccessful bool `json:"isSuccessful"`
	}
	if err := json.Unmarshal(r.Body, &res); err != nil {
		t.Fatal(err)
	}
	if res.IsSuccessful || len(res.Errors) != 1 || res.Errors[0].RegistrationID != d || res.Errors[0].ErrorCode/1000 != 400 {
		t.Errorf("bulk with one bad TPM item: got %s, want one 400xxx error for %s", r.Body, d)
	}
	expectStatus(t, tg.Do(t, "GET", "/enrollments/"+c, nil, nil), 200)
	ExpectError(t, tg.Do(t, "GET", "/enrollments/"+d, nil, nil), 404, 404201)

	// Whole-request rejections: duplicate ids (case-insensitive), empty list, over 10.
	r = tg.Do(t, "POST", "/enrollments", bulk([]map[string]any{symEnrollment(c), symEnrollment(strings.ToUpper(c))}, "create"), nil)
	if r.Status != 400 || r.Header.Get("x-ms-error-code") == "" {
		t.Errorf("bulk with duplicate ids: got %d %s, want 400 with an error body", r.Status, r.Body)
	}
	r = tg.Do(t, "POST", "/enrollments", bulk([]map[string]any{}, "create"), nil)
	if r.Status != 400 {
		t.Errorf("bulk with no items: got %d, want 400", r.Status)
	}
	var eleven []map[string]any
	for range 11 {
		eleven = append(eleven, symEnrollment(NewID("bulk-11")))
	}
	r = tg.Do(t, "POST", "/enrollments", bulk(eleven, "create"), nil)
	if r.Status != 400 {
		t.Errorf("bulk with 11 items: got %d, want 400", r.Status)
	}
	r = tg.Do(t, "POST", "/enrollments", bulk([]map[string]any{symEnrollment(c)}, "upsert"), nil)
	if r.Status != 400 {
		t.Errorf("bulk with unknown mode: got %d, want 400", r.Status)
	}
	// Delete needs only ids; no etag deletes unconditionally.
	r = tg.Do(t, "POST", "/enrollments", bulk([]map[string]any{{"registrationId": a}, {"registrationId": b}, {"registrationId": c}}, "delete"), nil)
	if string(r.Body) != `{"errors":[],"isSuccessful":true}` {
		t.Errorf("bulk delete: got %s, want success", r.Body)
	}
	ExpectError(t, tg.Do(t, "GET", "/enrollments/"+a, nil, nil), 404, 404201)
	r = tg.Do(t, "POST", "/enrollments", bulk([]map[string]any{{"registrationId": a}}, "delete"), nil)
	if !strings.Contains(string(r.Body), `"errorCode":404201`) {
		t.Errorf("bulk delete of an absent id: got %s, want 404201", r.Body)
	}
}

func testBulkGroups(t *testing.T, tg Target) {
	g := NewID("bulkgrp")
	item := map[string]any{"enrollmentGroupId": g, "attestation": map[string]any{"type": "symmetricKey"}}
	body := map[string]any{"enrollmentGroups": []any{item}, "mode": "create"}
	r := tg.Do(t, "POST", "/enrollmentGroups", body, nil)
	if string(r.Body) != `{"errors":[],"isSuccessful":true}` {
		t.Fatalf("bulk group create: got %d %s", r.Status, r.Body)
	}
	r = tg.Do(t, "POST", "/enrollmentGroups", body, nil)
	want := `{"errors":[{"enrollmentGroupId":"` + g + `","errorCode":409202,"errorStatus":"EnrollmentGroup already exists."}],"isSuccessful":false}`
	if string(r.Body) != want {
		t.Errorf("bulk group create again: got %s, want %s", r.Body, want)
	}
	r = tg.Do(t, "POST", "/enrollmentGroups", map[string]any{"enrollmentGroups": []any{map[string]any{"enrollmentGroupId": g}}, "mode": "delete"}, nil)
	if string(r.Body) != `{"errors":[],"isSuccessful":true}` {
		t.Errorf("bulk group delete: got %d %s", r.Status, r.Body)
	}
}

func testQuery(t *testing.T, tg Target) {
	prefix := NewID("query")
	var ids []string
	for i := range 5 {
		id := fmt.Sprintf("%s-%d", prefix, i)
		ids = append(ids, id)
		expectStatus(t, tg.Do(t, "PUT", "/enrollments/"+id, symEnrollment(id), nil), 200)
	}
	seen := map[string]int{}
	cont := ""
	pages := 0
	for {
		h := map[string]string{"x-ms-max-item-count": "2"}
		if cont != "" {
			h["x-ms-continuation"] = cont
		}
		r := tg.Do(t, "POST", "/enrollments/query", map[string]string{"query": "SELECT *"}, h)
		expectStatus(t, r, 200)
		if got := r.Header.Get("x-ms-item-type"); got != "Enrollment" {
			t.Errorf("got x-ms-item-type %q, want Enrollment", got)
		}
		var items []map[string]any
		if err := json.Unmarshal(r.Body, &items); err != nil {
			t.Fatal(err)
		}
		if len(items) > 2 {
			t.Errorf("got a page of %d, want at most 2", len(items))
		}
		for _, it := range items {
			seen[it["registrationId"].(string)]++
			if att, _ := json.Marshal(it["attestation"]); string(att) != `{"type":"symmetricKey"}` {
				t.Errorf("query item attestation: got %s, want keys hidden", att)
			}
			if _, ok := it["registrationState"]; ok {
				t.Errorf("query item has registrationState")
			}
		}
		pages++
		cont = r.Header.Get("x-ms-continuation")
		if cont == "" || pages > 1000 {
			break
		}
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("query: saw %s %d times, want once", id, seen[id])
		}
	}
	r := tg.Do(t, "POST", "/enrollmentGroups/query", map[string]string{"query": "SELECT *"}, nil)
	expectStatus(t, r, 200)
	if got := r.Header.Get("x-ms-item-type"); got != "EnrollmentGroup" {
		t.Errorf("got x-ms-item-type %q, want EnrollmentGroup", got)
	}
	for _, id := range ids {
		expectStatus(t, tg.Do(t, "DELETE", "/enrollments/"+id, nil, nil), 204)
	}
}

func testValidation(t *testing.T, tg Target) {
	long := strings.Repeat("a", 129)
	for _, c := range []struct {
		name   string
		path   string
		body   any
		status int
		code   int
		inMsg  string
	}{
		{"no api-version", "/enrollments/x?noapi", symEnrollment("x"), 400, 400001, "api-version"},
		{"old api-version", "/enrollments/x?api-version=2017-11-15", symEnrollment("x"), 400, 400001, "api-version"},
		{"id too long", "/enrollments/" + long, symEnrollment(long), 400, 400004, "registrationId"},
		{"id ends with dot", "/enrollments/abc.", symEnrollment("abc."), 400, 400004, "registrationId"},
		{"id with slash-like char", "/enrollments/a%24b", symEnrollment("a$b"), 400, 400004, "registrationId"},
		{"malformed JSON", "/enrollments/x", `{"registrationId":`, 400, 400000, "JSON"},
		{"wrong type", "/enrollments/x", `{"registrationId":"x","attestation":{"type":5}}`, 400, 400000, "attestation.type: expected string"},
		{"timestamp of wrong type", "/enrollments/x", `{"registrationId":"x","attestation":{"type":"symmetricKey"},"createdDateTimeUtc":5}`, 400, 400000, "createdDateTimeUtc: expected an RFC 3339 timestamp string, got number"},
		{"timestamp not RFC 3339", "/enrollments/x", `{"registrationId":"x","attestation":{"type":"symmetricKey"},"lastUpdatedDateTimeUtc":"yesterday"}`, 400, 400000, "lastUpdatedDateTimeUtc: expected an RFC 3339 timestamp string"},
		{"nested timestamp of wrong type", "/enrollments/x", `{"registrationId":"x","attestation":{"type":"symmetricKey"},"registrationState":{"lastUpdatedDateTimeUtc":{}}}`, 400, 400000, "registrationState.lastUpdatedDateTimeUtc: expected"},
		{"provisioningStatus of wrong type", "/enrollments/x", `{"registrationId":"x","attestation":{"type":"symmetricKey"},"provisioningStatus":1}`, 400, 400000, "provisioningStatus: expected string, got number"},
		{"group timestamp of wrong type", "/enrollmentGroups/x", `{"enrollmentGroupId":"x","attestation":{"type":"symmetricKey"},"createdDateTimeUtc":true}`, 400, 400000, "createdDateTimeUtc: expected an RFC 3339 timestamp string, got bool"},
		{"short key", "/enrollments/x", map[string]any{"registrationId": "x", "attestation": map[string]any{"type": "symmetricKey", "symmetricKey": map[string]any{"primaryKey": base64.StdEncoding.EncodeToString([]byte("short"))}}}, 400, 400010, "primaryKey"},
		{"bad key", "/enrollments/x", map[string]any{"registrationId": "x", "attestation": map[string]any{"type": "symmetricKey", "symmetricKey": map[string]any{"primaryKey": "not base64!"}}}, 400, 400010, "primaryKey"},
		{"tpm without ek", "/enrollments/x", map[string]any{"registrationId": "x", "attestation": map[string]any{"type": "tpm"}}, 400, 400010, "endorsementKey"},
		{"no attestation", "/enrollments/x", map[string]any{"registrationId": "x"}, 400, 400010, "attestation"},
		{"body id differs", "/enrollments/x", symEnrollment("y"), 400, 400000, "registrationId"},
		{"body too large", "/enrollments/x", map[string]any{"registrationId": "x", "attestation": map[string]any{"type": "symmetricKey"}, "initialTwin": map[string]any{"tags": map[string]any{"big": strings.Repeat("x", 100*1024)}}}, 413, 413000, "larger"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := tg.Do(t, "PUT", c.path, c.body, nil)
			ExpectError(t, r, c.status, c.code)
			if msg, _ := r.JSON(t)["message"].(string); !strings.Contains(msg, c.inMsg) {
				t.Errorf("got message %q, want it to mention %q", msg, c.inMsg)
			}
		})
	}
	r := tg.Do(t, "PUT", "/enrollments/x", `{"registrationId":"x","attestation":{"type":5}}`, nil)
	if msg, _ := r.JSON(t)["message"].(string); !strings.HasPrefix(msg, "attestation.type: expected string") {
		t.Errorf("wrong type: got message %q, want it to start with the JSON field path", msg)
	}
	r = tg.Do(t, "POST", "/enrollments", `{"mode":"create","enrollments":[{"registrationId":"x","attestation":{"type":true}}]}`, nil)
	if msg, _ := r.JSON(t)["message"].(string); r.Status != 400 || !strings.HasPrefix(msg, "enrollments.attestation.type: expected string") {
		t.Errorf("bulk wrong type: got %d %q, want 400 naming enrollments.attestation.type", r.Status, msg)
	}
	r = tg.Do(t, "POST", "/enrollmentGroups", `{"mode":"create","enrollmentGroups":[{"enrollmentGroupId":"x","attestation":{"type":"symmetricKey"},"createdDateTimeUtc":1}]}`, nil)
	if msg, _ := r.JSON(t)["message"].(string); r.Status != 400 || !strings.HasPrefix(msg, "enrollmentGroups.createdDateTimeUtc: expected") {
		t.Errorf("bulk timestamp of wrong type: got %d %q, want 400 naming enrollmentGroups.createdDateTimeUtc", r.Status, msg)
	}
	// Upper case and underscores are accepted (the live service does); ids are case-insensitive.
	id := NewID("Upper_Case")
	expectStatus(t, tg.Do(t, "PUT", "/enrollments/"+id, symEnrollment(id), nil), 200)
	expectStatus(t, tg.Do(t, "GET", "/enrollments/"+strings.ToLower(id), nil, nil), 200)
	ExpectError(t, tg.Do(t, "PUT", "/enrollments/"+strings.ToLower(id), symEnrollment(strings.ToLower(id)), nil), 409, 409201)
	expectStatus(t, tg.Do(t, "DELETE", "/enrollments/"+strings.ToLower(id), nil, nil), 204)
}

func testAttestations(t *testing.T, tg Target) {
	// Supplied keys are kept; TPM endorsement keys come back from GET.
	id := NewID("keys")
	pk := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	sk := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 16))
	body := map[string]any{"registrationId": id, "attestation": map[string]any{"type": "symmetricKey", "symmetricKey": map[string]any{"primaryKey": pk, "secondaryKey": sk}},
		"reprovisionPolicy": map[string]any{"updateHubAssignment": true, "migrateDeviceData": false}, "initialTwin": map[string]any{"tags": map[string]any{"site": "a"}}, "optionalDeviceInformation": map[string]any{"k": "v"}}
	r := tg.Do(t, "PUT", "/enrollments/"+id, body, nil)
	expectStatus(t, r, 200)
	m := r.JSON(t)
	keys := m["attestation"].(map[string]any)["symmetricKey"].(map[string]any)
	if keys["primaryKey"] != pk || keys["secondaryKey"] != sk {
		t.Errorf("supplied keys: got %v, want them echoed", keys)
	}
	for _, f := range []string{"reprovisionPolicy", "initialTwin", "optionalDeviceInformation"} {
		if _, ok := m[f]; !ok {
			t.Errorf("PUT response lacks %s, want it echoed", f)
		}
	}
	expectStatus(t, tg.Do(t, "DELETE", "/enrollments/"+id, nil, nil), 204)

	tid := NewID("tpm")
	ek := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 64))
	expectStatus(t, tg.Do(t, "PUT", "/enrollments/"+tid, map[string]any{"registrationId": tid, "attestation": map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": ek}}}, nil), 200)
	r = tg.Do(t, "GET", "/enrollments/"+tid, nil, nil)
	if got := r.JSON(t)["attestation"].(map[string]any)["tpm"].(map[string]any)["endorsementKey"]; got != ek {
		t.Errorf("TPM GET: got endorsementKey %v, want it returned", got)
	}
	expectStatus(t, tg.Do(t, "DELETE", "/enrollments/"+tid, nil, nil), 204)
}

func testRouting(t *testing.T, tg Target) {
	id := NewID("route") + ":x"
	esc := url.PathEscape(id)
	esc = strings.ReplaceAll(esc, ":", "%3A")
	expectStatus(t, tg.Do(t, "PUT", "/ENROLLMENTS/"+esc, symEnrollment(id), nil), 200)
	r := tg.Do(t, "GET", "/Enrollments/"+esc, nil, nil)
	expectStatus(t, r, 200)
	if got := r.JSON(t)["registrationId"]; got != id {
		t.Errorf("got registrationId %v, want %s", got, id)
	}
	expectStatus(t, tg.Do(t, "DELETE", "/enrollments/"+esc, nil, nil), 204)
}

func testServiceAuth(t *testing.T, tg Target) {
	p := "/enrollments/" + NewID("auth")
	wrongKey := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))
	for _, c := range []struct {
		name string
		auth string
	}{
		{"missing", ""},
		{"garbage", "SharedAccessSignature nonsense"},
		{"wrong key", SAS(tg.HostName, tg.PolicyName, wrongKey, time.Now().Add(time.Hour))},
		{"expired", SAS(tg.HostName, tg.PolicyName, tg.PolicyKey, time.Now().Add(-time.Minute))},
		{"other host", SAS("other.azure-devices-provisioning.net", tg.PolicyName, tg.PolicyKey, time.Now().Add(time.Hour))},
		{"unknown policy", SAS(tg.HostName, "nobody", tg.PolicyKey, time.Now().Add(time.Hour))},
		{"unconfigured bearer", "Bearer abc"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := map[string]string{"Authorization": c.auth}
			if c.auth == "" {
				h["Authorization"] = ""
			}
			ExpectError(t, tg.Do(t, "GET", p, nil, h), 401, 401002)
		})
	}
	// Field order does not matter.
	tok := strings.TrimPrefix(tg.ServiceAuth(), "SharedAccessSignature ")
	parts := strings.Split(tok, "&")
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	r := tg.Do(t, "GET", p, nil, map[string]string{"Authorization": "SharedAccessSignature " + strings.Join(parts, "&")})
	ExpectError(t, r, 404, 404201)
}
