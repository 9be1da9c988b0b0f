package app

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/consumer"
	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/event"
)

// TestCreateBackAloneAfterItsFoldedUpdateSettled: a previous owner applied a create with
// the next update folded into it (DPS holds the update's content), then the update's ack was
// confirmed and the create's was not (a worker of an earlier version, which acknowledged a
// folded group all at once, killed in between; or a consumer that lost the create's ack).
// The create comes back alone, and the device's newer updates arrive with it. The applier's
// 409201 check must recognise the settled update's content on DPS as the create's own
// earlier write and finish with the newest content, not dead-letter the create and hold the
// device's later events behind it (the one failure of the all-together fault scenario).
func TestCreateBackAloneAfterItsFoldedUpdateSettled(t *testing.T) {
	s := newStack(t, emulator.Options{})
	ctx := context.Background()
	sc := consumer.StreamConfig{Partitions: 4}
	cc := consumer.ConsumerConfig{AckWait: 3 * time.Second} // the stack's workers'
	stream, err := consumer.EnsureStream(ctx, s.js, sc)
	if err != nil {
		t.Fatal(err)
	}
	const id = "folded-1"
	s.publish(event.NewEnrollment(dps.BulkModeCreate, tagged(id, 1)), event.NewEnrollment(dps.BulkModeUpdate, tagged(id, 2)))
	// The previous owner: applied the create merged with the update, confirmed the update's
	// ack only, and died.
	if _, err := s.client.CreateOrUpdateEnrollment(ctx, *tagged(id, 2), nil); err != nil {
		t.Fatal(err)
	}
	var held []jetstream.Msg
	for p := 0; p < sc.Partitions && len(held) == 0; p++ {
		cons, err := consumer.EnsureConsumer(ctx, stream, sc, cc, p)
		if err != nil {
			t.Fatal(err)
		}
		batch, err := cons.Fetch(2, jetstream.FetchMaxWait(500*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			held = append(held, m)
		}
	}
	if len(held) != 2 {
		t.Fatalf("the previous owner pulled %d events, want the create and the update", len(held))
	}
	if err := held[1].DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	// Newer updates of the device, read with the create when it comes back.
	s.publish(event.NewEnrollment(dps.BulkModeUpdate, tagged(id, 3)), event.NewEnrollment(dps.BulkModeUpdate, tagged(id, 4)))
	s.worker(func(o *Options) { o.Batcher.Linger = 500 * time.Millisecond }) // the create and the updates fold
	s.settle(30 * time.Second)
	if ls := s.letters(); len(ls) != 0 {
		t.Fatalf("dead letters: %d (first: %s), want none", len(ls), ls[0].Reason)
	}
	if got := tagOf(s.enrollments()[id]); got != 4 {
		t.Fatalf("DPS holds the content of event %d, want 4 (the newest)", got)
	}
}
