package emulator

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Emulator is an emulated DPS instance: its state, quotas, faults and counters. Its methods
// are safe for concurrent use.
type Emulator struct {
	opts     Options
	ids      *idGen
	st       *store
	lim      atomic.Pointer[limiter]
	faults   *injector
	ctr      *counters
	ops      *opTable
	policies []policyKey

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	stop      chan struct{} // closes to end the compactor
	done      chan struct{} // closed when the compactor has ended
	kick      chan struct{} // asks the compactor to run
}

type policyKey struct {
	name string
	key  []byte
}

// New returns an emulator configured by opts. With opts.DataDir it loads the state kept
// there and persists every write; Close must then be called to stop cleanly.
func New(opts Options) (*Emulator, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	em := &Emulator{opts: o, ids: newIDGen(o.Clock), faults: newInjector(o.Seed), ctr: newCounters(), ops: newOpTable()}
	em.lim.Store(newLimiter(*o.Quotas))
	em.faults.set(o.Faults, o.Clock())
	for _, p := range o.Policies {
		k, _ := base64.StdEncoding.DecodeString(p.Key) // validated by withDefaults
		em.policies = append(em.policies, policyKey{name: p.Name, key: k})
	}
	em.st = newStore(em.ids)
	if o.DataDir != "" {
		if err := openStore(em.st, o.DataDir); err != nil {
			return nil, fmt.Errorf("emulator: %w", err)
		}
		em.stop, em.done, em.kick = make(chan struct{}), make(chan struct{}), make(chan struct{}, 1)
		go em.compactor()
	}
	return em, nil
}

// compactor snapshots the log when asked, until Close.
func (em *Emulator) compactor() {
	defer close(em.done)
	for {
		select {
		case <-em.stop:
			return
		case <-em.kick:
			if err := em.st.compact(); err != nil {
				em.opts.Logger.Error("compact data directory", "err", err)
			}
		}
	}
}

// afterWrite asks for a compaction when the log has grown enough.
func (em *Emulator) afterWrite() {
	if em.st.log == nil {
		return
	}
	em.st.mu.RLock()
	live := len(em.st.enr.m) + len(em.st.grp.m) + len(em.st.reg.m)
	em.st.mu.RUnlock()
	if em.st.log.needsCompaction(live) {
		select {
		case em.kick <- struct{}{}:
		default:
		}
	}
}

// Close stops the emulator: later requests get 503, and with a data directory the state is
// flushed, snapshotted and fsynced. It is safe to call more than once.
func (em *Emulator) Close() error {
	em.closeOnce.Do(func() {
		em.closed.Store(true)
		if em.st.log != nil {
			close(em.stop)
			<-em.done
			em.st.mu.Lock() // wait for writes in flight
			em.st.mu.Unlock()
			em.closeErr = em.st.closeLog()
		}
	})
	return em.closeErr
}

// ServiceHostNames returns the host names service SAS tokens may name in "sr": the service
// host name first, then its aliases. Empty when the emulator takes the request's Host.
func (em *Emulator) ServiceHostNames() []string {
	if em.opts.ServiceHostName == "" {
		return nil
	}
	return append([]string{em.opts.ServiceHostName}, em.opts.ServiceHostAliases...)
}

// IDScope returns the ID scope of the runtime API.
func (em *Emulator) IDScope() string { return em.opts.IDScope }

// LinkedHubs returns the IoT hubs linked to the instance.
func (em *Emulator) LinkedHubs() []string { return append([]string(nil), em.opts.LinkedHubs...) }

// Policies returns the shared access policies (with their keys, which are secrets).
func (em *Emulator) Policies() []Policy { return append([]Policy(nil), em.opts.Policies...) }

// ConnectionString returns a service connection string for hostName (host[:port]) and the
// first policy. It holds a secret.
func (em *Emulator) ConnectionString(hostName string) string {
	p := em.opts.Policies[0]
	return "HostName=" + hostName + ";SharedAccessKeyName=" + p.Name + ";SharedAccessKey=" + p.Key
}

// Counters returns the counters since start or the last reset.
func (em *Emulator) Counters() Counters { return em.ctr.snapshot() }

// Faults returns the current faults.
func (em *Emulator) Faults() Faults { return em.faults.get() }

// SetFaults replaces the faults. A ThrottleFor starts its window now.
func (em *Emulator) SetFaults(f Faults) error {
	if err := f.validate(); err != nil {
		return fmt.Errorf("emulator: faults: %w", err)
	}
	em.faults.set(f, em.now())
	return nil
}

// Reset drops all enrollments, groups, registrations and operations, and zeroes counters
// and quota windows. Faults stay.
func (em *Emulator) Reset() error {
	err := em.st.write(em.st.clear)
	em.ops.clear()
	em.ctr.mu.Lock()
	em.ctr.reset()
	em.ctr.mu.Unlock()
	em.lim.Store(newLimiter(*em.opts.Quotas))
	return err
}

func (em *Emulator) now() time.Time { return em.opts.Clock().UTC() }

// Handler returns the HTTP handler of the service API, the runtime API and /admin/.
func (em *Emulator) Handler() http.Handler { return http.HandlerFunc(em.serveHTTP) }

// supportedAPIVersions are the api-versions real clients send.
func supportedAPIVersion(v string) bool {
	switch v {
	case "2019-03-31", "2021-06-01", "2021-10-01", "2025-07-01-preview":
		return true
	}
	return false
}

// call is one request on its way through the handler.
type call struct {
	w    http.ResponseWriter
	r    *http.Request
	segs []string
	body []byte
	now  time.Time
	plan faultPlan
}

// route is what a path and method resolve to.
type route struct {
	op      string
	service bool // service API (SAS/Bearer auth, service quota) vs runtime API
	write   bool // changes state (after-apply faults apply)
	bulk    bool
	h       func(*call)
}

func (em *Emulator) resolve(method string, segs []string) (route, *apiError) {
	notAllowed := &apiError{code: CodeMethodNotAllowed, msg: "Method " + method + " is not allowed on this resource."}
	if len(segs) == 0 {
		return route{}, newErr(CodeNotFound, "Resource not found.")
	}
	first := strings.ToLower(segs[0])
	n := len(segs)
	is := func(i int, s string) bool { return strings.EqualFold(segs[i], s) }
	switch first {
	case "enrollments", "enrollmentgroups":
		grp := first == "enrollmentgroups"
		pick := func(e, g string) string {
			if grp {
				return g
			}
			return e
		}
		switch {
		case n == 1 && method == http.MethodPost:
			return route{op: pick(OpBulkEnrollments, OpBulkGroups), service: true, write: true, bulk: true, h: pickH(grp, em.bulkEnrollments, em.bulkGroups)}, nil
		case n == 2 && is(1, "query") && method == http.MethodPost:
			return route{op: pick(OpQueryEnrollments, OpQueryGroups), service: true, h: pickH(grp, em.queryEnrollments, em.queryGroups)}, nil
		case n == 2 && method == http.MethodGet:
			return route{op: pick(OpGetEnrollment, OpGetGroup), service: true, h: pickH(grp, em.getEnrollment, em.getGroup)}, nil
		case n == 2 && method == http.MethodPut:
			return route{op: pick(OpPutEnrollment, OpPutGroup), service: true, write: true, h: pickH(grp, em.putEnrollment, em.putGroup)}, nil
		case n == 2 && method == http.MethodDelete:
			return route{op: pick(OpDeleteEnrollment, OpDeleteGroup), service: true, write: true, h: pickH(grp, em.deleteEnrollment, em.deleteGroup)}, nil
		case n == 3 && is(2, "attestationmechanism") && method == http.MethodPost:
			return route{op: pick(OpEnrollmentAttestation, OpGroupAttestation), service: true, h: pickH(grp, em.enrollmentAttestation, em.groupAttestation)}, nil
		case n == 1 || n == 2 || (n == 3 && is(2, "attestationmechanism")):
			return route{}, notAllowed
		}
	case "registrations":
		switch {
		case n == 2 && method == http.MethodGet:
			return route{op: OpGetRegistration, service: true, h: em.getRegistration}, nil
		case n == 2 && method == http.MethodDelete:
			return route{op: OpDeleteRegistration, service: true, write: true, h: em.deleteRegistration}, nil
		case n == 3 && is(2, "query") && method == http.MethodPost:
			return route{op: OpQueryRegistrations, service: true, h: em.queryRegistrations}, nil
		case n == 2 || (n == 3 && is(2, "query")):
			return route{}, notAllowed
		}
	default:
		if n < 3 || !is(1, "registrations") {
			break
		}
		if !strings.EqualFold(segs[0], em.opts.IDScope) {
			return route{}, newErr(CodeNotFound, "ID scope not found.")
		}
		switch {
		case n == 4 && is(3, "register") && method == http.MethodPut:
			return route{op: OpRegister, write: true, h: em.register}, nil
		case n == 5 && is(3, "operations") && method == http.MethodGet:
			return route{op: OpOperationStatus, h: em.operationStatus}, nil
		case n == 3 && method == http.MethodPost:
			return route{op: OpDeviceRegistrationState, h: em.deviceRegistrationStatus}, nil
		case n == 3 || (n == 4 && is(3, "register")) || (n == 5 && is(3, "operations")):
			return route{}, notAllowed
		}
	}
	return route{}, newErr(CodeNotFound, "Resource not found.")
}

func pickH(grp bool, e, g func(*call)) func(*call) {
	if grp {
		return g
	}
	return e
}

// splitPath returns the unescaped segments of the request path.
func splitPath(u *url.URL) ([]string, error) {
	p := strings.Trim(u.EscapedPath(), "/")
	if p == "" {
		return nil, nil
	}
	parts := strings.Split(p, "/")
	for i, s := range parts {
		d, err := url.PathUnescape(s)
		if err != nil {
			return nil, err
		}
		parts[i] = d
	}
	return parts, nil
}

// statusWriter remembers the status written through it.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// bufferWriter holds a response until the after-apply faults have decided its fate.
type bufferWriter struct {
	h      http.Header
	status int
	buf    bytes.Buffer
}

func (b *bufferWriter) Header() http.Header { return b.h }
func (b *bufferWriter) WriteHeader(code int) {
	if b.status == 0 {
		b.status = code
	}
}
func (b *bufferWriter) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	return b.buf.Write(p)
}

func (em *Emulator) serveHTTP(w http.ResponseWriter, r *http.Request) {
	segs, err := splitPath(r.URL)
	if err != nil {
		em.writeError(w, newErr(CodeBadRequest, "The request path is not validly escaped."))
		return
	}
	if len(segs) > 0 && strings.EqualFold(segs[0], "admin") {
		em.serveAdmin(w, r, segs[1:])
		return
	}
	if em.closed.Load() {
		em.writeError(w, newErr(503000, "The emulator is shutting down."))
		return
	}
	rt, aerr := em.resolve(r.Method, segs)
	if aerr != nil {
		em.writeError(w, aerr)
		return
	}
	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		if sw.status != 0 {
			em.ctr.call(rt.op, strconv.Itoa(sw.status))
		}
	}()
	c := &call{w: sw, r: r, segs: segs, now: em.now()}
	if e := em.precheck(c, rt); e != nil {
		em.writeError(sw, e)
		return
	}
	c.plan = em.faults.plan(rt.op, rt.bulk, rt.write, c.now)
	if c.plan.delay > 0 {
		t := time.NewTimer(c.plan.delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	switch {
	case c.plan.throttle > 0:
		em.writeError(sw, &apiError{code: CodeThrottled, msg: "Too many requests (injected throttling window).", retryAfter: retrySeconds(c.plan.throttle)})
		return
	case c.plan.drop:
		em.ctr.call(rt.op, "dropped")
		panic(http.ErrAbortHandler)
	case c.plan.errStatus > 0:
		em.writeError(sw, newErr(c.plan.errStatus*1000, "Internal error (injected fault)."))
		return
	}
	if rt.service {
		if e := em.authService(r); e != nil {
			em.writeError(sw, e)
			return
		}
		if e := em.lim.Load().allowService(c.now); e != nil {
			em.writeError(sw, e)
			return
		}
		em.ctr.serviceOp(c.now)
	}
	if !c.plan.dropAfter && c.plan.errAfter == 0 {
		rt.h(c)
		return
	}
	bw := &bufferWriter{h: http.Header{}}
	c.w = bw
	rt.h(c)
	if bw.status >= 300 {
		// Nothing was applied: answer as usual.
		for k, v := range bw.h {
			sw.Header()[k] = v
		}
		sw.WriteHeader(bw.status)
		_, _ = sw.Write(bw.buf.Bytes())
		return
	}
	if c.plan.dropAfter {
		em.ctr.call(rt.op, "dropped")
		panic(http.ErrAbortHandler)
	}
	em.writeError(sw, newErr(c.plan.errAfter*1000, "Internal error (injected fault, after the operation was applied)."))
}

// precheck validates api-version and reads the body within the size limit.
func (em *Emulator) precheck(c *call, rt route) *apiError {
	v := c.r.URL.Query().Get("api-version")
	if v == "" {
		return newErr(CodeAPIVersion, "The api-version query parameter is required.")
	}
	if !supportedAPIVersion(v) {
		return newErr(CodeAPIVersion, "The api-version '"+v+"' is not supported; use 2019-03-31, 2021-06-01, 2021-10-01 or 2025-07-01-preview.")
	}
	limit := em.opts.MaxBodyBytes
	if c.r.ContentLength > limit {
		return newErr(CodeBodyTooLarge, fmt.Sprintf("The request body is larger than %d bytes.", limit))
	}
	b, err := io.ReadAll(http.MaxBytesReader(c.w, c.r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return newErr(CodeBodyTooLarge, fmt.Sprintf("The request body is larger than %d bytes.", limit))
		}
		return newErr(CodeBadRequest, "The request body could not be read.")
	}
	c.body = b
	return nil
}
