package dps

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

func fakeResponse(status int, header http.Header, body []byte) *http.Response {
	if header == nil {
		header = http.Header{}
	}
	u, _ := url.Parse("https://dps.test/enrollments/x?api-version=2021-10-01")
	return &http.Response{
		StatusCode: status,
		Status:     strconv.Itoa(status) + " " + http.StatusText(status),
		Header:     header,
		Body:       io.NopCloser(bytes.NewReader(body)),
		Request:    &http.Request{Method: http.MethodGet, URL: u},
	}
}

// FuzzDecodeBulkResult feeds arbitrary bodies to the decoding of bulk results: it must never
// panic, and whatever it accepts must survive an encode/decode round trip unchanged.
func FuzzDecodeBulkResult(f *testing.F) {
	for _, seed := range []string{
		`{"errors":[],"isSuccessful":true}`,
		`{"errors":[{"registrationId":"a","errorCode":409201,"errorStatus":"Enrollment already exists."}],"isSuccessful":false}`,
		`{"errors":[{"enrollmentGroupId":"g","errorCode":412002,"errorStatus":"Precondition failed."}],"isSuccessful":false}`,
		`{"errors":null,"isSuccessful":true}`,
		`{"isSuccessful":"yes"}`,
		`{"errors":[{"errorCode":"409201"}]}`,
		`[]`,
		``,
		`{"errors":[{"registrationId":"\u00e9\ud800","errorCode":1e3}]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var r BulkEnrollmentOperationResult
		if err := decode("RunBulkOperation", fakeResponse(200, nil, body), &r); err == nil {
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatalf("re-encode: %v", err)
			}
			var again BulkEnrollmentOperationResult
			if err := json.Unmarshal(b, &again); err != nil {
				t.Fatalf("decode of re-encoded %s: %v", b, err)
			}
			if !reflect.DeepEqual(normalizeBulk(r), normalizeBulk(again)) {
				t.Fatalf("round trip changed %+v into %+v", r, again)
			}
		} else if !strings.HasPrefix(err.Error(), "dps: RunBulkOperation: decode response") {
			t.Fatalf("error %q lacks its context", err)
		}
		var g BulkEnrollmentGroupOperationResult
		_ = decode("RunBulkGroupOperation", fakeResponse(200, nil, body), &g)
	})
}

// normalizeBulk maps an empty error list to nil (both encode as an empty or null list) and
// invalid UTF-8 the way encoding/json re-encodes it.
func normalizeBulk(r BulkEnrollmentOperationResult) BulkEnrollmentOperationResult {
	if len(r.Errors) == 0 {
		r.Errors = nil
	}
	for i := range r.Errors {
		r.Errors[i].RegistrationID = strings.ToValidUTF8(r.Errors[i].RegistrationID, "\uFFFD")
		r.Errors[i].ErrorStatus = strings.ToValidUTF8(r.Errors[i].ErrorStatus, "\uFFFD")
	}
	return r
}

// FuzzDecodeErrorBody feeds arbitrary error responses to newServiceError: it must never
// panic, always return a *ServiceError wrapping an *azcore.ResponseError with the HTTP
// status, agree on the code everywhere, and produce a one-line message.
func FuzzDecodeErrorBody(f *testing.F) {
	for _, s := range []struct {
		status int
		header string
		body   string
	}{
		{404, "404201", `{"errorCode":404201,"trackingId":"t","message":"Enrollment not found.","info":{},"timestampUtc":"2023-05-19T23:10:45.1256254Z"}`},
		{409, "", `{"errorCode":409201,"message":"Enrollment already exists."}`},
		{409, "", `{"errorCode":"409202"}`},
		{401, "", `{"code":401002,"message":"line1\nline2"}`},
		{400, "400004", `not json`},
		{500, "", ``},
		{429, "", `{"errorCode":null,"code":null}`},
		{412, "", `{"errorCode":1.5}`},
		{503, "x", `{"error":{"code":"ServiceUnavailable"}}`},
	} {
		f.Add(s.status, s.header, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, status int, headerCode string, body []byte) {
		if status < 400 || status > 599 {
			status = 400 + (abs(status) % 200)
		}
		h := http.Header{}
		if headerCode != "" {
			h.Set("x-ms-error-code", headerCode)
		}
		err := newServiceError("GetEnrollment", fakeResponse(status, h, body))
		var se *ServiceError
		if !errors.As(err, &se) {
			t.Fatalf("got %T %v, want *ServiceError", err, err)
		}
		var re *azcore.ResponseError
		if !errors.As(err, &re) {
			t.Fatal("does not wrap *azcore.ResponseError")
		}
		if StatusCode(err) != status || re.StatusCode != status {
			t.Fatalf("status: got %d / %d, want %d", StatusCode(err), re.StatusCode, status)
		}
		code := ErrorCode(err)
		if se.Details != nil && se.Details.ErrorCode != 0 {
			if code != se.Details.ErrorCode || re.ErrorCode != strconv.Itoa(code) {
				t.Fatalf("code: ErrorCode %d, details %d, ResponseError %q", code, se.Details.ErrorCode, re.ErrorCode)
			}
		} else if re.ErrorCode != strings.TrimSpace(h.Get("x-ms-error-code")) {
			t.Fatalf("ResponseError.ErrorCode: got %q, want the header %q", re.ErrorCode, h.Get("x-ms-error-code"))
		}
		msg := err.Error()
		if strings.ContainsAny(msg, "\n\r") || !utf8.ValidString(msg) {
			t.Fatalf("message is not one valid line: %q", msg)
		}
		if !strings.HasPrefix(msg, "dps: GetEnrollment: "+strconv.Itoa(status)) {
			t.Fatalf("message %q does not start with the operation and status", msg)
		}
	})
}

func abs(n int) int {
	if n < 0 {
		if n == -n { // math.MinInt
			return 0
		}
		return -n
	}
	return n
}
