package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
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
