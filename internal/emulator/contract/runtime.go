package contract

import (
	"encoding/json"
	"net/url"
	"strconv"
	"testing"
	"time"
)

// DeviceAuth returns the device SAS of regID in tg, signed with key (base64).
func (tg Target) DeviceAuth(regID, key string) string {
	return SAS(tg.IDScope+"/registrations/"+regID, "registration", key, time.Now().Add(time.Hour))
}

// RegisterResult is the outcome of a full device registration.
type RegisterResult struct {
	Status            string         `json:"status"`
	OperationID       string         `json:"operationId"`
	RegistrationState map[string]any `json:"registrationState"`
}

// Register runs the device protocol: PUT register, then poll the operation every
// Retry-After seconds until it is no longer "assigning". It fails the test on any
// unexpected status.
func (tg Target) Register(t testing.TB, regID, key string) RegisterResult {
	t.Helper()
	auth := map[string]string{"Authorization": tg.DeviceAuth(regID, key)}
	base := "/" + tg.IDScope + "/registrations/" + url.PathEscape(regID)
	r := tg.Do(t, "PUT", base+"/register", map[string]string{"registrationId": regID}, auth)
	expectStatus(t, r, 202)
	var op RegisterResult
	if err := json.Unmarshal(r.Body, &op); err != nil {
		t.Fatal(err)
	}
	if op.Status != "assigning" || op.OperationID == "" {
		t.Fatalf("register: got %s, want status assigning and an operationId", r.Body)
	}
	if r.Header.Get("Retry-After") == "" || r.Header.Get("Location") == "" {
		t.Errorf("register: got Retry-After %q, Location %q; want both", r.Header.Get("Retry-After"), r.Header.Get("Location"))
	}
	wait := retryAfter(r)
	for range 20 {
		time.Sleep(wait) // the protocol's own pacing, not a synchronisation
		r = tg.Do(t, "GET", base+"/operations/"+url.PathEscape(op.OperationID), nil, auth)
		if r.Status == 202 {
			wait = retryAfter(r)
			continue
		}
		expectStatus(t, r, 200)
		var res RegisterResult
		if err := json.Unmarshal(r.Body, &res); err != nil {
			t.Fatal(err)
		}
		return res
	}
	t.Fatalf("register %s: still assigning after 20 polls", regID)
	return RegisterResult{}
}

func retryAfter(r *Response) time.Duration {
	s, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil {
		return 2 * time.Second // the SDKs' default
	}
	return time.Duration(s) * time.Second
}

func testRuntime(t *testing.T, tg Target) {
	t.Run("IndividualKey", func(t *testing.T) {
		id := NewID("dev")
		r := tg.Do(t, "PUT", "/enrollments/"+id, symEnrollment(id), nil)
		expectStatus(t, r, 200)
		key := r.JSON(t)["attestation"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"].(string)
		res := tg.Register(t, id, key)
		rs := res.RegistrationState
		if res.Status != "assigned" || rs["status"] != "assigned" || rs["substatus"] != "initialAssignment" || rs["assignedHub"] == "" || rs["deviceId"] != id {
			t.Errorf("register: got %+v, want assigned / initialAssignment to a hub", res)
		}
		for _, f := range []string{"createdDateTimeUtc", "lastUpdatedDateTimeUtc"} {
			if s, _ := rs[f].(string); !sevenDigits.MatchString(s) {
				t.Errorf("registrationState.%s: got %q, want 7 fractional digits", f, s)
			}
		}
		checkETag(t, rs["etag"])
		// The enrollment's GET and the service's registration state show it.
		g := tg.Do(t, "GET", "/enrollments/"+id, nil, nil).JSON(t)
		if st := g["registrationState"].(map[string]any); st["status"] != "assigned" || st["assignedHub"] != rs["assignedHub"] {
			t.Errorf("enrollment GET registrationState: got %v, want assigned to %v", st, rs["assignedHub"])
		}
		reg := tg.Do(t, "GET", "/registrations/"+id, nil, nil)
		expectStatus(t, reg, 200)
		if reg.JSON(t)["etag"] != rs["etag"] {
			t.Errorf("registration state etag: got %v, want %v", reg.JSON(t)["etag"], rs["etag"])
		}
		// A wrong key is refused.
		r = tg.Do(t, "PUT", "/"+tg.IDScope+"/registrations/"+id+"/register", map[string]string{"registrationId": id},
			map[string]string{"Authorization": tg.DeviceAuth(id, DeriveKey(key, "x"))})
		ExpectError(t, r, 401, 401002)
		// The body's registrationId must be the path's.
		r = tg.Do(t, "PUT", "/"+tg.IDScope+"/registrations/"+id+"/register", map[string]string{"registrationId": id + "x"},
			map[string]string{"Authorization": tg.DeviceAuth(id, key)})
		ExpectError(t, r, 400, 400000)
		expectStatus(t, tg.Do(t, "DELETE", "/registrations/"+id, nil, nil), 204)
		ExpectError(t, tg.Do(t, "GET", "/registrations/"+id, nil, nil), 404, 404202)
		expectStatus(t, tg.Do(t, "DELETE", "/enrollments/"+id, nil, nil), 204)
	})
	t.Run("UnknownID", func(t *testing.T) {
		id := NewID("nobody")
		r := tg.Do(t, "PUT", "/"+tg.IDScope+"/registrations/"+id+"/register", map[string]string{"registrationId": id},
			map[string]string{"Authorization": tg.DeviceAuth(id, DeriveKey("AAAAAAAAAAAAAAAAAAAAAA==", id))})
		ExpectError(t, r, 404, 404201)
	})
	t.Run("Disabled", func(t *testing.T) {
		id := NewID("off")
		body := symEnrollment(id)
		body["provisioningStatus"] = "disabled"
		r := tg.Do(t, "PUT", "/enrollments/"+id, body, nil)
		expectStatus(t, r, 200)
		key := r.JSON(t)["attestation"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"].(string)
		if res := tg.Register(t, id, key); res.Status != "disabled" {
			t.Errorf("disabled enrollment: got status %q, want disabled", res.Status)
		}
		expectStatus(t, tg.Do(t, "DELETE", "/enrollments/"+id, nil, nil), 204)
	})
	t.Run("GroupDerivedKeyHashed", func(t *testing.T) {
		g := NewID("fleet")
		r := tg.Do(t, "PUT", "/enrollmentGroups/"+g, map[string]any{"enrollmentGroupId": g, "attestation": map[string]any{"type": "symmetricKey"}, "allocationPolicy": "hashed"}, nil)
		expectStatus(t, r, 200)
		gk := r.JSON(t)["attestation"].(map[string]any)["symmetricKey"].(map[string]any)["primaryKey"].(string)
		hubs := map[string]int{}
		const n = 40
		for i := range n {
			id := g + "-d" + strconv.Itoa(i)
			res := tg.Register(t, id, DeriveKey(gk, id))
			if res.Status != "assigned" {
				t.Fatalf("group device %s: got %+v, want assigned", id, res)
			}
			hubs[res.RegistrationState["assignedHub"].(string)]++
			if i == 0 {
				// Same device again: same hub (deterministic), substatus from the default reprovision policy.
				again := tg.Register(t, id, DeriveKey(gk, id))
				if again.RegistrationState["assignedHub"] != res.RegistrationState["assignedHub"] {
					t.Errorf("re-registration: got hub %v, want %v", again.RegistrationState["assignedHub"], res.RegistrationState["assignedHub"])
				}
			}
		}
		if len(tg.LinkedHubs) > 1 {
			for _, h := range tg.LinkedHubs {
				if hubs[h] < n/len(tg.LinkedHubs)/3 {
					t.Errorf("hashed allocation: got %v, want an even spread over %v", hubs, tg.LinkedHubs)
				}
			}
		}
		// The group's registrations are listed by the registration query.
		seen := 0
		cont := ""
		for {
			h := map[string]string{"x-ms-max-item-count": "7"}
			if cont != "" {
				h["x-ms-continuation"] = cont
			}
			r := tg.Do(t, "POST", "/registrations/"+g+"/query", nil, h)
			expectStatus(t, r, 200)
			if got := r.Header.Get("x-ms-item-type"); got != "DeviceRegistration" {
				t.Errorf("got x-ms-item-type %q, want DeviceRegistration", got)
			}
			var items []map[string]any
			if err := json.Unmarshal(r.Body, &items); err != nil {
				t.Fatal(err)
			}
			seen += len(items)
			if cont = r.Header.Get("x-ms-continuation"); cont == "" {
				break
			}
		}
		if seen != n {
			t.Errorf("registration query: got %d registrations, want %d", seen, n)
		}
		expectStatus(t, tg.Do(t, "DELETE", "/enrollmentGroups/"+g, nil, nil), 204)
	})
}
