package membership

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Defaults of Options.
const (
	DefaultBucket       = "dpsync_members"
	DefaultLeaseTTL     = 10 * time.Second
	DefaultSafetyMargin = 2 * time.Second
	DefaultDrainTimeout = 5 * time.Second
)

// Errors returned by Membership.
var (
	// ErrClosed is returned by Run after Close.
	ErrClosed = errors.New("membership: closed")
	// ErrRunning is returned by Run while another Run of the same Membership is active.
	ErrRunning = errors.New("membership: Run already active")
)

// Clock reads a monotonic clock. time.Now readings carry one; tests inject their own.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Options configure a Membership. Partitions is required; the zero value of every other
// field picks its default.
type Options struct {
	// Bucket is the key-value bucket holding members and leases (default "dpsync_members").
	// It is created when absent (history 1, file storage, Replicas replicas).
	Bucket string
	// Replicas of the bucket when New creates it (default 1; use 3 in a 3-node cluster).
	Replicas int
	// WorkerID names this worker; unique among live workers (default
	// <hostname>-<pid>-<random>). Characters: letters, digits, '-', '_', '='; others are
	// replaced by '_' in the default, rejected in a given ID.
	WorkerID string
	// Partitions is the number of partitions of the stream (required, > 0).
	Partitions int
	// LeaseTTL bounds takeover: a worker that stops renewing loses its leases to the others
	// LeaseTTL after its last renewal (default 10s).
	LeaseTTL time.Duration
	// RenewEvery is the heartbeat and renewal period (default LeaseTTL/3). It must leave
	// room for two renewals within LeaseTTL − SafetyMargin.
	RenewEvery time.Duration
	// SafetyMargin is the part of LeaseTTL during which a holder no longer uses a lease it
	// did not renew; it must be at least the longest DPS call the caller makes after a
	// successful Owns check (default 2s).
	SafetyMargin time.Duration
	// DrainTimeout is how long a Draining partition waits for Release before it is fenced
	// and released anyway (default 5s). Without OnChange, partitions are not drained: they
	// are fenced at once and released SafetyMargin later.
	DrainTimeout time.Duration
	// RequestTimeout bounds each key-value request (default RenewEvery).
	RequestTimeout time.Duration
	// Clock is the monotonic clock (default: time.Now).
	Clock Clock
	// Logger receives the component's logs (default slog.Default()).
	Logger *slog.Logger
	// OnChange is called from Run's goroutine each time the set of usable leases (partition,
	// epoch, draining) changes. It must not block for long; it may call Owns, Assignment,
	// Members and Release.
	OnChange func(Assignment)
}

var validID = regexp.MustCompile(`^[-_=A-Za-z0-9]+$`)

func (o *Options) defaults() error {
	if o.Partitions <= 0 {
		return fmt.Errorf("membership: Partitions must be > 0, got %d", o.Partitions)
	}
	if o.Bucket == "" {
		o.Bucket = DefaultBucket
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.WorkerID == "" {
		o.WorkerID = defaultWorkerID()
	} else if !validID.MatchString(o.WorkerID) {
		return fmt.Errorf("membership: WorkerID %q: only letters, digits, '-', '_', '=' allowed", o.WorkerID)
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.SafetyMargin == 0 {
		o.SafetyMargin = min(DefaultSafetyMargin, o.LeaseTTL/4)
	}
	if o.RenewEvery == 0 {
		o.RenewEvery = o.LeaseTTL / 3
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = DefaultDrainTimeout
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = o.RenewEvery
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case o.LeaseTTL < 0 || o.SafetyMargin < 0 || o.RenewEvery < 0 || o.DrainTimeout < 0 || o.RequestTimeout < 0:
		return errors.New("membership: durations must not be negative")
	case o.SafetyMargin >= o.LeaseTTL:
		return fmt.Errorf("membership: SafetyMargin %v must be below LeaseTTL %v", o.SafetyMargin, o.LeaseTTL)
	case 2*o.RenewEvery > o.LeaseTTL-o.SafetyMargin:
		return fmt.Errorf("membership: RenewEvery %v must be at most (LeaseTTL − SafetyMargin)/2 = %v",
			o.RenewEvery, (o.LeaseTTL-o.SafetyMargin)/2)
	}
	return nil
}

func defaultWorkerID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "worker"
	}
	host = strings.Map(func(r rune) rune {
		if r == '-' || r == '_' || r == '=' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9') {
			return r
		}
		return '_'
	}, host)
	var b [4]byte
	_, _ = rand.Read(b[:])
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:])
}

// Lease is one partition this worker may use.
type Lease struct {
	// Partition number, 0..Partitions-1.
	Partition int
	// Epoch is the revision of the acquiring write in the bucket: larger for every new
	// ownership of the partition, whoever acquires it.
	Epoch uint64
	// Draining: the partition belongs to another member now. Stop taking new work from it,
	// finish what is in flight (Owns stays true meanwhile), then call Release.
	Draining bool
	// Clean: the partition had no owner before this one, or its owner released it settled —
	// through Release or Close, with none of its events left in its hands (each one
	// acknowledged or given back with a nak, so the server redelivers those first), and
	// nothing an owner before it left behind out of its hands (it acquired the lease clean,
	// or reported InStep). Not clean: the lease expired (a worker that died or stopped
	// answering may still have pull requests open and events unacknowledged), or its owner
	// released it unsettled (drain timeout, CloseUnsettled) or released an unclean lease
	// before it was in step: those events come back only when their AckWait runs out.
	Clean bool
}

// Assignment is a snapshot of this worker's usable leases.
type Assignment struct {
	// Worker is this worker's ID.
	Worker string
	// Leases are sorted by partition. A partition missing here must not be used: stop its
	// work at once (it was lost, not handed over).
	Leases []Lease
	// Members is the number of live workers, this one included.
	Members int
}

// Stats are counters for metrics.
type Stats struct {
	// Owned is the number of partitions Owns answers true for.
	Owned int
	// Members is the number of live workers, this one included.
	Members int
	// Rebalances counts changes of the desired assignment seen by this worker.
	Rebalances uint64
	// Acquired, Released and Lost count leases taken, handed over and lost (not renewed in
	// time, or overwritten).
	Acquired, Released, Lost uint64
}

// Membership is one worker's membership in the fleet and its partition leases. Create it
// with New, drive it with Run, stop it with Close. Its methods are safe for concurrent use.
type Membership struct {
	kv  jetstream.KeyValue
	o   Options
	log *slog.Logger

	stop chan struct{} // closed by Close
	poke chan struct{} // wakes Run (Release)

	mu         sync.Mutex
	closed     bool
	runDone    chan struct{} // non-nil while Run is active
	held       map[int]*lease
	lastRev    map[int]uint64 // last revision this worker wrote per lease key
	view       map[string]*observed
	viewReady  bool
	live       []string // live members, sorted, this one included
	desired    []string // partition → desired owner
	notified   []Lease
	stats      Stats
	nextBeat   time.Time       // Run's goroutine only
	stopping   []chan struct{} // watches being stopped in the background
	onInterval func(*interval) // tests: ownership intervals
}

// lease is a held lease.
type lease struct {
	epoch     uint64
	rev       uint64
	renewedAt time.Time // send time of the last successful write
	nextRenew time.Time
	draining  bool
	drainBy   time.Time
	fenced    bool      // given up locally; the release write is pending
	releaseAt time.Time // when to write the release (fenced only)
	clean     bool      // acquired unowned or released settled (see Lease.Clean)
	step      int8      // what the worker last reported (InStep): 0 nothing, 1 in step, -1 out of step
	unsettled bool      // fenced with events possibly still held: the release says so
	iv        *interval
}

// interval records one ownership for tests: Owns is true within [from, to].
type interval struct {
	worker    string
	partition int
	epoch     uint64
	from, to  time.Time
}

// observed is the local view of one key.
type observed struct {
	rev       uint64
	owner     string // leases: owner ("" released); members: unused
	unsettled bool   // leases: released by an owner that may have left events unacknowledged
	deleted   bool
	seen      time.Time // local time this revision was first seen
	confirmed bool      // seen by the current watcher
}

type leaseValue struct {
	Owner string `json:"owner"`
	// Unsettled marks a release whose owner may have left events of the partition
	// unacknowledged (see Lease.Clean).
	Unsettled bool   `json:"unsettled,omitempty"`
	Epoch     uint64 `json:"epoch,omitempty"`
}

type memberValue struct {
	Worker     string `json:"worker"`
	Partitions int    `json:"partitions"`
}

const (
	memberPrefix = "members."
	leasePrefix  = "partitions."
)

// New opens (or creates) the bucket and returns a Membership that has not joined yet: it
// joins when Run starts.
func New(ctx context.Context, js jetstream.JetStream, o Options) (*Membership, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	kv, err := openBucket(ctx, js, o)
	if err != nil {
		return nil, err
	}
	return &Membership{
		kv:      kv,
		o:       o,
		log:     o.Logger.With("component", "membership", "worker", o.WorkerID),
		stop:    make(chan struct{}),
		poke:    make(chan struct{}, 1),
		held:    map[int]*lease{},
		lastRev: map[int]uint64{},
		view:    map[string]*observed{},
		live:    []string{o.WorkerID},
	}, nil
}

func openBucket(ctx context.Context, js jetstream.JetStream, o Options) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, o.Bucket)
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("open bucket %s: %w", o.Bucket, err)
	}
	kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      o.Bucket,
		Description: "dpsync worker membership and partition leases",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, o.Bucket)
	}
	if err != nil {
		return nil, fmt.Errorf("create bucket %s: %w", o.Bucket, err)
	}
	return kv, nil
}

// WorkerID is this worker's ID.
func (m *Membership) WorkerID() string { return m.o.WorkerID }

// Partitions is the number of partitions.
func (m *Membership) Partitions() int { return m.o.Partitions }

// Owns reports whether this worker may apply work of partition p now, and under which
// epoch. It answers from local state (no network): true only while the lease was written
// successfully less than LeaseTTL − SafetyMargin ago and has not been released or fenced.
// Check it, and that the epoch is the one the work started under, before every DPS call.
func (m *Membership) Owns(p int) (epoch uint64, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.held[p]
	if l == nil || !m.usable(l, m.o.Clock.Now()) {
		return 0, false
	}
	return l.epoch, true
}

func (m *Membership) usable(l *lease, now time.Time) bool {
	return !l.fenced && !m.closed && now.Before(m.validUntil(l))
}

func (m *Membership) validUntil(l *lease) time.Time {
	return l.renewedAt.Add(m.o.LeaseTTL - m.o.SafetyMargin)
}

// Assignment returns a snapshot of the usable leases.
func (m *Membership) Assignment() Assignment {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Assignment{Worker: m.o.WorkerID, Leases: m.leasesLocked(m.o.Clock.Now()), Members: len(m.live)}
}

func (m *Membership) leasesLocked(now time.Time) []Lease {
	var ls []Lease
	for p, l := range m.held {
		if m.usable(l, now) {
			ls = append(ls, Lease{Partition: p, Epoch: l.epoch, Draining: l.draining, Clean: l.clean})
		}
	}
	slices.SortFunc(ls, func(a, b Lease) int { return a.Partition - b.Partition })
	return ls
}

// Members is the number of live workers, this one included (at least 1): the divisor of
// the fleet's DPS budget.
func (m *Membership) Members() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.live)
}

// Stats returns counters for metrics.
func (m *Membership) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.stats
	s.Members = len(m.live)
	s.Owned = len(m.leasesLocked(m.o.Clock.Now()))
	return s
}

// Release gives up partition p: Owns(p) is false from now on and Run writes the lease as
// released (settled, unless it was acquired unclean and the worker never reported InStep,
// or is out of step), so that the next owner takes it at once and reads it right away. Call
// it when a Draining partition has no event in the worker's hands any more (each one
// acknowledged or given back). Releasing a partition that is still desired for this worker
// makes Run acquire it again under a new epoch. Releasing a partition not held at epoch
// does nothing.
func (m *Membership) Release(p int, epoch uint64) {
	m.mu.Lock()
	l := m.held[p]
	if l != nil && !l.fenced && l.epoch == epoch {
		now := m.o.Clock.Now()
		m.fenceLocked(p, l, now, now)
		l.unsettled = !l.settledBefore()
	}
	m.mu.Unlock()
	select {
	case m.poke <- struct{}{}:
	default:
	}
}

// InStep records whether this worker has, at epoch, every unacknowledged event of partition
// p in its hands (its reader synchronised with the partition's consumer, and no delivery
// went elsewhere since). While it has, what an owner before it left behind — open pull
// requests, events whose ack timers still run — is over, and releasing the lease settled
// (Release, Close) is true even if the lease was acquired unclean. Otherwise an unclean
// lease, or one where a delivery went elsewhere, is released unsettled whatever Release or
// Close say: the next owner must wait as this one had to.
func (m *Membership) InStep(p int, epoch uint64, inStep bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.held[p]; l != nil && l.epoch == epoch {
		l.step = -1
		if inStep {
			l.step = 1
		}
	}
}

// settledBefore reports whether nothing of an owner before this one, and no delivery that
// went elsewhere, can be left out of the worker's hands: the lease was acquired clean or the
// worker has been in step since, and the worker is not out of step now.
func (l *lease) settledBefore() bool { return l.step > 0 || l.clean && l.step == 0 }

// fenceLocked stops using l at now; the release is written at releaseAt, as unsettled
// unless the caller says otherwise.
func (m *Membership) fenceLocked(p int, l *lease, now, releaseAt time.Time) {
	l.fenced = true
	l.unsettled = true
	l.releaseAt = releaseAt
	if l.iv != nil && now.Before(l.iv.to) {
		l.iv.to = now
	}
	m.log.Info("partition fenced", "partition", p, "epoch", l.epoch)
}

// Close stops Run (if active) and waits for it, releases every held lease (settled, but for
// leases acquired unclean without InStep since, or out of step) and deletes this worker's member key, so
// that the others take the partitions over at once. Call it after the work of the
// partitions stopped with every event acknowledged or given back; when events may be left
// unacknowledged (a stop that timed out) call CloseUnsettled. Owns is false from the start
// of Close. Close is idempotent; when the bucket is unreachable it gives up after one request timeout (the
// leases then expire after LeaseTTL) but still waits, within ctx, for the bucket watch to
// stop (up to the connection's JetStream timeout, 5s by default).
func (m *Membership) Close(ctx context.Context) error { return m.close(ctx, false) }

// CloseUnsettled is Close for a worker that may have left events unacknowledged: the next
// owners take the partitions at once but wait for those events' redelivery before reading.
func (m *Membership) CloseUnsettled(ctx context.Context) error { return m.close(ctx, true) }

func (m *Membership) close(ctx context.Context, unsettled bool) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true // Owns is false from here on
	close(m.stop)
	done := m.runDone
	m.mu.Unlock()
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("close membership: wait for Run: %w", ctx.Err())
		}
	}
	m.mu.Lock()
	now := m.o.Clock.Now()
	ps := make([]int, 0, len(m.held))
	for p, l := range m.held {
		if !l.fenced {
			m.fenceLocked(p, l, now, now)
			l.unsettled = unsettled || !l.settledBefore()
		}
		ps = append(ps, p)
	}
	m.mu.Unlock()
	slices.Sort(ps)
	var errs []error
	for i, p := range ps {
		if err := m.release(ctx, p); err != nil {
			// Unreachable: do not wait a timeout per lease; they expire after LeaseTTL.
			errs = append(errs, fmt.Errorf("%w (%d leases left to expire)", err, len(ps)-i))
			break
		}
	}
	rctx, cancel := m.request(ctx)
	defer cancel()
	if err := m.kv.Delete(rctx, memberPrefix+m.o.WorkerID); err != nil {
		errs = append(errs, fmt.Errorf("delete member key: %w", err))
	}
	if err := m.waitWatchesStopped(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
