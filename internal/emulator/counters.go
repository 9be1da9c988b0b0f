package emulator

import (
	"sort"
	"strconv"
	"sync"
	"time"
)

// Operation names, used in counters and in Faults.ErrorRates.
const (
	OpGetEnrollment           = "getEnrollment"
	OpPutEnrollment           = "putEnrollment"
	OpDeleteEnrollment        = "deleteEnrollment"
	OpBulkEnrollments         = "bulkEnrollments"
	OpEnrollmentAttestation   = "enrollmentAttestation"
	OpQueryEnrollments        = "queryEnrollments"
	OpGetGroup                = "getEnrollmentGroup"
	OpPutGroup                = "putEnrollmentGroup"
	OpDeleteGroup             = "deleteEnrollmentGroup"
	OpBulkGroups              = "bulkEnrollmentGroups"
	OpGroupAttestation        = "enrollmentGroupAttestation"
	OpQueryGroups             = "queryEnrollmentGroups"
	OpGetRegistration         = "getRegistrationState"
	OpDeleteRegistration      = "deleteRegistrationState"
	OpQueryRegistrations      = "queryRegistrationStates"
	OpRegister                = "register"
	OpOperationStatus         = "operationStatus"
	OpDeviceRegistrationState = "deviceRegistrationStatus"
)

func knownOp(op string) bool {
	switch op {
	case OpGetEnrollment, OpPutEnrollment, OpDeleteEnrollment, OpBulkEnrollments, OpEnrollmentAttestation, OpQueryEnrollments,
		OpGetGroup, OpPutGroup, OpDeleteGroup, OpBulkGroups, OpGroupAttestation, OpQueryGroups,
		OpGetRegistration, OpDeleteRegistration, OpQueryRegistrations, OpRegister, OpOperationStatus, OpDeviceRegistrationState:
		return true
	}
	return false
}

// MinuteCount is the number of service operations accepted in one calendar minute.
type MinuteCount struct {
	Minute time.Time `json:"minute"`
	Ops    int       `json:"ops"`
}

// Counters are what the emulator has seen since start or the last reset.
type Counters struct {
	// Calls maps operation → outcome → count. The outcome is the HTTP status as a decimal
	// string, or "dropped" for a dropped connection.
	Calls map[string]map[string]int `json:"calls"`
	// BulkCalls and BulkItems count bulk calls that were processed (HTTP 200) and their items.
	BulkCalls int `json:"bulkCalls"`
	BulkItems int `json:"bulkItems"`
	// BulkItemsPerCall maps an item count ("1" … "10") to the number of processed bulk calls
	// of that size.
	BulkItemsPerCall map[string]int `json:"bulkItemsPerCall"`
	// BulkItemErrors maps a per-item error code to its count.
	BulkItemErrors map[string]int `json:"bulkItemErrors"`
	// Throttled counts 429 answers (quota or forced window).
	Throttled int `json:"throttled"`
	// ServiceOps counts accepted service API operations (the ones the quota counts).
	ServiceOps int `json:"serviceOps"`
	// ServiceOpsPerMinute lists accepted service operations per calendar minute (by the
	// emulator's clock), oldest first, at most the last 1440 minutes.
	ServiceOpsPerMinute []MinuteCount `json:"serviceOpsPerMinute"`
	// MaxServiceOpsPerMinute is the largest entry of ServiceOpsPerMinute.
	MaxServiceOpsPerMinute int `json:"maxServiceOpsPerMinute"`
	// Registrations counts accepted device register calls.
	Registrations int `json:"registrations"`
}

type counters struct {
	mu       sync.Mutex
	calls    map[string]map[string]int
	bulk     int
	items    int
	perCall  map[int]int
	itemErrs map[int]int
	throttle int
	svcOps   int
	minutes  map[int64]int
	regs     int
}

func newCounters() *counters {
	c := &counters{}
	c.reset()
	return c
}

func (c *counters) reset() {
	c.calls = map[string]map[string]int{}
	c.perCall = map[int]int{}
	c.itemErrs = map[int]int{}
	c.minutes = map[int64]int{}
	c.bulk, c.items, c.throttle, c.svcOps, c.regs = 0, 0, 0, 0, 0
}

func (c *counters) call(op, outcome string) {
	c.mu.Lock()
	m := c.calls[op]
	if m == nil {
		m = map[string]int{}
		c.calls[op] = m
	}
	m[outcome]++
	if outcome == "429" {
		c.throttle++
	}
	c.mu.Unlock()
}

func (c *counters) serviceOp(now time.Time) {
	c.mu.Lock()
	c.svcOps++
	m := now.Unix() / 60
	c.minutes[m]++
	if len(c.minutes) > 1440 {
		oldest := m
		for k := range c.minutes {
			oldest = min(oldest, k)
		}
		delete(c.minutes, oldest)
	}
	c.mu.Unlock()
}

func (c *counters) registration() {
	c.mu.Lock()
	c.regs++
	c.mu.Unlock()
}

func (c *counters) bulkCall(items int, errCodes []int) {
	c.mu.Lock()
	c.bulk++
	c.items += items
	c.perCall[items]++
	for _, code := range errCodes {
		c.itemErrs[code]++
	}
	c.mu.Unlock()
}

func (c *counters) snapshot() Counters {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := Counters{
		Calls:            map[string]map[string]int{},
		BulkCalls:        c.bulk,
		BulkItems:        c.items,
		BulkItemsPerCall: map[string]int{},
		BulkItemErrors:   map[string]int{},
		Throttled:        c.throttle,
		ServiceOps:       c.svcOps,
		Registrations:    c.regs,
	}
	for op, m := range c.calls {
		cm := make(map[string]int, len(m))
		for k, v := range m {
			cm[k] = v
		}
		out.Calls[op] = cm
	}
	for k, v := range c.perCall {
		out.BulkItemsPerCall[strconv.Itoa(k)] = v
	}
	for k, v := range c.itemErrs {
		out.BulkItemErrors[strconv.Itoa(k)] = v
	}
	out.ServiceOpsPerMinute = make([]MinuteCount, 0, len(c.minutes))
	for m, n := range c.minutes {
		out.ServiceOpsPerMinute = append(out.ServiceOpsPerMinute, MinuteCount{Minute: time.Unix(m*60, 0).UTC(), Ops: n})
		out.MaxServiceOpsPerMinute = max(out.MaxServiceOpsPerMinute, n)
	}
	sort.Slice(out.ServiceOpsPerMinute, func(i, j int) bool {
		return out.ServiceOpsPerMinute[i].Minute.Before(out.ServiceOpsPerMinute[j].Minute)
	})
	return out
}
