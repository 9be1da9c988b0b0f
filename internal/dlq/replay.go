package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Operations an event can carry; ReplayOptions.As takes one of them.
var Operations = []string{"create", "update", "updateIfMatchETag", "delete"}

func validOperation(op string) bool {
	for _, o := range Operations {
		if o == op {
			return true
		}
	}
	return false
}

// ReplayOptions shape a replay.
type ReplayOptions struct {
	// DryRun only plans: the report's Selected lists what would be replayed, in order.
	DryRun bool
	// As replays the failed letters with this operation instead of their own (the
	// event's data.operation is rewritten; everything else is kept): "update" replays a
	// create that failed because the enrollment exists. Letters of class held keep their
	// operation: they never failed themselves.
	As string
	// NoFollowers replays only the letters the filter selects. By default the held
	// letters of each selected key that come after its first selected letter are replayed
	// too, since they wait for it.
	NoFollowers bool
	// Concurrency is the number of keys replayed at once (default 4). Letters of one key
	// are always replayed one after the other, in position order.
	Concurrency int
	// Progress, if set, is called after each letter is handled with the number handled so
	// far and the total. Calls never overlap.
	Progress func(done, total int)
}

// ReplayFailure is a letter whose replay failed.
type ReplayFailure struct {
	Letter Letter
	Err    error
}

// ReplayReport says what a replay did.
type ReplayReport struct {
	DryRun bool
	// Selected lists the letters to replay, grouped by key, each key in position order.
	Selected []Letter
	Keys     int
	// Replayed letters were republished (PubAck received) and removed.
	Replayed []Letter
	// Gone letters were removed by someone else before their turn.
	Gone []Letter
	// Failed letters could not be republished or removed; they stay in the stream.
	Failed []ReplayFailure
	// Skipped letters come after a failed letter of their key and were left alone, so
	// they do not overtake it.
	Skipped []Letter
}

// errGone reports a letter removed before its turn.
var errGone = errors.New("letter is gone")

// Replay republishes the letters that pass f (and, unless opts.NoFollowers, the held
// letters behind them) to their origin subjects, key by key in position order, and removes
// each letter once the events stream acknowledged its republished event.
//
// The republished event is the letter's body (with data.operation rewritten under
// opts.As) with the headers Nats-Msg-Id "replay.<dlq seq>", Dpsync-Replay-Of,
// Dpsync-Position (the original order position, so the worker keeps the key's order) and
// the trace context. If a letter of a key fails, the key's later letters are skipped.
//
// Replay can be interrupted at any point (ctx, a killed process) and run again: a letter is
// removed only after its PubAck, so none is lost, and a letter republished but not removed
// is republished with the same id, which the events stream drops as a duplicate within its
// duplicate window. After the window the event comes twice; the second copy re-applies the
// same change while the letter still held later events of its key, which the worker's
// idempotent apply turns into no change.
func (st *Store) Replay(ctx context.Context, f Filter, opts ReplayOptions) (ReplayReport, error) {
	if err := f.Validate(); err != nil {
		return ReplayReport{}, err
	}
	if opts.As != "" && !validOperation(opts.As) {
		return ReplayReport{}, fmt.Errorf("replay as %q: not one of create, update, updateIfMatchETag, delete", opts.As)
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	all, err := st.all(ctx)
	if err != nil {
		return ReplayReport{}, err
	}
	sel := selectLetters(all, f)
	if !opts.NoFollowers {
		sel = withFollowers(all, sel)
	}
	groups := byKey(sel)
	rep := ReplayReport{DryRun: opts.DryRun, Keys: len(groups)}
	for _, g := range groups {
		rep.Selected = append(rep.Selected, g...)
	}
	if opts.DryRun || len(sel) == 0 {
		return rep, nil
	}

	var mu sync.Mutex // guards rep and done, serializes Progress
	done, total := 0, len(sel)
	record := func(l Letter, err error) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil:
			rep.Replayed = append(rep.Replayed, l)
		case errors.Is(err, errGone):
			rep.Gone = append(rep.Gone, l)
		case errors.Is(err, errSkipped):
			rep.Skipped = append(rep.Skipped, l)
		default:
			rep.Failed = append(rep.Failed, ReplayFailure{Letter: l, Err: err})
		}
		done++
		if opts.Progress != nil {
			opts.Progress(done, total)
		}
	}
	work := make(chan []Letter)
	var wg sync.WaitGroup
	for range min(opts.Concurrency, len(groups)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for g := range work {
				st.replayKey(ctx, g, func(l Letter) replayHeaders {
					rh := replayHeaders{}
					if opts.As != "" && l.Class != ClassHeld {
						rh.as = opts.As
					}
					return rh
				}, record)
			}
		}()
	}
feed:
	for _, g := range groups {
		select {
		case work <- g:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("replay interrupted after %d of %d letters: %w", done, total, err)
	}
	if len(rep.Failed) > 0 {
		errs := make([]error, 0, len(rep.Failed))
		for _, fl := range rep.Failed {
			errs = append(errs, fl.Err)
		}
		return rep, fmt.Errorf("replay: %d of %d letters failed: %w", len(rep.Failed), total, errors.Join(errs...))
	}
	return rep, nil
}

var errSkipped = errors.New("skipped behind a failed letter of its key")

// withFollowers adds to sel the held letters of sel's keys that come after the key's first
// selected letter.
func withFollowers(all, sel []Letter) []Letter {
	first := map[string]uint64{}
	in := map[uint64]bool{}
	for _, l := range sel {
		in[l.Seq] = true
		if l.Key == "" {
			continue
		}
		if p, ok := first[l.Key]; !ok || l.OrderPosition() < p {
			first[l.Key] = l.OrderPosition()
		}
	}
	out := append([]Letter(nil), sel...)
	for _, l := range all {
		if p, ok := first[l.Key]; ok && !in[l.Seq] && l.Class == ClassHeld && l.OrderPosition() > p {
			out = append(out, l)
		}
	}
	return out
}

// replayHeaders is what a republish adds beyond a replay's own headers.
type replayHeaders struct {
	as       string    // rewrite data.operation
	redrives int       // > 0: Dpsync-Redrives on the event
	history  []Failure // Dpsync-History on the event
}

// replayKey republishes the letters of one key in order and reports each. After a
// failure (or when ctx ends) the rest of the key is skipped.
func (st *Store) replayKey(ctx context.Context, g []Letter, hdrs func(Letter) replayHeaders, record func(Letter, error)) {
	for i, l := range g {
		if ctx.Err() != nil {
			return
		}
		err := st.republish(ctx, l, hdrs(l))
		if err != nil && !errors.Is(err, errGone) {
			record(l, err)
			if ctx.Err() != nil {
				return
			}
			for _, rest := range g[i+1:] {
				record(rest, errSkipped)
			}
			return
		}
		record(l, err)
	}
}

// republish publishes the letter at l.Seq to its origin subject, waits for the PubAck and
// then removes the letter.
func (st *Store) republish(ctx context.Context, l Letter, rh replayHeaders) error {
	m, err := st.s.GetMsg(ctx, l.Seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return errGone
	}
	if err != nil {
		return fmt.Errorf("replay dead letter %d: read: %w", l.Seq, err)
	}
	cur, _ := ParseLetter(m)
	if cur.Key != l.Key {
		return errGone // the sequence holds something else now
	}
	if cur.OriginSubject == "" {
		return fmt.Errorf("replay dead letter %d: it has no %s header", l.Seq, HeaderOriginSubject)
	}
	data := m.Data
	if rh.as != "" {
		if data, err = RewriteOperation(data, rh.as); err != nil {
			return fmt.Errorf("replay dead letter %d as %s: %w", l.Seq, rh.as, err)
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
	if _, err := st.js.PublishMsg(ctx, &nats.Msg{Subject: cur.OriginSubject, Data: data, Header: h}, popts...); err != nil {
		return fmt.Errorf("replay dead letter %d to %s: %w", l.Seq, cur.OriginSubject, err)
	}
	// The event is stored: remove the letter even if ctx ended just now, so a re-run has
	// less to deduplicate.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := deleteLetter(dctx, st.s, l.Seq); err != nil && !errors.Is(err, errGone) {
		return fmt.Errorf("replay dead letter %d: republished, but not removed (a re-run deduplicates it): %w", l.Seq, err)
	}
	return nil
}

// RewriteOperation returns the CloudEvents JSON event with data.operation set to op and
// everything else kept (object members come out in sorted order).
func RewriteOperation(event []byte, op string) ([]byte, error) {
	var env map[string]json.RawMessage
	if err := json.Unmarshal(event, &env); err != nil {
		return nil, fmt.Errorf("event is not a JSON object: %w", err)
	}
	raw, ok := env["data"]
	if !ok {
		return nil, errors.New("event has no data member")
	}
	var data map[string]json.RawMessage
	if err := json.Unmarshal(raw, &data); err != nil {
		return nil, fmt.Errorf("event data is not a JSON object: %w", err)
	}
	if _, ok := data["operation"]; !ok {
		return nil, errors.New("event data has no operation")
	}
	data["operation"], _ = json.Marshal(op)
	var err error
	if env["data"], err = json.Marshal(data); err != nil {
		return nil, err
	}
	return json.Marshal(env)
}
