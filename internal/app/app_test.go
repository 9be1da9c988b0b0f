package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/batcher"
	"github.com/dpsync/dpsync/internal/consumer"
	"github.com/dpsync/dpsync/internal/dlq"
	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/embedded/natstest"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/event"
)

// stack is a real embedded NATS server and the DPS emulator over HTTPS, shared by the
// workers a test starts and restarts.
type stack struct {
	t       *testing.T
	nats    *natstest.Server
	js      jetstream.JetStream
	emu     *emulator.Server
	client  *dps.Client
	logs    *syncBuffer
	workers int
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newStack(t *testing.T, emuOpts emulator.Options) *stack {
	t.Helper()
	srv := natstest.Start(t)
	js, _ := srv.Connect(t)
	if emuOpts.Quotas == nil {
		emuOpts.Quotas = &emulator.Quotas{} // off
	}
	ctx := context.Background()
	emu, err := emulator.Serve(ctx, emuOpts, emulator.ServeOptions{Addr: "127.0.0.1:0", CertFile: filepath.Join(t.TempDir(), "emu.pem")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	hc, err := HTTPClient(emu.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	client, err := dps.NewClientFromConnectionString(emu.ConnectionString(), &dps.ClientOptions{ClientOptions: azcoreOpts(hc, 10*time.Second, unpaced(t))})
	if err != nil {
		t.Fatal(err)
	}
	return &stack{t: t, nats: srv, js: js, emu: emu, client: client, logs: &syncBuffer{}}
}

// worker runs app.Run until the returned stop function is called; stop returns Run's error.
func (s *stack) worker(mod func(*Options)) (stop func() error) {
	s.t.Helper()
	s.workers++
	o := Options{
		WorkerID:            fmt.Sprintf("w%d", s.workers),
		NATSURLs:            []string{s.nats.URL()},
		DPSConnectionString: s.emu.ConnectionString(),
		DPSCAFile:           s.emu.CAFile(),
		Stream:              consumer.StreamConfig{Partitions: 4},
		Consumer:            consumer.ConsumerConfig{AckWait: 3 * time.Second},
		Batcher:             batcher.DefaultConfig(),
		Retry:               consumer.RetryPolicy{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Budget: 30 * time.Second},
		QuotaPerMinute:      -1,
		LeaseTTL:            4 * time.Second,
		DPSTryTimeout:       time.Second,
		ShutdownTimeout:     20 * time.Second,
		Logger:              slog.New(slog.NewJSONHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&o)
	}
	ready := make(chan Info, 1)
	userReady := o.OnReady
	o.OnReady = func(i Info) {
		if userReady != nil {
			userReady(i)
		}
		ready <- i
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		s.t.Fatalf("worker did not start: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		s.t.Fatal("worker not ready within 30s")
	}
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(40 * time.Second):
				err = fmt.Errorf("worker did not stop within 40s")
			}
		})
		return err
	}
	s.t.Cleanup(func() { _ = stop() })
	return stop
}

func (s *stack) publish(evs ...*event.Event) {
	s.t.Helper()
	ctx := context.Background()
	for _, ev := range evs {
		b, err := ev.Encode()
		if err != nil {
			s.t.Fatal(err)
		}
		if _, err := s.js.Publish(ctx, ev.StreamSubject(event.SubjectPrefix), b, jetstream.WithMsgID(ev.ID)); err != nil {
			s.t.Fatal(err)
		}
	}
}

func (s *stack) publishRaw(subject string, b []byte) {
	s.t.Helper()
	if _, err := s.js.Publish(context.Background(), subject, b); err != nil {
		s.t.Fatal(err)
	}
}

// settle waits until every partition consumer has delivered and seen acknowledged all.
func (s *stack) settle(timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	quiet := 0
	for {
		left, found := s.backlog()
		if found == 4 && left == 0 {
			quiet++
			if quiet == 3 {
				return
			}
		} else {
			quiet = 0
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("after %v: %d events not settled (%d of 4 consumers exist)", timeout, left, found)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *stack) backlog() (left uint64, found int) {
	ctx := context.Background()
	st, err := s.js.Stream(ctx, "DPS_EVENTS")
	if err != nil {
		return 1, 0
	}
	cfg := consumer.StreamConfig{Partitions: 4}
	for p := 0; p < 4; p++ {
		c, err := st.Consumer(ctx, cfg.ConsumerName(p))
		if err != nil {
			continue
		}
		ci, err := c.Info(ctx)
		if err != nil {
			continue
		}
		found++
		left += ci.NumPending + uint64(ci.NumAckPending)
	}
	return left, found
}

func (s *stack) letters() []dlq.Letter {
	s.t.Helper()
	ctx := context.Background()
	store, err := dlq.OpenStore(ctx, s.js, dlq.StoreOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	ls, err := store.List(ctx, dlq.Filter{})
	if err != nil {
		s.t.Fatal(err)
	}
	return ls
}

// enrollments returns DPS's enrollments by lower-cased id.
func (s *stack) enrollments() map[string]dps.IndividualEnrollment {
	s.t.Helper()
	out := map[string]dps.IndividualEnrollment{}
	pager := s.client.NewEnrollmentQueryPager(nil)
	for pager.More() {
		page, err := pager.NextPage(context.Background())
		if err != nil {
			s.t.Fatal(err)
		}
		for _, e := range page.Enrollments {
			out[strings.ToLower(e.RegistrationID)] = e
		}
	}
	return out
}

func symKey() *dps.AttestationMechanism {
	return &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{}}
}

// tagged is an enrollment whose initial twin tag "v" records which event wrote it.
func tagged(id string, v int) *dps.IndividualEnrollment {
	return &dps.IndividualEnrollment{
		RegistrationID: id,
		Attestation:    symKey(),
		InitialTwin:    &dps.InitialTwin{Tags: dps.TwinCollection{"v": json.RawMessage(fmt.Sprint(v))}},
	}
}

func tagOf(e dps.IndividualEnrollment) int {
	if e.InitialTwin == nil {
		return -1
	}
	var v int
	if err := json.Unmarshal(e.InitialTwin.Tags["v"], &v); err != nil {
		return -1
	}
	return v
}

func TestEveryOperationEndToEnd(t *testing.T) {
	s := newStack(t, emulator.Options{})
	s.worker(nil)
	ctx := context.Background()

	// Individual enrollment: create, update without etag, updateIfMatchETag, delete.
	s.publish(event.NewEnrollment(dps.BulkModeCreate, tagged("Dev.One:1", 1)))
	s.settle(20 * time.Second)
	got, err := s.client.GetEnrollment(ctx, "dev.one:1", nil)
	if err != nil {
		t.Fatalf("after create: %v", err)
	}
	if tagOf(got.IndividualEnrollment) != 1 {
		t.Fatalf("after create: tag %d, want 1", tagOf(got.IndividualEnrollment))
	}
	s.publish(event.NewEnrollment(dps.BulkModeUpdate, tagged("Dev.One:1", 2)))
	s.settle(20 * time.Second)
	got, err = s.client.GetEnrollment(ctx, "dev.one:1", nil)
	if err != nil || tagOf(got.IndividualEnrollment) != 2 {
		t.Fatalf("after update without etag: tag %d, err %v; want 2", tagOf(got.IndividualEnrollment), err)
	}
	ifm := tagged("Dev.One:1", 3)
	ifm.ETag = got.ETag
	s.publish(event.NewEnrollment(dps.BulkModeUpdateIfMatchETag, ifm))
	s.settle(20 * time.Second)
	got, err = s.client.GetEnrollment(ctx, "dev.one:1", nil)
	if err != nil || tagOf(got.IndividualEnrollment) != 3 {
		t.Fatalf("after updateIfMatchETag: tag %d, err %v; want 3", tagOf(got.IndividualEnrollment), err)
	}
	s.publish(event.NewEnrollment(dps.BulkModeDelete, &dps.IndividualEnrollment{RegistrationID: "DEV.ONE:1"}))
	s.settle(20 * time.Second)
	if _, err := s.client.GetEnrollment(ctx, "dev.one:1", nil); !dps.IsNotFound(err) {
		t.Fatalf("after delete: got %v, want not found", err)
	}

	// Enrollment group: create, update, delete.
	group := func(v int) *dps.EnrollmentGroup {
		return &dps.EnrollmentGroup{EnrollmentGroupID: "line-7", Attestation: symKey(),
			InitialTwin: &dps.InitialTwin{Tags: dps.TwinCollection{"v": json.RawMessage(fmt.Sprint(v))}}}
	}
	s.publish(event.NewGroup(dps.BulkModeCreate, group(1)))
	s.settle(20 * time.Second)
	if _, err := s.client.GetEnrollmentGroup(ctx, "line-7", nil); err != nil {
		t.Fatalf("group after create: %v", err)
	}
	s.publish(event.NewGroup(dps.BulkModeUpdate, group(2)))
	s.settle(20 * time.Second)
	g, err := s.client.GetEnrollmentGroup(ctx, "line-7", nil)
	if err != nil || string(g.InitialTwin.Tags["v"]) != "2" {
		t.Fatalf("group after update: %+v, %v; want tag 2", g.InitialTwin, err)
	}
	s.publish(event.NewGroup(dps.BulkModeDelete, &dps.EnrollmentGroup{EnrollmentGroupID: "line-7"}))
	s.settle(20 * time.Second)
	if _, err := s.client.GetEnrollmentGroup(ctx, "line-7", nil); !dps.IsNotFound(err) {
		t.Fatalf("group after delete: got %v, want not found", err)
	}
	if ls := s.letters(); len(ls) != 0 {
		t.Fatalf("dead letters: %+v, want none", ls)
	}
	assertNoSecrets(t, s)
}

// model applies each id's events in publish order.
type model map[string]int // lower-cased id → tag of the last applied write; absent = deleted

func TestOrderPerDeviceOver1000IDs(t *testing.T) {
	s := newStack(t, emulator.Options{})
	s.worker(nil)
	rng := rand.New(rand.NewPCG(7, 7))
	want := model{}
	exists := map[string]bool{}
	var evs []*event.Event
	for i := 1; i <= 5000; i++ {
		id := fmt.Sprintf("dev-%04d", rng.IntN(1000))
		switch r := rng.IntN(10); {
		case !exists[id] && r < 8:
			evs = append(evs, event.NewEnrollment(dps.BulkModeCreate, tagged(id, i)))
			exists[id], want[id] = true, i
		case !exists[id]:
			evs = append(evs, event.NewEnrollment(dps.BulkModeUpdate, tagged(id, i))) // update creates when absent
			exists[id], want[id] = true, i
		case r < 7:
			evs = append(evs, event.NewEnrollment(dps.BulkModeUpdate, tagged(id, i)))
			want[id] = i
		default:
			evs = append(evs, event.NewEnrollment(dps.BulkModeDelete, &dps.IndividualEnrollment{RegistrationID: id}))
			exists[id] = false
			delete(want, id)
		}
	}
	s.publish(evs...)
	s.settle(3 * time.Minute)
	got := s.enrollments()
	for id, v := range want {
		e, ok := got[id]
		if !ok {
			t.Fatalf("%s: absent on DPS, want tag %d", id, v)
		}
		if tagOf(e) != v {
			t.Fatalf("%s: tag %d on DPS, want %d (the last event)", id, tagOf(e), v)
		}
	}
	for id := range got {
		if _, ok := want[id]; !ok {
			t.Fatalf("%s: on DPS, want deleted", id)
		}
	}
	if ls := s.letters(); len(ls) != 0 {
		t.Fatalf("%d dead letters, want 0; first: %+v", len(ls), ls[0])
	}
}

func TestPartialBulkFailureDeadLettersOnlyFailingIDs(t *testing.T) {
	s := newStack(t, emulator.Options{})
	ctx := context.Background()
	// Two enrollments exist already: a create of them fails with 409201.
	for _, id := range []string{"exists-1", "exists-2"} {
		if _, err := s.client.CreateOrUpdateEnrollment(ctx, *tagged(id, 0), nil); err != nil {
			t.Fatal(err)
		}
	}
	s.worker(func(o *Options) { o.Batcher.Linger = 200 * time.Millisecond })
	var evs []*event.Event
	for i, id := range []string{"new-1", "exists-1", "new-2", "new-3", "exists-2", "new-4"} {
		evs = append(evs, event.NewEnrollment(dps.BulkModeCreate, tagged(id, i+1)))
	}
	s.publish(evs...)
	s.settle(20 * time.Second)
	ls := s.letters()
	var keys []string
	for _, l := range ls {
		keys = append(keys, l.Key)
		if l.Code != 409201 || l.Class != dlq.ClassPermanent {
			t.Errorf("letter %s: code %d class %s, want 409201 permanent", l.Key, l.Code, l.Class)
		}
	}
	sort.Strings(keys)
	if strings.Join(keys, ",") != "enrollment/exists-1,enrollment/exists-2" {
		t.Fatalf("dead-lettered %v, want exactly the two existing ids", keys)
	}
	got := s.enrollments()
	for _, id := range []string{"new-1", "new-2", "new-3", "new-4"} {
		if _, ok := got[id]; !ok {
			t.Errorf("%s: not applied", id)
		}
	}
	if tagOf(got["exists-1"]) != 0 {
		t.Errorf("exists-1 changed by a failed create")
	}
}

func TestUpdateWithoutETagConvergesAndStaleIfMatchIsDeadLettered(t *testing.T) {
	s := newStack(t, emulator.Options{})
	ctx := context.Background()
	created, err := s.client.CreateOrUpdateEnrollment(ctx, *tagged("erp-1", 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.client.CreateOrUpdateEnrollment(ctx, *tagged("erp-2", 1), nil); err != nil {
		t.Fatal(err)
	}
	s.worker(nil)
	stale := tagged("erp-2", 3)
	stale.ETag = created.ETag // another enrollment's etag: certainly stale
	s.publish(
		event.NewEnrollment(dps.BulkModeUpdate, tagged("erp-1", 2)),
		event.NewEnrollment(dps.BulkModeUpdateIfMatchETag, stale),
	)
	s.settle(20 * time.Second)
	got := s.enrollments()
	if tagOf(got["erp-1"]) != 2 {
		t.Errorf("erp-1: tag %d, want 2 (update without etag converges)", tagOf(got["erp-1"]))
	}
	if tagOf(got["erp-2"]) != 1 {
		t.Errorf("erp-2: tag %d, want 1 (stale updateIfMatchETag must not apply)", tagOf(got["erp-2"]))
	}
	ls := s.letters()
	if len(ls) != 1 || ls[0].Key != "enrollment/erp-2" || ls[0].Status != http.StatusPreconditionFailed || ls[0].Class != dlq.ClassPermanent {
		t.Fatalf("letters: %+v, want one permanent 412 for erp-2", ls)
	}
}

func TestWholeRequestRejectionDeadLettersOnlyTheBadItem(t *testing.T) {
	s := newStack(t, emulator.Options{Faults: emulator.Faults{BulkRejectIDs: []string{"poison"}}})
	s.worker(func(o *Options) { o.Batcher.Linger = 200 * time.Millisecond })
	var evs []*event.Event
	for i, id := range []string{"a", "b", "poison", "c", "d", "e", "f"} {
		evs = append(evs, event.NewEnrollment(dps.BulkModeCreate, tagged(id, i)))
	}
	s.publish(evs...)
	s.settle(20 * time.Second)
	ls := s.letters()
	if len(ls) != 1 || ls[0].Key != "enrollment/poison" || ls[0].Status != http.StatusBadRequest {
		t.Fatalf("letters: %+v, want one 400 letter for poison", ls)
	}
	if got := s.enrollments(); len(got) != 6 {
		t.Fatalf("%d enrollments applied, want the 6 good ones", len(got))
	}
}

func TestRestartMidStreamLosesNothing(t *testing.T) {
	s := newStack(t, emulator.Options{Faults: emulator.Faults{Latency: emulator.Duration(5 * time.Millisecond)}})
	var evs []*event.Event
	want := model{}
	for i := 1; i <= 1500; i++ {
		id := fmt.Sprintf("r-%03d", i%300)
		if _, ok := want[id]; !ok {
			evs = append(evs, event.NewEnrollment(dps.BulkModeCreate, tagged(id, i)))
		} else {
			evs = append(evs, event.NewEnrollment(dps.BulkModeUpdate, tagged(id, i)))
		}
		want[id] = i
	}
	// The stream exists before any worker: the backlog is there when the first one starts.
	if _, err := consumer.EnsureStream(context.Background(), s.js, consumer.StreamConfig{Partitions: 4}); err != nil {
		t.Fatal(err)
	}
	s.publish(evs...)
	stop := s.worker(nil)
	// Stop while work is in flight, then start a fresh worker on the same stream.
	for {
		left, _ := s.backlog()
		if left < 1200 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
	s.worker(nil)
	s.settle(2 * time.Minute)
	got := s.enrollments()
	for id, v := range want {
		if tagOf(got[id]) != v {
			t.Fatalf("%s: tag %d, want %d", id, tagOf(got[id]), v)
		}
	}
	if ls := s.letters(); len(ls) != 0 {
		t.Fatalf("%d dead letters, want 0: %+v", len(ls), ls[0])
	}
}

func TestInvalidExamplesAreDeadLetteredWithTheirReason(t *testing.T) {
	s := newStack(t, emulator.Options{})
	s.worker(nil)
	dir := filepath.Join("..", "..", "schemas", "examples", "invalid")
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no invalid examples in %s: %v", dir, err)
	}
	want := map[uint64]string{} // events-stream sequence → expected reason
	for i, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		exp, err := os.ReadFile(strings.TrimSuffix(f, ".json") + ".error.txt")
		if err != nil {
			t.Fatalf("%s: no expected error file: %v", f, err)
		}
		// Each on its own key, so none holds another.
		ack, err := s.js.Publish(context.Background(), fmt.Sprintf("dpsync.events.enrollment.invalid-%d", i), b)
		if err != nil {
			t.Fatal(err)
		}
		want[ack.Sequence] = strings.TrimSpace(string(exp))
	}
	s.settle(30 * time.Second)
	got := map[uint64]dlq.Letter{}
	for _, l := range s.letters() {
		got[l.OriginSeq] = l
	}
	for seq, reason := range want {
		l, ok := got[seq]
		if !ok {
			t.Errorf("event %d (%s) not dead-lettered", seq, reason)
			continue
		}
		if l.Class != dlq.ClassInvalid || l.Reason != reason {
			t.Errorf("event %d: class %s reason %q, want invalid %q", seq, l.Class, l.Reason, reason)
		}
	}
}

func assertNoSecrets(t *testing.T, s *stack) {
	t.Helper()
	logs := s.logs.String()
	cs := s.emu.ConnectionString()
	_, key, _ := strings.Cut(cs, "SharedAccessKey=")
	for _, secret := range []string{cs, key, "sig=", "SharedAccessSignature"} {
		if secret != "" && strings.Contains(logs, secret) {
			t.Fatalf("logs contain a secret (%.12s…)", secret)
		}
	}
	if len(logs) == 0 {
		t.Fatal("no logs captured: the check proves nothing")
	}
}

func setFaults(t *testing.T, s *stack, f emulator.Faults) {
	t.Helper()
	b, _ := json.Marshal(f)
	req, _ := http.NewRequest(http.MethodPut, s.emu.URL()+"/admin/faults", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	hc, _ := HTTPClient(s.emu.CAFile())
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("set faults: %s %s", resp.Status, body)
	}
}

type emuCounters struct {
	Throttled int `json:"throttled"`
}

func counters(t *testing.T, s *stack) emuCounters {
	t.Helper()
	hc, _ := HTTPClient(s.emu.CAFile())
	resp, err := hc.Get(s.emu.URL() + "/admin/counters")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c emuCounters
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		t.Fatal(err)
	}
	return c
}
