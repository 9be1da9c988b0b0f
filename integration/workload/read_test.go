package workload

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/dps"
)

func TestReadDeadLetters(t *testing.T) {
	ctx := t.Context()
	js := startJS(t)
	if got, err := ReadDeadLetters(ctx, js, "DPS_DLQ"); err != nil || len(got) != 0 {
		t.Fatalf("missing stream: got %v, %v; want no letters, no error", got, err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "DPS_DLQ", Subjects: []string{"dpsync.dlq.>"}}); err != nil {
		t.Fatal(err)
	}
	const n = 1234 // more than one fetch
	for i := range n {
		m := nats.NewMsg(fmt.Sprintf("dpsync.dlq.enrollment.dev-%d", i))
		m.Data = []byte(fmt.Sprintf(`{"specversion":"1.0","id":"body-%d"}`, i))
		if i%2 == 0 {
			m.Header.Set("Dpsync-Event-Id", fmt.Sprintf("ev-%d", i))
		}
		m.Header.Set("Dpsync-Key", fmt.Sprintf("enrollment/dev-%d", i))
		m.Header.Set("Dpsync-Class", "permanent")
		m.Header.Set("Dpsync-Reason", "412")
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ReadDeadLetters(ctx, js, "DPS_DLQ")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("got %d letters, want %d", len(got), n)
	}
	for i, want := range []DeadLetter{
		{StreamSeq: 1, EventID: "ev-0", Key: "dev-0", Class: "permanent", Reason: "412"},
		{StreamSeq: 2, EventID: "body-1", Key: "dev-1", Class: "permanent", Reason: "412"},
	} {
		if got[i] != want {
			t.Errorf("letter %d: got %+v, want %+v", i, got[i], want)
		}
	}
}

func TestStateOf(t *testing.T) {
	tags := func(seq string) *dps.InitialTwin {
		return &dps.InitialTwin{Tags: dps.TwinCollection{"seq": json.RawMessage(seq)}}
	}
	got := StateOf([]dps.IndividualEnrollment{
		{RegistrationID: "Dev-1", InitialTwin: tags("7")},
		{RegistrationID: "dev-2"},
		{RegistrationID: "dev-3", InitialTwin: tags(`"x"`)},
	})
	want := map[string]State{"dev-1": {true, 7}, "dev-2": {true, -1}, "dev-3": {true, -1}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("key %s: got %+v, want %+v", k, got[k], w)
		}
	}
}
