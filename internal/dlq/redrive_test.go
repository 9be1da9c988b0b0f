package dlq

import (
	"context"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/dlq/dlqtest"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// refail plays the worker whose DPS call fails again: the redriven event at seq of the
// events stream becomes a new transient letter at time when.
func refail(t *testing.T, e *env, events jetstream.Stream, seq uint64, when time.Time) uint64 {
	t.Helper()
	m, err := events.GetMsg(e.ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	pos, _ := strconv.ParseUint(m.Header.Get(HeaderPosition), 10, 64)
	l := letter("enrollment/dev-1", seq, "create", ClassTransient, 0, when)
	l.Position = pos
	l.Data = m.Data
	l.FromEvent(m.Header)
	return e.publish(t, l)[0]
}

func TestRedriveSchedule(t *testing.T) {
	e := newEnv(t)
	events := dlqtest.EventsStream(t, e.js, "", time.Hour)
	x := NewHoldIndex(e.js, "")
	r, err := NewRedriver(RedriverOptions{JS: e.js, Schedule: []time.Duration{time.Minute, 5 * time.Minute}, Index: x})
	if err != nil {
		t.Fatal(err)
	}
	root := letter("enrollment/dev-1", 7, "create", ClassTransient, 0, t0)
	follower := letter("enrollment/dev-1", 9, "update", ClassHeld, 0, t0)
	other := letter("enrollment/dev-2", 8, "create", ClassPermanent, 400004, t0)
	seqs := e.publish(t, root, follower, other)
	x.AddLetter(Letter{Key: root.Key, Seq: seqs[0], Position: 7})

	// Not due yet.
	rep, err := r.RunOnce(e.ctx, t0.Add(59*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Redriven != 0 || !rep.NextDue.Equal(t0.Add(time.Minute)) || msgCount(t, e.dlq) != 3 {
		t.Errorf("before due: got %+v, %d letters; want nothing redriven, next due %v", rep, msgCount(t, e.dlq), t0.Add(time.Minute))
	}
	// Due: the root and the held update behind it go out in order; the permanent letter stays.
	rep, err = r.RunOnce(e.ctx, t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Redriven != 1 || rep.Followers != 1 {
		t.Errorf("due: got %+v, want 1 redriven with 1 follower", rep)
	}
	left, _ := e.st.List(e.ctx, Filter{})
	if got := seqsOf(left); !reflect.DeepEqual(got, seqs[2:]) {
		t.Errorf("left: got %v, want only the permanent letter %v", got, seqs[2:])
	}
	if x.Len() != 0 {
		t.Errorf("hold index: got %d letters, want the redriven one removed", x.Len())
	}
	evs := dlqtest.Messages(t, events)
	if len(evs) != 2 {
		t.Fatalf("events: got %d, want 2", len(evs))
	}
	if got := evs[0].Header.Get(HeaderRedrives); got != "1" {
		t.Errorf("redriven event: got %s %q, want 1", HeaderRedrives, got)
	}
	if got := evs[0].Header.Get(HeaderHistory); got == "" {
		t.Error("redriven event: no history")
	}
	if got := evs[1].Header.Get(HeaderRedrives); got != "" {
		t.Errorf("follower: got %s %q, want none (it never failed)", HeaderRedrives, got)
	}

	// DPS still fails: the worker's new letter carries redrive 1; the next wait is 5 min.
	t1 := t0.Add(2 * time.Minute)
	refail(t, e, events, evs[0].Sequence, t1)
	if rep, _ := r.RunOnce(e.ctx, t1.Add(4*time.Minute)); rep.Redriven != 0 {
		t.Errorf("second redrive before its 5 min: got %+v", rep)
	}
	if rep, _ := r.RunOnce(e.ctx, t1.Add(5*time.Minute)); rep.Redriven != 1 {
		t.Errorf("second redrive when due: got %+v, want 1 redriven", rep)
	}
	// Fails a third time: no redrives left, so it is parked as permanent with its history.
	evs = dlqtest.Messages(t, events)
	t2 := t1.Add(6 * time.Minute)
	third := refail(t, e, events, evs[len(evs)-1].Sequence, t2)
	rep, err = r.RunOnce(e.ctx, t2.Add(time.Hour))
	if err != nil || rep.Parked != 1 || rep.Redriven != 0 {
		t.Fatalf("park: got %+v %v, want 1 parked", rep, err)
	}
	if _, err := e.st.Get(e.ctx, third); err == nil {
		t.Error("parked letter: the transient letter is still there")
	}
	parked, err := e.st.List(e.ctx, Filter{KeyGlob: "dev-1"})
	if err != nil || len(parked) != 1 {
		t.Fatalf("parked: got %v %v, want one letter of dev-1", parked, err)
	}
	p := parked[0]
	if p.Class != ClassPermanent || p.Redrives != 2 || len(p.History) != 3 || p.Position != 7 {
		t.Errorf("parked letter: got class %s redrives %d history %d position %d, want permanent 2 3 7", p.Class, p.Redrives, len(p.History), p.Position)
	}
	if len(p.History) == 3 && (!p.History[0].When.Equal(t0) || !p.History[2].When.Equal(t2)) {
		t.Errorf("history: got %+v, want failures at %v … %v", p.History, t0, t2)
	}
	// Parked letters are left alone.
	if rep, _ := r.RunOnce(e.ctx, t2.Add(100*time.Hour)); rep != (RedriveReport{}) {
		t.Errorf("after park: got %+v, want nothing", rep)
	}
}

func TestRedriveOwns(t *testing.T) {
	e := newEnv(t)
	dlqtest.EventsStream(t, e.js, "", time.Minute)
	e.publish(t,
		letter("enrollment/mine", 1, "create", ClassTransient, 0, t0),
		letter("enrollment/theirs", 2, "create", ClassTransient, 0, t0),
	)
	r, err := NewRedriver(RedriverOptions{JS: e.js, Owns: func(key string) bool { return key == "enrollment/mine" }})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := r.RunOnce(e.ctx, t0.Add(time.Hour))
	if err != nil || rep.Redriven != 1 {
		t.Fatalf("got %+v %v, want 1 redriven", rep, err)
	}
	left, _ := e.st.List(e.ctx, Filter{})
	if len(left) != 1 || left[0].Key != "enrollment/theirs" {
		t.Errorf("left: got %+v, want the other worker's letter", left)
	}
}

func TestNewRedriverValidates(t *testing.T) {
	js := dlqtest.StartJetStream(t)
	for name, o := range map[string]RedriverOptions{
		"no js":          {},
		"empty schedule": {JS: js, Schedule: []time.Duration{}},
		"zero wait":      {JS: js, Schedule: []time.Duration{time.Minute, 0}},
		"negative max":   {JS: js, MaxRedrives: -1},
	} {
		if _, err := NewRedriver(o); err == nil {
			t.Errorf("%s: got no error, want one", name)
		}
	}
	r, err := NewRedriver(RedriverOptions{JS: js})
	if err != nil {
		t.Fatal(err)
	}
	if r.opts.MaxRedrives != 4 || !reflect.DeepEqual(r.opts.Schedule, DefaultSchedule) {
		t.Errorf("defaults: got max %d schedule %v", r.opts.MaxRedrives, r.opts.Schedule)
	}
}

func TestRedriverRun(t *testing.T) {
	e := newEnv(t)
	dlqtest.EventsStream(t, e.js, "", time.Minute)
	e.publish(t, letter("enrollment/a", 1, "create", ClassTransient, 0, t0))
	clock := &fakeClock{now: t0.Add(time.Hour)}
	r, err := NewRedriver(RedriverOptions{JS: e.js, Clock: clock, Interval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for msgCount(t, e.dlq) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("Run did not redrive the due letter within 10s")
		}
		time.Sleep(5 * time.Millisecond) // polling an outcome, not timing it
	}
	cancel()
	<-done
}

// A held letter whose blocker is gone (purged here) is released at the next pass with the
// held letters behind it, in order, without a redrive count; a held letter that still has
// a letter ahead of it stays.
func TestRedriveReleasesHeldLetterWhoseBlockerIsGone(t *testing.T) {
	e := newEnv(t)
	events := dlqtest.EventsStream(t, e.js, "", time.Hour)
	x := NewHoldIndex(e.js, "")
	r, err := NewRedriver(RedriverOptions{JS: e.js, Index: x})
	if err != nil {
		t.Fatal(err)
	}
	root := letter("enrollment/dev-1", 7, "create", ClassPermanent, 409201, t0)
	held1 := letter("enrollment/dev-1", 9, "update", ClassHeld, 0, t0)
	held2 := letter("enrollment/dev-1", 11, "delete", ClassHeld, 0, t0)
	otherRoot := letter("enrollment/dev-2", 8, "create", ClassPermanent, 409201, t0)
	otherHeld := letter("enrollment/dev-2", 10, "update", ClassHeld, 0, t0)
	seqs := e.publish(t, root, held1, held2, otherRoot, otherHeld)
	for i, l := range []Letter{root, held1, held2, otherRoot, otherHeld} {
		l.Seq = seqs[i]
		x.AddLetter(l)
	}

	// Both keys are blocked by a permanent letter: nothing moves, however late.
	if rep, err := r.RunOnce(e.ctx, t0.Add(100*time.Hour)); err != nil || rep != (RedriveReport{}) {
		t.Fatalf("blocked: got %+v %v, want nothing done", rep, err)
	}
	// The operator purges dev-1's failed create (and only it).
	if _, err := e.st.Purge(e.ctx, Filter{KeyGlob: "dev-1", Class: ClassPermanent}); err != nil {
		t.Fatal(err)
	}
	x.Remove(root.Key, seqs[0])
	rep, err := r.RunOnce(e.ctx, t0)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Released != 2 || rep.Redriven != 0 || rep.Parked != 0 {
		t.Fatalf("after purge: got %+v, want the 2 held letters of dev-1 released", rep)
	}
	left, _ := e.st.List(e.ctx, Filter{})
	if got, want := seqsOf(left), seqs[3:]; !reflect.DeepEqual(got, want) {
		t.Errorf("left: got %v, want dev-2's letters %v (still blocked)", got, want)
	}
	evs := dlqtest.Messages(t, events)
	if len(evs) != 2 {
		t.Fatalf("events: got %d, want 2", len(evs))
	}
	for i, want := range []struct {
		of, pos string
	}{{strconv.FormatUint(seqs[1], 10), "9"}, {strconv.FormatUint(seqs[2], 10), "11"}} {
		h := evs[i].Header
		if h.Get(HeaderReplayOf) != want.of || h.Get(HeaderPosition) != want.pos || h.Get(HeaderRedrives) != "" {
			t.Errorf("event %d: replay-of %q position %q redrives %q, want %s %s and no redrive count",
				i, h.Get(HeaderReplayOf), h.Get(HeaderPosition), h.Get(HeaderRedrives), want.of, want.pos)
		}
	}
	if x.Len() != 2 {
		t.Errorf("hold index: got %d letters, want dev-2's 2", x.Len())
	}
}

// An event held while a replay of its key runs is not among the letters the replay
// selected: once the replay removed the letter ahead of it, the redriver releases it.
func TestRedriveReleasesLetterHeldDuringReplay(t *testing.T) {
	e := newEnv(t)
	events := dlqtest.EventsStream(t, e.js, "", time.Hour)
	root := letter("enrollment/dev-1", 7, "create", ClassPermanent, 409201, t0)
	rootSeq := e.publish(t, root)[0]
	rep, err := e.st.Replay(e.ctx, Filter{KeyGlob: "dev-1"}, ReplayOptions{})
	if err != nil || len(rep.Replayed) != 1 {
		t.Fatalf("replay: %+v %v", rep, err)
	}
	// The worker held a later event behind the root while the replay ran (the root's
	// letter was still there when it checked); the replay had selected its letters already.
	lateLetter := letter("enrollment/dev-1", 12, "update", ClassHeld, 0, t0)
	lateLetter.Reason = "held behind dead letter " + strconv.FormatUint(rootSeq, 10) + " (DPS 409201 on create)"
	late := e.publish(t, lateLetter)[0]

	r, err := NewRedriver(RedriverOptions{JS: e.js})
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := r.RunOnce(e.ctx, t0); err != nil || rep.Released != 1 {
		t.Fatalf("got %+v %v, want the late held letter released", rep, err)
	}
	if n := msgCount(t, e.dlq); n != 0 {
		t.Errorf("dead letters left: %d, want 0", n)
	}
	evs := dlqtest.Messages(t, events)
	if len(evs) != 2 || evs[0].Header.Get(HeaderReplayOf) != strconv.FormatUint(rootSeq, 10) || evs[1].Header.Get(HeaderReplayOf) != strconv.FormatUint(late, 10) {
		t.Fatalf("events: got %d, want the replayed root then the released late event", len(evs))
	}
}

// timerClock is a fake Timer: After fires when Advance moves the time past its deadline.
type timerClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []timerWaiter
}

type timerWaiter struct {
	at time.Time
	ch chan time.Time
}

func (c *timerClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *timerClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, timerWaiter{c.now.Add(d), ch})
	return ch
}

func (c *timerClock) Waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

func (c *timerClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(c.now) {
			kept = append(kept, w)
			continue
		}
		w.ch <- c.now
	}
	c.waiters = kept
}

// With a Timer clock, Run waits on that clock between passes: nothing happens while the
// fake time stands still, however long the wall clock runs, and a pass follows an Advance.
func TestRedriverRunPacedByTimerClock(t *testing.T) {
	e := newEnv(t)
	dlqtest.EventsStream(t, e.js, "", time.Minute)
	clock := &timerClock{now: t0}
	r, err := NewRedriver(RedriverOptions{JS: e.js, Clock: clock, Interval: 30 * time.Second, Schedule: []time.Duration{time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	defer func() { cancel(); <-done }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s", what)
			}
			time.Sleep(5 * time.Millisecond) // polling an outcome, not timing it
		}
	}
	waitFor("first pass", func() bool { return clock.Waiting() == 1 })
	e.publish(t, letter("enrollment/a", 1, "create", ClassTransient, 0, t0))
	clock.Advance(30 * time.Second) // a pass at t0+30s: not due
	waitFor("second pass", func() bool { return clock.Waiting() == 1 })
	if n := msgCount(t, e.dlq); n != 1 {
		t.Fatalf("before due: %d letters, want 1", n)
	}
	clock.Advance(30 * time.Second) // t0+1m: due
	waitFor("redrive", func() bool { return msgCount(t, e.dlq) == 0 })
}
