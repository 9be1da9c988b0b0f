package dlq

import (
	"fmt"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
)

func TestHoldIndex(t *testing.T) {
	e := newEnv(t)
	// Letters stored before the worker starts.
	old := e.publish(t,
		letter("enrollment/a", 10, "create", ClassPermanent, 409201, t0),
		letter("enrollment/a", 12, "update", ClassHeld, 0, t0),
		letter("enrollment/b", 11, "create", ClassTransient, 0, t0),
	)
	x, err := LoadHoldIndex(e.ctx, e.js, "")
	if err != nil {
		t.Fatal(err)
	}
	if x.Len() != 3 {
		t.Fatalf("loaded: got %d letters, want 3", x.Len())
	}
	tests := []struct {
		key      string
		position uint64
		held     bool
		seq      uint64
	}{
		{"enrollment/a", 9, false, 0},
		{"enrollment/a", 10, false, 0}, // the letter's own event (a replay) is not held by itself
		{"enrollment/a", 11, true, old[0]},
		{"enrollment/a", 50, true, old[0]},
		{"enrollment/b", 12, true, old[2]},
		{"enrollment/c", 99, false, 0},
	}
	for _, tt := range tests {
		seq, held, err := x.Holds(e.ctx, tt.key, tt.position)
		if err != nil || held != tt.held || seq != tt.seq {
			t.Errorf("Holds(%s, %d): got %d %v %v, want %d %v", tt.key, tt.position, seq, held, err, tt.seq, tt.held)
		}
	}
	h, held, err := x.Blocker(e.ctx, "enrollment/a", 13)
	if err != nil || !held || h.HeldReason() != fmt.Sprintf("held behind dead letter %d (DPS 409201 on create)", old[0]) {
		t.Errorf("Blocker: got %+v %v %v, want the create's letter", h, held, err)
	}

	if reason, held, err := x.Held(e.ctx, "enrollment/a", 13); err != nil || !held || reason != h.HeldReason() {
		t.Errorf("Held: got %q %v %v, want %q", reason, held, err, h.HeldReason())
	}
	if reason, held, err := x.Held(e.ctx, "enrollment/a", 5); err != nil || held || reason != "" {
		t.Errorf("Held before the letter: got %q %v %v, want not held", reason, held, err)
	}

	// The worker's own letters are learned through the publisher.
	pub, err := NewPublisher(e.js, PublisherOptions{WorkerID: "w1", Index: x})
	if err != nil {
		t.Fatal(err)
	}
	cSeq, err := pub.Publish(e.ctx, letter("enrollment/c", 20, "delete", ClassPermanent, 400004, t0))
	if err != nil {
		t.Fatal(err)
	}
	if seq, held, _ := x.Holds(e.ctx, "enrollment/c", 21); !held || seq != cSeq {
		t.Errorf("after own publish: got %d %v, want held by %d", seq, held, cSeq)
	}

	// Another process replays b's letter: b is free again.
	if err := e.dlq.DeleteMsg(e.ctx, old[2]); err != nil {
		t.Fatal(err)
	}
	if seq, held, err := x.Holds(e.ctx, "enrollment/b", 12); held || err != nil {
		t.Errorf("after removal: got held by %d (%v), want free", seq, err)
	}
	// Another process parks a's create: old letter removed, a new one with the same
	// position stored. a stays held, by the new letter.
	parked := letter("enrollment/a", 10, "create", ClassPermanent, 409201, t0)
	parked.Subject = Subject(DefaultSubjectPrefix, parked)
	ack, err := e.js.PublishMsg(e.ctx, &nats.Msg{Subject: parked.Subject, Data: parked.Data, Header: parked.Header()})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.dlq.DeleteMsg(e.ctx, old[0]); err != nil {
		t.Fatal(err)
	}
	if seq, held, err := x.Holds(e.ctx, "enrollment/a", 11); !held || seq != ack.Sequence || err != nil {
		t.Errorf("after park elsewhere: got %d %v %v, want held by %d", seq, held, err, ack.Sequence)
	}
	// Position 13 is held by the lowest remaining letter: the parked create (position 10).
	if seq, _, _ := x.Holds(e.ctx, "enrollment/a", 13); seq != ack.Sequence {
		t.Errorf("position 13: got blocker %d, want %d", seq, ack.Sequence)
	}

	// A letter another worker stored after the scan is found by Refresh.
	other := letter("enrollment/d", 30, "create", ClassInvalid, 0, t0)
	dSeq := e.publish(t, other)[0]
	if _, held, _ := x.Holds(e.ctx, "enrollment/d", 31); held {
		t.Error("before Refresh: got held, want the index not to know yet")
	}
	if err := x.Refresh(e.ctx); err != nil {
		t.Fatal(err)
	}
	if seq, held, _ := x.Holds(e.ctx, "enrollment/d", 31); !held || seq != dSeq {
		t.Errorf("after Refresh: got %d %v, want held by %d", seq, held, dSeq)
	}
	// Add/Remove by hand.
	x.Add("enrollment/e", 5, dSeq) // wrong: dSeq is d's letter; Holds must not trust it
	if _, held, _ := x.Holds(e.ctx, "enrollment/e", 6); held {
		t.Error("index entry pointing at another key's letter: got held, want free")
	}
}

func TestHoldIndexConcurrent(t *testing.T) {
	e := newEnv(t)
	x := NewHoldIndex(e.js, DefaultStream)
	pub, err := NewPublisher(e.js, PublisherOptions{WorkerID: "w1", Index: x})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("enrollment/k%d", i%3)
			if _, err := pub.Publish(e.ctx, letter(key, uint64(100+i), "create", ClassTransient, 0, t0)); err != nil {
				t.Error(err)
			}
			if _, _, err := x.Holds(e.ctx, key, 1000); err != nil {
				t.Error(err)
			}
			_ = x.Refresh(e.ctx)
		}()
	}
	wg.Wait()
	if x.Len() != 8 {
		t.Errorf("got %d letters, want 8", x.Len())
	}
}
