package emulator

import (
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/dpsync/dpsync/internal/dps"
)

// enrollmentIn is an individual enrollment as a request carries it. The dps model's own
// decoder (which maps a null provisioningStatus to azcore's null sentinel) reads each item
// a second time; the emulator decodes bulk bodies on its hot path, so it decodes a
// method-less copy of the model in one pass and reads provisioningStatus raw.
type enrollmentIn struct {
	enrollmentFields
	ProvisioningStatus json.RawMessage `json:"provisioningStatus"`
}

type enrollmentFields dps.IndividualEnrollment

// model returns the enrollment, provisioningStatus null as the azcore null sentinel.
func (in *enrollmentIn) model() (dps.IndividualEnrollment, *apiError) {
	e := dps.IndividualEnrollment(in.enrollmentFields)
	ps, e2 := rawProvisioningStatus(in.ProvisioningStatus)
	e.ProvisioningStatus = ps
	return e, e2
}

// groupIn is an enrollment group as a request carries it (see enrollmentIn).
type groupIn struct {
	groupFields
	ProvisioningStatus json.RawMessage `json:"provisioningStatus"`
}

type groupFields dps.EnrollmentGroup

func (in *groupIn) model() (dps.EnrollmentGroup, *apiError) {
	g := dps.EnrollmentGroup(in.groupFields)
	ps, e := rawProvisioningStatus(in.ProvisioningStatus)
	g.ProvisioningStatus = ps
	return g, e
}

// rawProvisioningStatus reads a raw provisioningStatus: absent → nil, null → the azcore
// null sentinel, else a string.
func rawProvisioningStatus(raw json.RawMessage) (*dps.ProvisioningStatus, *apiError) {
	switch {
	case len(raw) == 0:
		return nil, nil
	case string(raw) == "null":
		return azcore.NullValue[*dps.ProvisioningStatus](), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		got := "number"
		switch raw[0] {
		case '{':
			got = "object"
		case '[':
			got = "array"
		case 't', 'f':
			got = "bool"
		}
		return nil, newErr(CodeBadRequest, "provisioningStatus: expected string, got "+got)
	}
	ps := dps.ProvisioningStatus(s)
	return &ps, nil
}

// embeddedNames are the Go names of the embedded method-less models, which encoding/json
// puts in the field path of a type error.
var embeddedNames = strings.NewReplacer("enrollmentFields.", "", "groupFields.", "")

// decodeJSON decodes body into v, turning decoder errors into 400s that name the field.
func decodeJSON(body []byte, v any) *apiError {
	if len(body) == 0 {
		return newErr(CodeBadRequest, "The request body is empty.")
	}
	err := json.Unmarshal(body, v)
	if err == nil {
		return nil
	}
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		// The path holds JSON names, apart from the embedded models' Go names.
		field := embeddedNames.Replace(te.Field)
		if field == "" {
			field = "body"
		}
		return newErr(CodeBadRequest, fmt.Sprintf("%s: expected %s, got %s", field, jsonKind(te.Type), te.Value))
	case errors.As(err, &se):
		return newErr(CodeBadRequest, fmt.Sprintf("malformed JSON at offset %d: %v", se.Offset, se))
	}
	return newErr(CodeBadRequest, "invalid request body: "+err.Error())
}

func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == reflect.TypeFor[dps.DateTime]() {
		return "an RFC 3339 timestamp string"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Slice, reflect.Array:
		return "array"
	case reflect.Map, reflect.Struct:
		return "object"
	}
	return t.String()
}

// checkProvisioningStatus checks a decoded provisioningStatus: absent, null (the azcore
// null sentinel), "enabled" or "disabled" (any case). It returns the status to store and
// whether it was sent as null.
func checkProvisioningStatus(ps *dps.ProvisioningStatus) (out *dps.ProvisioningStatus, null bool, e *apiError) {
	switch {
	case azcore.IsNullValue(ps):
		return nil, true, nil
	case ps == nil:
		return nil, false, nil
	}
	switch strings.ToLower(string(*ps)) {
	case "enabled":
		v := dps.ProvisioningStatusEnabled
		return &v, false, nil
	case "disabled":
		v := dps.ProvisioningStatusDisabled
		return &v, false, nil
	}
	return nil, false, newErr(CodeBadRequest, fmt.Sprintf("provisioningStatus: %q is not enabled or disabled", string(*ps)))
}

func checkAllocation(p *dps.AllocationPolicy, custom *dps.CustomAllocationDefinition) *apiError {
	if p == nil {
		return nil
	}
	switch strings.ToLower(string(*p)) {
	case "hashed":
		*p = dps.AllocationPolicyHashed
	case "geolatency":
		*p = dps.AllocationPolicyGeoLatency
	case "static":
		*p = dps.AllocationPolicyStatic
	case "custom":
		*p = dps.AllocationPolicyCustom
		if custom == nil || custom.WebhookURL == "" {
			return newErr(CodeBadRequest, "customAllocationDefinition.webhookUrl: required with allocationPolicy custom")
		}
	default:
		return newErr(CodeBadRequest, fmt.Sprintf("allocationPolicy: %q is not hashed, geoLatency, static or custom", string(*p)))
	}
	return nil
}

// prepareEnrollment checks an incoming enrollment and returns the record to store (server
// fields empty) and the etag the client sent in the body. pathID is the id of the URL, or
// "" in bulk calls.
func prepareEnrollment(in *enrollmentIn, pathID string) (*record[dps.IndividualEnrollment], *apiError) {
	e, aerr := in.model()
	if aerr != nil {
		return nil, aerr
	}
	if pathID != "" {
		if e.RegistrationID == "" {
			e.RegistrationID = pathID
		} else if keyOf(e.RegistrationID) != keyOf(pathID) {
			return nil, newErr(CodeBadRequest, "registrationId: the body names another registration id than the path")
		}
	}
	if !validID(e.RegistrationID) {
		return nil, invalidID("registrationId", e.RegistrationID)
	}
	if len(e.DeviceID) > 128 {
		return nil, newErr(CodeBadRequest, "deviceId: longer than 128 characters")
	}
	ps, null, aerr := checkProvisioningStatus(e.ProvisioningStatus)
	if aerr != nil {
		return nil, aerr
	}
	e.ProvisioningStatus = ps
	if aerr := checkAllocation(e.AllocationPolicy, e.CustomAllocationDefinition); aerr != nil {
		return nil, aerr
	}
	att, aerr := normalizeAttestation(e.Attestation, false)
	if aerr != nil {
		return nil, aerr
	}
	e.Attestation = att
	e.RegistrationState, e.ETag, e.CreatedDateTimeUTC, e.LastUpdatedDateTimeUTC = nil, "", nil, nil
	return &record[dps.IndividualEnrollment]{V: e, ProvNull: null}, nil
}

// prepareGroup is prepareEnrollment for groups.
func prepareGroup(in *groupIn, pathID string) (*record[dps.EnrollmentGroup], *apiError) {
	g, aerr := in.model()
	if aerr != nil {
		return nil, aerr
	}
	if pathID != "" {
		if g.EnrollmentGroupID == "" {
			g.EnrollmentGroupID = pathID
		} else if keyOf(g.EnrollmentGroupID) != keyOf(pathID) {
			return nil, newErr(CodeBadRequest, "enrollmentGroupId: the body names another group id than the path")
		}
	}
	if !validID(g.EnrollmentGroupID) {
		return nil, invalidID("enrollmentGroupId", g.EnrollmentGroupID)
	}
	ps, null, aerr := checkProvisioningStatus(g.ProvisioningStatus)
	if aerr != nil {
		return nil, aerr
	}
	g.ProvisioningStatus = ps
	if aerr := checkAllocation(g.AllocationPolicy, g.CustomAllocationDefinition); aerr != nil {
		return nil, aerr
	}
	att, aerr := normalizeAttestation(g.Attestation, true)
	if aerr != nil {
		return nil, aerr
	}
	g.Attestation = att
	g.ETag, g.CreatedDateTimeUTC, g.LastUpdatedDateTimeUTC = "", nil, nil
	return &record[dps.EnrollmentGroup]{V: g, ProvNull: null}, nil
}

func invalidID(field, id string) *apiError {
	if id == "" {
		return newErr(CodeInvalidID, field+": required")
	}
	if len(id) > 128 {
		return newErr(CodeInvalidID, field+": longer than 128 characters")
	}
	return newErr(CodeInvalidID, fmt.Sprintf("%s: %q may hold only alphanumerics and - . _ : and must end with an alphanumeric or -", field, id))
}

// normalizeAttestation checks an attestation and returns a fresh copy holding only the part
// its type names: symmetric keys checked or generated, the TPM endorsement key required,
// X.509 certificates parsed and their info computed (the certificate is kept for device
// authentication and never echoed).
func normalizeAttestation(a *dps.AttestationMechanism, group bool) (*dps.AttestationMechanism, *apiError) {
	if a == nil {
		return nil, newErr(CodeInvalidAttestation, "attestation: required")
	}
	switch strings.ToLower(string(a.Type)) {
	case "symmetrickey":
		sk := dps.SymmetricKeyAttestation{}
		if a.SymmetricKey != nil {
			sk = *a.SymmetricKey
		}
		for _, k := range []struct {
			name string
			v    *string
		}{{"primaryKey", &sk.PrimaryKey}, {"secondaryKey", &sk.SecondaryKey}} {
			if *k.v == "" {
				*k.v = newKey()
				continue
			}
			b, err := base64.StdEncoding.DecodeString(*k.v)
			if err != nil || len(b) < 16 || len(b) > 64 {
				return nil, newErr(CodeInvalidAttestation, "attestation.symmetricKey."+k.name+": must be base64 of 16 to 64 bytes")
			}
		}
		return &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey, SymmetricKey: &sk}, nil
	case "tpm":
		if group {
			return nil, newErr(CodeInvalidAttestation, "attestation.type: enrollment groups do not support tpm")
		}
		if a.TPM == nil || a.TPM.EndorsementKey == "" {
			return nil, newErr(CodeInvalidAttestation, "attestation.tpm.endorsementKey: required")
		}
		if _, err := base64.StdEncoding.DecodeString(a.TPM.EndorsementKey); err != nil {
			return nil, newErr(CodeInvalidAttestation, "attestation.tpm.endorsementKey: not base64")
		}
		t := *a.TPM
		return &dps.AttestationMechanism{Type: dps.AttestationTypeTPM, TPM: &t}, nil
	case "x509":
		if a.X509 == nil {
			return nil, newErr(CodeInvalidAttestation, "attestation.x509: required")
		}
		x := dps.X509Attestation{}
		var err *apiError
		certsField := "clientCertificates"
		src := a.X509.ClientCertificates
		if group {
			certsField, src = "signingCertificates", a.X509.SigningCertificates
		}
		switch {
		case src != nil:
			var c *dps.X509Certificates
			if c, err = normalizeCerts("attestation.x509."+certsField, src); err != nil {
				return nil, err
			}
			if group {
				x.SigningCertificates = c
			} else {
				x.ClientCertificates = c
			}
		case a.X509.CAReferences != nil && a.X509.CAReferences.Primary != "":
			r := *a.X509.CAReferences
			x.CAReferences = &r
		default:
			return nil, newErr(CodeInvalidAttestation, "attestation.x509."+certsField+".primary: required")
		}
		return &dps.AttestationMechanism{Type: dps.AttestationTypeX509, X509: &x}, nil
	case "":
		return nil, newErr(CodeInvalidAttestation, "attestation.type: required")
	}
	return nil, newErr(CodeInvalidAttestation, fmt.Sprintf("attestation.type: %q is not tpm, x509 or symmetricKey", string(a.Type)))
}

func normalizeCerts(field string, in *dps.X509Certificates) (*dps.X509Certificates, *apiError) {
	out := &dps.X509Certificates{}
	if in.Primary == nil || in.Primary.Certificate == "" {
		return nil, newErr(CodeInvalidAttestation, field+".primary.certificate: required")
	}
	for _, c := range []struct {
		name string
		in   *dps.X509CertificateWithInfo
		out  **dps.X509CertificateWithInfo
	}{{"primary", in.Primary, &out.Primary}, {"secondary", in.Secondary, &out.Secondary}} {
		if c.in == nil || c.in.Certificate == "" {
			continue
		}
		cert, err := parseCert(c.in.Certificate)
		if err != nil {
			return nil, newErr(CodeInvalidAttestation, field+"."+c.name+".certificate: "+err.Error())
		}
		*c.out = &dps.X509CertificateWithInfo{Certificate: c.in.Certificate, Info: certInfo(cert)}
	}
	return out, nil
}

// parseCert reads a certificate given as PEM or as base64 DER.
func parseCert(s string) (*x509.Certificate, error) {
	var der []byte
	if strings.Contains(s, "-----BEGIN") {
		blk, _ := pem.Decode([]byte(s))
		if blk == nil {
			return nil, errors.New("not a PEM certificate")
		}
		der = blk.Bytes
	} else {
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
		if err != nil {
			return nil, errors.New("neither PEM nor base64 DER")
		}
		der = b
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, errors.New("not a valid X.509 certificate")
	}
	return c, nil
}

// certInfo computes what the service reports about a certificate: names the way .NET writes
// them ("CN=device, O=Org"), upper-case hex thumbprints and serial number, validity in
// whole seconds, version 3.
func certInfo(c *x509.Certificate) *dps.X509CertificateInfo {
	s1 := sha1.Sum(c.Raw)
	s256 := sha256.Sum256(c.Raw)
	nb, na := c.NotBefore.UTC(), c.NotAfter.UTC()
	serial := c.SerialNumber.Bytes()
	if len(serial) == 0 || serial[0]&0x80 != 0 {
		serial = append([]byte{0}, serial...) // DER keeps a leading zero for positive numbers
	}
	return &dps.X509CertificateInfo{
		SubjectName:      dnString(c.Subject),
		SHA1Thumbprint:   strings.ToUpper(hex.EncodeToString(s1[:])),
		SHA256Thumbprint: strings.ToUpper(hex.EncodeToString(s256[:])),
		IssuerName:       dnString(c.Issuer),
		NotBeforeUTC:     &nb,
		NotAfterUTC:      &na,
		SerialNumber:     strings.ToUpper(hex.EncodeToString(serial)),
		Version:          c.Version,
	}
}

// dnString writes a distinguished name most specific first with ", " between parts, as
// .NET's X500DistinguishedName.Name does ("CN=leaf, O=Org, C=US").
func dnString(n pkix.Name) string {
	seq := n.ToRDNSequence()
	var parts []string
	for i := len(seq) - 1; i >= 0; i-- {
		for _, atv := range seq[i] {
			v := fmt.Sprint(atv.Value)
			if strings.ContainsAny(v, ",+=\"\n<>#;") {
				v = `"` + strings.ReplaceAll(v, `"`, `""`) + `"`
			}
			parts = append(parts, attrName(atv.Type)+"="+v)
		}
	}
	return strings.Join(parts, ", ")
}

func attrName(oid asn1.ObjectIdentifier) string {
	names := map[string]string{
		"2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "S", "2.5.4.9": "STREET",
		"2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.5": "SERIALNUMBER", "1.2.840.113549.1.9.1": "E",
		"0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID",
	}
	if s, ok := names[oid.String()]; ok {
		return s
	}
	return "OID." + oid.String()
}

// newKey returns a fresh 64-byte symmetric key in base64 (88 characters), as the service
// generates when an enrollment names no keys.
func newKey() string {
	b := make([]byte, 64)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// attView returns a copy of a stored attestation for a response: certificates never
// echoed, symmetric keys only when keys is set.
func attView(a *dps.AttestationMechanism, keys bool) *dps.AttestationMechanism {
	if a == nil {
		return nil
	}
	c := *a
	if !keys {
		c.SymmetricKey = nil
	}
	if a.X509 != nil {
		x := *a.X509
		x.ClientCertificates = infoOnly(x.ClientCertificates)
		x.SigningCertificates = infoOnly(x.SigningCertificates)
		c.X509 = &x
	}
	return &c
}

func infoOnly(c *dps.X509Certificates) *dps.X509Certificates {
	if c == nil {
		return nil
	}
	out := &dps.X509Certificates{}
	if c.Primary != nil {
		out.Primary = &dps.X509CertificateWithInfo{Info: c.Primary.Info}
	}
	if c.Secondary != nil {
		out.Secondary = &dps.X509CertificateWithInfo{Info: c.Secondary.Info}
	}
	return out
}

// provView is a stored provisioningStatus as a response shows it: sent as null, it is
// echoed as null.
func provView(ps *dps.ProvisioningStatus, null bool) *dps.ProvisioningStatus {
	if null {
		return azcore.NullValue[*dps.ProvisioningStatus]()
	}
	return ps
}

// enrollmentView is a stored enrollment as a response shows it.
func enrollmentView(r *record[dps.IndividualEnrollment], keys bool, state *dps.DeviceRegistrationState) *dps.IndividualEnrollment {
	v := r.V
	v.ProvisioningStatus = provView(r.V.ProvisioningStatus, r.ProvNull)
	v.Attestation = attView(r.V.Attestation, keys)
	v.RegistrationState = state
	return &v
}

// groupView is a stored group as a response shows it.
func groupView(r *record[dps.EnrollmentGroup], keys bool) *dps.EnrollmentGroup {
	v := r.V
	v.ProvisioningStatus = provView(r.V.ProvisioningStatus, r.ProvNull)
	v.Attestation = attView(r.V.Attestation, keys)
	return &v
}
