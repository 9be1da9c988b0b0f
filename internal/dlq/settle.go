package dlq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The replay protocol, shared by Replay and the Redriver (docs/ARCHITECTURE.md, "Names on
// the wire"): a letter's event is republished to its origin subject with Dpsync-Replay-Of;
// the worker that settles that event (applies it, or dead-letters it again under a new
// letter) removes the letter before it acknowledges the event. Until then the letter keeps
// holding the newer events of its key, so none of them overtakes the replay. The
// republisher waits for the letter to go before it republishes the key's next letter.

// NotSettledError reports a letter whose republished event no worker settled within the
// wait: the letter is still there and keeps holding its key.
type NotSettledError struct {
	Letter Letter
	// Event is the sequence of the republished event in the events stream.
	Event uint64
	// Wait is how long the republisher waited.
	Wait time.Duration
}

func (e *NotSettledError) Error() string {
	return fmt.Sprintf("letter %d of %s was republished (events #%d) but no worker settled it within %v — "+
		"is a worker running and does it own the partition? Re-run replay to continue: the republish is deduplicated",
		e.Letter.Seq, keyName(e.Letter.Key), e.Event, e.Wait)
}

// DeadLetteredAgainError reports a letter whose republished event failed again: the
// worker settled it by dead-lettering it under a new letter, Again.
type DeadLetteredAgainError struct {
	Letter Letter
	// Event is the sequence of the republished event in the events stream.
	Event uint64
	// Again is the event's new letter.
	Again Letter
}

func (e *DeadLetteredAgainError) Error() string {
	return fmt.Sprintf("letter %d of %s was replayed (events #%d) and dead-lettered again as letter %d (%s: %s)",
		e.Letter.Seq, keyName(e.Letter.Key), e.Event, e.Again.Seq, e.Again.Class, e.Again.Reason)
}

func keyName(key string) string {
	if key == "" {
		return "(no key)"
	}
	return key
}

// errNotSettled is the wait's end before the letter went; callers turn it into a
// *NotSettledError.
var errNotSettled = errors.New("not settled")

// keyRun follows one key through a replay or redrive: how far its letters were read, so
// that each look for an event's new letter reads only what is new.
type keyRun struct {
	key     string
	subject string // the key's subject in the dead-letter stream ("" unknown: no look)
	seen    uint64 // the key's letters up to this sequence were read
}

func newKeyRun(l Letter, seen uint64) *keyRun {
	return &keyRun{key: l.Key, subject: l.Subject, seen: seen}
}

// replayLetter republishes the letter l (republish) and waits up to wait until a worker
// settled its event, i.e. until the letter is gone. It returns the events stream's PubAck
// of the republished event (nil if nothing was published) and:
//   - nil: settled, applied as far as the dead-letter stream can tell;
//   - errGone: l was gone before its turn (nothing was republished);
//   - *NotSettledError: the wait ended first; the letter stays;
//   - *DeadLetteredAgainError: the worker dead-lettered the event again;
//   - ctx's error, or the republish's.
//
// onWait, if set, is called when the wait starts; the function it returns when it ends.
func (st *Store) replayLetter(ctx context.Context, k *keyRun, l Letter, rh replayHeaders, wait time.Duration,
	onWait func(l Letter, event uint64) func()) (*jetstream.PubAck, error) {
	ack, err := st.republish(ctx, l, rh)
	if err != nil {
		return nil, err
	}
	if onWait != nil {
		done := onWait(l, ack.Sequence)
		defer done()
	}
	if err := st.awaitRemoval(ctx, l.Seq, wait); err != nil {
		if errors.Is(err, errNotSettled) {
			return ack, &NotSettledError{Letter: l, Event: ack.Sequence, Wait: wait}
		}
		return ack, fmt.Errorf("wait for dead letter %d to be settled: %w", l.Seq, err)
	}
	again, err := st.newLetterOf(ctx, k, ack)
	if err != nil {
		return ack, fmt.Errorf("dead letter %d was settled, but its key's letters cannot be read: %w", l.Seq, err)
	}
	if again != nil {
		return ack, &DeadLetteredAgainError{Letter: l, Event: ack.Sequence, Again: *again}
	}
	return ack, nil
}

// Polling bounds of awaitRemoval: a worker settles a replay in milliseconds when it is
// idle, in seconds or minutes behind a backlog.
const (
	pollFirst = 5 * time.Millisecond
	pollMax   = 250 * time.Millisecond
)

// awaitRemoval polls the letter at seq until it is gone (nil), wait has passed
// (errNotSettled) or ctx ends. Read errors are retried until the wait ends.
func (st *Store) awaitRemoval(ctx context.Context, seq uint64, wait time.Duration) error {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	delay := pollFirst
	var lastErr error
	for {
		_, err := st.s.GetMsg(ctx, seq)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			if lastErr != nil {
				return fmt.Errorf("%w (last read error: %w)", errNotSettled, lastErr)
			}
			return errNotSettled
		case <-time.After(delay):
		}
		delay = min(2*delay, pollMax)
	}
}

// newLetterOf returns the letter the worker dead-lettered the event of ack under, if any:
// a letter of k's key stored since k.seen whose origin is that event. Letters of the key
// read on the way advance k.seen.
func (st *Store) newLetterOf(ctx context.Context, k *keyRun, ack *jetstream.PubAck) (*Letter, error) {
	if k == nil || k.key == "" || k.subject == "" {
		return nil, nil
	}
	ls, err := st.lettersOf(ctx, k.subject, k.key, k.seen+1)
	if err != nil {
		return nil, err
	}
	var again *Letter
	for _, l := range ls {
		k.seen = max(k.seen, l.Seq)
		if again == nil && l.OriginSeq == ack.Sequence && (l.OriginStream == "" || l.OriginStream == ack.Stream) {
			again = &l
		}
	}
	return again, nil
}

// lettersOf reads the letters of key on subject from sequence from on, in sequence order,
// one request per letter (a key has few letters; the server finds the next one by
// subject). Data is nil; Size is set.
func (st *Store) lettersOf(ctx context.Context, subject, key string, from uint64) ([]Letter, error) {
	var out []Letter
	for seq := max(from, 1); ; {
		m, err := st.s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("read letters of %s: %w", key, err)
		}
		if m.Header.Get(HeaderKey) == key {
			l, err := ParseLetter(m)
			if err != nil {
				st.logger.Warn("malformed dead letter", "seq", m.Sequence, "err", err)
			}
			l.Data = nil
			out = append(out, l)
		}
		seq = m.Sequence + 1
	}
}

// replayHeaders is what a republish adds beyond a replay's own headers.
type replayHeaders struct {
	as       string    // rewrite data.operation
	redrives int       // > 0: Dpsync-Redrives on the event
	history  []Failure // Dpsync-History on the event
}

// republish publishes the letter at l.Seq to its origin subject and returns the events
// stream's PubAck. It does not remove the letter: the worker that settles the event does.
// A letter republished before (an interrupted run) goes out with the same Nats-Msg-Id, so
// within the events stream's duplicate window the PubAck names the first copy.
func (st *Store) republish(ctx context.Context, l Letter, rh replayHeaders) (*jetstream.PubAck, error) {
	m, err := st.s.GetMsg(ctx, l.Seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, errGone
	}
	if err != nil {
		return nil, fmt.Errorf("replay dead letter %d: read: %w", l.Seq, err)
	}
	cur, _ := ParseLetter(m)
	if cur.Key != l.Key {
		return nil, errGone // the sequence holds something else now
	}
	if cur.OriginSubject == "" {
		return nil, fmt.Errorf("replay dead letter %d: it has no %s header", l.Seq, HeaderOriginSubject)
	}
	data := m.Data
	if rh.as != "" {
		if data, err = RewriteOperation(data, rh.as); err != nil {
			return nil, fmt.Errorf("replay dead letter %d as %s: %w", l.Seq, rh.as, err)
		}
	}
	h := nats.Header{}
	h.Set(HeaderReplayOf, strconv.FormatUint(l.Seq, 10))
	if p := cur.OrderPosition(); p != 0 {
		h.Set(HeaderPosition, strconv.FormatUint(p, 10))
	}
	if cur.Traceparent != "" {
		h.Set(HeaderTraceparent, cur.Traceparent)
	}
	if cur.Tracestate != "" {
		h.Set(HeaderTracestate, cur.Tracestate)
	}
	if rh.redrives > 0 {
		h.Set(HeaderRedrives, strconv.Itoa(rh.redrives))
	}
	if len(rh.history) > 0 {
		h.Set(HeaderHistory, historyHeader(rh.history))
	}
	popts := []jetstream.PublishOpt{jetstream.WithMsgID(ReplayMsgID(l.Seq))}
	if cur.OriginStream != "" {
		popts = append(popts, jetstream.WithExpectStream(cur.OriginStream))
	}
	ack, err := st.js.PublishMsg(ctx, &nats.Msg{Subject: cur.OriginSubject, Data: data, Header: h}, popts...)
	if err != nil {
		return nil, fmt.Errorf("replay dead letter %d to %s: %w", l.Seq, cur.OriginSubject, err)
	}
	return ack, nil
}
