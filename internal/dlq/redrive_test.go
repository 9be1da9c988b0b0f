package dlq

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
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

// failingWorker is a fake worker whose DPS call fails while fail is set: it dead-letters
// every replayed event again as a transient letter at time when, continuing the redrive
// count and history the event carries, before its old letter is removed.
type failingWorker struct {
	e *env

	mu   sync.Mutex
	fail bool
	when time.Time
}

func (w *failingWorker) set(fail bool, when time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fail, w.when = fail, when
}

func (w *failingWorker) handle(ctx context.Context, m jetstream.Msg) error {
	w.mu.Lock()
	fail, when := w.fail, w.when
	w.mu.Unlock()
	if !fail || m.Headers().Get(HeaderReplayOf) == "" {
		return nil
	}
	meta, err := m.Metadata()
	if err != nil {
		return err
	}
	pos, _ := strconv.ParseUint(m.Headers().Get(HeaderPosition), 10, 64)
	l := letter("enrollment/dev-1", meta.Sequence.Stream, "create", ClassTransient, 0, when)
	l.Position = pos
	l.Data = m.Data()
	l.FromEvent(m.Headers())
	_, err = w.e.pub.Publish(ctx, l)
	return err
}

func TestRedriveSchedule(t *testing.T) {
	e := newEnv(t)
	events := dlqtest.EventsStream(t, e.js, "", time.Hour)
	w := &failingWorker{e: e}
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{Handle: w.handle})
	x := NewHoldIndex(e.js, "")
	r, err := NewRedriver(RedriverOptions{JS: e.js, Schedule: []time.Duration{time.Minute, 5 * time.Minute}, Index: x, Settle: 10 * time.Second})
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
	// Due, but DPS still fails: the worker dead-letters the redriven event again (redrive
	// 1, with the history) and removes the old letter; the held update is not republished:
	// it stays behind the new letter.
	t1 := t0.Add(2 * time.Minute)
	w.set(true, t1)
	rep, err = r.RunOnce(e.ctx, t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Redriven != 1 || rep.Followers != 0 {
		t.Errorf("due: got %+v, want 1 redriven and no follower", rep)
	}
	if x.Len() != 0 {
		t.Errorf("hold index: got %d letters, want the redriven one removed", x.Len())
	}
	evs := dlqtest.Messages(t, events)
	if len(evs) != 1 {
		t.Fatalf("events: got %d, want the redriven root only", len(evs))
	}
	if got := evs[0].Header.Get(HeaderRedrives); got != "1" {
		t.Errorf("redriven event: got %s %q, want 1", HeaderRedrives, got)
	}
	if got := evs[0].Header.Get(HeaderHistory); got == "" {
		t.Error("redriven event: no history")
	}
	left, _ := e.st.List(e.ctx, Filter{KeyGlob: "dev-1"})
	if len(left) != 2 || left[0].Seq != seqs[1] || left[1].Redrives != 1 || left[1].Class != ClassTransient {
		t.Fatalf("dev-1's letters: got %+v, want the held update and the new transient letter with redrive 1", left)
	}

	// The next wait is 5 min; it fails a second time.
	if rep, _ := r.RunOnce(e.ctx, t1.Add(4*time.Minute)); rep.Redriven != 0 {
		t.Errorf("second redrive before its 5 min: got %+v", rep)
	}
	t2 := t1.Add(6 * time.Minute)
	w.set(true, t2)
	if rep, _ := r.RunOnce(e.ctx, t1.Add(5*time.Minute)); rep.Redriven != 1 || rep.Followers != 0 {
		t.Errorf("second redrive when due: got %+v, want 1 redriven", rep)
	}
	// No redrives left: parked as permanent with its history.
	rep, err = r.RunOnce(e.ctx, t2.Add(time.Hour))
	if err != nil || rep.Parked != 1 || rep.Redriven != 0 {
		t.Fatalf("park: got %+v %v, want 1 parked", rep, err)
	}
	parked, err := e.st.List(e.ctx, Filter{KeyGlob: "dev-1", Class: ClassPermanent})
	if err != nil || len(parked) != 1 {
		t.Fatalf("parked: got %v %v, want one permanent letter of dev-1", parked, err)
	}
	p := parked[0]
	if p.Redrives != 2 || len(p.History) != 3 || p.Position != 7 {
		t.Errorf("parked letter: got redrives %d history %d position %d, want 2 3 7", p.Redrives, len(p.History), p.Position)
	}
	if len(p.History) == 3 && (!p.History[0].When.Equal(t0) || !p.History[2].When.Equal(t2)) {
		t.Errorf("history: got %+v, want failures at %v … %v", p.History, t0, t2)
	}
	if all, _ := e.st.List(e.ctx, Filter{KeyGlob: "dev-1"}); len(all) != 2 {
		t.Errorf("dev-1's letters: got %d, want the parked letter and the held update behind it", len(all))
	}
	// Parked letters are left alone, and so is what they hold.
	if rep, _ := r.RunOnce(e.ctx, t2.Add(100*time.Hour)); rep != (RedriveReport{}) {
		t.Errorf("after park: got %+v, want nothing", rep)
	}
	if n := len(dlqtest.Messages(t, events)); n != 2 {
		t.Errorf("events: got %d, want the two redrives only", n)
	}
}

// When DPS is back, the redriven letter and the held letters behind it go out one after
// the other, each once the one before was settled.
func TestRedriveSettlesBeforeTheNextLetter(t *testing.T) {
	e := newEnv(t)
	events := dlqtest.EventsStream(t, e.js, "", time.Hour)
	var mu sync.Mutex
	var pending []uint64
	var gone []string
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{Handle: func(ctx context.Context, m jetstream.Msg) error {
		meta, err := m.Metadata()
		if err != nil {
			return err
		}
		of, _ := strconv.ParseUint(m.Headers().Get(HeaderReplayOf), 10, 64)
		_, err = e.st.Get(ctx, of)
		mu.Lock()
		defer mu.Unlock()
		pending = append(pending, meta.NumPending)
		if err != nil {
			gone = append(gone, fmt.Sprintf("letter %d: gone before the worker settled its event (%v)", of, err))
		}
		return nil
	}})
	r, err := NewRedriver(RedriverOptions{JS: e.js, Settle: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e.publish(t,
		letter("enrollment/dev-1", 7, "create", ClassTransient, 0, t0),
		letter("enrollment/dev-1", 9, "update", ClassHeld, 0, t0),
		letter("enrollment/dev-1", 11, "delete", ClassHeld, 0, t0),
	)
	rep, err := r.RunOnce(e.ctx, t0.Add(time.Hour))
	if err != nil || rep.Redriven != 1 || rep.Followers != 2 {
		t.Fatalf("got %+v %v, want 1 redriven with 2 followers", rep, err)
	}
	if n := msgCount(t, e.dlq); n != 0 {
		t.Errorf("letters left: %d, want 0", n)
	}
	var ops []string
	for _, m := range dlqtest.Messages(t, events) {
		ops = append(ops, m.Header.Get(HeaderPosition))
	}
	if got := strings.Join(ops, " "); got != "7 9 11" {
		t.Errorf("events: got positions %s, want 7 9 11", got)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, g := range gone {
		t.Error(g)
	}
	for i, n := range pending {
		if n != 0 {
			t.Errorf("event %d: %d events behind it when the worker took it, want 0 (the next one goes out after it settled)", i, n)
		}
	}
}

// A redriven letter no worker settles in time: the pass moves on (other keys are not held
// up), later passes do not republish it while its event waits in the events stream, and
// the held letters behind it stay until it is settled.
func TestRedriveUnsettledLetterIsNotRepublished(t *testing.T) {
	e := newEnv(t)
	events := dlqtest.EventsStream(t, e.js, "", time.Hour)
	r, err := NewRedriver(RedriverOptions{JS: e.js, Settle: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	seqs := e.publish(t,
		letter("enrollment/dev-1", 7, "create", ClassTransient, 0, t0),
		letter("enrollment/dev-1", 9, "update", ClassHeld, 0, t0),
	)
	now := t0.Add(time.Hour)
	for pass := range 3 {
		rep, err := r.RunOnce(e.ctx, now)
		if err != nil {
			t.Fatal(err)
		}
		want := RedriveReport{}
		if pass == 0 {
			want.Unsettled = 1
		}
		if rep != want {
			t.Errorf("pass %d: got %+v, want %+v", pass, rep, want)
		}
		if n := len(dlqtest.Messages(t, events)); n != 1 {
			t.Errorf("pass %d: %d events, want the one republish", pass, n)
		}
	}
	left, _ := e.st.List(e.ctx, Filter{})
	if got := seqsOf(left); !reflect.DeepEqual(got, seqs) {
		t.Errorf("letters: got %v, want both %v", got, seqs)
	}
	// A worker comes: it settles the waiting event; the next pass releases the held letter.
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{})
	deadline := time.Now().Add(10 * time.Second)
	for msgCount(t, e.dlq) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the waiting event was not settled within 10s")
		}
		time.Sleep(5 * time.Millisecond) // polling an outcome, not timing it
	}
	rep, err := r.RunOnce(e.ctx, now)
	if err != nil || rep.Released != 1 {
		t.Fatalf("after the settle: got %+v %v, want the held letter released", rep, err)
	}
	if n := msgCount(t, e.dlq); n != 0 {
		t.Errorf("letters left: %d, want 0", n)
	}
}

// Keys are redriven concurrently: a key whose event the worker settles only after another
// key's is not a reason for that other key to wait.
func TestRedriveKeysDoNotWaitForEachOther(t *testing.T) {
	e := newEnv(t)
	dlqtest.EventsStream(t, e.js, "", time.Hour)
	slow := letter("enrollment/slow", 1, "create", ClassTransient, 0, t0)
	fast := letter("enrollment/fast", 2, "create", ClassTransient, 0, t0)
	fastDone := make(chan struct{})
	var once sync.Once
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{Handle: func(ctx context.Context, m jetstream.Msg) error {
		if strings.HasSuffix(m.Subject(), ".fast") {
			once.Do(func() { close(fastDone) })
			return nil
		}
		select { // the slow key settles only once the fast one did; until then it comes back
		case <-fastDone:
			return nil
		default:
			return errors.New("not yet")
		}
	}})
	e.publish(t, slow, fast) // the slow key comes first in a pass
	r, err := NewRedriver(RedriverOptions{JS: e.js, Settle: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := r.RunOnce(e.ctx, t0.Add(time.Hour))
	if err != nil || rep.Redriven != 2 || rep.Unsettled != 0 {
		t.Fatalf("got %+v %v, want both keys redriven in one pass", rep, err)
	}
}

func TestRedriveOwns(t *testing.T) {
	e := newEnv(t)
	dlqtest.EventsStream(t, e.js, "", time.Minute)
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{})
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
		"negative wait":  {JS: js, Settle: -time.Second},
	} {
		if _, err := NewRedriver(o); err == nil {
			t.Errorf("%s: got no error, want one", name)
		}
	}
	r, err := NewRedriver(RedriverOptions{JS: js})
	if err != nil {
		t.Fatal(err)
	}
	if r.opts.MaxRedrives != 4 || !reflect.DeepEqual(r.opts.Schedule, DefaultSchedule) || r.opts.Settle != 4*time.Minute {
		t.Errorf("defaults: got max %d schedule %v settle %v", r.opts.MaxRedrives, r.opts.Schedule, r.opts.Settle)
	}
}

func TestRedriverRun(t *testing.T) {
	e := newEnv(t)
	dlqtest.EventsStream(t, e.js, "", time.Minute)
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{})
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
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{})
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

// A held letter left at the head of its key after a replay (the replay was interrupted
// before it came back for the letters held during it; or it was held behind a letter that
// another process removed): the redriver releases it.
func TestRedriveReleasesLetterHeldDuringReplay(t *testing.T) {
	e := newEnv(t)
	events := dlqtest.EventsStream(t, e.js, "", time.Hour)
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{})
	root := letter("enrollment/dev-1", 7, "create", ClassPermanent, 409201, t0)
	rootSeq := e.publish(t, root)[0]
	rep, err := e.st.Replay(e.ctx, Filter{KeyGlob: "dev-1"}, ReplayOptions{})
	if err != nil || len(rep.Replayed) != 1 {
		t.Fatalf("replay: %+v %v", rep, err)
	}
	// The worker had held a later event behind the root (the root's letter was still there
	// when it checked); the replay ended without it.
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
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{})
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
