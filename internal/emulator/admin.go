package emulator

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/dpsync/dpsync/internal/dps"
)

// State is a dump of everything the emulator holds, keys and certificates included, for
// checkers. Items are in creation order.
type State struct {
	Enrollments      []StateEnrollment   `json:"enrollments"`
	EnrollmentGroups []StateGroup        `json:"enrollmentGroups"`
	Registrations    []StateRegistration `json:"registrations"`
}

// StateEnrollment is one enrollment in a State. ProvisioningStatusNull tells that the
// client sent provisioningStatus as null.
type StateEnrollment struct {
	dps.IndividualEnrollment
	ProvisioningStatusNull bool `json:"provisioningStatusNull,omitempty"`
}

// StateGroup is one enrollment group in a State.
type StateGroup struct {
	dps.EnrollmentGroup
	ProvisioningStatusNull bool `json:"provisioningStatusNull,omitempty"`
}

// StateRegistration is one registration state in a State, with the group it came through
// ("" for an individual enrollment).
type StateRegistration struct {
	dps.DeviceRegistrationState
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
}

// State returns a dump of all enrollments, groups and registration states.
func (em *Emulator) State() State {
	em.st.mu.RLock()
	e, g, r := em.st.enr.all(), em.st.grp.all(), em.st.reg.all()
	em.st.mu.RUnlock()
	out := State{Enrollments: make([]StateEnrollment, len(e)), EnrollmentGroups: make([]StateGroup, len(g)), Registrations: make([]StateRegistration, len(r))}
	for i, x := range e {
		out.Enrollments[i] = StateEnrollment{IndividualEnrollment: x.V, ProvisioningStatusNull: x.ProvNull}
	}
	for i, x := range g {
		out.EnrollmentGroups[i] = StateGroup{EnrollmentGroup: x.V, ProvisioningStatusNull: x.ProvNull}
	}
	for i, x := range r {
		out.Registrations[i] = StateRegistration{DeviceRegistrationState: x.V, EnrollmentGroupID: x.GroupID}
	}
	return out
}

// serveAdmin serves /admin/counters, /admin/faults, /admin/reset and /admin/state. They
// need no DPS credentials; with Options.AdminToken they need "Authorization: Bearer <token>".
func (em *Emulator) serveAdmin(w http.ResponseWriter, r *http.Request, segs []string) {
	if t := em.opts.AdminToken; t != "" {
		h := r.Header.Get("Authorization")
		got, ok := strings.CutPrefix(h, "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(t)) != 1 {
			em.writeError(w, newErr(CodeUnauthorized, "The admin token is missing or wrong."))
			return
		}
	}
	if len(segs) != 1 {
		em.writeError(w, newErr(CodeNotFound, "Resource not found."))
		return
	}
	notAllowed := newErr(CodeMethodNotAllowed, "Method "+r.Method+" is not allowed on this resource.")
	switch strings.ToLower(segs[0]) {
	case "counters":
		if r.Method != http.MethodGet {
			em.writeError(w, notAllowed)
			return
		}
		writeJSON(w, http.StatusOK, em.Counters())
	case "state":
		if r.Method != http.MethodGet {
			em.writeError(w, notAllowed)
			return
		}
		writeJSON(w, http.StatusOK, em.State())
	case "reset":
		if r.Method != http.MethodPost {
			em.writeError(w, notAllowed)
			return
		}
		if err := em.Reset(); err != nil {
			em.writeError(w, newErr(CodeInternal, "The reset could not be persisted."))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	case "faults":
		switch r.Method {
		case http.MethodGet:
			writeJSON(w, http.StatusOK, em.Faults())
		case http.MethodDelete:
			em.faults.set(Faults{}, em.now())
			w.WriteHeader(http.StatusNoContent)
		case http.MethodPut:
			var f Faults
			dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&f); err != nil {
				em.writeError(w, newErr(CodeBadRequest, "faults: "+err.Error()))
				return
			}
			if err := f.validate(); err != nil {
				em.writeError(w, newErr(CodeBadRequest, "faults: "+err.Error()))
				return
			}
			em.faults.set(f, em.now())
			writeJSON(w, http.StatusOK, em.Faults())
		default:
			em.writeError(w, notAllowed)
		}
	default:
		em.writeError(w, newErr(CodeNotFound, "Resource not found."))
	}
}
