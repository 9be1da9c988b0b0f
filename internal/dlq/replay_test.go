package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/dlq/dlqtest"
)

type replayed struct {
	Key      string
	ReplayOf uint64
	Position uint64
	Op       string
}

// eventsOf reads the replayed events of the events stream, in stream order.
func eventsOf(t *testing.T, s jetstream.Stream) []replayed {
	t.Helper()
	var out []replayed
	for _, m := range dlqtest.Messages(t, s) {
		of, _ := strconv.ParseUint(m.Header.Get(HeaderReplayOf), 10, 64)
		if of == 0 {
			continue
		}
		pos, _ := strconv.ParseUint(m.Header.Get(HeaderPosition), 10, 64)
		var ev struct {
			Data struct {
				Operation  string `json:"operation"`
				Enrollment struct {
					RegistrationID string `json:"registrationId"`
				} `json:"enrollment"`
			} `json:"data"`
		}
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatalf("replayed event %d: %v", m.Sequence, err)
		}
		out = append(out, replayed{Key: "enrollment/" + ev.Data.Enrollment.RegistrationID, ReplayOf: of, Position: pos, Op: ev.Data.Operation})
	}
	return out
}

func TestReplayInsideDuplicateWindow(t *testing.T) {
	e := newEnv(t)
	events := dlqtest.EventsStream(t, e.js, "", time.Hour)
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{})
	// The producer's original event, with its id as Nats-Msg-Id, still in the window.
	orig := event("dev-1", "create", "ev-1")
	ack, err := e.js.PublishMsg(e.ctx, &nats.Msg{Subject: "dpsync.events.enrollment.dev-1", Data: orig}, jetstream.WithMsgID("ev-1"))
	if err != nil {
		t.Fatal(err)
	}
	l := letter("enrollment/dev-1", ack.Sequence, "create", ClassPermanent, 409201, t0)
	l.EventID = "ev-1"
	l.Data = orig
	l.Traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	seq := e.publish(t, l)[0]

	rep, err := e.st.Replay(e.ctx, Filter{}, ReplayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Replayed) != 1 {
		t.Fatalf("replayed: got %d, want 1 (%+v)", len(rep.Replayed), rep)
	}
	msgs := dlqtest.Messages(t, events)
	if len(msgs) != 2 {
		t.Fatalf("events: got %d, want the original and its replay", len(msgs))
	}
	m := msgs[1]
	for k, want := range map[string]string{
		"Nats-Msg-Id":     "replay." + strconv.FormatUint(seq, 10),
		HeaderReplayOf:    strconv.FormatUint(seq, 10),
		HeaderPosition:    strconv.FormatUint(ack.Sequence, 10),
		HeaderTraceparent: l.Traceparent,
	} {
		if got := m.Header.Get(k); got != want {
			t.Errorf("replayed header %s: got %q, want %q", k, got, want)
		}
	}
	if string(m.Data) != string(orig) || m.Subject != "dpsync.events.enrollment.dev-1" {
		t.Errorf("replayed event: got %s on %s, want the original bytes on its origin subject", m.Data, m.Subject)
	}
	if n := msgCount(t, e.dlq); n != 0 {
		t.Errorf("letters left: got %d, want 0", n)
	}
}

func TestReplayInterruptedAndRerun(t *testing.T) {
	e := newEnv(t)
	events := dlqtest.EventsStream(t, e.js, "", time.Hour)
	var ls []Letter
	for i := range 24 {
		key := fmt.Sprintf("enrollment/dev-%d", i%4)
		class := ClassHeld
		if i < 4 {
			class = ClassPermanent
		}
		ls = append(ls, letter(key, uint64(100+i), "update", class, 0, t0))
	}
	seqs := e.publish(t, ls...)

	// A first run killed right after republishing one letter (dev-1's first letter,
	// position 101), before a worker settled it.
	if _, err := e.js.PublishMsg(e.ctx, &nats.Msg{Subject: ls[1].OriginSubject, Data: ls[1].Data,
		Header: nats.Header{HeaderReplayOf: []string{strconv.FormatUint(seqs[1], 10)}, HeaderPosition: []string{"101"}}},
		jetstream.WithMsgID(ReplayMsgID(seqs[1]))); err != nil {
		t.Fatal(err)
	}
	// A worker starts and settles it.
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{})
	deadline := time.Now().Add(10 * time.Second)
	for msgCount(t, e.dlq) != 23 {
		if time.Now().After(deadline) {
			t.Fatal("the first run's republished letter was not settled within 10s")
		}
		time.Sleep(5 * time.Millisecond) // polling an outcome, not timing it
	}
	// A second run interrupted after 9 letters.
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	rep, err := e.st.Replay(ctx, Filter{}, ReplayOptions{Concurrency: 2, Progress: func(p ReplayProgress) {
		if p.Total != 23 {
			t.Errorf("progress total: got %d, want 23", p.Total)
		}
		if p.Done == 9 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted replay: got %v, want context.Canceled", err)
	}
	if n := len(rep.Replayed); n == 0 || n >= 23 {
		t.Errorf("interrupted replay: got %d replayed, want some but not all", n)
	}
	// The re-run finishes the job.
	rep, err = e.st.Replay(e.ctx, Filter{}, ReplayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := msgCount(t, e.dlq); n != 0 {
		t.Errorf("letters left: got %d, want 0", n)
	}
	got := eventsOf(t, events)
	count := map[uint64]int{}
	for _, r := range got {
		count[r.ReplayOf]++
	}
	for i, s := range seqs {
		if count[s] != 1 {
			t.Errorf("letter %d (%d): replayed %d times, want once", s, i, count[s])
		}
	}
	// Per key, the events stream holds the replays in position order.
	last := map[string]uint64{}
	for _, r := range got {
		if r.Position <= last[r.Key] {
			t.Errorf("key %s: position %d after %d", r.Key, r.Position, last[r.Key])
		}
		last[r.Key] = r.Position
	}
}

func TestReplayKeepsKeyOrderOnFailure(t *testing.T) {
	e := newEnv(t)
	events := dlqtest.EventsStream(t, e.js, "", time.Minute)
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{})
	a1 := letter("enrollment/a", 1, "create", ClassPermanent, 400004, t0)
	a1.OriginSubject = "nowhere.enrollment.a" // no stream takes it: the republish fails
	a2 := letter("enrollment/a", 3, "update", ClassHeld, 0, t0)
	b1 := letter("enrollment/b", 2, "create", ClassPermanent, 400004, t0)
	seqs := e.publish(t, a2, a1, b1) // stored out of position order on purpose

	rep, err := e.st.Replay(e.ctx, Filter{}, ReplayOptions{})
	if err == nil {
		t.Fatal("got no error, want the failed letter reported")
	}
	if len(rep.Failed) != 1 || rep.Failed[0].Letter.Seq != seqs[1] {
		t.Errorf("failed: got %+v, want a's create (%d)", rep.Failed, seqs[1])
	}
	if got := seqsOf(rep.Skipped); !reflect.DeepEqual(got, []uint64{seqs[0]}) {
		t.Errorf("skipped: got %v, want a's update %d", got, seqs[0])
	}
	if got := seqsOf(rep.Replayed); !reflect.DeepEqual(got, []uint64{seqs[2]}) {
		t.Errorf("replayed: got %v, want b's create %d", got, seqs[2])
	}
	if n := len(eventsOf(t, events)); n != 1 {
		t.Errorf("events: got %d replays, want 1", n)
	}
	left, _ := e.st.List(e.ctx, Filter{})
	if got := seqsOf(left); !reflect.DeepEqual(got, seqs[:2]) {
		t.Errorf("left: got %v, want a's letters %v", got, seqs[:2])
	}
}

func TestReplayAsAndFollowers(t *testing.T) {
	e := newEnv(t)
	events := dlqtest.EventsStream(t, e.js, "", time.Minute)
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{})
	e.publish(t,
		letter("enrollment/a", 1, "create", ClassPermanent, 409201, t0),
		letter("enrollment/a", 2, "update", ClassHeld, 0, t0),
		letter("enrollment/a", 3, "delete", ClassHeld, 0, t0),
		letter("enrollment/b", 4, "create", ClassPermanent, 400004, t0),
	)
	// Dry run: the plan, nothing moves.
	rep, err := e.st.Replay(e.ctx, Filter{Code: 409201}, ReplayOptions{DryRun: true, As: "update"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Selected) != 3 || rep.Keys != 1 || msgCount(t, e.dlq) != 4 {
		t.Errorf("dry run: got %d selected of %d keys, %d letters left; want 3 of 1, 4", len(rep.Selected), rep.Keys, msgCount(t, e.dlq))
	}
	// The 409201 create replays as an update; the held update and delete follow unchanged.
	if _, err := e.st.Replay(e.ctx, Filter{Code: 409201}, ReplayOptions{As: "update"}); err != nil {
		t.Fatal(err)
	}
	want := []replayed{
		{Key: "enrollment/a", Position: 1, Op: "update"},
		{Key: "enrollment/a", Position: 2, Op: "update"},
		{Key: "enrollment/a", Position: 3, Op: "delete"},
	}
	got := eventsOf(t, events)
	for i := range got {
		got[i].ReplayOf = 0
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if n := msgCount(t, e.dlq); n != 1 {
		t.Errorf("letters left: got %d, want b's", n)
	}
	if _, err := e.st.Replay(e.ctx, Filter{}, ReplayOptions{As: "upsert"}); err == nil {
		t.Error("replay as upsert: got no error, want one")
	}
	// NoFollowers: only the selected letter.
	e.publish(t,
		letter("enrollment/c", 5, "create", ClassPermanent, 409201, t0),
		letter("enrollment/c", 6, "update", ClassHeld, 0, t0),
	)
	rep, err = e.st.Replay(e.ctx, Filter{KeyGlob: "c", Class: ClassPermanent}, ReplayOptions{NoFollowers: true})
	if err != nil || len(rep.Replayed) != 1 {
		t.Errorf("no followers: got %d replayed (%v), want 1", len(rep.Replayed), err)
	}
}

// replayOf is the letter an event replays (0: none).
func replayOf(m jetstream.Msg) uint64 {
	seq, _ := strconv.ParseUint(m.Headers().Get(HeaderReplayOf), 10, 64)
	return seq
}

// A replay leaves the letter in place and goes on with the key's next letter only once a
// worker settled the event (removed the letter): when the worker takes a replayed event,
// its letter is still there, holding the key, and nothing of the key is behind it yet.
func TestReplayWaitsForEachLetterToBeSettled(t *testing.T) {
	e := newEnv(t)
	dlqtest.EventsStream(t, e.js, "", time.Hour)
	seqs := e.publish(t,
		letter("enrollment/dev-1", 1, "create", ClassPermanent, 409201, t0),
		letter("enrollment/dev-1", 2, "update", ClassHeld, 0, t0),
		letter("enrollment/dev-1", 3, "delete", ClassHeld, 0, t0),
	)
	var mu sync.Mutex
	var problems []string
	var order []uint64
	settler := dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{Handle: func(ctx context.Context, m jetstream.Msg) error {
		meta, err := m.Metadata()
		if err != nil {
			return err
		}
		of := replayOf(m)
		mu.Lock()
		defer mu.Unlock()
		order = append(order, of)
		if meta.NumPending != 0 {
			problems = append(problems, fmt.Sprintf("replay of %d: %d events behind it, want none", of, meta.NumPending))
		}
		if _, err := e.st.Get(ctx, of); err != nil {
			problems = append(problems, fmt.Sprintf("replay of %d: its letter is gone before the worker settled it: %v", of, err))
		}
		return nil
	}})
	rep, err := e.st.Replay(e.ctx, Filter{}, ReplayOptions{})
	if err != nil || len(rep.Replayed) != 3 {
		t.Fatalf("got %d replayed, %v; want 3", len(rep.Replayed), err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Error(p)
	}
	if !reflect.DeepEqual(order, seqs) || !reflect.DeepEqual(settler.Settled(), seqs) {
		t.Errorf("settled: got %v (%v), want %v in order", order, settler.Settled(), seqs)
	}
}

// No worker settles the replayed events: each key stops at its first letter with an error
// that names the letter, the key and the republished event; the letters stay. A re-run
// once a worker runs republishes them with the same ids (deduplicated: the first copies are
// the ones settled) and completes.
func TestReplayNotSettledThenRerun(t *testing.T) {
	e := newEnv(t)
	events := dlqtest.EventsStream(t, e.js, "", time.Hour)
	seqs := e.publish(t,
		letter("enrollment/dev-1", 1, "create", ClassPermanent, 409201, t0),
		letter("enrollment/dev-1", 2, "update", ClassHeld, 0, t0),
		letter("enrollment/dev-2", 3, "create", ClassPermanent, 409201, t0),
	)
	rep, err := e.st.Replay(e.ctx, Filter{}, ReplayOptions{Wait: 300 * time.Millisecond})
	if err == nil {
		t.Fatal("got no error, want the letters no worker settled")
	}
	if len(rep.Failed) != 2 || len(rep.Replayed) != 0 || !reflect.DeepEqual(seqsOf(rep.Skipped), seqs[1:2]) {
		t.Fatalf("report: got %+v, want 2 failed and dev-1's held letter skipped", rep)
	}
	evs := dlqtest.Messages(t, events)
	if len(evs) != 2 {
		t.Fatalf("events: got %d, want the 2 first letters' republishes", len(evs))
	}
	eventOf := map[string]uint64{}
	for _, m := range evs {
		eventOf[m.Header.Get(HeaderReplayOf)] = m.Sequence
	}
	for _, fl := range rep.Failed {
		var ns *NotSettledError
		if !errors.As(fl.Err, &ns) {
			t.Errorf("letter %d: got %v, want a NotSettledError", fl.Letter.Seq, fl.Err)
			continue
		}
		ev := eventOf[strconv.FormatUint(fl.Letter.Seq, 10)]
		want := fmt.Sprintf("letter %d of %s was republished (events #%d) but no worker settled it within 300ms — "+
			"is a worker running and does it own the partition? Re-run replay to continue: the republish is deduplicated", fl.Letter.Seq, fl.Letter.Key, ev)
		if ns.Event != ev || fl.Err.Error() != want {
			t.Errorf("got %q (event %d),\nwant %q", fl.Err, ns.Event, want)
		}
	}
	if n := msgCount(t, e.dlq); n != 3 {
		t.Fatalf("letters left: got %d, want all 3", n)
	}

	// A worker starts, but takes no event before the re-run republished both first letters
	// again (deduplicated) and waits for them.
	gate := make(chan struct{})
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{Handle: func(ctx context.Context, m jetstream.Msg) error {
		select {
		case <-gate:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}})
	var once sync.Once
	rep, err = e.st.Replay(e.ctx, Filter{}, ReplayOptions{Progress: func(p ReplayProgress) {
		if len(p.Waiting) == 2 {
			once.Do(func() { close(gate) })
		}
	}})
	once.Do(func() { close(gate) })
	if err != nil || len(rep.Replayed) != 3 {
		t.Fatalf("re-run: got %d replayed, %v; want 3", len(rep.Replayed), err)
	}
	if n := msgCount(t, e.dlq); n != 0 {
		t.Errorf("letters left: got %d, want 0", n)
	}
	count := map[uint64]int{}
	for _, r := range eventsOf(t, events) {
		count[r.ReplayOf]++
	}
	for _, s := range seqs {
		if count[s] != 1 {
			t.Errorf("letter %d: in the events stream %d times, want once", s, count[s])
		}
	}
}

// heldBehind plays a worker that holds a newer event of dev-1 behind the letter being
// replayed: while it handles the replay of one of the letters in of, the newer event
// (position pos, then pos+2, …) became a held letter.
type heldBehind struct {
	e   *env
	mu  sync.Mutex
	pos uint64
	of  func(seq uint64) bool
}

func (h *heldBehind) handle(ctx context.Context, m jetstream.Msg) error {
	if !h.of(replayOf(m)) {
		return nil
	}
	h.mu.Lock()
	pos := h.pos
	h.pos += 2
	h.mu.Unlock()
	l := letter("enrollment/dev-1", pos, "update", ClassHeld, 0, t0)
	l.Reason = "held behind dead letter " + strconv.FormatUint(replayOf(m), 10) + " (DPS 409201 on create)"
	_, err := h.e.pub.Publish(ctx, l)
	return err
}

// An event of the key that came in while its letters were replayed was held behind them;
// once they are settled, the replay comes back for it (a later round), so the key ends
// with no letter. With NoFollowers it stays.
func TestReplayHeldDuringReplayJoinsIt(t *testing.T) {
	e := newEnv(t)
	events := dlqtest.EventsStream(t, e.js, "", time.Hour)
	root := e.publish(t, letter("enrollment/dev-1", 5, "create", ClassPermanent, 409201, t0))[0]
	h := &heldBehind{e: e, pos: 9, of: func(seq uint64) bool { return seq == root }}
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{Handle: h.handle})
	rep, err := e.st.Replay(e.ctx, Filter{Class: ClassPermanent}, ReplayOptions{As: "update"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Later) != 1 || rep.Later[0].Position != 9 || len(rep.Replayed) != 2 || rep.Replayed[1].Seq != rep.Later[0].Seq {
		t.Fatalf("report: got later %+v replayed %+v, want the held letter at position 9 replayed after the root", rep.Later, rep.Replayed)
	}
	want := []replayed{
		{Key: "enrollment/dev-1", ReplayOf: root, Position: 5, Op: "update"},
		{Key: "enrollment/dev-1", ReplayOf: rep.Later[0].Seq, Position: 9, Op: "update"},
	}
	if got := eventsOf(t, events); !reflect.DeepEqual(got, want) {
		t.Errorf("events:\ngot  %+v\nwant %+v", got, want)
	}
	if n := msgCount(t, e.dlq); n != 0 {
		t.Errorf("letters left: got %d, want 0", n)
	}

	// NoFollowers: the held letter is not the operator's choice; it stays (the redriver
	// releases it).
	root = e.publish(t, letter("enrollment/dev-1", 15, "create", ClassPermanent, 409201, t0))[0]
	h.mu.Lock()
	h.pos = 19
	h.mu.Unlock()
	rep, err = e.st.Replay(e.ctx, Filter{Class: ClassPermanent}, ReplayOptions{As: "update", NoFollowers: true})
	if err != nil || len(rep.Replayed) != 1 || len(rep.Later) != 0 {
		t.Fatalf("no followers: got %+v %v, want the root only", rep, err)
	}
	if left, _ := e.st.List(e.ctx, Filter{}); len(left) != 1 || left[0].Class != ClassHeld || left[0].Position != 19 {
		t.Errorf("no followers: letters left %+v, want the held one", left)
	}
}

// A key that keeps getting held events is replayed for at most Rounds rounds; what is
// left is reported and the replay fails.
func TestReplayRoundsAreBounded(t *testing.T) {
	e := newEnv(t)
	dlqtest.EventsStream(t, e.js, "", time.Hour)
	e.publish(t, letter("enrollment/dev-1", 5, "create", ClassPermanent, 409201, t0))
	h := &heldBehind{e: e, pos: 9, of: func(uint64) bool { return true }}
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{Handle: h.handle})
	rep, err := e.st.Replay(e.ctx, Filter{}, ReplayOptions{Rounds: 3})
	if err == nil || !strings.Contains(err.Error(), "1 held letters remain after 3 rounds") {
		t.Fatalf("got %v, want the letter left after 3 rounds", err)
	}
	if len(rep.Replayed) != 3 || len(rep.Later) != 2 || len(rep.Left) != 1 || rep.Left[0].Position != 13 {
		t.Errorf("report: got %d replayed, later %d, left %+v; want 3, 2 and the held letter at position 13", len(rep.Replayed), len(rep.Later), rep.Left)
	}
}

// The replayed event fails again: the worker dead-letters it under a new letter and
// removes the old one. The replay reports it, with the new letter, and does not replay the
// key's held letters, which would only be held again behind the new letter.
func TestReplayDeadLetteredAgain(t *testing.T) {
	e := newEnv(t)
	events := dlqtest.EventsStream(t, e.js, "", time.Hour)
	// Origins 101 and 102: the new letter's id derives from its origin, the replayed
	// event's sequence in this test's empty events stream (1).
	seqs := e.publish(t,
		letter("enrollment/dev-1", 101, "create", ClassPermanent, 409201, t0),
		letter("enrollment/dev-1", 102, "update", ClassHeld, 0, t0),
	)
	var again uint64
	dlqtest.StartSettler(t, e.js, dlqtest.SettlerOptions{Handle: func(ctx context.Context, m jetstream.Msg) error {
		meta, err := m.Metadata()
		if err != nil {
			return err
		}
		l := letter("enrollment/dev-1", meta.Sequence.Stream, "create", ClassPermanent, 409201, t0)
		l.Position = 101
		l.Data = m.Data()
		again, err = e.pub.Publish(ctx, l)
		return err
	}})
	rep, err := e.st.Replay(e.ctx, Filter{}, ReplayOptions{})
	if err == nil {
		t.Fatal("got no error, want the letter that failed again")
	}
	var da *DeadLetteredAgainError
	if len(rep.Failed) != 1 || !errors.As(rep.Failed[0].Err, &da) || da.Letter.Seq != seqs[0] || da.Again.Seq != again {
		t.Fatalf("failed: got %+v, want letter %d dead-lettered again as %d", rep.Failed, seqs[0], again)
	}
	want := fmt.Sprintf("letter %d of enrollment/dev-1 was replayed (events #%d) and dead-lettered again as letter %d (permanent: DPS 409201 on create)", seqs[0], da.Event, again)
	if da.Error() != want {
		t.Errorf("error: got %q, want %q", da.Error(), want)
	}
	if !reflect.DeepEqual(seqsOf(rep.Skipped), seqs[1:]) || len(rep.Replayed) != 0 {
		t.Errorf("report: skipped %v replayed %v, want the held letter skipped, nothing replayed", seqsOf(rep.Skipped), seqsOf(rep.Replayed))
	}
	if n := len(eventsOf(t, events)); n != 1 {
		t.Errorf("events: got %d replays, want 1", n)
	}
	left, _ := e.st.List(e.ctx, Filter{})
	if got := seqsOf(left); !reflect.DeepEqual(got, []uint64{seqs[1], again}) {
		t.Errorf("letters: got %v, want the held letter and the new one %v", got, []uint64{seqs[1], again})
	}
}
