package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/consumer"
	"github.com/dpsync/dpsync/internal/dlq"
	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/event"
)

// e2eCounters reads everything the emulator counted (GET /admin/counters).
func e2eCounters(t *testing.T, s *stack) emulator.Counters {
	t.Helper()
	hc, err := HTTPClient(s.emu.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Get(s.emu.URL() + "/admin/counters")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c emulator.Counters
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		t.Fatal(err)
	}
	return c
}

// e2eCalls is the number of calls of op the emulator answered, whatever the outcome.
func e2eCalls(c emulator.Counters, op string) int {
	n := 0
	for _, v := range c.Calls[op] {
		n += v
	}
	return n
}

// e2eDeliveries sums, over the partition consumers of the events stream, the deliveries
// made so far (redeliveries included: the consumer sequence counts every delivery) and
// the events currently delivered again and not yet acknowledged.
func e2eDeliveries(t *testing.T, s *stack) (delivered uint64, redelivered int) {
	t.Helper()
	ctx := context.Background()
	st, err := s.js.Stream(ctx, "DPS_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	cfg := consumer.StreamConfig{Partitions: 4}
	for p := 0; p < 4; p++ {
		c, err := st.Consumer(ctx, cfg.ConsumerName(p))
		if err != nil {
			continue
		}
		ci, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		delivered += ci.Delivered.Consumer
		redelivered += ci.NumRedelivered
	}
	return delivered, redelivered
}

// opKind is what TestEveryOperationOfBothKindsEndToEnd needs to know of a kind of event:
// how to make one, how to read the target back, and which DPS operations are its own.
type opKind struct {
	name string
	// event returns an event of op on id whose content carries tag v (and etag, if set).
	event func(op dps.BulkMode, id string, v int, etag string) *event.Event
	// read returns the target's tag and etag; found is false when DPS has no such id.
	read func(t *testing.T, s *stack, id string) (tag int, etag string, found bool)
	// bulk is the emulator's name of the kind's bulk operation; foreign are the names of
	// the other kind's operations, which an event of this kind must never cause.
	bulk    string
	foreign []string
}

func twinTag(tw *dps.InitialTwin) int {
	if tw == nil {
		return -1
	}
	var v int
	if err := json.Unmarshal(tw.Tags["v"], &v); err != nil {
		return -1
	}
	return v
}

var opKinds = []opKind{
	{
		name: "enrollment",
		event: func(op dps.BulkMode, id string, v int, etag string) *event.Event {
			if op == dps.BulkModeDelete {
				return event.NewEnrollment(op, &dps.IndividualEnrollment{RegistrationID: id, ETag: etag})
			}
			e := tagged(id, v)
			e.ETag = etag
			return event.NewEnrollment(op, e)
		},
		read: func(t *testing.T, s *stack, id string) (int, string, bool) {
			t.Helper()
			got, err := s.client.GetEnrollment(context.Background(), id, nil)
			if dps.IsNotFound(err) {
				return 0, "", false
			}
			if err != nil {
				t.Fatal(err)
			}
			return twinTag(got.InitialTwin), got.ETag, true
		},
		bulk:    emulator.OpBulkEnrollments,
		foreign: []string{emulator.OpBulkGroups, emulator.OpPutGroup, emulator.OpGetGroup, emulator.OpDeleteGroup},
	},
	{
		name: "group",
		event: func(op dps.BulkMode, id string, v int, etag string) *event.Event {
			if op == dps.BulkModeDelete {
				return event.NewGroup(op, &dps.EnrollmentGroup{EnrollmentGroupID: id, ETag: etag})
			}
			return event.NewGroup(op, &dps.EnrollmentGroup{EnrollmentGroupID: id, Attestation: symKey(), ETag: etag,
				InitialTwin: &dps.InitialTwin{Tags: dps.TwinCollection{"v": json.RawMessage(fmt.Sprint(v))}}})
		},
		read: func(t *testing.T, s *stack, id string) (int, string, bool) {
			t.Helper()
			got, err := s.client.GetEnrollmentGroup(context.Background(), id, nil)
			if dps.IsNotFound(err) {
				return 0, "", false
			}
			if err != nil {
				t.Fatal(err)
			}
			return twinTag(got.InitialTwin), got.ETag, true
		},
		bulk:    emulator.OpBulkGroups,
		foreign: []string{emulator.OpBulkEnrollments, emulator.OpPutEnrollment, emulator.OpGetEnrollment, emulator.OpDeleteEnrollment},
	},
}

// Every operation, for individual enrollments and for enrollment groups, through the whole
// worker: create, update without etag of an existing target, updateIfMatchETag with the
// current etag (applied) and with a stale one (dead-lettered, 412, DPS untouched), delete.
// Create, updateIfMatchETag and delete go out as bulk calls of the event's kind; an event
// of one kind never causes a DPS operation of the other kind.
func TestEveryOperationOfBothKindsEndToEnd(t *testing.T) {
	for _, k := range opKinds {
		t.Run(k.name, func(t *testing.T) {
			s := newStack(t, emulator.Options{})
			s.worker(nil)
			step := func(what string, ev *event.Event, wantBulk bool) {
				t.Helper()
				before := e2eCounters(t, s)
				s.publish(ev)
				s.settle(20 * time.Second)
				after := e2eCounters(t, s)
				if wantBulk && after.Calls[k.bulk]["200"] <= before.Calls[k.bulk]["200"] {
					t.Errorf("%s: no %s call answered 200 (calls before %v, after %v)", what, k.bulk, before.Calls, after.Calls)
				}
			}
			id := "Line.9:" + k.name // DPS ids are case-insensitive; '.' tests the subject token

			step("create", k.event(dps.BulkModeCreate, id, 1, ""), true)
			tag, etag1, found := k.read(t, s, id)
			if !found || tag != 1 {
				t.Fatalf("after create: found %v tag %d, want tag 1", found, tag)
			}

			step("update without etag", k.event(dps.BulkModeUpdate, id, 2, ""), false)
			tag, etag2, _ := k.read(t, s, id)
			if tag != 2 {
				t.Fatalf("after update without etag: tag %d, want 2", tag)
			}
			if etag2 == etag1 {
				t.Fatalf("the update did not change the etag (%s): the stale case below would prove nothing", etag1)
			}

			step("updateIfMatchETag, current etag", k.event(dps.BulkModeUpdateIfMatchETag, id, 3, etag2), true)
			if tag, _, _ := k.read(t, s, id); tag != 3 {
				t.Fatalf("after updateIfMatchETag with the current etag: tag %d, want 3", tag)
			}
			if ls := s.letters(); len(ls) != 0 {
				t.Fatalf("letters after the applied operations: %+v, want none", ls)
			}

			step("delete", k.event(dps.BulkModeDelete, id, 0, ""), true)
			if _, _, found := k.read(t, s, id); found {
				t.Fatal("after delete: still on DPS")
			}

			// Stale: an etag DPS had before the target's last update.
			stale := "Line.10:" + k.name
			step("create (stale case)", k.event(dps.BulkModeCreate, stale, 1, ""), true)
			_, old, _ := k.read(t, s, stale)
			step("update (stale case)", k.event(dps.BulkModeUpdate, stale, 2, ""), false)
			step("updateIfMatchETag, stale etag", k.event(dps.BulkModeUpdateIfMatchETag, stale, 3, old), true)
			if tag, _, _ := k.read(t, s, stale); tag != 2 {
				t.Errorf("after updateIfMatchETag with a stale etag: tag %d, want 2 (untouched)", tag)
			}
			ls := s.letters()
			wantKey := k.name + "/line.10:" + k.name
			if len(ls) != 1 || ls[0].Key != wantKey || ls[0].Status != http.StatusPreconditionFailed ||
				ls[0].Class != dlq.ClassPermanent || ls[0].Operation != string(dps.BulkModeUpdateIfMatchETag) {
				t.Fatalf("letters: %+v, want one permanent 412 updateIfMatchETag letter of %s", ls, wantKey)
			}

			c := e2eCounters(t, s)
			for _, op := range k.foreign {
				if n := e2eCalls(c, op); n != 0 {
					t.Errorf("%d %s calls for %s events, want none (calls: %v)", n, op, k.name, c.Calls)
				}
			}
			assertNoSecrets(t, s)
		})
	}
}

// A producer that retries a publish (its PubAck was lost) sends the same event again with
// the same Nats-Msg-Id, the event id. Within the stream's duplicate window (the worker's
// default, 2 min) the stream stores it once, and DPS sees it once: whether the retry comes
// right behind the first copy or after the worker applied it.
func TestProducerRetryWithSameMsgIDIsStoredAndAppliedOnce(t *testing.T) {
	s := newStack(t, emulator.Options{})
	s.worker(nil)
	ctx := context.Background()
	publish := func(b []byte, subject, id string) *jetstream.PubAck {
		t.Helper()
		ack, err := s.js.Publish(ctx, subject, b, jetstream.WithMsgID(id))
		if err != nil {
			t.Fatal(err)
		}
		return ack
	}
	// Retried right away, before the worker can have applied the first copy; then retried
	// after it did.
	for i, id := range []string{"dedupe-now", "dedupe-later"} {
		ev := event.NewEnrollment(dps.BulkModeCreate, tagged(id, i+1))
		b, err := ev.Encode()
		if err != nil {
			t.Fatal(err)
		}
		subject := ev.StreamSubject(event.SubjectPrefix)
		first := publish(b, subject, ev.ID)
		if id == "dedupe-later" {
			s.settle(20 * time.Second)
			if _, ok := s.enrollments()[id]; !ok {
				t.Fatalf("%s: not applied before its retry", id)
			}
		}
		retry := publish(b, subject, ev.ID)
		if first.Duplicate || !retry.Duplicate || retry.Sequence != first.Sequence {
			t.Fatalf("%s: first PubAck %+v, retry %+v; want the retry answered as a duplicate of the first", id, first, retry)
		}
	}
	s.settle(20 * time.Second)

	st, err := s.js.Stream(ctx, "DPS_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Errorf("the stream holds %d events, want 2 (each retry dropped)", info.State.Msgs)
	}
	if delivered, _ := e2eDeliveries(t, s); delivered != 2 {
		t.Errorf("the consumers delivered %d events, want 2", delivered)
	}
	got := s.enrollments()
	if tagOf(got["dedupe-now"]) != 1 || tagOf(got["dedupe-later"]) != 2 {
		t.Errorf("DPS: dedupe-now tag %d, dedupe-later tag %d; want 1 and 2", tagOf(got["dedupe-now"]), tagOf(got["dedupe-later"]))
	}
	// Applied once: one create item each. A second copy would be a second create, answered
	// 409201 and checked with a GET.
	c := e2eCounters(t, s)
	if c.BulkItems != 2 || e2eCalls(c, emulator.OpGetEnrollment) != 0 || e2eCalls(c, emulator.OpPutEnrollment) != 0 {
		t.Errorf("DPS saw %d bulk items, %d GETs and %d PUTs; want 2, 0 and 0 (calls %v)",
			c.BulkItems, e2eCalls(c, emulator.OpGetEnrollment), e2eCalls(c, emulator.OpPutEnrollment), c.Calls)
	}
	if ls := s.letters(); len(ls) != 0 {
		t.Errorf("letters: %+v, want none", ls)
	}
}

// An event the worker holds longer than the consumer's AckWait is kept alive with
// InProgress (every AckWait/3, keepAliveFor): the server does not redeliver it, and DPS
// sees it once. Held either in a slow DPS call (latency of twice AckWait) or behind
// transient failures retried for more than twice AckWait; in both, a second event of the
// key waits behind the first.
func TestEventHeldLongerThanAckWaitIsNotRedelivered(t *testing.T) {
	const ackWait = 2 * time.Second
	for _, tt := range []struct {
		name   string
		faults emulator.Faults // what keeps the events waiting
		window time.Duration   // how long the faults last (0: to the end)
	}{
		{"slow DPS", emulator.Faults{Latency: emulator.Duration(2 * ackWait)}, 0},
		{"transient failures", emulator.Faults{ErrorRates: map[string]float64{"*": 1}, ErrorStatus: 503}, 5 * ackWait / 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newStack(t, emulator.Options{})
			s.worker(func(o *Options) {
				o.Consumer.AckWait = ackWait
				// One DPS request may take the whole latency; the lease outlasts it.
				o.DPSTryTimeout = 3 * ackWait
				o.LeaseTTL = 2 * (3*ackWait + time.Second)
				o.Batcher.Coalesce = false // two events, two deliveries to keep alive
			})
			if keepAliveFor(ackWait) >= ackWait/2 {
				t.Fatalf("keep-alive every %v for an AckWait of %v: not within it", keepAliveFor(ackWait), ackWait)
			}
			setFaults(t, s, tt.faults)
			start := time.Now()
			s.publish(
				event.NewEnrollment(dps.BulkModeCreate, tagged("slow-1", 1)),
				event.NewEnrollment(dps.BulkModeUpdate, tagged("slow-1", 2)),
			)
			maxRedelivered := 0
			watch := func() {
				_, r := e2eDeliveries(t, s)
				maxRedelivered = max(maxRedelivered, r)
			}
			if tt.window > 0 {
				for time.Since(start) < tt.window {
					watch()
					time.Sleep(100 * time.Millisecond) // the failure window lasts this long
				}
				if c := e2eCounters(t, s); c.Calls[emulator.OpBulkEnrollments]["503"] == 0 {
					t.Fatalf("DPS answered no 503 during the window: the event was not held (calls %v)", c.Calls)
				}
				setFaults(t, s, emulator.Faults{})
			}
			waitUntil(t, "slow-1 applied", 60*time.Second, func() bool {
				watch()
				left, found := s.backlog()
				return found == 4 && left == 0
			})
			held := time.Since(start)
			setFaults(t, s, emulator.Faults{})
			if held < 2*ackWait {
				t.Fatalf("the events were settled after %v, under twice AckWait (%v): the test proves nothing", held, 2*ackWait)
			}
			delivered, _ := e2eDeliveries(t, s)
			if maxRedelivered != 0 || delivered != 2 {
				t.Errorf("held %v: %d deliveries, up to %d redelivered at once; want 2 deliveries, none redelivered",
					held.Round(time.Millisecond), delivered, maxRedelivered)
			}
			if tag := tagOf(s.enrollments()["slow-1"]); tag != 2 {
				t.Errorf("slow-1: tag %d, want 2", tag)
			}
			// Once each: a redelivered create is answered 409201 and checked with a GET.
			c := e2eCounters(t, s)
			if n := e2eCalls(c, emulator.OpGetEnrollment); n != 0 || c.Calls[emulator.OpBulkEnrollments]["200"] != 1 {
				t.Errorf("DPS calls %v: want one successful bulk create and no GET", c.Calls)
			}
			if ls := s.letters(); len(ls) != 0 {
				t.Errorf("letters: %+v, want none", ls)
			}
		})
	}
}
