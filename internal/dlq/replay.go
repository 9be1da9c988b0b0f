package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Operations an event can carry; ReplayOptions.As takes one of them.
var Operations = []string{"create", "update", "updateIfMatchETag", "delete"}

func validOperation(op string) bool {
	for _, o := range Operations {
		if o == op {
			return true
		}
	}
	return false
}

// Replay defaults.
const (
	// DefaultReplayWait is how long a replay waits, by default, for a worker to settle one
	// republished letter.
	DefaultReplayWait = 2 * time.Minute
	// DefaultReplayRounds bounds, by default, the rounds of a key's replay: the letters
	// selected at the start, then the letters held behind them while they were replayed.
	DefaultReplayRounds = 10
	// DefaultReplayConcurrency is the default number of keys replayed at once.
	DefaultReplayConcurrency = 16
)

// waitNotice is how long a wait for a worker lasts before Progress lists it.
const waitNotice = time.Second

// ReplayOptions shape a replay.
type ReplayOptions struct {
	// DryRun only plans: the report's Selected lists what would be replayed, in order.
	DryRun bool
	// As replays the failed letters with this operation instead of their own (the
	// event's data.operation is rewritten; everything else is kept): "update" replays a
	// create that failed because the enrollment exists. Letters of class held keep their
	// operation: they never failed themselves.
	As string
	// NoFollowers replays only the letters the filter selects. By default the held
	// letters of each selected key that come after its first selected letter are replayed
	// too, since they wait for it, and so are the letters held behind the key's letters
	// while they were replayed.
	NoFollowers bool
	// Concurrency is the number of keys replayed at once (default 16). Letters of one key
	// are always replayed one after the other, in position order, each once the previous
	// one was settled.
	Concurrency int
	// Wait bounds the wait for a worker to settle one republished letter (default
	// DefaultReplayWait). When it passes, the letter's key stops with a *NotSettledError
	// in Failed; other keys go on.
	Wait time.Duration
	// Rounds bounds the rounds of a key (default DefaultReplayRounds): the first replays
	// the selected letters; each further one the letters held behind the key's letters
	// while the round before ran. What the last round leaves is reported in Left.
	Rounds int
	// Progress, if set, is called after each letter is handled, when held letters join
	// the replay, and about twice a second while a wait for a worker lasts longer than a
	// second. Calls never overlap.
	Progress func(ReplayProgress)
}

// ReplayProgress is a replay's progress.
type ReplayProgress struct {
	// Done letters were handled (replayed, gone, failed or skipped) of Total, which grows
	// when letters held during the replay join it.
	Done, Total int
	// Waiting lists the letters whose republished event has waited longer than a second
	// for a worker to settle it, the longest wait first.
	Waiting []ReplayWait
}

// ReplayWait is a republished letter waiting for a worker.
type ReplayWait struct {
	Letter Letter
	// Event is the sequence of the republished event in the events stream.
	Event uint64
	// For is how long it has waited.
	For time.Duration
}

// ReplayFailure is a letter whose replay failed.
type ReplayFailure struct {
	// Letter is the letter; only Key is set when looking for a key's held letters failed.
	Letter Letter
	// Err says why: a *NotSettledError (no worker settled it in time), a
	// *DeadLetteredAgainError (its event failed again), or an error of the stream.
	Err error
}

// ReplayReport says what a replay did.
type ReplayReport struct {
	DryRun bool
	// Selected lists the letters selected at the start, grouped by key, each key in
	// position order.
	Selected []Letter
	Keys     int
	// Later lists the letters held behind a key's letters while they were replayed
	// (events of the key that came in meanwhile), replayed after them.
	Later []Letter
	// Replayed letters were republished and settled: a worker handled the event and
	// removed the letter.
	Replayed []Letter
	// Gone letters were removed by someone else before their turn.
	Gone []Letter
	// Failed letters could not be republished, were not settled in time, or their event
	// was dead-lettered again. A letter not settled in time stays in the stream; one that
	// failed again is replaced by its new letter.
	Failed []ReplayFailure
	// Skipped letters come after a failed letter of their key and were left alone, so
	// they do not overtake it.
	Skipped []Letter
	// Left lists the held letters a key still had when it used up its rounds.
	Left []Letter
}

// errGone reports a letter removed before its turn.
var errGone = errors.New("letter is gone")

// Replay republishes the letters that pass f (and, unless opts.NoFollowers, the held
// letters behind them) to their origin subjects, key by key in position order.
//
// The republished event is the letter's body (with data.operation rewritten under
// opts.As) with the headers Nats-Msg-Id "replay.<dlq seq>", Dpsync-Replay-Of,
// Dpsync-Position (the original order position, so the worker keeps the key's order) and
// the trace context. Replay does not remove the letter: the worker that settles the event
// (applies it, or dead-letters it again) removes it before acknowledging the event, and
// until then the letter holds the key's newer events. Replay waits up to opts.Wait for the
// letter to go before it republishes the key's next letter. Once a key's letters are
// done, the events of the key held behind them meanwhile are letters at the head of the
// key; they are replayed in turn, up to opts.Rounds rounds. If a letter of a key fails (not
// republished, not settled in time, dead-lettered again), the key's later letters are
// skipped. Keys are independent: up to opts.Concurrency of them are replayed at once.
//
// Replay can be interrupted at any point (ctx, a killed process) and run again: a letter
// stays until its event was settled, so none is lost, and a letter republished but not
// settled is republished with the same id, which the events stream drops as a duplicate
// within its duplicate window, and waited for again. After the window the event is stored
// twice; see the package documentation, "Replay safety".
func (st *Store) Replay(ctx context.Context, f Filter, opts ReplayOptions) (ReplayReport, error) {
	if err := f.Validate(); err != nil {
		return ReplayReport{}, err
	}
	if opts.As != "" && !validOperation(opts.As) {
		return ReplayReport{}, fmt.Errorf("replay as %q: not one of create, update, updateIfMatchETag, delete", opts.As)
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultReplayConcurrency
	}
	if opts.Wait <= 0 {
		opts.Wait = DefaultReplayWait
	}
	if opts.Rounds <= 0 {
		opts.Rounds = DefaultReplayRounds
	}
	all, last, err := st.allUpTo(ctx)
	if err != nil {
		return ReplayReport{}, err
	}
	sel := selectLetters(all, f)
	if !opts.NoFollowers {
		sel = withFollowers(all, sel)
	}
	groups := byKey(sel)
	rep := ReplayReport{DryRun: opts.DryRun, Keys: len(groups)}
	for _, g := range groups {
		rep.Selected = append(rep.Selected, g...)
	}
	if opts.DryRun || len(sel) == 0 {
		return rep, nil
	}

	r := &replayRun{st: st, f: f, opts: opts, start: last, rep: &rep, total: len(sel), waits: map[uint64]waitEntry{}}
	stopTicker := r.tick()
	work := make(chan []Letter)
	var wg sync.WaitGroup
	for range min(opts.Concurrency, len(groups)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for g := range work {
				r.key(ctx, g)
			}
		}()
	}
feed:
	for _, g := range groups {
		select {
		case work <- g:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	stopTicker()
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("replay interrupted after %d of %d letters: %w", r.done, r.total, err)
	}
	var errs []error
	if len(rep.Failed) > 0 {
		fe := make([]error, 0, len(rep.Failed))
		for _, fl := range rep.Failed {
			fe = append(fe, fl.Err)
		}
		errs = append(errs, fmt.Errorf("replay: %d of %d letters failed: %w", len(rep.Failed), r.total, errors.Join(fe...)))
	}
	if len(rep.Left) > 0 {
		errs = append(errs, fmt.Errorf("replay: %d held letters remain after %d rounds; run replay again", len(rep.Left), opts.Rounds))
	}
	return rep, errors.Join(errs...)
}

var errSkipped = errors.New("skipped behind a failed letter of its key")

// withFollowers adds to sel the held letters of sel's keys that come after the key's first
// selected letter.
func withFollowers(all, sel []Letter) []Letter {
	first := map[string]uint64{}
	in := map[uint64]bool{}
	for _, l := range sel {
		in[l.Seq] = true
		if l.Key == "" {
			continue
		}
		if p, ok := first[l.Key]; !ok || l.OrderPosition() < p {
			first[l.Key] = l.OrderPosition()
		}
	}
	out := append([]Letter(nil), sel...)
	for _, l := range all {
		if p, ok := first[l.Key]; ok && !in[l.Seq] && l.Class == ClassHeld && l.OrderPosition() > p {
			out = append(out, l)
		}
	}
	return out
}

// replayRun is one Replay's shared state: the report, the progress and the waits.
type replayRun struct {
	st    *Store
	f     Filter
	opts  ReplayOptions
	start uint64 // the stream's last sequence when the replay read it: later letters are new

	mu          sync.Mutex // guards what follows and serializes Progress
	rep         *ReplayReport
	done, total int
	waits       map[uint64]waitEntry // by letter sequence
	shown       bool                 // the last Progress call listed waits
}

type waitEntry struct {
	l     Letter
	event uint64
	since time.Time
}

// key replays the letters g of one key, then the letters held behind them meanwhile, round
// after round, until none is left, a letter fails, ctx ends or the rounds are used up.
func (r *replayRun) key(ctx context.Context, g []Letter) {
	k := newKeyRun(g[0], r.start)
	batch := g
	for round := 1; ; round++ {
		if !r.batch(ctx, k, batch) || k.key == "" || k.subject == "" {
			return
		}
		next, err := r.heldBehind(ctx, k)
		if err != nil {
			if ctx.Err() == nil {
				r.fail(Letter{Key: k.key, Subject: k.subject}, fmt.Errorf("look for letters of %s held during its replay: %w", k.key, err))
			}
			return
		}
		if len(next) == 0 {
			return
		}
		r.mu.Lock()
		if round >= r.opts.Rounds {
			r.rep.Left = append(r.rep.Left, next...)
			r.mu.Unlock()
			return
		}
		r.rep.Later = append(r.rep.Later, next...)
		r.total += len(next)
		r.progressLocked()
		r.mu.Unlock()
		batch = next
	}
}

// batch replays ls in order and reports each; it returns false when the key stops (a
// letter failed, the rest is skipped; or ctx ended, the rest is left unreported).
func (r *replayRun) batch(ctx context.Context, k *keyRun, ls []Letter) bool {
	for i, l := range ls {
		if ctx.Err() != nil {
			return false
		}
		_, err := r.st.replayLetter(ctx, k, l, r.headers(l), r.opts.Wait, r.onWait)
		if err != nil && !errors.Is(err, errGone) && ctx.Err() != nil {
			return false // interrupted: neither done nor failed
		}
		r.record(l, err)
		if err != nil && !errors.Is(err, errGone) {
			for _, rest := range ls[i+1:] {
				r.record(rest, errSkipped)
			}
			return false
		}
	}
	return true
}

func (r *replayRun) headers(l Letter) replayHeaders {
	if r.opts.As != "" && l.Class != ClassHeld {
		return replayHeaders{as: r.opts.As}
	}
	return replayHeaders{}
}

// heldBehind reads the key's letters again and returns those at its head that came in
// during the replay and that the rules (held, unless NoFollowers) or the filter select, in
// position order. A letter that was there at the start but not selected stops the list:
// the operator left it, and nothing may overtake it.
func (r *replayRun) heldBehind(ctx context.Context, k *keyRun) ([]Letter, error) {
	cur, err := r.st.lettersOf(ctx, k.subject, k.key, 1)
	if err != nil {
		return nil, err
	}
	sortByPosition(cur)
	var next []Letter
	for _, l := range cur {
		if l.Seq <= r.start || !(l.Class == ClassHeld && !r.opts.NoFollowers || r.f.Match(l)) {
			break
		}
		next = append(next, l)
	}
	return next, nil
}

// record files the outcome of one letter and reports progress.
func (r *replayRun) record(l Letter, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err == nil:
		r.rep.Replayed = append(r.rep.Replayed, l)
	case errors.Is(err, errGone):
		r.rep.Gone = append(r.rep.Gone, l)
	case errors.Is(err, errSkipped):
		r.rep.Skipped = append(r.rep.Skipped, l)
	default:
		r.rep.Failed = append(r.rep.Failed, ReplayFailure{Letter: l, Err: err})
	}
	r.done++
	r.progressLocked()
}

// fail files a failure that is not one letter's (the letter is counted nowhere else).
func (r *replayRun) fail(l Letter, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rep.Failed = append(r.rep.Failed, ReplayFailure{Letter: l, Err: err})
}

// onWait notes that l's republished event waits for a worker, until the returned
// function is called.
func (r *replayRun) onWait(l Letter, event uint64) func() {
	r.mu.Lock()
	r.waits[l.Seq] = waitEntry{l: l, event: event, since: time.Now()}
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		delete(r.waits, l.Seq)
		r.mu.Unlock()
	}
}

// progressLocked calls Progress; r.mu is held.
func (r *replayRun) progressLocked() {
	if r.opts.Progress == nil {
		return
	}
	w := r.waitingLocked(time.Now())
	r.shown = len(w) > 0
	r.opts.Progress(ReplayProgress{Done: r.done, Total: r.total, Waiting: w})
}

func (r *replayRun) waitingLocked(now time.Time) []ReplayWait {
	var out []ReplayWait
	for _, e := range r.waits {
		if d := now.Sub(e.since); d >= waitNotice {
			out = append(out, ReplayWait{Letter: e.l, Event: e.event, For: d})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].For != out[j].For {
			return out[i].For > out[j].For
		}
		return out[i].Letter.Seq < out[j].Letter.Seq
	})
	return out
}

// tick reports progress while waits last longer than waitNotice (and once more when they
// end), until the returned function is called; that function returns once the ticker's
// goroutine has ended.
func (r *replayRun) tick() (stop func()) {
	if r.opts.Progress == nil {
		return func() {}
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(waitNotice / 2)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			r.mu.Lock()
			if r.shown || len(r.waitingLocked(time.Now())) > 0 {
				r.progressLocked()
			}
			r.mu.Unlock()
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}

// RewriteOperation returns the CloudEvents JSON event with data.operation set to op and
// everything else kept (object members come out in sorted order).
func RewriteOperation(event []byte, op string) ([]byte, error) {
	var env map[string]json.RawMessage
	if err := json.Unmarshal(event, &env); err != nil {
		return nil, fmt.Errorf("event is not a JSON object: %w", err)
	}
	raw, ok := env["data"]
	if !ok {
		return nil, errors.New("event has no data member")
	}
	var data map[string]json.RawMessage
	if err := json.Unmarshal(raw, &data); err != nil {
		return nil, fmt.Errorf("event data is not a JSON object: %w", err)
	}
	if _, ok := data["operation"]; !ok {
		return nil, errors.New("event data has no operation")
	}
	data["operation"], _ = json.Marshal(op)
	var err error
	if env["data"], err = json.Marshal(data); err != nil {
		return nil, err
	}
	return json.Marshal(env)
}
