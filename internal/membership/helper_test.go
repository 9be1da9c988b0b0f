package membership

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/dpsync/dpsync/internal/embedded/natstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Short timings for the real-server tests: takeover after 1s, Owns false 200ms before.
const (
	testTTL    = time.Second
	testMargin = 200 * time.Millisecond
	testRenew  = 250 * time.Millisecond
	testDrain  = 500 * time.Millisecond
	testParts  = 16
	// slack is added to liveness deadlines (takeover, handover): the machine running the
	// tests may be loaded. Safety checks (fencing order, no two owners) have no slack.
	slack = time.Second
)

// fleet is a real JetStream server and the members started on it.
type fleet struct {
	t   *testing.T
	srv *server.Server

	mu        sync.Mutex
	intervals []*interval
}

// newFleet starts a JetStream server with its store in t.TempDir on a random port.
func newFleet(t *testing.T) *fleet {
	t.Helper()
	s := natstest.Start(t).Server()
	return &fleet{t: t, srv: s}
}

// js opens a new connection (one per member, as separate processes would).
func (f *fleet) js() jetstream.JetStream {
	f.t.Helper()
	nc, err := nats.Connect(f.srv.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		f.t.Fatal(err)
	}
	return js
}

// member is one worker's Membership with its Run goroutine.
type member struct {
	*Membership
	f      *fleet
	cancel context.CancelFunc
	done   chan error
}

func testOptions(id string) Options {
	return Options{
		WorkerID:     id,
		Partitions:   testParts,
		LeaseTTL:     testTTL,
		SafetyMargin: testMargin,
		RenewEvery:   testRenew,
		DrainTimeout: testDrain,
		Logger:       testLogger(),
	}
}

func testLogger() *slog.Logger {
	if os.Getenv("MEMBERSHIP_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// join creates a member with testOptions(id) changed by mod and starts its Run.
func (f *fleet) join(id string, mod func(*Options)) *member {
	f.t.Helper()
	o := testOptions(id)
	if mod != nil {
		mod(&o)
	}
	m, err := New(context.Background(), f.js(), o)
	if err != nil {
		f.t.Fatal(err)
	}
	m.onInterval = func(iv *interval) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.intervals = append(f.intervals, iv)
	}
	w := &member{Membership: m, f: f}
	f.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = m.Close(ctx)
		w.stopRun()
	})
	w.run()
	return w
}

// joinReleasing joins a member whose OnChange releases each draining partition at once, as
// a worker does that holds no event of it: its handovers are settled (Lease.Clean).
func (f *fleet) joinReleasing(id string) *member {
	f.t.Helper()
	var self atomic.Pointer[Membership]
	w := f.join(id, func(o *Options) {
		o.OnChange = func(a Assignment) {
			for _, l := range a.Leases {
				if l.Draining {
					go func() {
						for self.Load() == nil {
							time.Sleep(time.Millisecond)
						}
						self.Load().Release(l.Partition, l.Epoch)
					}()
				}
			}
		}
	})
	self.Store(w.Membership)
	return w
}

// run starts (or restarts) Run in a goroutine.
func (w *member) run() {
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	w.done = make(chan error, 1)
	done := w.done
	go func() { done <- w.Run(ctx) }()
}

// stopRun ends Run without Close: what a crash or a pause looks like to the others.
func (w *member) stopRun() {
	if w.cancel == nil {
		return
	}
	w.cancel()
	if err := <-w.done; err != nil {
		w.f.t.Errorf("%s: Run returned %v", w.WorkerID(), err)
	}
	w.cancel = nil
}

// close stops the member gracefully.
func (w *member) close() {
	w.f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		w.f.t.Errorf("%s: Close: %v", w.WorkerID(), err)
	}
	if w.cancel != nil {
		if err := <-w.done; err != nil {
			w.f.t.Errorf("%s: Run returned %v", w.WorkerID(), err)
		}
		w.cancel()
		w.cancel = nil
	}
}

// owned lists the partitions m answers Owns for.
func owned(m *Membership) []int {
	var ps []int
	for p := range m.Partitions() {
		if _, ok := m.Owns(p); ok {
			ps = append(ps, p)
		}
	}
	return ps
}

// eventually polls cond every 10ms until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, cond func() bool, what string, args ...any) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("not within %v: "+what, append([]any{within}, args...)...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// split returns whether every partition is owned by exactly one of ms, and the counts.
func split(ms ...*member) (bool, []int) {
	owners := make([]int, testParts)
	counts := make([]int, len(ms))
	for i, m := range ms {
		for _, p := range owned(m.Membership) {
			owners[p]++
			counts[i]++
		}
	}
	for _, n := range owners {
		if n != 1 {
			return false, counts
		}
	}
	return true, counts
}

// fair reports whether ms own all partitions, each ⌊P/M⌋ or ⌈P/M⌉, none draining.
func fair(ms ...*member) bool {
	ok, counts := split(ms...)
	if !ok {
		return false
	}
	lo, hi := testParts/len(ms), (testParts+len(ms)-1)/len(ms)
	for i, c := range counts {
		if c < lo || c > hi {
			return false
		}
		for _, l := range ms[i].Assignment().Leases {
			if l.Draining {
				return false
			}
		}
	}
	return true
}

// checkIntervals fails the test if two ownerships of one partition overlap in time. Call it
// after every member stopped (Close or stopRun): intervals are then final.
func (f *fleet) checkIntervals() int {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	by := map[int][]interval{}
	for _, iv := range f.intervals {
		by[iv.partition] = append(by[iv.partition], *iv)
	}
	n := 0
	for p, ivs := range by {
		slices.SortFunc(ivs, func(a, b interval) int { return a.from.Compare(b.from) })
		for i := 1; i < len(ivs); i++ {
			a, b := ivs[i-1], ivs[i]
			n++
			if !a.to.Before(b.from) {
				f.t.Errorf("partition %d: %s epoch %d owned until %v, %s epoch %d from %v: overlap %v",
					p, a.worker, a.epoch, a.to.Format(time.StampMicro), b.worker, b.epoch,
					b.from.Format(time.StampMicro), a.to.Sub(b.from))
			}
			if b.epoch <= a.epoch {
				f.t.Errorf("partition %d: epoch went from %d to %d", p, a.epoch, b.epoch)
			}
		}
	}
	return n
}

func (f *fleet) String() string { return fmt.Sprintf("fleet(%s)", f.srv.ClientURL()) }
