package dlq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultSchedule is the default redrive schedule: the wait after a transient letter's
// last failure before its 1st, 2nd, 3rd and 4th automatic redrive.
var DefaultSchedule = []time.Duration{time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour}

// Clock tells the time.
type Clock interface {
	Now() time.Time
}

// Timer is a Clock that also paces Run: After(d) delivers once d has passed on the clock.
// A Clock that is not a Timer decides only which letters are due; Run then waits Interval
// on the system clock between passes. A fake clock that implements Timer drives Run
// entirely (tests advance it instead of sleeping).
type Timer interface {
	Clock
	After(d time.Duration) <-chan time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// RedriverOptions configure a Redriver.
type RedriverOptions struct {
	// JS reaches the dead-letter stream and the events streams. Required.
	JS jetstream.JetStream
	// Stream is the dead-letter stream (default "DPS_DLQ").
	Stream string
	// Schedule[i] is the wait after the last failure before redrive i+1
	// (default DefaultSchedule). Redrives beyond its length wait its last entry.
	Schedule []time.Duration
	// MaxRedrives is the number of automatic redrives before a letter is parked as
	// permanent (default len(Schedule)).
	MaxRedrives int
	// Interval is how often Run looks (default 15 s).
	Interval time.Duration
	// Settle bounds the wait for a worker to settle one republished letter (default
	// DefaultRedriveSettle, twice the worker's default retry budget). When it passes, the
	// pass leaves the key; the letter is not republished again while its event is still in
	// the events stream, and the key's later letters wait for a later pass.
	Settle time.Duration
	// Concurrency is the number of keys a pass works on at once (default 16).
	Concurrency int
	// Clock decides which letters are due (default the system clock); if it is a Timer it
	// also paces Run.
	Clock Clock
	// Owns reports whether this worker owns the partition of key; only such keys are
	// redriven (nil: all keys).
	Owns func(key string) bool
	// Index, if set, is kept up to date with the letters the Redriver sees settled and parks.
	Index *HoldIndex
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// DefaultRedriveSettle is the default RedriverOptions.Settle: twice the worker's default
// retry budget (2 min), the longest a worker normally takes to apply an event or give up.
const DefaultRedriveSettle = 4 * time.Minute

// Redriver republishes transient dead letters on a schedule and parks those that used up
// their redrives. Per key it looks only at the key's first letter (lowest position):
//   - transient, redrives left, due (last failure + Schedule[redrives] has passed):
//     the letter and the held letters right behind it are republished as in a replay,
//     in order, each once the one before was settled (a worker applied it, or
//     dead-lettered it again, and removed its letter). The event carries Dpsync-Redrives
//     (its redrives so far, plus this one) and Dpsync-History, so if it fails again the
//     worker's new letter continues the count and the history, and the held letters stay
//     behind that new letter.
//   - transient without redrives left: parked, i.e. republished into the dead-letter
//     stream as class permanent with its failure added to Dpsync-History (id
//     "park.<old seq>", deduplicated if a crash repeats it), then the old letter removed.
//   - held: nothing is ahead of it any more. The letter it followed was purged, replayed
//     or redriven without it (e.g. a replay interrupted before it came back for the
//     letters held meanwhile), and a held letter never failed itself: it and the held
//     letters right behind it are released, i.e. republished in order as in a replay, at
//     once and without counting a redrive. Left alone it would hold its key for ever,
//     every later event of the key following it.
//   - anything else (permanent, invalid, transient not due): left alone, and so is the
//     rest of the key, so nothing overtakes it.
//
// Keys are worked on concurrently (Concurrency), each letter's wait bounded by Settle: a
// key whose worker is slow (a backlog) holds up neither the other keys nor, beyond
// Settle, the pass. A letter republished but not settled in time is remembered and not
// republished again while its event is still in the events stream, so a second copy cannot
// follow the first and apply the old event again after newer ones.
//
// A pass reads the stream's headers only when the stream changed since the previous pass
// (one stream-info round trip otherwise), so a large stream of parked letters costs little.
// RunOnce must not be called concurrently.
type Redriver struct {
	opts   RedriverOptions
	logger *slog.Logger

	mu    sync.Mutex
	cache struct {
		valid         bool
		lastSeq, msgs uint64 // the stream state the letters were read at
		scanned       uint64 // the last sequence the read covered
		letters       []Letter
	}
	// pending holds the letters republished but not settled within Settle, by sequence.
	pending map[uint64]pendingReplay
	events  map[string]jetstream.Stream // events streams by name
}

// pendingReplay is a republished letter waiting for a worker: its event's place.
type pendingReplay struct {
	stream string
	event  uint64
}

// NewRedriver returns a Redriver.
func NewRedriver(opts RedriverOptions) (*Redriver, error) {
	if opts.JS == nil {
		return nil, errors.New("dlq redriver: JS is required")
	}
	if opts.Stream == "" {
		opts.Stream = DefaultStream
	}
	if opts.Schedule == nil {
		opts.Schedule = DefaultSchedule
	}
	if len(opts.Schedule) == 0 {
		return nil, errors.New("dlq redriver: empty schedule")
	}
	for i, d := range opts.Schedule {
		if d <= 0 {
			return nil, fmt.Errorf("dlq redriver: schedule entry %d (%v) is not positive", i+1, d)
		}
	}
	if opts.MaxRedrives == 0 {
		opts.MaxRedrives = len(opts.Schedule)
	}
	if opts.MaxRedrives < 0 {
		return nil, fmt.Errorf("dlq redriver: MaxRedrives %d is negative", opts.MaxRedrives)
	}
	if opts.Interval == 0 {
		opts.Interval = 15 * time.Second
	}
	if opts.Interval < 0 {
		return nil, fmt.Errorf("dlq redriver: Interval %v is negative", opts.Interval)
	}
	if opts.Settle == 0 {
		opts.Settle = DefaultRedriveSettle
	}
	if opts.Settle < 0 {
		return nil, fmt.Errorf("dlq redriver: Settle %v is negative", opts.Settle)
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultReplayConcurrency
	}
	if opts.Clock == nil {
		opts.Clock = systemClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Redriver{
		opts: opts, logger: opts.Logger.With("component", "dlq-redrive"),
		pending: map[uint64]pendingReplay{}, events: map[string]jetstream.Stream{},
	}, nil
}

// Due is when l is next redriven: its last failure plus the wait for its next redrive.
func (r *Redriver) Due(l Letter) time.Time {
	i := min(l.Redrives, len(r.opts.Schedule)-1)
	return l.When().Add(r.opts.Schedule[i])
}

// RedriveReport says what one pass did.
type RedriveReport struct {
	Redriven  int // transient letters republished and settled (applied, or failed again)
	Followers int // held letters republished and settled behind them
	Parked    int // transient letters parked as permanent
	// Released is the number of held letters republished and settled because no letter
	// of their key was ahead of them any more.
	Released int
	// Unsettled is the number of letters republished but not settled within Settle; their
	// keys wait for a later pass.
	Unsettled int
	// NextDue is the earliest due time of a transient letter left waiting (zero: none).
	NextDue time.Time
}

// pass is one RunOnce's shared state.
type pass struct {
	mu   sync.Mutex
	rep  RedriveReport
	errs []error
}

func (p *pass) add(f func(*RedriveReport)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(&p.rep)
}

func (p *pass) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.errs = append(p.errs, err)
}

// RunOnce makes one pass over the dead-letter stream at time now. Errors of single keys
// do not stop the pass; they are joined in the returned error and retried next pass.
func (r *Redriver) RunOnce(ctx context.Context, now time.Time) (RedriveReport, error) {
	st, err := OpenStore(ctx, r.opts.JS, StoreOptions{Stream: r.opts.Stream, Logger: r.opts.Logger})
	if err != nil {
		return RedriveReport{}, fmt.Errorf("redrive: %w", err)
	}
	all, last, err := r.letters(ctx, st)
	if err != nil {
		return RedriveReport{}, fmt.Errorf("redrive: %w", err)
	}
	r.forgetSettled(all)
	p := &pass{}
	var jobs []func(context.Context)
	for _, g := range byKey(all) {
		if ctx.Err() != nil {
			break
		}
		first := g[0]
		if (first.Class != ClassTransient && first.Class != ClassHeld) || first.Key == "" {
			continue
		}
		if r.opts.Owns != nil && !r.opts.Owns(first.Key) {
			continue
		}
		if r.waitsForWorker(ctx, first) {
			continue
		}
		switch {
		case first.Class == ClassHeld:
			jobs = append(jobs, func(ctx context.Context) {
				r.replayKey(ctx, st, p, heldRun(g), last, func(Letter) replayHeaders { return replayHeaders{} }, func(l Letter) {
					p.add(func(rep *RedriveReport) { rep.Released++ })
					r.logger.Info("held dead letter released: no letter of its key is ahead of it", "seq", l.Seq, "key", l.Key)
				})
			})
		case first.Redrives >= r.opts.MaxRedrives:
			jobs = append(jobs, func(ctx context.Context) {
				switch err := r.park(ctx, st, first); {
				case err == nil:
					p.add(func(rep *RedriveReport) { rep.Parked++ })
				case !errors.Is(err, errGone):
					p.fail(err)
				}
			})
		case now.Before(r.Due(first)):
			if due := r.Due(first); p.rep.NextDue.IsZero() || due.Before(p.rep.NextDue) {
				p.rep.NextDue = due
			}
		default:
			batch := append([]Letter{first}, heldRun(g[1:])...)
			history := append(append([]Failure(nil), first.History...), first.Failure())
			jobs = append(jobs, func(ctx context.Context) {
				r.replayKey(ctx, st, p, batch, last, func(l Letter) replayHeaders {
					if l.Seq != first.Seq {
						return replayHeaders{}
					}
					return replayHeaders{redrives: first.Redrives + 1, history: history}
				}, func(l Letter) {
					if l.Seq == first.Seq {
						p.add(func(rep *RedriveReport) { rep.Redriven++ })
						r.logger.Info("dead letter redriven", "seq", l.Seq, "key", l.Key, "redrive", first.Redrives+1)
						return
					}
					p.add(func(rep *RedriveReport) { rep.Followers++ })
				})
			})
		}
	}
	sem := make(chan struct{}, r.opts.Concurrency)
	var wg sync.WaitGroup
	for _, job := range jobs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			job(ctx)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		p.errs = append(p.errs, err)
	}
	return p.rep, errors.Join(p.errs...)
}

// replayKey republishes the letters of one key in order, each once the one before was
// settled, and calls settled for each settled one. It stops at a letter that failed again
// (the rest stays behind its new letter), one not settled in time (remembered as pending),
// an error (in p) or the end of ctx.
func (r *Redriver) replayKey(ctx context.Context, st *Store, p *pass, batch []Letter, last uint64,
	hdrs func(Letter) replayHeaders, settled func(Letter)) {
	k := newKeyRun(batch[0], last)
	for _, l := range batch {
		if ctx.Err() != nil {
			return
		}
		ack, err := st.replayLetter(ctx, k, l, hdrs(l), r.opts.Settle, nil)
		var again *DeadLetteredAgainError
		var late *NotSettledError
		switch {
		case err == nil:
			r.forgetIndexed(l)
			settled(l)
		case errors.Is(err, errGone):
			r.forgetIndexed(l)
		case errors.As(err, &again):
			r.forgetIndexed(l)
			settled(l)
			r.logger.Info("redriven dead letter failed again; the key's later letters wait behind its new letter",
				"seq", l.Seq, "key", l.Key, "event", again.Event, "new_seq", again.Again.Seq, "class", again.Again.Class)
			return
		case errors.As(err, &late):
			r.mu.Lock()
			r.pending[l.Seq] = pendingReplay{stream: ack.Stream, event: ack.Sequence}
			r.mu.Unlock()
			p.add(func(rep *RedriveReport) { rep.Unsettled++ })
			r.logger.Warn("redriven dead letter not settled in time; its key waits for a later pass (the event is not republished while it waits in the events stream)",
				"seq", l.Seq, "key", l.Key, "event", ack.Sequence, "waited", r.opts.Settle)
			return
		default:
			if ctx.Err() == nil {
				p.fail(err)
			}
			return
		}
	}
}

func (r *Redriver) forgetIndexed(l Letter) {
	if r.opts.Index != nil {
		r.opts.Index.Remove(l.Key, l.Seq)
	}
}

// waitsForWorker reports whether l was republished by an earlier pass and its event is
// still in the events stream, waiting for a worker: then it must not go out again. An
// event no longer there (the events stream lost it) lets l be republished.
func (r *Redriver) waitsForWorker(ctx context.Context, l Letter) bool {
	r.mu.Lock()
	pr, ok := r.pending[l.Seq]
	s := r.events[pr.stream]
	r.mu.Unlock()
	if !ok {
		return false
	}
	var err error
	if s == nil {
		if s, err = r.opts.JS.Stream(ctx, pr.stream); err == nil {
			r.mu.Lock()
			r.events[pr.stream] = s
			r.mu.Unlock()
		}
	}
	if err == nil {
		_, err = s.GetMsg(ctx, pr.event)
	}
	if errors.Is(err, jetstream.ErrMsgNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		r.mu.Lock()
		delete(r.pending, l.Seq)
		r.mu.Unlock()
		r.logger.Warn("redriven dead letter's event left the events stream unsettled; republishing it", "seq", l.Seq, "key", l.Key, "event", pr.event)
		return false
	}
	return true // still there, or unknown: wait
}

// forgetSettled drops the pending letters that are gone.
func (r *Redriver) forgetSettled(all []Letter) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pending) == 0 {
		return
	}
	in := make(map[uint64]bool, len(all))
	for _, l := range all {
		in[l.Seq] = true
	}
	for seq := range r.pending {
		if !in[seq] {
			delete(r.pending, seq)
		}
	}
}

// heldRun is the held letters at the start of g: the letters a redrive or release of g's
// first letter takes along.
func heldRun(g []Letter) []Letter {
	n := 0
	for n < len(g) && g[n].Class == ClassHeld {
		n++
	}
	return g[:n]
}

// letters returns the stream's letters (headers only) and the last sequence they cover,
// from the cache when the stream's last sequence and message count did not change since
// the cache was filled: any new letter raises the one, any removal lowers the other.
func (r *Redriver) letters(ctx context.Context, st *Store) ([]Letter, uint64, error) {
	info, err := st.s.Info(ctx)
	if err != nil {
		return nil, 0, err
	}
	r.mu.Lock()
	c := r.cache
	r.mu.Unlock()
	if c.valid && c.lastSeq == info.State.LastSeq && c.msgs == info.State.Msgs {
		return c.letters, c.scanned, nil
	}
	all, last, err := st.allUpTo(ctx)
	if err != nil {
		return nil, 0, err
	}
	r.mu.Lock()
	r.cache.valid, r.cache.lastSeq, r.cache.msgs, r.cache.scanned, r.cache.letters = true, info.State.LastSeq, info.State.Msgs, last, all
	r.mu.Unlock()
	return all, last, nil
}

// park replaces the transient letter l by a permanent one with l's failure in its history.
func (r *Redriver) park(ctx context.Context, st *Store, l Letter) error {
	m, err := st.s.GetMsg(ctx, l.Seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return errGone
	}
	if err != nil {
		return fmt.Errorf("park dead letter %d: read: %w", l.Seq, err)
	}
	cur, _ := ParseLetter(m)
	if cur.Key != l.Key || cur.Class != ClassTransient {
		return errGone
	}
	parked := cur
	parked.History = append(append([]Failure(nil), cur.History...), cur.Failure())
	parked.Class = ClassPermanent
	parked.Reason = fmt.Sprintf("parked after %d redrives: %s", cur.Redrives, strings.TrimPrefix(cur.Reason, "parked after "))
	ack, err := st.js.PublishMsg(ctx, &nats.Msg{Subject: m.Subject, Data: m.Data, Header: parked.Header()},
		jetstream.WithMsgID(parkMsgID(l.Seq)), jetstream.WithExpectStream(r.opts.Stream))
	if err != nil {
		return fmt.Errorf("park dead letter %d: %w", l.Seq, err)
	}
	if r.opts.Index != nil {
		parked.Seq, parked.Subject = ack.Sequence, m.Subject
		r.opts.Index.AddLetter(parked)
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := deleteLetter(dctx, st.s, l.Seq); err != nil && !errors.Is(err, errGone) {
		return fmt.Errorf("park dead letter %d: parked as %d, but the old letter was not removed: %w", l.Seq, ack.Sequence, err)
	}
	if r.opts.Index != nil {
		r.opts.Index.Remove(l.Key, l.Seq)
	}
	r.logger.Warn("dead letter parked as permanent", "seq", l.Seq, "parked_seq", ack.Sequence, "key", l.Key, "redrives", cur.Redrives)
	return nil
}

// Run calls RunOnce every Interval (on the Clock if it is a Timer, else on the system
// clock) until ctx ends, logging what each pass did and any error. It returns when ctx
// ends; the caller's goroutine owns the loop.
func (r *Redriver) Run(ctx context.Context) {
	timer, ok := r.opts.Clock.(Timer)
	if !ok {
		timer = systemClock{}
	}
	for {
		rep, err := r.RunOnce(ctx, r.opts.Clock.Now())
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			r.logger.Warn("redrive pass incomplete; retried next pass", "err", err)
		} else if rep.Redriven+rep.Parked+rep.Released+rep.Unsettled > 0 {
			r.logger.Info("redrive pass", "redriven", rep.Redriven, "followers", rep.Followers, "parked", rep.Parked,
				"released", rep.Released, "unsettled", rep.Unsettled)
		}
		select {
		case <-ctx.Done():
			return
		case <-timer.After(r.opts.Interval):
		}
	}
}
