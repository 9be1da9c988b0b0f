package dps

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

func symKeyEnrollment(id string) IndividualEnrollment {
	return IndividualEnrollment{
		RegistrationID: id,
		Attestation:    &AttestationMechanism{Type: AttestationTypeSymmetricKey, SymmetricKey: &SymmetricKeyAttestation{}},
	}
}

// TestOperations runs every single-call operation against an HTTPS httptest server and
// checks the exact request and the decoding of a realistic response.
func TestOperations(t *testing.T) {
	ctx := context.Background()
	group := EnrollmentGroup{
		EnrollmentGroupID:  "line/7",
		Attestation:        &AttestationMechanism{Type: AttestationTypeSymmetricKey},
		ProvisioningStatus: ptr(ProvisioningStatusDisabled),
	}
	tests := []struct {
		name       string
		call       func(c *Client) (any, error)
		reply      reply
		method     string
		path       string
		ifMatch    string // "" means no If-Match header
		body       string // "" means no body; JSON compared semantically
		check      func(t *testing.T, resp any)
		wantStatus int
	}{
		{
			name:   "GetEnrollment",
			call:   func(c *Client) (any, error) { return c.GetEnrollment(ctx, "dev/1 ü", nil) },
			reply:  reply{status: 200, body: string(exampleResponseBody(t, "IndividualEnrollment_Get_MaximumSet_Gen", "200"))},
			method: http.MethodGet, path: "/enrollments/dev%2F1%20%C3%BC",
			check: func(t *testing.T, resp any) {
				r := resp.(GetEnrollmentResponse)
				if r.RegistrationID != "kz" || r.RegistrationState == nil || r.RegistrationState.Status != EnrollmentStatusUnassigned {
					t.Errorf("got %+v, want registrationId kz with an unassigned registration state", r.IndividualEnrollment)
				}
				if v, ok := r.OptionalDeviceInformation.Version(); !ok || v != 9 {
					t.Errorf("optionalDeviceInformation.version: got %d %v, want 9", v, ok)
				}
			},
		},
		{
			name: "CreateOrUpdateEnrollment raw etag",
			call: func(c *Client) (any, error) {
				e := symKeyEnrollment("dev-1")
				e.Capabilities = &DeviceCapabilities{IotEdge: ptr(false)}
				return c.CreateOrUpdateEnrollment(ctx, e, &CreateOrUpdateEnrollmentOptions{IfMatch: etag("IjA0MDBlNGYxLTAwMDAtMDgwMC0wMDAwLTY0NjgwMWY3MDAwMCI=")})
			},
			reply:  reply{status: 200, body: `{"registrationId":"dev-1","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"cHJpbWFyeQ==","secondaryKey":"c2Vjb25kYXJ5"}},"capabilities":{"iotEdge":false},"etag":"Ijk5Ig==","provisioningStatus":"enabled","createdDateTimeUtc":"2023-05-19T23:10:45.1256254Z","lastUpdatedDateTimeUtc":"2023-05-19T23:10:45.1256254Z"}`},
			method: http.MethodPut, path: "/enrollments/dev-1", ifMatch: "IjA0MDBlNGYxLTAwMDAtMDgwMC0wMDAwLTY0NjgwMWY3MDAwMCI=",
			body: `{"registrationId":"dev-1","attestation":{"type":"symmetricKey","symmetricKey":{}},"capabilities":{"iotEdge":false}}`,
			check: func(t *testing.T, resp any) {
				r := resp.(CreateOrUpdateEnrollmentResponse)
				if r.ETag != "Ijk5Ig==" || r.Attestation.SymmetricKey.PrimaryKey != "cHJpbWFyeQ==" || *r.ProvisioningStatus != ProvisioningStatusEnabled {
					t.Errorf("got %+v", r.IndividualEnrollment)
				}
			},
		},
		{
			name: "CreateOrUpdateEnrollment quoted etag",
			call: func(c *Client) (any, error) {
				return c.CreateOrUpdateEnrollment(ctx, symKeyEnrollment("dev-1"), &CreateOrUpdateEnrollmentOptions{IfMatch: etag(`"Ijk5Ig=="`)})
			},
			reply:  reply{status: 200, body: `{"registrationId":"dev-1","attestation":{"type":"symmetricKey"}}`},
			method: http.MethodPut, path: "/enrollments/dev-1", ifMatch: `"Ijk5Ig=="`,
			body: `{"registrationId":"dev-1","attestation":{"type":"symmetricKey","symmetricKey":{}}}`,
		},
		{
			name: "CreateOrUpdateEnrollment If-Match *",
			call: func(c *Client) (any, error) {
				return c.CreateOrUpdateEnrollment(ctx, symKeyEnrollment("dev-1"), &CreateOrUpdateEnrollmentOptions{IfMatch: ptr(azcore.ETagAny)})
			},
			reply:  reply{status: 200, body: `{"registrationId":"dev-1","attestation":{"type":"symmetricKey"}}`},
			method: http.MethodPut, path: "/enrollments/dev-1", ifMatch: "*",
			body: `{"registrationId":"dev-1","attestation":{"type":"symmetricKey","symmetricKey":{}}}`,
		},
		{
			name: "CreateOrUpdateEnrollment without If-Match",
			call: func(c *Client) (any, error) {
				return c.CreateOrUpdateEnrollment(ctx, symKeyEnrollment("Dev_1:a.b"), nil)
			},
			reply:  reply{status: 200, body: `{"registrationId":"Dev_1:a.b","attestation":{"type":"symmetricKey"}}`},
			method: http.MethodPut, path: "/enrollments/Dev_1:a.b",
			body: `{"registrationId":"Dev_1:a.b","attestation":{"type":"symmetricKey","symmetricKey":{}}}`,
		},
		{
			name: "DeleteEnrollment If-Match *",
			call: func(c *Client) (any, error) {
				return c.DeleteEnrollment(ctx, "dev-1", &DeleteEnrollmentOptions{IfMatch: ptr(azcore.ETagAny)})
			},
			reply:  reply{status: 204},
			method: http.MethodDelete, path: "/enrollments/dev-1", ifMatch: "*",
		},
		{
			name:   "DeleteEnrollment unconditional",
			call:   func(c *Client) (any, error) { return c.DeleteEnrollment(ctx, "dev 2", nil) },
			reply:  reply{status: 204},
			method: http.MethodDelete, path: "/enrollments/dev%202",
		},
		{
			name: "RunBulkOperation partial failure",
			call: func(c *Client) (any, error) {
				return c.RunBulkOperation(ctx, BulkModeUpdate, []IndividualEnrollment{symKeyEnrollment("a"), symKeyEnrollment("b")}, nil)
			},
			reply:  reply{status: 200, body: `{"errors":[{"registrationId":"a","errorCode":409201,"errorStatus":"Enrollment already exists."}],"isSuccessful":false}`},
			method: http.MethodPost, path: "/enrollments",
			body: `{"enrollments":[{"registrationId":"a","attestation":{"type":"symmetricKey","symmetricKey":{}}},{"registrationId":"b","attestation":{"type":"symmetricKey","symmetricKey":{}}}],"mode":"update"}`,
			check: func(t *testing.T, resp any) {
				r := resp.(RunBulkOperationResponse)
				want := []BulkEnrollmentOperationError{{RegistrationID: "a", ErrorCode: CodeEnrollmentExists, ErrorStatus: "Enrollment already exists."}}
				if r.IsSuccessful || len(r.Errors) != 1 || r.Errors[0] != want[0] {
					t.Errorf("got %+v, want isSuccessful false and errors %+v", r.BulkEnrollmentOperationResult, want)
				}
			},
		},
		{
			name: "RunBulkOperation delete ids only",
			call: func(c *Client) (any, error) {
				return c.RunBulkOperation(ctx, BulkModeDelete, []IndividualEnrollment{{RegistrationID: "a"}}, nil)
			},
			reply:  reply{status: 200, body: `{"errors":[],"isSuccessful":true}`},
			method: http.MethodPost, path: "/enrollments",
			body: `{"enrollments":[{"registrationId":"a"}],"mode":"delete"}`,
			check: func(t *testing.T, resp any) {
				if r := resp.(RunBulkOperationResponse); !r.IsSuccessful || len(r.Errors) != 0 {
					t.Errorf("got %+v, want success", r)
				}
			},
		},
		{
			name:   "GetEnrollmentAttestationMechanism",
			call:   func(c *Client) (any, error) { return c.GetEnrollmentAttestationMechanism(ctx, "dev-1", nil) },
			reply:  reply{status: 200, body: `{"type":"symmetricKey","symmetricKey":{"primaryKey":"cHJpbWFyeQ==","secondaryKey":"c2Vjb25kYXJ5"}}`},
			method: http.MethodPost, path: "/enrollments/dev-1/attestationmechanism",
			check: func(t *testing.T, resp any) {
				r := resp.(GetEnrollmentAttestationMechanismResponse)
				if r.Type != AttestationTypeSymmetricKey || r.SymmetricKey == nil || r.SymmetricKey.SecondaryKey != "c2Vjb25kYXJ5" {
					t.Errorf("got %+v", r.AttestationMechanism)
				}
			},
		},
		{
			name:   "GetEnrollmentGroup",
			call:   func(c *Client) (any, error) { return c.GetEnrollmentGroup(ctx, "line/7", nil) },
			reply:  reply{status: 200, body: string(exampleResponseBody(t, "EnrollmentGroup_Get_MaximumSet_Gen", "200"))},
			method: http.MethodGet, path: "/enrollmentGroups/line%2F7",
			check: func(t *testing.T, resp any) {
				if r := resp.(GetEnrollmentGroupResponse); r.EnrollmentGroupID == "" || r.Attestation == nil {
					t.Errorf("got %+v, want a decoded group", r.EnrollmentGroup)
				}
			},
		},
		{
			name: "CreateOrUpdateEnrollmentGroup quoted etag",
			call: func(c *Client) (any, error) {
				return c.CreateOrUpdateEnrollmentGroup(ctx, group, &CreateOrUpdateEnrollmentGroupOptions{IfMatch: etag(`"abc"`)})
			},
			reply:  reply{status: 200, body: `{"enrollmentGroupId":"line/7","attestation":{"type":"symmetricKey"},"provisioningStatus":"disabled","etag":"ImIi"}`},
			method: http.MethodPut, path: "/enrollmentGroups/line%2F7", ifMatch: `"abc"`,
			body: `{"enrollmentGroupId":"line/7","attestation":{"type":"symmetricKey"},"provisioningStatus":"disabled"}`,
			check: func(t *testing.T, resp any) {
				r := resp.(CreateOrUpdateEnrollmentGroupResponse)
				if r.ETag != "ImIi" || r.ProvisioningStatus == nil || *r.ProvisioningStatus != ProvisioningStatusDisabled {
					t.Errorf("got %+v", r.EnrollmentGroup)
				}
			},
		},
		{
			name: "DeleteEnrollmentGroup with etag",
			call: func(c *Client) (any, error) {
				return c.DeleteEnrollmentGroup(ctx, "line/7", &DeleteEnrollmentGroupOptions{IfMatch: etag("ImIi")})
			},
			reply:  reply{status: 204},
			method: http.MethodDelete, path: "/enrollmentGroups/line%2F7", ifMatch: "ImIi",
		},
		{
			name: "RunBulkGroupOperation",
			call: func(c *Client) (any, error) {
				return c.RunBulkGroupOperation(ctx, BulkModeUpdateIfMatchETag, []EnrollmentGroup{group}, nil)
			},
			reply:  reply{status: 200, body: `{"errors":[{"enrollmentGroupId":"line/7","errorCode":412002,"errorStatus":"Precondition failed."}],"isSuccessful":false}`},
			method: http.MethodPost, path: "/enrollmentGroups",
			body: `{"enrollmentGroups":[{"enrollmentGroupId":"line/7","attestation":{"type":"symmetricKey"},"provisioningStatus":"disabled"}],"mode":"updateIfMatchETag"}`,
			check: func(t *testing.T, resp any) {
				r := resp.(RunBulkGroupOperationResponse)
				if r.IsSuccessful || len(r.Errors) != 1 || r.Errors[0].EnrollmentGroupID != "line/7" || r.Errors[0].ErrorCode != 412002 {
					t.Errorf("got %+v", r.BulkEnrollmentGroupOperationResult)
				}
			},
		},
		{
			name:   "GetEnrollmentGroupAttestationMechanism",
			call:   func(c *Client) (any, error) { return c.GetEnrollmentGroupAttestationMechanism(ctx, "line/7", nil) },
			reply:  reply{status: 200, body: string(exampleResponseBody(t, "EnrollmentGroup_GetAttestationMechanism_MaximumSet_Gen", "200"))},
			method: http.MethodPost, path: "/enrollmentGroups/line%2F7/attestationmechanism",
			check: func(t *testing.T, resp any) {
				r := resp.(GetEnrollmentGroupAttestationMechanismResponse)
				if r.X509 == nil || r.X509.SigningCertificates == nil || r.X509.SigningCertificates.Primary.Info.SubjectName != "qqjdjgrkiqvtnshkisozut" {
					t.Errorf("got %+v", r.AttestationMechanism)
				}
			},
		},
		{
			name:   "GetRegistrationState",
			call:   func(c *Client) (any, error) { return c.GetRegistrationState(ctx, "dev-1", nil) },
			reply:  reply{status: 200, body: string(exampleResponseBody(t, "DeviceRegistrationState_Get_MaximumSet_Gen", "200"))},
			method: http.MethodGet, path: "/registrations/dev-1",
			check: func(t *testing.T, resp any) {
				if r := resp.(GetRegistrationStateResponse); r.RegistrationID == "" || r.CreatedDateTimeUTC == nil {
					t.Errorf("got %+v", r.DeviceRegistrationState)
				}
			},
		},
		{
			name: "DeleteRegistrationState",
			call: func(c *Client) (any, error) {
				return c.DeleteRegistrationState(ctx, "dev-1", &DeleteRegistrationStateOptions{IfMatch: etag("e")})
			},
			reply:  reply{status: 204},
			method: http.MethodDelete, path: "/registrations/dev-1", ifMatch: "e",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fake{replies: []reply{tt.reply}}
			c, srv := newTLSClient(t, f, nil)
			resp, err := tt.call(c)
			if err != nil {
				t.Fatalf("call: %v", err)
			}
			reqs := f.requests()
			if len(reqs) != 1 {
				t.Fatalf("got %d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if r.Method != tt.method || r.Path != tt.path {
				t.Errorf("request: got %s %s, want %s %s", r.Method, r.Path, tt.method, tt.path)
			}
			if got := r.Query.Encode(); got != "api-version=2021-10-01" {
				t.Errorf("query: got %q, want api-version=2021-10-01 only", got)
			}
			u, _ := url.Parse(srv.URL)
			verifySAS(t, r.Header.Get("Authorization"), strings.ToLower(u.Host), "provisioningserviceowner", testKey)
			if got, ok := r.Header["If-Match"]; tt.ifMatch == "" && ok {
				t.Errorf("If-Match: got %q, want none", got)
			} else if tt.ifMatch != "" && r.Header.Get("If-Match") != tt.ifMatch {
				t.Errorf("If-Match: got %q, want %q", r.Header.Get("If-Match"), tt.ifMatch)
			}
			if got := r.Header.Get("Accept"); got != "application/json" {
				t.Errorf("Accept: got %q, want application/json", got)
			}
			if tt.body == "" {
				if len(r.Body) != 0 {
					t.Errorf("body: got %s, want none", r.Body)
				}
			} else {
				if got := r.Header.Get("Content-Type"); got != "application/json" {
					t.Errorf("Content-Type: got %q, want application/json", got)
				}
				if !jsonEqual(t, r.Body, []byte(tt.body)) {
					t.Errorf("body:\n got %s\nwant %s", r.Body, tt.body)
				}
			}
			if tt.check != nil {
				tt.check(t, resp)
			}
		})
	}
}

func TestEmptyIDIsRefusedBeforeSending(t *testing.T) {
	ctx := context.Background()
	f := &fake{replies: []reply{{status: 200, body: `{}`}}}
	c, _ := newTLSClient(t, f, nil)
	calls := map[string]func() error{
		"GetEnrollment":            func() error { _, err := c.GetEnrollment(ctx, "", nil); return err },
		"CreateOrUpdateEnrollment": func() error { _, err := c.CreateOrUpdateEnrollment(ctx, IndividualEnrollment{}, nil); return err },
		"DeleteEnrollment":         func() error { _, err := c.DeleteEnrollment(ctx, "", nil); return err },
		"GetEnrollmentGroup":       func() error { _, err := c.GetEnrollmentGroup(ctx, "", nil); return err },
		"DeleteRegistrationState":  func() error { _, err := c.DeleteRegistrationState(ctx, "", nil); return err },
		"GetEnrollmentGroupAttestationMechanism": func() error {
			_, err := c.GetEnrollmentGroupAttestationMechanism(ctx, "", nil)
			return err
		},
		"NewRegistrationStateQueryPager": func() error {
			_, err := c.NewRegistrationStateQueryPager("", nil).NextPage(ctx)
			return err
		},
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, ErrEmptyID) {
			t.Errorf("%s: got %v, want ErrEmptyID", name, err)
		}
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("got %d requests, want 0", n)
	}
}

func TestBulkValidation(t *testing.T) {
	ctx := context.Background()
	f := &fake{replies: []reply{{status: 200, body: `{"errors":[],"isSuccessful":true}`}}}
	c, _ := newTLSClient(t, f, nil)
	many := func(n int) []IndividualEnrollment {
		out := make([]IndividualEnrollment, n)
		for i := range out {
			out[i] = IndividualEnrollment{RegistrationID: "dev-" + string(rune('a'+i))}
		}
		return out
	}
	tests := []struct {
		name  string
		mode  BulkMode
		items []IndividualEnrollment
		rule  error
		msg   string
	}{
		{"zero items", BulkModeCreate, nil, ErrBulkEmpty, "got 0 items"},
		{"eleven items", BulkModeCreate, many(11), ErrBulkTooMany, "got 11 items"},
		{"duplicate ids differing in case", BulkModeCreate, []IndividualEnrollment{{RegistrationID: "Dev-1"}, {RegistrationID: "x"}, {RegistrationID: "dev-1"}}, ErrBulkDuplicateID, `items 0 and 2 have the same id "dev-1"`},
		{"missing id", BulkModeDelete, []IndividualEnrollment{{RegistrationID: "a"}, {}}, ErrBulkMissingID, "item 1"},
		{"unknown mode", BulkMode("upsert"), many(1), ErrBulkMode, `"upsert"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.RunBulkOperation(ctx, tt.mode, tt.items, nil)
			if !errors.Is(err, tt.rule) {
				t.Fatalf("got %v, want %v", err, tt.rule)
			}
			var ve *BulkValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("got %T, want *BulkValidationError", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("got %q, want it to contain %q", err, tt.msg)
			}
			if IsTransient(err) {
				t.Error("IsTransient: got true, want false")
			}
		})
	}
	groups := []EnrollmentGroup{{EnrollmentGroupID: "G"}, {EnrollmentGroupID: "g"}}
	if _, err := c.RunBulkGroupOperation(ctx, BulkModeCreate, groups, nil); !errors.Is(err, ErrBulkDuplicateID) {
		t.Errorf("groups: got %v, want ErrBulkDuplicateID", err)
	}
	if _, err := c.RunBulkOperation(ctx, BulkModeCreate, many(10), nil); err != nil {
		t.Errorf("ten items: got %v, want success", err)
	}
	if n := len(f.requests()); n != 1 {
		t.Errorf("got %d requests, want 1 (only the valid call)", n)
	}
}

func TestQueryPagerFollowsContinuation(t *testing.T) {
	ctx := context.Background()
	f := &fake{route: func(r *http.Request, body []byte) reply {
		h := map[string]string{"x-ms-item-type": "Enrollment"}
		switch r.Header.Get("x-ms-continuation") {
		case "":
			h["x-ms-continuation"] = "tok+1/=="
			return reply{status: 200, header: h, body: `[{"registrationId":"a","attestation":{"type":"symmetricKey"}},{"registrationId":"b","attestation":{"type":"tpm","tpm":{"endorsementKey":"ZWs="}}}]`}
		case "tok+1/==":
			h["x-ms-continuation"] = "tok2"
			return reply{status: 200, header: h, body: `[{"registrationId":"c","attestation":{"type":"x509"}}]`}
		case "tok2":
			return reply{status: 200, header: h, body: `[]`}
		}
		return reply{status: 400, body: `{"errorCode":400000,"message":"bad continuation"}`}
	}}
	c, _ := newTLSClient(t, f, nil)
	pager := c.NewEnrollmentQueryPager(&EnrollmentQueryOptions{PageSize: ptr[int32](2)})
	var ids []string
	pages := 0
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if page.ItemType != "Enrollment" {
			t.Errorf("page %d item type: got %q, want Enrollment", pages, page.ItemType)
		}
		for _, e := range page.Enrollments {
			ids = append(ids, e.RegistrationID)
		}
	}
	if pages != 3 || strings.Join(ids, ",") != "a,b,c" {
		t.Errorf("got %d pages with ids %v, want 3 pages with a,b,c", pages, ids)
	}
	reqs := f.requests()
	if len(reqs) != 3 {
		t.Fatalf("got %d requests, want 3", len(reqs))
	}
	wantTokens := []string{"", "tok+1/==", "tok2"}
	for i, r := range reqs {
		if r.Method != http.MethodPost || r.Path != "/enrollments/query" {
			t.Errorf("request %d: got %s %s, want POST /enrollments/query", i, r.Method, r.Path)
		}
		if got := r.Header.Get("x-ms-continuation"); got != wantTokens[i] {
			t.Errorf("request %d continuation: got %q, want %q", i, got, wantTokens[i])
		}
		if got := r.Header.Get("x-ms-max-item-count"); got != "2" {
			t.Errorf("request %d x-ms-max-item-count: got %q, want 2", i, got)
		}
		if !jsonEqual(t, r.Body, []byte(`{"query":"SELECT *"}`)) {
			t.Errorf("request %d body: got %s, want the default query", i, r.Body)
		}
	}
}

func TestQueryPagerOptionsAndOtherCollections(t *testing.T) {
	ctx := context.Background()
	t.Run("groups with query, resume token, no page size", func(t *testing.T) {
		f := &fake{replies: []reply{{status: 200, header: map[string]string{"x-ms-item-type": "EnrollmentGroup"}, body: string(exampleResponseBody(t, "EnrollmentGroup_Query_MaximumSet_Gen", "200"))}}}
		c, _ := newTLSClient(t, f, nil)
		pager := c.NewEnrollmentGroupQueryPager(&EnrollmentGroupQueryOptions{Query: "SELECT * FROM enrollmentGroups", ContinuationToken: ptr("resume")})
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.EnrollmentGroups) == 0 || page.ContinuationToken != nil || pager.More() {
			t.Errorf("got %d groups, token %v, More %v; want groups, no token, no more pages", len(page.EnrollmentGroups), page.ContinuationToken, pager.More())
		}
		r := f.requests()[0]
		if r.Path != "/enrollmentGroups/query" || r.Header.Get("x-ms-continuation") != "resume" || r.Header.Get("x-ms-max-item-count") != "" {
			t.Errorf("got %s continuation %q page size %q", r.Path, r.Header.Get("x-ms-continuation"), r.Header.Get("x-ms-max-item-count"))
		}
		if !jsonEqual(t, r.Body, []byte(`{"query":"SELECT * FROM enrollmentGroups"}`)) {
			t.Errorf("body: got %s", r.Body)
		}
	})
	t.Run("registration states: POST with empty body", func(t *testing.T) {
		f := &fake{replies: []reply{
			{status: 200, header: map[string]string{"x-ms-item-type": "DeviceRegistration", "x-ms-continuation": "n"}, body: string(exampleResponseBody(t, "DeviceRegistrationState_Query_MaximumSet_Gen", "200"))},
			{status: 200, header: map[string]string{"x-ms-item-type": "DeviceRegistration"}, body: `[]`},
		}}
		c, _ := newTLSClient(t, f, nil)
		pager := c.NewRegistrationStateQueryPager("line/7", &RegistrationStateQueryOptions{PageSize: ptr[int32](22)})
		var n int
		for pager.More() {
			page, err := pager.NextPage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			n += len(page.RegistrationStates)
		}
		if n != 1 {
			t.Errorf("got %d registration states, want 1", n)
		}
		for i, r := range f.requests() {
			if r.Method != http.MethodPost || r.Path != "/registrations/line%2F7/query" || len(r.Body) != 0 || r.Header.Get("x-ms-max-item-count") != "22" {
				t.Errorf("request %d: got %s %s body %q page size %q", i, r.Method, r.Path, r.Body, r.Header.Get("x-ms-max-item-count"))
			}
		}
	})
	t.Run("bad page size", func(t *testing.T) {
		f := &fake{}
		c, _ := newTLSClient(t, f, nil)
		if _, err := c.NewEnrollmentQueryPager(&EnrollmentQueryOptions{PageSize: ptr[int32](0)}).NextPage(ctx); err == nil {
			t.Error("page size 0: got nil error")
		}
		if len(f.requests()) != 0 {
			t.Error("a request was sent")
		}
	})
	t.Run("repeated continuation token stops the pager", func(t *testing.T) {
		f := &fake{replies: []reply{{status: 200, header: map[string]string{"x-ms-continuation": "same"}, body: `[]`}}}
		c, _ := newTLSClient(t, f, nil)
		pager := c.NewEnrollmentQueryPager(nil)
		var err error
		for i := 0; i < 5 && pager.More(); i++ {
			if _, err = pager.NextPage(ctx); err != nil {
				break
			}
		}
		if !errors.Is(err, errRepeatedContinuation) {
			t.Errorf("got %v, want errRepeatedContinuation", err)
		}
	})
}

func TestServiceErrorsAndClassifiers(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name                                   string
		reply                                  reply
		wantStatus, wantCode                   int
		notFound, conflict, precond, transient bool
	}{
		{"404201 enrollment not found", reply{status: 404, header: map[string]string{"x-ms-error-code": "404201"}, body: `{"errorCode":404201,"trackingId":"t-1","message":"Enrollment not found.","info":{},"timestampUtc":"2023-05-19T23:10:45.1256254Z"}`}, 404, 404201, true, false, false, false},
		{"404204 group not found, code only in body", reply{status: 404, body: `{"errorCode":404204,"message":"EnrollmentGroup not found."}`}, 404, 404204, true, false, false, false},
		{"404202 registration not found", reply{status: 404, body: `{"errorCode":404202,"message":"Registration not found."}`}, 404, 404202, true, false, false, false},
		{"404000 unknown route or ID scope is not 'not found'", reply{status: 404, header: map[string]string{"x-ms-error-code": "404000"}, body: `{"errorCode":404000,"message":"Resource not found."}`}, 404, 404000, false, false, false, false},
		{"404203 operation not found is not 'not found'", reply{status: 404, body: `{"errorCode":404203,"message":"Operation not found."}`}, 404, 404203, false, false, false, false},
		{"404 without a code falls back to the status", reply{status: 404, body: `<html>gateway</html>`}, 404, 0, true, false, false, false},
		{"404 without body falls back to the status", reply{status: 404}, 404, 0, true, false, false, false},
		{"404201 in the header only", reply{status: 404, header: map[string]string{"x-ms-error-code": "404201"}}, 404, 404201, true, false, false, false},
		{"409201 exists", reply{status: 409, body: `{"errorCode":409201,"message":"Enrollment already exists."}`}, 409, 409201, false, true, false, false},
		{"409202 group exists, code as string", reply{status: 409, body: `{"errorCode":"409202"}`}, 409, 409202, false, true, false, false},
		{"412 precondition failed", reply{status: 412, body: `{"errorCode":412002,"message":"Precondition failed."}`}, 412, 412002, false, false, true, false},
		{"code from header only", reply{status: 400, header: map[string]string{"x-ms-error-code": "400004"}, body: `not json`}, 400, 400004, false, false, false, false},
		{"code under 'code'", reply{status: 401, body: `{"code":401002,"message":"Unauthorized"}`}, 401, 401002, false, false, false, false},
		{"no body", reply{status: 409}, 409, 0, false, true, false, false},
		{"500 after retries", reply{status: 500, body: `{"errorCode":500000}`}, 500, 500000, false, false, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fake{replies: []reply{tt.reply}}
			c, _ := newTLSClient(t, f, nil)
			_, err := c.GetEnrollment(ctx, "dev-1", nil)
			if err == nil {
				t.Fatal("got nil error")
			}
			var re *azcore.ResponseError
			if !errors.As(err, &re) {
				t.Fatalf("got %T, want it to wrap *azcore.ResponseError", err)
			}
			if re.StatusCode != tt.wantStatus {
				t.Errorf("ResponseError.StatusCode: got %d, want %d", re.StatusCode, tt.wantStatus)
			}
			wantCodeStr := ""
			if tt.wantCode != 0 {
				wantCodeStr = strconv.Itoa(tt.wantCode)
			}
			if re.ErrorCode != wantCodeStr {
				t.Errorf("ResponseError.ErrorCode: got %q, want %q", re.ErrorCode, wantCodeStr)
			}
			if got := StatusCode(err); got != tt.wantStatus {
				t.Errorf("StatusCode: got %d, want %d", got, tt.wantStatus)
			}
			if got := ErrorCode(err); got != tt.wantCode {
				t.Errorf("ErrorCode: got %d, want %d", got, tt.wantCode)
			}
			if got := IsNotFound(err); got != tt.notFound {
				t.Errorf("IsNotFound: got %v, want %v", got, tt.notFound)
			}
			if got := IsConflict(err); got != tt.conflict {
				t.Errorf("IsConflict: got %v, want %v", got, tt.conflict)
			}
			if got := IsPreconditionFailed(err); got != tt.precond {
				t.Errorf("IsPreconditionFailed: got %v, want %v", got, tt.precond)
			}
			if got := IsTransient(err); got != tt.transient {
				t.Errorf("IsTransient: got %v, want %v", got, tt.transient)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error message has several lines: %q", err)
			}
			var se *ServiceError
			if !errors.As(err, &se) || se.Op != "GetEnrollment" {
				t.Errorf("got %v, want a *ServiceError of GetEnrollment", err)
			}
		})
	}
	t.Run("details reachable", func(t *testing.T) {
		f := &fake{replies: []reply{{status: 404, body: `{"errorCode":404201,"trackingId":"t-1","message":"Enrollment not found.","info":{"a":1},"timestampUtc":"2023-05-19T23:10:45.1256254Z"}`}}}
		c, _ := newTLSClient(t, f, nil)
		_, err := c.DeleteEnrollment(ctx, "x", nil)
		d, ok := AsServiceError(err)
		if !ok {
			t.Fatalf("AsServiceError(%v): got false", err)
		}
		if d.ErrorCode != 404201 || d.TrackingID != "t-1" || d.Message != "Enrollment not found." || string(d.Info) != `{"a":1}` {
			t.Errorf("got %+v", d)
		}
		if want := "dps: DeleteEnrollment: 404 Not Found, error code 404201: Enrollment not found. (tracking id t-1)"; err.Error() != want {
			t.Errorf("message: got %q, want %q", err, want)
		}
	})
}
