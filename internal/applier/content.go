package applier

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/dpsync/dpsync/internal/dps"
)

// SameContent reports whether cur (read back from DPS) holds the content that want sends.
// Server-managed fields (etag, timestamps, registration state, computed X.509 info) and
// secrets DPS does not return on GET (symmetric keys, certificates) are not compared.
func SameContent(want, cur Item) bool {
	if want.Kind != cur.Kind {
		return false
	}
	a, err1 := json.Marshal(normalize(want))
	b, err2 := json.Marshal(normalize(cur))
	return err1 == nil && err2 == nil && bytes.Equal(a, b)
}

func normalize(it Item) any {
	if it.Kind == KindGroup {
		if it.Group == nil {
			return nil
		}
		g := *it.Group
		g.ETag, g.CreatedDateTimeUTC, g.LastUpdatedDateTimeUTC = "", nil, nil
		g.EnrollmentGroupID = strings.ToLower(g.EnrollmentGroupID)
		g.Attestation = normalizeAttestation(g.Attestation)
		return g
	}
	if it.Enrollment == nil {
		return nil
	}
	e := *it.Enrollment
	e.ETag, e.CreatedDateTimeUTC, e.LastUpdatedDateTimeUTC, e.RegistrationState = "", nil, nil, nil
	e.RegistrationID = strings.ToLower(e.RegistrationID)
	e.DeviceID = strings.ToLower(e.DeviceID)
	e.Attestation = normalizeAttestation(e.Attestation)
	if e.DeviceID == "" {
		// DPS defaults the device id to the registration id.
		e.DeviceID = e.RegistrationID
	}
	return e
}

func normalizeAttestation(a *dps.AttestationMechanism) *dps.AttestationMechanism {
	if a == nil {
		return nil
	}
	n := dps.AttestationMechanism{Type: a.Type}
	if a.TPM != nil {
		n.TPM = &dps.TPMAttestation{EndorsementKey: a.TPM.EndorsementKey}
	}
	if a.X509 != nil && a.X509.CAReferences != nil {
		n.X509 = &dps.X509Attestation{CAReferences: a.X509.CAReferences}
	}
	return &n
}
