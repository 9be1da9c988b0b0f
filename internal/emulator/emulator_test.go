package emulator_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/emulator/contract"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeClock is a manual clock for quotas, expiry and throttle windows.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// startHTTP serves a fresh emulator over plain HTTP on loopback.
func startHTTP(t testing.TB, opts emulator.Options) (*emulator.Emulator, contract.Target) {
	t.Helper()
	if opts.Quotas == nil {
		opts.Quotas = &emulator.Quotas{}
	}
	if opts.RuntimeRetryAfter == 0 {
		opts.RuntimeRetryAfter = -1
	}
	em, err := emulator.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(em.Handler())
	t.Cleanup(func() {
		srv.Close()
		if err := em.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return em, target(em, srv)
}

func target(em *emulator.Emulator, srv *httptest.Server) contract.Target {
	p := em.Policies()[0]
	return contract.Target{
		BaseURL: srv.URL, Client: srv.Client(), HostName: strings.TrimPrefix(srv.URL, "http://"),
		PolicyName: p.Name, PolicyKey: p.Key, IDScope: em.IDScope(), Runtime: true, LinkedHubs: em.LinkedHubs(),
	}
}

func sym(id string) map[string]any {
	return map[string]any{"registrationId": id, "attestation": map[string]any{"type": "symmetricKey"}}
}

func TestContractPlainHTTP(t *testing.T) {
	_, tg := startHTTP(t, emulator.Options{})
	contract.Run(t, tg)
}

func TestOptionsValidation(t *testing.T) {
	for _, c := range []struct {
		name string
		opts emulator.Options
	}{
		{"bad policy key", emulator.Options{Policies: []emulator.Policy{{Name: "p", Key: "%%%"}}}},
		{"duplicate policy", emulator.Options{Policies: []emulator.Policy{{Name: "p", Key: "AAAA"}, {Name: "P", Key: "AAAA"}}}},
		{"negative quota", emulator.Options{Quotas: &emulator.Quotas{ServiceOpsPerMinute: -1}}},
		{"bad fault rate", emulator.Options{Faults: emulator.Faults{DropRate: 2}}},
		{"unknown fault op", emulator.Options{Faults: emulator.Faults{ErrorRates: map[string]float64{"nope": 0.5}}}},
		{"bad id scope", emulator.Options{IDScope: "a/b"}},
		{"page sizes", emulator.Options{DefaultPageSize: 10, MaxPageSize: 5}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := emulator.New(c.opts); err == nil {
				t.Errorf("got no error, want one")
			}
		})
	}
	em, err := emulator.New(emulator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer em.Close()
	if got := em.Policies(); len(got) != 1 || got[0].Name != emulator.DefaultPolicyName || len(got[0].Key) != 44 {
		t.Errorf("got default policies %d, want one %s with a 32-byte key", len(got), emulator.DefaultPolicyName)
	}
	if em.IDScope() != emulator.DefaultIDScope {
		t.Errorf("got ID scope %q, want %q", em.IDScope(), emulator.DefaultIDScope)
	}
}

// TestConcurrentIfMatch: 50 writers increment counters kept in 5 overlapping enrollments with
// read-modify-write under If-Match. No increment may be lost and every etag must be unique.
func TestConcurrentIfMatch(t *testing.T) {
	_, tg := startHTTP(t, emulator.Options{})
	const writers, ids, perWriter = 50, 5, 6
	for i := range ids {
		body := sym("race-" + strconv.Itoa(i))
		body["initialTwin"] = map[string]any{"tags": map[string]any{"n": 0}}
		if r := tg.Do(t, "PUT", "/enrollments/race-"+strconv.Itoa(i), body, nil); r.Status != 200 {
			t.Fatalf("create: %d %s", r.Status, r.Body)
		}
	}
	var mu sync.Mutex
	etags := map[string]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			id := "race-" + strconv.Itoa(w%ids)
			for done := 0; done < perWriter; {
				r := tg.Do(t, "GET", "/enrollments/"+id, nil, nil)
				var cur struct {
					ETag        string `json:"etag"`
					InitialTwin struct {
						Tags struct {
							N int `json:"n"`
						} `json:"tags"`
					} `json:"initialTwin"`
				}
				if err := json.Unmarshal(r.Body, &cur); err != nil {
					errs <- err
					return
				}
				body := sym(id)
				body["initialTwin"] = map[string]any{"tags": map[string]any{"n": cur.InitialTwin.Tags.N + 1}}
				r = tg.Do(t, "PUT", "/enrollments/"+id, body, map[string]string{"If-Match": cur.ETag})
				switch r.Status {
				case 200:
					var out struct {
						ETag string `json:"etag"`
					}
					_ = json.Unmarshal(r.Body, &out)
					mu.Lock()
					if etags[out.ETag] {
						errs <- fmt.Errorf("etag %s handed out twice", out.ETag)
					}
					etags[out.ETag] = true
					mu.Unlock()
					done++
				case 412:
				default:
					errs <- fmt.Errorf("PUT: got %d %s", r.Status, r.Body)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range ids {
		r := tg.Do(t, "GET", "/enrollments/race-"+strconv.Itoa(i), nil, nil)
		var cur struct {
			InitialTwin struct {
				Tags struct {
					N int `json:"n"`
				} `json:"tags"`
			} `json:"initialTwin"`
		}
		_ = json.Unmarshal(r.Body, &cur)
		if want := writers / ids * perWriter; cur.InitialTwin.Tags.N != want {
			t.Errorf("race-%d: got counter %d, want %d (a lost update)", i, cur.InitialTwin.Tags.N, want)
		}
	}
	if len(etags) != writers*perWriter {
		t.Errorf("got %d distinct etags, want %d", len(etags), writers*perWriter)
	}
}

func TestServiceQuota(t *testing.T) {
	clk := newClock()
	em, tg := startHTTP(t, emulator.Options{Clock: clk.Now, Quotas: &emulator.Quotas{ServiceOpsPerMinute: 3}})
	for i := range 3 {
		if r := tg.Do(t, "GET", "/enrollments/q", nil, nil); r.Status != 404 {
			t.Fatalf("call %d: got %d, want 404", i, r.Status)
		}
	}
	clk.Advance(20 * time.Second)
	r := tg.Do(t, "GET", "/enrollments/q", nil, nil)
	contract.ExpectError(t, r, 429, 429001)
	if got := r.Header.Get("Retry-After"); got != "40" {
		t.Errorf("got Retry-After %q, want 40", got)
	}
	clk.Advance(40 * time.Second)
	if r := tg.Do(t, "GET", "/enrollments/q", nil, nil); r.Status != 404 {
		t.Errorf("after the window: got %d, want 404", r.Status)
	}
	c := em.Counters()
	if c.Throttled != 1 || c.ServiceOps != 4 || c.Calls[emulator.OpGetEnrollment]["429"] != 1 || c.Calls[emulator.OpGetEnrollment]["404"] != 4 {
		t.Errorf("got counters %+v, want 1 throttled, 4 ops", c)
	}
	if c.MaxServiceOpsPerMinute > 3 {
		t.Errorf("got %d ops in one minute, want at most 3", c.MaxServiceOpsPerMinute)
	}
}

// TestDefaultQuotas: with Options.Quotas nil the emulator applies DPS's quotas: the 1,001st
// service operation in a minute (a bulk call counting as one) is throttled.
func TestDefaultQuotas(t *testing.T) {
	clk := newClock()
	em, err := emulator.New(emulator.Options{Clock: clk.Now, ServiceHostName: "dps.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer em.Close()
	p := em.Policies()[0]
	h := em.Handler()
	do := func(method, path, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, "https://dps.test"+path+"?api-version=2021-10-01", strings.NewReader(body))
		req.Header.Set("Authorization", contract.SAS("dps.test", p.Name, p.Key, clk.Now().Add(time.Hour)))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}
	const quota = 1000
	if got := emulator.DefaultQuotas().ServiceOpsPerMinute; got != quota {
		t.Fatalf("DefaultQuotas().ServiceOpsPerMinute: got %d, want %d", got, quota)
	}
	bulk := `{"mode":"create","enrollments":[{"registrationId":"q1","attestation":{"type":"symmetricKey"}},{"registrationId":"q2","attestation":{"type":"symmetricKey"}}]}`
	if w := do("POST", "/enrollments", bulk); w.Code != 200 {
		t.Fatalf("bulk: got %d %s", w.Code, w.Body)
	}
	for i := 1; i < quota; i++ {
		if i%100 == 0 {
			clk.Advance(time.Second) // spread over 10 s of the minute
		}
		if w := do("GET", "/enrollments/q1", ""); w.Code != 200 {
			t.Fatalf("operation %d: got %d %s, want 200", i+1, w.Code, w.Body)
		}
	}
	w := do("GET", "/enrollments/q1", "")
	var body struct {
		ErrorCode int `json:"errorCode"`
	}
	_ = json.Unmarshal(w.Body.Bytes(), &body)
	if w.Code != 429 || body.ErrorCode/1000 != 429 || w.Header().Get("x-ms-error-code") != strconv.Itoa(body.ErrorCode) {
		t.Fatalf("operation %d: got %d %s, want 429 with a 429xxx errorCode", quota+1, w.Code, w.Body)
	}
	// The first operation leaves the window 60 s after it; 9 s have passed.
	if got := w.Header().Get("Retry-After"); got != "51" {
		t.Errorf("Retry-After: got %q, want 51", got)
	}
	clk.Advance(51 * time.Second)
	if w := do("GET", "/enrollments/q1", ""); w.Code != 200 {
		t.Errorf("after Retry-After: got %d, want 200", w.Code)
	}
	if c := em.Counters(); c.Throttled != 1 || c.MaxServiceOpsPerMinute != quota {
		t.Errorf("counters: throttled %d, max ops per minute %d; want 1 and %d", c.Throttled, c.MaxServiceOpsPerMinute, quota)
	}
}

func TestRuntimeQuotas(t *testing.T) {
	clk := newClock()
	_, tg := startHTTP(t, emulator.Options{Clock: clk.Now, Quotas: &emulator.Quotas{RegistrationsPerMinute: 2, PollsPer10s: 5}, AssignmentDelay: time.Hour})
	r := tg.Do(t, "PUT", "/enrollments/dev", sym("dev"), nil)
	key := r.JSON(t)["attestation"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"].(string)
	auth := map[string]string{"Authorization": tg.DeviceAuth("dev", key)}
	var opID string
	for i := range 2 {
		r = tg.Do(t, "PUT", "/"+tg.IDScope+"/registrations/dev/register", map[string]string{"registrationId": "dev"}, auth)
		if r.Status != 202 {
			t.Fatalf("register %d: got %d %s", i, r.Status, r.Body)
		}
		opID = r.JSON(t)["operationId"].(string)
	}
	contract.ExpectError(t, tg.Do(t, "PUT", "/"+tg.IDScope+"/registrations/dev/register", map[string]string{"registrationId": "dev"}, auth), 429, 429002)
	for i := range 5 {
		if r := tg.Do(t, "GET", "/"+tg.IDScope+"/registrations/dev/operations/"+opID, nil, auth); r.Status != 202 {
			t.Fatalf("poll %d: got %d %s, want 202 (still assigning)", i, r.Status, r.Body)
		}
	}
	r = tg.Do(t, "GET", "/"+tg.IDScope+"/registrations/dev/operations/"+opID, nil, auth)
	contract.ExpectError(t, r, 429, 429003)
	if r.Header.Get("Retry-After") != "10" {
		t.Errorf("poll quota: got Retry-After %q, want 10", r.Header.Get("Retry-After"))
	}
	clk.Advance(time.Hour)
	r = tg.Do(t, "GET", "/"+tg.IDScope+"/registrations/dev/operations/"+opID, nil, auth)
	if r.Status != 200 || r.JSON(t)["status"] != "assigned" {
		t.Errorf("after the delay: got %d %s, want 200 assigned", r.Status, r.Body)
	}
}

func TestForcedThrottleAndBulkReject(t *testing.T) {
	clk := newClock()
	em, tg := startHTTP(t, emulator.Options{Clock: clk.Now})
	if err := em.SetFaults(emulator.Faults{ThrottleFor: emulator.Duration(30 * time.Second), BulkRejectNext: 2}); err != nil {
		t.Fatal(err)
	}
	r := tg.Do(t, "GET", "/enrollments/x", nil, nil)
	contract.ExpectError(t, r, 429, 429001)
	if r.Header.Get("Retry-After") != "30" {
		t.Errorf("got Retry-After %q, want 30", r.Header.Get("Retry-After"))
	}
	clk.Advance(30 * time.Second)
	body := map[string]any{"enrollments": []any{sym("b1")}, "mode": "create"}
	for i := range 2 {
		contract.ExpectError(t, tg.Do(t, "POST", "/enrollments", body, nil), 400, emulator.CodeBulkRejected)
		_ = i
	}
	if r := tg.Do(t, "POST", "/enrollments", body, nil); string(r.Body) != `{"errors":[],"isSuccessful":true}` {
		t.Errorf("third bulk: got %d %s, want success", r.Status, r.Body)
	}
}

// TestFaultsReproducible: the same seed gives the same fault decisions.
func TestFaultsReproducible(t *testing.T) {
	run := func(seed uint64) string {
		_, tg := startHTTP(t, emulator.Options{Seed: seed, Faults: emulator.Faults{ErrorRates: map[string]float64{emulator.OpGetEnrollment: 0.5}, ErrorStatus: 500}})
		var b strings.Builder
		for range 40 {
			r := tg.Do(t, "GET", "/enrollments/x", nil, nil)
			b.WriteString(strconv.Itoa(r.Status) + " ")
		}
		return b.String()
	}
	a, b, c := run(7), run(7), run(8)
	if a != b {
		t.Errorf("same seed: got\n%s\n%s\nwant equal", a, b)
	}
	if a == c {
		t.Errorf("different seeds gave the same 40 decisions: %s", a)
	}
	if !strings.Contains(a, "500") || !strings.Contains(a, "404") {
		t.Errorf("rate 0.5: got %s, want both 500 and 404", a)
	}
}

func TestFaultAfterApplyAndDrop(t *testing.T) {
	em, tg := startHTTP(t, emulator.Options{Faults: emulator.Faults{ErrorAfterApplyRate: 1}})
	r := tg.Do(t, "PUT", "/enrollments/after", sym("after"), nil)
	contract.ExpectError(t, r, 503, 503000)
	if err := em.SetFaults(emulator.Faults{}); err != nil {
		t.Fatal(err)
	}
	if r := tg.Do(t, "GET", "/enrollments/after", nil, nil); r.Status != 200 {
		t.Errorf("after an after-apply fault: got %d, want the write applied (200)", r.Status)
	}
	if err := em.SetFaults(emulator.Faults{DropRate: 1}); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", tg.BaseURL+"/enrollments/after?api-version=2021-10-01", nil)
	req.Header.Set("Authorization", tg.ServiceAuth())
	if resp, err := tg.Client.Do(req); err == nil {
		resp.Body.Close()
		t.Errorf("drop: got status %d, want a dropped connection", resp.StatusCode)
	}
	// net/http retries an idempotent request once on a dropped reused connection.
	if got := em.Counters().Calls[emulator.OpGetEnrollment]["dropped"]; got < 1 || got > 2 {
		t.Errorf("got %d dropped calls counted, want 1 or 2", got)
	}
}

func TestAdminEndpoints(t *testing.T) {
	_, tg := startHTTP(t, emulator.Options{AdminToken: "sesame"})
	admin := func(method, path, body string, token string) *http.Response {
		req, _ := http.NewRequest(method, tg.BaseURL+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := tg.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	read := func(resp *http.Response) []byte {
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return b.Bytes()
	}
	if resp := admin("GET", "/admin/counters", "", ""); resp.StatusCode != 401 {
		t.Errorf("without token: got %d, want 401", resp.StatusCode)
		resp.Body.Close()
	} else {
		resp.Body.Close()
	}
	tg.Do(t, "POST", "/enrollments", map[string]any{"enrollments": []any{sym("a1"), sym("a2"), map[string]any{"registrationId": "a3"}}, "mode": "create"}, nil)
	var c emulator.Counters
	if err := json.Unmarshal(read(admin("GET", "/admin/counters", "", "sesame")), &c); err != nil {
		t.Fatal(err)
	}
	if c.BulkCalls != 1 || c.BulkItems != 3 || c.BulkItemsPerCall["3"] != 1 || c.BulkItemErrors["400010"] != 1 || c.Calls[emulator.OpBulkEnrollments]["200"] != 1 {
		t.Errorf("got counters %+v, want one bulk call of 3 items with one 400010", c)
	}
	resp := admin("PUT", "/admin/faults", `{"errorRates":{"*":0.25},"latency":"1ms","throttleFor":"1m"}`, "sesame")
	body := read(resp)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"throttleUntil"`) || !strings.Contains(string(body), `"latency":"1ms"`) {
		t.Errorf("PUT faults: got %d %s", resp.StatusCode, body)
	}
	if resp := admin("PUT", "/admin/faults", `{"dropRate":3}`, "sesame"); resp.StatusCode != 400 {
		t.Errorf("PUT bad faults: got %d, want 400", resp.StatusCode)
		resp.Body.Close()
	} else {
		resp.Body.Close()
	}
	if resp := admin("DELETE", "/admin/faults", "", "sesame"); resp.StatusCode != 204 {
		t.Errorf("DELETE faults: got %d, want 204", resp.StatusCode)
	}
	var st emulator.State
	if err := json.Unmarshal(read(admin("GET", "/admin/state", "", "sesame")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Enrollments) != 2 || st.Enrollments[0].Attestation.SymmetricKey == nil || st.Enrollments[0].Attestation.SymmetricKey.PrimaryKey == "" {
		t.Errorf("state: got %d enrollments, want 2 with keys", len(st.Enrollments))
	}
	if resp := admin("POST", "/admin/reset", "", "sesame"); resp.StatusCode != 204 {
		t.Errorf("reset: got %d, want 204", resp.StatusCode)
	}
	if err := json.Unmarshal(read(admin("GET", "/admin/state", "", "sesame")), &st); err != nil || len(st.Enrollments) != 0 {
		t.Errorf("after reset: got %d enrollments (%v), want 0", len(st.Enrollments), err)
	}
	if err := json.Unmarshal(read(admin("GET", "/admin/counters", "", "sesame")), &c); err != nil || c.BulkCalls != 0 {
		t.Errorf("after reset: got %d bulk calls, want 0", c.BulkCalls)
	}
}

func TestReprovisionAndAllocation(t *testing.T) {
	_, tg := startHTTP(t, emulator.Options{LinkedHubs: []string{"only.azure-devices.net"}})
	for _, c := range []struct {
		name  string
		extra map[string]any
		want  []string // substatus of the first and second registration
		hub   string
	}{
		{"default policy", nil, []string{"initialAssignment", "deviceDataMigrated"}, "only.azure-devices.net"},
		{"reset", map[string]any{"reprovisionPolicy": map[string]any{"updateHubAssignment": true, "migrateDeviceData": false}}, []string{"initialAssignment", "deviceDataReset"}, "only.azure-devices.net"},
		{"never", map[string]any{"reprovisionPolicy": map[string]any{"updateHubAssignment": false, "migrateDeviceData": false}}, []string{"initialAssignment", "reprovisionedToInitialAssignment"}, "only.azure-devices.net"},
		// Absent fields take the spec default, true.
		{"partial: only migrateDeviceData false", map[string]any{"reprovisionPolicy": map[string]any{"migrateDeviceData": false}}, []string{"initialAssignment", "deviceDataReset"}, "only.azure-devices.net"},
		{"partial: only updateHubAssignment true", map[string]any{"reprovisionPolicy": map[string]any{"updateHubAssignment": true}}, []string{"initialAssignment", "deviceDataMigrated"}, "only.azure-devices.net"},
		{"empty policy", map[string]any{"reprovisionPolicy": map[string]any{}}, []string{"initialAssignment", "deviceDataMigrated"}, "only.azure-devices.net"},
		{"static hub", map[string]any{"allocationPolicy": "static", "iotHubHostName": "mine.azure-devices.net"}, []string{"initialAssignment", "deviceDataMigrated"}, "mine.azure-devices.net"},
		{"hashed over listed hubs", map[string]any{"allocationPolicy": "hashed", "iotHubs": []string{"x.azure-devices.net"}}, []string{"initialAssignment", "deviceDataMigrated"}, "x.azure-devices.net"},
	} {
		t.Run(c.name, func(t *testing.T) {
			id := contract.NewID("re")
			body := sym(id)
			for k, v := range c.extra {
				body[k] = v
			}
			r := tg.Do(t, "PUT", "/enrollments/"+id, body, nil)
			key := r.JSON(t)["attestation"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"].(string)
			// The policy is echoed as sent: absent fields stay absent.
			if want, ok := c.extra["reprovisionPolicy"]; ok {
				got := tg.Do(t, "GET", "/enrollments/"+id, nil, nil).JSON(t)["reprovisionPolicy"]
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("GET reprovisionPolicy: got %v, want %v", got, want)
				}
			}
			for i, want := range c.want {
				res := tg.Register(t, id, key)
				if got := res.RegistrationState["substatus"]; got != want {
					t.Errorf("registration %d: got substatus %v, want %s", i+1, got, want)
				}
				if got := res.RegistrationState["assignedHub"]; got != c.hub {
					t.Errorf("registration %d: got hub %v, want %s", i+1, got, c.hub)
				}
			}
		})
	}
	t.Run("custom allocation fails", func(t *testing.T) {
		id := contract.NewID("custom")
		body := sym(id)
		body["allocationPolicy"] = "custom"
		body["customAllocationDefinition"] = map[string]any{"webhookUrl": "https://example.invalid/alloc", "apiVersion": "2021-10-01"}
		r := tg.Do(t, "PUT", "/enrollments/"+id, body, nil)
		key := r.JSON(t)["attestation"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"].(string)
		res := tg.Register(t, id, key)
		if res.Status != "failed" || res.RegistrationState["errorCode"] != float64(400209) {
			t.Errorf("custom allocation: got %+v, want failed with 400209", res)
		}
	})
}

func TestAuthOptions(t *testing.T) {
	_, tg := startHTTP(t, emulator.Options{BearerTokens: []string{"tok-1"}, ServiceHostName: "MyDps.azure-devices-provisioning.net"})
	if r := tg.Do(t, "GET", "/enrollments/x", nil, map[string]string{"Authorization": "Bearer tok-1"}); r.Status != 404 {
		t.Errorf("configured bearer: got %d, want 404 (authenticated)", r.Status)
	}
	contract.ExpectError(t, tg.Do(t, "GET", "/enrollments/x", nil, map[string]string{"Authorization": "Bearer tok-2"}), 401, 401002)
	// sr must be the configured host name (lower-cased), not the Host header.
	contract.ExpectError(t, tg.Do(t, "GET", "/enrollments/x", nil, nil), 401, 401002)
	tg.HostName = "mydps.azure-devices-provisioning.net"
	for _, v := range []string{"2019-03-31", "2021-06-01", "2021-10-01", "2025-07-01-preview"} {
		if r := tg.Do(t, "GET", "/enrollments/x?api-version="+v, nil, nil); r.Status != 404 {
			t.Errorf("api-version %s: got %d, want 404", v, r.Status)
		}
	}
}

func TestClosedEmulator(t *testing.T) {
	em, err := emulator.New(emulator.Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := em.Close(); err != nil {
		t.Fatal(err)
	}
	if err := em.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	rec := httptest.NewRecorder()
	em.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/enrollments/x?api-version=2021-10-01", nil))
	if rec.Code != 503 {
		t.Errorf("after Close: got %d, want 503", rec.Code)
	}
}

func TestBulkRejectIDsRejectsOnlyRequestsHoldingThePoison(t *testing.T) {
	_, tg := startHTTP(t, emulator.Options{Faults: emulator.Faults{BulkRejectIDs: []string{"Poison"}}})
	poisoned := map[string]any{"enrollments": []any{sym("a"), sym("poison"), sym("b")}, "mode": "create"}
	contract.ExpectError(t, tg.Do(t, "POST", "/enrollments", poisoned, nil), 400, emulator.CodeBulkRejected)
	clean := map[string]any{"enrollments": []any{sym("a"), sym("b")}, "mode": "create"}
	if r := tg.Do(t, "POST", "/enrollments", clean, nil); string(r.Body) != `{"errors":[],"isSuccessful":true}` {
		t.Errorf("bulk without the poison id: got %d %s, want success", r.Status, r.Body)
	}
}

// TestFaultLatencyJitterAndDrops: injected latency delays every answer by Latency plus a
// seeded share of Jitter, and the jitter and drop decisions are the same for the same seed.
// The clock is testing/synctest's, so the delays are measured exactly.
func TestFaultLatencyJitterAndDrops(t *testing.T) {
	const latency, jitter = 100 * time.Millisecond, 50 * time.Millisecond
	type outcome struct {
		delay   time.Duration
		dropped bool
	}
	run := func(seed uint64) []outcome {
		var out []outcome
		synctest.Test(t, func(t *testing.T) {
			em, err := emulator.New(emulator.Options{Seed: seed, Quotas: &emulator.Quotas{}, ServiceHostName: "dps.test",
				Faults: emulator.Faults{Latency: emulator.Duration(latency), Jitter: emulator.Duration(jitter), DropRate: 0.3}})
			if err != nil {
				t.Fatal(err)
			}
			defer em.Close()
			p := em.Policies()[0]
			for range 40 {
				req := httptest.NewRequest("GET", "https://dps.test/enrollments/x?api-version=2021-10-01", nil)
				req.Header.Set("Authorization", contract.SAS("dps.test", p.Name, p.Key, time.Now().Add(time.Hour)))
				start := time.Now()
				dropped := serveRecovering(em.Handler(), httptest.NewRecorder(), req)
				out = append(out, outcome{time.Since(start), dropped})
			}
		})
		return out
	}
	a, b, c := run(7), run(7), run(8)
	drops, delays := 0, map[time.Duration]bool{}
	for i, o := range a {
		if o.delay < latency || o.delay > latency+jitter {
			t.Errorf("call %d: delayed %s, want between %s and %s", i, o.delay, latency, latency+jitter)
		}
		delays[o.delay] = true
		if o.dropped {
			drops++
		}
	}
	if len(delays) < 10 {
		t.Errorf("40 calls had %d distinct delays, want the jitter to vary them", len(delays))
	}
	if drops == 0 || drops == len(a) {
		t.Errorf("drop rate 0.3: %d of %d calls dropped", drops, len(a))
	}
	if !slices.Equal(a, b) {
		t.Errorf("same seed, different decisions:\n%v\n%v", a, b)
	}
	if slices.Equal(a, c) {
		t.Errorf("seeds 7 and 8 gave the same 40 decisions: %v", a)
	}
}

// serveRecovering serves req and reports whether the handler dropped the connection (it
// panics with http.ErrAbortHandler, which net/http turns into a closed connection).
func serveRecovering(h http.Handler, w http.ResponseWriter, req *http.Request) (dropped bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				panic(v)
			}
			dropped = true
		}
	}()
	h.ServeHTTP(w, req)
	return false
}

// TestFaultLatencyOverHTTP: over a real connection, an answer never comes sooner than the
// injected latency (a lower bound, so the test cannot be flaky).
func TestFaultLatencyOverHTTP(t *testing.T) {
	const latency = 60 * time.Millisecond
	_, tg := startHTTP(t, emulator.Options{Faults: emulator.Faults{Latency: emulator.Duration(latency)}})
	for range 3 {
		start := time.Now()
		r := tg.Do(t, "GET", "/enrollments/x", nil, nil)
		if took := time.Since(start); took < latency {
			t.Errorf("answered %d after %s, want at least %s", r.Status, took, latency)
		}
	}
}
