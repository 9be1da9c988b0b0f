package consumer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/event"
)

// partitionReader pulls one partition's consumer and hands messages to the loop.
type partitionReader struct {
	p         int
	epoch     uint64
	cons      jetstream.Consumer
	ro        ReadOptions
	it        jetstream.MessagesContext // guarded by Engine.partsMu
	done      chan struct{}             // closed when the pull goroutine has returned
	detached  bool
	closing   bool // the engine is stopping: no new pull
	onDrained func()
}

// ReadOptions tune pulling.
type ReadOptions struct {
	// PullBatch is how many messages one pull request asks for (default 500).
	PullBatch int
	// Heartbeat of pull requests: a hung server is noticed within about twice this
	// (default 5 s).
	Heartbeat time.Duration
	// Reopen, if set, returns the partition's consumer again (creating it if it is gone)
	// when the server ended the pull while the partition was still attached (consumer
	// deleted, bad request). Nil: the reader pulls the same consumer handle again.
	Reopen func(ctx context.Context) (jetstream.Consumer, error)
}

// ErrPartitionDraining is returned by Attach while the engine still holds events of the
// partition from its previous attachment (a DPS call in flight): a new reader then would get
// redelivered copies of events the engine still holds, and the key's later events could
// overtake them. Retry after a moment.
var ErrPartitionDraining = errors.New("events of the previous attachment are still held")

// Attach starts reading partition p from cons under ownership epoch. Events read carry the
// epoch; the engine checks it with Fence before each DPS call.
func (e *Engine) Attach(p int, epoch uint64, cons jetstream.Consumer, ro ReadOptions) error {
	if ro.PullBatch <= 0 {
		ro.PullBatch = 500
	}
	if ro.Heartbeat <= 0 {
		ro.Heartbeat = 5 * time.Second
	}
	e.partsMu.Lock()
	defer e.partsMu.Unlock()
	if r, ok := e.parts[p]; ok {
		if !r.detached {
			return fmt.Errorf("partition %d is already attached", p)
		}
		return fmt.Errorf("partition %d: %w", p, ErrPartitionDraining)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(ro.PullBatch), jetstream.PullHeartbeat(ro.Heartbeat))
	if err != nil {
		return fmt.Errorf("pull partition %d: %w", p, err)
	}
	r := &partitionReader{p: p, epoch: epoch, cons: cons, ro: ro, it: it, done: make(chan struct{})}
	e.parts[p] = r
	e.wg.Add(1)
	go e.read(r)
	e.opts.Logger.Info("partition attached", "partition", p, "epoch", epoch)
	return nil
}

func (e *Engine) read(r *partitionReader) {
	defer e.wg.Done()
	defer close(r.done)
	e.partsMu.Lock()
	it := r.it
	e.partsMu.Unlock()
	for {
		m, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				if it = e.reopen(r, err); it == nil {
					return
				}
				continue
			}
			// Heartbeats missed, server gone for a moment: the iterator keeps trying.
			e.opts.Logger.Warn("pull", "partition", r.p, "err", err)
			select {
			case <-e.quit:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		in := inbound{msg: m, partition: r.p, epoch: r.epoch}
		in.meta, in.metaErr = m.Metadata()
		in.dec, in.decErr = e.opts.Decode(m.Data())
		select {
		case e.in <- in:
		case <-e.quit:
			return
		}
	}
}

// reopen starts a new pull when the server ended the current one while r is still attached,
// retrying with backoff; it returns nil when r was detached or the engine stopped.
func (e *Engine) reopen(r *partitionReader, cause error) jetstream.MessagesContext {
	delay := 100 * time.Millisecond
	for {
		e.partsMu.Lock()
		done := r.detached || r.closing
		e.partsMu.Unlock()
		if done {
			return nil
		}
		select {
		case <-e.quit:
			return nil
		default:
		}
		e.opts.Logger.Warn("pull ended by the server; pulling again", "partition", r.p, "err", cause)
		select {
		case <-e.quit:
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
		cons := r.cons
		if r.ro.Reopen != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, err := r.ro.Reopen(ctx)
			cancel()
			if err != nil {
				cause = err
				continue
			}
			cons = c
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(r.ro.PullBatch), jetstream.PullHeartbeat(r.ro.Heartbeat))
		if err != nil {
			cause = err
			continue
		}
		e.partsMu.Lock()
		if r.detached || r.closing {
			e.partsMu.Unlock()
			it.Stop()
			return nil
		}
		r.cons, r.it = cons, it
		e.partsMu.Unlock()
		e.opts.Logger.Info("pulling again", "partition", r.p)
		return it
	}
}

// Detach stops reading partition p. With graceful, messages already pulled are still
// processed and onDrained (if not nil) is called from the engine's loop once the worker holds
// no event of p anymore: only then may another worker take p without reordering. Without
// graceful (ownership lost), pulled events are dropped unacknowledged as they come up, and
// onDrained is called the same way.
func (e *Engine) Detach(p int, graceful bool, onDrained func()) {
	e.partsMu.Lock()
	r, ok := e.parts[p]
	if !ok || r.detached {
		e.partsMu.Unlock()
		if onDrained != nil {
			go onDrained()
		}
		return
	}
	r.detached = true
	r.onDrained = onDrained
	it := r.it
	e.partsMu.Unlock()
	if graceful {
		it.Drain()
	} else {
		it.Stop()
	}
	go func() {
		<-r.done
		check := func() { e.partitionIdleCheck(p) }
		if !graceful {
			// Ownership is lost: the events of p the engine holds are the new owner's now.
			// Drop them at once (those in a DPS call settle when it returns), so that a new
			// attachment of p starts without them.
			check = func() { e.dropPartition(p); e.partitionIdleCheck(p) }
		}
		select {
		case e.ctl <- check:
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

func (e *Engine) stopAllReaders(graceful bool) {
	e.partsMu.Lock()
	defer e.partsMu.Unlock()
	for _, r := range e.parts {
		r.closing = true // the reader must not pull again
		if graceful {
			r.it.Drain()
		} else {
			r.it.Stop()
		}
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
