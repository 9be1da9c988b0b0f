package dlq

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/dpsync/dpsync/internal/dlq/dlqtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The ordered consumer deletes its previous server-side consumer in a goroutine
		// bounded by 10 s; the server's own goroutines end with Shutdown.
		goleak.IgnoreAnyFunction("github.com/nats-io/nats.go/jetstream.(*orderedConsumer).reset.func1"),
	)
}

// t0 is the fixed time of the tests' failures.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type env struct {
	ctx context.Context
	js  jetstream.JetStream
	dlq jetstream.Stream
	pub *Publisher
	st  *Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	js := dlqtest.StartJetStream(t)
	s, err := EnsureStream(ctx, js, StreamConfig{MemoryStorage: true})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := NewPublisher(js, PublisherOptions{WorkerID: "w1"})
	if err != nil {
		t.Fatal(err)
	}
	st, err := OpenStore(ctx, js, StoreOptions{Now: func() time.Time { return t0.Add(2 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	return &env{ctx: ctx, js: js, dlq: s, pub: pub, st: st}
}

// event is a CloudEvents JSON event of an individual enrollment.
func event(id, op, eventID string) []byte {
	return fmt.Appendf(nil, `{"specversion":"1.0","id":%q,"source":"erp","type":"dpsync.enrollment","data":{"operation":%q,"enrollment":{"registrationId":%q,"attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"cHJpbWFyeS1zZWNyZXQ=","secondaryKey":"c2Vjb25kYXJ5LXNlY3JldA=="}}}}}`, eventID, op, id)
}

// letter is a letter of the event at originSeq of key "<kind>/<id>".
func letter(key string, originSeq uint64, op string, class Class, code int, when time.Time) Letter {
	kind, id, _ := strings.Cut(key, "/")
	evID := fmt.Sprintf("ev-%d", originSeq)
	l := Letter{
		Data:          event(id, op, evID),
		OriginStream:  "DPS_EVENTS",
		OriginSubject: "dpsync.events." + kind + "." + id,
		OriginSeq:     originSeq,
		Position:      originSeq,
		Key:           key,
		Kind:          kind,
		Operation:     op,
		EventID:       evID,
		Class:         class,
		Code:          code,
		Attempts:      1,
		FirstFailure:  when,
		LastFailure:   when,
	}
	switch {
	case class == ClassHeld:
		l.Attempts = 0
	case code != 0:
		l.Status = code / 1000
		l.Reason = fmt.Sprintf("DPS %d on %s", code, op)
	default:
		l.Reason = "transient: DPS unavailable"
	}
	return l
}

func (e *env) publish(t *testing.T, ls ...Letter) []uint64 {
	t.Helper()
	var seqs []uint64
	for _, l := range ls {
		seq, err := e.pub.Publish(e.ctx, l)
		if err != nil {
			t.Fatalf("publish %s: %v", l.Key, err)
		}
		seqs = append(seqs, seq)
	}
	return seqs
}

func seqsOf(ls []Letter) []uint64 {
	out := make([]uint64, 0, len(ls))
	for _, l := range ls {
		out = append(out, l.Seq)
	}
	return out
}

func msgCount(t *testing.T, s jetstream.Stream) uint64 {
	t.Helper()
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}
