package app

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsync/dpsync/internal/dlq"
	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/event"
)

// fakeTimer is a dlq.Timer whose time moves only when the test sets it. After fires at
// the next set, whatever its duration: the test decides when the redriver makes a pass,
// and at what time.
type fakeTimer struct {
	mu      sync.Mutex
	now     time.Time
	waiters []chan time.Time
}

func (c *fakeTimer) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeTimer) After(time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, ch)
	return ch
}

// waiting is the number of passes waiting for their time: 1 while the redriver is idle.
func (c *fakeTimer) waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

// set moves the clock to t (never back) and wakes every waiter.
func (c *fakeTimer) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
	for _, ch := range c.waiters {
		ch <- c.now
	}
	c.waiters = nil
}

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond) // polling an outcome, not timing it
	}
}

// lettersOf returns the letters of key.
func (s *stack) lettersOf(key string) []dlq.Letter {
	var out []dlq.Letter
	for _, l := range s.letters() {
		if l.Key == key {
			out = append(out, l)
		}
	}
	return out
}

// The worker's automatic redrive, on the worker's own clock option: a transient letter
// (DPS answers 503) waits its schedule, is redriven when due and removed once DPS
// recovers, the device's newer update held behind it applied after it; a letter that keeps failing is redriven RedriveLimit times (more than the
// schedule has entries: the limit is wired, not the schedule's length) and then parked as
// permanent with every failure in its history. Time is the fake clock's: the test moves
// it, the redriver never waits on the wall clock.
func TestRedriveOnScheduleWithFakeClock(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a worker")
	}
	s := newStack(t, emulator.Options{})
	clock := &fakeTimer{now: time.Now()}
	schedule := []time.Duration{time.Minute, 5 * time.Minute}
	const limit = 3
	s.worker(func(o *Options) {
		o.Retry.Budget = 500 * time.Millisecond
		o.RedriveEvery = schedule
		o.RedriveLimit = limit
		o.RedriveClock = clock
	})
	idle := func() { waitUntil(t, "redriver idle", 20*time.Second, func() bool { return clock.waiting() == 1 }) }
	// pass moves the clock to at and waits for the redriver's pass to end.
	pass := func(at time.Time) {
		t.Helper()
		idle()
		clock.set(at)
		idle()
	}
	// settle waits for an outcome of a pass made at the clock's current time. Every second
	// it has the redriver pass again at that same time: a pass can find the worker without
	// its partition 0 lease for a moment (a loaded machine delays a renewal), and then does
	// nothing; the fake time does not move, so nothing becomes due early.
	settle := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		nudge := time.Now().Add(time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 30s", what)
			}
			if time.Now().After(nudge) && clock.waiting() == 1 {
				clock.set(clock.Now())
				nudge = time.Now().Add(time.Second)
			}
			time.Sleep(20 * time.Millisecond) // polling an outcome, not timing it
		}
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, line := range strings.Split(s.logs.String(), "\n") {
			if strings.Contains(line, "flaky-2") || strings.Contains(line, "redrive") || strings.Contains(line, "WARN") || strings.Contains(line, "ERROR") {
				t.Log(line)
			}
		}
	})
	unavailable := emulator.Faults{ErrorRates: map[string]float64{"*": 1}, ErrorStatus: 503}

	// 1. DPS recovers: redriven on schedule, applied, the letter removed.
	setFaults(t, s, unavailable)
	s.publish(event.NewEnrollment(dps.BulkModeCreate, tagged("flaky-1", 1)))
	var first dlq.Letter
	waitUntil(t, "transient letter of flaky-1", 30*time.Second, func() bool {
		ls := s.lettersOf("enrollment/flaky-1")
		if len(ls) == 1 {
			first = ls[0]
		}
		return len(ls) == 1
	})
	if first.Class != dlq.ClassTransient || first.Status != 503 || first.Redrives != 0 {
		t.Fatalf("letter: class %s status %d redrives %d, want transient 503 0", first.Class, first.Status, first.Redrives)
	}
	// A newer update of the device follows the letter as a held letter.
	s.publish(event.NewEnrollment(dps.BulkModeUpdate, tagged("flaky-1", 2)))
	waitUntil(t, "held update of flaky-1", 30*time.Second, func() bool { return len(s.lettersOf("enrollment/flaky-1")) == 2 })
	setFaults(t, s, emulator.Faults{}) // DPS is back, but the letter is not due yet
	pass(first.When().Add(schedule[0] - time.Second))
	if ls := s.lettersOf("enrollment/flaky-1"); len(ls) != 2 || ls[0].Seq != first.Seq || ls[1].Class != dlq.ClassHeld {
		t.Fatalf("a second before due: letters %+v, want the letter and the held update untouched", ls)
	}
	if _, ok := s.enrollments()["flaky-1"]; ok {
		t.Fatal("a second before due: flaky-1 is on DPS already")
	}
	// Due: the create is redriven and settled, then the held update; in that order, so
	// the update's tag stays.
	pass(first.When().Add(schedule[0]))
	settle("flaky-1 applied after its redrive, then its held update", func() bool {
		return tagOf(s.enrollments()["flaky-1"]) == 2 && len(s.lettersOf("enrollment/flaky-1")) == 0
	})

	// 2. DPS keeps failing: redriven limit times, then parked with its history.
	setFaults(t, s, unavailable)
	s.publish(event.NewEnrollment(dps.BulkModeCreate, tagged("flaky-2", 1)))
	for n := 0; n <= limit; n++ {
		var l dlq.Letter
		settle(fmt.Sprintf("transient letter of flaky-2 after %d redrives", n), func() bool {
			ls := s.lettersOf("enrollment/flaky-2")
			if len(ls) == 1 && ls[0].Redrives == n && ls[0].Class == dlq.ClassTransient {
				l = ls[0]
				return true
			}
			return false
		})
		if len(l.History) != n {
			t.Fatalf("letter after %d redrives: history of %d failures, want %d", n, len(l.History), n)
		}
		if n == limit {
			pass(clock.Now().Add(time.Minute)) // any pass parks it, due or not
			break
		}
		wait := schedule[min(n, len(schedule)-1)]
		pass(l.When().Add(wait - time.Second))
		if ls := s.lettersOf("enrollment/flaky-2"); len(ls) != 1 || ls[0].Seq != l.Seq {
			t.Fatalf("redrive %d a second early: letters %+v, want the letter untouched", n+1, ls)
		}
		pass(l.When().Add(wait))
	}
	var parked dlq.Letter
	settle("flaky-2 parked", func() bool {
		ls := s.lettersOf("enrollment/flaky-2")
		if len(ls) == 1 && ls[0].Class == dlq.ClassPermanent {
			parked = ls[0]
			return true
		}
		return false
	})
	if parked.Redrives != limit || len(parked.History) != limit+1 || !strings.HasPrefix(parked.Reason, "parked after 3 redrives") {
		t.Errorf("parked letter: redrives %d, %d failures in its history, reason %q; want %d, %d, parked after %d redrives",
			parked.Redrives, len(parked.History), parked.Reason, limit, limit+1, limit)
	}
	for i, f := range parked.History {
		if f.Class != dlq.ClassTransient || f.Status != 503 {
			t.Errorf("history[%d]: class %s status %d, want transient 503", i, f.Class, f.Status)
		}
	}
	// Parked letters stay parked, however late.
	pass(clock.Now().Add(24 * time.Hour))
	if ls := s.lettersOf("enrollment/flaky-2"); len(ls) != 1 || ls[0].Seq != parked.Seq {
		t.Errorf("after a day: letters %+v, want the parked letter", ls)
	}
	setFaults(t, s, emulator.Faults{})
	if _, ok := s.enrollments()["flaky-2"]; ok {
		t.Error("flaky-2 is on DPS although every call failed")
	}
}

// A redrive schedule or limit the redriver cannot use stops the worker before it starts,
// with an error naming the setting, instead of running without automatic redrive.
func TestRedriveOptionsAreValidated(t *testing.T) {
	for _, tt := range []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"zero wait", func(o *Options) { o.RedriveEvery = []time.Duration{time.Minute, 0} }, "redrive schedule: entry 2 (0s) is not positive"},
		{"negative wait", func(o *Options) { o.RedriveEvery = []time.Duration{-time.Minute} }, "redrive schedule: entry 1 (-1m0s) is not positive"},
		{"empty schedule", func(o *Options) { o.RedriveEvery = []time.Duration{} }, "redrive schedule: empty"},
		{"negative limit", func(o *Options) { o.RedriveLimit = -1 }, "redrive limit: -1 is negative"},
	} {
		var o Options
		tt.mod(&o)
		err := o.setDefaults()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
	o := Options{RedriveEvery: []time.Duration{time.Minute}, RedriveLimit: 5}
	if err := o.setDefaults(); err != nil {
		t.Errorf("a valid schedule and limit: got %v", err)
	}
}
