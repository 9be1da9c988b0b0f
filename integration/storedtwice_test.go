package integration

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/embedded/natstest"
)

// TestStoredTwiceFindsACopyOutsideTheDuplicateWindow: an event id stored again after the
// stream's duplicate window is reported with both sequences; ids stored once are not.
func TestStoredTwiceFindsACopyOutsideTheDuplicateWindow(t *testing.T) {
	js, _ := natstest.Start(t).Connect(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: eventsStream, Subjects: []string{"x.>"}, Duplicates: 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{"a", "b", "a", "c"} {
		if i == 2 {
			time.Sleep(300 * time.Millisecond) // past the duplicate window
		}
		m := &nats.Msg{Subject: "x.1", Header: nats.Header{}, Data: []byte("d")}
		m.Header.Set(jetstream.MsgIDHeader, id)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	got, err := storedTwice(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a at [1 3]"}; !slices.Equal(got, want) {
		t.Fatalf("stored twice: %q, want %q", got, want)
	}
}
