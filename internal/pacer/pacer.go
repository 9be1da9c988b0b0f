// Package pacer keeps a fleet of dpsync workers under one DPS instance's operation budget.
//
// DPS counts operations per instance (default quota 1,000 per minute); every API call is one
// operation whatever its item count (a bulk call of 10 enrollments costs one). All live
// workers share that budget: each paces itself with a token bucket refilled at its share,
// and shrinks the share when DPS still answers 429 anyway (additive increase,
// multiplicative decrease).
//
// # The math: no minute over the budget
//
// A token bucket of capacity b refilled at r per minute hands out at most b + r·T operations
// in any window of length T. With M workers, any 60 s window holds at most M·b + M·r
// operations. Choosing
//
//	r = B/M − b           (per worker, per minute; b = max(1, ⌊B/M/60⌋), ≈ 1 s of rate)
//
// makes that M·b + B − M·b = B: no minute over the budget, whatever the phase of the workers,
// at a cost of M·b operations per minute (3 workers, B = 1,000: b = 5, r = 328.3, the fleet
// runs at 985/min, 98.5 %). The bucket starts empty and never holds more than b, so idle time
// does not build up a burst. Membership changes are seen by all workers within a watch
// delivery (a joiner, which counts itself at once, starts with an empty bucket, which more
// than covers those milliseconds); a dead worker keeps being counted (more conservative)
// until its lease expires.
// The AIMD factor f ∈ (0, 1] scales r: a 429 halves it (at most once per CutEvery, default
// 1 s, and empties the bucket), and while calls succeed it grows by 5 % of the fair share
// every RaiseEvery (default 10 s) back to 1. The rate never goes below MinRate per minute.
// When B/M − b falls below MinRate (more workers than the budget allows) the bound above no
// longer holds; keep the fleet smaller than B/(MinRate + 2).
//
// Budget 0 means unlimited: Wait returns at once (a DPS without a quota, or tests).
package pacer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// DefaultBudget is DPS's operation quota per instance and minute.
const DefaultBudget = 1000

// Defaults of Options.
const (
	DefaultCutEvery   = time.Second
	DefaultRaiseEvery = 10 * time.Second
	DefaultRaiseStep  = 0.05
	DefaultMinRate    = 6 // per minute: one operation every 10 s
)

// maxSleep bounds one sleep of Wait so that rate changes (membership, 429) apply soon.
const maxSleep = time.Second

// Clock is the time source (monotonic) and timer of a Pacer.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Options configure a Pacer.
type Options struct {
	// Budget is the fleet's operations per minute on one DPS instance; 0 means unlimited
	// (use DefaultBudget for DPS's default quota).
	Budget int
	// Members returns the number of live workers sharing the budget, this one included
	// (membership.Membership.Members). Nil or a result below 1 counts as 1.
	Members func() int
	// MinRate is the floor of this worker's rate, per minute (default 6).
	MinRate float64
	// CutEvery is the minimum time between two halvings (default 1s): one burst of 429s
	// answering calls made at the old rate counts once.
	CutEvery time.Duration
	// RaiseEvery and RaiseStep: while calls succeed, the factor grows by RaiseStep every
	// RaiseEvery (defaults 10s and 0.05).
	RaiseEvery time.Duration
	RaiseStep  float64
	// Clock is the time source (default: the system clock).
	Clock Clock
}

// Pacer paces one worker's DPS operations. Its methods are safe for concurrent use.
type Pacer struct {
	o Options

	mu        sync.Mutex
	tokens    float64
	last      time.Time // last refill
	factor    float64
	lastCut   time.Time
	lastRaise time.Time
	throttles uint64
}

// New returns a Pacer, its bucket empty and its factor 1.
func New(o Options) (*Pacer, error) {
	switch {
	case o.Budget < 0:
		return nil, fmt.Errorf("pacer: Budget must be ≥ 0, got %d", o.Budget)
	case o.MinRate < 0 || o.CutEvery < 0 || o.RaiseEvery < 0 || o.RaiseStep < 0 || o.RaiseStep > 1:
		return nil, errors.New("pacer: MinRate, CutEvery, RaiseEvery must be ≥ 0 and RaiseStep within [0, 1]")
	}
	if o.MinRate == 0 {
		o.MinRate = DefaultMinRate
	}
	if o.CutEvery == 0 {
		o.CutEvery = DefaultCutEvery
	}
	if o.RaiseEvery == 0 {
		o.RaiseEvery = DefaultRaiseEvery
	}
	if o.RaiseStep == 0 {
		o.RaiseStep = DefaultRaiseStep
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	now := o.Clock.Now()
	return &Pacer{o: o, last: now, factor: 1, lastRaise: now}, nil
}

// Unlimited reports whether the budget is unlimited (Budget 0).
func (p *Pacer) Unlimited() bool { return p.o.Budget == 0 }

func (p *Pacer) members() int {
	if p.o.Members == nil {
		return 1
	}
	return max(1, p.o.Members())
}

// shape returns this worker's rate per second and its bucket capacity now.
func (p *Pacer) shape() (perSec, burst float64) {
	share := float64(p.o.Budget) / float64(p.members()) // per minute
	burst = max(1, math.Floor(share/60))
	perMin := max(p.o.MinRate, (share-burst)*p.factor)
	return perMin / 60, burst
}

// refill adds the tokens earned since the last refill at the current rate.
func (p *Pacer) refill(now time.Time) (perSec, burst float64) {
	perSec, burst = p.shape()
	if d := now.Sub(p.last); d > 0 {
		p.tokens = min(burst, p.tokens+d.Seconds()*perSec)
		p.last = now
	}
	if p.tokens > burst { // the capacity shrank (a member joined)
		p.tokens = burst
	}
	return perSec, burst
}

// Wait blocks until n operations may be made (one DPS API call is one operation, whatever
// its item count) and takes them, or returns ctx's error and takes nothing. n larger than
// the bucket is granted once the bucket is full and leaves it in debt, so the average rate
// holds.
func (p *Pacer) Wait(ctx context.Context, n int) error {
	if n <= 0 || p.Unlimited() {
		return ctx.Err()
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		p.mu.Lock()
		now := p.o.Clock.Now()
		perSec, burst := p.refill(now)
		need := min(float64(n), burst)
		if p.tokens >= need {
			p.tokens -= float64(n)
			p.mu.Unlock()
			return nil
		}
		d := time.Duration((need - p.tokens) / perSec * float64(time.Second))
		p.mu.Unlock()
		d = min(max(d, time.Millisecond), maxSleep)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.o.Clock.After(d):
		}
	}
}

// Available returns how many operations this worker may make right now (whole tokens in
// the bucket) and, when none, how long until the next one is earned. It takes nothing: a
// caller uses it to decide when to prepare work (a batch), and Wait when it sends. Unlimited:
// a large n.
func (p *Pacer) Available() (n int, wait time.Duration) {
	if p.Unlimited() {
		return math.MaxInt32, 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	perSec, _ := p.refill(p.o.Clock.Now())
	if p.tokens >= 1 {
		return int(p.tokens), 0
	}
	// Rounded up: after the wait the token is there.
	return 0, max(time.Duration(math.Ceil((1-p.tokens)/perSec*float64(time.Second))), time.Millisecond)
}

// OnThrottle reports a 429 from DPS: the factor halves (at most once per CutEvery) and the
// bucket empties.
func (p *Pacer) OnThrottle() {
	if p.Unlimited() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.o.Clock.Now()
	p.refill(now)
	p.throttles++
	if !p.lastCut.IsZero() && now.Sub(p.lastCut) < p.o.CutEvery {
		return
	}
	p.lastCut = now
	p.lastRaise = now
	// No lower than what MinRate needs: further halvings would only slow the recovery.
	floor := 1.0
	if share := float64(p.o.Budget) / float64(p.members()); share > 0 {
		_, burst := p.shape()
		if share > burst {
			floor = min(1, p.o.MinRate/(share-burst))
		}
	}
	p.factor = max(p.factor/2, floor)
	p.tokens = min(p.tokens, 0)
}

// OnSuccess reports a call DPS accepted (not throttled): the factor grows by RaiseStep when
// RaiseEvery passed since the last raise or cut, up to 1.
func (p *Pacer) OnSuccess() {
	if p.Unlimited() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.o.Clock.Now()
	if p.factor >= 1 || now.Sub(p.lastRaise) < p.o.RaiseEvery {
		return
	}
	p.refill(now)
	p.factor = min(1, p.factor+p.o.RaiseStep)
	p.lastRaise = now
}

// Rate is this worker's current rate in operations per minute (0 when unlimited).
func (p *Pacer) Rate() float64 {
	if p.Unlimited() {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	perSec, _ := p.shape()
	return perSec * 60
}

// Factor is the AIMD factor in (0, 1]: 1 means the full fair share.
func (p *Pacer) Factor() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.factor
}

// Throttles counts the 429s reported with OnThrottle.
func (p *Pacer) Throttles() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.throttles
}
