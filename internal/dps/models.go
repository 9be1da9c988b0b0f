package dps

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

// This file holds the wire types of the DPS data plane, api-version 2021-10-01
// (shared/spec/dps-2021-10-01/service.json and device.json). Every optional field is a
// pointer or a nil-able collection with omitempty (omitzero for lists whose empty form is
// meaningful), so that a value decoded from JSON and encoded again is the same JSON:
// "absent" stays absent, explicit false / "disabled" / [] stay present, and the one null
// the service echoes (provisioningStatus) stays null.

// AttestationType is the kind of attestation mechanism of an enrollment.
type AttestationType string

// Attestation types.
const (
	AttestationTypeNone         AttestationType = "none"
	AttestationTypeTPM          AttestationType = "tpm"
	AttestationTypeX509         AttestationType = "x509"
	AttestationTypeSymmetricKey AttestationType = "symmetricKey"
)

// AllocationPolicy says how DPS chooses the IoT hub of a device.
type AllocationPolicy string

// Allocation policies.
const (
	AllocationPolicyHashed     AllocationPolicy = "hashed"
	AllocationPolicyGeoLatency AllocationPolicy = "geoLatency"
	AllocationPolicyStatic     AllocationPolicy = "static"
	AllocationPolicyCustom     AllocationPolicy = "custom"
)

// ProvisioningStatus enables or disables an enrollment or group.
//
// DPS echoes a provisioningStatus sent as null as null (DPS.md). A decoded null is the
// azcore null sentinel: the field holds azcore.NullValue[*ProvisioningStatus](), which
// azcore.IsNullValue recognises and which encodes as null again. Set the field to that
// sentinel to send null. (The sentinel points to the empty status; any empty status
// encodes as null.)
type ProvisioningStatus string

// MarshalJSON implements json.Marshaler: the empty status (the null sentinel's value) is
// written as null.
func (p ProvisioningStatus) MarshalJSON() ([]byte, error) {
	switch p {
	case "":
		return []byte("null"), nil
	case ProvisioningStatusEnabled:
		return []byte(`"enabled"`), nil
	case ProvisioningStatusDisabled:
		return []byte(`"disabled"`), nil
	}
	return json.Marshal(string(p))
}

// jsonValueKind names the kind of a JSON value the way encoding/json's errors do.
func jsonValueKind(raw []byte) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "empty"
	}
	switch raw[0] {
	case '"':
		return "string"
	case '{':
		return "object"
	case '[':
		return "array"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	}
	return "number"
}

// Provisioning statuses.
const (
	ProvisioningStatusEnabled  ProvisioningStatus = "enabled"
	ProvisioningStatusDisabled ProvisioningStatus = "disabled"
)

// EnrollmentStatus is the status of a device registration.
type EnrollmentStatus string

// Enrollment (registration) statuses.
const (
	EnrollmentStatusUnassigned EnrollmentStatus = "unassigned"
	EnrollmentStatusAssigning  EnrollmentStatus = "assigning"
	EnrollmentStatusAssigned   EnrollmentStatus = "assigned"
	EnrollmentStatusFailed     EnrollmentStatus = "failed"
	EnrollmentStatusDisabled   EnrollmentStatus = "disabled"
)

// AssignedDeviceSubstatus tells what happened to device data on (re-)registration.
type AssignedDeviceSubstatus string

// Substatuses of an assigned device.
const (
	SubstatusInitialAssignment                AssignedDeviceSubstatus = "initialAssignment"
	SubstatusDeviceDataMigrated               AssignedDeviceSubstatus = "deviceDataMigrated"
	SubstatusDeviceDataReset                  AssignedDeviceSubstatus = "deviceDataReset"
	SubstatusReprovisionedToInitialAssignment AssignedDeviceSubstatus = "reprovisionedToInitialAssignment"
)

// BulkMode is the mode of a bulk enrollment (or enrollment group) operation.
type BulkMode string

// Bulk operation modes. The service also accepts the Node SDK's spelling
// "updateIfMatchEtag"; ParseBulkMode maps it to BulkModeUpdateIfMatchETag.
const (
	BulkModeCreate            BulkMode = "create"
	BulkModeUpdate            BulkMode = "update"
	BulkModeUpdateIfMatchETag BulkMode = "updateIfMatchETag"
	BulkModeDelete            BulkMode = "delete"
)

// ParseBulkMode returns the BulkMode named by s, accepting the spellings real clients send.
func ParseBulkMode(s string) (BulkMode, error) {
	switch s {
	case "create":
		return BulkModeCreate, nil
	case "update":
		return BulkModeUpdate, nil
	case "updateIfMatchETag", "updateIfMatchEtag":
		return BulkModeUpdateIfMatchETag, nil
	case "delete":
		return BulkModeDelete, nil
	}
	return "", fmt.Errorf("unknown bulk mode %q (want create, update, updateIfMatchETag or delete)", s)
}

// DateTime is a UTC timestamp written the way DPS writes it: RFC 3339 with exactly seven
// fractional digits ("2023-05-19T23:10:45.1256254Z"). It reads any RFC 3339 form.
type DateTime struct{ time.Time }

// DateTimeLayout is the layout DPS uses for its timestamps.
const DateTimeLayout = "2006-01-02T15:04:05.0000000Z07:00"

// NewDateTime returns t as a DateTime in UTC.
func NewDateTime(t time.Time) *DateTime { return &DateTime{t.UTC()} }

// MarshalJSON implements json.Marshaler.
func (d DateTime) MarshalJSON() ([]byte, error) {
	return []byte(`"` + d.UTC().Format(DateTimeLayout) + `"`), nil
}

// UnmarshalJSON implements json.Unmarshaler. A value that is not an RFC 3339 string is a
// *json.UnmarshalTypeError (Type DateTime), so that encoding/json names the field it was
// found in ("createdDateTimeUtc").
func (d *DateTime) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return &json.UnmarshalTypeError{Value: jsonValueKind(b), Type: reflect.TypeFor[DateTime]()}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return &json.UnmarshalTypeError{Value: "string " + quoteShort(s), Type: reflect.TypeFor[DateTime]()}
	}
	d.Time = t
	return nil
}

// quoteShort quotes s for an error message, cut to 64 bytes.
func quoteShort(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return fmt.Sprintf("%q", s)
}

// TwinCollection is a twin section (tags, desired properties, optional device information):
// arbitrary properties plus the service's "version", "count" and "$metadata"/"metadata".
// Values are kept as raw JSON so that unknown properties round-trip byte for byte.
type TwinCollection map[string]json.RawMessage

// Version returns the collection's "version" property, if present and numeric.
func (t TwinCollection) Version() (int64, bool) { return t.int64Prop("version") }

// Count returns the collection's "count" property, if present and numeric.
func (t TwinCollection) Count() (int64, bool) { return t.int64Prop("count") }

// Metadata returns the collection's "metadata" property, if present and well-formed.
func (t TwinCollection) Metadata() (*Metadata, bool) {
	raw, ok := t["metadata"]
	if !ok {
		return nil, false
	}
	var m Metadata
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, false
	}
	return &m, true
}

func (t TwinCollection) int64Prop(name string) (int64, bool) {
	raw, ok := t[name]
	if !ok {
		return 0, false
	}
	var v int64
	if err := json.Unmarshal(raw, &v); err != nil {
		return 0, false
	}
	return v, true
}

// Metadata is the metadata of a twin collection.
type Metadata struct {
	LastUpdated        *DateTime `json:"lastUpdated,omitempty"`
	LastUpdatedVersion *int64    `json:"lastUpdatedVersion,omitempty"`
}

// InitialTwinProperties holds the desired properties of an initial twin.
type InitialTwinProperties struct {
	Desired TwinCollection `json:"desired,omitzero"`
}

// InitialTwin is the twin a device gets when it is first provisioned.
type InitialTwin struct {
	Tags       TwinCollection         `json:"tags,omitzero"`
	Properties *InitialTwinProperties `json:"properties,omitempty"`
}

// DeviceCapabilities are the capabilities of a device. A nil field is absent on the wire;
// the service then applies its default (false).
type DeviceCapabilities struct {
	IotEdge *bool `json:"iotEdge,omitempty"`
}

// IsIotEdge reports whether the device is an IoT Edge device: IotEdge, false when c or the
// field is nil (the spec default).
func (c *DeviceCapabilities) IsIotEdge() bool {
	return c != nil && c.IotEdge != nil && *c.IotEdge
}

// ReprovisionPolicy decides what happens when a provisioned device registers again. A nil
// field is absent on the wire; the service then applies its default, true for both.
type ReprovisionPolicy struct {
	// UpdateHubAssignment lets the device be re-assigned to another hub.
	UpdateHubAssignment *bool `json:"updateHubAssignment,omitempty"`
	// MigrateDeviceData moves twin and device data to the new hub.
	MigrateDeviceData *bool `json:"migrateDeviceData,omitempty"`
}

// UpdatesHubAssignment reports whether a re-registering device may move to another hub:
// UpdateHubAssignment, or true (the spec default) when p or the field is nil.
func (p *ReprovisionPolicy) UpdatesHubAssignment() bool {
	return p == nil || p.UpdateHubAssignment == nil || *p.UpdateHubAssignment
}

// MigratesDeviceData reports whether device data moves with the device: MigrateDeviceData,
// or true (the spec default) when p or the field is nil.
func (p *ReprovisionPolicy) MigratesDeviceData() bool {
	return p == nil || p.MigrateDeviceData == nil || *p.MigrateDeviceData
}

// CustomAllocationDefinition names the webhook of the custom allocation policy.
type CustomAllocationDefinition struct {
	WebhookURL string `json:"webhookUrl"`
	APIVersion string `json:"apiVersion"`
}

// SymmetricKeyAttestation holds the keys of a symmetric-key attestation. Both are secrets.
type SymmetricKeyAttestation struct {
	PrimaryKey   string `json:"primaryKey,omitempty"`
	SecondaryKey string `json:"secondaryKey,omitempty"`
}

// TPMAttestation holds the keys of a TPM attestation.
type TPMAttestation struct {
	EndorsementKey string `json:"endorsementKey,omitempty"`
	StorageRootKey string `json:"storageRootKey,omitempty"`
}

// X509CertificateInfo is what the service computes from an X.509 certificate.
type X509CertificateInfo struct {
	SubjectName      string     `json:"subjectName"`
	SHA1Thumbprint   string     `json:"sha1Thumbprint"`
	SHA256Thumbprint string     `json:"sha256Thumbprint"`
	IssuerName       string     `json:"issuerName"`
	NotBeforeUTC     *time.Time `json:"notBeforeUtc"`
	NotAfterUTC      *time.Time `json:"notAfterUtc"`
	SerialNumber     string     `json:"serialNumber"`
	Version          int        `json:"version"`
}

// X509CertificateWithInfo is a certificate (PEM or base64 DER, sent by the client) and the
// info the service computed from it (returned by the service; the certificate is not echoed).
type X509CertificateWithInfo struct {
	Certificate string               `json:"certificate,omitempty"`
	Info        *X509CertificateInfo `json:"info,omitempty"`
}

// X509Certificates is a primary and optional secondary certificate.
type X509Certificates struct {
	Primary   *X509CertificateWithInfo `json:"primary,omitempty"`
	Secondary *X509CertificateWithInfo `json:"secondary,omitempty"`
}

// X509CAReferences names certificate authorities registered with the DPS instance.
type X509CAReferences struct {
	Primary   string `json:"primary,omitempty"`
	Secondary string `json:"secondary,omitempty"`
}

// X509Attestation is an X.509 attestation: client certificates (individual enrollments),
// signing certificates (groups) or CA references.
type X509Attestation struct {
	ClientCertificates  *X509Certificates `json:"clientCertificates,omitempty"`
	SigningCertificates *X509Certificates `json:"signingCertificates,omitempty"`
	CAReferences        *X509CAReferences `json:"caReferences,omitempty"`
}

// AttestationMechanism is how a device proves its identity.
type AttestationMechanism struct {
	Type         AttestationType          `json:"type"`
	TPM          *TPMAttestation          `json:"tpm,omitempty"`
	X509         *X509Attestation         `json:"x509,omitempty"`
	SymmetricKey *SymmetricKeyAttestation `json:"symmetricKey,omitempty"`
}

// DeviceRegistrationState is the record DPS keeps of a device's registration.
type DeviceRegistrationState struct {
	RegistrationID         string                  `json:"registrationId,omitempty"`
	CreatedDateTimeUTC     *DateTime               `json:"createdDateTimeUtc,omitempty"`
	AssignedHub            string                  `json:"assignedHub,omitempty"`
	DeviceID               string                  `json:"deviceId,omitempty"`
	Status                 EnrollmentStatus        `json:"status,omitempty"`
	Substatus              AssignedDeviceSubstatus `json:"substatus,omitempty"`
	ErrorCode              *int                    `json:"errorCode,omitempty"`
	ErrorMessage           string                  `json:"errorMessage,omitempty"`
	LastUpdatedDateTimeUTC *DateTime               `json:"lastUpdatedDateTimeUtc,omitempty"`
	ETag                   string                  `json:"etag,omitempty"`
	Payload                json.RawMessage         `json:"payload,omitempty"`
}

// IndividualEnrollment is the enrollment of one device.
type IndividualEnrollment struct {
	RegistrationID             string                      `json:"registrationId"`
	DeviceID                   string                      `json:"deviceId,omitempty"`
	RegistrationState          *DeviceRegistrationState    `json:"registrationState,omitempty"`
	OptionalDeviceInformation  TwinCollection              `json:"optionalDeviceInformation,omitzero"`
	Attestation                *AttestationMechanism       `json:"attestation,omitempty"`
	Capabilities               *DeviceCapabilities         `json:"capabilities,omitempty"`
	IotHubHostName             string                      `json:"iotHubHostName,omitempty"`
	InitialTwin                *InitialTwin                `json:"initialTwin,omitempty"`
	ETag                       string                      `json:"etag,omitempty"`
	ProvisioningStatus         *ProvisioningStatus         `json:"provisioningStatus,omitempty"`
	ReprovisionPolicy          *ReprovisionPolicy          `json:"reprovisionPolicy,omitempty"`
	CreatedDateTimeUTC         *DateTime                   `json:"createdDateTimeUtc,omitempty"`
	LastUpdatedDateTimeUTC     *DateTime                   `json:"lastUpdatedDateTimeUtc,omitempty"`
	AllocationPolicy           *AllocationPolicy           `json:"allocationPolicy,omitempty"`
	IotHubs                    []string                    `json:"iotHubs,omitzero"`
	CustomAllocationDefinition *CustomAllocationDefinition `json:"customAllocationDefinition,omitempty"`
}

// EnrollmentGroup is an enrollment shared by a group of devices.
type EnrollmentGroup struct {
	EnrollmentGroupID          string                      `json:"enrollmentGroupId"`
	Attestation                *AttestationMechanism       `json:"attestation,omitempty"`
	Capabilities               *DeviceCapabilities         `json:"capabilities,omitempty"`
	IotHubHostName             string                      `json:"iotHubHostName,omitempty"`
	InitialTwin                *InitialTwin                `json:"initialTwin,omitempty"`
	ETag                       string                      `json:"etag,omitempty"`
	ProvisioningStatus         *ProvisioningStatus         `json:"provisioningStatus,omitempty"`
	ReprovisionPolicy          *ReprovisionPolicy          `json:"reprovisionPolicy,omitempty"`
	CreatedDateTimeUTC         *DateTime                   `json:"createdDateTimeUtc,omitempty"`
	LastUpdatedDateTimeUTC     *DateTime                   `json:"lastUpdatedDateTimeUtc,omitempty"`
	AllocationPolicy           *AllocationPolicy           `json:"allocationPolicy,omitempty"`
	IotHubs                    []string                    `json:"iotHubs,omitzero"`
	CustomAllocationDefinition *CustomAllocationDefinition `json:"customAllocationDefinition,omitempty"`
}

// UnmarshalJSON implements json.Unmarshaler: as encoding/json would, except that a
// provisioningStatus of null becomes the azcore null sentinel (see ProvisioningStatus).
func (e *IndividualEnrollment) UnmarshalJSON(b []byte) error {
	type plain IndividualEnrollment
	if err := json.Unmarshal(b, (*plain)(e)); err != nil {
		return nameStruct(err, "IndividualEnrollment")
	}
	return nullProvisioningStatus(b, &e.ProvisioningStatus)
}

// UnmarshalJSON implements json.Unmarshaler (see IndividualEnrollment.UnmarshalJSON).
func (g *EnrollmentGroup) UnmarshalJSON(b []byte) error {
	type plain EnrollmentGroup
	if err := json.Unmarshal(b, (*plain)(g)); err != nil {
		return nameStruct(err, "EnrollmentGroup")
	}
	return nullProvisioningStatus(b, &g.ProvisioningStatus)
}

var provisioningStatusKey = []byte(`"provisioningStatus"`)

// nullProvisioningStatus sets *ps to the azcore null sentinel when the JSON object b has a
// provisioningStatus of null. Decoding b left *ps nil in that case; the object is read a
// second time only when it names the field at all.
func nullProvisioningStatus(b []byte, ps **ProvisioningStatus) error {
	if *ps != nil || !bytes.Contains(b, provisioningStatusKey) {
		return nil
	}
	var w struct {
		P json.RawMessage `json:"provisioningStatus"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	if string(w.P) == "null" {
		*ps = azcore.NullValue[*ProvisioningStatus]()
	}
	return nil
}

// nameStruct names the model type, not its method-less copy, in a type error.
func nameStruct(err error, name string) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		te.Struct = name
	}
	return err
}

// BulkEnrollmentOperation is the body of POST /enrollments.
type BulkEnrollmentOperation struct {
	Enrollments []IndividualEnrollment `json:"enrollments"`
	Mode        BulkMode               `json:"mode"`
}

// BulkEnrollmentOperationError is the failure of one item of a bulk enrollment operation.
type BulkEnrollmentOperationError struct {
	RegistrationID string `json:"registrationId"`
	ErrorCode      int    `json:"errorCode"`
	ErrorStatus    string `json:"errorStatus"`
}

// BulkEnrollmentOperationResult is the result of a bulk enrollment operation. The call
// returns HTTP 200 even when items fail; failed items are listed in Errors.
type BulkEnrollmentOperationResult struct {
	// Errors is nil when the service sent no list and empty (not nil) for "errors":[].
	Errors       []BulkEnrollmentOperationError `json:"errors,omitzero"`
	IsSuccessful bool                           `json:"isSuccessful"`
}

// BulkEnrollmentGroupOperation is the body of POST /enrollmentGroups.
type BulkEnrollmentGroupOperation struct {
	EnrollmentGroups []EnrollmentGroup `json:"enrollmentGroups"`
	Mode             BulkMode          `json:"mode"`
}

// BulkEnrollmentGroupOperationError is the failure of one item of a bulk group operation.
type BulkEnrollmentGroupOperationError struct {
	EnrollmentGroupID string `json:"enrollmentGroupId"`
	ErrorCode         int    `json:"errorCode"`
	ErrorStatus       string `json:"errorStatus"`
}

// BulkEnrollmentGroupOperationResult is the result of a bulk enrollment group operation.
type BulkEnrollmentGroupOperationResult struct {
	// Errors is nil when the service sent no list and empty (not nil) for "errors":[].
	Errors       []BulkEnrollmentGroupOperationError `json:"errors,omitzero"`
	IsSuccessful bool                                `json:"isSuccessful"`
}

// QuerySpecification is the body of a query call.
type QuerySpecification struct {
	Query string `json:"query"`
}

// ProvisioningServiceErrorDetails is the body of every DPS error response.
type ProvisioningServiceErrorDetails struct {
	ErrorCode    int             `json:"errorCode"`
	TrackingID   string          `json:"trackingId,omitempty"`
	Message      string          `json:"message,omitempty"`
	Info         json.RawMessage `json:"info,omitempty"`
	TimestampUTC string          `json:"timestampUtc,omitempty"`
}

// UnmarshalJSON accepts "code" as well as "errorCode", as some SDKs do, and error codes
// sent as strings.
func (e *ProvisioningServiceErrorDetails) UnmarshalJSON(b []byte) error {
	var raw struct {
		ErrorCode    json.RawMessage `json:"errorCode"`
		Code         json.RawMessage `json:"code"`
		TrackingID   string          `json:"trackingId"`
		Message      string          `json:"message"`
		Info         json.RawMessage `json:"info"`
		TimestampUTC string          `json:"timestampUtc"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*e = ProvisioningServiceErrorDetails{TrackingID: raw.TrackingID, Message: raw.Message, Info: raw.Info, TimestampUTC: raw.TimestampUTC}
	code := raw.ErrorCode
	if len(code) == 0 || bytes.Equal(code, []byte("null")) {
		code = raw.Code
	}
	if len(code) == 0 || bytes.Equal(code, []byte("null")) {
		return nil
	}
	code = bytes.Trim(code, `"`)
	var n int
	if err := json.Unmarshal(code, &n); err != nil {
		return fmt.Errorf("errorCode %s is not a number", code)
	}
	e.ErrorCode = n
	return nil
}

// DeviceRegistration is the body a device sends to register.
type DeviceRegistration struct {
	RegistrationID string          `json:"registrationId,omitempty"`
	TPM            *TPMAttestation `json:"tpm,omitempty"`
	Payload        json.RawMessage `json:"payload,omitempty"`
}

// TPMRegistrationResult is the TPM part of a registration result.
type TPMRegistrationResult struct {
	AuthenticationKey string `json:"authenticationKey,omitempty"`
}

// X509RegistrationResult is the X.509 part of a registration result.
type X509RegistrationResult struct {
	CertificateInfo        *X509CertificateInfo `json:"certificateInfo,omitempty"`
	EnrollmentGroupID      string               `json:"enrollmentGroupId,omitempty"`
	SigningCertificateInfo *X509CertificateInfo `json:"signingCertificateInfo,omitempty"`
}

// SymmetricKeyRegistrationResult is the symmetric-key part of a registration result.
type SymmetricKeyRegistrationResult struct {
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
}

// DeviceRegistrationResult is the registration state a device gets back.
type DeviceRegistrationResult struct {
	TPM                    *TPMRegistrationResult          `json:"tpm,omitempty"`
	X509                   *X509RegistrationResult         `json:"x509,omitempty"`
	SymmetricKey           *SymmetricKeyRegistrationResult `json:"symmetricKey,omitempty"`
	RegistrationID         string                          `json:"registrationId,omitempty"`
	CreatedDateTimeUTC     *DateTime                       `json:"createdDateTimeUtc,omitempty"`
	AssignedHub            string                          `json:"assignedHub,omitempty"`
	DeviceID               string                          `json:"deviceId,omitempty"`
	Status                 EnrollmentStatus                `json:"status,omitempty"`
	Substatus              AssignedDeviceSubstatus         `json:"substatus,omitempty"`
	ErrorCode              *int                            `json:"errorCode,omitempty"`
	ErrorMessage           string                          `json:"errorMessage,omitempty"`
	LastUpdatedDateTimeUTC *DateTime                       `json:"lastUpdatedDateTimeUtc,omitempty"`
	ETag                   string                          `json:"etag,omitempty"`
	Payload                json.RawMessage                 `json:"payload,omitempty"`
}

// RegistrationOperationStatus is the status of a device registration operation.
type RegistrationOperationStatus struct {
	OperationID       string                    `json:"operationId"`
	Status            EnrollmentStatus          `json:"status,omitempty"`
	RegistrationState *DeviceRegistrationResult `json:"registrationState,omitempty"`
}
