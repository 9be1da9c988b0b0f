package emulator

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"

	"github.com/dpsync/dpsync/internal/dps"
)

// ifMatch returns the If-Match header ("" when absent).
func ifMatch(r *http.Request) string { return strings.TrimSpace(r.Header.Get("If-Match")) }

func codeMessage(code int) string {
	switch code {
	case CodeEnrollmentExists:
		return msgEnrollmentExists
	case CodeEnrollmentGroupExists:
		return msgEnrollmentGroupExists
	case CodeEnrollmentNotFound:
		return msgEnrollmentNotFound
	case CodeEnrollmentGroupNotFound:
		return msgGroupNotFound
	case CodeRegistrationNotFound:
		return msgRegistrationNotFound
	case CodePreconditionFailed:
		return msgPrecondition
	}
	return "Request failed."
}

func (em *Emulator) fail(c *call, e *apiError) { em.writeError(c.w, e) }

// ---- individual enrollments ----

func (em *Emulator) getEnrollment(c *call) {
	id := c.segs[1]
	key := keyOf(id)
	em.st.mu.RLock()
	r := em.st.enr.m[key]
	var reg *record[dps.DeviceRegistrationState]
	if r != nil {
		reg = em.st.reg.m[key]
	}
	em.st.mu.RUnlock()
	if r == nil {
		em.fail(c, newErr(CodeEnrollmentNotFound, msgEnrollmentNotFound))
		return
	}
	state := &dps.DeviceRegistrationState{RegistrationID: r.V.RegistrationID, Status: dps.EnrollmentStatusUnassigned}
	if reg != nil && reg.GroupID == "" {
		s := reg.V
		state = &s
	}
	writeJSON(c.w, http.StatusOK, enrollmentView(r, false, state))
}

func (em *Emulator) putEnrollment(c *call) {
	var in enrollmentIn
	if e := decodeJSON(c.body, &in); e != nil {
		em.fail(c, e)
		return
	}
	rec, e := prepareEnrollment(&in, c.segs[1])
	if e != nil {
		em.fail(c, e)
		return
	}
	key := keyOf(rec.V.RegistrationID)
	var code int
	err := em.st.write(func() {
		rec, code = apply(em.st, &em.st.enr, enrCodes(), modePut, key, ifMatch(c.r), rec, c.now)
	})
	if em.storeFailed(c, err) {
		return
	}
	if code != 0 {
		em.fail(c, newErr(code, codeMessage(code)))
		return
	}
	em.afterWrite()
	// The service answers 200 (not 201) with the etag in the body only, keys included.
	writeJSON(c.w, http.StatusOK, enrollmentView(rec, true, nil))
}

func (em *Emulator) deleteEnrollment(c *call) {
	key := keyOf(c.segs[1])
	var code int
	err := em.st.write(func() {
		_, code = apply(em.st, &em.st.enr, enrCodes(), modeDelete, key, ifMatch(c.r), &record[dps.IndividualEnrollment]{}, c.now)
		if code == 0 {
			em.st.deleteRegistrations(key, "")
		}
	})
	if em.storeFailed(c, err) {
		return
	}
	if code != 0 {
		em.fail(c, newErr(code, codeMessage(code)))
		return
	}
	em.afterWrite()
	c.w.WriteHeader(http.StatusNoContent)
}

func (em *Emulator) enrollmentAttestation(c *call) {
	em.st.mu.RLock()
	r := em.st.enr.m[keyOf(c.segs[1])]
	em.st.mu.RUnlock()
	if r == nil {
		em.fail(c, newErr(CodeEnrollmentNotFound, msgEnrollmentNotFound))
		return
	}
	writeJSON(c.w, http.StatusOK, attView(r.V.Attestation, true))
}

// bulkEnrollmentsIn is the body of POST /enrollments.
type bulkEnrollmentsIn struct {
	Enrollments []enrollmentIn `json:"enrollments"`
	Mode        string         `json:"mode"`
}

// checkBulk applies the whole-request rules of bulk calls: a known mode, 1–10 items, no id
// twice (case-insensitively). Over 10 items is unconfirmed; it is rejected whole, like the
// other rules.
func (em *Emulator) checkBulk(c *call, modeStr string, ids []string, field string) (dps.BulkMode, *apiError) {
	mode, err := dps.ParseBulkMode(modeStr)
	if err != nil {
		return "", newErr(CodeInvalidBulk, "mode: "+strconv.Quote(modeStr)+" is not create, update, updateIfMatchETag or delete")
	}
	switch {
	case len(ids) == 0:
		return "", newErr(CodeInvalidBulk, field+": the list is empty")
	case len(ids) > dps.MaxBulkItems:
		return "", newErr(CodeInvalidBulk, field+": at most 10 items per bulk operation, got "+strconv.Itoa(len(ids)))
	}
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if id == "" {
			continue
		}
		k := keyOf(id)
		if seen[k] {
			return "", newErr(CodeInvalidBulk, field+": the id "+strconv.Quote(id)+" appears more than once in one bulk operation")
		}
		seen[k] = true
	}
	if c.plan.bulkReject {
		return "", newErr(CodeBulkRejected, "The bulk operation was rejected (injected fault).")
	}
	if em.faults.rejectsBulk(ids) {
		return "", newErr(CodeBulkRejected, "The bulk operation was rejected: it holds a poison item (injected fault).")
	}
	return mode, nil
}

func (em *Emulator) bulkEnrollments(c *call) {
	var in bulkEnrollmentsIn
	if e := decodeJSON(c.body, &in); e != nil {
		em.fail(c, e)
		return
	}
	ids := make([]string, len(in.Enrollments))
	for i := range in.Enrollments {
		ids[i] = in.Enrollments[i].RegistrationID
	}
	mode, e := em.checkBulk(c, in.Mode, ids, "enrollments")
	if e != nil {
		em.fail(c, e)
		return
	}
	n := len(in.Enrollments)
	recs := make([]*record[dps.IndividualEnrollment], n)
	codes := make([]int, n)
	msgs := make([]string, n)
	for i := range in.Enrollments {
		if mode == dps.BulkModeDelete {
			// A delete item needs only its id (and optionally an etag).
			if !validID(ids[i]) {
				e = invalidID("registrationId", ids[i])
			} else {
				recs[i] = &record[dps.IndividualEnrollment]{}
				continue
			}
		} else {
			recs[i], e = prepareEnrollment(&in.Enrollments[i], "")
		}
		if e != nil {
			codes[i], msgs[i] = e.code, e.msg
		}
	}
	mo := modeOf(mode)
	err := em.st.write(func() {
		for i, r := range recs {
			if r == nil {
				continue
			}
			key := keyOf(ids[i])
			_, codes[i] = apply(em.st, &em.st.enr, enrCodes(), mo, key, in.Enrollments[i].ETag, r, c.now)
			if codes[i] == 0 && mo == modeDelete {
				em.st.deleteRegistrations(key, "")
			}
		}
	})
	if em.storeFailed(c, err) {
		return
	}
	res := dps.BulkEnrollmentOperationResult{Errors: []dps.BulkEnrollmentOperationError{}}
	var failed []int
	for i, code := range codes {
		if code == 0 {
			continue
		}
		msg := msgs[i]
		if msg == "" {
			msg = codeMessage(code)
		}
		failed = append(failed, code)
		res.Errors = append(res.Errors, dps.BulkEnrollmentOperationError{RegistrationID: ids[i], ErrorCode: code, ErrorStatus: msg})
	}
	res.IsSuccessful = len(res.Errors) == 0
	em.ctr.bulkCall(n, failed)
	em.afterWrite()
	writeJSON(c.w, http.StatusOK, res)
}

// ---- enrollment groups ----

func (em *Emulator) getGroup(c *call) {
	em.st.mu.RLock()
	r := em.st.grp.m[keyOf(c.segs[1])]
	em.st.mu.RUnlock()
	if r == nil {
		em.fail(c, newErr(CodeEnrollmentGroupNotFound, msgGroupNotFound))
		return
	}
	writeJSON(c.w, http.StatusOK, groupView(r, false))
}

func (em *Emulator) putGroup(c *call) {
	var in groupIn
	if e := decodeJSON(c.body, &in); e != nil {
		em.fail(c, e)
		return
	}
	rec, e := prepareGroup(&in, c.segs[1])
	if e != nil {
		em.fail(c, e)
		return
	}
	key := keyOf(rec.V.EnrollmentGroupID)
	var code int
	err := em.st.write(func() {
		rec, code = apply(em.st, &em.st.grp, grpCodes(), modePut, key, ifMatch(c.r), rec, c.now)
	})
	if em.storeFailed(c, err) {
		return
	}
	if code != 0 {
		em.fail(c, newErr(code, codeMessage(code)))
		return
	}
	em.afterWrite()
	writeJSON(c.w, http.StatusOK, groupView(rec, true))
}

func (em *Emulator) deleteGroup(c *call) {
	key := keyOf(c.segs[1])
	var code int
	err := em.st.write(func() {
		_, code = apply(em.st, &em.st.grp, grpCodes(), modeDelete, key, ifMatch(c.r), &record[dps.EnrollmentGroup]{}, c.now)
		if code == 0 {
			em.st.deleteRegistrations("", key)
		}
	})
	if em.storeFailed(c, err) {
		return
	}
	if code != 0 {
		em.fail(c, newErr(code, codeMessage(code)))
		return
	}
	em.afterWrite()
	c.w.WriteHeader(http.StatusNoContent)
}

func (em *Emulator) groupAttestation(c *call) {
	em.st.mu.RLock()
	r := em.st.grp.m[keyOf(c.segs[1])]
	em.st.mu.RUnlock()
	if r == nil {
		em.fail(c, newErr(CodeEnrollmentGroupNotFound, msgGroupNotFound))
		return
	}
	writeJSON(c.w, http.StatusOK, attView(r.V.Attestation, true))
}

// bulkGroupsIn is the body of POST /enrollmentGroups.
type bulkGroupsIn struct {
	EnrollmentGroups []groupIn `json:"enrollmentGroups"`
	Mode             string    `json:"mode"`
}

func (em *Emulator) bulkGroups(c *call) {
	var in bulkGroupsIn
	if e := decodeJSON(c.body, &in); e != nil {
		em.fail(c, e)
		return
	}
	ids := make([]string, len(in.EnrollmentGroups))
	for i := range in.EnrollmentGroups {
		ids[i] = in.EnrollmentGroups[i].EnrollmentGroupID
	}
	mode, e := em.checkBulk(c, in.Mode, ids, "enrollmentGroups")
	if e != nil {
		em.fail(c, e)
		return
	}
	n := len(ids)
	recs := make([]*record[dps.EnrollmentGroup], n)
	codes := make([]int, n)
	msgs := make([]string, n)
	for i := range in.EnrollmentGroups {
		if mode == dps.BulkModeDelete {
			if !validID(ids[i]) {
				e = invalidID("enrollmentGroupId", ids[i])
			} else {
				recs[i] = &record[dps.EnrollmentGroup]{}
				continue
			}
		} else {
			recs[i], e = prepareGroup(&in.EnrollmentGroups[i], "")
		}
		if e != nil {
			codes[i], msgs[i] = e.code, e.msg
		}
	}
	mo := modeOf(mode)
	err := em.st.write(func() {
		for i, r := range recs {
			if r == nil {
				continue
			}
			key := keyOf(ids[i])
			_, codes[i] = apply(em.st, &em.st.grp, grpCodes(), mo, key, in.EnrollmentGroups[i].ETag, r, c.now)
			if codes[i] == 0 && mo == modeDelete {
				em.st.deleteRegistrations("", key)
			}
		}
	})
	if em.storeFailed(c, err) {
		return
	}
	res := dps.BulkEnrollmentGroupOperationResult{Errors: []dps.BulkEnrollmentGroupOperationError{}}
	var failed []int
	for i, code := range codes {
		if code == 0 {
			continue
		}
		msg := msgs[i]
		if msg == "" {
			msg = codeMessage(code)
		}
		failed = append(failed, code)
		res.Errors = append(res.Errors, dps.BulkEnrollmentGroupOperationError{EnrollmentGroupID: ids[i], ErrorCode: code, ErrorStatus: msg})
	}
	res.IsSuccessful = len(res.Errors) == 0
	em.ctr.bulkCall(n, failed)
	em.afterWrite()
	writeJSON(c.w, http.StatusOK, res)
}

// ---- queries ----

// pageParams reads x-ms-max-item-count and x-ms-continuation. The continuation token is
// opaque to clients: base64url of the creation position of the last item returned.
func (em *Emulator) pageParams(c *call) (after uint64, size int, e *apiError) {
	size = em.opts.DefaultPageSize
	if v := c.r.Header.Get("x-ms-max-item-count"); v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 {
			return 0, 0, newErr(CodeBadRequest, "x-ms-max-item-count: expected a non-negative integer")
		}
		if n > 0 {
			size = min(n, em.opts.MaxPageSize)
		}
	}
	if v := c.r.Header.Get("x-ms-continuation"); v != "" {
		b, err := base64.RawURLEncoding.DecodeString(v)
		s, ok := strings.CutPrefix(string(b), "dpsemu1:")
		if err != nil || !ok {
			return 0, 0, newErr(CodeBadRequest, "x-ms-continuation: not a continuation token of this service")
		}
		if after, err = strconv.ParseUint(s, 10, 64); err != nil {
			return 0, 0, newErr(CodeBadRequest, "x-ms-continuation: not a continuation token of this service")
		}
	}
	return after, size, nil
}

func continuation(seq uint64) string {
	return base64.RawURLEncoding.EncodeToString([]byte("dpsemu1:" + strconv.FormatUint(seq, 10)))
}

// checkQuery accepts "SELECT *" with an optional "FROM <collection>"; the emulator does not
// evaluate WHERE clauses, so it rejects them rather than ignore them.
func checkQuery(body []byte) *apiError {
	var q dps.QuerySpecification
	if e := decodeJSON(body, &q); e != nil {
		return e
	}
	f := strings.Fields(q.Query)
	ok := len(f) >= 2 && strings.EqualFold(f[0], "select") && f[1] == "*" &&
		(len(f) == 2 || (len(f) == 4 && strings.EqualFold(f[2], "from")))
	if !ok {
		return newErr(CodeBadRequest, "query: only \"SELECT *\" is supported by the emulator")
	}
	return nil
}

func (em *Emulator) queryEnrollments(c *call) {
	if e := checkQuery(c.body); e != nil {
		em.fail(c, e)
		return
	}
	after, size, e := em.pageParams(c)
	if e != nil {
		em.fail(c, e)
		return
	}
	em.st.mu.RLock()
	recs, more := em.st.enr.page(after, size, nil)
	em.st.mu.RUnlock()
	out := make([]*dps.IndividualEnrollment, len(recs))
	for i, r := range recs {
		out[i] = enrollmentView(r, false, nil)
	}
	c.w.Header().Set("x-ms-item-type", "Enrollment")
	if more {
		c.w.Header().Set("x-ms-continuation", continuation(recs[len(recs)-1].seq))
	}
	writeJSON(c.w, http.StatusOK, out)
}

func (em *Emulator) queryGroups(c *call) {
	if e := checkQuery(c.body); e != nil {
		em.fail(c, e)
		return
	}
	after, size, e := em.pageParams(c)
	if e != nil {
		em.fail(c, e)
		return
	}
	em.st.mu.RLock()
	recs, more := em.st.grp.page(after, size, nil)
	em.st.mu.RUnlock()
	out := make([]*dps.EnrollmentGroup, len(recs))
	for i, r := range recs {
		out[i] = groupView(r, false)
	}
	c.w.Header().Set("x-ms-item-type", "EnrollmentGroup")
	if more {
		c.w.Header().Set("x-ms-continuation", continuation(recs[len(recs)-1].seq))
	}
	writeJSON(c.w, http.StatusOK, out)
}

// ---- registration states ----

func (em *Emulator) getRegistration(c *call) {
	em.st.mu.RLock()
	r := em.st.reg.m[keyOf(c.segs[1])]
	em.st.mu.RUnlock()
	if r == nil {
		em.fail(c, newErr(CodeRegistrationNotFound, msgRegistrationNotFound))
		return
	}
	writeJSON(c.w, http.StatusOK, r.V)
}

func (em *Emulator) deleteRegistration(c *call) {
	key := keyOf(c.segs[1])
	var code int
	err := em.st.write(func() {
		_, code = apply(em.st, &em.st.reg, codes{notFound: CodeRegistrationNotFound}, modeDelete, key, ifMatch(c.r), &record[dps.DeviceRegistrationState]{}, c.now)
	})
	if em.storeFailed(c, err) {
		return
	}
	if code != 0 {
		em.fail(c, newErr(code, codeMessage(code)))
		return
	}
	em.afterWrite()
	c.w.WriteHeader(http.StatusNoContent)
}

// queryRegistrations lists the registration states of one group. A group without
// registrations, or that does not exist, gives an empty page (unconfirmed; the gentler
// choice).
func (em *Emulator) queryRegistrations(c *call) {
	after, size, e := em.pageParams(c)
	if e != nil {
		em.fail(c, e)
		return
	}
	gk := keyOf(c.segs[1])
	em.st.mu.RLock()
	recs, more := em.st.reg.page(after, size, func(r *record[dps.DeviceRegistrationState]) bool {
		return r.GroupID != "" && keyOf(r.GroupID) == gk
	})
	em.st.mu.RUnlock()
	out := make([]dps.DeviceRegistrationState, len(recs))
	for i, r := range recs {
		out[i] = r.V
	}
	c.w.Header().Set("x-ms-item-type", "DeviceRegistration")
	if more {
		c.w.Header().Set("x-ms-continuation", continuation(recs[len(recs)-1].seq))
	}
	writeJSON(c.w, http.StatusOK, out)
}

// storeFailed answers 500 when the data directory could not take a write.
func (em *Emulator) storeFailed(c *call, err error) bool {
	if err == nil {
		return false
	}
	em.opts.Logger.Error("persist write", "err", err)
	em.fail(c, newErr(CodeInternal, "The emulator could not persist the write."))
	return true
}
