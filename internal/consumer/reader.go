package consumer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/event"
)

// partitionReader pulls one partition's consumer and hands messages to the loop.
type partitionReader struct {
	p         int
	epoch     uint64
	cons      jetstream.Consumer // owned by the read goroutine
	ro        ReadOptions
	done      chan struct{} // closed when the pull goroutine has returned
	detached  bool          // guarded by Engine.partsMu, like closing and onDrained
	closing   bool          // the engine is stopping: no new pull
	onDrained func()
	// idle, when set, is closed once the engine holds no event of the partition (guarded
	// by Engine.partsMu; see resyncPartition).
	idle chan struct{}
}

// ReadOptions tune pulling.
type ReadOptions struct {
	// PullBatch is how many messages one pull request asks for (default 500).
	PullBatch int
	// PullExpiry is how long one pull request stays open at the server (default 2 s,
	// at least 100 ms). It bounds how long a worker that lost a partition — paused, cut off —
	// can still be handed events by the server: a new owner waits for it (see the
	// partition manager in internal/app) before it pulls. Keep it well under the lease TTL.
	PullExpiry time.Duration
	// Reopen, if set, returns the partition's consumer again (creating it if it is gone)
	// when a pull fails because the consumer is gone. Nil: the reader pulls the same
	// consumer handle again.
	Reopen func(ctx context.Context) (jetstream.Consumer, error)
	// RedeliveryWindow bounds one collection of the partition's unacknowledged events when
	// the reader starts or after a gap (see syncReader; default PullExpiry). Keep it well
	// under the consumer's AckWait: collected events get no keep-alive until the engine has
	// them.
	RedeliveryWindow time.Duration
}

// DefaultPullExpiry is the default ReadOptions.PullExpiry.
const DefaultPullExpiry = 2 * time.Second

// ErrPartitionDraining is returned by Attach while the engine still holds events of the
// partition from its previous attachment (a DPS call in flight): a new reader then would get
// redelivered copies of events the engine still holds, and the key's later events could
// overtake them. Retry after a moment.
var ErrPartitionDraining = errors.New("events of the previous attachment are still held")

// ErrStopping is returned by Attach once the engine is stopping: a partition acquired then
// (another worker released it while this one stops too) is not read; its lease goes with
// the worker's.
var ErrStopping = errors.New("the engine is stopping")

// Attach starts reading partition p from cons under ownership epoch. Events read carry the
// epoch; the engine checks it with Fence before each DPS call, and the reader checks it
// before each pull request: a worker that lost p sends the server no new request for it.
// The reader first collects the partition's unacknowledged events (a previous owner's) and
// hands them on in stream order once none is left elsewhere (see syncReader).
func (e *Engine) Attach(p int, epoch uint64, cons jetstream.Consumer, ro ReadOptions) error {
	if ro.PullBatch <= 0 {
		ro.PullBatch = 500
	}
	if ro.PullExpiry == 0 {
		ro.PullExpiry = DefaultPullExpiry
	}
	if ro.PullExpiry < 100*time.Millisecond {
		return fmt.Errorf("partition %d: pull expiry %v is under 100ms", p, ro.PullExpiry)
	}
	if ro.RedeliveryWindow <= 0 {
		ro.RedeliveryWindow = ro.PullExpiry
	}
	e.partsMu.Lock()
	defer e.partsMu.Unlock()
	if e.noAttach {
		return fmt.Errorf("partition %d: %w", p, ErrStopping)
	}
	if r, ok := e.parts[p]; ok {
		if !r.detached {
			return fmt.Errorf("partition %d is already attached", p)
		}
		return fmt.Errorf("partition %d: %w", p, ErrPartitionDraining)
	}
	r := &partitionReader{p: p, epoch: epoch, cons: cons, ro: ro, done: make(chan struct{})}
	e.parts[p] = r
	e.wg.Add(1)
	go e.read(r)
	e.opts.Logger.Info("partition attached", "partition", p, "epoch", epoch)
	return nil
}

// read pulls r's partition, one request at a time, until r is detached, the engine stops,
// or the partition is no longer this worker's. A request, once sent, runs to its end (all
// its messages or its expiry) and its messages are handed on: the server counts them as
// delivered to this worker, so they must reach the engine (which settles them, or gives
// them back with a nak when the partition is lost) rather than be left to expire.
//
// The reader hands an event on only while it is in step with the consumer: every delivery
// the consumer made since the reader last synchronised (see syncReader) came to this
// reader, which it checks by the deliveries' consumer sequence numbers. A gap means some
// delivery went elsewhere — to a pull request a previous owner sent before its node froze,
// which the server registered only when the node resumed (with a fresh expiry), or to a
// request whose answer was lost in a reconnect. That event comes back only after AckWait,
// and a later event of its key, read meanwhile, must not overtake it. So at a gap the
// reader hands on nothing more, gives back what it and the engine hold of the partition
// (not what is in a DPS call: those precede the missing delivery), and synchronises again.
func (e *Engine) read(r *partitionReader) {
	defer e.wg.Done()
	defer close(r.done)
	// Last, behind every message this reader handed on: what was set aside for the
	// partition while its request was open goes back now (see Engine.giveBack).
	defer func() {
		select {
		case e.in <- inbound{after: func() { e.flushAside(r.p) }}:
		case <-e.quit:
		}
	}()
	last, ok := e.syncReader(r)
	if !ok {
		return
	}
	delay := 100 * time.Millisecond
	for {
		if !e.reading(r) {
			return
		}
		ctx, cancel := context.WithTimeout(e.readCtx, r.ro.PullExpiry)
		batch, err := r.cons.Fetch(r.ro.PullBatch, jetstream.FetchContext(ctx))
		var unhanded []jetstream.Msg // read after a gap: not handed on
		gapAt, gapWant := uint64(0), uint64(0)
		if err == nil {
			for m := range batch.Messages() {
				in := inbound{msg: m, partition: r.p, epoch: r.epoch}
				in.meta, in.metaErr = m.Metadata()
				if gapAt == 0 && in.metaErr == nil {
					if c := in.meta.Sequence.Consumer; c != last+1 {
						gapAt, gapWant = c, last+1
					} else {
						last = c
					}
				}
				if gapAt != 0 {
					unhanded = append(unhanded, m)
					continue
				}
				if !e.handOn(in) {
					cancel()
					return
				}
			}
			err = batch.Error()
		}
		cancel()
		if gapAt != 0 {
			// The request is over (its channel closed): nothing more of it arrives.
			e.opts.Logger.Warn("a delivery of the partition went elsewhere; giving back what is not in a DPS call and reading again in order",
				"partition", r.p, "delivery", gapAt, "expected", gapWant, "given_back_unread", len(unhanded))
			e.opts.Metrics.resync(e.readCtx, r.p)
			if e.opts.InStep != nil {
				e.opts.InStep(r.p, r.epoch, false)
			}
			if !e.giveBackForResync(r, unhanded) {
				return
			}
			if last, ok = e.syncReader(r); !ok {
				return
			}
			continue
		}
		if err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			delay = 100 * time.Millisecond
			continue
		}
		if e.readCtx.Err() != nil {
			return
		}
		// The server or the connection failed the request (consumer gone, leader election,
		// reconnecting): pull again after a pause, through Reopen when the consumer is gone.
		e.opts.Logger.Warn("pull failed; pulling again", "partition", r.p, "err", err)
		select {
		case <-e.quit:
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
		if r.ro.Reopen != nil && (errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound)) {
			rctx, rcancel := context.WithTimeout(e.readCtx, 10*time.Second)
			c, rerr := r.ro.Reopen(rctx)
			rcancel()
			if rerr != nil {
				e.opts.Logger.Warn("recreate partition consumer", "partition", r.p, "err", rerr)
				continue
			}
			r.cons = c
			e.opts.Logger.Info("partition consumer recreated", "partition", r.p)
			// A new consumer numbers its deliveries afresh.
			if last, ok = e.syncReader(r); !ok {
				return
			}
		}
	}
}

// handOn decodes in's message (in the reader's goroutine, off the loop) and hands it to the
// loop; it returns false when the engine quits first.
func (e *Engine) handOn(in inbound) bool {
	in.dec, in.decErr = e.opts.Decode(in.msg.Data())
	select {
	case e.in <- in:
		return true
	case <-e.quit:
		return false
	}
}

// reading reports whether r may send another pull request: it is attached, the engine is
// not stopping, and the partition is still this worker's.
func (e *Engine) reading(r *partitionReader) bool {
	e.partsMu.Lock()
	stop := r.detached || r.closing
	e.partsMu.Unlock()
	if stop || e.readCtx.Err() != nil {
		return false
	}
	// Lost: not one more request (Detach follows).
	return e.opts.Fence == nil || e.opts.Fence(r.p, r.epoch)
}

// giveBackForResync gives back, after a gap, the messages the reader did not hand on and
// every event of the partition the engine holds that is not in a DPS call or a letter
// write, then waits until the engine holds no event of the partition (those calls
// settled). It returns false when the reader must stop instead.
func (e *Engine) giveBackForResync(r *partitionReader, unhanded []jetstream.Msg) bool {
	nakByStreamSeq(unhanded)
	idle := make(chan struct{})
	select {
	case e.in <- inbound{after: func() { e.resyncPartition(r.p, idle) }}:
	case <-e.quit:
		return false
	}
	for {
		select {
		case <-idle:
			return true
		case <-e.quit:
			return false
		case <-time.After(200 * time.Millisecond):
			if !e.reading(r) {
				return false
			}
		}
	}
}

// resyncPartition (loop) gives back every event of p not in a DPS call or a letter write:
// p's reader has no request open, so they are nak'd at once. idle is closed once the engine
// holds no event of p.
func (e *Engine) resyncPartition(p int, idle chan struct{}) {
	sts := append(e.aside[p], e.takePartition(p)...)
	delete(e.aside, p)
	e.nakInOrder(sts)
	if e.perPart[p] == 0 {
		close(idle)
		return
	}
	e.partsMu.Lock()
	if r := e.parts[p]; r != nil {
		r.idle = idle
	}
	e.partsMu.Unlock()
}

// syncReader brings r in step with its consumer before anything is handed on, and returns
// the consumer sequence of the last delivery the reader has seen. In step means: every
// event the consumer counts as delivered and unacknowledged (NumAckPending) is in the
// reader's hands, and every delivery since the reader asked came to it. Such events are a
// previous owner's (or this worker's, given back after a gap) and the server redelivers
// them in the order their ack timers ran out, not the stream's (two events of a key kept
// alive by one keep-alive pass expire microseconds apart, either way round). So the
// reader collects them — until it has seen as many redeliveries as were pending, or for
// RedeliveryWindow — checks with the server that nothing is unacknowledged beyond them and
// that no delivery went elsewhere, and hands them on in stream order. If the check fails
// (an event still waits for its ack timer, or another request took one), it gives them
// back and collects again. It returns false when the reader must stop.
func (e *Engine) syncReader(r *partitionReader) (uint64, bool) {
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		if !e.reading(r) {
			return 0, false
		}
		base, err := e.consumerInfo(r)
		if err == nil {
			var got []jetstream.Msg
			var last uint64
			var complete bool
			got, last, complete, err = e.collect(r, base)
			if err == nil && complete {
				if e.opts.InStep != nil {
					e.opts.InStep(r.p, r.epoch, true)
				}
				if attempt > 1 {
					e.opts.Logger.Info("partition in step with its consumer again", "partition", r.p, "attempts", attempt)
				}
				if len(got) > 0 {
					e.opts.Logger.Info("unacknowledged events collected, handed on in stream order",
						"partition", r.p, "collected", len(got))
				}
				for _, m := range got {
					in := inbound{msg: m, partition: r.p, epoch: r.epoch}
					in.meta, in.metaErr = m.Metadata()
					if !e.handOn(in) {
						return 0, false
					}
				}
				return last, true
			}
			nakByStreamSeq(got)
			if err == nil && attempt == 1 {
				e.opts.Logger.Info("events of the partition are unacknowledged out of this worker's hands; collecting again until they are back",
					"partition", r.p, "unacknowledged", base.NumAckPending, "collected", len(got))
			}
		}
		if err != nil {
			e.opts.Logger.Warn("synchronising with the partition consumer failed; retrying", "partition", r.p, "err", err)
		}
		select {
		case <-e.quit:
			return 0, false
		case <-time.After(delay):
		}
		delay = min(2*delay, time.Second)
	}
}

func (e *Engine) consumerInfo(r *partitionReader) (*jetstream.ConsumerInfo, error) {
	ctx, cancel := context.WithTimeout(e.readCtx, 5*time.Second)
	defer cancel()
	return r.cons.Info(ctx)
}

// collect pulls the events base counts as unacknowledged (see syncReader) and reports them
// in stream order, the consumer sequence of the last delivery, and whether they are
// complete: no delivery went elsewhere and nothing else is unacknowledged.
func (e *Engine) collect(r *partitionReader, base *jetstream.ConsumerInfo) (got []jetstream.Msg, last uint64, complete bool, err error) {
	last = base.Delivered.Consumer
	want := base.NumAckPending
	if want == 0 {
		// Nothing outstanding: a delivery elsewhere from now on shows as a gap.
		return nil, last, true, nil
	}
	inStep, seen, fresh := true, 0, false
	bySeq := map[uint64]bool{}
	deadline := time.Now().Add(r.ro.RedeliveryWindow)
	// The server hands out redeliveries before new events: a first delivery means none is
	// due now, and the rest are not back yet.
	for seen < want && !fresh && time.Now().Before(deadline) && e.readCtx.Err() == nil {
		ctx, cancel := context.WithDeadline(e.readCtx, deadline)
		batch, ferr := r.cons.Fetch(min(r.ro.PullBatch, want-seen), jetstream.FetchContext(ctx))
		if ferr == nil {
			for m := range batch.Messages() {
				meta, merr := m.Metadata()
				if merr != nil {
					got = append(got, m) // the engine drops it
					continue
				}
				if meta.Sequence.Consumer != last+1 {
					inStep = false
				}
				last = meta.Sequence.Consumer
				if bySeq[meta.Sequence.Stream] {
					continue // a second copy: the first settles it
				}
				bySeq[meta.Sequence.Stream] = true
				if meta.NumDelivered > 1 {
					seen++
				} else {
					fresh = true
				}
				got = append(got, m)
			}
			ferr = batch.Error()
		}
		cancel()
		if ferr != nil && !errors.Is(ferr, context.DeadlineExceeded) && !errors.Is(ferr, nats.ErrTimeout) {
			return got, last, false, ferr
		}
	}
	sortByStreamSeq(got)
	if !inStep || seen < want {
		return got, last, false, nil
	}
	after, err := e.consumerInfo(r)
	if err != nil {
		return got, last, false, err
	}
	complete = after.Delivered.Consumer == last && after.NumAckPending == len(bySeq)
	return got, last, complete, nil
}

func sortByStreamSeq(msgs []jetstream.Msg) {
	seq := func(m jetstream.Msg) uint64 {
		if meta, err := m.Metadata(); err == nil {
			return meta.Sequence.Stream
		}
		return 0
	}
	slices.SortStableFunc(msgs, func(a, b jetstream.Msg) int { return cmp.Compare(seq(a), seq(b)) })
}

// nakByStreamSeq gives msgs back to the server, oldest first.
func nakByStreamSeq(msgs []jetstream.Msg) {
	sortByStreamSeq(msgs)
	for _, m := range msgs {
		_ = m.Nak()
	}
}

// Detach stops reading partition p, because it is handed over or lost. The events of p the
// worker holds that are not in a DPS call or a dead-letter write go back to the server (nak,
// in stream order: it redelivers them first, to the next owner), with those the open pull
// request still brings, as soon as that request is over (≤ PullExpiry); what is in a DPS call or a letter write settles when that
// returns (under Fence: applied is acknowledged, anything else given back). onDrained (if
// not nil) is called once the worker holds no event of p anymore — for a handover, the
// moment to release the lease (then the next owner may read at once: nothing of p is left
// unacknowledged in this worker's hands).
func (e *Engine) Detach(p int, onDrained func()) {
	e.partsMu.Lock()
	r, ok := e.parts[p]
	if !ok || r.detached {
		e.partsMu.Unlock()
		if onDrained != nil {
			go onDrained()
		}
		return
	}
	r.detached = true // the reader sends no new request; the one open runs out (≤ PullExpiry)
	r.onDrained = onDrained
	epoch := r.epoch
	e.partsMu.Unlock()
	leave := func() {
		e.oursMu.Lock()
		e.leaving[p] = epoch
		e.oursMu.Unlock()
		e.dropPartition(p) // set aside while the reader's request is open
		if !e.readerRunning(p) {
			e.flushAside(p)
		}
		e.partitionIdleCheck(p)
	}
	go func() {
		select {
		case e.ctl <- leave: // what the engine holds now
		case <-e.quit:
			return
		}
		<-r.done
		// And what the last request brought: through the reader's channel, behind its
		// messages, so that none of them comes up after p counts as drained.
		select {
		case e.in <- inbound{after: leave}:
		case <-e.quit:
		}
	}()
}

// partitionIdle is called by the loop when the worker holds no event of p.
func (e *Engine) partitionIdle(p int) { e.partitionIdleCheck(p) }

func (e *Engine) partitionIdleCheck(p int) {
	if e.perPart[p] > 0 {
		return
	}
	e.partsMu.Lock()
	r, ok := e.parts[p]
	if ok && r.idle != nil {
		close(r.idle)
		r.idle = nil
	}
	if !ok || !r.detached {
		e.partsMu.Unlock()
		return
	}
	select {
	case <-r.done:
	default:
		e.partsMu.Unlock()
		return // still pulling; the reader's end triggers another check
	}
	delete(e.parts, p)
	fn := r.onDrained
	e.partsMu.Unlock()
	e.opts.Logger.Info("partition detached", "partition", p)
	if fn != nil {
		go fn()
	}
}

// Partitions returns the partitions being read and their epochs.
func (e *Engine) Partitions() map[int]uint64 {
	e.partsMu.Lock()
	defer e.partsMu.Unlock()
	out := make(map[int]uint64, len(e.parts))
	for p, r := range e.parts {
		if !r.detached {
			out[p] = r.epoch
		}
	}
	return out
}

// stopAllReaders makes every reader stop after its current request (graceful), or at once
// (the read context is cancelled by Run's return).
func (e *Engine) stopAllReaders() {
	e.partsMu.Lock()
	defer e.partsMu.Unlock()
	e.noAttach = true
	for _, r := range e.parts {
		r.closing = true
	}
}

func (e *Engine) readersDone() bool {
	e.partsMu.Lock()
	defer e.partsMu.Unlock()
	for _, r := range e.parts {
		select {
		case <-r.done:
		default:
			return false
		}
	}
	return true
}

// KeyFromSubject derives the ordering key of an event from its stored subject
// "<prefix>.<p>.<kind>.<token>" (used for events too broken to decode).
func KeyFromSubject(subject string) string {
	toks := strings.Split(subject, ".")
	if len(toks) < 2 {
		return ""
	}
	return toks[len(toks)-2] + "/" + event.ParseSubjectToken(toks[len(toks)-1])
}
