// Package batcher decides which pending enrollment changes go out together in one DPS bulk
// call, and when. It is pure bookkeeping: no goroutines, no clock of its own (every method
// that needs the time takes it), no I/O. One owner (the consumer's loop) calls it; it is not
// safe for concurrent use.
//
// # Model
//
// Every item has a key (the ordering key, "<kind>/<lower-cased id>"). The items of a key wait
// in a FIFO queue of entries. Only the head entry of a key can be dispatched, and only while the
// key has no batch in flight and is not held: so two items of one key are never in one batch and
// never in flight at the same time, and a key's items are dispatched in the order they were
// added. A batch holds up to [Config.MaxItems] entries of one (kind, op), each of a different key.
//
// A (kind, op) group is ready when it has MaxItems eligible heads, when its oldest eligible head
// has waited at least [Config.Linger], or when [Batcher.Flush] was called after that head was
// added. [Batcher.Ready] hands out ready batches, the group with the oldest head first, while
// fewer than [Config.MaxInFlight] batches are out. [Batcher.Finish] frees the keys of a batch;
// keys named in its hold list stay blocked until [Batcher.Release] (the caller retries the item
// alone, or dead-letters the key's later items taken with [Batcher.TakeKey]).
//
// # Coalescing
//
// With [Config.Coalesce], an item added to a key is folded into the key's last pending entry
// (never the one in flight, and only the adjacent one) when one of these rules applies. The
// folded entry keeps its place in the queue and its age, takes the newest item's Value, and lists
// every folded item in Entry.Items so the caller can acknowledge or dead-letter each one.
//
//   - R1 update + update → update carrying the later content. An update is a full replace of
//     the enrollment (PUT semantics), so applying A then B leaves B; applying B alone leaves B.
//     If the update fails for a reason of the key's state or of transport (transient, quota,
//     throttling), it fails the same way for A as for B: both events share the outcome, as they
//     would in order (A fails, B is held behind it).
//   - R2 create + update → create carrying the update's content. If the id is absent, create A
//     then replace with B leaves B, and so does create B. If the id exists, create A fails with
//     409201; because a failed event holds its key, B would follow A to the dead-letter stream;
//     the merged create fails with the same 409201 and both events go there.
//
// Both rules rely on two properties of the caller (internal/consumer with internal/applier):
// an update is applied unconditionally (PUT If-Match: *, the event's etag is not a condition;
// updateIfMatchETag is the conditional form), and the caller applies an entry with the
// entry's Op (Batch.Op), not the op of the event in Value: after R2, Value is the update event
// but the entry is a create. They also rely on the caller's hold policy: a failed event holds its key so later events of
// the key follow it to the dead-letter stream. A caller that lets later events continue after a
// failure must turn coalescing off, because R2 would then drop B's independent update.
//
// The one visible difference left: if DPS rejects A's own content (a content error that
// passed the event schema) while B's content is valid, the merged entry applies B and A's
// error is never reported. Event validation before the batcher catches almost all such
// content; callers that need every content error reported turn coalescing off.
//
// Never coalesced:
//   - updateIfMatchETag, on either side: its etag check against the current state is the point
//     of the event; folding it or folding into it would skip or move that check.
//   - delete, on either side: deleting an absent enrollment fails (404) where a sequence such as
//     create + delete succeeds, and a delete followed by a create must recreate.
//   - any other pair of operations (create + create, update + create, …): merging would change
//     which error a person sees (e.g. the second create's 409201).
//
// Items of different kinds are never folded together.
package batcher

import (
	"container/heap"
	"errors"
	"fmt"
	"time"
)

// Op is the operation of an item.
type Op int

// Operations, matching the DPS bulk modes.
const (
	// OpCreate creates an enrollment (DPS bulk mode "create").
	OpCreate Op = iota + 1
	// OpUpdate creates or replaces an enrollment (DPS bulk mode "update").
	OpUpdate
	// OpUpdateIfMatch replaces an enrollment whose etag matches (DPS "updateIfMatchETag").
	OpUpdateIfMatch
	// OpDelete deletes an enrollment (DPS bulk mode "delete").
	OpDelete
)

// String returns the DPS bulk mode name of o.
func (o Op) String() string {
	switch o {
	case OpCreate:
		return "create"
	case OpUpdate:
		return "update"
	case OpUpdateIfMatch:
		return "updateIfMatchETag"
	case OpDelete:
		return "delete"
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

func (o Op) valid() bool { return o >= OpCreate && o <= OpDelete }

// Defaults and bounds of Config.
const (
	DefaultMaxItems    = 10
	DefaultLinger      = 25 * time.Millisecond
	DefaultMaxInFlight = 4
	DefaultMaxPending  = 10_000
	// MaxItemsLimit is DPS's limit of items per bulk call.
	MaxItemsLimit = 10
	// MaxLinger bounds Config.Linger.
	MaxLinger = time.Hour
	// MaxPendingLimit bounds Config.MaxPending: pending items hold their messages in memory.
	MaxPendingLimit = 1_000_000
	// MaxInFlightLimit bounds Config.MaxInFlight.
	MaxInFlightLimit = 1024
)

// Config configures a Batcher. A zero numeric field takes its default; a negative or
// out-of-range field is an error. Coalesce is off in the zero Config; DefaultConfig turns it on.
type Config struct {
	// MaxItems is the number of entries per batch, 1..10 (default 10, DPS's bulk limit).
	MaxItems int
	// Linger is how long the oldest eligible entry of a (kind, op) waits for the batch to fill,
	// > 0 and ≤ MaxLinger (default 25 ms).
	Linger time.Duration
	// MaxInFlight is the number of batches out at once, 1..1024 (default 4).
	MaxInFlight int
	// MaxPending is the number of items waiting (not in flight), 1..1,000,000 (default 10,000).
	// Add returns ErrFull when it is reached.
	MaxPending int
	// Coalesce folds adjacent pending items of a key where the DPS result is unchanged (see the
	// package doc).
	Coalesce bool
	// Class, if set, splits the entries of one (kind, op) into separate batches by its
	// result. It is asked when an entry becomes its key's head with the key free, so it may
	// depend on the outcome of the key's previous batch (e.g. whether an update can ride in a
	// bulk call or needs a call of its own).
	Class func(Entry) int
}

// DefaultConfig returns the default configuration, with coalescing on.
func DefaultConfig() Config {
	return Config{
		MaxItems:    DefaultMaxItems,
		Linger:      DefaultLinger,
		MaxInFlight: DefaultMaxInFlight,
		MaxPending:  DefaultMaxPending,
		Coalesce:    true,
	}
}

// Validate reports the first field of c that is out of range (zero fields take defaults).
func (c Config) Validate() error {
	var errs []error
	if c.MaxItems < 0 || c.MaxItems > MaxItemsLimit {
		errs = append(errs, fmt.Errorf("MaxItems: %d is outside 1..%d (0 means %d)", c.MaxItems, MaxItemsLimit, DefaultMaxItems))
	}
	if c.Linger < 0 || c.Linger > MaxLinger {
		errs = append(errs, fmt.Errorf("Linger: %v is outside (0, %v] (0 means %v)", c.Linger, MaxLinger, DefaultLinger))
	}
	if c.MaxInFlight < 0 || c.MaxInFlight > MaxInFlightLimit {
		errs = append(errs, fmt.Errorf("MaxInFlight: %d is outside 1..%d (0 means %d)", c.MaxInFlight, MaxInFlightLimit, DefaultMaxInFlight))
	}
	if c.MaxPending < 0 || c.MaxPending > MaxPendingLimit {
		errs = append(errs, fmt.Errorf("MaxPending: %d is outside 1..%d (0 means %d); pending items must be bounded", c.MaxPending, MaxPendingLimit, DefaultMaxPending))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.MaxItems == 0 {
		c.MaxItems = DefaultMaxItems
	}
	if c.Linger == 0 {
		c.Linger = DefaultLinger
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.MaxPending == 0 {
		c.MaxPending = DefaultMaxPending
	}
	return c
}

// ErrFull is returned by Add when MaxPending items are waiting. The caller applies
// backpressure (e.g. lets the message be redelivered later).
var ErrFull = errors.New("batcher: pending items at MaxPending")

// ErrInvalidItem is returned by Add for an item without a key or with an unknown Op.
var ErrInvalidItem = errors.New("batcher: invalid item")

// Item is one change the caller adds.
type Item struct {
	// Key is the ordering key; items of one key are dispatched one at a time, in order.
	Key string
	// Kind separates batches (DPS has one bulk API per kind).
	Kind string
	// Op is the operation.
	Op Op
	// Value is the caller's (e.g. the message and its decoded event); the batcher never looks
	// at it.
	Value any
}

// Entry is one element of a batch: one key's effective change and every item folded into it.
type Entry struct {
	Key  string
	Kind string
	// Op is the operation to apply, after coalescing.
	Op Op
	// Value is the Value of the last item folded in, whose content is the one to apply.
	Value any
	// Items are all items folded into the entry, in the order they were added. Each must be
	// acknowledged or dead-lettered by the caller. There is at least one.
	Items []Item
}

// BatchID identifies a batch handed out by Ready until it is finished.
type BatchID uint64

// Batch is a set of entries of one kind and op, each of a different key.
type Batch struct {
	ID      BatchID
	Kind    string
	Op      Op
	Entries []Entry
}

// entry is a pending Entry plus bookkeeping.
type entry struct {
	Entry
	seq   uint64    // order of creation; lower is older
	at    time.Time // when its first item was added
	hidx  int       // index in its group's heap, -1 when not eligible
	class int       // Config.Class when it became eligible
}

type keyState struct {
	queue    []*entry
	items    int     // pending items of the key
	inFlight BatchID // 0 when none
	held     bool
}

type groupKey struct {
	kind  string
	op    Op
	class int
}

// entryHeap orders eligible heads of one group by age.
type entryHeap []*entry

func (h entryHeap) Len() int           { return len(h) }
func (h entryHeap) Less(i, j int) bool { return h[i].seq < h[j].seq }
func (h entryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx = i
	h[j].hidx = j
}
func (h *entryHeap) Push(x any) {
	e := x.(*entry)
	e.hidx = len(*h)
	*h = append(*h, e)
}
func (h *entryHeap) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	e.hidx = -1
	return e
}

// Batcher groups pending items into batches. Build it with New.
type Batcher struct {
	cfg      Config
	keys     map[string]*keyState
	groups   map[groupKey]*entryHeap
	inFlight map[BatchID][]string
	nextID   BatchID
	nextSeq  uint64
	flushSeq uint64 // entries with seq < flushSeq are ready regardless of linger
	pending  int
}

// New returns a Batcher for cfg (zero fields take their defaults).
func New(cfg Config) (*Batcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("batcher config: %w", err)
	}
	return &Batcher{
		cfg:      cfg.withDefaults(),
		keys:     make(map[string]*keyState),
		groups:   make(map[groupKey]*entryHeap),
		inFlight: make(map[BatchID][]string),
	}, nil
}

// Config returns the effective configuration (defaults applied).
func (b *Batcher) Config() Config { return b.cfg }

// Add queues it at time now behind the earlier items of its key, folding it into the key's
// last pending entry when coalescing allows. It returns ErrFull when MaxPending items are
// pending (the item is not added) and ErrInvalidItem for an item without key or valid Op.
func (b *Batcher) Add(now time.Time, it Item) error {
	if it.Key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidItem)
	}
	if !it.Op.valid() {
		return fmt.Errorf("%w: key %q: unknown op %d", ErrInvalidItem, it.Key, int(it.Op))
	}
	if b.pending >= b.cfg.MaxPending {
		return ErrFull
	}
	ks := b.keys[it.Key]
	if ks == nil {
		ks = &keyState{}
		b.keys[it.Key] = ks
	}
	b.pending++
	ks.items++
	if b.cfg.Coalesce && len(ks.queue) > 0 {
		if tail := ks.queue[len(ks.queue)-1]; canFold(tail, it) {
			tail.Value = it.Value
			tail.Items = append(tail.Items, it)
			return nil
		}
	}
	e := &entry{
		Entry: Entry{Key: it.Key, Kind: it.Kind, Op: it.Op, Value: it.Value, Items: []Item{it}},
		seq:   b.nextSeq,
		at:    now,
		hidx:  -1,
	}
	b.nextSeq++
	ks.queue = append(ks.queue, e)
	if len(ks.queue) == 1 {
		b.makeEligible(ks)
	}
	return nil
}

// canFold reports whether it may be folded into the pending entry tail (rules R1 and R2).
func canFold(tail *entry, it Item) bool {
	if tail.Kind != it.Kind || it.Op != OpUpdate {
		return false
	}
	return tail.Op == OpUpdate || tail.Op == OpCreate
}

// makeEligible puts the head of ks into its group's heap if the key is free.
func (b *Batcher) makeEligible(ks *keyState) {
	if ks.inFlight != 0 || ks.held || len(ks.queue) == 0 {
		return
	}
	head := ks.queue[0]
	if head.hidx >= 0 {
		return
	}
	head.class = 0
	if b.cfg.Class != nil {
		head.class = b.cfg.Class(head.Entry)
	}
	gk := groupKey{head.Kind, head.Op, head.class}
	h := b.groups[gk]
	if h == nil {
		h = &entryHeap{}
		b.groups[gk] = h
	}
	heap.Push(h, head)
}

// dropIfIdle forgets a key with nothing pending, nothing in flight and no hold.
func (b *Batcher) dropIfIdle(key string, ks *keyState) {
	if len(ks.queue) == 0 && ks.inFlight == 0 && !ks.held {
		delete(b.keys, key)
	}
}

// ready reports whether the group whose eligible heads are h is ready at now.
func (b *Batcher) ready(h *entryHeap, now time.Time) bool {
	if h.Len() == 0 {
		return false
	}
	if h.Len() >= b.cfg.MaxItems {
		return true
	}
	oldest := (*h)[0]
	return oldest.seq < b.flushSeq || now.Sub(oldest.at) >= b.cfg.Linger
}

// Ready returns the batches to dispatch now, oldest group first, while fewer than MaxInFlight
// batches are out, and marks their keys in flight. Each batch must be passed to Finish.
func (b *Batcher) Ready(now time.Time) []Batch { return b.ReadyN(now, b.cfg.MaxInFlight) }

// ReadyN is Ready returning at most n batches (a caller whose calls are rationed takes only
// as many batches as it can send now; the others keep filling).
func (b *Batcher) ReadyN(now time.Time, n int) []Batch {
	var out []Batch
	for len(b.inFlight) < b.cfg.MaxInFlight && len(out) < n {
		var best *entryHeap
		var bestKey groupKey
		for gk, h := range b.groups {
			if b.ready(h, now) && (best == nil || (*h)[0].seq < (*best)[0].seq) {
				best, bestKey = h, gk
			}
		}
		if best == nil {
			break
		}
		b.nextID++
		id := b.nextID
		n := min(best.Len(), b.cfg.MaxItems)
		batch := Batch{ID: id, Kind: bestKey.kind, Op: bestKey.op, Entries: make([]Entry, 0, n)}
		keys := make([]string, 0, n)
		for range n {
			e := heap.Pop(best).(*entry)
			ks := b.keys[e.Key]
			ks.queue[0] = nil
			ks.queue = ks.queue[1:]
			if len(ks.queue) == 0 {
				ks.queue = nil
			}
			ks.items -= len(e.Items)
			ks.inFlight = id
			b.pending -= len(e.Items)
			batch.Entries = append(batch.Entries, e.Entry)
			keys = append(keys, e.Key)
		}
		if best.Len() == 0 {
			delete(b.groups, bestKey)
		}
		b.inFlight[id] = keys
		out = append(out, batch)
	}
	return out
}

// Finish marks batch id done. Its keys become free for their next entries, except the keys
// listed in hold (which must belong to the batch; others are ignored): they stay blocked until
// Release. Finishing an unknown or already finished batch does nothing.
func (b *Batcher) Finish(id BatchID, hold ...string) {
	keys, ok := b.inFlight[id]
	if !ok {
		return
	}
	delete(b.inFlight, id)
	for _, k := range keys {
		ks := b.keys[k]
		ks.inFlight = 0
		for _, h := range hold {
			if h == k {
				ks.held = true
				break
			}
		}
		b.makeEligible(ks)
		b.dropIfIdle(k, ks)
	}
}

// Free ends batch id's use of an in-flight slot while every one of its keys stays blocked,
// held as by Finish with all its keys, until Release: for a caller whose DPS calls are done
// but whose outcomes are not settled yet (acknowledgements on their way). Freeing an unknown
// or finished batch does nothing.
func (b *Batcher) Free(id BatchID) {
	keys, ok := b.inFlight[id]
	if !ok {
		return
	}
	delete(b.inFlight, id)
	for _, k := range keys {
		ks := b.keys[k]
		ks.inFlight = 0
		ks.held = true
	}
}

// Release lifts the hold on key set by Finish; its next entry becomes eligible. Releasing a key
// that is not held does nothing.
func (b *Batcher) Release(key string) {
	ks := b.keys[key]
	if ks == nil || !ks.held {
		return
	}
	ks.held = false
	b.makeEligible(ks)
	b.dropIfIdle(key, ks)
}

// Held reports whether key is held (finished with a hold and not yet released).
func (b *Batcher) Held(key string) bool {
	ks := b.keys[key]
	return ks != nil && ks.held
}

// Flush makes every entry pending now ready regardless of linger (entries added later wait
// for their linger again). Keys in flight or held stay blocked; their entries become ready as
// soon as they are free. MaxInFlight still applies.
func (b *Batcher) Flush() { b.flushSeq = b.nextSeq }

// UntilNext returns how long after now the next batch becomes ready by linger: 0 if one is
// ready now. It returns false when nothing could become ready by waiting: nothing is eligible
// (all pending keys are in flight or held) or MaxInFlight batches are out.
func (b *Batcher) UntilNext(now time.Time) (time.Duration, bool) {
	if len(b.inFlight) >= b.cfg.MaxInFlight {
		return 0, false
	}
	var next time.Duration
	found := false
	for _, h := range b.groups {
		if h.Len() == 0 {
			continue
		}
		if b.ready(h, now) {
			return 0, true
		}
		d := (*h)[0].at.Add(b.cfg.Linger).Sub(now)
		if !found || d < next {
			next, found = d, true
		}
	}
	return next, found
}

// TakeKey removes and returns every pending entry of key, oldest first (not the one in
// flight). The key's hold and in-flight state are unchanged. The caller owns the returned items
// (typically it dead-letters them behind a failed one).
func (b *Batcher) TakeKey(key string) []Entry {
	ks := b.keys[key]
	if ks == nil || len(ks.queue) == 0 {
		return nil
	}
	head := ks.queue[0]
	if head.hidx >= 0 {
		gk := groupKey{head.Kind, head.Op, head.class}
		h := b.groups[gk]
		heap.Remove(h, head.hidx)
		if h.Len() == 0 {
			delete(b.groups, gk)
		}
	}
	out := make([]Entry, len(ks.queue))
	for i, e := range ks.queue {
		out[i] = e.Entry
	}
	b.pending -= ks.items
	ks.items = 0
	ks.queue = nil
	b.dropIfIdle(key, ks)
	return out
}

// Pending returns the number of items waiting (not in flight), folded items included.
func (b *Batcher) Pending() int { return b.pending }

// InFlight returns the number of batches handed out by Ready and not finished.
func (b *Batcher) InFlight() int { return len(b.inFlight) }

// Len returns the number of pending items of key, folded items included.
func (b *Batcher) Len(key string) int {
	if ks := b.keys[key]; ks != nil {
		return ks.items
	}
	return 0
}
