package applier

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/dpsync/dpsync/internal/dps"
)

// fakeDPS is an in-memory DPS with the semantics the applier relies on (the real wire
// behaviour is covered against the emulator in internal/app). It records every call.
type fakeDPS struct {
	mu      sync.Mutex
	store   map[string]string // lower id → etag
	content map[string]string // lower id → device id (the "content")
	calls   []string
	poison  string // a bulk holding this id is rejected whole with 400
	failAll error  // every call fails with this
	// getErr makes every GET fail with it.
	getErr error
	// keys holds the primary symmetric key of each id (lower id → key) as written.
	keys map[string]string
	// bulkUpdateAbsent404 makes a bulk update of an absent id fail with 404201 instead of
	// creating it (DPS.md leaves the real answer unconfirmed).
	bulkUpdateAbsent404 bool
	n                   int
}

func newFake() *fakeDPS {
	return &fakeDPS{store: map[string]string{}, content: map[string]string{}, keys: map[string]string{}}
}

// keyOf is the primary symmetric key an item supplies, or a generated one.
func (f *fakeDPS) keyOf(it Item) string {
	if a := it.Enrollment.Attestation; a != nil && a.SymmetricKey != nil && a.SymmetricKey.PrimaryKey != "" {
		return a.SymmetricKey.PrimaryKey
	}
	return "generated-" + f.etag()
}

func (f *fakeDPS) Attestation(_ context.Context, it Item) (*dps.AttestationMechanism, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "attestation("+it.ID()+")")
	id := strings.ToLower(it.ID())
	if _, ok := f.store[id]; !ok {
		return nil, respErr(http.StatusNotFound, 404201)
	}
	return &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: f.keys[id]}}, nil
}

func respErr(status, code int) error {
	return &azcore.ResponseError{StatusCode: status, ErrorCode: fmt.Sprint(code)}
}

func (f *fakeDPS) etag() string { f.n++; return fmt.Sprintf("etag-%d", f.n) }

func (f *fakeDPS) Bulk(_ context.Context, kind Kind, mode dps.BulkMode, items []Item) ([]ItemError, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for _, it := range items {
		ids = append(ids, it.ID())
	}
	f.calls = append(f.calls, fmt.Sprintf("bulk-%s[%s]", mode, strings.Join(ids, ",")))
	if f.failAll != nil {
		return nil, f.failAll
	}
	for _, id := range ids {
		if f.poison != "" && strings.EqualFold(id, f.poison) {
			return nil, respErr(http.StatusBadRequest, 400001)
		}
	}
	var errs []ItemError
	for _, it := range items {
		id := strings.ToLower(it.ID())
		etag, exists := f.store[id]
		switch mode {
		case dps.BulkModeCreate:
			if exists {
				errs = append(errs, ItemError{ID: it.ID(), Code: 409201, Status: "Enrollment already exists."})
				continue
			}
		case dps.BulkModeUpdate:
			if exists && it.ETag() != etag {
				errs = append(errs, ItemError{ID: it.ID(), Code: 409201, Status: "Enrollment already exists."})
				continue
			}
			if !exists && f.bulkUpdateAbsent404 {
				errs = append(errs, ItemError{ID: it.ID(), Code: 404201, Status: "Enrollment not found."})
				continue
			}
		case dps.BulkModeUpdateIfMatchETag:
			if !exists || it.ETag() != etag {
				errs = append(errs, ItemError{ID: it.ID(), Code: 412001, Status: "Precondition failed."})
				continue
			}
		case dps.BulkModeDelete:
			if !exists {
				errs = append(errs, ItemError{ID: it.ID(), Code: 404201, Status: "Enrollment not found."})
				continue
			}
			delete(f.store, id)
			delete(f.content, id)
			continue
		}
		f.store[id] = f.etag()
		f.content[id] = it.Enrollment.DeviceID
		f.keys[id] = f.keyOf(it)
	}
	return errs, nil
}

func (f *fakeDPS) Put(_ context.Context, it Item, ifMatch string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("put(%s,%q)", it.ID(), ifMatch))
	if f.failAll != nil {
		return "", f.failAll
	}
	id := strings.ToLower(it.ID())
	etag, exists := f.store[id]
	switch {
	case ifMatch == "" && exists:
		return "", respErr(http.StatusConflict, 409201)
	case ifMatch != "" && !exists:
		return "", respErr(http.StatusNotFound, 404201)
	case ifMatch != "" && ifMatch != "*" && ifMatch != etag:
		return "", respErr(http.StatusPreconditionFailed, 412001)
	}
	f.store[id] = f.etag()
	f.content[id] = it.Enrollment.DeviceID
	f.keys[id] = f.keyOf(it)
	return f.store[id], nil
}

func (f *fakeDPS) Get(_ context.Context, it Item) (Item, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "get("+it.ID()+")")
	if f.getErr != nil {
		return Item{}, f.getErr
	}
	id := strings.ToLower(it.ID())
	if _, ok := f.store[id]; !ok {
		return Item{}, respErr(http.StatusNotFound, 404201)
	}
	return Item{Kind: KindEnrollment, Enrollment: &dps.IndividualEnrollment{RegistrationID: it.ID(), DeviceID: f.content[id],
		Attestation: &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey}, ETag: f.store[id]}}, nil
}

func (f *fakeDPS) callLog() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, " ")
}

func item(op dps.BulkMode, id, content string) Item {
	return Item{Kind: KindEnrollment, Op: op, Enrollment: &dps.IndividualEnrollment{RegistrationID: id, DeviceID: content,
		Attestation: &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey}}}
}

func classes(outs []Outcome) string {
	var s []string
	for _, o := range outs {
		s = append(s, o.Class.String())
	}
	return strings.Join(s, ",")
}

func TestApply(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name      string
		setup     func(f *fakeDPS, a *Applier)
		items     []Item
		want      string // outcome classes
		wantCalls string
	}{
		{
			name:      "creates go out as one bulk call",
			items:     []Item{item(dps.BulkModeCreate, "a", "1"), item(dps.BulkModeCreate, "b", "1")},
			want:      "applied,applied",
			wantCalls: "bulk-create[a,b]",
		},
		{
			name:      "a create of an id holding other content is permanent (one GET to tell)",
			setup:     func(f *fakeDPS, _ *Applier) { f.store["a"] = "e0" },
			items:     []Item{item(dps.BulkModeCreate, "a", "1"), item(dps.BulkModeCreate, "b", "1")},
			want:      "permanent,applied",
			wantCalls: "bulk-create[a,b] get(a)",
		},
		{
			name: "a create answered 409201 finding its own content counts as applied (a lost answer: applied, then 503, retried)",
			setup: func(f *fakeDPS, _ *Applier) {
				f.store["a"], f.content["a"] = "e0", "1"
			},
			items:     []Item{item(dps.BulkModeCreate, "a", "1")},
			want:      "applied",
			wantCalls: "bulk-create[a] get(a)",
		},
		{
			name: "a redelivered create finding its own content counts as applied (one GET)",
			setup: func(f *fakeDPS, _ *Applier) {
				f.store["a"], f.content["a"] = "e0", "1"
			},
			items:     []Item{{Kind: KindEnrollment, Op: dps.BulkModeCreate, Redelivered: true, Enrollment: item(dps.BulkModeCreate, "A", "1").Enrollment}},
			want:      "applied",
			wantCalls: "bulk-create[A] get(A)",
		},
		{
			name: "a redelivered create finding other content is permanent",
			setup: func(f *fakeDPS, _ *Applier) {
				f.store["a"], f.content["a"] = "e0", "other"
			},
			items:     []Item{{Kind: KindEnrollment, Op: dps.BulkModeCreate, Redelivered: true, Enrollment: item(dps.BulkModeCreate, "a", "1").Enrollment}},
			want:      "permanent",
			wantCalls: "bulk-create[a] get(a)",
		},
		{
			name: "a redelivered create finding the content of its next update counts as applied (merged by the previous owner)",
			setup: func(f *fakeDPS, _ *Applier) {
				f.store["a"], f.content["a"] = "e0", "2"
			},
			items: []Item{{Kind: KindEnrollment, Op: dps.BulkModeCreate, Redelivered: true, Enrollment: item(dps.BulkModeCreate, "a", "1").Enrollment,
				Later: func(context.Context) (Successors, error) {
					return Successors{After: []Item{item(dps.BulkModeUpdate, "a", "3"), item(dps.BulkModeUpdate, "a", "2")}}, nil
				}}},
			want:      "applied",
			wantCalls: "bulk-create[a] get(a)",
		},
		{
			name: "a redelivered create finding the content of an update settled between it and its folded events finishes with an upsert",
			setup: func(f *fakeDPS, _ *Applier) {
				// A previous owner applied the create with update 2 folded into it and settled
				// update 2 only; the create came back with the newer updates 3 and 4.
				f.store["a"], f.content["a"] = "e0", "2"
			},
			items: []Item{{Kind: KindEnrollment, Op: dps.BulkModeCreate, Redelivered: true, Enrollment: item(dps.BulkModeCreate, "a", "4").Enrollment,
				Prior: []Item{item(dps.BulkModeCreate, "a", "1"), item(dps.BulkModeUpdate, "a", "3")},
				Later: func(context.Context) (Successors, error) {
					return Successors{Between: []Item{item(dps.BulkModeUpdate, "a", "2")}, After: []Item{item(dps.BulkModeUpdate, "a", "5")}}, nil
				}}},
			want:      "applied",
			wantCalls: `bulk-create[a] get(a) put(a,"*")`,
		},
		{
			name: "a redelivered create finding content that is neither its own, a prior, a settled nor a later update's is permanent",
			setup: func(f *fakeDPS, _ *Applier) {
				f.store["a"], f.content["a"] = "e0", "other"
			},
			items: []Item{{Kind: KindEnrollment, Op: dps.BulkModeCreate, Redelivered: true, Enrollment: item(dps.BulkModeCreate, "a", "4").Enrollment,
				Prior: []Item{item(dps.BulkModeCreate, "a", "1"), item(dps.BulkModeUpdate, "a", "3")},
				Later: func(context.Context) (Successors, error) {
					return Successors{Between: []Item{item(dps.BulkModeUpdate, "a", "2")}, After: []Item{item(dps.BulkModeUpdate, "a", "5")}}, nil
				}}},
			want:      "permanent",
			wantCalls: "bulk-create[a] get(a)",
		},
		{
			name: "a redelivered create whose next updates do not match either is permanent",
			setup: func(f *fakeDPS, _ *Applier) {
				f.store["a"], f.content["a"] = "e0", "other"
			},
			items: []Item{{Kind: KindEnrollment, Op: dps.BulkModeCreate, Redelivered: true, Enrollment: item(dps.BulkModeCreate, "a", "1").Enrollment,
				Later: func(context.Context) (Successors, error) {
					return Successors{After: []Item{item(dps.BulkModeUpdate, "a", "2")}}, nil
				}}},
			want:      "permanent",
			wantCalls: "bulk-create[a] get(a)",
		},
		{
			name: "a redelivered create whose next events cannot be read is transient (tried again later)",
			setup: func(f *fakeDPS, _ *Applier) {
				f.store["a"], f.content["a"] = "e0", "2"
			},
			items: []Item{{Kind: KindEnrollment, Op: dps.BulkModeCreate, Redelivered: true, Enrollment: item(dps.BulkModeCreate, "a", "1").Enrollment,
				Later: func(context.Context) (Successors, error) { return Successors{}, errors.New("stream unavailable") }}},
			want:      "transient",
			wantCalls: "bulk-create[a] get(a)",
		},
		{
			name: "an update of an id we deleted rides in a bulk update without etag (it creates it)",
			setup: func(f *fakeDPS, a *Applier) {
				f.store["a"], f.store["b"] = "e0", "e0"
				a.Apply(ctx, []Item{item(dps.BulkModeDelete, "a", ""), item(dps.BulkModeDelete, "b", "")})
				f.calls = nil
			},
			items:     []Item{item(dps.BulkModeUpdate, "a", "2"), item(dps.BulkModeUpdate, "b", "2")},
			want:      "applied,applied",
			wantCalls: "bulk-update[a,b]",
		},
		{
			name: "an update of an id we deleted falls back to a plain PUT when DPS does not create in a bulk update",
			setup: func(f *fakeDPS, a *Applier) {
				f.store["a"] = "e0"
				f.bulkUpdateAbsent404 = true
				a.Apply(ctx, []Item{item(dps.BulkModeDelete, "a", "")})
				f.calls = nil
			},
			items:     []Item{item(dps.BulkModeUpdate, "a", "2")},
			want:      "applied",
			wantCalls: `bulk-update[a] put(a,"")`,
		},
		{
			name: "an update of an id we created in bulk is one PUT If-Match * (no etag known)",
			setup: func(f *fakeDPS, a *Applier) {
				a.Apply(ctx, []Item{item(dps.BulkModeCreate, "a", "1")})
				f.calls = nil
			},
			items:     []Item{item(dps.BulkModeUpdate, "a", "2")},
			want:      "applied",
			wantCalls: `put(a,"*")`,
		},
		{
			name: "an id we believed absent but exists answers 409201 in the bulk update, then PUT If-Match *",
			setup: func(f *fakeDPS, a *Applier) {
				f.store["a"] = "e0"
				a.Apply(ctx, []Item{item(dps.BulkModeDelete, "a", "")})
				f.store["a"] = "e9" // recreated by someone else
				f.calls = nil
			},
			items:     []Item{item(dps.BulkModeUpdate, "a", "2")},
			want:      "applied",
			wantCalls: `bulk-update[a] put(a,"*")`,
		},
		{
			name: "a create that events were folded into, finding the create alone applied, finishes with an upsert",
			setup: func(f *fakeDPS, _ *Applier) {
				f.store["a"], f.content["a"] = "e0", "1" // an earlier attempt applied the create alone
			},
			items: []Item{{Kind: KindEnrollment, Op: dps.BulkModeCreate, Redelivered: true, Enrollment: item(dps.BulkModeCreate, "a", "3").Enrollment,
				Prior: []Item{item(dps.BulkModeCreate, "a", "1"), item(dps.BulkModeUpdate, "a", "2")}}},
			want:      "applied",
			wantCalls: `bulk-create[a] get(a) put(a,"*")`,
		},
		{
			name: "a create answered 409201 whose GET fails is transient: whether the write was ours is unknown",
			setup: func(f *fakeDPS, _ *Applier) {
				f.store["a"], f.content["a"] = "e0", "1"
				f.getErr = errors.New("connection reset by peer")
			},
			items:     []Item{item(dps.BulkModeCreate, "a", "1")},
			want:      "transient",
			wantCalls: "bulk-create[a] get(a)",
		},
		{
			name: "a create answered 409201 finding its content but other supplied keys is permanent (someone else's enrollment)",
			setup: func(f *fakeDPS, _ *Applier) {
				f.store["a"], f.content["a"], f.keys["a"] = "e0", "1", "b3RoZXIga2V5IG9mIDMyIGJ5dGVzIC4uLi4uLi4uLi4="
			},
			items:     []Item{withKey(item(dps.BulkModeCreate, "a", "1"), "bXkga2V5IG9mIDMyIGJ5dGVzIC4uLi4uLi4uLi4uLi4=")},
			want:      "permanent",
			wantCalls: "bulk-create[a] get(a) attestation(a)",
		},
		{
			name: "a create answered 409201 finding its content and its supplied keys counts as applied",
			setup: func(f *fakeDPS, _ *Applier) {
				f.store["a"], f.content["a"], f.keys["a"] = "e0", "1", "bXkga2V5IG9mIDMyIGJ5dGVzIC4uLi4uLi4uLi4uLi4="
			},
			items:     []Item{withKey(item(dps.BulkModeCreate, "a", "1"), "bXkga2V5IG9mIDMyIGJ5dGVzIC4uLi4uLi4uLi4uLi4=")},
			want:      "applied",
			wantCalls: "bulk-create[a] get(a) attestation(a)",
		},
		{
			name:      "an update without a known etag is one PUT If-Match *",
			setup:     func(f *fakeDPS, _ *Applier) { f.store["a"] = "e0" },
			items:     []Item{item(dps.BulkModeUpdate, "a", "2")},
			want:      "applied",
			wantCalls: `put(a,"*")`,
		},
		{
			name:      "an update of an absent id falls back to a plain PUT",
			items:     []Item{item(dps.BulkModeUpdate, "a", "2")},
			want:      "applied",
			wantCalls: `put(a,"*") put(a,"")`,
		},
		{
			name: "an update with an etag learned from our PUT rides in a bulk call",
			setup: func(f *fakeDPS, a *Applier) {
				a.Apply(ctx, []Item{item(dps.BulkModeUpdate, "a", "1"), item(dps.BulkModeUpdate, "b", "1")})
				f.calls = nil
			},
			items:     []Item{item(dps.BulkModeUpdate, "a", "2"), item(dps.BulkModeUpdate, "b", "2")},
			want:      "applied,applied",
			wantCalls: "bulk-update[a,b]",
		},
		{
			name: "a stale learned etag costs one failed item and the PUT fallback",
			setup: func(f *fakeDPS, a *Applier) {
				a.Apply(ctx, []Item{item(dps.BulkModeUpdate, "a", "1")})
				f.store["a"] = "changed-elsewhere"
				f.calls = nil
			},
			items:     []Item{item(dps.BulkModeUpdate, "a", "2")},
			want:      "applied",
			wantCalls: `bulk-update[a] put(a,"*")`,
		},
		{
			name:      "updateIfMatchETag with a stale etag is permanent 412 (one GET to tell)",
			setup:     func(f *fakeDPS, _ *Applier) { f.store["a"] = "e0" },
			items:     []Item{item(dps.BulkModeUpdateIfMatchETag, "a", "2").withETag("old")},
			want:      "permanent",
			wantCalls: "bulk-updateIfMatchETag[a] get(a)",
		},
		{
			name:      "delete of an absent id is applied",
			setup:     func(f *fakeDPS, _ *Applier) { f.store["b"] = "e0" },
			items:     []Item{item(dps.BulkModeDelete, "a", ""), item(dps.BulkModeDelete, "b", "")},
			want:      "applied,applied",
			wantCalls: "bulk-delete[a,b]",
		},
		{
			name:  "a whole-request 400 splits until the bad item stands alone",
			setup: func(f *fakeDPS, _ *Applier) { f.poison = "c" },
			items: []Item{item(dps.BulkModeCreate, "a", "1"), item(dps.BulkModeCreate, "b", "1"), item(dps.BulkModeCreate, "c", "1"),
				item(dps.BulkModeCreate, "d", "1"), item(dps.BulkModeCreate, "e", "1")},
			want:      "applied,applied,permanent,applied,applied",
			wantCalls: "bulk-create[a,b,c,d,e] bulk-create[a,b] bulk-create[c,d,e] bulk-create[c] bulk-create[d,e]",
		},
		{
			name:      "a 503 for the whole call is transient for every item",
			setup:     func(f *fakeDPS, _ *Applier) { f.failAll = respErr(http.StatusServiceUnavailable, 503001) },
			items:     []Item{item(dps.BulkModeCreate, "a", "1"), item(dps.BulkModeCreate, "b", "1")},
			want:      "transient,transient",
			wantCalls: "bulk-create[a,b]",
		},
		{
			name:      "a connection error is transient",
			setup:     func(f *fakeDPS, _ *Applier) { f.failAll = errors.New("connection reset by peer") },
			items:     []Item{item(dps.BulkModeDelete, "a", "")},
			want:      "transient",
			wantCalls: "bulk-delete[a]",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake()
			a, err := New(f, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if tt.setup != nil {
				tt.setup(f, a)
			}
			outs := a.Apply(ctx, tt.items)
			if got := classes(outs); got != tt.want {
				t.Errorf("outcomes: got %s, want %s (%+v)", got, tt.want, outs)
			}
			if got := f.callLog(); got != tt.wantCalls {
				t.Errorf("calls: got %s, want %s", got, tt.wantCalls)
			}
		})
	}
}

// TestCredentialFailuresAreTransient: a whole call refused for the worker's credentials
// must not dead-letter the events as if they were at fault.
func TestCredentialFailuresAreTransient(t *testing.T) {
	for _, status := range []int{http.StatusUnauthorized, http.StatusForbidden} {
		f := newFake()
		f.failAll = respErr(status, status*1000)
		a, err := New(f, Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range []Item{item(dps.BulkModeCreate, "a", "1"), item(dps.BulkModeUpdate, "b", "1")} {
			out := a.Apply(context.Background(), []Item{it})
			if out[0].Class != Transient || out[0].Status != status || !strings.Contains(out[0].Reason, "credentials") {
				t.Errorf("%s with %d: got %v %d %q, want transient naming the credentials", it.Op, status, out[0].Class, out[0].Status, out[0].Reason)
			}
		}
	}
}

// TestUnknownUpdatesAdapt: updates of ids the applier knows nothing about start as PUT
// If-Match: * (ERP updates of existing devices: 1 operation each). When such ids keep
// turning out absent (2 operations each that way), they move to the bulk update, where an
// absent id costs a tenth of an operation; when they exist again, back to PUT.
func TestUnknownUpdatesAdapt(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	a, err := New(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	batch := func(prefix string, n int) []Item {
		var items []Item
		for i := range n {
			items = append(items, item(dps.BulkModeUpdate, fmt.Sprintf("%s-%d", prefix, i), "1"))
		}
		return items
	}
	// Absent ids: the first cost PUT + PUT, then the applier switches to bulk.
	for round := range 5 {
		f.calls = nil
		if got := classes(a.Apply(ctx, batch(fmt.Sprintf("new%d", round), 10))); got != strings.Repeat("applied,", 9)+"applied" {
			t.Fatalf("round %d: %s", round, got)
		}
	}
	if got := f.callLog(); !strings.HasPrefix(got, "bulk-update[") || strings.Contains(got, "put(") {
		t.Fatalf("after absent ids kept coming: calls %s, want one bulk update", got)
	}
	// Existing ids (created by someone else): the bulk update fails 409201 for each and the
	// applier switches back to PUT If-Match: *.
	for round := range 30 {
		items := batch(fmt.Sprintf("old%d", round), 10)
		for _, it := range items {
			f.store[strings.ToLower(it.ID())] = "e0"
		}
		f.calls = nil
		a.Apply(ctx, items)
	}
	if got := f.callLog(); strings.Contains(got, "bulk-update[") {
		t.Fatalf("after existing ids kept coming: calls %s, want PUTs only", got)
	}
}

func TestApplyOutcomeCarriesCodeAndStatus(t *testing.T) {
	f := newFake()
	f.store["a"] = "e0"
	a, _ := New(f, Options{})
	outs := a.Apply(context.Background(), []Item{item(dps.BulkModeUpdateIfMatchETag, "a", "2").withETag("stale")})
	if outs[0].Code != 412001 || outs[0].Status != http.StatusPreconditionFailed || outs[0].Reason == "" {
		t.Fatalf("outcome %+v, want code 412001, status 412 and a reason", outs[0])
	}
}

func TestBeforeCallPacesEveryOperation(t *testing.T) {
	f := newFake()
	var ops []string
	a, _ := New(f, Options{BeforeCall: func(_ context.Context, op string) error { ops = append(ops, op); return nil }})
	a.Apply(context.Background(), []Item{item(dps.BulkModeUpdate, "a", "1")})
	if got := strings.Join(ops, ","); got != "put,put" {
		t.Fatalf("paced operations: %s, want put,put (If-Match * then create)", got)
	}
	stop := errors.New("fenced")
	a, _ = New(f, Options{BeforeCall: func(context.Context, string) error { return stop }})
	outs := a.Apply(context.Background(), []Item{item(dps.BulkModeCreate, "z", "1")})
	if outs[0].Class != Transient || !errors.Is(outs[0].Err, stop) {
		t.Fatalf("outcome when BeforeCall refuses: %+v, want transient with its error", outs[0])
	}
}

func TestSameContentIgnoresServerFieldsAndCase(t *testing.T) {
	want := item(dps.BulkModeCreate, "Dev-1", "")
	got := Item{Kind: KindEnrollment, Enrollment: &dps.IndividualEnrollment{RegistrationID: "dev-1", DeviceID: "dev-1", ETag: "x",
		Attestation:       &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey},
		RegistrationState: &dps.DeviceRegistrationState{Status: dps.EnrollmentStatusUnassigned}}}
	if !SameContent(want, got) {
		t.Fatal("same content with server fields: got different")
	}
	got.Enrollment.IotHubHostName = "hub"
	if SameContent(want, got) {
		t.Fatal("different hub: got same")
	}
}

// barrierDPS answers PUTs only once n of them are in flight at the same time.
type barrierDPS struct {
	*fakeDPS
	n       int
	mu      sync.Mutex
	waiting int
	release chan struct{}
}

func (b *barrierDPS) Put(ctx context.Context, it Item, ifMatch string) (string, error) {
	b.mu.Lock()
	b.waiting++
	if b.waiting == b.n {
		close(b.release)
	}
	b.mu.Unlock()
	select {
	case <-b.release:
	case <-time.After(5 * time.Second):
		return "", errors.New("PUTs of one batch were not sent together")
	}
	return b.fakeDPS.Put(ctx, it, ifMatch)
}

// TestPutsOfABatchAreConcurrent: the updates of one batch that need a PUT go out together;
// one after another, a batch of ten would take ten round trips.
func TestPutsOfABatchAreConcurrent(t *testing.T) {
	f := newFake()
	b := &barrierDPS{fakeDPS: f, n: 3, release: make(chan struct{})}
	for _, id := range []string{"a", "b", "c"} {
		f.store[id] = "e0"
	}
	a, err := New(b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	out := a.Apply(context.Background(), []Item{item(dps.BulkModeUpdate, "a", "2"), item(dps.BulkModeUpdate, "b", "2"), item(dps.BulkModeUpdate, "c", "2")})
	if got := classes(out); got != "applied,applied,applied" {
		t.Fatalf("got %s (%v), want applied,applied,applied", got, out)
	}
}

// withKey returns it supplying primaryKey as its symmetric key.
func withKey(it Item, primaryKey string) Item {
	e := *it.Enrollment
	e.Attestation = &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: primaryKey}}
	it.Enrollment = &e
	return it
}

// TestClass: an update goes in a call of its own exactly when the applier would PUT it.
func TestClass(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	a, err := New(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.store["put"], f.store["del"] = "e0", "e0"
	a.Apply(ctx, []Item{item(dps.BulkModeUpdate, "put", "1")})  // PUT: etag learned
	a.Apply(ctx, []Item{item(dps.BulkModeCreate, "made", "1")}) // bulk create: exists, etag unknown
	a.Apply(ctx, []Item{item(dps.BulkModeDelete, "del", "")})   // bulk delete: absent
	for _, tc := range []struct {
		it   Item
		want int
	}{
		{item(dps.BulkModeCreate, "new", "1"), ClassBulk},
		{item(dps.BulkModeUpdate, "put", "2"), ClassBulk},    // etag known
		{item(dps.BulkModeUpdate, "made", "2"), ClassPut},    // exists, etag unknown
		{item(dps.BulkModeUpdate, "del", "2"), ClassBulk},    // absent: the bulk update creates it
		{item(dps.BulkModeUpdate, "unknown", "2"), ClassPut}, // unknown ids usually exist (the prior)
	} {
		if got := a.Class(tc.it); got != tc.want {
			t.Errorf("Class(%s %s) = %d, want %d", tc.it.Op, tc.it.ID(), got, tc.want)
		}
	}
}
