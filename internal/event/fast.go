package event

import (
	"encoding/json"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/dpsync/dpsync/internal/dps"
)

// This file holds the fast path of Decode: one pass over the bytes into the typed Event,
// checked by hand-written code that accepts a subset of what the slow path (the JSON Schema,
// build and check) accepts. Its one rule is
//
//	decodeFast(b) accepts  ⇒  the slow path accepts b and builds an equal Event.
//
// The fast path gives no reasons: whenever it meets anything it does not fully model, or
// anything wrong, it gives up and Decode runs the slow path, which finds and words the error
// (or accepts the unusual event). It is therefore conservative wherever exactness would cost
// code: it gives up on duplicate object keys, escaped or non-UTF-8 object keys, strings that
// are not valid UTF-8 or hold a lone surrogate escape, nesting deeper than maxFastDepth, the
// read-only objects registrationState and x509 certificate info (decoded by encoding/json
// into structs with typed fields), and URIs whose host contains a colon (IPv6 literals,
// which the schema library checks with its own code).
//
// Where it must agree with the schema library exactly it uses the same primitives: url.Parse
// for the uri and uri-reference formats, time.Parse for date-time (after a stricter syntax
// check than the library's), and rune counts for lengths.
//
// Any change to schemas/event.v1.schema.json must be mirrored here (TestFastPathSchemaUnchanged
// fails until someone has); TestFastPathAgrees, TestFastPathCases and FuzzFastPathAgrees
// compare the two paths.

// maxFastDepth is the deepest nesting of free-form JSON values (twin properties, extension
// attributes) the fast path scans; deeper values go to the slow path (encoding/json allows
// 10000 levels).
const maxFastDepth = 200

// decodeFast decodes and validates b in one pass. It returns false when b is invalid or uses
// something the fast path does not model; the caller then decodes b with the slow path. The
// caller checks the size limit.
func decodeFast(b []byte) (*Event, bool) {
	s := scanner{b: b}
	var f fastEvent
	if !s.envelope(&f) || !s.end() {
		return nil, false
	}
	e, ok := f.event()
	if !ok || check(e) != nil {
		return nil, false
	}
	e.Raw = b
	return e, true
}

// fastEvent is what the fast path has read of an event, before the cross-field rules.
type fastEvent struct {
	e    Event
	seen uint16 // envelope attributes present, by bit (envSpecVersion, …)
	op   dps.BulkMode
	data uint8 // data members present (dataOperation, dataEnrollment, dataGroup)
	en   *dps.IndividualEnrollment
	g    *dps.EnrollmentGroup
}

// Bits of fastEvent.seen.
const (
	envSpecVersion uint16 = 1 << iota
	envID
	envSource
	envType
	envTime
	envSubject
	envDataContentType
	envDataSchema
	envData
)

// Bits of fastEvent.data.
const (
	dataOperation uint8 = 1 << iota
	dataEnrollment
	dataGroup
)

// event applies the rules that span fields (required attributes, data matching type,
// attestation and etag per operation) and returns the Event.
func (f *fastEvent) event() (*Event, bool) {
	const required = envSpecVersion | envID | envSource | envType | envData
	if f.seen&required != required || f.data&dataOperation == 0 {
		return nil, false
	}
	e := &f.e
	e.Operation = f.op
	var att *dps.AttestationMechanism
	var etag string
	switch e.Type {
	case TypeEnrollment:
		if f.data != dataOperation|dataEnrollment {
			return nil, false
		}
		e.Kind, e.Enrollment = KindEnrollment, f.en
		att, etag = f.en.Attestation, f.en.ETag
	case TypeGroup:
		if f.data != dataOperation|dataGroup {
			return nil, false
		}
		e.Kind, e.Group = KindGroup, f.g
		att, etag = f.g.Attestation, f.g.ETag
	default:
		return nil, false
	}
	if f.op != dps.BulkModeDelete && att == nil {
		return nil, false
	}
	if f.op == dps.BulkModeUpdateIfMatchETag && etag == "" {
		return nil, false // the schema's etag has minLength 1: "" means absent
	}
	return e, true
}

// envelope reads the top-level object.
func (s *scanner) envelope(f *fastEvent) bool {
	return s.object(func(k []byte) bool {
		var bit uint16
		ok := false
		e := &f.e
		switch string(k) {
		case "specversion":
			bit = envSpecVersion
			e.SpecVersion, ok = s.enum("1.0")
		case "id":
			bit = envID
			e.ID, ok = s.str()
			ok = ok && e.ID != "" && utf8.RuneCountInString(e.ID) <= 256
		case "source":
			bit = envSource
			e.Source, ok = s.str()
			ok = ok && e.Source != "" && isURIReference(e.Source)
		case "type":
			bit = envType
			e.Type, ok = s.enum(TypeEnrollment, TypeGroup)
		case "time":
			bit = envTime
			e.Time, ok = s.dateTime()
		case "subject":
			bit = envSubject
			e.Subject, ok = s.str()
			ok = ok && e.Subject != ""
		case "datacontenttype":
			bit = envDataContentType
			e.DataContentType, ok = s.enum("application/json")
		case "dataschema":
			bit = envDataSchema
			e.DataSchema, ok = s.str()
			ok = ok && isURI(e.DataSchema)
		case "data":
			bit = envData
			ok = s.data(f)
		default:
			return s.extension(e, k)
		}
		if f.seen&bit != 0 {
			return false
		}
		f.seen |= bit
		return ok
	})
}

// extension reads the value of extension attribute k, kept as raw JSON.
func (s *scanner) extension(e *Event, k []byte) bool {
	if len(k) == 0 {
		return false
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false // the schema's propertyNames ^[a-z0-9]+$
		}
	}
	raw, ok := s.raw()
	if !ok {
		return false
	}
	if e.Extensions == nil {
		e.Extensions = make(map[string]json.RawMessage, 2)
	} else if _, dup := e.Extensions[string(k)]; dup {
		return false
	}
	e.Extensions[string(k)] = raw
	return true
}

// data reads the data object: operation and the enrollment or group, whichever is present
// (the type, possibly not read yet, decides later which one must be).
func (s *scanner) data(f *fastEvent) bool {
	return s.object(func(k []byte) bool {
		var bit uint8
		ok := false
		switch string(k) {
		case "operation":
			bit = dataOperation
			var op string
			op, ok = s.enum("create", "update", "updateIfMatchETag", "updateIfMatchEtag", "delete")
			if ok {
				f.op, _ = dps.ParseBulkMode(op)
			}
		case "enrollment":
			bit = dataEnrollment
			f.en = new(dps.IndividualEnrollment)
			ok = s.enrollment(f.en, false)
		case "enrollmentGroup":
			bit = dataGroup
			var en dps.IndividualEnrollment
			if ok = s.enrollment(&en, true); ok {
				f.g = &dps.EnrollmentGroup{
					EnrollmentGroupID:          en.RegistrationID,
					Attestation:                en.Attestation,
					Capabilities:               en.Capabilities,
					IotHubHostName:             en.IotHubHostName,
					InitialTwin:                en.InitialTwin,
					ETag:                       en.ETag,
					ProvisioningStatus:         en.ProvisioningStatus,
					ReprovisionPolicy:          en.ReprovisionPolicy,
					CreatedDateTimeUTC:         en.CreatedDateTimeUTC,
					LastUpdatedDateTimeUTC:     en.LastUpdatedDateTimeUTC,
					AllocationPolicy:           en.AllocationPolicy,
					IotHubs:                    en.IotHubs,
					CustomAllocationDefinition: en.CustomAllocationDefinition,
				}
			}
		default:
			return false
		}
		if f.data&bit != 0 {
			return false
		}
		f.data |= bit
		return ok
	})
}

// enrollment reads an IndividualEnrollment or, when group is set, an EnrollmentGroup into
// en (whose fields are a superset of a group's; the group id goes to RegistrationID).
func (s *scanner) enrollment(en *dps.IndividualEnrollment, group bool) bool {
	var seen uint32
	ok := s.object(func(k []byte) bool {
		var bit uint32
		ok := false
		switch string(k) {
		case "registrationId":
			if group {
				return false
			}
			bit = 1 << 0
			en.RegistrationID, ok = s.str()
			ok = ok && isEnrollmentID(en.RegistrationID)
		case "enrollmentGroupId":
			if !group {
				return false
			}
			bit = 1 << 0
			en.RegistrationID, ok = s.str()
			ok = ok && isEnrollmentID(en.RegistrationID)
		case "deviceId":
			if group {
				return false
			}
			bit = 1 << 1
			en.DeviceID, ok = s.str()
			ok = ok && isDeviceID(en.DeviceID)
		case "optionalDeviceInformation":
			if group {
				return false
			}
			bit = 1 << 2
			en.OptionalDeviceInformation, ok = s.twin()
		case "attestation":
			bit = 1 << 3
			en.Attestation, ok = s.attestation()
		case "capabilities":
			bit = 1 << 4
			en.Capabilities, ok = s.capabilities()
		case "iotHubHostName":
			bit = 1 << 5
			en.IotHubHostName, ok = s.str()
		case "initialTwin":
			bit = 1 << 6
			en.InitialTwin, ok = s.initialTwin()
		case "etag":
			bit = 1 << 7
			en.ETag, ok = s.str()
			ok = ok && en.ETag != ""
		case "provisioningStatus":
			bit = 1 << 8
			var v string
			if v, ok = s.enum("enabled", "disabled"); ok {
				p := dps.ProvisioningStatus(v)
				en.ProvisioningStatus = &p
			}
		case "reprovisionPolicy":
			bit = 1 << 9
			en.ReprovisionPolicy, ok = s.reprovisionPolicy()
		case "createdDateTimeUtc":
			bit = 1 << 10
			en.CreatedDateTimeUTC, ok = s.dpsDateTime()
		case "lastUpdatedDateTimeUtc":
			bit = 1 << 11
			en.LastUpdatedDateTimeUTC, ok = s.dpsDateTime()
		case "allocationPolicy":
			bit = 1 << 12
			var v string
			if v, ok = s.enum("hashed", "geoLatency", "static", "custom"); ok {
				p := dps.AllocationPolicy(v)
				en.AllocationPolicy = &p
			}
		case "iotHubs":
			bit = 1 << 13
			en.IotHubs, ok = s.nonEmptyStrings()
		case "customAllocationDefinition":
			bit = 1 << 14
			en.CustomAllocationDefinition, ok = s.customAllocation()
		default:
			// Unknown fields are errors; registrationState is valid but decoded into a
			// struct by encoding/json, which the fast path does not mirror.
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		return ok
	})
	return ok && seen&1 != 0
}

func (s *scanner) attestation() (*dps.AttestationMechanism, bool) {
	a := new(dps.AttestationMechanism)
	var seen uint8
	ok := s.object(func(k []byte) bool {
		var bit uint8
		ok := false
		switch string(k) {
		case "type":
			bit = 1 << 0
			var v string
			v, ok = s.enum("tpm", "x509", "symmetricKey")
			a.Type = dps.AttestationType(v)
		case "tpm":
			bit = 1 << 1
			a.TPM, ok = s.tpm()
		case "x509":
			bit = 1 << 2
			a.X509, ok = s.x509()
		case "symmetricKey":
			bit = 1 << 3
			a.SymmetricKey, ok = s.symmetricKey()
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		return ok
	})
	if !ok || seen&1 == 0 {
		return nil, false
	}
	switch {
	case a.Type == dps.AttestationTypeTPM && a.TPM == nil,
		a.Type == dps.AttestationTypeX509 && a.X509 == nil:
		return nil, false
	}
	return a, true
}

func (s *scanner) tpm() (*dps.TPMAttestation, bool) {
	t := new(dps.TPMAttestation)
	var seen uint8
	ok := s.object(func(k []byte) bool {
		var bit uint8
		ok := false
		switch string(k) {
		case "endorsementKey":
			bit = 1 << 0
			t.EndorsementKey, ok = s.str()
			ok = ok && t.EndorsementKey != ""
		case "storageRootKey":
			bit = 1 << 1
			t.StorageRootKey, ok = s.str()
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		return ok
	})
	return t, ok && seen&1 != 0
}

func (s *scanner) symmetricKey() (*dps.SymmetricKeyAttestation, bool) {
	k := new(dps.SymmetricKeyAttestation)
	ok := s.stringPair("primaryKey", &k.PrimaryKey, "secondaryKey", &k.SecondaryKey)
	return k, ok
}

func (s *scanner) x509() (*dps.X509Attestation, bool) {
	x := new(dps.X509Attestation)
	var seen uint8
	ok := s.object(func(k []byte) bool {
		var bit uint8
		ok := false
		switch string(k) {
		case "clientCertificates":
			bit = 1 << 0
			x.ClientCertificates, ok = s.x509Certificates()
		case "signingCertificates":
			bit = 1 << 1
			x.SigningCertificates, ok = s.x509Certificates()
		case "caReferences":
			bit = 1 << 2
			x.CAReferences = new(dps.X509CAReferences)
			ok = s.stringPair("primary", &x.CAReferences.Primary, "secondary", &x.CAReferences.Secondary)
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		return ok
	})
	return x, ok
}

func (s *scanner) x509Certificates() (*dps.X509Certificates, bool) {
	c := new(dps.X509Certificates)
	var seen uint8
	ok := s.object(func(k []byte) bool {
		var bit uint8
		var p **dps.X509CertificateWithInfo
		switch string(k) {
		case "primary":
			bit, p = 1<<0, &c.Primary
		case "secondary":
			bit, p = 1<<1, &c.Secondary
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		var ok bool
		*p, ok = s.x509Certificate()
		return ok
	})
	return c, ok
}

// x509Certificate reads {"certificate": …}; it gives up on "info" (read-only, decoded by
// encoding/json into a struct with typed fields).
func (s *scanner) x509Certificate() (*dps.X509CertificateWithInfo, bool) {
	c := new(dps.X509CertificateWithInfo)
	seen := false
	ok := s.object(func(k []byte) bool {
		if string(k) != "certificate" || seen {
			return false
		}
		seen = true
		var ok bool
		c.Certificate, ok = s.str()
		return ok && c.Certificate != ""
	})
	return c, ok
}

func (s *scanner) capabilities() (*dps.DeviceCapabilities, bool) {
	c := new(dps.DeviceCapabilities)
	seen := false
	ok := s.object(func(k []byte) bool {
		if string(k) != "iotEdge" || seen {
			return false
		}
		seen = true
		b, ok := s.boolean()
		c.IotEdge = &b
		return ok
	})
	return c, ok && seen
}

func (s *scanner) reprovisionPolicy() (*dps.ReprovisionPolicy, bool) {
	p := new(dps.ReprovisionPolicy)
	var seen uint8
	ok := s.object(func(k []byte) bool {
		var bit uint8
		var v **bool
		switch string(k) {
		case "updateHubAssignment":
			bit, v = 1<<0, &p.UpdateHubAssignment
		case "migrateDeviceData":
			bit, v = 1<<1, &p.MigrateDeviceData
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		b, ok := s.boolean()
		*v = &b
		return ok
	})
	return p, ok && seen == 3
}

func (s *scanner) customAllocation() (*dps.CustomAllocationDefinition, bool) {
	c := new(dps.CustomAllocationDefinition)
	var seen uint8
	ok := s.object(func(k []byte) bool {
		var bit uint8
		ok := false
		switch string(k) {
		case "webhookUrl":
			bit = 1 << 0
			c.WebhookURL, ok = s.str()
			ok = ok && isURI(c.WebhookURL)
		case "apiVersion":
			bit = 1 << 1
			c.APIVersion, ok = s.str()
			ok = ok && c.APIVersion != ""
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		return ok
	})
	return c, ok && seen == 3
}

func (s *scanner) initialTwin() (*dps.InitialTwin, bool) {
	t := new(dps.InitialTwin)
	var seen uint8
	ok := s.object(func(k []byte) bool {
		var bit uint8
		ok := false
		switch string(k) {
		case "tags":
			bit = 1 << 0
			t.Tags, ok = s.twin()
		case "properties":
			bit = 1 << 1
			t.Properties = new(dps.InitialTwinProperties)
			desired := false
			ok = s.object(func(k []byte) bool {
				if string(k) != "desired" || desired {
					return false
				}
				desired = true
				var ok bool
				t.Properties.Desired, ok = s.twin()
				return ok
			})
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		return ok
	})
	return t, ok
}

// twin reads a free-form object into a TwinCollection (non-nil even when empty, as
// encoding/json makes it).
func (s *scanner) twin() (dps.TwinCollection, bool) {
	var t dps.TwinCollection
	ok := s.object(func(k []byte) bool {
		if t == nil {
			t = make(dps.TwinCollection, 4)
		} else if _, dup := t[string(k)]; dup {
			return false
		}
		raw, ok := s.raw()
		t[string(k)] = raw
		return ok
	})
	if ok && t == nil {
		t = dps.TwinCollection{}
	}
	return t, ok
}

// stringPair reads an object whose only (optional) members are the strings named n1 and n2.
func (s *scanner) stringPair(n1 string, v1 *string, n2 string, v2 *string) bool {
	var seen uint8
	return s.object(func(k []byte) bool {
		var bit uint8
		var v *string
		switch string(k) {
		case n1:
			bit, v = 1<<0, v1
		case n2:
			bit, v = 1<<1, v2
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		var ok bool
		*v, ok = s.str()
		return ok
	})
}

// nonEmptyStrings reads an array of non-empty strings (non-nil even when empty).
func (s *scanner) nonEmptyStrings() ([]string, bool) {
	if !s.consume('[') {
		return nil, false
	}
	out := []string{}
	if s.consume(']') {
		return out, true
	}
	for {
		v, ok := s.str()
		if !ok || v == "" {
			return nil, false
		}
		out = append(out, v)
		if s.consume(',') {
			continue
		}
		return out, s.consume(']')
	}
}

// dateTime reads a string that both the schema's date-time format and
// time.Parse(time.RFC3339Nano) accept, and returns the time.Parse result.
func (s *scanner) dateTime() (time.Time, bool) {
	v, ok := s.token()
	if !ok || !isStrictDateTime(v) {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(v))
	return t, err == nil
}

// dpsDateTime reads a date-time into a dps.DateTime (as its UnmarshalJSON does).
func (s *scanner) dpsDateTime() (*dps.DateTime, bool) {
	t, ok := s.dateTime()
	if !ok {
		return nil, false
	}
	return &dps.DateTime{Time: t}, true
}

// isStrictDateTime reports whether v is "yyyy-mm-ddThh:mm:ss[.f…](Z|±hh:mm)" with hours,
// minutes and seconds (no leap second) and offset in range. Whatever passes this and
// time.Parse(time.RFC3339Nano), which checks the month and the day of the month, passes the
// schema library's date-time format too.
func isStrictDateTime(v []byte) bool {
	if len(v) < 20 || v[4] != '-' || v[7] != '-' || v[10] != 'T' || v[13] != ':' || v[16] != ':' {
		return false
	}
	for _, i := range [...]int{0, 1, 2, 3, 5, 6, 8, 9} {
		if !isDigit(v[i]) {
			return false
		}
	}
	h, ok1 := twoDigits(v[11:])
	m, ok2 := twoDigits(v[14:])
	sec, ok3 := twoDigits(v[17:])
	if !ok1 || !ok2 || !ok3 || h > 23 || m > 59 || sec > 59 {
		return false
	}
	rest := v[19:]
	if rest[0] == '.' {
		n := 1
		for n < len(rest) && isDigit(rest[n]) {
			n++
		}
		if n == 1 {
			return false
		}
		rest = rest[n:]
	}
	if len(rest) == 1 {
		return rest[0] == 'Z'
	}
	if len(rest) != 6 || rest[0] != '+' && rest[0] != '-' || rest[3] != ':' {
		return false
	}
	zh, ok1 := twoDigits(rest[1:])
	zm, ok2 := twoDigits(rest[4:])
	return ok1 && ok2 && zh <= 23 && zm <= 59
}

func twoDigits(b []byte) (int, bool) {
	if !isDigit(b[0]) || !isDigit(b[1]) {
		return 0, false
	}
	return int(b[0]-'0')*10 + int(b[1]-'0'), true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || isDigit(c) }

// isEnrollmentID mirrors the schema's $defs/id: 1–128 characters matching
// ^[A-Za-z0-9._:-]*[A-Za-z0-9-]$ (all ASCII, so bytes are characters).
func isEnrollmentID(v string) bool {
	if v == "" || len(v) > 128 {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; !isAlnum(c) && c != '.' && c != '_' && c != ':' && c != '-' {
			return false
		}
	}
	c := v[len(v)-1]
	return isAlnum(c) || c == '-'
}

// isDeviceID mirrors the schema's $defs/deviceId: 1–128 characters matching
// ^[A-Za-z0-9\-.%_*?!(),:=@$']+$.
func isDeviceID(v string) bool {
	if v == "" || len(v) > 128 {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; !isAlnum(c) && !strings.ContainsRune("-.%_*?!(),:=@$'", rune(c)) {
			return false
		}
	}
	return true
}

// isURI mirrors the schema library's "uri" format: url.Parse succeeds and the URL is
// absolute. Hosts with a colon (IPv6 literals, which the library checks itself) are left
// to the slow path.
func isURI(v string) bool {
	u, ok := parseURL(v)
	return ok && u.IsAbs()
}

// isURIReference mirrors the schema library's "uri-reference" format: no backslash and
// url.Parse succeeds.
func isURIReference(v string) bool {
	if strings.Contains(v, `\`) {
		return false
	}
	_, ok := parseURL(v)
	return ok
}

func parseURL(v string) (*url.URL, bool) {
	u, err := url.Parse(v)
	if err != nil || strings.Contains(u.Hostname(), ":") {
		return nil, false
	}
	return u, true
}

// scanner reads JSON from b. Its methods return false on anything they do not accept; they
// never say why (the slow path does).
type scanner struct {
	b []byte
	i int
}

// next skips whitespace and returns the next byte, or 0 at the end.
func (s *scanner) next() byte {
	for s.i < len(s.b) {
		switch c := s.b[s.i]; c {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return c
		}
	}
	return 0
}

// consume skips whitespace and c, if c is next.
func (s *scanner) consume(c byte) bool {
	if s.next() == c {
		s.i++
		return true
	}
	return false
}

// end reports whether only whitespace is left.
func (s *scanner) end() bool {
	s.next()
	return s.i == len(s.b)
}

// object reads an object, calling member with each key (escape-free, valid UTF-8) and the
// scanner before the value, which member must read.
func (s *scanner) object(member func(key []byte) bool) bool {
	if !s.consume('{') {
		return false
	}
	if s.consume('}') {
		return true
	}
	for {
		k, esc, nonASCII, ok := s.rawString()
		if !ok || esc || nonASCII && !utf8.Valid(k) || !s.consume(':') || !member(k) {
			return false
		}
		if s.consume(',') {
			continue
		}
		return s.consume('}')
	}
}

// rawString reads a string and returns the bytes between its quotes, whether they hold
// escapes and whether they hold non-ASCII bytes. It accepts exactly JSON's strings
// (encoding/json does not check UTF-8, nor does rawString).
func (s *scanner) rawString() (raw []byte, esc, nonASCII, ok bool) {
	if s.next() != '"' {
		return nil, false, false, false
	}
	s.i++
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		if c >= 0x20 && c < utf8.RuneSelf && c != '"' && c != '\\' {
			s.i++ // the common case first
			continue
		}
		switch {
		case c == '"':
			raw = s.b[start:s.i]
			s.i++
			return raw, esc, nonASCII, true
		case c == '\\':
			esc = true
			if s.i+1 >= len(s.b) {
				return nil, false, false, false
			}
			switch s.b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				if hex4(s.b[s.i+2:]) < 0 {
					return nil, false, false, false
				}
				s.i += 6
			default:
				return nil, false, false, false
			}
		case c < 0x20:
			return nil, false, false, false
		default:
			if c >= utf8.RuneSelf {
				nonASCII = true
			}
			s.i++
		}
	}
	return nil, false, false, false
}

// token reads a string and returns its value as bytes, as encoding/json decodes it. It gives
// up on invalid UTF-8 and lone surrogates (which encoding/json replaces by U+FFFD). The
// result may alias s.b.
func (s *scanner) token() ([]byte, bool) {
	raw, esc, nonASCII, ok := s.rawString()
	if !ok || nonASCII && !utf8.Valid(raw) {
		return nil, false
	}
	if !esc {
		return raw, true
	}
	return unescape(raw)
}

// str reads a string.
func (s *scanner) str() (string, bool) {
	v, ok := s.token()
	if !ok {
		return "", false
	}
	return string(v), true
}

// enum reads a string that must be one of values and returns that value (so that known
// names cost no allocation).
func (s *scanner) enum(values ...string) (string, bool) {
	v, ok := s.token()
	if !ok {
		return "", false
	}
	for _, w := range values {
		if string(v) == w {
			return w, true
		}
	}
	return "", false
}

func (s *scanner) boolean() (bool, bool) {
	switch s.next() {
	case 't':
		return true, s.literal("true")
	case 'f':
		return false, s.literal("false")
	}
	return false, false
}

func (s *scanner) literal(lit string) bool {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return false
	}
	s.i += len(lit)
	return true
}

// raw reads any JSON value and returns a copy of its bytes (as json.RawMessage keeps them).
func (s *scanner) raw() (json.RawMessage, bool) {
	s.next()
	start := s.i
	if !s.skip(0) {
		return nil, false
	}
	return append(json.RawMessage(nil), s.b[start:s.i]...), true
}

// skip reads any JSON value nested at most maxFastDepth deep.
func (s *scanner) skip(depth int) bool {
	if depth > maxFastDepth {
		return false
	}
	switch s.next() {
	case '{':
		s.i++
		if s.consume('}') {
			return true
		}
		for {
			if _, _, _, ok := s.rawString(); !ok || !s.consume(':') || !s.skip(depth+1) {
				return false
			}
			if s.consume(',') {
				continue
			}
			return s.consume('}')
		}
	case '[':
		s.i++
		if s.consume(']') {
			return true
		}
		for {
			if !s.skip(depth + 1) {
				return false
			}
			if s.consume(',') {
				continue
			}
			return s.consume(']')
		}
	case '"':
		_, _, _, ok := s.rawString()
		return ok
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	}
	return s.number()
}

// number reads a JSON number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() bool {
	b, i := s.b, s.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return false
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return false
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	s.i = i
	return true
}

// hex4 returns the value of the 4 hex digits "XXXX" that b starts with, or -1.
func hex4(b []byte) rune {
	if len(b) < 4 {
		return -1
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}

// unescape decodes the escapes of raw (the valid contents of a JSON string) as encoding/json
// does. It gives up on a lone surrogate.
func unescape(raw []byte) ([]byte, bool) {
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			out = append(out, c)
			i++
			continue
		}
		switch raw[i+1] {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r := hex4(raw[i+2:])
			i += 6
			if utf16.IsSurrogate(r) {
				if i+6 > len(raw) || raw[i] != '\\' || raw[i+1] != 'u' {
					return nil, false
				}
				r = utf16.DecodeRune(r, hex4(raw[i+2:]))
				if r == unicode.ReplacementChar {
					return nil, false
				}
				i += 6
			}
			out = utf8.AppendRune(out, r)
			continue
		default: // '"', '\\', '/'
			out = append(out, raw[i+1])
		}
		i += 2
	}
	return out, true
}
