package dlq

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// HoldPolicy says what happens to the later events of a key that has a dead letter.
type HoldPolicy int

// Hold policies.
const (
	// HoldFollow (the default): while the dead-letter stream holds a letter of a key,
	// every later event of that key follows it into the stream as class held, with the
	// reason "held behind dead letter <seq> (<reason>)". Nothing overtakes the failed
	// event, and replaying the key re-applies them all in their original order.
	HoldFollow HoldPolicy = iota
	// HoldContinue: later events of the key are applied as if the letter did not exist.
	// A replay of the letter then applies it after them, which can undo them (a replayed
	// create after a newer update). Choose it only where a key's events are independent,
	// or where being current matters more than order.
	HoldContinue
)

// String names the policy as the flag and env values do: "follow" or "continue".
func (p HoldPolicy) String() string {
	if p == HoldContinue {
		return "continue"
	}
	return "follow"
}

// Hold is a letter that holds later events of its key.
type Hold struct {
	Seq      uint64 // sequence in the dead-letter stream
	Position uint64 // order position of its event
	Class    Class
	Reason   string
}

// HeldReason is the reason written on a letter of class held that follows h:
// "held behind dead letter <seq> (<reason>)". When h is itself held, the reason of the
// letter it was held behind is used, so reasons do not nest.
func (h Hold) HeldReason() string {
	reason := h.Reason
	if h.Class == ClassHeld {
		if _, rest, ok := strings.Cut(reason, "("); ok && strings.HasPrefix(reason, "held behind dead letter ") {
			reason = strings.TrimSuffix(rest, ")")
		}
	}
	if reason == "" {
		reason = string(h.Class)
	}
	return "held behind dead letter " + strconv.FormatUint(h.Seq, 10) + " (" + reason + ")"
}

type holdEntry struct {
	Hold
	gen uint64 // index generation when learned
}

type keyHolds struct {
	subject string      // the key's subject in the dead-letter stream, once known
	holds   []holdEntry // sorted by (Position, Seq)
}

// HoldIndex knows, per key, the positions of the key's letters in the dead-letter stream,
// so the worker can tell without a round trip that an event is not held (the common case)
// and keep a key's order behind its letters (HoldFollow). It is safe for concurrent use.
//
// It is filled by a scan of the stream (LoadHoldIndex, Refresh) and by the worker's own
// letters (Add, AddLetter, or PublisherOptions.Index). A letter another process removed
// (replay, purge, redrive) is noticed by Holds, which confirms every positive answer with
// the stream. A letter another process added is noticed by Refresh: call it after taking
// over partitions from another worker, before consuming them.
type HoldIndex struct {
	js     jetstream.JetStream
	stream string

	mu      sync.Mutex
	keys    map[string]*keyHolds
	gen     uint64
	scanned uint64 // stream sequence Refresh has read up to
	handle  jetstream.Stream
}

// NewHoldIndex returns an empty index over the dead-letter stream named stream
// (default "DPS_DLQ").
func NewHoldIndex(js jetstream.JetStream, stream string) *HoldIndex {
	if stream == "" {
		stream = DefaultStream
	}
	return &HoldIndex{js: js, stream: stream, keys: map[string]*keyHolds{}}
}

// LoadHoldIndex returns an index filled from a headers-only scan of the stream.
func LoadHoldIndex(ctx context.Context, js jetstream.JetStream, stream string) (*HoldIndex, error) {
	x := NewHoldIndex(js, stream)
	if err := x.Refresh(ctx); err != nil {
		return nil, err
	}
	return x, nil
}

func (x *HoldIndex) streamHandle(ctx context.Context) (jetstream.Stream, error) {
	x.mu.Lock()
	s := x.handle
	x.mu.Unlock()
	if s != nil {
		return s, nil
	}
	s, err := openStream(ctx, x.js, x.stream)
	if err != nil {
		return nil, err
	}
	x.mu.Lock()
	x.handle = s
	x.mu.Unlock()
	return s, nil
}

// Refresh reads the letters stored since the last Refresh (all of them the first time),
// headers only, and adds them to the index.
func (x *HoldIndex) Refresh(ctx context.Context) error {
	s, err := x.streamHandle(ctx)
	if err != nil {
		return fmt.Errorf("hold index: %w", err)
	}
	x.mu.Lock()
	from := x.scanned + 1
	x.mu.Unlock()
	last, err := scan(ctx, s, from, true, func(seq uint64, subject string, stored time.Time, h nats.Header, _ []byte) error {
		l, _ := parseLetter(seq, subject, stored, h, nil) // a malformed header leaves a zero field
		if l.Key != "" {
			x.AddLetter(l)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hold index: %w", err)
	}
	x.mu.Lock()
	x.scanned = max(x.scanned, last)
	x.mu.Unlock()
	return nil
}

// Add records that the letter at seq holds key from position on.
func (x *HoldIndex) Add(key string, position, seq uint64) {
	x.AddLetter(Letter{Key: key, Position: position, Seq: seq})
}

// AddLetter records l (its Key, Seq, Subject, position, class and reason).
func (x *HoldIndex) AddLetter(l Letter) {
	if l.Key == "" || l.Seq == 0 {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.gen++
	k := x.keys[l.Key]
	if k == nil {
		k = &keyHolds{}
		x.keys[l.Key] = k
	}
	if l.Subject != "" {
		k.subject = l.Subject
	}
	h := holdEntry{Hold: Hold{Seq: l.Seq, Position: l.OrderPosition(), Class: l.Class, Reason: l.Reason}, gen: x.gen}
	for i := range k.holds {
		if k.holds[i].Seq == l.Seq {
			if h.Class == "" {
				h.Class, h.Reason = k.holds[i].Class, k.holds[i].Reason
			}
			k.holds[i] = h
			return
		}
	}
	k.holds = append(k.holds, h)
	sortHolds(k.holds)
}

func sortHolds(hs []holdEntry) {
	sort.Slice(hs, func(i, j int) bool {
		if hs[i].Position != hs[j].Position {
			return hs[i].Position < hs[j].Position
		}
		return hs[i].Seq < hs[j].Seq
	})
}

// Remove forgets the letter at seq of key.
func (x *HoldIndex) Remove(key string, seq uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removeLocked(key, seq)
}

func (x *HoldIndex) removeLocked(key string, seq uint64) {
	k := x.keys[key]
	if k == nil {
		return
	}
	for i := range k.holds {
		if k.holds[i].Seq == seq {
			k.holds = append(k.holds[:i], k.holds[i+1:]...)
			break
		}
	}
	if len(k.holds) == 0 {
		delete(x.keys, key)
	}
}

// Len is the number of letters in the index.
func (x *HoldIndex) Len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := 0
	for _, k := range x.keys {
		n += len(k.holds)
	}
	return n
}

// Holds reports whether the event of key at position is held: whether the dead-letter
// stream holds a letter of key with a lower position. blockingSeq is the sequence of the
// earliest such letter. See Blocker.
func (x *HoldIndex) Holds(ctx context.Context, key string, position uint64) (blockingSeq uint64, held bool, err error) {
	h, held, err := x.Blocker(ctx, key, position)
	return h.Seq, held, err
}

// Held is Blocker in the shape of the worker's hold check: the reason for the event's
// letter of class held ("held behind dead letter <seq> (<reason>)") and whether it is held.
func (x *HoldIndex) Held(ctx context.Context, key string, position uint64) (reason string, held bool, err error) {
	h, held, err := x.Blocker(ctx, key, position)
	if err != nil || !held {
		return "", false, err
	}
	return h.HeldReason(), true, nil
}

// Blocker returns the earliest letter of key with a position lower than position, if the
// stream still holds one. A "no" from the index is answered without a round trip; a "yes"
// is confirmed by reading that letter from the stream, and when it is gone (replayed,
// purged or redriven elsewhere) the key's letters are re-read from the stream, so a letter
// that replaced it (a parked or re-failed letter) still holds the key. On error the caller
// cannot tell and must not let the event overtake (retry it later).
func (x *HoldIndex) Blocker(ctx context.Context, key string, position uint64) (Hold, bool, error) {
	walked := false
	for {
		x.mu.Lock()
		var cand Hold
		var subject string
		if k := x.keys[key]; k != nil && len(k.holds) > 0 && k.holds[0].Position < position {
			cand, subject = k.holds[0].Hold, k.subject
		}
		x.mu.Unlock()
		if cand.Seq == 0 {
			return Hold{}, false, nil
		}
		if walked {
			return cand, true, nil // the index was just rebuilt from the stream
		}
		s, err := x.streamHandle(ctx)
		if err != nil {
			return Hold{}, false, fmt.Errorf("hold check of key %q: %w", key, err)
		}
		m, err := s.GetMsg(ctx, cand.Seq)
		switch {
		case err == nil && m.Header.Get(HeaderKey) == key:
			l, _ := ParseLetter(m)
			x.AddLetter(l) // learn its subject, class and reason
			cand.Class, cand.Reason = l.Class, l.Reason
			return cand, true, nil
		case err == nil:
			// The sequence holds another key's letter: the index was wrong about it.
			x.Remove(key, cand.Seq)
			continue
		case errors.Is(err, jetstream.ErrMsgNotFound):
			x.Remove(key, cand.Seq)
			if subject != "" {
				if err := x.reload(ctx, s, key, subject); err != nil {
					return Hold{}, false, fmt.Errorf("hold check of key %q: %w", key, err)
				}
				walked = true
			}
			continue
		default:
			return Hold{}, false, fmt.Errorf("hold check of key %q: read dead letter %d: %w", key, cand.Seq, err)
		}
	}
}

// reload replaces what the index knows of key with the letters the stream holds on the
// key's subject. Letters learned while it reads are kept.
func (x *HoldIndex) reload(ctx context.Context, s jetstream.Stream, key, subject string) error {
	x.mu.Lock()
	gen := x.gen
	x.mu.Unlock()
	var found []Letter
	for seq := uint64(1); ; {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return fmt.Errorf("read letters of %s: %w", subject, err)
		}
		if m.Header.Get(HeaderKey) == key {
			m.Data = nil
			l, _ := ParseLetter(m)
			found = append(found, l)
		}
		seq = m.Sequence + 1
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	k := x.keys[key]
	if k == nil {
		k = &keyHolds{subject: subject}
		x.keys[key] = k
	}
	kept := k.holds[:0]
	for _, h := range k.holds {
		if h.gen > gen {
			kept = append(kept, h)
		}
	}
	k.holds = kept
	for _, l := range found {
		dup := false
		for _, h := range k.holds {
			dup = dup || h.Seq == l.Seq
		}
		if !dup {
			x.gen++
			k.holds = append(k.holds, holdEntry{Hold: Hold{Seq: l.Seq, Position: l.OrderPosition(), Class: l.Class, Reason: l.Reason}, gen: x.gen})
		}
	}
	sortHolds(k.holds)
	if len(k.holds) == 0 {
		delete(x.keys, key)
	}
	return nil
}
