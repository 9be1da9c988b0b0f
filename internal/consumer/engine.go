// Package consumer moves events from the partitioned JetStream stream through the batcher
// into DPS and decides, for every event, when it is acknowledged.
//
// One goroutine (Run) owns all state: the batcher, the retry schedule, the set of messages
// the worker holds. Partition readers feed it messages; batch goroutines call DPS, publish
// dead letters and acknowledge, then report back. The rules:
//
//   - an event is acknowledged only when its outcome is final: DPS applied it, or its dead
//     letter was published and the PubAck received. A failed dead-letter publish is retried;
//     the event is never acknowledged without it.
//   - while an event waits (in the batcher, in a retry, in a DPS call) the engine sends
//     InProgress every KeepAlive, so AckWait only bounds how fast a dead worker's events
//     come back.
//   - order per key: the batcher never lets two events of a key be in flight; a retrying
//     event keeps its key blocked; a dead-lettered event's later events follow it into the
//     dead-letter stream (HoldFollow) or continue (HoldContinue).
//   - fencing: before a batch calls DPS the engine asks Fence whether this worker still owns
//     each event's partition at the epoch it was read under; events of a lost partition are
//     dropped unacknowledged (the new owner gets them again).
package consumer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/dpsync/dpsync/internal/applier"
	"github.com/dpsync/dpsync/internal/batcher"
	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/event"
	"github.com/dpsync/dpsync/internal/telemetry"
)

// Decoded is what the engine needs from a valid event.
type Decoded struct {
	EventID string
	// Key is the ordering key: "<kind>/<lower-cased id>".
	Key  string
	Item applier.Item
}

// Decoder decodes and validates an event. A non-nil error means the event is invalid and
// goes to the dead-letter stream with the error's text as the reason.
type Decoder func(data []byte) (Decoded, error)

// Letter is a dead letter the engine hands to DeadLetters.
type Letter struct {
	Data          []byte
	Header        nats.Header // the event's headers (traceparent …)
	OriginStream  string
	OriginSubject string // producer-form subject, where a replay publishes
	OriginSeq     uint64
	Position      uint64
	Key           string
	Kind          string
	Operation     string
	EventID       string
	Class         string // transient | permanent | invalid | held
	Code          int
	Status        int
	Reason        string
	Attempts      int
	FirstFailure  time.Time
	LastFailure   time.Time
	TraceID       string
}

// Dead-letter classes.
const (
	ClassTransient = "transient"
	ClassPermanent = "permanent"
	ClassInvalid   = "invalid"
	ClassHeld      = "held"
)

// DeadLetters publishes letters and knows which keys are held behind one.
type DeadLetters interface {
	// Publish publishes l and returns once the stream acknowledged it.
	Publish(ctx context.Context, l Letter) error
	// Held reports whether a letter of key with a position lower than position exists, and
	// names it in reason.
	Held(ctx context.Context, key string, position uint64) (reason string, held bool, err error)
	// Settled removes the letter at letterSeq (of key), whose replayed event the engine has
	// settled (applied, or dead-lettered again under a new letter). Removing a letter that is
	// gone already is not an error.
	Settled(ctx context.Context, key string, letterSeq uint64) error
	// LetterExists reports whether the dead-letter stream still holds the letter at
	// letterSeq. A replayed event is applied only while its letter exists: the first copy's
	// settlement removes it, so a later copy (a replay re-run after the stream's duplicate
	// window) is dropped instead of applied again behind newer events; purging a letter
	// cancels its replay.
	LetterExists(ctx context.Context, letterSeq uint64) (bool, error)
}

// Applier applies a batch of items of one kind and operation.
type Applier interface {
	Apply(ctx context.Context, items []applier.Item) []applier.Outcome
}

// HoldPolicy says what happens to later events of a key whose event was dead-lettered.
type HoldPolicy int

// Hold policies.
const (
	// HoldFollow sends them to the dead-letter stream too (class held), so a replay of the
	// key re-applies them in their original order. The default.
	HoldFollow HoldPolicy = iota
	// HoldContinue lets them apply. The dead-lettered event, when replayed, then applies
	// after them: choose this only where events of a key are independent.
	HoldContinue
)

// RetryPolicy bounds retries of transient failures.
type RetryPolicy struct {
	Initial time.Duration // first delay (default 500 ms)
	Max     time.Duration // largest delay (default 30 s)
	Budget  time.Duration // total time an event may keep failing before it is dead-lettered (default 2 min)
}

// Options configure an Engine. Decode, Apply and DeadLetters are required.
type Options struct {
	Stream      StreamConfig
	Batcher     batcher.Config
	Decode      Decoder
	Apply       Applier
	DeadLetters DeadLetters
	HoldPolicy  HoldPolicy
	Retry       RetryPolicy
	// KeepAlive is how often waiting events get InProgress (default AckWait/3 = 5 s).
	KeepAlive time.Duration
	// LetterTimeout bounds one attempt to store a dead letter (default 5 s); set it under
	// the lease's safety margin, like a DPS try (see publishLetter).
	LetterTimeout time.Duration
	// StaleWindow is how long the engine remembers the stream sequences of events it
	// settled, so that a redelivered copy the server sent before it processed the ack is
	// acknowledged and dropped instead of applied a second time, behind later events of its
	// key (default 2 min; see Engine.accept).
	StaleWindow time.Duration
	// HoldCheckTimeout bounds one dead-letter hold check (default 5 s). A check that fails
	// parks the key's events, in order, and is retried every HoldCheckRetry (default 1 s).
	HoldCheckTimeout time.Duration
	HoldCheckRetry   time.Duration
	// Successor, if set, returns the first event stored on subject (as the stream stores
	// it) with a sequence above after; found is false when there is none. The engine uses
	// it to read a redelivered create's next events of its key (applier.Item.Later).
	Successor func(ctx context.Context, subject string, after uint64) (data []byte, seq uint64, found bool, err error)
	// Class, if set, groups the items of one kind and operation into separate batches by its
	// result (batcher.Config.Class): the applier's applier.Applier.Class, so that bulk calls
	// hold only items that go in them.
	Class func(applier.Item) int
	// Budget, if set, says how many DPS calls the worker may make right now and, when none,
	// how long until the next: the engine forms only that many new batches and lets the rest
	// keep filling (and coalescing) in the batcher, instead of forming them to wait for the
	// budget with what they hold. Nil: no limit.
	Budget func() (n int, wait time.Duration)
	// Fence reports whether the worker still owns partition p at epoch; nil = always.
	Fence func(p int, epoch uint64) bool
	// InStep, if set, is told whether the reader of partition p (attached at epoch) is in
	// step with the partition's consumer: true each time it synchronised (every event the
	// consumer counted as unacknowledged was in its hands, see syncReader), false when it
	// found a delivery that went elsewhere. While in step nothing a previous owner left
	// behind is out of this worker's hands, so a handover of p can be settled
	// (membership.Membership.InStep).
	InStep func(p int, epoch uint64, inStep bool)
	// WorkerID names this worker in dead letters.
	WorkerID string
	Logger   *slog.Logger
	Tracer   trace.Tracer
	Metrics  *Metrics
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (o *Options) validate() error {
	switch {
	case o.Decode == nil:
		return errors.New("consumer: Decode is required")
	case o.Apply == nil:
		return errors.New("consumer: Apply is required")
	case o.DeadLetters == nil:
		return errors.New("consumer: DeadLetters is required")
	case o.HoldPolicy == HoldContinue && o.Batcher.Coalesce:
		// Rule R2 folds "create A + update B" into one create; if A fails, B fails with it,
		// where HoldContinue promises B applies on its own.
		return errors.New("consumer: HoldContinue needs Batcher.Coalesce off (see package batcher, rule R2)")
	}
	if err := o.Stream.Validate(); err != nil {
		return err
	}
	o.Stream.setDefaults()
	if o.Retry.Initial == 0 {
		o.Retry.Initial = 500 * time.Millisecond
	}
	if o.Retry.Max == 0 {
		o.Retry.Max = 30 * time.Second
	}
	if o.Retry.Budget == 0 {
		o.Retry.Budget = 2 * time.Minute
	}
	if o.Retry.Initial < 0 || o.Retry.Max < o.Retry.Initial || o.Retry.Budget < 0 {
		return fmt.Errorf("consumer retry policy: want 0 < initial ≤ max and budget ≥ 0, got initial %v max %v budget %v",
			o.Retry.Initial, o.Retry.Max, o.Retry.Budget)
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = 5 * time.Second
	}
	if o.StaleWindow == 0 {
		o.StaleWindow = 2 * time.Minute
	}
	if o.LetterTimeout <= 0 {
		o.LetterTimeout = 5 * time.Second
	}
	if o.HoldCheckTimeout == 0 {
		o.HoldCheckTimeout = 5 * time.Second
	}
	if o.HoldCheckRetry == 0 {
		o.HoldCheckRetry = time.Second
	}
	if o.KeepAlive < 0 || o.StaleWindow < 0 || o.HoldCheckTimeout < 0 || o.HoldCheckRetry < 0 {
		return fmt.Errorf("consumer: KeepAlive %v, StaleWindow %v, HoldCheckTimeout %v and HoldCheckRetry %v must not be negative",
			o.KeepAlive, o.StaleWindow, o.HoldCheckTimeout, o.HoldCheckRetry)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Tracer == nil {
		o.Tracer = noop.NewTracerProvider().Tracer("dpsync")
	}
	if o.Metrics == nil {
		o.Metrics = NoopMetrics()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.WorkerID == "" {
		o.WorkerID = "worker"
	}
	return nil
}

// msgState is one event the worker holds.
type msgState struct {
	msg          jetstream.Msg
	seq          uint64
	partition    int
	epoch        uint64
	position     uint64
	origin       string
	redelivered  bool
	dec          Decoded
	received     time.Time
	stored       time.Time // when the stream stored the event
	lastProgress time.Time
	traceCtx     trace.SpanContext
	// acked is set (by the goroutine that acknowledged it, before it hands the event back to
	// the loop) once the server confirmed the ack.
	acked bool
	// replayOf is the dead-letter sequence this event is a replay of (HeaderReplayOf), 0 if
	// none.
	replayOf uint64
}

// retryState is an entry waiting for its next attempt. Its key stays blocked in the batcher.
type retryState struct {
	entry    batcher.Entry
	kind     string
	op       batcher.Op
	due      time.Time
	first    time.Time
	attempts int
	backoff  backoff.BackOff
	last     applier.Outcome
}

type entryResult struct {
	entry   batcher.Entry
	kind    string
	op      batcher.Op
	fenced  bool
	final   bool // acked: applied or dead-lettered
	parked  bool // dead-lettered: later events of the key follow
	outcome applier.Outcome
}

type batchDone struct {
	freed   bool // its batcher slot was freed when the DPS calls returned (keys held)
	id      batcher.BatchID
	isRetry bool
	results []entryResult
	retries map[string]*retryState // by key, for retry batches
}

// inbound is a message a reader pulled, already decoded there (decoding is the costly
// part; readers run in parallel, the loop does not).
type inbound struct {
	msg       jetstream.Msg
	partition int
	epoch     uint64
	meta      *jetstream.MsgMetadata
	metaErr   error
	dec       Decoded
	decErr    error
	// after, if set, is not a message: the loop runs it when it comes up, after every
	// message sent before it (see Detach).
	after func()
}

// Engine is the processing core of a worker. Create it with NewEngine, start Run in one
// goroutine, feed it partitions with Attach.
type Engine struct {
	opts Options
	b    *batcher.Batcher

	in      chan inbound
	done    chan batchDone
	called  chan batcher.BatchID // batches whose DPS calls returned (outcomes still settling)
	keyDone chan followDone      // keys whose held followers were dead-lettered
	lone    chan loneDone        // events dead-lettered outside a batch (invalid, held)
	ctl     chan func()          // work from other goroutines run in the loop
	quit    chan struct{}        // closed when Run returns: readers stop sending
	stopReq chan struct{}
	stopped chan struct{}
	stopOne sync.Once

	// loop-owned state
	held    map[*msgState]struct{}
	bySeq   map[uint64]*msgState   // held events by stream sequence
	retries map[string]*retryState // by key
	perPart map[int]int            // events held per partition
	// unchecked holds, per key, events whose dead-letter hold check failed, and every later
	// event of the key, in order, until a check succeeds (nothing of the key may pass them).
	unchecked map[string][]*msgState
	nextCheck time.Time
	// blocked counts, per key, letters being stored outside a batch (invalid or held events):
	// the key's later events are parked until they are stored.
	blocked map[string]int
	// leaving holds the partitions being detached and the epoch being left (see Detach):
	// their events not in a DPS call or a letter write go back to the server.
	leaving map[int]uint64
	// aside holds, per partition, events to give back once its reader's open pull request
	// is over (see giveBack); they stay held (and kept alive) until then.
	aside map[int][]*msgState
	// budgetWake is when the DPS budget allows the next batch (zero: not waiting for it).
	budgetWake time.Time
	// settled remembers recently settled events (stream sequence → when), see accept.
	settled    *settledSet
	inFlight   int
	background int // goroutines dead-lettering outside a batch
	stopping   bool
	// oursMu guards leaving and stopping where batch goroutines read them (ours); the loop
	// writes them under it and reads them without.
	oursMu sync.RWMutex

	partsMu sync.Mutex
	parts   map[int]*partitionReader
	// noAttach: the engine is stopping; Attach refuses (guarded by partsMu).
	noAttach bool
	// readCtx bounds the readers' pull requests; cancelled when Run returns.
	readCtx    context.Context
	cancelRead context.CancelFunc
	wg         sync.WaitGroup // readers and batch goroutines
}

// NewEngine validates opts and returns an Engine.
func NewEngine(opts Options) (*Engine, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	bcfg := opts.Batcher
	if opts.Class != nil {
		bcfg.Class = func(en batcher.Entry) int {
			it := en.Value.(*msgState).dec.Item
			it.Op = modeOf(en.Op) // coalescing may have changed it
			return opts.Class(it)
		}
	}
	b, err := batcher.New(bcfg)
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	readCtx, cancelRead := context.WithCancel(context.Background())
	return &Engine{
		readCtx:    readCtx,
		cancelRead: cancelRead,
		opts:       opts,
		b:          b,
		in:         make(chan inbound, 256),
		done:       make(chan batchDone, 64),
		called:     make(chan batcher.BatchID), // unbuffered: taken before the batch's done
		keyDone:    make(chan followDone, 64),
		lone:       make(chan loneDone, 64),
		ctl:        make(chan func(), 16),
		quit:       make(chan struct{}),
		stopReq:    make(chan struct{}),
		stopped:    make(chan struct{}),
		held:       make(map[*msgState]struct{}),
		bySeq:      make(map[uint64]*msgState),
		retries:    make(map[string]*retryState),
		perPart:    make(map[int]int),
		unchecked:  make(map[string][]*msgState),
		blocked:    make(map[string]int),
		leaving:    make(map[int]uint64),
		aside:      make(map[int][]*msgState),
		settled:    newSettledSet(opts.StaleWindow),
		parts:      make(map[int]*partitionReader),
	}, nil
}

// Stop asks Run to finish gracefully: stop reading, give back (nak, in stream order) every
// event not in a DPS call or a dead-letter write — waiting in the batcher, for a retry or
// for a hold check — so that the partitions' next owner (or this worker's next start) gets
// them first and at once, finish the DPS calls and dead letters in flight, then return.
// When Run returns nil, no event is left unacknowledged in the worker's hands. Stop does
// not wait; Run's return (or Done) tells.
func (e *Engine) Stop() {
	e.partsMu.Lock()
	e.noAttach = true // from now on Attach refuses
	e.partsMu.Unlock()
	e.stopOne.Do(func() { close(e.stopReq) })
}

// Done is closed when Run has returned.
func (e *Engine) Done() <-chan struct{} { return e.stopped }

// Run processes events until Stop was called and the work drained, or ctx ends (hard stop:
// nothing more is acknowledged, everything held comes back by redelivery).
func (e *Engine) Run(ctx context.Context) error {
	defer close(e.stopped)
	callCtx, cancelCalls := context.WithCancel(ctx)
	defer func() {
		cancelCalls()
		close(e.quit)
		e.stopAllReaders()
		e.cancelRead()
		e.wg.Wait()
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	keepAlive := time.NewTicker(e.opts.KeepAlive)
	defer keepAlive.Stop()
	stopReq := e.stopReq
	for {
		now := e.opts.Now()
		if e.stopping {
			e.b.Flush()
		}
		if len(e.unchecked) > 0 && !now.Before(e.nextCheck) {
			e.recheckHolds(callCtx, now)
		}
		e.dispatchReady(callCtx, now)
		if e.stopping && e.inFlight == 0 && e.background == 0 && e.b.Pending() == 0 && len(e.aside) == 0 && e.readersDone() {
			return nil
		}
		// Backpressure: while the batcher is full, events stay with the readers (and the
		// server) instead of being refused: refusing one (a nak) would let later events of
		// its key, already pulled, overtake it.
		in := e.in
		if e.b.Pending() >= e.b.Config().MaxPending {
			in = nil
		}
		wait := e.nextWake(now)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-stopReq:
			stopReq = nil
			e.oursMu.Lock()
			e.stopping = true
			e.oursMu.Unlock()
			e.opts.Logger.Info("stopping: no more pulls, finishing in-flight work")
			e.stopAllReaders()
			e.giveBackAll()
		case m := <-in:
			if m.after != nil {
				m.after()
			} else {
				e.accept(callCtx, m)
			}
		case id := <-e.called:
			// The batch's DPS calls returned: its slot goes to the next batch while its
			// keys stay held until its outcomes are settled (acknowledged).
			e.b.Free(id)
			e.opts.Metrics.inFlight(callCtx, -1)
		case d := <-e.done:
			e.complete(callCtx, d)
		case f := <-e.keyDone:
			e.background--
			e.giveBack(f.notStored)
			for _, st := range f.sts {
				e.untrack(st)
			}
			e.b.Release(f.key)
		case d := <-e.lone:
			e.background--
			if d.giveBack {
				e.giveBack(d.sts)
			}
			for _, st := range d.sts {
				e.untrack(st)
			}
			e.unblock(d.key, e.opts.Now())
		case fn := <-e.ctl:
			fn()
		case <-keepAlive.C:
			now := e.opts.Now()
			e.keepAlive(now)
			e.settled.prune(now)
		case <-timer.C:
		}
	}
}

func (e *Engine) nextWake(now time.Time) time.Duration {
	wait := time.Hour
	if d, ok := e.b.UntilNext(now); ok && d < wait {
		wait = d
		if !e.budgetWake.IsZero() && now.Before(e.budgetWake) {
			wait = max(wait, e.budgetWake.Sub(now)) // ready, but the budget is not
		}
	}
	for _, r := range e.retries {
		if r.due.IsZero() {
			continue // in flight: its result wakes the loop
		}
		if d := r.due.Sub(now); d < wait {
			wait = d
		}
	}
	if len(e.unchecked) > 0 {
		if d := e.nextCheck.Sub(now); d < wait {
			wait = d
		}
	}
	if wait < time.Millisecond {
		wait = time.Millisecond
	}
	return wait
}

// accept takes one message from a reader.
//
// A message whose sequence the engine holds already is a redelivery that crossed the
// worker's InProgress: the copy is dropped, the held one settles it. A message whose
// sequence the engine settled within StaleWindow is a copy the server sent before it
// processed the ack (or, after a consumer-leader failover, one it believes it never
// delivered): applying it again would put it behind later events of its key that are
// applied meanwhile, so it is acknowledged and dropped.
func (e *Engine) accept(ctx context.Context, in inbound) {
	now := e.opts.Now()
	st := &msgState{msg: in.msg, partition: in.partition, epoch: in.epoch, received: now, lastProgress: now}
	meta, err := in.meta, in.metaErr
	if err != nil {
		e.opts.Logger.Warn("message without JetStream metadata dropped", "subject", in.msg.Subject(), "err", err)
		return
	}
	st.seq = meta.Sequence.Stream
	if held, dup := e.bySeq[st.seq]; dup {
		_ = in.msg.InProgress()
		held.lastProgress = now
		return
	}
	// Any delivery count: after a consumer-leader failover the new leader may not know of a
	// delivery the old one made (not yet replicated) and deliver the event again as a first.
	if e.settled.has(st.seq) {
		e.opts.Logger.Info("stale redelivery of a settled event dropped", "seq", st.seq, "deliveries", meta.NumDelivered)
		e.opts.Metrics.staleDropped(ctx)
		e.background++
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.ack(ctx, st)
			select {
			case e.lone <- loneDone{}:
			case <-ctx.Done():
			}
		}()
		return
	}
	if !e.ours(st) {
		// Pulled under an ownership that is over or being handed over: give it back, so
		// the server redelivers it to the next owner ahead of newer events.
		e.track(st)
		e.giveBack([]*msgState{st})
		return
	}
	st.redelivered = meta.NumDelivered > 1
	st.position = st.seq
	if p := in.msg.Headers().Get(HeaderPosition); p != "" {
		if v, err := strconv.ParseUint(p, 10, 64); err == nil && v > 0 {
			st.position = v
		}
	}
	if r := in.msg.Headers().Get(HeaderReplayOf); r != "" {
		if v, err := strconv.ParseUint(r, 10, 64); err == nil {
			st.replayOf = v
		}
	}
	st.origin, _, err = e.opts.Stream.OriginSubject(in.msg.Subject())
	if err != nil {
		st.origin = in.msg.Subject()
	}
	st.stored = meta.Timestamp
	// One consume span per event, a child of the producer's span when the event carries
	// trace context (W3C traceparent in its headers); the batch span links to it.
	_, span := e.opts.Tracer.Start(telemetry.Extract(context.Background(), in.msg.Headers()), "dpsync.consume",
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.destination.name", in.msg.Subject()),
			attribute.Int64("dpsync.stream_seq", int64(st.seq)), attribute.Int("dpsync.partition", st.partition)))
	st.traceCtx = span.SpanContext()
	span.End()
	e.track(st)
	e.opts.Metrics.eventIn(ctx)

	dec, err := in.dec, in.decErr
	if err != nil {
		l := e.letter(st, ClassInvalid, applier.Outcome{Reason: err.Error()}, 1, now)
		l.Key = KeyFromSubject(in.msg.Subject())
		e.deadLetterAsync(ctx, []*msgState{st}, l)
		return
	}
	st.dec = dec
	st.dec.Item.Redelivered = st.redelivered
	if e.opts.Logger.Enabled(ctx, slog.LevelDebug) {
		e.opts.Logger.Debug("event in", "seq", st.seq, "delivery", meta.Sequence.Consumer, "deliveries", meta.NumDelivered,
			"partition", st.partition, "epoch", st.epoch, "key", dec.Key, "op", string(dec.Item.Op), "event_id", dec.EventID)
	}
	if want, ok := e.keySubject(in.msg.Subject(), dec.Key); !ok {
		// Its subject decides its partition: an event published under another key's subject
		// could be applied by another worker at the same time as its own key's events.
		reason := fmt.Sprintf("subject %s does not match the event's %s: publish it to %s",
			st.origin, keyNoun(dec.Key), want)
		l := e.letter(st, ClassInvalid, applier.Outcome{Reason: reason}, 1, now)
		l.OriginSubject = want // a replay goes where it belongs
		e.deadLetterAsync(ctx, []*msgState{st}, l)
		return
	}
	if q, parked := e.unchecked[dec.Key]; parked || e.blocked[dec.Key] > 0 {
		e.unchecked[dec.Key] = append(q, st) // behind the key's unchecked events, or its letter in flight
		if !parked && e.nextCheck.IsZero() {
			e.nextCheck = now.Add(e.opts.HoldCheckRetry)
		}
		return
	}
	if !e.checkHold(ctx, st, now) {
		e.unchecked[dec.Key] = []*msgState{st}
		if e.nextCheck.IsZero() || e.nextCheck.Before(now) {
			e.nextCheck = now.Add(e.opts.HoldCheckRetry)
		}
		return
	}
}

// keySubject reports whether the stored subject carries key ("<kind>/<lower-cased id>") the
// way producers must spell it (event.Subject), and returns that producer subject.
func (e *Engine) keySubject(stored, key string) (string, bool) {
	kind, id, _ := strings.Cut(key, "/")
	want := e.opts.Stream.Prefix + "." + kind + "." + event.SubjectToken(id)
	toks := strings.Split(stored, ".")
	if len(toks) < 2 {
		return want, false
	}
	return want, toks[len(toks)-2] == kind && toks[len(toks)-1] == event.SubjectToken(id)
}

// keyNoun names the id of a key for people: `registration id "dev-1"`.
func keyNoun(key string) string {
	kind, id, _ := strings.Cut(key, "/")
	if kind == "group" {
		return fmt.Sprintf("enrollment group id %q", id)
	}
	return fmt.Sprintf("registration id %q", id)
}

// checkHold sends st to the batcher, or after its key's dead letter (class held) when the
// dead-letter stream holds an earlier letter of the key. It returns false, doing nothing,
// when the check could not be made: the caller parks st and retries later, in order.
func (e *Engine) checkHold(ctx context.Context, st *msgState, now time.Time) bool {
	if st.replayOf != 0 {
		cctx, cancel := context.WithTimeout(ctx, e.opts.HoldCheckTimeout)
		exists, err := e.opts.DeadLetters.LetterExists(cctx, st.replayOf)
		cancel()
		if err != nil {
			e.opts.Logger.Warn("checking a replayed event's letter failed; the key waits and is checked again",
				"key", st.dec.Key, "letter", st.replayOf, "err", err)
			return false
		}
		if !exists {
			e.opts.Logger.Info("replayed event dropped: its letter is gone (settled by an earlier copy, or purged)",
				"key", st.dec.Key, "letter", st.replayOf, "seq", st.seq)
			e.dropSettled(ctx, st)
			return true
		}
	}
	if e.opts.HoldPolicy == HoldFollow {
		cctx, cancel := context.WithTimeout(ctx, e.opts.HoldCheckTimeout)
		reason, held, err := e.opts.DeadLetters.Held(cctx, st.dec.Key, st.position)
		cancel()
		if err != nil {
			e.opts.Logger.Warn("dead-letter hold check failed; the key waits and is checked again",
				"key", st.dec.Key, "seq", st.seq, "err", err)
			return false
		}
		if held {
			l := e.letter(st, ClassHeld, applier.Outcome{Reason: reason}, 0, now)
			e.deadLetterAsync(ctx, []*msgState{st}, l)
			return true
		}
	}
	it := batcher.Item{Key: st.dec.Key, Kind: string(st.dec.Item.Kind), Op: opOf(st.dec.Item.Op), Value: st}
	if err := e.b.Add(now, it); err != nil {
		// Not reached: the loop stops taking events while the batcher is full, and parked
		// keys re-enter it only while it has room. Keep the event rather than refuse it.
		e.opts.Logger.Error("batcher refused an event; the key waits", "key", st.dec.Key, "err", err)
		return false
	}
	return true
}

// recheckHolds retries the hold checks of parked keys, each key's events in order, while
// the batcher has room.
func (e *Engine) recheckHolds(ctx context.Context, now time.Time) {
	for key, q := range e.unchecked {
		if e.blocked[key] > 0 {
			continue // a letter of the key is being stored: its events wait for it
		}
		for len(q) > 0 {
			st := q[0]
			if _, ok := e.held[st]; !ok { // dropped meanwhile
				q = q[1:]
				continue
			}
			if !e.ours(st) {
				e.giveBack(q) // the partition's new owner gets them, in order
				q = nil
				break
			}
			if e.b.Pending() >= e.b.Config().MaxPending || !e.checkHold(ctx, st, now) {
				break
			}
			q = q[1:]
			if e.blocked[key] > 0 {
				break // st went after a letter that is being stored: the rest waits for it
			}
		}
		if len(q) == 0 {
			delete(e.unchecked, key)
		} else {
			e.unchecked[key] = q
		}
	}
	e.nextCheck = now.Add(e.opts.HoldCheckRetry)
}

func (e *Engine) track(st *msgState) {
	e.held[st] = struct{}{}
	e.bySeq[st.seq] = st
	e.perPart[st.partition]++
}

func (e *Engine) untrack(st *msgState) {
	if _, ok := e.held[st]; !ok {
		return
	}
	delete(e.held, st)
	if e.bySeq[st.seq] == st {
		delete(e.bySeq, st.seq)
	}
	if st.acked {
		e.settled.add(st.seq, e.opts.Now())
	}
	e.perPart[st.partition]--
	if e.perPart[st.partition] <= 0 {
		delete(e.perPart, st.partition)
		e.partitionIdle(st.partition)
	}
}

func (e *Engine) keepAlive(now time.Time) {
	for st := range e.held {
		if now.Sub(st.lastProgress) >= e.opts.KeepAlive {
			if e.opts.Fence != nil && !e.opts.Fence(st.partition, st.epoch) {
				continue // not ours anymore: let it go back to the new owner
			}
			_ = st.msg.InProgress()
			st.lastProgress = now
		}
	}
}

func (e *Engine) dispatchReady(ctx context.Context, now time.Time) {
	ready := e.b.Config().MaxInFlight
	if e.opts.Budget != nil && !e.stopping {
		n, wait := e.opts.Budget()
		ready = min(ready, n)
		if n == 0 {
			e.budgetWake = now.Add(wait)
		}
	}
	for _, b := range e.b.ReadyN(now, ready) {
		e.inFlight++
		e.opts.Metrics.inFlight(ctx, 1)
		e.wg.Add(1)
		go e.runBatch(ctx, batchDone{id: b.ID}, b.Kind, b.Op, b.Entries)
	}
	// Retries whose time has come, grouped by kind and op, at most MaxItems a call.
	type group struct {
		kind string
		op   batcher.Op
	}
	var due map[group][]*retryState
	for _, r := range e.retries {
		if !r.due.After(now) && r.due != (time.Time{}) {
			if due == nil {
				due = make(map[group][]*retryState)
			}
			g := group{r.kind, r.op}
			due[g] = append(due[g], r)
		}
	}
	max := e.opts.Batcher.MaxItems
	if max <= 0 || max > 10 {
		max = 10
	}
	for g, rs := range due {
		for len(rs) > 0 {
			n := min(len(rs), max)
			chunk := rs[:n]
			rs = rs[n:]
			entries := make([]batcher.Entry, len(chunk))
			byKey := make(map[string]*retryState, len(chunk))
			for i, r := range chunk {
				r.due = time.Time{} // in flight
				entries[i] = r.entry
				byKey[r.entry.Key] = r
			}
			e.inFlight++
			e.opts.Metrics.inFlight(ctx, 1)
			e.wg.Add(1)
			go e.runBatch(ctx, batchDone{isRetry: true, retries: byKey}, g.kind, g.op, entries)
		}
	}
}

// runBatch calls DPS for entries and settles every final outcome (ack, or dead letter then
// ack) before reporting to the loop.
func (e *Engine) runBatch(ctx context.Context, d batchDone, kind string, op batcher.Op, entries []batcher.Entry) {
	defer e.wg.Done()
	links := make([]trace.Link, 0, len(entries))
	items := make([]applier.Item, 0, len(entries))
	live := make([]int, 0, len(entries))
	d.results = make([]entryResult, len(entries))
	for i, en := range entries {
		d.results[i] = entryResult{entry: en, kind: kind, op: op}
		st := en.Value.(*msgState)
		if !e.ours(st) {
			d.results[i].fenced = true
			continue
		}
		it := st.dec.Item
		it.Op = modeOf(op) // coalescing may have changed it (create + update → create)
		for _, folded := range en.Items {
			if fs := folded.Value.(*msgState); fs.redelivered {
				it.Redelivered = true
			}
		}
		if it.Op == dps.BulkModeCreate && len(en.Items) > 1 {
			for _, folded := range en.Items[:len(en.Items)-1] {
				it.Prior = append(it.Prior, folded.Value.(*msgState).dec.Item)
			}
		}
		if it.Redelivered && it.Op == dps.BulkModeCreate && e.opts.Successor != nil {
			own := statesOf(en) // the create first, then what was folded into it
			seqs := make(map[uint64]bool, len(own))
			for _, o := range own {
				seqs[o.seq] = true
			}
			subject, from, newest := st.msg.Subject(), own[0].seq, st.seq // st is the entry's newest event
			it.Later = func(ctx context.Context) (applier.Successors, error) {
				return e.laterUpdates(ctx, subject, from, newest, seqs)
			}
		}
		items = append(items, it)
		live = append(live, i)
		if st.traceCtx.IsValid() {
			links = append(links, trace.Link{SpanContext: st.traceCtx})
		}
	}
	if len(items) > 0 {
		if e.opts.Fence != nil {
			ctx = WithFence(ctx, func() bool {
				for _, i := range live {
					st := entries[i].Value.(*msgState)
					if !e.opts.Fence(st.partition, st.epoch) {
						return false
					}
				}
				return true
			})
		}
		spanCtx, span := e.opts.Tracer.Start(ctx, "dpsync.batch", trace.WithLinks(links...),
			trace.WithAttributes(attribute.String("dpsync.kind", kind), attribute.String("dpsync.op", string(items[0].Op)),
				attribute.Int("dpsync.items", len(items))))
		outs := e.opts.Apply.Apply(spanCtx, items)
		span.End()
		if !d.isRetry {
			select {
			case e.called <- d.id:
				d.freed = true
			case <-ctx.Done():
			}
		}
		now := e.opts.Now()
		var acks []*msgState
		debug := e.opts.Logger.Enabled(ctx, slog.LevelDebug)
		for j, i := range live {
			r := &d.results[i]
			r.outcome = outs[j]
			sts := statesOf(r.entry)
			if debug {
				seqs := make([]uint64, len(sts))
				for k, st := range sts {
					seqs[k] = st.seq
				}
				e.opts.Logger.Debug("outcome", "key", r.entry.Key, "op", string(items[j].Op), "seqs", seqs,
					"class", outs[j].Class, "reason", outs[j].Reason, "redelivered", items[j].Redelivered)
			}
			switch outs[j].Class {
			case applier.Applied:
				for _, st := range sts {
					e.opts.Metrics.applied(ctx, now.Sub(st.stored))
				}
				acks = append(acks, sts...)
				r.final = true
			case applier.Permanent:
				if e.publishLetters(ctx, sts, ClassPermanent, outs[j], 1, now, now) {
					acks = append(acks, sts...)
					r.final, r.parked = true, true
				}
			case applier.Transient:
				if d.isRetry {
					rs := d.retries[r.entry.Key]
					if rs != nil && now.Sub(rs.first) >= e.opts.Retry.Budget {
						if e.publishLetters(ctx, sts, ClassTransient, outs[j], rs.attempts+1, rs.first, now) {
							acks = append(acks, sts...)
							r.final, r.parked = true, true
						}
					}
				} else if e.opts.Retry.Budget == 0 {
					if e.publishLetters(ctx, sts, ClassTransient, outs[j], 1, now, now) {
						acks = append(acks, sts...)
						r.final, r.parked = true, true
					}
				}
			}
		}
		// Every final outcome is acknowledged, and confirmed, before the loop releases the
		// keys.
		e.ackAll(ctx, acks)
	}
	select {
	case e.done <- d:
	case <-ctx.Done():
	}
}

// maxLater bounds how many updates laterUpdates returns after an entry's newest event; it
// reads at most the entry's own events and twice that many others.
const maxLater = 64

// laterUpdates returns the update events stored on subject (one key's subject) after the
// create at sequence from, in order, up to the first event that is not an update: those
// stored up to newest (the entry's newest event) that are not the entry's own (own) as
// Between — a previous owner applied them folded into the create and settled them while the
// create came back — and those stored after newest as After.
func (e *Engine) laterUpdates(ctx context.Context, subject string, from, newest uint64, own map[uint64]bool) (applier.Successors, error) {
	var out applier.Successors
	after := from
	for reads := 0; reads < len(own)+2*maxLater && len(out.After) < maxLater; reads++ {
		data, seq, found, err := e.opts.Successor(ctx, subject, after)
		if err != nil {
			return out, err
		}
		if !found {
			return out, nil
		}
		after = seq
		if own[seq] {
			continue
		}
		dec, err := e.opts.Decode(data)
		if err != nil || dec.Item.Op != dps.BulkModeUpdate {
			return out, nil
		}
		if seq < newest {
			out.Between = append(out.Between, dec.Item)
		} else {
			out.After = append(out.After, dec.Item)
		}
	}
	return out, nil
}

func statesOf(en batcher.Entry) []*msgState {
	sts := make([]*msgState, 0, len(en.Items))
	for _, it := range en.Items {
		sts = append(sts, it.Value.(*msgState))
	}
	if len(sts) == 0 {
		sts = append(sts, en.Value.(*msgState))
	}
	return sts
}

// publishLetters dead-letters every event of one entry; the caller acks them. It retries
// the publish until it succeeds or ctx ends; it returns false when ctx ended first (the
// events stay unacknowledged and come back).
func (e *Engine) publishLetters(ctx context.Context, sts []*msgState, class string, o applier.Outcome, attempts int, first, last time.Time) bool {
	for i, st := range sts {
		l := e.letter(st, class, o, attempts, last)
		l.FirstFailure = first
		if i > 0 && len(sts) > 1 {
			l.Reason = o.Reason + " (coalesced with the event before it)"
		}
		if !e.publishLetter(ctx, st, l) {
			return false
		}
	}
	return true
}

// ackAll acknowledges sts and waits for the server's confirmation of each: confirmed acks
// (AckSync), sent concurrently so that a batch costs one round trip, not one per event. A
// confirmed ack matters for order: the key's next event is released only after this one can
// no longer be redelivered (a replicated consumer confirms an ack once a quorum stored it;
// a plain ack followed by a flush can be lost with the consumer leader).
//
// Of a key's events (a folded group: a create and the updates folded into it, say), the
// newest is acknowledged last, once the others' acks are confirmed — a second round trip,
// only for batches that folded. A worker that dies between the acks then leaves the newest
// unacknowledged, so what comes back of the key always ends with the content DPS got last,
// and applying it again reaches the same state. Acknowledged all at once, the group's create
// could come back alone after the update folded into it was settled: its next owner would
// find the update's content on DPS — neither the create's, nor a folded one's, nor a later
// event's — and dead-letter the create (409201); an older update coming back alone would
// put older content back.
func (e *Engine) ackAll(ctx context.Context, sts []*msgState) {
	sts = e.removeReplayedLetters(ctx, sts)
	others, newest := splitNewestOfKey(sts)
	e.ackConcurrently(ctx, others)
	for _, st := range others {
		if !st.acked {
			return // ctx ended: everything not acknowledged comes back
		}
	}
	e.ackConcurrently(ctx, newest)
}

// splitNewestOfKey splits sts into the newest event (highest stream sequence) of each key
// and the others. Events without a key (undecodable) count as their own key.
func splitNewestOfKey(sts []*msgState) (others, newest []*msgState) {
	top := make(map[string]*msgState, len(sts))
	for _, st := range sts {
		if k := st.dec.Key; k != "" {
			if cur, ok := top[k]; !ok || st.seq > cur.seq {
				top[k] = st
			}
		}
	}
	for _, st := range sts {
		if st.dec.Key == "" || top[st.dec.Key] == st {
			newest = append(newest, st)
		} else {
			others = append(others, st)
		}
	}
	return others, newest
}

// ackConcurrently acknowledges sts at once and waits for every confirmation (or ctx's end).
func (e *Engine) ackConcurrently(ctx context.Context, sts []*msgState) {
	switch len(sts) {
	case 0:
		return
	case 1:
		e.ack(ctx, sts[0])
		return
	}
	const maxConcurrentAcks = 32
	sem := make(chan struct{}, maxConcurrentAcks)
	var wg sync.WaitGroup
	for _, st := range sts {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			e.ack(ctx, st)
		}()
	}
	wg.Wait()
}

// removeReplayedLetters removes the dead letters that settled events are replays of, before
// the events are acknowledged: while a letter exists, newer events of its key are held
// behind it, so a replay (internal/dlq) waits for this removal before it replays the key's
// next letter. A removal is retried until it succeeds or ctx ends; the events whose letter
// could not be removed are left out of the result (not acknowledged: they come back).
func (e *Engine) removeReplayedLetters(ctx context.Context, sts []*msgState) []*msgState {
	out := sts[:0:0]
	for _, st := range sts {
		if st.replayOf != 0 && !e.removeLetter(ctx, st) {
			continue
		}
		out = append(out, st)
	}
	return out
}

func (e *Engine) removeLetter(ctx context.Context, st *msgState) bool {
	delay := 100 * time.Millisecond
	for {
		err := e.opts.DeadLetters.Settled(ctx, st.dec.Key, st.replayOf)
		if err == nil {
			return true
		}
		e.opts.Logger.Warn("removing the replayed dead letter failed; retrying before the event is acknowledged",
			"key", st.dec.Key, "letter", st.replayOf, "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// ack acknowledges st and waits for the server's confirmation, retrying until it comes or
// ctx ends; st.acked tells which.
func (e *Engine) ack(ctx context.Context, st *msgState) {
	delay := 50 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := st.msg.DoubleAck(actx)
		cancel()
		if err == nil || errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			st.acked = true
			return
		}
		if ctx.Err() != nil {
			return
		}
		e.opts.Logger.Warn("ack not confirmed; retrying", "seq", st.seq, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, 2*time.Second)
	}
}

// publishLetter stores st's dead letter l, retrying until it is stored, ctx ends, or st's
// partition is no longer this worker's: a letter is an ordering decision (the key's later
// events follow it), so like a DPS write it is made only under the lease — checked before
// every attempt, each attempt bounded by LetterTimeout, under the lease's safety margin. It
// reports whether the letter was stored; if not, the caller gives st back.
func (e *Engine) publishLetter(ctx context.Context, st *msgState, l Letter) bool {
	delay := 100 * time.Millisecond
	for {
		if e.opts.Fence != nil && !e.opts.Fence(st.partition, st.epoch) {
			e.opts.Logger.Info("dead letter not stored: the partition is no longer ours; its next owner decides",
				"key", l.Key, "origin_seq", l.OriginSeq, "partition", st.partition)
			return false
		}
		actx, cancel := context.WithTimeout(ctx, e.opts.LetterTimeout)
		err := e.opts.DeadLetters.Publish(actx, l)
		cancel()
		if err == nil {
			e.opts.Metrics.deadLettered(ctx, l.Class)
			return true
		}
		e.opts.Logger.Error("dead-letter publish failed; event stays unacknowledged and is retried",
			"key", l.Key, "origin_seq", l.OriginSeq, "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

func (e *Engine) letter(st *msgState, class string, o applier.Outcome, attempts int, when time.Time) Letter {
	l := Letter{
		Data:          st.msg.Data(),
		Header:        st.msg.Headers(),
		OriginStream:  e.opts.Stream.Name,
		OriginSubject: st.origin,
		OriginSeq:     st.seq,
		Position:      st.position,
		Key:           st.dec.Key,
		Kind:          string(st.dec.Item.Kind),
		Operation:     string(st.dec.Item.Op),
		EventID:       st.dec.EventID,
		Class:         class,
		Code:          o.Code,
		Status:        o.Status,
		Reason:        o.Reason,
		Attempts:      attempts,
		FirstFailure:  when,
		LastFailure:   when,
	}
	if st.traceCtx.IsValid() {
		l.TraceID = st.traceCtx.TraceID().String()
	}
	return l
}

// deadLetterAsync publishes l for sts outside the loop and acks them. Until the letter is
// stored, later events of its key wait (parked in order, see accept): checked before, they
// would not see the letter and could pass it.
func (e *Engine) deadLetterAsync(ctx context.Context, sts []*msgState, l Letter) {
	e.background++
	if l.Key != "" {
		e.blocked[l.Key]++
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		d := loneDone{sts: sts, key: l.Key}
		if e.publishLetter(ctx, sts[0], l) {
			e.ackAll(ctx, sts)
		} else {
			d.giveBack = true
		}
		select {
		case e.lone <- d:
		case <-ctx.Done():
		}
	}()
}

// dropSettled acknowledges st without applying it (its outcome was settled elsewhere).
func (e *Engine) dropSettled(ctx context.Context, st *msgState) {
	e.background++
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		st.replayOf = 0 // nothing to remove
		e.ack(ctx, st)
		select {
		case e.lone <- loneDone{sts: []*msgState{st}}:
		case <-ctx.Done():
		}
	}()
}

// loneDone reports events dead-lettered outside a batch; key was blocked for them. When the
// letter was not stored (the partition was lost), giveBack says to give the events back.
type loneDone struct {
	sts      []*msgState
	key      string
	giveBack bool
}

// unblock ends one wait of key for a letter being stored; when none is left, the key's
// parked events are checked at once.
func (e *Engine) unblock(key string, now time.Time) {
	if key == "" || e.blocked[key] == 0 {
		return
	}
	e.blocked[key]--
	if e.blocked[key] > 0 {
		return
	}
	delete(e.blocked, key)
	if len(e.unchecked[key]) > 0 {
		e.nextCheck = now
	}
}

type followDone struct {
	key       string
	sts       []*msgState
	notStored []*msgState // their letters were not stored (partition lost): given back
}

// complete settles a finished batch in the loop.
func (e *Engine) complete(ctx context.Context, d batchDone) {
	now := e.opts.Now()
	e.inFlight--
	if !d.freed {
		e.opts.Metrics.inFlight(ctx, -1)
	}
	var hold []string
	for _, r := range d.results {
		key := r.entry.Key
		if !r.fenced && !r.final {
			// A failed attempt of a partition lost or left meanwhile is not retried here:
			// the next owner has the events.
			r.fenced = !e.ours(r.entry.Value.(*msgState))
		}
		switch {
		case r.fenced:
			// The partition is lost: this entry and the key's later events go back to the
			// server for its next owner, oldest first.
			sts := statesOf(r.entry)
			for _, en := range e.b.TakeKey(key) {
				sts = append(sts, statesOf(en)...)
			}
			sts = append(sts, e.unchecked[key]...)
			delete(e.unchecked, key)
			e.giveBack(sts)
			delete(e.retries, key)
			if d.isRetry {
				e.b.Release(key)
			}
		case r.final:
			for _, st := range statesOf(r.entry) {
				e.untrack(st)
			}
			delete(e.retries, key)
			if r.parked && e.opts.HoldPolicy == HoldFollow {
				e.follow(ctx, key, r)
				if !d.isRetry {
					hold = append(hold, key)
				}
				continue
			}
			if d.isRetry {
				e.b.Release(key)
			}
		case r.outcome.Class == applier.Transient:
			rs := e.retries[key]
			if rs == nil {
				rs = &retryState{entry: r.entry, kind: r.kind, op: r.op, first: now, backoff: e.newBackOff()}
				e.retries[key] = rs
			}
			rs.attempts++
			rs.last = r.outcome
			wait := rs.backoff.NextBackOff()
			if ra := retryAfter(r.outcome.Err); ra > wait {
				wait = ra // DPS asked for longer
			}
			rs.due = now.Add(wait)
			e.opts.Metrics.retried(ctx)
			if !d.isRetry {
				hold = append(hold, key)
			}
		default:
			// Not final and not transient: the dead-letter publish gave up because the worker
			// is stopping. Leave the events unacknowledged.
			for _, st := range statesOf(r.entry) {
				e.untrack(st)
			}
			delete(e.retries, key)
			if d.isRetry {
				e.b.Release(key)
			}
		}
	}
	switch {
	case d.isRetry:
	case d.freed:
		// Freed with every key held: release those that do not stay held.
		for _, r := range d.results {
			if !slices.Contains(hold, r.entry.Key) {
				e.b.Release(r.entry.Key)
			}
		}
	default:
		e.b.Finish(d.id, hold...)
	}
}

// follow dead-letters the pending events of key behind its dead letter, then releases key.
func (e *Engine) follow(ctx context.Context, key string, parked entryResult) {
	entries := e.b.TakeKey(key)
	var sts []*msgState
	for _, en := range entries {
		sts = append(sts, statesOf(en)...)
	}
	first := parked.entry.Value.(*msgState)
	reason := fmt.Sprintf("held behind dead letter of event %s (origin seq %d): %s", first.dec.EventID, first.seq, parked.outcome.Reason)
	e.background++
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		now := e.opts.Now()
		published := 0
		for _, st := range sts {
			why := reason
			if r, held, err := e.opts.DeadLetters.Held(ctx, key, st.position); err == nil && held {
				why = r // names the letter's sequence in the dead-letter stream
			}
			l := e.letter(st, ClassHeld, applier.Outcome{Reason: why}, 0, now)
			if !e.publishLetter(ctx, st, l) {
				break
			}
			published++
		}
		e.ackAll(ctx, sts[:published])
		select {
		case e.keyDone <- followDone{key: key, sts: sts, notStored: sts[published:]}:
		case <-ctx.Done():
		}
	}()
}

// ours reports whether the worker still works on st: its partition's lease holds (Fence)
// and the partition is not being detached (leaving). Events that are not ours go back.
func (e *Engine) ours(st *msgState) bool {
	e.oursMu.RLock()
	ep, leaving := e.leaving[st.partition]
	stopping := e.stopping
	e.oursMu.RUnlock()
	if stopping || leaving && ep == st.epoch {
		return false
	}
	return e.opts.Fence == nil || e.opts.Fence(st.partition, st.epoch)
}

// dropPartition gives back (see giveBack) every event of partition p the engine holds and
// that is not in a DPS call: pending in the batcher, waiting for a retry, or parked behind a
// hold check. Called when p is left (handed over, lost) and at Stop; the calls in flight
// settle when they return. Whoever reads p next (the new owner, or this worker at a new
// epoch) gets the events first, in order.
func (e *Engine) dropPartition(p int) {
	dropped := e.takePartition(p)
	if len(dropped) == 0 {
		return
	}
	e.giveBack(dropped)
	e.opts.Logger.Info("partition left: its events not in a DPS call were given back for redelivery", "partition", p, "events", len(dropped))
}

// takePartition removes from the batcher, the retry schedule and the hold checks every
// event of p that is not in a DPS call or a letter write, and returns them (still held).
func (e *Engine) takePartition(p int) []*msgState {
	keys := map[string]bool{}
	for st := range e.held {
		if st.partition == p && st.dec.Key != "" {
			keys[st.dec.Key] = true
		}
	}
	var taken []*msgState
	for key := range keys {
		for _, en := range e.b.TakeKey(key) {
			taken = append(taken, statesOf(en)...)
		}
		if r, ok := e.retries[key]; ok && !r.due.IsZero() {
			taken = append(taken, statesOf(r.entry)...)
			delete(e.retries, key)
			e.b.Release(key)
		}
		taken = append(taken, e.unchecked[key]...)
		delete(e.unchecked, key)
	}
	return taken
}

// giveBack forgets sts, events of partitions this worker lost or leaves, and naks them in
// stream order: the server queues them for redelivery at once, ahead of the partitions'
// newer events, so the next owner gets them first and in order (left to AckWait, they would
// come back after newer events of their keys). While a partition's reader still has a pull
// request open, its events are set aside instead and given back when the request is over:
// the server would redeliver a nak'd event into that open request, and nak'd again it
// would queue behind the others, out of order.
func (e *Engine) giveBack(sts []*msgState) {
	byPart := map[int][]*msgState{}
	for _, st := range sts {
		if _, ok := e.held[st]; ok {
			byPart[st.partition] = append(byPart[st.partition], st)
		}
	}
	for p, ps := range byPart {
		if e.readerRunning(p) {
			e.aside[p] = append(e.aside[p], ps...)
			continue
		}
		e.nakInOrder(append(e.aside[p], ps...))
		delete(e.aside, p)
	}
}

// flushAside gives back what was set aside for p, once p's reader has no request open.
func (e *Engine) flushAside(p int) {
	if sts := e.aside[p]; len(sts) > 0 {
		delete(e.aside, p)
		e.nakInOrder(sts)
	}
}

func (e *Engine) nakInOrder(sts []*msgState) {
	slices.SortFunc(sts, func(a, b *msgState) int { return cmp.Compare(a.seq, b.seq) })
	for _, st := range sts {
		if _, ok := e.held[st]; !ok {
			continue
		}
		e.untrack(st)
		_ = st.msg.Nak()
	}
}

// readerRunning reports whether p's reader may still have a pull request open.
func (e *Engine) readerRunning(p int) bool {
	e.partsMu.Lock()
	r := e.parts[p]
	e.partsMu.Unlock()
	if r == nil {
		return false
	}
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// giveBackAll gives back, at Stop, every held event not in a DPS call or a letter write.
func (e *Engine) giveBackAll() {
	ps := map[int]bool{}
	for st := range e.held {
		ps[st.partition] = true
	}
	for p := range ps {
		e.dropPartition(p)
	}
}

func opOf(m dps.BulkMode) batcher.Op {
	switch m {
	case dps.BulkModeCreate:
		return batcher.OpCreate
	case dps.BulkModeUpdate:
		return batcher.OpUpdate
	case dps.BulkModeUpdateIfMatchETag:
		return batcher.OpUpdateIfMatch
	default:
		return batcher.OpDelete
	}
}

func modeOf(op batcher.Op) dps.BulkMode {
	switch op {
	case batcher.OpCreate:
		return dps.BulkModeCreate
	case batcher.OpUpdate:
		return dps.BulkModeUpdate
	case batcher.OpUpdateIfMatch:
		return dps.BulkModeUpdateIfMatchETag
	default:
		return dps.BulkModeDelete
	}
}

// newBackOff returns the delays between attempts of one failing entry: exponential from
// Retry.Initial, doubling, ±50 % jitter, capped at Retry.Max. The retry budget (Retry.Budget)
// is enforced by the engine, not by the backoff, so it never stops by itself.
func (e *Engine) newBackOff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = e.opts.Retry.Initial
	b.MaxInterval = e.opts.Retry.Max
	b.Multiplier = 2
	b.RandomizationFactor = 0.5
	b.MaxElapsedTime = 0
	b.Reset()
	return b
}

// retryAfter reads Retry-After (seconds or HTTP date) from a DPS response error.
func retryAfter(err error) time.Duration {
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.RawResponse == nil {
		return 0
	}
	v := re.RawResponse.Header.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return time.Until(t)
	}
	return 0
}

type fenceKey struct{}

// WithFence returns ctx carrying fence, which reports whether the work done under ctx may
// still touch DPS. The DPS client's pipeline checks it right before every try (see
// FenceFrom), so a worker that lost its partitions between the batch's check and the
// request leaving the process does not send it.
func WithFence(ctx context.Context, fence func() bool) context.Context {
	return context.WithValue(ctx, fenceKey{}, fence)
}

// FenceFrom returns the fence of ctx, or nil.
func FenceFrom(ctx context.Context) func() bool {
	f, _ := ctx.Value(fenceKey{}).(func() bool)
	return f
}

// HeaderPosition is the event header carrying a replayed event's original order position.
const HeaderPosition = "Dpsync-Position"

// HeaderReplayOf is the event header naming the dead-letter sequence a replayed or redriven
// event came from (internal/dlq sets it).
const HeaderReplayOf = "Dpsync-Replay-Of"

// settledSet remembers stream sequences settled within a window, as a bitmap in blocks of
// settledBlockSize sequences: what the worker settles in a window is a nearly dense run of
// the stream's sequences, so a million cost a few hundred blocks of 512 bytes, where a map
// entry per sequence cost ~90 MB. A block goes when its newest sequence is older than the
// window, so a sequence may be remembered longer than the window, never shorter; that is
// safe, as no delivery of a settled sequence is ever needed again (a replay is a new
// sequence). It is owned by the engine's loop.
type settledSet struct {
	window time.Duration
	blocks map[uint64]*settledBlock // by seq / settledBlockSize
}

type settledBlock struct {
	bits [settledBlockSize / 64]uint64
	last time.Time // when the block's newest sequence was added
}

const (
	settledBlockSize = 4096
	// maxSettledBlocks bounds the set whatever the rate or the spread of sequences (16 M
	// sequences when dense, 2 MB of bits); the blocks added to least recently go first.
	maxSettledBlocks = 4096
)

func newSettledSet(window time.Duration) *settledSet {
	return &settledSet{window: window, blocks: make(map[uint64]*settledBlock)}
}

func (s *settledSet) add(seq uint64, now time.Time) {
	id := seq / settledBlockSize
	b := s.blocks[id]
	if b == nil {
		if len(s.blocks) >= maxSettledBlocks {
			s.dropOldest()
		}
		b = &settledBlock{}
		s.blocks[id] = b
	}
	i := seq % settledBlockSize
	b.bits[i/64] |= 1 << (i % 64)
	b.last = now
}

func (s *settledSet) has(seq uint64) bool {
	b := s.blocks[seq/settledBlockSize]
	if b == nil {
		return false
	}
	i := seq % settledBlockSize
	return b.bits[i/64]&(1<<(i%64)) != 0
}

func (s *settledSet) prune(now time.Time) {
	for id, b := range s.blocks {
		if now.Sub(b.last) > s.window {
			delete(s.blocks, id)
		}
	}
}

func (s *settledSet) dropOldest() {
	var oldest uint64
	var at time.Time
	first := true
	for id, b := range s.blocks {
		if first || b.last.Before(at) {
			oldest, at, first = id, b.last, false
		}
	}
	delete(s.blocks, oldest)
}
