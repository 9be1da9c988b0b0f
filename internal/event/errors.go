package event

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"

	"github.com/dpsync/dpsync/internal/dps"
)

// InvalidError says why an event was rejected. Check for it with errors.As.
type InvalidError struct {
	// Field is the dotted path of the offending field ("data.enrollment.registrationId",
	// array items as "iotHubs[2]"), or "" when the event as a whole is at fault (size,
	// JSON syntax).
	Field string
	// Reason says what is wrong, in words. It never contains a key or a certificate.
	Reason string
}

// Error returns "field: reason", or the reason alone when Field is empty.
func (e *InvalidError) Error() string {
	if e.Field == "" {
		return e.Reason
	}
	return e.Field + ": " + e.Reason
}

// explain turns the library's error tree into one InvalidError: the leaf failure with the
// smallest field path (ties broken by message), worded by the schema's x-messages when it has
// them.
func (d *Decoder) explain(ve *jsonschema.ValidationError) *InvalidError {
	var leaves []*InvalidError
	var walk func(v *jsonschema.ValidationError)
	walk = func(v *jsonschema.ValidationError) {
		if _, ok := v.ErrorKind.(*kind.PropertyNames); ok || len(v.Causes) == 0 {
			leaves = append(leaves, d.leaf(v))
			return
		}
		for _, c := range v.Causes {
			walk(c)
		}
	}
	walk(ve)
	slices.SortFunc(leaves, func(a, b *InvalidError) int {
		if c := strings.Compare(a.Field, b.Field); c != 0 {
			return c
		}
		return strings.Compare(a.Reason, b.Reason)
	})
	return leaves[0]
}

// leaf words one failing keyword.
func (d *Decoder) leaf(v *jsonschema.ValidationError) *InvalidError {
	field := fieldPath(v.InstanceLocation)
	msgs := d.messages(v.SchemaURL)
	keyword := ""
	if kp := v.ErrorKind.KeywordPath(); len(kp) > 0 {
		keyword = kp[0]
	}
	msg := func(key, fallback string) string {
		if m, ok := msgs[key].(string); ok {
			return m
		}
		if m, ok := msgs[keyword].(string); ok {
			return m
		}
		return fallback
	}
	switch k := v.ErrorKind.(type) {
	case *kind.Required:
		missing := k.Missing[0]
		return &InvalidError{Field: join(field, missing), Reason: msg("required:"+missing, "is required")}
	case *kind.AdditionalProperties:
		props := slices.Sorted(slices.Values(k.Properties))
		p := props[0]
		return &InvalidError{Field: join(field, p), Reason: msg("additionalProperties:"+p, "is not a known field")}
	case *kind.PropertyNames:
		return &InvalidError{Field: join(field, k.Property), Reason: msg("pattern", "is not an allowed name")}
	case *kind.Type:
		if field == "" {
			return &InvalidError{Reason: fmt.Sprintf("the event must be a JSON object, not %s", article(k.Got))}
		}
		return &InvalidError{Field: field, Reason: fmt.Sprintf("must be %s, not %s", article(strings.Join(k.Want, " or ")), article(k.Got))}
	case *kind.Enum:
		want := make([]string, len(k.Want))
		for i, w := range k.Want {
			want[i] = fmt.Sprint(w)
		}
		return &InvalidError{Field: field, Reason: msg("", "must be one of "+strings.Join(want, ", ")) + gotValue(k.Got)}
	case *kind.Const:
		return &InvalidError{Field: field, Reason: msg("", fmt.Sprintf("must be %v", k.Want)) + gotValue(k.Got)}
	case *kind.MinLength:
		if k.Want == 1 {
			return &InvalidError{Field: field, Reason: msg("", "must not be empty")}
		}
		return &InvalidError{Field: field, Reason: msg("", fmt.Sprintf("must be at least %d characters long", k.Want))}
	case *kind.MaxLength:
		return &InvalidError{Field: field, Reason: fmt.Sprintf("is %d characters long; the limit is %d", k.Got, k.Want)}
	case *kind.Pattern:
		return &InvalidError{Field: field, Reason: msg("", "has an invalid format")}
	case *kind.Format:
		return &InvalidError{Field: field, Reason: msg("", "is not a valid "+k.Want)}
	case *kind.FalseSchema:
		return &InvalidError{Field: field, Reason: "is not allowed"}
	}
	return &InvalidError{Field: field, Reason: v.ErrorKind.LocalizedString(nil)}
}

// messages returns the x-messages of the schema at schemaURL (the schema whose keyword failed).
func (d *Decoder) messages(schemaURL string) map[string]any {
	_, frag, ok := strings.Cut(schemaURL, "#")
	if !ok {
		return nil
	}
	node := d.doc
	for _, t := range strings.Split(strings.TrimPrefix(frag, "/"), "/") {
		if t == "" {
			continue
		}
		t, _ = url.PathUnescape(t)
		t = strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
		switch n := node.(type) {
		case map[string]any:
			node = n[t]
		case []any:
			i, err := strconv.Atoi(t)
			if err != nil || i < 0 || i >= len(n) {
				return nil
			}
			node = n[i]
		default:
			return nil
		}
	}
	obj, _ := node.(map[string]any)
	msgs, _ := obj["x-messages"].(map[string]any)
	return msgs
}

func fieldPath(loc []string) string {
	var b strings.Builder
	for _, t := range loc {
		if _, err := strconv.Atoi(t); err == nil && b.Len() > 0 {
			b.WriteString("[" + t + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(t)
	}
	return b.String()
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func article(s string) string {
	switch s {
	case "object", "array", "integer":
		return "an " + s
	case "null":
		return "null"
	}
	return "a " + s
}

// gotValue quotes the wrong value of an enum or const field when it looks like the names
// those fields take (operation, type…); anything else — long, or with characters names do not
// have — is not shown: it may be a key pasted into the wrong field.
func gotValue(v any) string {
	s, ok := v.(string)
	if !ok {
		return fmt.Sprintf(", not %v", v)
	}
	// The shortest key DPS accepts is 16 bytes, 24 characters of base64, and base64 has no
	// '.': a value is shown when it is short, or a dotted name (a CloudEvents type).
	nameLike := strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_.:/-", r))
	}) < 0
	if !nameLike || len(s) > 60 || len(s) > 20 && !strings.Contains(s, ".") {
		return fmt.Sprintf(", not the value given (%d characters, not shown: it may be a secret)", len(s))
	}
	return fmt.Sprintf(", not %q", s)
}

// check applies the rules the schema cannot express.
func check(e *Event) error {
	var att *dps.AttestationMechanism
	var base string
	switch e.Kind {
	case KindEnrollment:
		att, base = e.Enrollment.Attestation, "data.enrollment.attestation"
	case KindGroup:
		att, base = e.Group.Attestation, "data.enrollmentGroup.attestation"
	}
	if att == nil {
		return nil
	}
	present := map[dps.AttestationType]bool{
		dps.AttestationTypeTPM:          att.TPM != nil,
		dps.AttestationTypeX509:         att.X509 != nil,
		dps.AttestationTypeSymmetricKey: att.SymmetricKey != nil,
	}
	for _, t := range []dps.AttestationType{dps.AttestationTypeTPM, dps.AttestationTypeX509, dps.AttestationTypeSymmetricKey} {
		if present[t] && t != att.Type {
			return &InvalidError{Field: base + "." + string(t), Reason: fmt.Sprintf("does not match attestation.type %q", att.Type)}
		}
	}
	if e.Kind == KindGroup && att.Type == dps.AttestationTypeTPM {
		return &InvalidError{Field: base + ".type", Reason: "tpm is not allowed for an enrollment group (use symmetricKey or x509)"}
	}
	if t := att.TPM; t != nil {
		if _, err := base64.StdEncoding.DecodeString(t.EndorsementKey); err != nil {
			return &InvalidError{Field: base + ".tpm.endorsementKey", Reason: "is not valid base64"}
		}
		if t.StorageRootKey != "" {
			if _, err := base64.StdEncoding.DecodeString(t.StorageRootKey); err != nil {
				return &InvalidError{Field: base + ".tpm.storageRootKey", Reason: "is not valid base64"}
			}
		}
	}
	if s := att.SymmetricKey; s != nil {
		if err := checkKey(base+".symmetricKey.primaryKey", s.PrimaryKey); err != nil {
			return err
		}
		if err := checkKey(base+".symmetricKey.secondaryKey", s.SecondaryKey); err != nil {
			return err
		}
	}
	if x := att.X509; x != nil {
		certs, certsName, other := x.ClientCertificates, "clientCertificates", "signingCertificates"
		if e.Kind == KindGroup {
			certs, certsName, other = x.SigningCertificates, "signingCertificates", "clientCertificates"
		}
		otherSet := x.SigningCertificates
		if e.Kind == KindGroup {
			otherSet = x.ClientCertificates
		}
		if otherSet != nil {
			what := "an individual enrollment"
			if e.Kind == KindGroup {
				what = "an enrollment group"
			}
			return &InvalidError{Field: base + ".x509." + other, Reason: fmt.Sprintf("is not used by %s (use %s or caReferences)", what, certsName)}
		}
		if certs == nil && x.CAReferences == nil {
			return &InvalidError{Field: base + ".x509", Reason: fmt.Sprintf("needs %s or caReferences", certsName)}
		}
		if certs != nil {
			if certs.Primary == nil || certs.Primary.Certificate == "" {
				return &InvalidError{Field: base + ".x509." + certsName + ".primary.certificate", Reason: "is required"}
			}
			// primary before secondary: the error names the smallest field path, so that
			// an event always gets the same reason.
			for _, nc := range [...]struct {
				name string
				c    *dps.X509CertificateWithInfo
			}{{"primary", certs.Primary}, {"secondary", certs.Secondary}} {
				name, c := nc.name, nc.c
				if c == nil || c.Certificate == "" {
					continue
				}
				if err := checkCertificate(c.Certificate); err != nil {
					return &InvalidError{Field: base + ".x509." + certsName + "." + name + ".certificate", Reason: err.Error()}
				}
			}
		}
		if r := x.CAReferences; r != nil && certs == nil && r.Primary == "" {
			return &InvalidError{Field: base + ".x509.caReferences.primary", Reason: "is required"}
		}
	}
	return nil
}

// checkKey checks a symmetric key without ever quoting it.
func checkKey(field, key string) error {
	if key == "" {
		return nil // DPS generates the key
	}
	raw, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		return &InvalidError{Field: field, Reason: "is not valid base64"}
	}
	if n := len(raw); n < 16 || n > 64 {
		return &InvalidError{Field: field, Reason: fmt.Sprintf("decodes to %d bytes; DPS needs 16 to 64", n)}
	}
	return nil
}

// checkCertificate accepts one PEM CERTIFICATE block or base64 DER, as DPS does.
func checkCertificate(s string) error {
	der := []byte(nil)
	if block, _ := pem.Decode([]byte(s)); block != nil {
		if block.Type != "CERTIFICATE" {
			return fmt.Errorf("is a PEM %q block, not a CERTIFICATE", block.Type)
		}
		der = block.Bytes
	} else {
		raw, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(s), ""))
		if err != nil {
			return fmt.Errorf("is neither a PEM certificate nor base64 DER")
		}
		der = raw
	}
	if _, err := x509.ParseCertificate(der); err != nil {
		return fmt.Errorf("is not a parseable X.509 certificate (%v)", err)
	}
	return nil
}
