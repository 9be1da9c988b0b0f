package app

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dpsync/dpsync/internal/dlq"
	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/event"
)

// A create fails permanently (the enrollment exists); the later events of the device follow
// it into the dead-letter stream instead of overtaking it; other devices are not held. After
// the operator fixes the cause, replaying the key applies all of them in their order.
func TestHeldBehindDeadLetterThenReplayAppliesInOrder(t *testing.T) {
	s := newStack(t, emulator.Options{})
	ctx := context.Background()
	if _, err := s.client.CreateOrUpdateEnrollment(ctx, *tagged("held-1", 0), nil); err != nil {
		t.Fatal(err)
	}
	s.worker(nil)
	s.publish(
		event.NewEnrollment(dps.BulkModeCreate, tagged("held-1", 1)),
		event.NewEnrollment(dps.BulkModeCreate, tagged("free-1", 1)),
	)
	s.settle(20 * time.Second)
	// Published after the failure: must be held by the dead-letter index, not the batcher.
	s.publish(
		event.NewEnrollment(dps.BulkModeDelete, &dps.IndividualEnrollment{RegistrationID: "held-1"}),
		event.NewEnrollment(dps.BulkModeUpdate, tagged("held-1", 3)),
	)
	s.settle(20 * time.Second)

	ls := s.letters()
	var classes []string
	for _, l := range ls {
		classes = append(classes, string(l.Class)+":"+l.Operation)
		if l.Key != "enrollment/held-1" {
			t.Fatalf("letter of %s: only held-1 may be dead-lettered", l.Key)
		}
		if l.Class == dlq.ClassHeld && !strings.HasPrefix(l.Reason, "held behind dead letter ") {
			t.Errorf("held letter reason %q, want it to name the letter it follows", l.Reason)
		}
	}
	if got := strings.Join(classes, ","); got != "permanent:create,held:delete,held:update" {
		t.Fatalf("letters: %s, want permanent:create,held:delete,held:update", got)
	}
	if got := s.enrollments(); tagOf(got["held-1"]) != 0 || tagOf(got["free-1"]) != 1 {
		t.Fatalf("DPS after the failure: held-1 tag %d (want 0, untouched), free-1 tag %d (want 1)", tagOf(got["held-1"]), tagOf(got["free-1"]))
	}

	// The fix: the stray enrollment is removed. Then replay the key.
	if _, err := s.client.DeleteEnrollment(ctx, "held-1", nil); err != nil {
		t.Fatal(err)
	}
	store, err := dlq.OpenStore(ctx, s.js, dlq.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := store.Replay(ctx, dlq.Filter{KeyGlob: "enrollment/held-1"}, dlq.ReplayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Replayed) != 3 {
		t.Fatalf("replayed %d letters, want 3 (report %+v)", len(rep.Replayed), rep)
	}
	s.settle(20 * time.Second)
	// create v1, delete, update v3 (update creates when absent): in order the result is v3;
	// any other order ends absent or at v1.
	if got := s.enrollments(); tagOf(got["held-1"]) != 3 {
		t.Fatalf("held-1 after replay: tag %d, want 3 (the three events applied in order)", tagOf(got["held-1"]))
	}
	if ls := s.letters(); len(ls) != 0 {
		t.Fatalf("%d letters left after a successful replay: %+v", len(ls), ls)
	}
}

// Transient failures that outlast the retry budget are dead-lettered as transient and
// redriven automatically once DPS recovers.
func TestTransientLetterIsRedrivenWhenDPSRecovers(t *testing.T) {
	s := newStack(t, emulator.Options{})
	setFaults(t, s, emulator.Faults{ErrorRates: map[string]float64{"*": 1}, ErrorStatus: 503})
	s.worker(func(o *Options) {
		o.Retry.Budget = 500 * time.Millisecond
		o.RedriveEvery = []time.Duration{time.Second}
	})
	s.publish(event.NewEnrollment(dps.BulkModeCreate, tagged("flaky-1", 1)))
	deadline := time.Now().Add(30 * time.Second)
	for len(s.letters()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no transient letter within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if l := s.letters()[0]; l.Class != dlq.ClassTransient || l.Status != http.StatusServiceUnavailable {
		t.Fatalf("letter: class %s status %d, want transient 503", l.Class, l.Status)
	}
	setFaults(t, s, emulator.Faults{})
	for {
		if got := s.enrollments(); tagOf(got["flaky-1"]) == 1 && len(s.letters()) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not redriven within 30s: letters %+v", s.letters())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestHealthReadyAndMetricsEndpoints(t *testing.T) {
	s := newStack(t, emulator.Options{})
	var info Info
	s.worker(func(o *Options) {
		o.HTTPAddr = "127.0.0.1:0"
		o.OnReady = func(i Info) { info = i }
	})
	_ = ready(t, &info)
	s.publish(event.NewEnrollment(dps.BulkModeCreate, tagged("m-1", 1)))
	s.settle(20 * time.Second)
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/readyz":  `"nats":"ok"`,
		"/metrics": "dpsync_events_applied_total",
	} {
		resp, err := http.Get("http://" + info.HTTPAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d, body lacks %q:\n%.600s", path, resp.StatusCode, want, body)
		}
	}
	resp, err := http.Get("http://" + info.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"dpsync_partitions_owned", "dpsync_partition_pending", "dpsync_fleet_members", "dpsync_events_in_total",
		"dpsync_dps_calls_total{", "dpsync_dps_bulk_items_bucket{", "dpsync_dps_operations_total{", "dpsync_event_applied_latency_seconds_bucket{"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}

func ready(t *testing.T, info *Info) *Info {
	t.Helper()
	if info.HTTPAddr == "" {
		t.Fatal("worker reported no HTTP address")
	}
	return info
}
