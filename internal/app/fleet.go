package app

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/dpsync/dpsync/internal/consumer"
	"github.com/dpsync/dpsync/internal/membership"
	"github.com/dpsync/dpsync/internal/pacer"
)

// fleet is this worker's place among the others: partition leases and its share of the
// DPS quota.
type fleet struct {
	m    *membership.Membership
	pace *pacer.Pacer

	mu       sync.Mutex
	listener func(membership.Assignment)
	last     *membership.Assignment
	runDone  chan struct{}
	cancel   context.CancelFunc
}

func startFleet(ctx context.Context, js jetstream.JetStream, o *Options, td *teardown) (*fleet, error) {
	f := &fleet{runDone: make(chan struct{})}
	m, err := membership.New(ctx, js, membership.Options{
		Replicas:   o.Stream.WithDefaults().Replicas,
		WorkerID:   o.WorkerID,
		Partitions: o.Stream.WithDefaults().Partitions,
		LeaseTTL:   o.LeaseTTL,
		// A request that passed the fence lands within dpsTryTimeout, under the margin.
		SafetyMargin: leaseSafetyMargin(o),
		// Two renewals fit in the usable part of a lease, so one lost renewal costs nothing.
		RenewEvery: (o.LeaseTTL - leaseSafetyMargin(o)) / 3,
		Logger:     o.Logger.With("component", "membership"),
		OnChange:   f.changed,
	})
	if err != nil {
		return nil, err
	}
	f.m = m
	budget := o.QuotaPerMinute
	if budget < 0 {
		budget = 0 // unlimited
	}
	f.pace, err = pacer.New(pacer.Options{Budget: budget, Members: m.Members})
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f.cancel = cancel
	go func() {
		defer close(f.runDone)
		_ = m.Run(runCtx)
	}()
	td.add("membership", func(ctx context.Context) error { return f.close(ctx, false) })
	return f, nil
}

// changed receives assignments from membership and hands them to the listener.
func (f *fleet) changed(a membership.Assignment) {
	f.mu.Lock()
	f.last = &a
	l := f.listener
	f.mu.Unlock()
	if l != nil {
		l(a)
	}
}

// onChange sets the assignment listener and replays the latest assignment to it.
func (f *fleet) onChange(l func(membership.Assignment)) {
	f.mu.Lock()
	f.listener = l
	last := f.last
	f.mu.Unlock()
	if last != nil {
		l(*last)
	} else {
		l(f.m.Assignment())
	}
}

func (f *fleet) fence(p int, epoch uint64) bool {
	e, ok := f.m.Owns(p)
	return ok && e == epoch
}

// close releases the leases: settled when the engine stopped with every event acknowledged
// or given back (the next owners read at once), else unsettled (they wait for redelivery).
func (f *fleet) close(ctx context.Context, settled bool) error {
	closeM := f.m.CloseUnsettled
	if settled {
		closeM = f.m.Close
	}
	err := closeM(ctx)
	f.cancel()
	<-f.runDone
	return err
}

// partitionManager attaches the partitions this worker owns to the engine and detaches
// the others: gracefully (finish, then release the lease) when they are handed over, at once
// when they were lost.
type partitionManager struct {
	stream jetstream.Stream
	eng    *consumer.Engine
	fleet  *fleet
	dl     *deadLetters
	o      *Options

	mu       sync.Mutex
	active   map[int]uint64 // attached or starting partition → epoch
	draining map[int]bool
}

func newPartitionManager(s jetstream.Stream, eng *consumer.Engine, f *fleet, dl *deadLetters, o *Options) *partitionManager {
	return &partitionManager{stream: s, eng: eng, fleet: f, dl: dl, o: o, active: map[int]uint64{}, draining: map[int]bool{}}
}

func (pm *partitionManager) apply(a membership.Assignment) {
	want := make(map[int]membership.Lease, len(a.Leases))
	for _, l := range a.Leases {
		want[l.Partition] = l
	}
	pm.mu.Lock()
	defer pm.mu.Unlock()
	for p, epoch := range pm.active {
		l, ok := want[p]
		switch {
		case !ok || l.Epoch != epoch:
			// Lost: the engine gives its events back; the lease is gone already.
			delete(pm.active, p)
			delete(pm.draining, p)
			pm.eng.Detach(p, nil)
		case l.Draining && !pm.draining[p]:
			// Handed over: the engine gives back what is not in a DPS call, and once the
			// calls returned (nothing of p left in its hands) the lease is released settled,
			// so the next owner reads at once.
			pm.draining[p] = true
			pm.eng.Detach(p, func() {
				pm.fleet.m.Release(p, epoch)
				pm.mu.Lock()
				if pm.active[p] == epoch {
					delete(pm.active, p)
					delete(pm.draining, p)
				}
				pm.mu.Unlock()
			})
		}
	}
	for p, l := range want {
		if l.Draining {
			continue
		}
		if _, ok := pm.active[p]; ok {
			continue
		}
		pm.active[p] = l.Epoch
		go pm.start(p, l.Epoch, l.Clean)
	}
}

// start attaches partition p once the previous owner's unacknowledged events can come back
// first: right away when it released the lease settled (Lease.Clean: each of its events
// acknowledged or given back with a nak, which the server redelivers ahead of newer
// events), else after AckWait, when the server redelivers them ahead of newer events.
// Failures (JetStream unavailable during an election, a node down) are retried for as long
// as this worker holds the lease: a partition that is owned must be read.
func (pm *partitionManager) start(p int, epoch uint64, clean bool) {
	log := pm.o.Logger.With("component", "partitions", "partition", p, "epoch", epoch)
	ctx := context.Background()
	var cons jetstream.Consumer
	if !pm.retry(ctx, p, epoch, log, "create partition consumer", func(ctx context.Context) (err error) {
		cons, err = consumer.EnsureConsumer(ctx, pm.stream, pm.o.Stream, pm.o.Consumer, p)
		return err
	}) {
		return
	}
	// Not clean: the previous owner's pull requests may still be open at the server (it is
	// paused or cut off, not dead): no request outlives PullExpiry once the server has it,
	// and it sends none once its lease is gone. What the server handed it comes back when
	// unacknowledged for AckWait. So: pull nothing until its requests are over, then until
	// nothing of the partition is unacknowledged or AckWait has passed — the server then
	// redelivers those events first, ahead of newer ones of their keys. Clean: its requests
	// are over and what it did not acknowledge it gave back, so it is redelivered first
	// already (or it was in step with the consumer: membership.Membership.InStep). Either
	// way the reader collects the unacknowledged events and hands them on in stream order
	// once none is left elsewhere (consumer.Engine.Attach), and watches for deliveries that
	// go elsewhere later (a paused previous owner's request the server registers late).
	ackWait := pm.o.Consumer.AckWait
	if ackWait == 0 {
		ackWait = 15 * time.Second
	}
	pullExpiry := pm.o.Read.PullExpiry
	if pullExpiry == 0 {
		pullExpiry = consumer.DefaultPullExpiry
	}
	acquired := time.Now()
	requestsOver := acquired.Add(pullExpiry)
	if clean {
		requestsOver = acquired
	}
	deadline := requestsOver.Add(ackWait + time.Second)
	for {
		if !pm.owned(p, epoch) {
			pm.forget(p, epoch)
			return
		}
		now := time.Now()
		if !now.Before(requestsOver) {
			ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
			info, err := cons.Info(ictx)
			cancel()
			if err == nil {
				if info.NumAckPending == 0 || clean {
					break
				}
			}
		}
		if now.After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The previous owner may have dead-lettered events of this partition since our index
	// was loaded: learn them before any event of the partition is checked against it.
	if !pm.retry(ctx, p, epoch, log, "refresh dead-letter index", pm.dl.index.Refresh) {
		return
	}
	ro := pm.o.Read
	ro.RedeliveryWindow = min(pullExpiry, ackWait/3)
	ro.Reopen = func(ctx context.Context) (jetstream.Consumer, error) {
		return consumer.EnsureConsumer(ctx, pm.stream, pm.o.Stream, pm.o.Consumer, p)
	}
	// A previous attachment of p (an earlier epoch of ours) may still have a DPS call in
	// flight: the engine refuses until it has settled.
	var attachErr error
	pm.retry(ctx, p, epoch, log, "attach partition", func(context.Context) error {
		pm.mu.Lock()
		defer pm.mu.Unlock()
		if pm.active[p] != epoch || !pm.fleet.fence(p, epoch) {
			return nil // no longer ours: retry's next check forgets it
		}
		err := pm.eng.Attach(p, epoch, cons, ro)
		if errors.Is(err, consumer.ErrPartitionDraining) {
			return err
		}
		if errors.Is(err, consumer.ErrStopping) {
			err = nil // the worker stops: the partition goes with its other leases
		}
		attachErr = err
		return nil
	})
	if attachErr != nil {
		log.Error("attach partition", "err", attachErr)
		pm.forget(p, epoch)
	}
}

// owned reports whether partition p is still this worker's at epoch, as far as both the
// lease and the manager know.
func (pm *partitionManager) owned(p int, epoch uint64) bool {
	pm.mu.Lock()
	active := pm.active[p] == epoch
	pm.mu.Unlock()
	return active && pm.fleet.fence(p, epoch)
}

// retry runs fn until it succeeds while p is owned at epoch (see retryWhile); when the
// ownership ends first it forgets p and returns false.
func (pm *partitionManager) retry(ctx context.Context, p int, epoch uint64, log *slog.Logger, what string, fn func(context.Context) error) bool {
	if retryWhile(ctx, func() bool { return pm.owned(p, epoch) }, log, what, fn) {
		return true
	}
	pm.forget(p, epoch)
	return false
}

// retryWhile runs fn (each try bounded by 10 s) until it succeeds, with backoff from 200 ms
// to 5 s, for as long as cond holds and ctx lasts. It reports whether fn succeeded.
func retryWhile(ctx context.Context, cond func() bool, log *slog.Logger, what string, fn func(context.Context) error) bool {
	delay := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		if !cond() || ctx.Err() != nil {
			return false
		}
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := fn(tctx)
		cancel()
		if err == nil {
			if attempt > 1 {
				log.Info(what+" succeeded", "attempts", attempt)
			}
			return true
		}
		log.Warn(what+" failed; retrying while the partition is ours", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func (pm *partitionManager) forget(p int, epoch uint64) {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	if pm.active[p] == epoch {
		delete(pm.active, p)
	}
}

// registerFleetMetrics exposes what an autoscaler reads: partitions owned, rebalances,
// members, pending events per owned partition.
func registerFleetMetrics(m metric.Meter, f *fleet, pm *partitionManager) error {
	owned, err := m.Int64ObservableGauge("dpsync.partitions.owned", metric.WithDescription("Partitions this worker owns."))
	if err != nil {
		return err
	}
	members, err := m.Int64ObservableGauge("dpsync.fleet.members", metric.WithDescription("Live workers."))
	if err != nil {
		return err
	}
	rebalances, err := m.Int64ObservableCounter("dpsync.rebalances", metric.WithDescription("Changes of the partition assignment seen."))
	if err != nil {
		return err
	}
	pending, err := m.Int64ObservableGauge("dpsync.partition.pending", metric.WithDescription("Events not yet delivered, per owned partition."))
	if err != nil {
		return err
	}
	rate, err := m.Float64ObservableGauge("dpsync.dps.rate_per_minute", metric.WithDescription("This worker's DPS operation pace."))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		st := f.m.Stats()
		o.ObserveInt64(owned, int64(st.Owned))
		o.ObserveInt64(members, int64(st.Members))
		o.ObserveInt64(rebalances, int64(st.Rebalances))
		o.ObserveFloat64(rate, f.pace.Rate())
		pm.mu.Lock()
		parts := make([]int, 0, len(pm.active))
		for p := range pm.active {
			parts = append(parts, p)
		}
		pm.mu.Unlock()
		for _, p := range parts {
			c, err := pm.stream.Consumer(ctx, pm.o.Stream.ConsumerName(p))
			if err != nil {
				continue
			}
			info, err := c.Info(ctx)
			if err != nil {
				continue
			}
			o.ObserveInt64(pending, int64(info.NumPending)+int64(info.NumAckPending),
				metric.WithAttributes(attribute.Int("partition", p)))
		}
		return nil
	}, owned, members, rebalances, pending, rate)
	return err
}
