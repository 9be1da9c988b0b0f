package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/dpsync/dpsync/internal/applier"
	"github.com/dpsync/dpsync/internal/batcher"
	"github.com/dpsync/dpsync/internal/dps"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// nats-server's and nats.go's background goroutines outlive a test briefly.
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*Server).Start.func1"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*fileStore).syncBlocks"),
		goleak.IgnoreAnyFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreAnyFunction("time.Sleep"),
	)
}

// testEvent is the tiny event format of these tests: the engine does not care.
type testEvent struct {
	ID  string `json:"id"`
	Key string `json:"key"`
	Op  string `json:"op"`
	V   int    `json:"v"`
}

func testDecode(data []byte) (Decoded, error) {
	var ev testEvent
	if err := json.Unmarshal(data, &ev); err != nil {
		return Decoded{}, fmt.Errorf("not JSON: %v", err)
	}
	if ev.Key == "" {
		return Decoded{}, errors.New("key: missing")
	}
	mode, err := dps.ParseBulkMode(ev.Op)
	if err != nil {
		return Decoded{}, fmt.Errorf("op: %v", err)
	}
	return Decoded{
		EventID: ev.ID,
		Key:     "enrollment/" + ev.Key,
		Item: applier.Item{Kind: applier.KindEnrollment, Op: mode, Enrollment: &dps.IndividualEnrollment{
			RegistrationID: ev.Key, DeviceID: fmt.Sprint(ev.V),
		}},
	}, nil
}

// fakeApplier records every applied item per key and answers with script.
type fakeApplier struct {
	mu      sync.Mutex
	log     map[string][]string // key → "op:v" in apply order
	calls   int
	maxSize int
	script  func(it applier.Item, attempt int) applier.Outcome
	tries   map[string]int
	inCall  map[string]bool
	overlap bool
}

func newFakeApplier(script func(applier.Item, int) applier.Outcome) *fakeApplier {
	return &fakeApplier{log: map[string][]string{}, tries: map[string]int{}, inCall: map[string]bool{}, script: script}
}

func (f *fakeApplier) Apply(ctx context.Context, items []applier.Item) []applier.Outcome {
	f.mu.Lock()
	f.calls++
	f.maxSize = max(f.maxSize, len(items))
	for _, it := range items {
		if f.inCall[it.ID()] {
			f.overlap = true
		}
		f.inCall[it.ID()] = true
	}
	f.mu.Unlock()
	time.Sleep(time.Millisecond) // let calls overlap if the engine allowed it
	out := make([]applier.Outcome, len(items))
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, it := range items {
		delete(f.inCall, it.ID())
		id := it.ID() + "/" + it.Enrollment.DeviceID
		f.tries[id]++
		out[i] = applier.Outcome{Class: applier.Applied}
		if f.script != nil {
			out[i] = f.script(it, f.tries[id])
		}
		if out[i].Class == applier.Applied {
			f.log[it.ID()] = append(f.log[it.ID()], string(it.Op)+":"+it.Enrollment.DeviceID)
		}
	}
	return out
}

// fakeDLQ keeps letters in memory and answers Held from them.
type fakeDLQ struct {
	mu      sync.Mutex
	letters []Letter
	failN   int // fail the next failN publishes
	// heldFailEvery makes every n-th hold check fail (0: none).
	heldFailEvery int
	heldCalls     int
	settled       []string // key#letter of replayed events settled
	settleFailN   int      // fail the next settleFailN removals
	onSettle      func()   // called on each successful removal, under the lock
	beforePublish func(Letter)
}

func (d *fakeDLQ) Publish(_ context.Context, l Letter) error {
	if d.beforePublish != nil {
		d.beforePublish(l)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failN > 0 {
		d.failN--
		return errors.New("dlq unavailable")
	}
	d.letters = append(d.letters, l)
	return nil
}

func (d *fakeDLQ) Held(_ context.Context, key string, pos uint64) (string, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.heldCalls++
	if d.heldFailEvery > 0 && d.heldCalls%d.heldFailEvery == 0 {
		return "", false, errors.New("dead-letter stream unavailable")
	}
	for _, l := range d.letters {
		if l.Key == key && l.Position < pos {
			return "held behind " + l.EventID, true, nil
		}
	}
	return "", false, nil
}

func (d *fakeDLQ) Settled(_ context.Context, key string, seq uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.settleFailN > 0 {
		d.settleFailN--
		return errors.New("dead-letter stream unavailable")
	}
	if d.onSettle != nil {
		d.onSettle()
	}
	d.settled = append(d.settled, fmt.Sprintf("%s#%d", key, seq))
	return nil
}

func (d *fakeDLQ) LetterExists(_ context.Context, seq uint64) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range d.settled {
		if strings.HasSuffix(s, fmt.Sprintf("#%d", seq)) {
			return false, nil
		}
	}
	return true, nil
}

func (d *fakeDLQ) snapshot() []Letter {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Letter(nil), d.letters...)
}

type rig struct {
	t      *testing.T
	js     jetstream.JetStream
	nc     *nats.Conn
	cfg    StreamConfig
	stream jetstream.Stream
	eng    *Engine
	cancel context.CancelFunc
	runErr chan error
}

func newRig(t *testing.T, parts int, opts Options) *rig {
	t.Helper()
	js, nc := startJS(t)
	ctx := context.Background()
	cfg := StreamConfig{Partitions: parts, MemoryStorage: true}
	s, err := EnsureStream(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	opts.Stream = cfg
	if opts.Decode == nil {
		opts.Decode = testDecode
	}
	if opts.KeepAlive == 0 {
		opts.KeepAlive = 500 * time.Millisecond // under the rig's AckWait of 2 s
	}
	if opts.Batcher.Linger == 0 {
		opts.Batcher.Linger = 5 * time.Millisecond
	}
	eng, err := NewEngine(opts)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	r := &rig{t: t, js: js, nc: nc, cfg: cfg, stream: s, eng: eng, cancel: cancel, runErr: make(chan error, 1)}
	go func() { r.runErr <- eng.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		<-eng.Done()
	})
	for p := 0; p < parts; p++ {
		c, err := EnsureConsumer(ctx, s, cfg, ConsumerConfig{AckWait: 2 * time.Second}, p)
		if err != nil {
			t.Fatal(err)
		}
		ro := ReadOptions{PullBatch: 100, Reopen: func(ctx context.Context) (jetstream.Consumer, error) {
			return EnsureConsumer(ctx, s, cfg, ConsumerConfig{AckWait: 2 * time.Second}, p)
		}}
		if err := eng.Attach(p, 1, c, ro); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func (r *rig) publish(evs ...testEvent) {
	r.t.Helper()
	ctx := context.Background()
	for _, ev := range evs {
		b, _ := json.Marshal(ev)
		if _, err := r.js.Publish(ctx, "dpsync.events.enrollment."+ev.Key, b, jetstream.WithMsgID(ev.ID)); err != nil {
			r.t.Fatal(err)
		}
	}
}

func (r *rig) publishRaw(key string, data []byte) {
	r.t.Helper()
	if _, err := r.js.Publish(context.Background(), "dpsync.events.enrollment."+key, data); err != nil {
		r.t.Fatal(err)
	}
}

// waitAcked waits until every partition consumer has nothing pending or unacknowledged, in
// three polls in a row: right after a publish, a consumer's info can count the new event
// as neither pending nor delivered for a moment (seen: a test passed this wait at once).
func (r *rig) waitAcked(timeout time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	quiet := 0
	for {
		pending, unacked := r.backlog()
		if pending == 0 && unacked == 0 {
			if quiet++; quiet == 3 {
				return
			}
		} else {
			quiet = 0
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("after %v: %d events pending, %d unacknowledged, want 0 and 0", timeout, pending, unacked)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *rig) backlog() (pending, unacked uint64) {
	ctx := context.Background()
	for p := 0; p < r.cfg.Partitions; p++ {
		c, err := r.stream.Consumer(ctx, r.cfg.ConsumerName(p))
		if err != nil {
			r.t.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			r.t.Fatal(err)
		}
		pending += info.NumPending
		unacked += uint64(info.NumAckPending)
	}
	return pending, unacked
}

// TestEngineKeepsOrderPerKey applies 2,000 interleaved events over 100 keys and requires
// each key's events applied in publish order, also when the batcher is nearly always full
// (the engine must hold back, not refuse events) and when hold checks keep failing (the
// key's events wait, in order, and are checked again).
func TestEngineKeepsOrderPerKey(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		dl   *fakeDLQ
	}{
		{name: "default", dl: &fakeDLQ{}},
		{name: "batcher full", dl: &fakeDLQ{}, opts: Options{Batcher: batcher.Config{MaxPending: 3}}},
		{name: "hold checks failing", dl: &fakeDLQ{heldFailEvery: 3}, opts: Options{HoldCheckRetry: 10 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fa := newFakeApplier(nil)
			opts := tc.opts
			opts.Apply, opts.DeadLetters = fa, tc.dl
			r := newRig(t, 4, opts)
			rng := rand.New(rand.NewPCG(1, 2))
			ops := []string{"create", "update", "updateIfMatchETag", "delete"}
			want := map[string][]string{}
			var evs []testEvent
			for i := 0; i < 2000; i++ {
				key := fmt.Sprintf("dev-%03d", rng.IntN(100))
				op := ops[rng.IntN(len(ops))]
				evs = append(evs, testEvent{ID: fmt.Sprint("e", i), Key: key, Op: op, V: i})
				want[key] = append(want[key], op+":"+fmt.Sprint(i))
			}
			r.publish(evs...)
			r.waitAcked(60 * time.Second)
			fa.mu.Lock()
			defer fa.mu.Unlock()
			for key, w := range want {
				if got := fa.log[key]; strings.Join(got, ",") != strings.Join(w, ",") {
					t.Fatalf("key %s applied as\n%v\nwant\n%v", key, got, w)
				}
			}
			if fa.overlap {
				t.Fatal("two items of one key were in flight at once")
			}
			if fa.maxSize > 10 {
				t.Fatalf("largest call had %d items, want ≤ 10", fa.maxSize)
			}
			if fa.calls >= 2000 && tc.opts.Batcher.MaxPending == 0 {
				t.Fatalf("%d calls for 2000 events: no batching", fa.calls)
			}
			if n := len(tc.dl.snapshot()); n != 0 {
				t.Fatalf("got %d dead letters, want 0", n)
			}
		})
	}
}

// TestEngineDropsStaleRedelivery: the server redelivers an event whose InProgress did not
// arrive in time; the copy reaches the engine only after the original was applied and
// acknowledged and the key's next event was applied too. Applying the copy would put the
// older event last; the engine must acknowledge and drop it.
func TestEngineDropsStaleRedelivery(t *testing.T) {
	copySeen := make(chan struct{})
	nextApplied := make(chan struct{})
	var once, nextOnce sync.Once
	fa := newFakeApplier(func(it applier.Item, _ int) applier.Outcome {
		if it.Enrollment.DeviceID == "2" {
			nextOnce.Do(func() { close(nextApplied) })
		}
		return applier.Outcome{Class: applier.Applied}
	})
	blockFirst := &blockingApplier{inner: fa, block: func(it applier.Item) {
		if it.Enrollment.DeviceID == "1" {
			<-copySeen // hold the original until the server has redelivered it
		}
	}}
	var mu sync.Mutex
	decodes := map[string]int{}
	decode := func(data []byte) (Decoded, error) {
		d, err := testDecode(data)
		mu.Lock()
		decodes[d.EventID]++
		n := decodes[d.EventID]
		mu.Unlock()
		if d.EventID == "s1" && n == 2 {
			once.Do(func() { close(copySeen) })
			<-nextApplied // the copy arrives after the key moved on
		}
		return d, err
	}
	// KeepAlive far beyond the rig's AckWait (2 s): the server redelivers the held event.
	r := newRig(t, 1, Options{Apply: blockFirst, DeadLetters: &fakeDLQ{}, Decode: decode, KeepAlive: time.Minute})
	r.publish(testEvent{ID: "s1", Key: "k", Op: "create", V: 1}, testEvent{ID: "s2", Key: "k", Op: "update", V: 2})
	r.waitAcked(20 * time.Second)
	fa.mu.Lock()
	defer fa.mu.Unlock()
	if got, want := strings.Join(fa.log["k"], ","), "create:1,update:2"; got != want {
		t.Fatalf("key k applied as %s, want %s", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if decodes["s1"] < 2 {
		t.Fatalf("s1 decoded %d times: the server did not redeliver it, the test proves nothing", decodes["s1"])
	}
}

// blockingApplier calls block for every item before passing the batch on.
type blockingApplier struct {
	inner Applier
	block func(applier.Item)
}

func (b *blockingApplier) Apply(ctx context.Context, items []applier.Item) []applier.Outcome {
	for _, it := range items {
		b.block(it)
	}
	return b.inner.Apply(ctx, items)
}

func TestEnginePermanentFailureHoldsLaterEvents(t *testing.T) {
	fa := newFakeApplier(func(it applier.Item, _ int) applier.Outcome {
		if it.ID() == "bad" && it.Op == dps.BulkModeCreate {
			return applier.Outcome{Class: applier.Permanent, Code: 400004, Status: 400, Reason: "DPS rejected create"}
		}
		return applier.Outcome{Class: applier.Applied}
	})
	dl := &fakeDLQ{}
	r := newRig(t, 2, Options{Apply: fa, DeadLetters: dl, Batcher: batcher.Config{Coalesce: false}})
	r.publish(
		testEvent{ID: "1", Key: "bad", Op: "create", V: 1},
		testEvent{ID: "2", Key: "good", Op: "create", V: 2},
		testEvent{ID: "3", Key: "bad", Op: "update", V: 3},
		testEvent{ID: "4", Key: "bad", Op: "delete", V: 4},
	)
	r.waitAcked(10 * time.Second)
	// Events arriving after the failure are held by the hold check.
	r.publish(testEvent{ID: "5", Key: "bad", Op: "update", V: 5})
	r.waitAcked(10 * time.Second)

	letters := dl.snapshot()
	got := map[string]string{}
	for _, l := range letters {
		got[l.EventID] = l.Class
		if l.Reason == "" {
			t.Errorf("letter of %s has no reason", l.EventID)
		}
		if l.OriginSubject != "dpsync.events.enrollment.bad" {
			t.Errorf("letter of %s: origin subject %q, want dpsync.events.enrollment.bad", l.EventID, l.OriginSubject)
		}
	}
	want := map[string]string{"1": ClassPermanent, "3": ClassHeld, "4": ClassHeld, "5": ClassHeld}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("letters: got %v, want %v", got, want)
	}
	fa.mu.Lock()
	defer fa.mu.Unlock()
	if len(fa.log["bad"]) != 0 {
		t.Fatalf("events of the failed key were applied: %v", fa.log["bad"])
	}
	if len(fa.log["good"]) != 1 {
		t.Fatalf("good key: got %v, want one create", fa.log["good"])
	}
}

func TestEngineHoldContinueLetsLaterEventsApply(t *testing.T) {
	fa := newFakeApplier(func(it applier.Item, _ int) applier.Outcome {
		if it.Op == dps.BulkModeCreate {
			return applier.Outcome{Class: applier.Permanent, Reason: "no"}
		}
		return applier.Outcome{Class: applier.Applied}
	})
	dl := &fakeDLQ{}
	r := newRig(t, 1, Options{Apply: fa, DeadLetters: dl, HoldPolicy: HoldContinue, Batcher: batcher.Config{Coalesce: false}})
	r.publish(testEvent{ID: "1", Key: "k", Op: "create"}, testEvent{ID: "2", Key: "k", Op: "update", V: 2})
	r.waitAcked(10 * time.Second)
	if n := len(dl.snapshot()); n != 1 {
		t.Fatalf("letters: got %d, want 1", n)
	}
	fa.mu.Lock()
	defer fa.mu.Unlock()
	if got := fa.log["k"]; len(got) != 1 || got[0] != "update:2" {
		t.Fatalf("applied: got %v, want [update:2]", got)
	}
}

func TestEngineRetriesTransientThenDeadLetters(t *testing.T) {
	fa := newFakeApplier(func(it applier.Item, attempt int) applier.Outcome {
		switch it.ID() {
		case "flaky":
			if attempt < 3 {
				return applier.Outcome{Class: applier.Transient, Status: 503, Reason: "DPS answered 503"}
			}
		case "down":
			return applier.Outcome{Class: applier.Transient, Status: 503, Reason: "DPS answered 503"}
		}
		return applier.Outcome{Class: applier.Applied}
	})
	dl := &fakeDLQ{}
	r := newRig(t, 2, Options{Apply: fa, DeadLetters: dl,
		Retry: RetryPolicy{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond, Budget: 300 * time.Millisecond}})
	r.publish(
		testEvent{ID: "1", Key: "flaky", Op: "create", V: 1},
		testEvent{ID: "2", Key: "flaky", Op: "delete", V: 2},
		testEvent{ID: "3", Key: "down", Op: "create", V: 3},
		testEvent{ID: "4", Key: "down", Op: "delete", V: 4},
	)
	r.waitAcked(10 * time.Second)
	fa.mu.Lock()
	flaky := strings.Join(fa.log["flaky"], ",")
	fa.mu.Unlock()
	if flaky != "create:1,delete:2" {
		t.Fatalf("flaky key applied as %q, want create:1,delete:2", flaky)
	}
	got := map[string]string{}
	for _, l := range dl.snapshot() {
		got[l.EventID] = l.Class
		if l.EventID == "3" && l.Attempts < 2 {
			t.Errorf("letter of the down key: attempts %d, want ≥ 2", l.Attempts)
		}
	}
	if want := map[string]string{"3": ClassTransient, "4": ClassHeld}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("letters: got %v, want %v", got, want)
	}
}

func TestEngineInvalidEventsGoToDeadLetters(t *testing.T) {
	fa := newFakeApplier(nil)
	dl := &fakeDLQ{failN: 2} // the first publishes fail: the engine must retry, not ack
	r := newRig(t, 1, Options{Apply: fa, DeadLetters: dl})
	r.publishRaw("x", []byte("not json"))
	r.publishRaw("y", []byte(`{"id":"2","key":"y","op":"explode"}`))
	r.publish(testEvent{ID: "3", Key: "z", Op: "create", V: 3})
	r.waitAcked(10 * time.Second)
	letters := dl.snapshot()
	if len(letters) != 2 {
		t.Fatalf("letters: got %d, want 2", len(letters))
	}
	for _, l := range letters {
		if l.Class != ClassInvalid || l.Reason == "" {
			t.Errorf("letter %+v: want class invalid with a reason", l)
		}
	}
	// The two letters are published concurrently (each retried on its own), so find the
	// undecodable event's letter by its reason, not its place.
	var keys []string
	for _, l := range letters {
		if strings.HasPrefix(l.Reason, "not JSON") {
			keys = append(keys, l.Key)
		}
	}
	if len(keys) != 1 || keys[0] != "enrollment/x" {
		t.Errorf("key of the undecodable event: got %q, want [enrollment/x] (from the subject)", keys)
	}
}

func TestEngineFencedPartitionIsNotApplied(t *testing.T) {
	fa := newFakeApplier(nil)
	var owned sync.Map
	owned.Store(0, true)
	fence := func(p int, _ uint64) bool { v, _ := owned.Load(p); return v == true }
	r := newRig(t, 1, Options{Apply: fa, DeadLetters: &fakeDLQ{}, Fence: fence})
	r.publish(testEvent{ID: "1", Key: "a", Op: "create", V: 1})
	r.waitAcked(10 * time.Second)
	owned.Store(0, false)
	r.publish(testEvent{ID: "2", Key: "a", Op: "update", V: 2})
	time.Sleep(300 * time.Millisecond)
	fa.mu.Lock()
	n := len(fa.log["a"])
	fa.mu.Unlock()
	if n != 1 {
		t.Fatalf("applied %d events of a fenced partition, want only the one before fencing", n)
	}
	if _, unacked := r.backlog(); unacked == 0 {
		t.Fatal("fenced event was acknowledged; it must stay for the new owner")
	}
}

// TestEngineStopGivesBackPendingEvents: Stop does not apply what waits in the batcher (under
// a DPS quota that could take the whole shutdown timeout); it gives it back with a nak, in
// stream order, so that the next reader gets it at once — not after AckWait — and Run
// returns nil: nothing is left unacknowledged in the worker's hands.
func TestEngineStopGivesBackPendingEvents(t *testing.T) {
	fa := newFakeApplier(nil)
	r := newRig(t, 2, Options{Apply: fa, DeadLetters: &fakeDLQ{}, Batcher: batcher.Config{Linger: time.Hour}})
	var evs []testEvent
	for i := 0; i < 7; i++ { // fewer than a full batch
		evs = append(evs, testEvent{ID: fmt.Sprint(i), Key: fmt.Sprint("k", i%3), Op: "update", V: i})
	}
	r.publish(evs...)
	// The linger is an hour: nothing goes out.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, unacked := r.backlog()
		if unacked == 7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("engine holds %d events, want 7", unacked)
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.eng.Stop()
	r.waitRunDone()
	fa.mu.Lock()
	applied := len(fa.log)
	fa.mu.Unlock()
	if applied != 0 {
		t.Fatalf("applied %d keys while stopping, want 0 (given back)", applied)
	}
	// The rig's engine keeps its events alive (InProgress every 500 ms, AckWait 2 s): only a
	// nak brings them back within a few hundred milliseconds.
	got := 0
	for p := 0; p < 2; p++ {
		got += len(r.redelivered(p, 700*time.Millisecond))
	}
	if got != 7 {
		t.Fatalf("%d events redelivered at once after Stop, want 7", got)
	}
}

// waitRunDone requires Run to return nil within 10 s (after Stop).
func (r *rig) waitRunDone() {
	r.t.Helper()
	select {
	case err := <-r.runErr:
		if err != nil {
			r.t.Fatalf("Run after Stop: %v", err)
		}
	case <-time.After(10 * time.Second):
		r.t.Fatal("Run did not return after Stop")
	}
}

// redelivered pulls partition p for within and returns the stream sequences of what comes,
// checking that each is a redelivery and that they come in stream order.
func (r *rig) redelivered(p int, within time.Duration) []uint64 {
	r.t.Helper()
	cons, err := r.stream.Consumer(context.Background(), r.cfg.ConsumerName(p))
	if err != nil {
		r.t.Fatal(err)
	}
	batch, err := cons.Fetch(100, jetstream.FetchMaxWait(within))
	if err != nil {
		r.t.Fatal(err)
	}
	var seqs []uint64
	for m := range batch.Messages() {
		meta, err := m.Metadata()
		if err != nil {
			r.t.Fatal(err)
		}
		if meta.NumDelivered < 2 {
			r.t.Errorf("partition %d: seq %d delivered %d times, want a redelivery", p, meta.Sequence.Stream, meta.NumDelivered)
		}
		if n := len(seqs); n > 0 && meta.Sequence.Stream < seqs[n-1] {
			r.t.Errorf("partition %d: seq %d redelivered after %d: not in stream order", p, meta.Sequence.Stream, seqs[n-1])
		}
		seqs = append(seqs, meta.Sequence.Stream)
	}
	return seqs
}

// TestEngineHandoverGivesBackWhatIsNotInFlight: a partition handed over (Detach with
// onDrained) gives back at once, in order, the events not in a DPS call, lets the call in
// flight finish and be acknowledged, and only then calls onDrained (the lease may go).
func TestEngineHandoverGivesBackWhatIsNotInFlight(t *testing.T) {
	release := make(chan struct{})
	var releaseOnce sync.Once
	inCall := make(chan struct{}, 1)
	fa := newFakeApplier(nil)
	ap := &blockingApplier{inner: fa, block: func(it applier.Item) {
		if it.Enrollment.DeviceID == "1" {
			inCall <- struct{}{}
			<-release
		}
	}}
	r := newRig(t, 1, Options{Apply: ap, DeadLetters: &fakeDLQ{}, Batcher: batcher.Config{Coalesce: false}})
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) }) // before the rig's: never leave the call blocked
	r.publish(testEvent{ID: "1", Key: "k", Op: "create", V: 1},
		testEvent{ID: "2", Key: "k", Op: "update", V: 2}, testEvent{ID: "3", Key: "k", Op: "update", V: 3})
	<-inCall // event 1 is in its DPS call; 2 and 3 wait behind it
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, unacked := r.backlog(); unacked == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the engine did not take all three events")
		}
		time.Sleep(10 * time.Millisecond)
	}
	drained := make(chan struct{})
	r.eng.Detach(0, func() { close(drained) })
	// Given back when the reader's open request is over (PullExpiry, 2 s), not kept alive.
	if seqs := r.redelivered(0, DefaultPullExpiry+time.Second); len(seqs) != 2 {
		t.Fatalf("redelivered after the handover began: seqs %v, want the 2 events not in flight", seqs)
	}
	select {
	case <-drained:
		t.Fatal("onDrained called while an event was in a DPS call")
	case <-time.After(100 * time.Millisecond):
	}
	releaseOnce.Do(func() { close(release) })
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("onDrained not called after the call returned")
	}
	fa.mu.Lock()
	defer fa.mu.Unlock()
	if got := strings.Join(fa.log["k"], ","); got != "create:1" {
		t.Fatalf("key k applied as %s, want create:1 (the rest is the next owner's)", got)
	}
}

// TestEngineReopensPullEndedByServer: the server ends the partition's pull (here: its
// consumer is deleted under the worker). The reader must pull again, through Reopen, so
// that the owned partition is still read.
func TestEngineReopensPullEndedByServer(t *testing.T) {
	fa := newFakeApplier(nil)
	r := newRig(t, 1, Options{Apply: fa, DeadLetters: &fakeDLQ{}})
	r.publish(testEvent{ID: "a1", Key: "a", Op: "create", V: 1})
	r.waitAcked(10 * time.Second)
	if err := r.stream.DeleteConsumer(context.Background(), r.cfg.ConsumerName(0)); err != nil {
		t.Fatal(err)
	}
	r.publish(testEvent{ID: "a2", Key: "a", Op: "update", V: 2})
	deadline := time.Now().Add(20 * time.Second)
	for {
		fa.mu.Lock()
		got := strings.Join(fa.log["a"], ",")
		fa.mu.Unlock()
		if strings.HasSuffix(got, "update:2") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the consumer was deleted: key a applied as %q, want it to end with update:2", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.waitAcked(10 * time.Second)
}

// TestEngineLaterUpdates reads a key's events from the stream after a redelivered create:
// the updates that follow it, in order, up to the first other operation, and none of
// another key's — those before the entry's newest event that are not the entry's own as
// Between (settled by a previous owner), those after it as After.
func TestEngineLaterUpdates(t *testing.T) {
	block := make(chan struct{}) // nothing is applied: the test reads the stream only
	defer close(block)
	var r *rig
	r = newRig(t, 1, Options{
		Apply:       &blockingApplier{inner: newFakeApplier(nil), block: func(applier.Item) { <-block }},
		DeadLetters: &fakeDLQ{},
		Successor: func(ctx context.Context, subject string, after uint64) ([]byte, uint64, bool, error) {
			m, err := r.stream.GetMsg(ctx, after+1, jetstream.WithGetMsgSubject(subject))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return nil, 0, false, nil
			}
			if err != nil {
				return nil, 0, false, err
			}
			return m.Data, m.Sequence, true, nil
		},
	})
	seqs := map[string]uint64{}
	for _, ev := range []testEvent{
		{ID: "1", Key: "k", Op: "create", V: 1},
		{ID: "2", Key: "other", Op: "update", V: 2},
		{ID: "3", Key: "k", Op: "update", V: 3}, // settled by a previous owner
		{ID: "4", Key: "k", Op: "update", V: 4}, // folded into the create: the entry's newest
		{ID: "5", Key: "k", Op: "update", V: 5},
		{ID: "6", Key: "k", Op: "delete", V: 6},
		{ID: "7", Key: "k", Op: "update", V: 7},
	} {
		b, _ := json.Marshal(ev)
		ack, err := r.js.Publish(context.Background(), "dpsync.events.enrollment."+ev.Key, b)
		if err != nil {
			t.Fatal(err)
		}
		seqs[ev.ID] = ack.Sequence
	}
	names := func(items []applier.Item) string {
		var got []string
		for _, it := range items {
			got = append(got, string(it.Op)+":"+it.Enrollment.DeviceID)
		}
		return strings.Join(got, ",")
	}
	subject := r.cfg.PartitionSubject(0)[:len(r.cfg.PartitionSubject(0))-1] + "enrollment.k"
	later, err := r.eng.laterUpdates(context.Background(), subject, seqs["1"], seqs["4"], map[uint64]bool{seqs["1"]: true, seqs["4"]: true})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(later.Between)+" | "+names(later.After), "update:3 | update:5"; got != want {
		t.Fatalf("successors of k's create folded with event 4: got %s, want %s (between | after)", got, want)
	}
	// The create alone: everything up to the delete comes after it.
	later, err = r.eng.laterUpdates(context.Background(), subject, seqs["1"], seqs["1"], map[uint64]bool{seqs["1"]: true})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(later.Between)+" | "+names(later.After), " | update:3,update:4,update:5"; got != want {
		t.Fatalf("successors of k's create alone: got %s, want %s (between | after)", got, want)
	}
}

// TestEngineReattachAfterLoss: the worker loses a partition while one event of a key is in
// a DPS call and the key's next event waits in the batcher, then wins the partition back
// at a new epoch. The new attachment must wait for the call to settle, the waiting event
// must come back through the new reader (not be mistaken for a copy of one still held),
// and a newer event of the key must not overtake it.
func TestEngineReattachAfterLoss(t *testing.T) {
	var epoch sync.Map // partition → owned epoch
	epoch.Store(0, uint64(1))
	fence := func(p int, e uint64) bool { v, ok := epoch.Load(p); return ok && v.(uint64) == e }
	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) }) // never leave the call blocked
	inCall := make(chan struct{}, 1)
	fa := newFakeApplier(nil)
	ap := &blockingApplier{inner: fa, block: func(it applier.Item) {
		if it.Enrollment.DeviceID == "1" {
			inCall <- struct{}{}
			<-release
		}
	}}
	r := newRig(t, 1, Options{Apply: ap, DeadLetters: &fakeDLQ{}, Fence: fence, Batcher: batcher.Config{Coalesce: false}})
	r.publish(testEvent{ID: "1", Key: "k", Op: "create", V: 1}, testEvent{ID: "2", Key: "k", Op: "update", V: 2})
	<-inCall // event 1 is in its DPS call; event 2 waits behind it

	epoch.Store(0, uint64(2)) // lost epoch 1, won epoch 2
	r.eng.Detach(0, nil)
	cons, err := r.stream.Consumer(context.Background(), r.cfg.ConsumerName(0))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.eng.Attach(0, 2, cons, ReadOptions{PullBatch: 100}); !errors.Is(err, ErrPartitionDraining) {
		t.Fatalf("attach while a call of the old attachment is in flight: got %v, want ErrPartitionDraining", err)
	}
	releaseOnce.Do(func() { close(release) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := r.eng.Attach(0, 2, cons, ReadOptions{PullBatch: 100})
		if err == nil {
			break
		}
		if !errors.Is(err, ErrPartitionDraining) || time.Now().After(deadline) {
			t.Fatalf("attach after the call settled: got %v, want nil", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.publish(testEvent{ID: "3", Key: "k", Op: "update", V: 3})
	r.waitAcked(20 * time.Second)
	fa.mu.Lock()
	defer fa.mu.Unlock()
	if got, want := strings.Join(fa.log["k"], ","), "create:1,update:2,update:3"; got != want {
		t.Fatalf("key k applied as %s, want %s", got, want)
	}
}

// TestEngineRejectsEventOnAnotherKeysSubject: the subject decides the partition, so an
// event whose subject does not carry its own key could be applied concurrently with its
// key's other events. It is dead-lettered as invalid, with the subject to use; the letter
// points replay at that subject.
func TestEngineRejectsEventOnAnotherKeysSubject(t *testing.T) {
	fa := newFakeApplier(nil)
	dl := &fakeDLQ{}
	r := newRig(t, 2, Options{Apply: fa, DeadLetters: dl})
	b, _ := json.Marshal(testEvent{ID: "1", Key: "a", Op: "create", V: 1})
	r.publishRaw("b", b)                                        // a's event on b's subject
	r.publish(testEvent{ID: "2", Key: "c", Op: "create", V: 2}) // and a good one
	r.waitAcked(10 * time.Second)
	letters := dl.snapshot()
	if len(letters) != 1 {
		t.Fatalf("got %d letters, want 1", len(letters))
	}
	l := letters[0]
	wantReason := `subject dpsync.events.enrollment.b does not match the event's registration id "a": publish it to dpsync.events.enrollment.a`
	if l.Class != ClassInvalid || l.Reason != wantReason || l.OriginSubject != "dpsync.events.enrollment.a" {
		t.Fatalf("letter: class %q, reason %q, origin %q; want invalid, %q, dpsync.events.enrollment.a", l.Class, l.Reason, l.OriginSubject, wantReason)
	}
	fa.mu.Lock()
	defer fa.mu.Unlock()
	if len(fa.log["a"]) != 0 || len(fa.log["c"]) != 1 {
		t.Fatalf("applied: a %v, c %v; want none of a, c once", fa.log["a"], fa.log["c"])
	}
}

// TestEngineRemovesReplayedLetters: a replayed event names its letter (Dpsync-Replay-Of).
// Once the event is settled — applied, or dead-lettered again under a new letter — the engine
// removes the old letter, and only then acknowledges the event: the letter holds the key's
// newer events until its replay is done.
func TestEngineRemovesReplayedLetters(t *testing.T) {
	fa := newFakeApplier(func(it applier.Item, _ int) applier.Outcome {
		if it.ID() == "bad" {
			return applier.Outcome{Class: applier.Permanent, Code: 400004, Status: 400, Reason: "still wrong"}
		}
		return applier.Outcome{Class: applier.Applied}
	})
	dl := &fakeDLQ{settleFailN: 3} // the first removals fail: the engine retries, no ack before
	r := newRig(t, 1, Options{Apply: fa, DeadLetters: dl})
	var ackedFirst []string
	dl.onSettle = func() {
		if _, unacked := r.backlog(); unacked == 0 {
			ackedFirst = append(ackedFirst, "a replayed event was acknowledged before its letter was removed")
		}
	}
	replay := func(ev testEvent, letter string) {
		b, _ := json.Marshal(ev)
		m := &nats.Msg{Subject: "dpsync.events.enrollment." + ev.Key, Data: b, Header: nats.Header{}}
		m.Header.Set(HeaderReplayOf, letter)
		if _, err := r.js.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	replay(testEvent{ID: "1", Key: "good", Op: "create", V: 1}, "41")
	replay(testEvent{ID: "2", Key: "bad", Op: "create", V: 2}, "42")
	r.publish(testEvent{ID: "3", Key: "other", Op: "create", V: 3}) // not a replay
	r.waitAcked(20 * time.Second)
	dl.mu.Lock()
	got := append([]string(nil), dl.settled...)
	if len(ackedFirst) > 0 {
		t.Error(ackedFirst[0])
	}
	dl.mu.Unlock()
	slices.Sort(got)
	if want := []string{"enrollment/bad#42", "enrollment/good#41"}; !slices.Equal(got, want) {
		t.Fatalf("letters removed: got %v, want %v", got, want)
	}
	if letters := dl.snapshot(); len(letters) != 1 || letters[0].EventID != "2" {
		t.Fatalf("new letters: got %+v, want one, for event 2", letters)
	}
}

// TestEngineFormsBatchesWithinTheBudget: while the DPS budget allows no call, the engine
// forms no batch: a create waiting for budget still folds in the update that arrives after
// it (one call with the update's content), where a batch formed at once would have sent the
// create alone and the update after it.
func TestEngineFormsBatchesWithinTheBudget(t *testing.T) {
	var open atomic.Bool
	budget := func() (int, time.Duration) {
		if open.Load() {
			return 1, 0
		}
		return 0, 20 * time.Millisecond
	}
	fa := newFakeApplier(nil)
	r := newRig(t, 1, Options{Apply: fa, DeadLetters: &fakeDLQ{}, Budget: budget, Batcher: batcher.Config{Coalesce: true}})
	r.publish(testEvent{ID: "1", Key: "k", Op: "create", V: 1})
	time.Sleep(100 * time.Millisecond) // well past the rig's 5 ms linger
	r.publish(testEvent{ID: "2", Key: "k", Op: "update", V: 2})
	time.Sleep(100 * time.Millisecond)
	fa.mu.Lock()
	calls := fa.calls
	fa.mu.Unlock()
	if calls != 0 {
		t.Fatalf("%d DPS calls without budget, want 0", calls)
	}
	open.Store(true)
	r.waitAcked(10 * time.Second)
	fa.mu.Lock()
	defer fa.mu.Unlock()
	if got := strings.Join(fa.log["k"], ","); got != "create:2" || fa.calls != 1 {
		t.Fatalf("key k applied as %q in %d calls, want create:2 in 1 (create and update folded)", got, fa.calls)
	}
}

// TestEngineLaterEventWaitsForAnInvalidEventsLetter: an invalid event's letter is stored
// outside a batch. Until it is stored the hold check cannot see it, so the key's next event
// must wait for it — and then follow it into the dead-letter stream — rather than be applied
// (seen in TestFreezeWorkerNode when a frozen node delayed the letter).
func TestEngineLaterEventWaitsForAnInvalidEventsLetter(t *testing.T) {
	gate := make(chan struct{})
	var gateOnce sync.Once
	open := func() { gateOnce.Do(func() { close(gate) }) }
	fa := newFakeApplier(nil)
	dl := &fakeDLQ{beforePublish: func(l Letter) {
		if l.Class == ClassInvalid {
			<-gate // the dead-letter stream is slow
		}
	}}
	r := newRig(t, 1, Options{Apply: fa, DeadLetters: dl, HoldCheckRetry: 10 * time.Millisecond})
	t.Cleanup(open) // registered after the rig's, so it runs first: the engine can stop
	r.publishRaw("k", []byte("not json"))
	r.publish(testEvent{ID: "2", Key: "k", Op: "create", V: 2}, testEvent{ID: "3", Key: "other", Op: "create", V: 3})
	deadline := time.Now().Add(10 * time.Second)
	for { // the other key is not held up
		fa.mu.Lock()
		n := len(fa.log["other"])
		fa.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the other key was not applied while k waited")
		}
		time.Sleep(10 * time.Millisecond)
	}
	fa.mu.Lock()
	applied := len(fa.log["k"])
	fa.mu.Unlock()
	if applied != 0 {
		t.Fatalf("k's create was applied while the invalid event's letter was not stored yet")
	}
	open()
	r.waitAcked(10 * time.Second)
	var classes []string
	for _, l := range dl.snapshot() {
		classes = append(classes, l.Key+":"+l.Class)
	}
	slices.Sort(classes)
	if want := []string{"enrollment/k:held", "enrollment/k:invalid"}; !slices.Equal(classes, want) {
		t.Fatalf("letters: got %v, want %v", classes, want)
	}
	fa.mu.Lock()
	defer fa.mu.Unlock()
	if len(fa.log["k"]) != 0 {
		t.Fatalf("k applied as %v, want nothing (its create follows the invalid event)", fa.log["k"])
	}
}

// TestEngineAppliesAReplayOnce: a replay re-run after the stream's duplicate window stores a
// second copy of the replayed event. The first copy's settlement removed the letter; the
// second finds it gone and is acknowledged without being applied (applied, it would undo
// newer events of the key applied in between).
func TestEngineAppliesAReplayOnce(t *testing.T) {
	fa := newFakeApplier(nil)
	dl := &fakeDLQ{}
	r := newRig(t, 1, Options{Apply: fa, DeadLetters: dl})
	replay := func(id string) {
		b, _ := json.Marshal(testEvent{ID: id, Key: "k", Op: "create", V: 1})
		m := &nats.Msg{Subject: "dpsync.events.enrollment.k", Data: b, Header: nats.Header{}}
		m.Header.Set(HeaderReplayOf, "7")
		if _, err := r.js.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	replay("copy-1")
	r.waitAcked(10 * time.Second)
	r.publish(testEvent{ID: "2", Key: "k", Op: "update", V: 2}) // newer, applied
	r.waitAcked(10 * time.Second)
	replay("copy-2")
	r.waitAcked(10 * time.Second)
	fa.mu.Lock()
	defer fa.mu.Unlock()
	if got, want := strings.Join(fa.log["k"], ","), "create:1,update:2"; got != want {
		t.Fatalf("key k applied as %s, want %s (the second copy of the replay dropped)", got, want)
	}
}

// capturingApplier records the items it is given and applies them.
type capturingApplier struct {
	mu    sync.Mutex
	items []applier.Item
}

func (c *capturingApplier) Apply(_ context.Context, items []applier.Item) []applier.Outcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.items = append(c.items, items...)
	return make([]applier.Outcome, len(items)) // applied
}

// TestEngineGivesAFoldedCreateItsPrior: a create that updates were folded into carries the
// contents of the create and of every update but the last (applier.Item.Prior), so the
// applier can tell that a previous attempt applied part of the group.
func TestEngineGivesAFoldedCreateItsPrior(t *testing.T) {
	var open atomic.Bool
	ca := &capturingApplier{}
	r := newRig(t, 1, Options{Apply: ca, DeadLetters: &fakeDLQ{}, Batcher: batcher.Config{Coalesce: true},
		Budget: func() (int, time.Duration) {
			if open.Load() {
				return 1, 0
			}
			return 0, 10 * time.Millisecond
		}})
	r.publish(testEvent{ID: "1", Key: "k", Op: "create", V: 1}, testEvent{ID: "2", Key: "k", Op: "update", V: 2},
		testEvent{ID: "3", Key: "k", Op: "update", V: 3})
	time.Sleep(100 * time.Millisecond) // all three reach the batcher before any batch forms
	open.Store(true)
	r.waitAcked(10 * time.Second)
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if len(ca.items) != 1 {
		t.Fatalf("got %d items, want 1 (folded)", len(ca.items))
	}
	it := ca.items[0]
	var prior []string
	for _, p := range it.Prior {
		prior = append(prior, p.Enrollment.DeviceID)
	}
	if it.Op != dps.BulkModeCreate || it.Enrollment.DeviceID != "3" || strings.Join(prior, ",") != "1,2" {
		t.Fatalf("item: %s of content %s with prior %v, want create of 3 with prior [1 2]", it.Op, it.Enrollment.DeviceID, prior)
	}
}

// TestEngineStoresNoLetterForALostPartition: a dead letter decides the order of the key's
// later events, so it is stored only while the partition is this worker's. A worker that
// lost the partition while its letter could not be stored (a slow dead-letter stream) stores
// nothing later; it gives the event back for the partition's next owner.
func TestEngineStoresNoLetterForALostPartition(t *testing.T) {
	var epoch atomic.Uint64
	epoch.Store(1)
	fa := newFakeApplier(func(it applier.Item, _ int) applier.Outcome {
		return applier.Outcome{Class: applier.Permanent, Code: 409201, Status: 409, Reason: "exists"}
	})
	var attempts atomic.Int32
	dl := &fakeDLQ{failN: 1_000_000, beforePublish: func(Letter) {
		if attempts.Add(1) == 2 {
			epoch.Store(2) // the lease lapses while the stream refuses the letter
		}
	}}
	r := newRig(t, 1, Options{Apply: fa, DeadLetters: dl, Fence: func(_ int, e uint64) bool { return e == epoch.Load() }})
	r.publish(testEvent{ID: "1", Key: "k", Op: "create", V: 1})
	deadline := time.Now().Add(10 * time.Second)
	for attempts.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d letter publish attempts, want 2", attempts.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Given back once the reader's open request is over: the server redelivers it at once
	// (nak), not after AckWait.
	if seqs := r.redelivered(0, DefaultPullExpiry+time.Second); len(seqs) != 1 {
		t.Fatalf("the event was not given back: redelivered %v, want its one seq", seqs)
	}
	time.Sleep(300 * time.Millisecond)
	if n := attempts.Load(); n != 2 {
		t.Fatalf("%d publish attempts, want 2 (none after the partition was lost)", n)
	}
	if letters := dl.snapshot(); len(letters) != 0 {
		t.Fatalf("%d letters stored for a lost partition, want 0", len(letters))
	}
}

// newUnattached starts an engine (fake applier) and a one-partition stream and consumer
// (AckWait 2 s) without attaching the partition: the test plays a previous owner first.
func newUnattached(t *testing.T) (jetstream.JetStream, *Engine, jetstream.Consumer, *fakeApplier) {
	t.Helper()
	js, _ := startJS(t)
	ctx := context.Background()
	cfg := StreamConfig{Partitions: 1, MemoryStorage: true}
	s, err := EnsureStream(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	fa := newFakeApplier(nil)
	eng, err := NewEngine(Options{Stream: cfg, Decode: testDecode, Apply: fa, DeadLetters: &fakeDLQ{},
		KeepAlive: 500 * time.Millisecond, Batcher: batcher.Config{Linger: 5 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	go func() { _ = eng.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-eng.Done() })
	cons, err := EnsureConsumer(ctx, s, cfg, ConsumerConfig{AckWait: 2 * time.Second}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return js, eng, cons, fa
}

// TestEngineHandsOnRedeliveriesInStreamOrder: the server redelivers a previous owner's
// events in the order their ack timers ran out, not in stream order. Here the previous
// owner's events of one key come back newest first (naked in reverse order); the new
// attachment collects as many as the consumer counts unacknowledged and applies them in
// stream order.
func TestEngineHandsOnRedeliveriesInStreamOrder(t *testing.T) {
	js, eng, cons, fa := newUnattached(t)
	ctx := context.Background()
	for i, op := range []string{"create", "update", "update"} {
		b, _ := json.Marshal(testEvent{ID: fmt.Sprint(i + 1), Key: "k", Op: op, V: i + 1})
		if _, err := js.Publish(ctx, "dpsync.events.enrollment.k", b); err != nil {
			t.Fatal(err)
		}
	}
	// The previous owner: pulled all three and gives them back newest first.
	batch, err := cons.Fetch(3, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != 3 {
		t.Fatalf("previous owner pulled %d events, want 3", len(msgs))
	}
	for i := len(msgs) - 1; i >= 0; i-- {
		if err := msgs[i].Nak(); err != nil {
			t.Fatal(err)
		}
	}
	if err := eng.Attach(0, 1, cons, ReadOptions{PullBatch: 100}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		fa.mu.Lock()
		got := strings.Join(fa.log["k"], ",")
		fa.mu.Unlock()
		if strings.Count(got, ":") == 3 {
			if want := "create:1,update:2,update:3"; got != want {
				t.Fatalf("key k applied as %s, want %s", got, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("key k applied as %q after 10s, want 3 events", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fakeMsg is a jetstream.Msg that records what the engine does with it.
type fakeMsg struct {
	subject string
	data    []byte
	meta    jetstream.MsgMetadata
	mu      sync.Mutex
	acks    int
	naks    int
}

func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) { md := m.meta; return &md, nil }
func (m *fakeMsg) Data() []byte                              { return m.data }
func (m *fakeMsg) Headers() nats.Header                      { return nats.Header{} }
func (m *fakeMsg) Subject() string                           { return m.subject }
func (m *fakeMsg) Reply() string                             { return "" }
func (m *fakeMsg) Ack() error                                { return m.DoubleAck(context.Background()) }
func (m *fakeMsg) DoubleAck(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.acks++
	return nil
}
func (m *fakeMsg) Nak() error                       { m.mu.Lock(); defer m.mu.Unlock(); m.naks++; return nil }
func (m *fakeMsg) NakWithDelay(time.Duration) error { return m.Nak() }
func (m *fakeMsg) InProgress() error                { return nil }
func (m *fakeMsg) Term() error                      { return nil }
func (m *fakeMsg) TermWithReason(string) error      { return nil }
func (m *fakeMsg) counts() (acks, naks int)         { m.mu.Lock(); defer m.mu.Unlock(); return m.acks, m.naks }

// readerless runs an engine of one partition without readers: the test hands it messages
// itself (send), made by fakeEvent.
func readerless(t *testing.T, b batcher.Config) (*Engine, *fakeApplier) {
	t.Helper()
	fa := newFakeApplier(nil)
	eng, err := NewEngine(Options{Stream: StreamConfig{Partitions: 1}, Decode: testDecode, Apply: fa, DeadLetters: &fakeDLQ{}, Batcher: b})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = eng.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-eng.Done() })
	return eng, fa
}

// fakeEvent is ev as the server delivers it at stream sequence seq, for the delivered-th time.
func fakeEvent(seq, delivered uint64, ev testEvent) *fakeMsg {
	b, _ := json.Marshal(ev)
	return &fakeMsg{subject: "dpsync.part.0.enrollment." + ev.Key, data: b,
		meta: jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: seq}, NumDelivered: delivered}}
}

// ackedOnce waits up to 5 s until each of ms was acknowledged, and requires each to be
// acknowledged exactly once; what says what the wait is for.
func ackedOnce(t *testing.T, what string, ms ...*fakeMsg) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		all, acks := true, make([]int, len(ms))
		for i, m := range ms {
			acks[i], _ = m.counts()
			all = all && acks[i] > 0
		}
		if all {
			for i, n := range acks {
				if n != 1 {
					t.Fatalf("%s: message %d acknowledged %d times, want once", what, i+1, n)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not acknowledged within 5s (acks %v)", what, acks)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// send hands m to eng's loop as the reader of partition 0 (epoch 1) would.
func send(eng *Engine, m jetstream.Msg) {
	in := inbound{msg: m, partition: 0, epoch: 1}
	in.meta, in.metaErr = m.Metadata()
	in.dec, in.decErr = testDecode(m.Data())
	eng.in <- in
}

// TestEngineDropsASettledEventDeliveredAsNew: after a consumer-leader failover the new
// leader may deliver an event it does not know was delivered (and acknowledged) as a first
// delivery. An event whose stream sequence the engine settled is acknowledged and dropped,
// whatever its delivery count.
func TestEngineDropsASettledEventDeliveredAsNew(t *testing.T) {
	eng, fa := readerless(t, batcher.Config{Linger: time.Millisecond})
	deliver := func(seq uint64, delivered uint64, ev testEvent) *fakeMsg {
		m := fakeEvent(seq, delivered, ev)
		send(eng, m)
		return m
	}
	ackedOnce(t, "event a", deliver(5, 1, testEvent{ID: "a", Key: "k", Op: "update", V: 1}))
	ackedOnce(t, "event b", deliver(7, 1, testEvent{ID: "b", Key: "k", Op: "delete", V: 2}))
	again := deliver(5, 1, testEvent{ID: "a", Key: "k", Op: "update", V: 1}) // as new
	ackedOnce(t, "the copy of a delivered as new", again)
	fa.mu.Lock()
	defer fa.mu.Unlock()
	if got, want := strings.Join(fa.log["k"], ","), "update:1,delete:2"; got != want {
		t.Fatalf("key k applied as %s, want %s (the settled update not applied again)", got, want)
	}
}

// slowAckMsg is a fakeMsg whose acknowledgement waits for release.
type slowAckMsg struct {
	*fakeMsg
	release chan struct{}
}

func (m *slowAckMsg) DoubleAck(ctx context.Context) error {
	select {
	case <-m.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return m.fakeMsg.DoubleAck(ctx)
}

// TestEngineFreesTheSlotWhenDPSCallsReturn: the number of batches in flight bounds DPS calls,
// not acknowledgements: while one batch's acks are on their way, the next batch is applied
// (its key is another); the first batch's key stays blocked until its acks are confirmed.
func TestEngineFreesTheSlotWhenDPSCallsReturn(t *testing.T) {
	eng, fa := readerless(t, batcher.Config{Linger: time.Millisecond, MaxInFlight: 1})
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	f1 := fakeEvent(1, 1, testEvent{ID: "1", Key: "k1", Op: "create", V: 1})
	send(eng, &slowAckMsg{fakeMsg: f1, release: release})
	m2 := fakeEvent(2, 1, testEvent{ID: "2", Key: "k1", Op: "update", V: 2})
	send(eng, m2)
	send(eng, fakeEvent(3, 1, testEvent{ID: "3", Key: "k2", Op: "delete", V: 3})) // another group: a batch of its own
	deadline := time.Now().Add(5 * time.Second)
	for { // k2 applied while k1's first ack is still waiting
		fa.mu.Lock()
		n2, n1 := len(fa.log["k2"]), len(fa.log["k1"])
		fa.mu.Unlock()
		if n2 == 1 {
			if n1 != 1 {
				t.Fatalf("k1 applied %d times while its first event's ack waits, want 1 (its next event held)", n1)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("k2 was not applied while k1's batch waited for its acks: the slot was not freed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	once.Do(func() { close(release) })
	ackedOnce(t, "k1's second event, applied after the first one's ack", m2)
}

func TestSettledSet(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	s := newSettledSet(time.Minute)
	// A dense run of a million sequences, as one worker settles them, and a few far away.
	for seq := uint64(1); seq <= 1_000_000; seq++ {
		s.add(seq, t0.Add(time.Duration(seq)*time.Microsecond))
	}
	s.add(50_000_000, t0.Add(2*time.Minute))
	for _, seq := range []uint64{1, 4095, 4096, 4097, 777_777, 1_000_000, 50_000_000} {
		if !s.has(seq) {
			t.Errorf("seq %d settled but not remembered", seq)
		}
	}
	for _, seq := range []uint64{0, 1_000_001, 49_999_999, 50_000_001} {
		if s.has(seq) {
			t.Errorf("seq %d never settled but remembered", seq)
		}
	}
	if n, max := len(s.blocks), 1_000_000/settledBlockSize+2; n > max {
		t.Errorf("%d blocks for a dense million and one more, want at most %d", n, max)
	}
	// One minute after the run's last add, its blocks go; the far one (added later) stays.
	s.prune(t0.Add(time.Second + time.Minute + time.Millisecond))
	if s.has(1) || s.has(1_000_000) || !s.has(50_000_000) {
		t.Errorf("after prune: has(1)=%v has(1e6)=%v has(5e7)=%v, want false false true", s.has(1), s.has(1_000_000), s.has(50_000_000))
	}
	// The bound holds for sequences spread one per block; the least recently used go first.
	s = newSettledSet(time.Hour)
	for i := uint64(0); i < maxSettledBlocks+10; i++ {
		s.add(i*settledBlockSize, t0.Add(time.Duration(i)*time.Millisecond))
	}
	if len(s.blocks) != maxSettledBlocks {
		t.Errorf("%d blocks, want the bound %d", len(s.blocks), maxSettledBlocks)
	}
	if s.has(0) || !s.has((maxSettledBlocks+9)*settledBlockSize) {
		t.Error("the bound dropped the wrong block: want the least recently added to go")
	}
}

// TestEngineStopRefusesNewPartitions: a partition acquired while the worker stops (another
// stopping worker released it) must not be read: a reader started then would keep the
// engine from ever finishing its stop.
func TestEngineStopRefusesNewPartitions(t *testing.T) {
	r := newRig(t, 1, Options{Apply: newFakeApplier(nil), DeadLetters: &fakeDLQ{}})
	cons, err := r.stream.Consumer(context.Background(), r.cfg.ConsumerName(0))
	if err != nil {
		t.Fatal(err)
	}
	r.eng.Stop()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := r.eng.Attach(1, 1, cons, ReadOptions{}) // a partition it did not read before
		if errors.Is(err, ErrStopping) {
			break
		}
		if err == nil {
			t.Fatal("Attach after Stop started a reader")
		}
		if time.Now().After(deadline) {
			t.Fatalf("Attach after Stop: %v, want ErrStopping", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.waitRunDone()
}

// appliedOrder waits until key's applied log has n entries and requires their values (the
// events' V) in publish order: 1, 2, …, n.
func appliedOrder(t *testing.T, fa *fakeApplier, key string, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		fa.mu.Lock()
		got := slices.Clone(fa.log[key])
		fa.mu.Unlock()
		if len(got) >= n {
			want := make([]string, 0, n)
			for i := 1; i <= n; i++ {
				want = append(want, fmt.Sprint(i))
			}
			vs := make([]string, 0, len(got))
			for _, g := range got {
				vs = append(vs, g[strings.IndexByte(g, ':')+1:])
			}
			if !slices.Equal(vs, want) {
				t.Fatalf("key %s applied as %v, want the values in publish order %v", key, got, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("key %s applied as %v after %v, want %d events", key, got, within, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestEngineWaitsForAnEventDeliveredElsewhereAtStart: when the reader starts, an event of
// the partition is delivered to another request and unacknowledged (a previous owner's,
// its answer lost). The reader must not apply the key's later events before that one comes
// back (after AckWait): it collects until nothing is unacknowledged out of its hands.
func TestEngineWaitsForAnEventDeliveredElsewhereAtStart(t *testing.T) {
	js, eng, cons, fa := newUnattached(t)
	ctx := context.Background()
	publish := func(v int, op string) {
		b, _ := json.Marshal(testEvent{ID: fmt.Sprint(v), Key: "k", Op: op, V: v})
		if _, err := js.Publish(ctx, "dpsync.events.enrollment.k", b); err != nil {
			t.Fatal(err)
		}
	}
	publish(1, "create")
	// Delivered elsewhere, neither acknowledged nor given back.
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for range batch.Messages() {
		n++
	}
	if n != 1 {
		t.Fatalf("the other request got %d events, want 1", n)
	}
	publish(2, "delete")
	publish(3, "create")
	if err := eng.Attach(0, 1, cons, ReadOptions{PullBatch: 100}); err != nil {
		t.Fatal(err)
	}
	appliedOrder(t, fa, "k", 3, 15*time.Second)
}

// TestEngineResyncsAfterADeliveryWentElsewhere: while the engine reads a partition, another
// pull request on its consumer (a paused previous owner's, registered by the server only
// when its node resumed) takes one event and never answers. The engine reads the key's
// next event, sees the gap in the consumer's delivery sequence, and must not apply it
// before the taken event comes back: each key's events are applied in publish order.
func TestEngineResyncsAfterADeliveryWentElsewhere(t *testing.T) {
	fa := newFakeApplier(nil)
	var stepMu sync.Mutex
	var steps []string // what the reader reported to InStep
	r := newRig(t, 1, Options{Apply: fa, DeadLetters: &fakeDLQ{}, InStep: func(p int, epoch uint64, in bool) {
		stepMu.Lock()
		defer stepMu.Unlock()
		steps = append(steps, fmt.Sprintf("p%d@%d:%v", p, epoch, in))
	}})
	ctx := context.Background()
	cons, err := r.stream.Consumer(ctx, r.cfg.ConsumerName(0))
	if err != nil {
		t.Fatal(err)
	}
	ops := []string{"create", "update", "delete"}
	v := 0
	publishNext := func() {
		v++
		r.publish(testEvent{ID: fmt.Sprint(v), Key: "k", Op: ops[(v-1)%len(ops)], V: v})
	}
	publishNext()
	appliedOrder(t, fa, "k", 1, 10*time.Second) // the engine reads
	taken := make(chan uint64, 1)
	go func() {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			taken <- 0
			return
		}
		for m := range batch.Messages() {
			meta, _ := m.Metadata()
			taken <- meta.Sequence.Stream // and never acknowledged
			return
		}
		taken <- 0
	}()
	time.Sleep(100 * time.Millisecond) // the other request is registered
	var seq uint64
	for seq == 0 && v < 50 {
		publishNext()
		select {
		case seq = <-taken:
			if seq == 0 {
				t.Fatal("the other request got no event")
			}
		case <-time.After(50 * time.Millisecond):
		}
	}
	if seq == 0 {
		t.Fatal("the other request took no event of 50")
	}
	publishNext() // read by the engine after the taken one
	publishNext()
	appliedOrder(t, fa, "k", v, 15*time.Second)
	r.waitAcked(10 * time.Second)
	// In step at attach, out of step at the gap, in step again once the taken event is back
	// in its hands (a handover meanwhile is unsettled: membership.Membership.InStep).
	stepMu.Lock()
	defer stepMu.Unlock()
	got := strings.Join(slices.Compact(slices.Clone(steps)), ",")
	if want := "p0@1:true,p0@1:false,p0@1:true"; got != want {
		t.Fatalf("InStep reports: %s, want %s", got, want)
	}
}

// TestEngineAcksAKeysNewestEventLast: of a key's events settled together (a folded group),
// the newest is acknowledged only once the others' acks are confirmed. A worker that dies in
// between then leaves the newest unacknowledged, so what comes back of the key ends with the
// content DPS got last. Acknowledged all at once, the group's create could come back alone
// after the update folded into it was settled: its next owner finds the update's content on
// DPS, neither the create's nor a later event's, and dead-letters the create (409201).
func TestEngineAcksAKeysNewestEventLast(t *testing.T) {
	eng, fa := readerless(t, batcher.Config{Coalesce: true, Linger: 300 * time.Millisecond})
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	f1 := fakeEvent(1, 1, testEvent{ID: "1", Key: "k", Op: "create", V: 1})
	send(eng, &slowAckMsg{fakeMsg: f1, release: release}) // its ack waits
	m2 := fakeEvent(2, 1, testEvent{ID: "2", Key: "k", Op: "update", V: 2})
	send(eng, m2)
	m3 := fakeEvent(3, 1, testEvent{ID: "3", Key: "k", Op: "update", V: 3})
	send(eng, m3)
	deadline := time.Now().Add(5 * time.Second)
	for {
		fa.mu.Lock()
		got := strings.Join(fa.log["k"], ",")
		fa.mu.Unlock()
		if got != "" {
			if got != "create:3" {
				t.Fatalf("key k applied as %s, want the folded create:3", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("key k not applied within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The create and the update between are acknowledged together; the newest waits.
	ackedOnce(t, "k's middle event, while its create's ack waits", m2)
	time.Sleep(100 * time.Millisecond)
	if acks, _ := m3.counts(); acks != 0 {
		t.Fatal("the newest event of k was acknowledged while the ack of its create was not confirmed")
	}
	once.Do(func() { close(release) })
	ackedOnce(t, "k's events after the release", f1, m2, m3)
}
