package app

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/event"
)

// e2eMetric sums the samples of the Prometheus metric name (whatever their labels) that
// the worker at addr serves on /metrics; found is false when it serves none.
func e2eMetric(t *testing.T, addr, name string) (v float64, found bool) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		fields := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(fields) == 0 {
			continue
		}
		x, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			t.Fatalf("/metrics: %q: %v", line, err)
		}
		v += x
		found = true
	}
	return v, found
}

// A storm of 429s (the emulator answers every call 429, twice for 2 s) hits a worker
// draining a backlog under a DPS quota. The worker slows down: its pacer's rate
// (dpsync_dps_rate_per_minute) falls to at most half, and after the storm DPS accepts
// calls from it at most half as fast as before (the rate recovers additively, 5 % per
// 10 s). Nothing is lost: every event is applied, none is dead-lettered, and DPS ends in
// the state the events describe.
func TestThrottleStormSlowsTheWorkerDownAndLosesNothing(t *testing.T) {
	const (
		quota         = 600             // per minute: 10 calls/s, ~100 events/s in bulk calls of 10
		measureBefore = 2 * time.Second // the windows in which DPS's accepted calls are counted
		measureAfter  = 3 * time.Second
		storm         = 2 * time.Second // each window of 429s
	)
	s := newStack(t, emulator.Options{})
	var info Info
	s.worker(func(o *Options) {
		o.QuotaPerMinute = quota
		o.HTTPAddr = "127.0.0.1:0"
		o.OnReady = func(i Info) { info = i }
		o.Retry.Budget = 3 * time.Minute // slowed down, not dead-lettered
	})

	// The backlog: creates of 600 ids, updates and deletes of some of them; at the quota
	// ~60 bulk calls, more than a worker that slowed down makes until the end of the
	// measurement (~50), fewer than one that did not (~90).
	rng := rand.New(rand.NewPCG(4, 29))
	want := model{}
	var evs []*event.Event
	for i := 0; i < 600; i++ {
		id := fmt.Sprintf("storm-%03d", i)
		evs = append(evs, event.NewEnrollment(dps.BulkModeCreate, tagged(id, i)))
		want[id] = i
	}
	for i := 600; i < 750; i++ {
		id := fmt.Sprintf("storm-%03d", rng.IntN(600))
		if _, ok := want[id]; !ok {
			continue
		}
		if rng.IntN(4) == 0 {
			evs = append(evs, event.NewEnrollment(dps.BulkModeDelete, &dps.IndividualEnrollment{RegistrationID: id}))
			delete(want, id)
			continue
		}
		evs = append(evs, event.NewEnrollment(dps.BulkModeUpdate, tagged(id, i)))
		want[id] = i
	}
	s.publish(evs...)

	accepted := func() int { return e2eCounters(t, s).ServiceOps }
	rate := func() float64 {
		v, ok := e2eMetric(t, info.HTTPAddr, "dpsync_dps_rate_per_minute")
		if !ok {
			t.Fatal("/metrics has no dpsync_dps_rate_per_minute")
		}
		return v
	}
	waitUntil(t, "the worker applying the backlog", 30*time.Second, func() bool { return accepted() >= 5 })

	// Before: the calls DPS accepts per second, and the pacer's rate.
	ops0, t0 := accepted(), time.Now()
	time.Sleep(measureBefore) // a measuring window
	before := float64(accepted()-ops0) / time.Since(t0).Seconds()
	rateBefore := rate()
	if c := e2eCounters(t, s); c.Throttled != 0 {
		t.Fatalf("%d 429s before the storm: the quota of the worker is not what the test thinks", c.Throttled)
	}

	// Two windows of 429s, a second apart.
	rateLow := rateBefore
	for i := 0; i < 2; i++ {
		setFaults(t, s, emulator.Faults{ThrottleFor: emulator.Duration(storm)})
		end := time.Now().Add(storm + time.Second)
		for time.Now().Before(end) {
			rateLow = min(rateLow, rate())
			time.Sleep(100 * time.Millisecond) // sampling the storm
		}
	}

	// After: DPS answers again; the worker comes back slowly.
	ops1, t1 := accepted(), time.Now()
	time.Sleep(measureAfter) // a measuring window
	after := float64(accepted()-ops1) / time.Since(t1).Seconds()
	left, _ := s.backlog()
	c := e2eCounters(t, s)
	t.Logf("calls accepted by DPS: %.1f/s before, %.1f/s after the storm; pacer rate %.0f/min before, %.0f/min at its lowest; %d 429s; %d events left",
		before, after, rateBefore, rateLow, c.Throttled, left)
	if c.Throttled == 0 {
		t.Fatal("the emulator answered no 429: the storm did not happen")
	}
	if before < 3 {
		t.Fatalf("only %.1f calls/s accepted before the storm: too slow to measure a slowdown", before)
	}
	if rateLow > rateBefore/2 {
		t.Errorf("pacer rate %.0f/min at its lowest during the storm, want at most half of %.0f/min", rateLow, rateBefore)
	}
	if after > before/2 {
		t.Errorf("DPS accepted %.1f calls/s after the storm, want at most half of the %.1f/s before: the worker did not slow down", after, before)
	}
	if n, _ := e2eMetric(t, info.HTTPAddr, "dpsync_dps_throttled_total"); n == 0 || int(n) > c.Throttled {
		t.Errorf("dpsync_dps_throttled_total %v, want between 1 and the emulator's %d 429s", n, c.Throttled)
	}
	if left == 0 {
		t.Fatal("the backlog was drained before the end of the measurement: the worker did not slow down (or the backlog is too small to tell)")
	}

	s.settle(3 * time.Minute)
	if ls := s.letters(); len(ls) != 0 {
		t.Fatalf("%d dead letters after a 429 storm, want 0; first: %+v", len(ls), ls[0])
	}
	got := s.enrollments()
	for id, v := range want {
		e, ok := got[id]
		if !ok {
			t.Fatalf("%s: absent on DPS, want tag %d", id, v)
		}
		if tagOf(e) != v {
			t.Fatalf("%s: tag %d on DPS, want %d", id, tagOf(e), v)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d enrollments on DPS, want %d", len(got), len(want))
	}
}
