package emulator

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dpsync/dpsync/internal/dps"
)

// operation is a device registration in progress: its outcome is decided when the device
// registers and reported once readyAt has passed.
type operation struct {
	regKey  string
	readyAt time.Time
	created time.Time
	result  dps.RegistrationOperationStatus
}

// opTable keeps recent operations in memory (they are not persisted: a device whose
// operation is lost after a restart registers again).
type opTable struct {
	mu sync.Mutex
	m  map[string]*operation
}

func newOpTable() *opTable { return &opTable{m: map[string]*operation{}} }

func (t *opTable) add(id string, op *operation) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.m) >= 100000 {
		for k, v := range t.m {
			if op.created.Sub(v.created) > time.Hour {
				delete(t.m, k)
			}
		}
	}
	t.m[id] = op
}

func (t *opTable) get(id string) *operation {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[id]
}

func (t *opTable) clear() {
	t.mu.Lock()
	t.m = map[string]*operation{}
	t.mu.Unlock()
}

// deriveKey returns the device key of regID in a symmetric-key group:
// HMAC-SHA256(base64dec(groupKey), regID).
func deriveKey(groupKey, regID string) []byte {
	k, err := base64.StdEncoding.DecodeString(groupKey)
	if err != nil {
		return nil
	}
	mac := hmac.New(sha256.New, k)
	mac.Write([]byte(regID))
	return mac.Sum(nil)
}

// match is the enrollment a device authenticated against.
type match struct {
	enr   *record[dps.IndividualEnrollment]
	grp   *record[dps.EnrollmentGroup]
	leaf  *x509.Certificate // X.509 devices
	x509g *dps.X509CertificateInfo
}

// authDevice finds the enrollment of regID and checks the device's credentials: a SAS
// signed with the enrollment's key or the group-derived key, or a TLS client certificate
// whose CN is regID. An individual enrollment wins over groups. When neither an individual
// enrollment nor any group accepts the credentials, the answer is 404201 (the service's
// answer to an unknown registration id).
func (em *Emulator) authDevice(r *http.Request, regID string) (*match, *apiError) {
	key := keyOf(regID)
	h := r.Header.Get("Authorization")
	var leaf *x509.Certificate
	var chain []*x509.Certificate
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		leaf, chain = r.TLS.PeerCertificates[0], r.TLS.PeerCertificates[1:]
	}
	if h == "" && leaf == nil {
		return nil, newErr(CodeUnauthorized, "The device presented neither a SharedAccessSignature nor a client certificate.")
	}
	em.st.mu.RLock()
	defer em.st.mu.RUnlock()
	enr := em.st.enr.m[key]
	if h != "" {
		t, e := parseSAS(h)
		if e != nil {
			return nil, e
		}
		if !strings.EqualFold(t.sr, em.opts.IDScope+"/registrations/"+regID) {
			return nil, newErr(CodeUnauthorized, "The SharedAccessSignature's sr does not name this registration.")
		}
		if t.skn != "" && t.skn != "registration" {
			return nil, newErr(CodeUnauthorized, "The SharedAccessSignature's skn must be \"registration\".")
		}
		if t.expired(em.now()) {
			return nil, newErr(CodeUnauthorized, "The SharedAccessSignature has expired.")
		}
		if enr != nil {
			sk := enr.V.Attestation.SymmetricKey
			if enr.V.Attestation.Type == dps.AttestationTypeSymmetricKey && sk != nil && (verifyB64(t, sk.PrimaryKey) || verifyB64(t, sk.SecondaryKey)) {
				return &match{enr: enr}, nil
			}
			return nil, newErr(CodeUnauthorized, "The SharedAccessSignature's signature is not valid for this enrollment.")
		}
		for _, g := range em.st.grp.all() {
			sk := g.V.Attestation.SymmetricKey
			if g.V.Attestation.Type != dps.AttestationTypeSymmetricKey || sk == nil {
				continue
			}
			if t.verify(deriveKey(sk.PrimaryKey, regID)) || t.verify(deriveKey(sk.SecondaryKey, regID)) {
				return &match{grp: g}, nil
			}
		}
		return nil, newErr(CodeEnrollmentNotFound, msgEnrollmentNotFound)
	}
	// X.509: the registration id is the certificate's CN.
	if leaf.Subject.CommonName != regID {
		return nil, newErr(CodeUnauthorized, "The client certificate's CN is not the registration id.")
	}
	now := em.now()
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, newErr(CodeUnauthorized, "The client certificate is not valid now.")
	}
	if enr != nil {
		if x := enr.V.Attestation.X509; enr.V.Attestation.Type == dps.AttestationTypeX509 && x != nil && x.ClientCertificates != nil {
			info := certInfo(leaf)
			for _, c := range []*dps.X509CertificateWithInfo{x.ClientCertificates.Primary, x.ClientCertificates.Secondary} {
				if c != nil && c.Info != nil && c.Info.SHA256Thumbprint == info.SHA256Thumbprint {
					return &match{enr: enr, leaf: leaf}, nil
				}
			}
		}
		return nil, newErr(CodeUnauthorized, "The client certificate does not match this enrollment.")
	}
	inter := x509.NewCertPool()
	for _, c := range chain {
		inter.AddCert(c)
	}
	for _, g := range em.st.grp.all() {
		x := g.V.Attestation.X509
		if g.V.Attestation.Type != dps.AttestationTypeX509 || x == nil || x.SigningCertificates == nil {
			continue
		}
		for _, sc := range []*dps.X509CertificateWithInfo{x.SigningCertificates.Primary, x.SigningCertificates.Secondary} {
			if sc == nil || sc.Certificate == "" {
				continue
			}
			root, err := parseCert(sc.Certificate)
			if err != nil {
				continue
			}
			roots := x509.NewCertPool()
			roots.AddCert(root)
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
				return &match{grp: g, leaf: leaf, x509g: sc.Info}, nil
			}
		}
	}
	return nil, newErr(CodeEnrollmentNotFound, msgEnrollmentNotFound)
}

func verifyB64(t *sasToken, key string) bool {
	k, err := base64.StdEncoding.DecodeString(key)
	return err == nil && len(k) > 0 && t.verify(k)
}

// hubFor chooses the hub of a device. static: iotHubHostName, else the first listed or
// linked hub (a static group with no hub gets the linked hub, as seen live). hashed and
// geoLatency (which the emulator cannot measure, so it hashes too): an even spread over
// iotHubs, else over the linked hubs, by a hash of the lower-cased registration id — the
// same device always lands on the same hub.
func (em *Emulator) hubFor(policy *dps.AllocationPolicy, hostName string, hubs []string, regID string) string {
	cands := hubs
	if len(cands) == 0 {
		cands = em.opts.LinkedHubs
	}
	if policy != nil && *policy == dps.AllocationPolicyStatic {
		if hostName != "" {
			return hostName
		}
		return cands[0]
	}
	if policy == nil && hostName != "" && len(hubs) == 0 {
		return hostName
	}
	sum := sha256.Sum256([]byte(keyOf(regID)))
	return cands[binary.BigEndian.Uint64(sum[:8])%uint64(len(cands))]
}

// substatus decides the substatus of a registration from the previous one and the
// reprovision policy (unconfirmed mapping, chosen so each policy has its own answer):
// first assignment → initialAssignment; updateHubAssignment=false → the device keeps its
// hub, reprovisionedToInitialAssignment; updateHubAssignment with migrateDeviceData →
// deviceDataMigrated; without → deviceDataReset.
func substatus(prev *record[dps.DeviceRegistrationState], p *dps.ReprovisionPolicy) (dps.AssignedDeviceSubstatus, bool) {
	if prev == nil || prev.V.Status != dps.EnrollmentStatusAssigned || prev.V.AssignedHub == "" {
		return dps.SubstatusInitialAssignment, false
	}
	// An absent policy or field takes the spec default: true.
	switch {
	case !p.UpdatesHubAssignment():
		return dps.SubstatusReprovisionedToInitialAssignment, true
	case p.MigratesDeviceData():
		return dps.SubstatusDeviceDataMigrated, false
	}
	return dps.SubstatusDeviceDataReset, false
}

// register is PUT /{idScope}/registrations/{id}/register.
func (em *Emulator) register(c *call) {
	regID := c.segs[2]
	var body dps.DeviceRegistration
	if len(c.body) > 0 {
		if e := decodeJSON(c.body, &body); e != nil {
			em.fail(c, e)
			return
		}
	}
	if body.RegistrationID != "" && body.RegistrationID != regID {
		em.fail(c, newErr(CodeBadRequest, "registrationId: the body names another registration id than the path"))
		return
	}
	if !validID(regID) {
		em.fail(c, invalidID("registrationId", regID))
		return
	}
	if body.TPM != nil {
		em.fail(c, newErr(CodeBadRequest, "TPM attestation is not supported by the emulator (it cannot run the TPM nonce challenge)."))
		return
	}
	m, e := em.authDevice(c.r, regID)
	if e != nil {
		em.fail(c, e)
		return
	}
	if e := em.lim.Load().allowRegistration(c.now); e != nil {
		em.fail(c, e)
		return
	}
	em.ctr.registration()
	opID := em.ids.operationID()
	var result dps.RegistrationOperationStatus
	key := keyOf(regID)
	err := em.st.write(func() {
		result = em.assign(m, regID, key, c.now)
	})
	if em.storeFailed(c, err) {
		return
	}
	em.afterWrite()
	result.OperationID = opID
	em.ops.add(opID, &operation{regKey: key, created: c.now, readyAt: c.now.Add(em.opts.AssignmentDelay), result: result})
	c.w.Header().Set("Retry-After", strconv.Itoa(int((em.opts.RuntimeRetryAfter+time.Second-1)/time.Second)))
	c.w.Header().Set("Location", "/"+url.PathEscape(em.opts.IDScope)+"/registrations/"+url.PathEscape(regID)+"/operations/"+url.PathEscape(opID)+"?api-version="+url.QueryEscape(c.r.URL.Query().Get("api-version")))
	writeJSON(c.w, http.StatusAccepted, dps.RegistrationOperationStatus{OperationID: opID, Status: dps.EnrollmentStatusAssigning})
}

// assign decides and records the outcome of a registration. Caller holds the store lock
// (through store.write); the enrollment is looked up again so a concurrent change is seen.
// The device's payload would go to a custom allocation webhook only, so it is not kept.
func (em *Emulator) assign(m *match, regID, key string, now time.Time) dps.RegistrationOperationStatus {
	st := em.st
	prev := st.reg.m[key]
	state := dps.DeviceRegistrationState{RegistrationID: regID, DeviceID: regID}
	res := dps.DeviceRegistrationResult{RegistrationID: regID}
	var (
		status    *dps.ProvisioningStatus
		policy    *dps.AllocationPolicy
		hostName  string
		hubs      []string
		reprov    *dps.ReprovisionPolicy
		groupID   string
		available = true
	)
	if m.enr != nil {
		e := st.enr.m[key]
		available = e != nil
		if e != nil {
			status, policy, hostName, hubs, reprov = e.V.ProvisioningStatus, e.V.AllocationPolicy, e.V.IotHubHostName, e.V.IotHubs, e.V.ReprovisionPolicy
			if e.V.DeviceID != "" {
				state.DeviceID = e.V.DeviceID
			}
		}
		if m.leaf != nil {
			res.X509 = &dps.X509RegistrationResult{CertificateInfo: certInfo(m.leaf)}
		}
	} else {
		g := st.grp.m[keyOf(m.grp.V.EnrollmentGroupID)]
		available = g != nil
		groupID = m.grp.V.EnrollmentGroupID
		if g != nil {
			status, policy, hostName, hubs, reprov = g.V.ProvisioningStatus, g.V.AllocationPolicy, g.V.IotHubHostName, g.V.IotHubs, g.V.ReprovisionPolicy
		}
		if m.leaf != nil {
			res.X509 = &dps.X509RegistrationResult{CertificateInfo: certInfo(m.leaf), EnrollmentGroupID: groupID, SigningCertificateInfo: m.x509g}
		} else {
			res.SymmetricKey = &dps.SymmetricKeyRegistrationResult{EnrollmentGroupID: groupID}
		}
	}
	switch {
	case !available:
		code := CodeEnrollmentNotFound
		state.Status, state.ErrorCode, state.ErrorMessage = dps.EnrollmentStatusFailed, &code, msgEnrollmentNotFound
	case status != nil && *status == dps.ProvisioningStatusDisabled:
		state.Status = dps.EnrollmentStatusDisabled
	case policy != nil && *policy == dps.AllocationPolicyCustom:
		// The emulator cannot call allocation webhooks: custom allocation always fails.
		code := CodeCustomAllocationFailed
		state.Status, state.ErrorCode, state.ErrorMessage = dps.EnrollmentStatusFailed, &code, "Custom allocation failed: the emulator cannot call allocation webhooks."
	default:
		sub, keep := substatus(prev, reprov)
		hub := em.hubFor(policy, hostName, hubs, regID)
		if keep {
			hub = prev.V.AssignedHub
		}
		state.Status, state.Substatus, state.AssignedHub = dps.EnrollmentStatusAssigned, sub, hub
	}
	rec := &record[dps.DeviceRegistrationState]{V: state, GroupID: groupID}
	// A failed registration of a vanished enrollment leaves no record behind.
	if available {
		stored, _ := apply(st, &st.reg, codes{}, modeUpdate, key, "*", rec, now)
		state = stored.V
	} else {
		state.CreatedDateTimeUTC, state.LastUpdatedDateTimeUTC = dps.NewDateTime(now), dps.NewDateTime(now)
	}
	res.CreatedDateTimeUTC, res.LastUpdatedDateTimeUTC, res.ETag = state.CreatedDateTimeUTC, state.LastUpdatedDateTimeUTC, state.ETag
	res.AssignedHub, res.DeviceID, res.Status, res.Substatus = state.AssignedHub, state.DeviceID, state.Status, state.Substatus
	res.ErrorCode, res.ErrorMessage = state.ErrorCode, state.ErrorMessage
	return dps.RegistrationOperationStatus{Status: state.Status, RegistrationState: &res}
}

// operationStatus is GET /{idScope}/registrations/{id}/operations/{operationId}.
func (em *Emulator) operationStatus(c *call) {
	regID, opID := c.segs[2], c.segs[4]
	if _, e := em.authDevice(c.r, regID); e != nil {
		em.fail(c, e)
		return
	}
	if e := em.lim.Load().allowPoll(c.now, keyOf(regID)); e != nil {
		em.fail(c, e)
		return
	}
	op := em.ops.get(opID)
	if op == nil || op.regKey != keyOf(regID) {
		em.fail(c, newErr(CodeOperationNotFound, "Operation not found."))
		return
	}
	if c.now.Before(op.readyAt) {
		c.w.Header().Set("Retry-After", strconv.Itoa(int((em.opts.RuntimeRetryAfter+time.Second-1)/time.Second)))
		writeJSON(c.w, http.StatusAccepted, dps.RegistrationOperationStatus{OperationID: opID, Status: dps.EnrollmentStatusAssigning})
		return
	}
	writeJSON(c.w, http.StatusOK, op.result)
}

// deviceRegistrationStatus is POST /{idScope}/registrations/{id}: the device's current
// registration state.
func (em *Emulator) deviceRegistrationStatus(c *call) {
	regID := c.segs[2]
	if _, e := em.authDevice(c.r, regID); e != nil {
		em.fail(c, e)
		return
	}
	em.st.mu.RLock()
	r := em.st.reg.m[keyOf(regID)]
	em.st.mu.RUnlock()
	if r == nil {
		em.fail(c, newErr(CodeRegistrationNotFound, msgRegistrationNotFound))
		return
	}
	s := r.V
	writeJSON(c.w, http.StatusOK, dps.DeviceRegistrationResult{
		RegistrationID: s.RegistrationID, CreatedDateTimeUTC: s.CreatedDateTimeUTC, AssignedHub: s.AssignedHub, DeviceID: s.DeviceID,
		Status: s.Status, Substatus: s.Substatus, ErrorCode: s.ErrorCode, ErrorMessage: s.ErrorMessage,
		LastUpdatedDateTimeUTC: s.LastUpdatedDateTimeUTC, ETag: s.ETag,
	})
}
