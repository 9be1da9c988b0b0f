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
	// Redeliveries is how many events of the partition were unacknowledged when it was
	// attached (the consumer's NumAckPending): a previous owner's, coming back. The server
	// redelivers them in the order their ack timers ran out, which is not the stream's (two
	// events of a key kept alive by one keep-alive pass expire microseconds apart, either
	// way round). So the reader first collects them — until it has seen that many
	// redelivered events, or for RedeliveryWindow — and hands everything it collected to the
	// engine in stream order.
	Redeliveries int
	// RedeliveryWindow bounds the collection (default PullExpiry). Keep it well under the
	// consumer's AckWait: collected events get no keep-alive until the engine has them.
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
	if r.ro.Redeliveries > 0 && !e.readRedeliveries(r) {
		return
	}
	delay := 100 * time.Millisecond
	for {
		e.partsMu.Lock()
		stop := r.detached || r.closing
		e.partsMu.Unlock()
		if stop || e.readCtx.Err() != nil {
			return
		}
		if e.opts.Fence != nil && !e.opts.Fence(r.p, r.epoch) {
			return // lost: not one more request (Detach follows)
		}
		ctx, cancel := context.WithTimeout(e.readCtx, r.ro.PullExpiry)
		batch, err := r.cons.Fetch(r.ro.PullBatch, jetstream.FetchContext(ctx))
		if err == nil {
			for m := range batch.Messages() {
				in := inbound{msg: m, partition: r.p, epoch: r.epoch}
				in.meta, in.metaErr = m.Metadata()
				in.dec, in.decErr = e.opts.Decode(m.Data())
				select {
				case e.in <- in:
				case <-e.quit:
					cancel()
					return
				}
			}
			err = batch.Error()
		}
		cancel()
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
			if c, rerr := r.ro.Reopen(rctx); rerr == nil {
				r.cons = c
				e.opts.Logger.Info("partition consumer recreated", "partition", r.p)
			} else {
				e.opts.Logger.Warn("recreate partition consumer", "partition", r.p, "err", rerr)
			}
			rcancel()
		}
	}
}

// readRedeliveries collects the partition's redelivered events (see
// ReadOptions.Redeliveries) and hands what it collected to the engine in stream order. It
// returns false when the engine is stopping.
func (e *Engine) readRedeliveries(r *partitionReader) bool {
	type pulled struct {
		msg  jetstream.Msg
		meta *jetstream.MsgMetadata
		err  error
	}
	var got []pulled
	seen := 0
	deadline := time.Now().Add(r.ro.RedeliveryWindow)
	for seen < r.ro.Redeliveries && time.Now().Before(deadline) && e.readCtx.Err() == nil {
		ctx, cancel := context.WithDeadline(e.readCtx, deadline)
		batch, err := r.cons.Fetch(min(r.ro.PullBatch, r.ro.Redeliveries-seen), jetstream.FetchContext(ctx))
		if err == nil {
			for m := range batch.Messages() {
				meta, merr := m.Metadata()
				if merr == nil && meta.NumDelivered > 1 {
					seen++
				}
				got = append(got, pulled{m, meta, merr})
			}
		}
		cancel()
		if err != nil {
			break // the normal loop reports and retries
		}
	}
	slices.SortStableFunc(got, func(a, b pulled) int {
		if a.meta == nil || b.meta == nil {
			return 0
		}
		return cmp.Compare(a.meta.Sequence.Stream, b.meta.Sequence.Stream)
	})
	if len(got) > 0 {
		e.opts.Logger.Info("previous owner's events collected, handed on in stream order",
			"partition", r.p, "redelivered", seen, "collected", len(got), "expected", r.ro.Redeliveries)
	}
	for _, g := range got {
		in := inbound{msg: g.msg, partition: r.p, epoch: r.epoch, meta: g.meta, metaErr: g.err}
		in.dec, in.decErr = e.opts.Decode(g.msg.Data())
		select {
		case e.in <- in:
		case <-e.quit:
			return false
		}
	}
	return true
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
		e.leaving[p] = epoch
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
