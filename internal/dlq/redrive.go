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
	// Clock decides which letters are due (default the system clock); if it is a Timer it
	// also paces Run.
	Clock Clock
	// Owns reports whether this worker owns the partition of key; only such keys are
	// redriven (nil: all keys).
	Owns func(key string) bool
	// Index, if set, is kept up to date with the letters the Redriver removes and parks.
	Index *HoldIndex
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Redriver republishes transient dead letters on a schedule and parks those that used up
// their redrives. Per key it looks only at the key's first letter (lowest position):
//   - transient, redrives left, due (last failure + Schedule[redrives] has passed):
//     the letter and the held letters right behind it are republished as in a replay,
//     in order, each removed after its PubAck. The event carries Dpsync-Redrives (its
//     redrives so far, plus this one) and Dpsync-History, so if it fails again the
//     worker's new letter continues the count and the history.
//   - transient without redrives left: parked, i.e. republished into the dead-letter
//     stream as class permanent with its failure added to Dpsync-History (id
//     "park.<old seq>", deduplicated if a crash repeats it), then the old letter removed.
//   - held: nothing is ahead of it any more. The letter it followed was purged, replayed
//     or redriven without it (a replay selects its letters when it starts, so an event
//     held while the replay ran is not among them), and a held letter never failed
//     itself: it and the held letters right behind it are released, i.e. republished in
//     order as in a replay, at once and without counting a redrive. Left alone it would
//     hold its key for ever, every later event of the key following it.
//   - anything else (permanent, invalid, transient not due): left alone, and so is the
//     rest of the key, so nothing overtakes it.
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
		lastSeq, msgs uint64
		letters       []Letter
	}
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
	if opts.Clock == nil {
		opts.Clock = systemClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Redriver{opts: opts, logger: opts.Logger.With("component", "dlq-redrive")}, nil
}

// Due is when l is next redriven: its last failure plus the wait for its next redrive.
func (r *Redriver) Due(l Letter) time.Time {
	i := min(l.Redrives, len(r.opts.Schedule)-1)
	return l.When().Add(r.opts.Schedule[i])
}

// RedriveReport says what one pass did.
type RedriveReport struct {
	Redriven  int // transient letters republished and removed
	Followers int // held letters republished behind them
	Parked    int // transient letters parked as permanent
	// Released is the number of held letters republished because no letter of their key
	// was ahead of them any more.
	Released int
	// NextDue is the earliest due time of a transient letter left waiting (zero: none).
	NextDue time.Time
}

// RunOnce makes one pass over the dead-letter stream at time now. Errors of single keys
// do not stop the pass; they are joined in the returned error and retried next pass.
func (r *Redriver) RunOnce(ctx context.Context, now time.Time) (RedriveReport, error) {
	st, err := OpenStore(ctx, r.opts.JS, StoreOptions{Stream: r.opts.Stream, Logger: r.opts.Logger})
	if err != nil {
		return RedriveReport{}, fmt.Errorf("redrive: %w", err)
	}
	all, err := r.letters(ctx, st)
	if err != nil {
		return RedriveReport{}, fmt.Errorf("redrive: %w", err)
	}
	var rep RedriveReport
	var errs []error
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
		if first.Class == ClassHeld {
			errs = append(errs, r.release(ctx, st, g, &rep)...)
			continue
		}
		if first.Redrives >= r.opts.MaxRedrives {
			switch err := r.park(ctx, st, first); {
			case err == nil:
				rep.Parked++
			case !errors.Is(err, errGone):
				errs = append(errs, err)
			}
			continue
		}
		if due := r.Due(first); now.Before(due) {
			if rep.NextDue.IsZero() || due.Before(rep.NextDue) {
				rep.NextDue = due
			}
			continue
		}
		batch := append([]Letter{first}, heldRun(g[1:])...)
		st.replayKey(ctx, batch, func(l Letter) replayHeaders {
			if l.Seq != first.Seq {
				return replayHeaders{}
			}
			return replayHeaders{redrives: first.Redrives + 1, history: append(append([]Failure(nil), first.History...), first.Failure())}
		}, func(l Letter, err error) {
			switch {
			case err == nil || errors.Is(err, errGone):
				if r.opts.Index != nil {
					r.opts.Index.Remove(l.Key, l.Seq)
				}
				if err == nil && l.Seq == first.Seq {
					rep.Redriven++
					r.logger.Info("dead letter redriven", "seq", l.Seq, "key", l.Key, "redrive", first.Redrives+1)
				} else if err == nil {
					rep.Followers++
				}
			case errors.Is(err, errSkipped):
			default:
				errs = append(errs, err)
			}
		})
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	return rep, errors.Join(errs...)
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

// release republishes the held letters at the head of g, in order, as a replay does: their
// blocker is gone. A held letter never failed, so no redrive is counted.
func (r *Redriver) release(ctx context.Context, st *Store, g []Letter, rep *RedriveReport) []error {
	var errs []error
	st.replayKey(ctx, heldRun(g), func(Letter) replayHeaders { return replayHeaders{} }, func(l Letter, err error) {
		switch {
		case err == nil || errors.Is(err, errGone):
			if r.opts.Index != nil {
				r.opts.Index.Remove(l.Key, l.Seq)
			}
			if err == nil {
				rep.Released++
				r.logger.Info("held dead letter released: no letter of its key is ahead of it", "seq", l.Seq, "key", l.Key)
			}
		case errors.Is(err, errSkipped):
		default:
			errs = append(errs, err)
		}
	})
	return errs
}

// letters returns the stream's letters (headers only), from the cache when the stream's
// last sequence and message count did not change since the cache was filled: any new
// letter raises the one, any removal lowers the other.
func (r *Redriver) letters(ctx context.Context, st *Store) ([]Letter, error) {
	info, err := st.s.Info(ctx)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	c := r.cache
	r.mu.Unlock()
	if c.valid && c.lastSeq == info.State.LastSeq && c.msgs == info.State.Msgs {
		return c.letters, nil
	}
	all, err := st.all(ctx)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.cache.valid, r.cache.lastSeq, r.cache.msgs, r.cache.letters = true, info.State.LastSeq, info.State.Msgs, all
	r.mu.Unlock()
	return all, nil
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
		} else if rep.Redriven+rep.Parked+rep.Released > 0 {
			r.logger.Info("redrive pass", "redriven", rep.Redriven, "followers", rep.Followers, "parked", rep.Parked, "released", rep.Released)
		}
		select {
		case <-ctx.Done():
			return
		case <-timer.After(r.opts.Interval):
		}
	}
}
