package dlq

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dpsync/dpsync/internal/dlq/dlqtest"
)

func TestPublishDedupe(t *testing.T) {
	e := newEnv(t)
	l := letter("enrollment/dev-1", 42, "create", ClassPermanent, 409201, t0)
	first := e.publish(t, l)[0]
	// The worker crashed before acking; the redelivered event fails again, a bit later.
	l.LastFailure = t0.Add(time.Minute)
	again := e.publish(t, l)[0]
	if again != first {
		t.Errorf("second publish: got seq %d, want the first letter's %d", again, first)
	}
	if n := msgCount(t, e.dlq); n != 1 {
		t.Errorf("letters: got %d, want 1", n)
	}
	got, err := e.st.Get(e.ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	if got.Worker != "w1" || got.Subject != "dpsync.dlq.enrollment.dev-1" || string(got.Data) != string(l.Data) {
		t.Errorf("got worker %q subject %q, want w1 on dpsync.dlq.enrollment.dev-1 with the original bytes", got.Worker, got.Subject)
	}
	m, err := e.dlq.GetMsg(e.ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	if id := m.Header.Get("Nats-Msg-Id"); id != "dlq.DPS_EVENTS.42" {
		t.Errorf("Nats-Msg-Id: got %q, want dlq.DPS_EVENTS.42", id)
	}
}

func TestPublishBatch(t *testing.T) {
	e := newEnv(t)
	ls := []Letter{
		letter("enrollment/a", 1, "create", ClassTransient, 0, t0),
		letter("enrollment/b", 2, "create", ClassTransient, 0, t0),
		{Class: "bogus", OriginStream: "DPS_EVENTS", OriginSeq: 3},
		letter("enrollment/a", 1, "create", ClassTransient, 0, t0), // duplicate of the first
	}
	seqs, err := e.pub.PublishBatch(e.ctx, ls)
	if err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("got error %v, want one naming the bad class", err)
	}
	if seqs[0] == 0 || seqs[1] == 0 || seqs[2] != 0 || seqs[3] != seqs[0] {
		t.Errorf("got seqs %v, want two letters, 0 for the invalid one, the duplicate on the first", seqs)
	}
	if n := msgCount(t, e.dlq); n != 2 {
		t.Errorf("letters: got %d, want 2", n)
	}
}

func TestPublishErrors(t *testing.T) {
	js := dlqtest.StartJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pub, err := NewPublisher(js, PublisherOptions{WorkerID: "w1"})
	if err != nil {
		t.Fatal(err)
	}
	// No dead-letter stream: the publish must fail, so the caller does not ack.
	_, err = pub.Publish(ctx, letter("enrollment/a", 1, "create", ClassPermanent, 400004, t0))
	if err == nil || !strings.Contains(err.Error(), "dlq.DPS_EVENTS.1") {
		t.Errorf("publish without a stream: got %v, want an error naming the letter", err)
	}
	for _, tt := range []struct {
		name string
		l    Letter
	}{
		{"no origin", Letter{Class: ClassPermanent}},
		{"bad class", Letter{Class: "lost", OriginStream: "S", OriginSeq: 1}},
	} {
		if _, err := pub.Publish(ctx, tt.l); err == nil {
			t.Errorf("%s: got no error, want one", tt.name)
		}
	}
	if _, err := NewPublisher(js, PublisherOptions{}); err == nil {
		t.Error("NewPublisher without WorkerID: got no error, want one")
	}
	if _, err := NewPublisher(nil, PublisherOptions{WorkerID: "w"}); err == nil {
		t.Error("NewPublisher without js: got no error, want one")
	}
}

func TestEnsureStream(t *testing.T) {
	js := dlqtest.StartJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := StreamConfig{MaxAge: 30 * 24 * time.Hour, DuplicateWindow: 5 * time.Minute}
	for range 2 {
		s, err := EnsureStream(ctx, js, cfg)
		if err != nil {
			t.Fatal(err)
		}
		c := s.CachedInfo().Config
		if c.Name != "DPS_DLQ" || c.Subjects[0] != "dpsync.dlq.>" || c.MaxAge != cfg.MaxAge || c.Duplicates != cfg.DuplicateWindow || c.Storage.String() != "File" {
			t.Errorf("got %s %v age %v dup %v storage %v, want DPS_DLQ dpsync.dlq.> 720h 5m file", c.Name, c.Subjects, c.MaxAge, c.Duplicates, c.Storage)
		}
	}
	cfg.MaxAge = 60 * 24 * time.Hour // updated in place
	s, err := EnsureStream(ctx, js, cfg)
	if err != nil || s.CachedInfo().Config.MaxAge != cfg.MaxAge {
		t.Errorf("update max age: got %v, err %v; want %v", s.CachedInfo().Config.MaxAge, err, cfg.MaxAge)
	}
	for _, bad := range []StreamConfig{
		{Name: "a.b"}, {SubjectPrefix: "x.*"}, {Replicas: 7}, {MaxAge: -1},
		{MaxAge: time.Minute, DuplicateWindow: time.Hour},
	} {
		if _, err := EnsureStream(ctx, js, bad); err == nil {
			t.Errorf("EnsureStream(%+v): got no error, want one", bad)
		}
	}
}

func TestGetNotFound(t *testing.T) {
	e := newEnv(t)
	_, err := e.st.Get(e.ctx, 99)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "99") {
		t.Errorf("got %v, want ErrNotFound naming 99", err)
	}
	if _, err := OpenStore(e.ctx, e.js, StoreOptions{Stream: "NOPE"}); err == nil || !strings.Contains(err.Error(), "NOPE") {
		t.Errorf("open missing stream: got %v, want an error naming it", err)
	}
}
