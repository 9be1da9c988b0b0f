package membership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Run joins the fleet and keeps this worker's membership and leases: it heartbeats, renews,
// hands over, takes over and calls OnChange. It is the owner loop; run it in one goroutine
// (the caller's). It returns nil when ctx ends or Close is called, ErrClosed after Close and
// ErrRunning if another Run is active. Key-value errors are logged and retried, never
// returned: while the bucket is unreachable no lease is renewed and Owns turns false in time.
//
// Returning from Run without Close is what a crash looks like to the others: they take the
// partitions over LeaseTTL after the last renewal. Run may be called again afterwards; a
// lease that lapsed meanwhile is only regained by a new acquisition (a new epoch).
func (m *Membership) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	if m.runDone != nil {
		m.mu.Unlock()
		return ErrRunning
	}
	done := make(chan struct{})
	m.runDone = done
	m.nextBeat = time.Time{}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.runDone = nil
		m.mu.Unlock()
		close(done)
	}()

	var (
		w          jetstream.KeyWatcher
		updates    <-chan jetstream.KeyValueEntry
		watchAfter time.Time
	)
	defer func() {
		if w != nil {
			m.stopWatch(w)
		}
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.stop:
			return nil
		default:
		}
		if w == nil && !m.o.Clock.Now().Before(watchAfter) {
			var err error
			w, err = m.kv.WatchAll(ctx)
			if err != nil {
				m.log.Warn("watch bucket", "err", err)
				w = nil
				watchAfter = m.o.Clock.Now().Add(m.o.RenewEvery)
			} else {
				updates = w.Updates()
				m.unconfirmView()
			}
		}
		next := m.step(ctx)
		if w == nil && watchAfter.Before(next) {
			next = watchAfter
		}
		timer.Reset(max(0, next.Sub(m.o.Clock.Now())))
		select {
		case <-ctx.Done():
			return nil
		case <-m.stop:
			return nil
		case <-m.poke:
		case <-timer.C:
		case e, ok := <-updates:
			if !m.applyAll(e, ok, updates) {
				m.log.Warn("bucket watch ended; restarting it")
				m.stopWatch(w)
				w, updates = nil, nil
				watchAfter = m.o.Clock.Now().Add(m.o.RenewEvery / 4)
			}
		}
	}
}

// stopWatch stops w in the background: Stop deletes the watch's consumer with a request
// bounded only by the connection's default JetStream timeout (5s), which must not hold up
// Run's return while the server is unreachable. Close waits for it.
func (m *Membership) stopWatch(w jetstream.KeyWatcher) {
	done := make(chan struct{})
	m.mu.Lock()
	m.stopping = append(m.stopping, done)
	m.mu.Unlock()
	go func() {
		defer close(done)
		_ = w.Stop()
	}()
}

// waitWatchesStopped waits until every stopWatch finished, or ctx ends.
func (m *Membership) waitWatchesStopped(ctx context.Context) error {
	m.mu.Lock()
	stopping := slices.Clone(m.stopping)
	m.mu.Unlock()
	for _, done := range stopping {
		select {
		case <-done:
			m.mu.Lock()
			m.stopping = slices.DeleteFunc(m.stopping, func(c chan struct{}) bool { return c == done })
			m.mu.Unlock()
		case <-ctx.Done():
			return fmt.Errorf("stop bucket watch: %w", ctx.Err())
		}
	}
	return nil
}

// applyAll applies e and whatever else the watch has ready; false when the watch ended.
func (m *Membership) applyAll(e jetstream.KeyValueEntry, ok bool, ch <-chan jetstream.KeyValueEntry) bool {
	for {
		if !ok {
			return false
		}
		m.apply(e)
		select {
		case e, ok = <-ch:
		default:
			return true
		}
	}
}

// unconfirmView starts a new watch: the view is incomplete until its initial values arrived.
func (m *Membership) unconfirmView() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.viewReady = false
	for _, o := range m.view {
		o.confirmed = false
	}
}

// apply records one watch delivery; nil marks the end of the initial values.
func (m *Membership) apply(e jetstream.KeyValueEntry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e == nil {
		for k, o := range m.view {
			if !o.confirmed {
				delete(m.view, k)
			}
		}
		m.viewReady = true
		return
	}
	k := e.Key()
	o := m.view[k]
	if o == nil || o.rev != e.Revision() {
		o = &observed{rev: e.Revision(), seen: m.o.Clock.Now()}
		o.deleted = e.Operation() != jetstream.KeyValuePut
		if strings.HasPrefix(k, leasePrefix) && !o.deleted {
			var v leaseValue
			if err := json.Unmarshal(e.Value(), &v); err != nil {
				v.Owner = "?" // unreadable: treat as held by somebody, it expires like any lease
			}
			o.owner, o.unsettled = v.Owner, v.Unsettled
		}
		m.view[k] = o
	}
	o.confirmed = true
}

func leaseKey(p int) string { return leasePrefix + strconv.Itoa(p) }

// step does what is due and returns when the next thing is due.
func (m *Membership) step(ctx context.Context) time.Time {
	now := m.o.Clock.Now()
	if !now.Before(m.nextBeat) {
		m.heartbeat(ctx)
		m.nextBeat = now.Add(m.o.RenewEvery)
	}
	m.expire(ctx)
	m.renew(ctx)
	m.rebalance(ctx)
	m.notify()
	return m.nextWake()
}

func (m *Membership) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, m.o.RequestTimeout)
}

func (m *Membership) heartbeat(ctx context.Context) {
	m.mu.Lock()
	n := len(m.leasesLocked(m.o.Clock.Now()))
	m.mu.Unlock()
	v, _ := json.Marshal(memberValue{Worker: m.o.WorkerID, Partitions: n})
	rctx, cancel := m.request(ctx)
	defer cancel()
	if _, err := m.kv.Put(rctx, memberPrefix+m.o.WorkerID, v); err != nil && ctx.Err() == nil {
		m.log.Warn("heartbeat", "err", err)
	}
}

// expire drops leases whose validity ran out and writes the releases that are due.
func (m *Membership) expire(ctx context.Context) {
	now := m.o.Clock.Now()
	var due []int
	m.mu.Lock()
	for p, l := range m.held {
		switch {
		case l.fenced:
			if !now.Before(l.releaseAt) {
				due = append(due, p)
			}
		case !now.Before(m.validUntil(l)):
			delete(m.held, p)
			m.stats.Lost++
			m.log.Warn("lease lapsed: not renewed in time", "partition", p, "epoch", l.epoch)
		}
	}
	m.mu.Unlock()
	slices.Sort(due)
	for i, p := range due {
		err := m.release(ctx, p)
		if err == nil {
			continue
		}
		if ctx.Err() == nil {
			m.log.Warn("release", "partition", p, "err", err)
		}
		retry := m.o.Clock.Now().Add(m.o.RenewEvery / 4)
		m.mu.Lock()
		for _, p := range due[i:] {
			if l := m.held[p]; l != nil {
				l.releaseAt = retry
			}
		}
		m.mu.Unlock()
		return
	}
}

// release writes the lease of a fenced partition as released.
func (m *Membership) release(ctx context.Context, p int) error {
	m.mu.Lock()
	l := m.held[p]
	if l == nil {
		m.mu.Unlock()
		return nil
	}
	rev := l.rev
	v, _ := json.Marshal(leaseValue{Unsettled: l.unsettled})
	m.mu.Unlock()
	rctx, cancel := m.request(ctx)
	defer cancel()
	nrev, err := m.kv.Update(rctx, leaseKey(p), v, rev)
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case err == nil:
		delete(m.held, p)
		m.lastRev[p] = nrev
		m.stats.Released++
		m.log.Info("partition released", "partition", p, "epoch", l.epoch)
		return nil
	case conflict(err):
		// Somebody else wrote the lease since: it was not ours to release any more.
		delete(m.held, p)
		return nil
	default:
		return fmt.Errorf("release partition %d: %w", p, err)
	}
}

// renew rewrites the leases whose renewal is due.
func (m *Membership) renew(ctx context.Context) {
	type due struct {
		p     int
		rev   uint64
		epoch uint64
	}
	now := m.o.Clock.Now()
	var ds []due
	m.mu.Lock()
	for p, l := range m.held {
		if !l.fenced && !now.Before(l.nextRenew) {
			ds = append(ds, due{p: p, rev: l.rev, epoch: l.epoch})
		}
	}
	m.mu.Unlock()
	slices.SortFunc(ds, func(a, b due) int { return a.p - b.p })
	for i, d := range ds {
		if i > 0 && ctx.Err() != nil {
			return
		}
		v, _ := json.Marshal(leaseValue{Owner: m.o.WorkerID, Epoch: d.epoch})
		sent := m.o.Clock.Now()
		m.mu.Lock()
		l := m.held[d.p]
		lapsed := l == nil || !sent.Before(m.validUntil(l))
		m.mu.Unlock()
		if lapsed {
			// Too late: a lapsed lease is never revived under its epoch (expire drops it).
			continue
		}
		rctx, cancel := m.request(ctx)
		rev, err := m.kv.Update(rctx, leaseKey(d.p), v, d.rev)
		cancel()
		m.mu.Lock()
		l = m.held[d.p]
		switch {
		case l == nil || l.rev != d.rev:
		case err == nil:
			l.rev = rev
			m.lastRev[d.p] = rev
			if !l.fenced {
				l.renewedAt = sent
				if l.iv != nil {
					l.iv.to = m.validUntil(l)
				}
			}
			l.nextRenew = sent.Add(m.o.RenewEvery)
		case conflict(err):
			delete(m.held, d.p)
			m.stats.Lost++
			if l.iv != nil {
				l.iv.to = minTime(l.iv.to, m.o.Clock.Now())
			}
			m.log.Warn("lease lost: overwritten", "partition", d.p, "epoch", l.epoch)
		default:
			// The bucket is unreachable or slow: retry soon, and do not queue the other
			// renewals behind this one's timeout; their validity keeps running out on its own.
			retry := m.o.Clock.Now().Add(m.o.RenewEvery / 4)
			for _, d := range ds[i:] {
				if l := m.held[d.p]; l != nil && l.nextRenew.Before(retry) {
					l.nextRenew = retry
				}
			}
			m.mu.Unlock()
			if ctx.Err() == nil {
				m.log.Warn("renew lease", "partition", d.p, "err", err)
			}
			return
		}
		m.mu.Unlock()
	}
}

// conflict reports whether err is a lost compare-and-set: somebody else wrote the key.
func conflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// rebalance recomputes the live members and the desired assignment, starts or ends
// draining, fences drains that timed out, acquires free partitions and forgets dead members.
func (m *Membership) rebalance(ctx context.Context) {
	type acquire struct {
		p      int
		rev    uint64
		create bool
		clean  bool // unowned or released settled, not expired (Lease.Clean)
	}
	type gc struct {
		key string
		rev uint64
	}
	now := m.o.Clock.Now()
	me := m.o.WorkerID
	m.mu.Lock()
	if !m.viewReady {
		m.mu.Unlock()
		return
	}
	live := []string{me}
	var dead []gc
	for k, o := range m.view {
		id, ok := strings.CutPrefix(k, memberPrefix)
		if !ok || id == me || o.deleted {
			continue
		}
		if now.Before(o.seen.Add(m.o.LeaseTTL)) {
			live = append(live, id)
		} else {
			dead = append(dead, gc{key: k, rev: o.rev})
		}
	}
	slices.Sort(live)
	if !slices.Equal(live, m.live) {
		m.log.Info("members changed", "members", len(live))
		m.live = live
	}
	desired := assign(live, m.o.Partitions)
	if !slices.Equal(desired, m.desired) {
		if m.desired != nil {
			m.stats.Rebalances++
		}
		m.desired = desired
		mine := 0
		for _, w := range desired {
			if w == me {
				mine++
			}
		}
		m.log.Info("assignment changed", "members", len(live), "desired", mine)
	}
	for p, l := range m.held {
		if l.fenced {
			continue
		}
		if p < len(desired) && desired[p] == me {
			if l.draining {
				l.draining = false
				m.log.Info("drain cancelled: partition is ours again", "partition", p)
			}
			continue
		}
		if !l.draining {
			l.draining = true
			l.drainBy = now.Add(m.o.DrainTimeout)
			if m.o.OnChange == nil {
				l.drainBy = now
			}
			m.log.Info("draining partition for its new owner", "partition", p, "epoch", l.epoch)
		}
		if !now.Before(l.drainBy) {
			m.fenceLocked(p, l, now, now.Add(m.o.SafetyMargin))
		}
	}
	var acq []acquire
	for p, w := range desired {
		if w != me || m.held[p] != nil {
			continue
		}
		o := m.view[leaseKey(p)]
		switch {
		case o == nil || o.deleted:
			acq = append(acq, acquire{p: p, create: true, clean: true})
		case o.owner == "":
			acq = append(acq, acquire{p: p, rev: o.rev, clean: !o.unsettled})
		case o.rev == m.lastRev[p], !now.Before(o.seen.Add(m.o.LeaseTTL)):
			acq = append(acq, acquire{p: p, rev: o.rev})
		}
	}
	m.mu.Unlock()

	for _, a := range acq {
		v, _ := json.Marshal(leaseValue{Owner: me})
		sent := m.o.Clock.Now()
		rctx, cancel := m.request(ctx)
		var rev uint64
		var err error
		if a.create {
			rev, err = m.kv.Create(rctx, leaseKey(a.p), v)
		} else {
			rev, err = m.kv.Update(rctx, leaseKey(a.p), v, a.rev)
		}
		cancel()
		if err != nil {
			if conflict(err) {
				m.log.Debug("acquire: lost the race or view stale", "partition", a.p, "err", err)
				continue
			}
			if ctx.Err() == nil {
				m.log.Warn("acquire", "partition", a.p, "err", err)
			}
			break // unreachable or slow: try again at the next step
		}
		m.mu.Lock()
		l := &lease{epoch: rev, rev: rev, renewedAt: sent, nextRenew: sent.Add(m.o.RenewEvery), clean: a.clean}
		m.held[a.p] = l
		m.lastRev[a.p] = rev
		m.stats.Acquired++
		if m.onInterval != nil {
			l.iv = &interval{worker: me, partition: a.p, epoch: rev, from: m.o.Clock.Now(), to: m.validUntil(l)}
			m.onInterval(l.iv)
		}
		m.mu.Unlock()
		m.log.Info("partition acquired", "partition", a.p, "epoch", rev)
	}
	for _, d := range dead {
		rctx, cancel := m.request(ctx)
		err := m.kv.Delete(rctx, d.key, jetstream.LastRevision(d.rev))
		cancel()
		if err != nil && ctx.Err() == nil {
			m.log.Debug("forget dead member", "key", d.key, "err", err)
		}
	}
}

// notify calls OnChange when the usable leases changed since the last call.
func (m *Membership) notify() {
	m.mu.Lock()
	ls := m.leasesLocked(m.o.Clock.Now())
	if slices.Equal(ls, m.notified) {
		m.mu.Unlock()
		return
	}
	m.notified = ls
	a := Assignment{Worker: m.o.WorkerID, Leases: slices.Clone(ls), Members: len(m.live)}
	m.mu.Unlock()
	if m.o.OnChange != nil {
		m.o.OnChange(a)
	}
}

// nextWake is the earliest instant something is due: a heartbeat, a renewal, a lapse, a drain
// timeout, a release, or the expiry of a member or of a foreign lease.
func (m *Membership) nextWake() time.Time {
	now := m.o.Clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	next := m.nextBeat
	soon := func(t time.Time) {
		if t.Before(next) {
			next = t
		}
	}
	for _, l := range m.held {
		if l.fenced {
			soon(l.releaseAt)
			continue
		}
		soon(l.nextRenew)
		soon(m.validUntil(l))
		if l.draining {
			soon(l.drainBy)
		}
	}
	for k, o := range m.view {
		if o.deleted {
			continue
		}
		exp := o.seen.Add(m.o.LeaseTTL)
		if !now.Before(exp) {
			continue
		}
		if strings.HasPrefix(k, memberPrefix) || (strings.HasPrefix(k, leasePrefix) && o.owner != "") {
			soon(exp)
		}
	}
	return next
}
