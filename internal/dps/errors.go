package dps

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"unicode/utf8"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// DPS error codes (6 digits: HTTP status × 1000 + sub-code). Those marked "seen" are
// confirmed by live traffic (DPS.md); the others are the codes this project's emulator uses.
const (
	CodeBadRequest              = 400000
	CodeInvalidRegistrationID   = 400004
	CodeCustomAllocationFailed  = 400209 // seen
	CodeUnauthorized            = 401002
	CodeEnrollmentNotFound      = 404201 // seen
	CodeEnrollmentGroupNotFound = 404204 // seen
	CodeRegistrationNotFound    = 404202
	CodeEnrollmentExists        = 409201 // seen
	CodeEnrollmentGroupExists   = 409202 // seen
	CodePreconditionFailed      = 412002
	CodeThrottled               = 429001
	CodeInternalServerError     = 500000
)

// CodeStatus returns the HTTP status a 6-digit DPS error code belongs to (code / 1000),
// or 0 when code is not a 6-digit code.
func CodeStatus(code int) int {
	if code < 100000 || code > 999999 {
		return 0
	}
	return code / 1000
}

// IsTransientStatus reports whether an HTTP status is worth retrying later: 408, 429 and 5xx.
func IsTransientStatus(status int) bool {
	return status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || (status >= 500 && status <= 599)
}

// ServiceError is the error of a DPS call answered with a non-2xx status. It wraps the
// *azcore.ResponseError (errors.As reaches it: status, ErrorCode = the 6-digit code as a
// decimal string, raw response) and carries the decoded error body. Its message is one line
// and never holds a secret.
type ServiceError struct {
	// Op is the client method that failed, e.g. "GetEnrollment".
	Op string
	// StatusCode is the HTTP status.
	StatusCode int
	// Details is the decoded error body; nil when the body was absent or not a DPS error.
	Details *ProvisioningServiceErrorDetails
	// Response is the azcore error, with the raw response.
	Response *azcore.ResponseError
}

// Error implements error.
func (e *ServiceError) Error() string {
	var b strings.Builder
	b.WriteString("dps: ")
	if e.Op != "" {
		b.WriteString(e.Op)
		b.WriteString(": ")
	}
	b.WriteString(strconv.Itoa(e.StatusCode))
	if t := http.StatusText(e.StatusCode); t != "" {
		b.WriteString(" ")
		b.WriteString(t)
	}
	if code := e.Code(); code != 0 {
		b.WriteString(", error code ")
		b.WriteString(strconv.Itoa(code))
	}
	if e.Details != nil {
		if e.Details.Message != "" {
			b.WriteString(": ")
			b.WriteString(oneLine(e.Details.Message))
		}
		if e.Details.TrackingID != "" {
			b.WriteString(" (tracking id ")
			b.WriteString(oneLine(e.Details.TrackingID))
			b.WriteString(")")
		}
	}
	return b.String()
}

// Unwrap returns the *azcore.ResponseError.
func (e *ServiceError) Unwrap() error {
	if e.Response == nil {
		return nil
	}
	return e.Response
}

// Code returns the 6-digit DPS error code, or 0 when the service sent none.
func (e *ServiceError) Code() int {
	if e.Details != nil && e.Details.ErrorCode != 0 {
		return e.Details.ErrorCode
	}
	if e.Response != nil {
		if n, err := strconv.Atoi(e.Response.ErrorCode); err == nil {
			return n
		}
	}
	return 0
}

func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' || r == '\t' {
			return ' '
		}
		return r
	}, s)
	const max = 512
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// newServiceError builds the error of a non-2xx response. The 6-digit code comes from the
// body's errorCode (or code), else from the x-ms-error-code header: azcore alone would only
// look at the header or at error.code, which DPS does not use.
func newServiceError(op string, resp *http.Response) error {
	// A body that cannot be read leaves the error without details, not without status.
	body, _ := runtime.Payload(resp)
	var details *ProvisioningServiceErrorDetails
	code := ""
	if d, ok := decodeErrorBody(body); ok {
		details = d
		if d.ErrorCode != 0 {
			code = strconv.Itoa(d.ErrorCode)
		}
	}
	if code == "" {
		code = strings.TrimSpace(resp.Header.Get("x-ms-error-code"))
	}
	var re *azcore.ResponseError
	if !errors.As(runtime.NewResponseErrorWithErrorCode(resp, code), &re) {
		return fmt.Errorf("dps: %s: status %d", op, resp.StatusCode)
	}
	return &ServiceError{Op: op, StatusCode: resp.StatusCode, Details: details, Response: re}
}

// decodeErrorBody decodes a DPS error body. It reports false when body is empty or is not a
// JSON object in DPS's error shape.
func decodeErrorBody(body []byte) (*ProvisioningServiceErrorDetails, bool) {
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil, false
	}
	var d ProvisioningServiceErrorDetails
	if err := json.Unmarshal(body, &d); err != nil {
		return nil, false
	}
	return &d, true
}

// AsServiceError returns the decoded DPS error body of err, if err is (or wraps) a
// *ServiceError with a body.
func AsServiceError(err error) (*ProvisioningServiceErrorDetails, bool) {
	var se *ServiceError
	if errors.As(err, &se) && se.Details != nil {
		return se.Details, true
	}
	return nil, false
}

// StatusCode returns the HTTP status of err if it is (or wraps) a *ServiceError or an
// *azcore.ResponseError, else 0.
func StatusCode(err error) int {
	var se *ServiceError
	if errors.As(err, &se) {
		return se.StatusCode
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// ErrorCode returns the 6-digit DPS error code of err, or 0 when it has none.
func ErrorCode(err error) int {
	var se *ServiceError
	if errors.As(err, &se) {
		return se.Code()
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		if n, err := strconv.Atoi(re.ErrorCode); err == nil {
			return n
		}
	}
	return 0
}

// IsNotFound reports whether err says the enrollment, group or registration state does not
// exist: error code 404201, 404204 or 404202. Another 6-digit code is not "not found" even
// with status 404 (an unknown route or ID scope is 404000: a misconfiguration, not an absent
// record). Only an answer without a 6-digit code (neither in the body nor in
// x-ms-error-code) falls back to its HTTP status: any 404.
func IsNotFound(err error) bool {
	switch code := ErrorCode(err); {
	case code == CodeEnrollmentNotFound, code == CodeEnrollmentGroupNotFound, code == CodeRegistrationNotFound:
		return true
	case CodeStatus(code) != 0:
		return false
	}
	return StatusCode(err) == http.StatusNotFound
}

// IsConflict reports whether err says the enrollment or group already exists (409201,
// 409202, or a 409 without a code).
func IsConflict(err error) bool {
	switch ErrorCode(err) {
	case CodeEnrollmentExists, CodeEnrollmentGroupExists:
		return true
	case 0:
		return StatusCode(err) == http.StatusConflict
	}
	return false
}

// IsPreconditionFailed reports whether err is a 412: the If-Match etag did not match.
func IsPreconditionFailed(err error) bool {
	return StatusCode(err) == http.StatusPreconditionFailed
}

// IsTransient reports whether retrying the call later may succeed: a 408, 429 or 5xx answer
// (after the client's own retries), or a transport failure (connection refused or reset,
// timeout, truncated response). A cancelled context, a client-side validation error and any
// other 4xx are not transient.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	if s := StatusCode(err); s != 0 {
		return IsTransientStatus(s)
	}
	if errors.Is(err, context.Canceled) {
		return false
	}
	var ve *BulkValidationError
	if errors.As(err, &ve) || errors.Is(err, ErrEmptyID) {
		return false
	}
	if isCertificateError(err) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return dnsErr.IsTemporary || dnsErr.IsTimeout
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		switch oe.Op {
		case "dial", "read", "write":
			return true
		}
	}
	return false
}

// isCertificateError reports whether err is a TLS certificate problem (wrong CA, wrong host
// name, expired certificate): retrying does not help.
func isCertificateError(err error) bool {
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	var hn x509.HostnameError
	var cv *tls.CertificateVerificationError
	return errors.As(err, &ua) || errors.As(err, &ci) || errors.As(err, &hn) || errors.As(err, &cv)
}

// ErrEmptyID is returned, before sending anything, by calls given an empty id.
var ErrEmptyID = errors.New("dps: id is empty")

// Rules a bulk request must follow; a *BulkValidationError wraps one of them.
var (
	ErrBulkEmpty       = errors.New("a bulk operation needs at least 1 item")
	ErrBulkTooMany     = fmt.Errorf("a bulk operation takes at most %d items", MaxBulkItems)
	ErrBulkDuplicateID = errors.New("ids in a bulk operation must be distinct (case-insensitively)")
	ErrBulkMissingID   = errors.New("every item of a bulk operation needs an id")
	ErrBulkMode        = errors.New("unknown bulk mode")
)

// MaxBulkItems is the most items DPS takes in one bulk operation.
const MaxBulkItems = 10

// BulkValidationError is returned, before anything is sent, for a bulk request DPS would
// reject as a whole. Rule is one of the ErrBulk… errors (errors.Is works on the
// BulkValidationError).
type BulkValidationError struct {
	Rule error
	// Count is the number of items given.
	Count int
	// Index and Other are the positions of the offending items (Other only for duplicates);
	// -1 when not about one item.
	Index, Other int
	// ID is the offending id, if any.
	ID string
}

// Error implements error.
func (e *BulkValidationError) Error() string {
	switch {
	case errors.Is(e.Rule, ErrBulkDuplicateID):
		return fmt.Sprintf("dps: bulk operation: items %d and %d have the same id %q: %v", e.Other, e.Index, e.ID, e.Rule)
	case errors.Is(e.Rule, ErrBulkMissingID):
		return fmt.Sprintf("dps: bulk operation: item %d: %v", e.Index, e.Rule)
	case errors.Is(e.Rule, ErrBulkEmpty), errors.Is(e.Rule, ErrBulkTooMany):
		return fmt.Sprintf("dps: bulk operation: got %d items: %v", e.Count, e.Rule)
	}
	return "dps: bulk operation: " + e.Rule.Error()
}

// Unwrap returns Rule.
func (e *BulkValidationError) Unwrap() error { return e.Rule }

func validateBulk(mode BulkMode, ids []string) error {
	switch mode {
	case BulkModeCreate, BulkModeUpdate, BulkModeUpdateIfMatchETag, BulkModeDelete:
	default:
		return &BulkValidationError{Rule: fmt.Errorf("%w %q", ErrBulkMode, string(mode)), Count: len(ids), Index: -1, Other: -1}
	}
	if len(ids) == 0 {
		return &BulkValidationError{Rule: ErrBulkEmpty, Index: -1, Other: -1}
	}
	if len(ids) > MaxBulkItems {
		return &BulkValidationError{Rule: ErrBulkTooMany, Count: len(ids), Index: -1, Other: -1}
	}
	seen := make(map[string]int, len(ids))
	for i, id := range ids {
		if id == "" {
			return &BulkValidationError{Rule: ErrBulkMissingID, Count: len(ids), Index: i, Other: -1}
		}
		k := strings.ToLower(id)
		if j, ok := seen[k]; ok {
			return &BulkValidationError{Rule: ErrBulkDuplicateID, Count: len(ids), Index: i, Other: j, ID: id}
		}
		seen[k] = i
	}
	return nil
}

// RegistrationError is returned by DeviceClient.Register when the registration ended in
// status failed or disabled. The RegisterResponse is returned with it.
type RegistrationError struct {
	RegistrationID string
	Status         EnrollmentStatus
	// ErrorCode and Message come from the registration state, when the service sent them.
	ErrorCode int
	Message   string
}

// Error implements error.
func (e *RegistrationError) Error() string {
	s := fmt.Sprintf("dps: registration of %q ended with status %s", e.RegistrationID, e.Status)
	if e.ErrorCode != 0 {
		s += ", error code " + strconv.Itoa(e.ErrorCode)
	}
	if e.Message != "" {
		s += ": " + oneLine(e.Message)
	}
	return s
}

// nonRetriableError stops azcore's retry policy (it implements errorinfo.NonRetriable).
type nonRetriableError struct{ error }

func (nonRetriableError) NonRetriable() {}

func (e nonRetriableError) Unwrap() error { return e.error }
