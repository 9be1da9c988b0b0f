package emulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"
)

// Duration is a time.Duration written in JSON as a Go duration string ("250ms", "1m").
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler. It accepts a duration string or a number of
// nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n int64
		if err2 := json.Unmarshal(b, &n); err2 != nil {
			return errors.New("duration: expected a string such as \"250ms\"")
		}
		*d = Duration(n)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// Faults are injected failures. Rates are probabilities in [0, 1], drawn from a generator
// seeded with Options.Seed, so a sequential client sees the same faults on every run. Faults
// apply to the service and runtime APIs, never to /admin/.
type Faults struct {
	// ErrorRates maps an operation name (see the Op constants) or "*" (every operation) to
	// the probability that a call fails with ErrorStatus before anything is applied.
	ErrorRates map[string]float64 `json:"errorRates,omitempty"`
	// ErrorStatus is the status of injected errors: 500 or 503 (default 503).
	ErrorStatus int `json:"errorStatus,omitempty"`
	// ErrorAfterApplyRate is the probability that a call is applied and then answered with
	// ErrorStatus: the client cannot tell whether its write happened.
	ErrorAfterApplyRate float64 `json:"errorAfterApplyRate,omitempty"`
	// DropRate is the probability that the connection is dropped before anything is applied.
	DropRate float64 `json:"dropRate,omitempty"`
	// DropAfterApplyRate is the probability that a call is applied and its connection then
	// dropped without an answer.
	DropAfterApplyRate float64 `json:"dropAfterApplyRate,omitempty"`
	// Latency is added to every call, plus a uniform random share of Jitter.
	Latency Duration `json:"latency,omitempty"`
	Jitter  Duration `json:"jitter,omitempty"`
	// ThrottleFor starts a forced-429 window of this length when the faults are set: every
	// call is answered 429 until it ends. Reading faults back shows ThrottleUntil instead.
	ThrottleFor Duration `json:"throttleFor,omitempty"`
	// ThrottleUntil is the end of the forced-429 window (set from ThrottleFor).
	ThrottleUntil *time.Time `json:"throttleUntil,omitempty"`
	// BulkRejectRate is the probability that a bulk call is rejected whole with 400.
	BulkRejectRate float64 `json:"bulkRejectRate,omitempty"`
	// BulkRejectNext rejects the next N bulk calls whole with 400.
	BulkRejectNext int `json:"bulkRejectNext,omitempty"`
	// BulkRejectIDs rejects whole with 400 every bulk call that contains one of these ids
	// (case-insensitive): a "poison item" that makes the service refuse the request, the way
	// one malformed item can. A client must split the batch to get the others applied.
	BulkRejectIDs []string `json:"bulkRejectIds,omitempty"`
}

// rejectsBulk reports whether the faults reject a bulk call holding ids.
func (in *injector) rejectsBulk(ids []string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, bad := range in.f.BulkRejectIDs {
		for _, id := range ids {
			if strings.EqualFold(bad, id) {
				return true
			}
		}
	}
	return false
}

// Validate reports the first problem of f: a rate outside [0, 1], an unknown operation
// name, a status that is not 5xx, a negative duration or count.
func (f *Faults) Validate() error { return f.validate() }

func (f *Faults) validate() error {
	rate := func(name string, r float64) error {
		if r < 0 || r > 1 {
			return fmt.Errorf("%s %v is not in [0, 1]", name, r)
		}
		return nil
	}
	for op, r := range f.ErrorRates {
		if op != "*" && !knownOp(op) {
			return fmt.Errorf("errorRates: unknown operation %q", op)
		}
		if err := rate("errorRates["+op+"]", r); err != nil {
			return err
		}
	}
	if f.ErrorStatus != 0 && (f.ErrorStatus < 500 || f.ErrorStatus > 599) {
		return fmt.Errorf("errorStatus %d is not a 5xx status", f.ErrorStatus)
	}
	for name, r := range map[string]float64{"errorAfterApplyRate": f.ErrorAfterApplyRate, "dropRate": f.DropRate, "dropAfterApplyRate": f.DropAfterApplyRate, "bulkRejectRate": f.BulkRejectRate} {
		if err := rate(name, r); err != nil {
			return err
		}
	}
	if f.Latency < 0 || f.Jitter < 0 || f.ThrottleFor < 0 || f.BulkRejectNext < 0 {
		return errors.New("latency, jitter, throttleFor and bulkRejectNext must not be negative")
	}
	return nil
}

// faultPlan is what the faults decided for one call.
type faultPlan struct {
	delay      time.Duration
	drop       bool
	errStatus  int // > 0: answer with this status before applying
	dropAfter  bool
	errAfter   int // > 0: apply, then answer with this status
	throttle   time.Duration
	bulkReject bool
}

// injector holds the current faults and the seeded generator.
type injector struct {
	mu  sync.Mutex
	f   Faults
	rng *rand.Rand
}

func newInjector(seed uint64) *injector {
	return &injector{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// set replaces the faults; a ThrottleFor starts its window at now.
func (in *injector) set(f Faults, now time.Time) {
	f.ErrorRates = cloneRates(f.ErrorRates)
	f.BulkRejectIDs = append([]string(nil), f.BulkRejectIDs...)
	if f.ThrottleFor > 0 {
		until := now.Add(time.Duration(f.ThrottleFor))
		f.ThrottleUntil = &until
		f.ThrottleFor = 0
	}
	in.mu.Lock()
	in.f = f
	in.mu.Unlock()
}

func (in *injector) get() Faults {
	in.mu.Lock()
	defer in.mu.Unlock()
	f := in.f
	f.ErrorRates = cloneRates(f.ErrorRates)
	f.BulkRejectIDs = append([]string(nil), f.BulkRejectIDs...)
	if f.ThrottleUntil != nil {
		t := *f.ThrottleUntil
		f.ThrottleUntil = &t
	}
	return f
}

func cloneRates(m map[string]float64) map[string]float64 {
	if m == nil {
		return nil
	}
	c := make(map[string]float64, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// plan decides the faults of one call of op. Draws happen only for faults that are set, so
// enabling one fault does not change the sequence of another one's decisions.
func (in *injector) plan(op string, bulk bool, write bool, now time.Time) faultPlan {
	in.mu.Lock()
	defer in.mu.Unlock()
	f := &in.f
	var p faultPlan
	if f.Latency > 0 || f.Jitter > 0 {
		p.delay = time.Duration(f.Latency)
		if f.Jitter > 0 {
			p.delay += time.Duration(in.rng.Int64N(int64(f.Jitter) + 1))
		}
	}
	if f.ThrottleUntil != nil && now.Before(*f.ThrottleUntil) {
		p.throttle = f.ThrottleUntil.Sub(now)
		return p
	}
	if f.DropRate > 0 && in.rng.Float64() < f.DropRate {
		p.drop = true
		return p
	}
	status := f.ErrorStatus
	if status == 0 {
		status = 503
	}
	if r, ok := f.ErrorRates[op]; ok && r > 0 && in.rng.Float64() < r {
		p.errStatus = status
		return p
	}
	if r, ok := f.ErrorRates["*"]; ok && r > 0 && in.rng.Float64() < r {
		p.errStatus = status
		return p
	}
	if bulk {
		if f.BulkRejectNext > 0 {
			f.BulkRejectNext--
			p.bulkReject = true
			return p
		}
		if f.BulkRejectRate > 0 && in.rng.Float64() < f.BulkRejectRate {
			p.bulkReject = true
			return p
		}
	}
	if write {
		if f.DropAfterApplyRate > 0 && in.rng.Float64() < f.DropAfterApplyRate {
			p.dropAfter = true
		} else if f.ErrorAfterApplyRate > 0 && in.rng.Float64() < f.ErrorAfterApplyRate {
			p.errAfter = status
		}
	}
	return p
}
