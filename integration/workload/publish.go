package workload

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Ledger records the events JetStream confirmed with a PubAck, per key in publish order.
// It is safe for concurrent use.
type Ledger struct {
	mu     sync.Mutex
	byKey  map[string][]Event
	order  []string // keys in first-confirmed order, for stable reports
	count  int
	dupAck int // PubAcks flagged duplicate (a retry of a publish the stream already had)
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger { return &Ledger{byKey: map[string][]Event{}} }

// Record adds a confirmed event. Events of one key must be recorded in publish order.
func (l *Ledger) Record(ev Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.byKey[ev.Key]; !ok {
		l.order = append(l.order, ev.Key)
	}
	l.byKey[ev.Key] = append(l.byKey[ev.Key], ev)
	l.count++
}

// DuplicateAcks is how many events were confirmed by a PubAck flagged duplicate: an earlier
// attempt had been stored although its answer was lost.
func (l *Ledger) DuplicateAcks() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dupAck
}

// Len is the number of confirmed events.
func (l *Ledger) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.count
}

// Keys returns the keys with confirmed events.
func (l *Ledger) Keys() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.order...)
}

// Events returns the confirmed events of key in publish order.
func (l *Ledger) Events(key string) []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.byKey[key]...)
}

// PublishOptions tune Publish.
type PublishOptions struct {
	// Concurrency is the number of publishers (default 16). Events of one key always go
	// through the same publisher, one at a time, so their stream order is publish order.
	Concurrency int
	// Rate caps events per second over all publishers (0 = as fast as confirmed).
	Rate float64
	// AckTimeout bounds one publish attempt (default 5 s).
	AckTimeout time.Duration
	// OnProgress, if set, is called after every 1,000 confirmed events.
	OnProgress func(confirmed int)
}

// Publish publishes events and records each confirmed one in the ledger. A failed attempt
// is retried with the same Nats-Msg-Id until confirmed (the stream deduplicates a retry of
// a publish it already stored) or until ctx ends; then Publish returns the error and the
// ledger holds exactly the confirmed events.
func Publish(ctx context.Context, js jetstream.JetStream, events []Event, ledger *Ledger, opts PublishOptions) error {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 16
	}
	if opts.AckTimeout <= 0 {
		opts.AckTimeout = 5 * time.Second
	}
	shards := make([][]Event, opts.Concurrency)
	for _, ev := range events {
		h := fnv.New32a()
		h.Write([]byte(ev.Key))
		i := int(h.Sum32() % uint32(opts.Concurrency))
		shards[i] = append(shards[i], ev)
	}
	var tick <-chan time.Time
	if opts.Rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / opts.Rate))
		defer t.Stop()
		tick = t.C
	}
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		errs      []error
		confirmed int
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, shard := range shards {
		wg.Go(func() {
			for _, ev := range shard {
				if tick != nil {
					select {
					case <-tick:
					case <-ctx.Done():
						return
					}
				}
				dup, err := publishOne(ctx, js, ev, opts.AckTimeout)
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("publish %s: %w", ev.ID, err))
					mu.Unlock()
					cancel()
					return
				}
				ledger.Record(ev)
				mu.Lock()
				if dup {
					ledger.mu.Lock()
					ledger.dupAck++
					ledger.mu.Unlock()
				}
				confirmed++
				n := confirmed
				mu.Unlock()
				if opts.OnProgress != nil && n%1000 == 0 {
					opts.OnProgress(n)
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func publishOne(ctx context.Context, js jetstream.JetStream, ev Event, timeout time.Duration) (duplicate bool, err error) {
	backoff := 50 * time.Millisecond
	for {
		msg := &nats.Msg{Subject: ev.Subject, Data: ev.Body, Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, ev.ID)
		actx, cancel := context.WithTimeout(ctx, timeout)
		ack, err := js.PublishMsg(actx, msg)
		cancel()
		if err == nil {
			return ack.Duplicate, nil
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("%w (last attempt: %w)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}
