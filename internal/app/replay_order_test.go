package app

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/dlq"
	"github.com/dpsync/dpsync/internal/dlq/dlqtest"
	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/event"
)

// publishSeq publishes ev as a producer does and returns its sequence in the events stream.
func (s *stack) publishSeq(ev *event.Event) uint64 {
	s.t.Helper()
	b, err := ev.Encode()
	if err != nil {
		s.t.Fatal(err)
	}
	ack, err := s.js.Publish(context.Background(), ev.StreamSubject(event.SubjectPrefix), b, jetstream.WithMsgID(ev.ID))
	if err != nil {
		s.t.Fatal(err)
	}
	return ack.Sequence
}

// replaysOf returns the events-stream sequences of the replays of the letter at seq.
func (s *stack) replaysOf(seq uint64) []uint64 {
	s.t.Helper()
	st, err := s.js.Stream(context.Background(), "DPS_EVENTS")
	if err != nil {
		s.t.Fatal(err)
	}
	var out []uint64
	for _, m := range dlqtest.Messages(s.t, st) {
		if m.Header.Get(dlq.HeaderReplayOf) == strconv.FormatUint(seq, 10) {
			out = append(out, m.Sequence)
		}
	}
	return out
}

// failedCreate makes the letter of a create that DPS rejects (the enrollment exists, tag
// 0) with a worker that stops afterwards, and returns the letter.
func failedCreate(t *testing.T, s *stack, id string) dlq.Letter {
	t.Helper()
	if _, err := s.client.CreateOrUpdateEnrollment(context.Background(), *tagged(id, 0), nil); err != nil {
		t.Fatal(err)
	}
	stop := s.worker(nil)
	s.publish(event.NewEnrollment(dps.BulkModeCreate, tagged(id, 1)))
	s.settle(20 * time.Second)
	if err := stop(); err != nil {
		t.Fatalf("stop the worker: %v", err)
	}
	ls := s.lettersOf("enrollment/" + id)
	if len(ls) != 1 || ls[0].Class != dlq.ClassPermanent || ls[0].Code != 409201 {
		t.Fatalf("letters of %s: %+v, want one permanent 409201", id, ls)
	}
	return ls[0]
}

type replayResult struct {
	rep dlq.ReplayReport
	err error
}

// The order rule across a replay: a newer event of the device waits in the events stream
// (a backlog: no worker runs) when the operator replays the device's failed create. The
// replayed event lands behind the newer one, yet must apply before it: the letter stays
// until a worker settled its replay, so the newer event, taken first, is held behind it;
// the replay then comes back for the held event and applies it last. DPS ends with the
// newer event's content and no letter is left.
func TestReplayDoesNotLetANewerEventOvertakeIt(t *testing.T) {
	if testing.Short() {
		t.Skip("starts workers")
	}
	s := newStack(t, emulator.Options{})
	ctx := context.Background()
	l := failedCreate(t, s, "order-1")
	newer := s.publishSeq(event.NewEnrollment(dps.BulkModeUpdate, tagged("order-1", 2)))

	// The fix: replay the create as an update. The replay waits for a worker; run it aside.
	store, err := dlq.OpenStore(ctx, s.js, dlq.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan replayResult, 1)
	go func() {
		rep, err := store.Replay(ctx, dlq.Filter{KeyGlob: "enrollment/order-1"}, dlq.ReplayOptions{As: "update", Wait: time.Minute})
		done <- replayResult{rep, err}
	}()
	waitUntil(t, "the replayed create in the events stream", 20*time.Second, func() bool { return len(s.replaysOf(l.Seq)) == 1 })
	if r := s.replaysOf(l.Seq)[0]; r < newer {
		t.Fatalf("replayed create at events #%d, want it behind the newer update #%d", r, newer)
	}
	s.worker(nil)
	var res replayResult
	select {
	case res = <-done:
	case <-time.After(90 * time.Second):
		t.Fatal("the replay did not end within 90s")
	}
	s.settle(20 * time.Second)

	if got := tagOf(s.enrollments()["order-1"]); got != 2 {
		t.Fatalf("order-1 on DPS: tag %d, want 2 (the newer update applied after the replayed create; 1: the replay overtook it)", got)
	}
	if res.err != nil {
		t.Fatalf("replay: %v (report %+v)", res.err, res.rep)
	}
	// The newer update was held behind the letter (not applied when first taken), and
	// replayed after the create was settled.
	rep := res.rep
	if len(rep.Later) != 1 || rep.Later[0].Class != dlq.ClassHeld || rep.Later[0].OriginSeq != newer {
		t.Fatalf("held during the replay: %+v, want the newer update (events #%d) as a held letter", rep.Later, newer)
	}
	if got := len(rep.Replayed); got != 2 || rep.Replayed[0].Seq != l.Seq || rep.Replayed[1].Seq != rep.Later[0].Seq {
		t.Fatalf("replayed %+v, want the create, then the held update", rep.Replayed)
	}
	if r1, r2 := s.replaysOf(l.Seq), s.replaysOf(rep.Later[0].Seq); len(r1) != 1 || len(r2) != 1 || r2[0] < r1[0] {
		t.Errorf("events: replays of the create %v and of the update %v, want one each, the update's later", r1, r2)
	}
	if ls := s.letters(); len(ls) != 0 {
		t.Errorf("letters left: %+v, want none", ls)
	}
}

// No worker runs: the replay waits --wait for the letter to be settled, then stops the key
// with an error naming the letter, the key and the republished event; the letter stays and
// keeps holding the device. A re-run once a worker runs completes the key, the held
// newer event included, and the create goes to the events stream once.
func TestReplayWithoutWorkerTimesOutThenRerunCompletes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts workers")
	}
	s := newStack(t, emulator.Options{})
	ctx := context.Background()
	l := failedCreate(t, s, "late-1")
	s.publish(event.NewEnrollment(dps.BulkModeUpdate, tagged("late-1", 2)))
	store, err := dlq.OpenStore(ctx, s.js, dlq.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	filter := dlq.Filter{KeyGlob: "enrollment/late-1"}
	rep, err := store.Replay(ctx, filter, dlq.ReplayOptions{As: "update", Wait: 500 * time.Millisecond})
	var ns *dlq.NotSettledError
	if err == nil || len(rep.Failed) != 1 || !errors.As(rep.Failed[0].Err, &ns) {
		t.Fatalf("replay without a worker: got %v, report %+v; want the letter not settled", err, rep)
	}
	replays := s.replaysOf(l.Seq)
	if len(replays) != 1 || ns.Letter.Seq != l.Seq || ns.Event != replays[0] {
		t.Fatalf("not settled: letter %d event %d, want letter %d event %v", ns.Letter.Seq, ns.Event, l.Seq, replays)
	}
	if msg := ns.Error(); !strings.Contains(msg, "of enrollment/late-1 was republished (events #") ||
		!strings.Contains(msg, "no worker settled it within 500ms — is a worker running") {
		t.Errorf("error: %q, want it to say which letter waits and what to do", msg)
	}
	if ls := s.lettersOf("enrollment/late-1"); len(ls) != 1 || ls[0].Seq != l.Seq {
		t.Fatalf("letters: %+v, want the letter still there", ls)
	}

	s.worker(nil)
	rep, err = store.Replay(ctx, filter, dlq.ReplayOptions{As: "update", Wait: time.Minute})
	if err != nil {
		t.Fatalf("re-run: %v (report %+v)", err, rep)
	}
	s.settle(20 * time.Second)
	if got := tagOf(s.enrollments()["late-1"]); got != 2 {
		t.Errorf("late-1 on DPS: tag %d, want 2 (the update after the replayed create)", got)
	}
	if ls := s.letters(); len(ls) != 0 {
		t.Errorf("letters left: %+v, want none", ls)
	}
	if r := s.replaysOf(l.Seq); len(r) != 1 {
		t.Errorf("replays of the create in the events stream: %v, want one (the re-run's is deduplicated)", r)
	}
}
