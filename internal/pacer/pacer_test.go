package pacer

import (
	"context"
	"errors"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock is a manual clock for the AIMD tests (no Wait there).
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }
func (c *fakeClock) After(time.Duration) <-chan time.Time {
	panic("fakeClock.After: use synctest for Wait")
}
func (c *fakeClock) advance(d time.Duration) { c.now = c.now.Add(d) }

func newFake(t *testing.T, o Options) (*Pacer, *fakeClock) {
	t.Helper()
	c := &fakeClock{now: time.Unix(1_000_000, 0)}
	o.Clock = c
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return p, c
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name string
		o    Options
	}{
		{"negative budget", Options{Budget: -1}},
		{"negative min rate", Options{Budget: 10, MinRate: -1}},
		{"raise step over 1", Options{Budget: 10, RaiseStep: 2}},
		{"negative cut", Options{Budget: 10, CutEvery: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.o); err == nil {
				t.Errorf("got nil error for %+v, want one", tt.o)
			}
		})
	}
}

func TestRateIsTheFairShareMinusTheBurst(t *testing.T) {
	tests := []struct {
		budget, members int
		want            float64
	}{
		{1000, 1, 1000 - 16},
		{1000, 2, 500 - 8},
		{1000, 3, 1000.0/3 - 5},
		{1000, 4, 250 - 4},
		{1000, 10, 100 - 1},
		{1000, 0, 1000 - 16}, // a broken Members counts as 1
		{60, 1, 59},
	}
	for _, tt := range tests {
		m := tt.members
		p, _ := newFake(t, Options{Budget: tt.budget, Members: func() int { return m }})
		if got := p.Rate(); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("budget %d, %d members: got rate %.3f/min, want %.3f", tt.budget, tt.members, got, tt.want)
		}
		if got := p.Factor(); got != 1 {
			t.Errorf("got factor %v, want 1", got)
		}
	}
}

func TestThrottleHalvesAtMostOncePerCutEvery(t *testing.T) {
	p, c := newFake(t, Options{Budget: 1000})
	full := p.Rate()
	p.OnThrottle()
	p.OnThrottle() // the same burst of 429s
	c.advance(500 * time.Millisecond)
	p.OnThrottle()
	if got, want := p.Factor(), 0.5; got != want {
		t.Fatalf("got factor %v after three 429s within 1s, want %v", got, want)
	}
	if got, want := p.Rate(), full/2; math.Abs(got-want) > 1e-9 {
		t.Errorf("got rate %v, want %v", got, want)
	}
	c.advance(time.Second)
	p.OnThrottle()
	if got, want := p.Factor(), 0.25; got != want {
		t.Errorf("got factor %v after a 429 a second later, want %v", got, want)
	}
	if got := p.Throttles(); got != 4 {
		t.Errorf("got %d throttles counted, want 4", got)
	}
}

func TestRecoveryIsAdditive(t *testing.T) {
	p, c := newFake(t, Options{Budget: 1000})
	p.OnThrottle()
	want := []struct {
		after  time.Duration
		factor float64
	}{
		{5 * time.Second, 0.5}, // nothing before RaiseEvery
		{10 * time.Second, 0.55},
		{50 * time.Second, 0.75},
		{100 * time.Second, 1},
		{200 * time.Second, 1}, // capped
	}
	elapsed := time.Duration(0)
	for _, w := range want {
		for elapsed < w.after {
			c.advance(time.Second)
			elapsed += time.Second
			p.OnSuccess()
		}
		if got := p.Factor(); math.Abs(got-w.factor) > 1e-9 {
			t.Errorf("after %v of successes: got factor %v, want %v", w.after, got, w.factor)
		}
	}
}

func TestRateNeverBelowMinRate(t *testing.T) {
	p, c := newFake(t, Options{Budget: 1000, MinRate: 30})
	for range 40 {
		c.advance(2 * time.Second)
		p.OnThrottle()
	}
	if got := p.Rate(); got < 30 {
		t.Errorf("got rate %v/min, want ≥ MinRate 30", got)
	}
	// The factor stopped at the floor: recovery does not start from 2^-40.
	if got, want := p.Factor(), 30/(1000-16.0); math.Abs(got-want) > 1e-9 {
		t.Errorf("got factor %v, want the floor %v", got, want)
	}
}

func TestUnlimited(t *testing.T) {
	p, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Unlimited() {
		t.Fatal("got limited, want Budget 0 unlimited")
	}
	for range 10_000 {
		if err := p.Wait(context.Background(), 10); err != nil {
			t.Fatal(err)
		}
	}
	p.OnThrottle()
	if got := p.Rate(); got != 0 {
		t.Errorf("got rate %v, want 0 (unlimited)", got)
	}
	if got := p.Factor(); got != 1 {
		t.Errorf("got factor %v, want 1", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Wait(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v on a cancelled context, want context.Canceled", err)
	}
}

func TestWaitPacesAndHonoursContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, err := New(Options{Budget: 600}) // share 600/min, burst 10, rate 590/min
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for range 59 {
			if err := p.Wait(t.Context(), 1); err != nil {
				t.Fatal(err)
			}
		}
		// The bucket starts empty: 59 operations at 590/min take 6 s.
		if got, want := time.Since(start), 6*time.Second; got < want-10*time.Millisecond || got > want+10*time.Millisecond {
			t.Errorf("59 operations took %v, want %v", got, want)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		if err := p.Wait(ctx, 1000); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got %v, want DeadlineExceeded", err)
		}
		// A cancelled Wait took nothing: the next operation comes at the regular pace.
		before := time.Now()
		if err := p.Wait(t.Context(), 1); err != nil {
			t.Fatal(err)
		}
		if got := time.Since(before); got > 100*time.Millisecond {
			t.Errorf("next operation after a cancelled Wait took %v, want ≤ 100ms", got)
		}
	})
}

// dps counts operations like DPS does (sliding 60 s window) and throttles above its quota.
type dps struct {
	mu      sync.Mutex
	quota   int // 0: never throttles
	ops     []time.Time
	calls   int
	tooMany int
}

func (d *dps) call(now time.Time) (throttled bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls++
	if d.quota > 0 && d.inWindow(now) >= d.quota {
		d.tooMany++
		return true
	}
	d.ops = append(d.ops, now)
	return false
}

func (d *dps) inWindow(now time.Time) int {
	i, _ := slices.BinarySearchFunc(d.ops, now.Add(-time.Minute), func(t, x time.Time) int {
		if !t.After(x) {
			return -1
		}
		return 1
	})
	return len(d.ops) - i
}

// maxWindow is the most operations in any 60 s window (ending at an operation).
func (d *dps) maxWindow() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	most, j := 0, 0
	for i, t := range d.ops {
		for !d.ops[j].After(t.Add(-time.Minute)) {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

// fleet runs workers that call DPS as fast as their pacers allow until ctx ends. schedule
// changes the membership: at each offset, the given number of workers is running.
func runFleet(t *testing.T, budget int, d *dps, length time.Duration, schedule map[time.Duration]int) {
	t.Helper()
	var live atomic.Int64
	members := func() int { return int(live.Load()) }
	ctx, cancel := context.WithTimeout(t.Context(), length)
	defer cancel()
	var wg sync.WaitGroup
	stops := []context.CancelFunc{}
	start := func() {
		wctx, stop := context.WithCancel(ctx)
		stops = append(stops, stop)
		p, err := New(Options{Budget: budget, Members: members})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for p.Wait(wctx, 1) == nil {
				if d.call(time.Now()) {
					p.OnThrottle()
				} else {
					p.OnSuccess()
				}
				time.Sleep(40 * time.Millisecond) // the call's latency (virtual time)
			}
		})
	}
	offsets := make([]time.Duration, 0, len(schedule))
	for at := range schedule {
		offsets = append(offsets, at)
	}
	slices.Sort(offsets)
	begin := time.Now()
	for _, at := range offsets {
		time.Sleep(at - time.Since(begin))
		n := schedule[at]
		// Leaving workers stop before the others count them out; joiners count in first.
		for len(stops) > n {
			stops[len(stops)-1]()
			stops = stops[:len(stops)-1]
			live.Store(int64(len(stops)))
		}
		for len(stops) < n {
			live.Store(int64(len(stops) + 1))
			start()
		}
	}
	<-ctx.Done()
	wg.Wait()
	for _, s := range stops {
		s()
	}
}

func TestFleetStaysUnderTheBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const budget = 1000
		d := &dps{quota: budget}
		runFleet(t, budget, d, 10*time.Minute, map[time.Duration]int{
			0:               3,
			3 * time.Minute: 4, // a worker joins
			6 * time.Minute: 2, // two leave
			8 * time.Minute: 3,
		})
		most := d.maxWindow()
		perMin := float64(len(d.ops)) / 10
		t.Logf("%d calls, %d accepted, %d throttled; busiest minute %d; mean %.0f/min", d.calls, len(d.ops), d.tooMany, most, perMin)
		if most > budget {
			t.Errorf("got %d operations in one minute, want ≤ %d", most, budget)
		}
		if d.tooMany != 0 {
			t.Errorf("got %d throttled calls, want 0", d.tooMany)
		}
		if perMin < 0.95*budget {
			t.Errorf("got %.0f operations per minute, want ≥ 95%% of %d", perMin, budget)
		}
	})
}

// DPS's real quota is below the configured budget: AIMD must find it with few 429s.
func TestAIMDAdaptsToALowerRealQuota(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &dps{quota: 600}
		runFleet(t, 1000, d, 10*time.Minute, map[time.Duration]int{0: 3})
		share := float64(d.tooMany) / float64(d.calls)
		perMin := float64(len(d.ops)) / 10
		t.Logf("%d calls, %d accepted (%.0f/min), %d throttled (%.2f%%)", d.calls, len(d.ops), perMin, d.tooMany, 100*share)
		if share > 0.05 {
			t.Errorf("got %.2f%% throttled, want ≤ 5%%", 100*share)
		}
		if perMin < 0.6*600 {
			t.Errorf("got %.0f accepted per minute, want ≥ 60%% of the real quota 600", perMin)
		}
	})
}

// TestAvailable: how many calls the worker may make now, without taking them, and how long
// until the next when none.
func TestAvailable(t *testing.T) {
	p, clk := newFake(t, Options{Budget: 1200}) // one worker: 20/s, burst 20
	if n, wait := p.Available(); n != 0 || wait <= 0 {
		t.Fatalf("empty bucket: got n %d wait %v, want 0 and a positive wait", n, wait)
	}
	_, wait := p.Available()
	clk.advance(wait)
	if n, _ := p.Available(); n != 1 {
		t.Fatalf("after the wait it named: got n %d, want 1", n)
	}
	if n, _ := p.Available(); n != 1 {
		t.Fatalf("Available took a token: got n %d on the second look, want 1", n)
	}
	clk.advance(10 * time.Second)
	if n, _ := p.Available(); n != 20 {
		t.Fatalf("full bucket: got n %d, want the burst 20", n)
	}
	if err := p.Wait(context.Background(), 5); err != nil {
		t.Fatal(err)
	}
	if n, _ := p.Available(); n != 15 {
		t.Fatalf("after Wait(5): got n %d, want 15", n)
	}
	u, _ := newFake(t, Options{})
	if n, wait := u.Available(); n < 1_000_000 || wait != 0 {
		t.Fatalf("unlimited: got n %d wait %v, want plenty and 0", n, wait)
	}
}
