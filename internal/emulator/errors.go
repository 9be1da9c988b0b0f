package emulator

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/dpsync/dpsync/internal/dps"
)

// Error codes the emulator answers with: HTTP status × 1000 + sub-code. Codes marked "seen"
// were observed on the live service; the others are the emulator's consistent choice.
const (
	CodeBadRequest              = 400000 // malformed request, wrong JSON type, bad header
	CodeAPIVersion              = 400001 // api-version missing or not supported
	CodeInvalidID               = 400004 // registration / group id fails the id rules
	CodeInvalidAttestation      = 400010 // bad symmetric keys, TPM without endorsementKey, bad certificate
	CodeInvalidBulk             = 400100 // bulk: empty, > 10 items, duplicate ids, unknown mode
	CodeBulkRejected            = 400101 // bulk: whole request rejected by an injected fault
	CodeCustomAllocationFailed  = 400209 // seen: custom allocation (the emulator cannot call webhooks)
	CodeUnauthorized            = 401002 // missing, malformed, expired or wrong credentials
	CodeNotFound                = 404000 // no such route or ID scope
	CodeEnrollmentNotFound      = 404201 // seen
	CodeRegistrationNotFound    = 404202
	CodeOperationNotFound       = 404203
	CodeEnrollmentGroupNotFound = 404204 // seen
	CodeMethodNotAllowed        = 405000
	CodeEnrollmentExists        = 409201 // seen
	CodeEnrollmentGroupExists   = 409202 // seen
	CodePreconditionFailed      = 412002
	CodeBodyTooLarge            = 413000
	CodeThrottled               = 429001 // service operations per minute
	CodeRegistrationsThrottled  = 429002 // device registrations per minute
	CodePollsThrottled          = 429003 // operation status polls per device
	CodeInternal                = 500000 // injected fault
)

// Messages of the codes seen live, worded as the service words them.
const (
	msgEnrollmentExists      = "Enrollment already exists."
	msgEnrollmentGroupExists = "EnrollmentGroup already exists."
	msgEnrollmentNotFound    = "Enrollment not found."
	msgGroupNotFound         = "EnrollmentGroup not found."
	msgRegistrationNotFound  = "Registration not found."
	msgPrecondition          = "Precondition failed: the etag does not match."
)

const contentTypeJSON = "application/json; charset=utf-8"

// apiError is an error answer: an HTTP status, a 6-digit code and a message free of secrets.
type apiError struct {
	code       int
	msg        string
	retryAfter int // seconds; > 0 adds a Retry-After header
}

func (e *apiError) status() int { return e.code / 1000 }

func newErr(code int, msg string) *apiError { return &apiError{code: code, msg: msg} }

// writeError writes e as a ProvisioningServiceErrorDetails body with x-ms-error-code.
func (em *Emulator) writeError(w http.ResponseWriter, e *apiError) {
	h := w.Header()
	h.Set("Content-Type", contentTypeJSON)
	h.Set("x-ms-error-code", strconv.Itoa(e.code))
	if e.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(e.retryAfter))
	}
	body, _ := json.Marshal(dps.ProvisioningServiceErrorDetails{
		ErrorCode:    e.code,
		TrackingID:   em.ids.trackingID(),
		Message:      e.msg,
		Info:         json.RawMessage(`{}`),
		TimestampUTC: dps.DateTime{Time: em.now()}.UTC().Format(dps.DateTimeLayout),
	})
	w.WriteHeader(e.status())
	_, _ = w.Write(body)
}

// writeJSON writes v with status and the service's JSON content type.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", contentTypeJSON)
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeRaw writes an already-encoded JSON body.
func writeRaw(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", contentTypeJSON)
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
