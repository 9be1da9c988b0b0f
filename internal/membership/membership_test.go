package membership

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestOptionsDefaultsAndValidation(t *testing.T) {
	tests := []struct {
		name    string
		o       Options
		wantErr bool
	}{
		{"defaults", Options{Partitions: 16}, false},
		{"no partitions", Options{}, true},
		{"bad worker id", Options{Partitions: 16, WorkerID: "a.b"}, true},
		{"margin over ttl", Options{Partitions: 16, LeaseTTL: time.Second, SafetyMargin: time.Second}, true},
		{"renew too slow", Options{Partitions: 16, LeaseTTL: time.Second, SafetyMargin: 200 * time.Millisecond, RenewEvery: 500 * time.Millisecond}, true},
		{"negative", Options{Partitions: 16, DrainTimeout: -1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.o.defaults()
			if (err != nil) != tt.wantErr {
				t.Fatalf("got err %v, want error %v", err, tt.wantErr)
			}
		})
	}
	o := Options{Partitions: 16}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	if o.Bucket != DefaultBucket || o.LeaseTTL != 10*time.Second || o.SafetyMargin != 2*time.Second ||
		o.RenewEvery != o.LeaseTTL/3 || !validID.MatchString(o.WorkerID) {
		t.Errorf("got defaults %+v", o)
	}
}

func TestFairSplitOfThree(t *testing.T) {
	f := newFleet(t)
	a, b, c := f.join("a", nil), f.join("b", nil), f.join("c", nil)
	took := eventually(t, 3*testTTL, func() bool { return fair(a, b, c) }, "fair split of 16 over 3")
	_, counts := split(a, b, c)
	t.Logf("converged in %v: %v", took, counts)
	for _, m := range []*member{a, b, c} {
		if got := m.Members(); got != 3 {
			t.Errorf("%s: got Members %d, want 3", m.WorkerID(), got)
		}
	}
	// Stable: nothing moves once converged.
	before := [][]Lease{a.Assignment().Leases, b.Assignment().Leases, c.Assignment().Leases}
	time.Sleep(3 * testRenew) // observation window, not synchronisation
	after := [][]Lease{a.Assignment().Leases, b.Assignment().Leases, c.Assignment().Leases}
	for i := range before {
		if !slices.Equal(before[i], after[i]) {
			t.Errorf("member %d: leases changed while stable: got %v, want %v", i, after[i], before[i])
		}
	}
	a.close()
	b.close()
	c.close()
	f.checkIntervals()
}

func TestGracefulLeaveHandsOverWithinARenewPeriod(t *testing.T) {
	f := newFleet(t)
	a, b, c := f.joinReleasing("a"), f.joinReleasing("b"), f.joinReleasing("c")
	eventually(t, 3*testTTL, func() bool { return fair(a, b, c) }, "fair split")
	for _, m := range []*Membership{a.Membership, b.Membership, c.Membership} {
		for _, l := range m.Assignment().Leases {
			if !l.Clean {
				t.Errorf("acquisition of partition %d by %s: Clean false, want true (never owned, or released by its owner)", l.Partition, m.WorkerID())
			}
		}
	}
	left := owned(c.Membership)
	c.close()
	took := takenOver(t, testRenew+slack, left, a, b)
	checkClean(t, left, true, a.Membership, b.Membership) // released: no requests of c left open
	// The fair-share bound may also move a partition between a and b: without OnChange
	// that costs a SafetyMargin.
	all := eventually(t, testRenew+testMargin+slack, func() bool { return fair(a, b) }, "fair split of a and b")
	t.Logf("handover after Close: %v, fair again after %v", took, took+all)
	if got := a.Members(); got != 2 {
		t.Errorf("got Members %d, want 2", got)
	}
	a.close()
	b.close()
	f.checkIntervals()
}

// TestUnsettledReleaseIsNotClean: a worker that stops with events possibly unacknowledged
// (CloseUnsettled), or a partition fenced at its drain timeout, is released at once but not
// clean: the next owner must wait for the redelivery of those events before reading.
func TestUnsettledReleaseIsNotClean(t *testing.T) {
	f := newFleet(t)
	a, b, c := f.join("a", nil), f.join("b", nil), f.join("c", nil)
	eventually(t, 3*testTTL, func() bool { return fair(a, b, c) }, "fair split")
	left := owned(c.Membership)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.CloseUnsettled(ctx); err != nil {
		t.Fatal(err)
	}
	c.stopRun()
	takenOver(t, testRenew+slack, left, a, b)
	checkClean(t, left, false, a.Membership, b.Membership)
	// Without OnChange a partition that moves is fenced at once (its drain timeout): the
	// release is unsettled too.
	eventually(t, testRenew+testMargin+slack, func() bool { return fair(a, b) }, "fair split of a and b")
	d := f.join("d", nil)
	eventually(t, 3*testTTL, func() bool { return fair(a, b, d) }, "fair split with d")
	checkClean(t, owned(d.Membership), false, d.Membership)
	a.close()
	b.close()
	d.close()
	f.checkIntervals()
}

// TestUnreadExpiredLeaseIsHandedOnUnclean: a worker that took over a dead worker's expired
// leases and hands them on before it was in step with their partitions (InStep), or after
// a delivery went elsewhere, releases them unsettled whatever Release or Close say: events
// may still be out of anyone's hands, and the next owner must wait for them as this one had
// to. In step, the same handovers are clean.
func TestUnreadExpiredLeaseIsHandedOnUnclean(t *testing.T) {
	for _, tc := range []struct {
		name  string
		marks []bool // InStep reports for each of a's leases, in order
		clean bool
	}{
		{"never in step", nil, false},
		{"in step", []bool{true}, true},
		{"in step, then a delivery went elsewhere", []bool{true, false}, false},
		{"in step again", []bool{true, false, true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t)
			c := f.join("c", nil)
			eventually(t, 3*testTTL, func() bool { return len(owned(c.Membership)) == testParts }, "c owns every partition")
			c.stopRun() // kill -9: its leases expire
			a := f.joinReleasing("a")
			eventually(t, testTTL+3*testRenew+slack, func() bool { return len(owned(a.Membership)) == testParts }, "a owns every partition")
			checkClean(t, owned(a.Membership), false, a.Membership) // expired
			for _, p := range owned(a.Membership) {
				epoch, _ := a.Owns(p)
				for _, m := range tc.marks {
					a.InStep(p, epoch, m)
				}
			}
			d := f.joinReleasing("d")
			eventually(t, 3*testTTL, func() bool { return fair(a, d) }, "fair split of a and d")
			checkClean(t, owned(d.Membership), tc.clean, d.Membership)
			// And a's Close.
			left := owned(a.Membership)
			a.close()
			takenOver(t, testRenew+slack, left, d)
			checkClean(t, left, tc.clean, d.Membership)
			d.close()
		})
	}
}

func TestCrashIsTakenOverWithinTTL(t *testing.T) {
	f := newFleet(t)
	a, b, c := f.join("a", nil), f.join("b", nil), f.join("c", nil)
	eventually(t, 3*testTTL, func() bool { return fair(a, b, c) }, "fair split")
	lost := owned(c.Membership)
	c.stopRun() // kill -9: no release, no member delete
	took := takenOver(t, testTTL+testRenew+slack, lost, a, b)
	checkClean(t, lost, false, a.Membership, b.Membership) // expired: c may have requests open
	all := eventually(t, testMargin+slack, func() bool { return fair(a, b) }, "fair split of a and b")
	t.Logf("takeover after crash: %v (TTL %v), fair again after %v", took, testTTL, took+all)
	if took < testTTL-testRenew-testMargin {
		t.Errorf("took over after %v: before the TTL %v could have run out", took, testTTL)
	}
	for _, p := range lost {
		if _, ok := c.Owns(p); ok {
			t.Errorf("crashed member still Owns(%d)", p)
		}
	}
	a.close()
	b.close()
	f.checkIntervals()
}

func TestJoinerGetsFairShareAfterDrain(t *testing.T) {
	f := newFleet(t)
	var drained atomic.Int64
	// a drains like a consumer: releases a Draining partition a little later.
	var a *member
	var mu sync.Mutex
	var draining []Lease
	a = f.join("a", func(o *Options) {
		o.OnChange = func(as Assignment) {
			for _, l := range as.Leases {
				if l.Draining {
					mu.Lock()
					draining = append(draining, l)
					mu.Unlock()
					time.AfterFunc(50*time.Millisecond, func() {
						drained.Add(1)
						a.Release(l.Partition, l.Epoch)
					})
				}
			}
		}
	})
	eventually(t, 3*testTTL, func() bool { return len(owned(a.Membership)) == testParts }, "a owns all")
	b := f.join("b", nil)
	took := eventually(t, 3*testTTL, func() bool { return fair(a, b) }, "fair split after join")
	t.Logf("joiner got its share in %v; %d partitions drained", took, drained.Load())
	if drained.Load() < testParts/2 {
		t.Errorf("got %d partitions released by drain, want ≥ %d", drained.Load(), testParts/2)
	}
	// While draining, a still owned the partition under the same epoch.
	mu.Lock()
	for _, l := range draining {
		if l.Epoch == 0 {
			t.Errorf("draining lease %+v without epoch", l)
		}
	}
	mu.Unlock()
	if s := a.Stats(); s.Released < testParts/2 || s.Rebalances == 0 {
		t.Errorf("got stats %+v, want ≥ %d released and a rebalance", s, testParts/2)
	}
	a.close()
	b.close()
	f.checkIntervals()
}

func TestDrainTimeoutFencesThenReleases(t *testing.T) {
	f := newFleet(t)
	var sawDraining atomic.Bool
	a := f.join("a", func(o *Options) {
		o.OnChange = func(as Assignment) { // never calls Release
			for _, l := range as.Leases {
				if l.Draining {
					sawDraining.Store(true)
				}
			}
		}
	})
	eventually(t, 3*testTTL, func() bool { return len(owned(a.Membership)) == testParts }, "a owns all")
	joined := time.Now()
	b := f.join("b", nil)
	eventually(t, testDrain+testMargin+slack, func() bool { return fair(a, b) }, "fair split after drain timeout")
	if took := time.Since(joined); took < testDrain+testMargin {
		t.Errorf("handover after %v, want ≥ DrainTimeout + SafetyMargin = %v", took, testDrain+testMargin)
	}
	if !sawDraining.Load() {
		t.Error("OnChange never reported a Draining lease")
	}
	a.close()
	b.close()
	f.checkIntervals()
}

// A paused worker (SIGSTOP longer than the TTL) must see Owns turn false before anybody
// else acquires, and must not get a partition back under its old epoch.
func TestPausedMemberIsFencedBeforeTakeover(t *testing.T) {
	f := newFleet(t)
	a, b, c := f.join("a", nil), f.join("b", nil), f.join("c", nil)
	eventually(t, 3*testTTL, func() bool { return fair(a, b, c) }, "fair split")
	old := map[int]uint64{}
	for _, l := range c.Assignment().Leases {
		old[l.Partition] = l.Epoch
	}
	c.stopRun() // paused: no renewals, no watch; its clock keeps going
	// Per partition: when c was first seen not owning it, when a or b were first seen owning
	// it. A poll checks a and b first, then c: c owning p after a or b did is a violation.
	cFalse, othersOwn := map[int]time.Time{}, map[int]time.Time{}
	eventually(t, testTTL+testRenew+slack, func() bool {
		for p := range old {
			_, okA := a.Owns(p)
			_, okB := b.Owns(p)
			now := time.Now()
			_, okC := c.Owns(p)
			if (okA || okB) && okC {
				t.Fatalf("partition %d: paused member still owns it after a or b acquired it", p)
			}
			if (okA || okB) && othersOwn[p].IsZero() {
				othersOwn[p] = now
			}
			if !okC && cFalse[p].IsZero() {
				cFalse[p] = time.Now()
			}
		}
		return len(othersOwn) == len(old)
	}, "takeover of the paused member's partitions")
	for p := range old {
		t.Logf("partition %d: paused member seen fenced %v before the takeover was seen", p, othersOwn[p].Sub(cFalse[p]))
	}
	eventually(t, testTTL+testRenew+slack, func() bool { return fair(a, b) }, "full takeover")

	c.run() // resumed
	for p, e := range old {
		if got, ok := c.Owns(p); ok && got == e {
			t.Errorf("resumed member owns %d under its old epoch %d", p, e)
		}
	}
	eventually(t, 3*testTTL, func() bool { return fair(a, b, c) }, "fair split after resume")
	for _, l := range c.Assignment().Leases {
		if e, ok := old[l.Partition]; ok && l.Epoch <= e {
			t.Errorf("partition %d back under epoch %d, want > %d", l.Partition, l.Epoch, e)
		}
	}
	a.close()
	b.close()
	c.close()
	f.checkIntervals()
}

func TestOwnsTurnsFalseWhenTheBucketIsUnreachable(t *testing.T) {
	f := newFleet(t)
	a := f.join("a", nil)
	eventually(t, 3*testTTL, func() bool { return len(owned(a.Membership)) == testParts }, "a owns all")
	down := time.Now()
	f.srv.Shutdown()
	// No renewal can have been sent after down: from down + TTL − margin on, Owns must be
	// false (checking later than that instant is as good, so load cannot fail this).
	time.Sleep(time.Until(down.Add(testTTL - testMargin)))
	if got := owned(a.Membership); len(got) != 0 {
		t.Errorf("got Owns true for %v at LeaseTTL − SafetyMargin after the server went down", got)
	}
	eventually(t, testRenew+slack, func() bool { return a.Stats().Lost == testParts }, "16 leases counted lost, got %+v", a.Stats())
	stopped := time.Now()
	a.stopRun()
	if took := time.Since(stopped); took > 2*testRenew+slack {
		t.Errorf("Run took %v to stop without a server, want ≤ %v", took, 2*testRenew+slack)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*testRenew)
	defer cancel()
	stopped = time.Now()
	if err := a.Close(ctx); err == nil {
		t.Error("got Close nil without a server, want an error")
	}
	if took := time.Since(stopped); took > 3*testRenew+slack {
		t.Errorf("Close took %v without a server, want ≤ %v", took, 3*testRenew+slack)
	}
	// The watch's consumer delete times out after nats.go's default 5s.
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := a.waitWatchesStopped(wctx); err != nil {
		t.Error(err)
	}
}

// Churn: members join, leave, crash, pause and resume at random while an observer samples
// Owns; no partition may ever have two owners, by sampling and by the recorded intervals.
func TestNeverTwoOwners(t *testing.T) {
	f := newFleet(t)
	rng := rand.New(rand.NewPCG(1, 2))
	var ms []*member
	for i := range 4 {
		ms = append(ms, f.join(fmt.Sprintf("w%d", i), nil))
	}
	var (
		obsMu      sync.Mutex
		observed   []*member
		violations []string
		samples    int
	)
	setObserved := func(all []*member) {
		obsMu.Lock()
		defer obsMu.Unlock()
		observed = slices.Clone(all)
	}
	setObserved(ms)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			obsMu.Lock()
			all := observed
			obsMu.Unlock()
			start := time.Now()
			owner := map[int]string{}
			var bad []string
			for _, m := range all {
				for p := range testParts {
					if _, ok := m.Owns(p); ok {
						if o, dup := owner[p]; dup {
							bad = append(bad, fmt.Sprintf("partition %d: %s and %s", p, o, m.WorkerID()))
						}
						owner[p] = m.WorkerID()
					}
				}
			}
			if time.Since(start) > testMargin/4 {
				continue // the pass was not short enough to count as one instant
			}
			obsMu.Lock()
			samples++
			violations = append(violations, bad...)
			obsMu.Unlock()
		}
	})

	next := 4
	paused := map[*member]bool{}
	for step := range 12 {
		var alive []*member
		for _, m := range ms {
			if m.cancel != nil || paused[m] {
				alive = append(alive, m)
			}
		}
		switch r := rng.IntN(5); {
		case r == 0 || len(alive) < 2:
			m := f.join(fmt.Sprintf("w%d", next), nil)
			next++
			ms = append(ms, m)
			t.Logf("step %d: %s joins", step, m.WorkerID())
		case r == 1:
			m := alive[rng.IntN(len(alive))]
			if paused[m] {
				m.run()
				delete(paused, m)
				t.Logf("step %d: %s resumes", step, m.WorkerID())
			} else {
				m.close()
				t.Logf("step %d: %s leaves", step, m.WorkerID())
			}
		case r == 2:
			m := alive[rng.IntN(len(alive))]
			if m.cancel != nil {
				m.stopRun()
				t.Logf("step %d: %s crashes", step, m.WorkerID())
			}
		case r == 3:
			m := alive[rng.IntN(len(alive))]
			if m.cancel != nil {
				m.stopRun()
				paused[m] = true
				t.Logf("step %d: %s pauses", step, m.WorkerID())
			}
		default:
			for m := range paused {
				m.run()
				delete(paused, m)
				t.Logf("step %d: %s resumes", step, m.WorkerID())
			}
		}
		setObserved(ms)
		// Let takeovers and handovers happen: a random part of a TTL.
		time.Sleep(time.Duration(rng.IntN(int(testTTL/time.Millisecond))) * time.Millisecond)
	}
	var running []*member
	for _, m := range ms {
		if paused[m] {
			m.run()
		}
		if m.cancel != nil {
			running = append(running, m)
		}
	}
	eventually(t, 4*testTTL, func() bool { return fair(running...) }, "fair split of the survivors")
	close(stop)
	wg.Wait()
	for _, m := range ms {
		if m.cancel != nil {
			m.close()
		}
	}
	handovers := f.checkIntervals()
	obsMu.Lock()
	defer obsMu.Unlock()
	for _, v := range violations {
		t.Error("two owners:", v)
	}
	t.Logf("%d samples, %d ownership changes checked", samples, handovers)
	if samples < 100 || handovers < testParts {
		t.Errorf("got %d samples and %d handovers, want ≥ 100 and ≥ %d: the test did not exercise anything", samples, handovers, testParts)
	}
}

func TestRunAfterCloseAndTwice(t *testing.T) {
	f := newFleet(t)
	m, err := New(context.Background(), f.js(), testOptions("solo"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	eventually(t, 3*testTTL, func() bool { return len(owned(m)) == testParts }, "solo owns all")
	if err := m.Run(ctx); err != ErrRunning {
		t.Errorf("got second Run %v, want ErrRunning", err)
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("got Run %v, want nil after Close", err)
	}
	cancel()
	if got := owned(m); len(got) != 0 {
		t.Errorf("got Owns true for %v after Close", got)
	}
	if err := m.Run(context.Background()); err != ErrClosed {
		t.Errorf("got Run after Close %v, want ErrClosed", err)
	}
	// The bucket shows the partitions released and no member.
	js := f.js()
	kv, err := js.KeyValue(context.Background(), DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), leaseKey(3))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(e.Value()); got != `{"owner":""}` {
		t.Errorf("got lease %s, want released", got)
	}
	if _, err := kv.Get(context.Background(), memberPrefix+"solo"); err == nil {
		t.Error("member key still present after Close")
	}
}

// checkClean requires the leases the members hold of partitions ps to have Clean == want.
func checkClean(t *testing.T, ps []int, want bool, ms ...*Membership) {
	t.Helper()
	for _, p := range ps {
		for _, m := range ms {
			for _, l := range m.Assignment().Leases {
				if l.Partition == p && l.Clean != want {
					t.Errorf("partition %d acquired by %s: Clean %v, want %v", p, m.WorkerID(), l.Clean, want)
				}
			}
		}
	}
}

// takenOver waits, up to within, until every partition of ps is owned by one of ms.
func takenOver(t *testing.T, within time.Duration, ps []int, ms ...*member) time.Duration {
	t.Helper()
	return eventually(t, within, func() bool {
		for _, p := range ps {
			if !slices.ContainsFunc(ms, func(m *member) bool { _, ok := m.Owns(p); return ok }) {
				return false
			}
		}
		return true
	}, "partitions %v owned by the others", ps)
}
