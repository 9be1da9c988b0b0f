package workload

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestGenerateIsReproducible(t *testing.T) {
	cfg := Config{Seed: 42, IDs: 50, Events: 1000, PoisonIDs: 5}
	a, b := Generate(cfg), Generate(cfg)
	if len(a) != cfg.Events {
		t.Fatalf("got %d events, want %d", len(a), cfg.Events)
	}
	for i := range a {
		if a[i].ID != b[i].ID || !bytes.Equal(a[i].Body, b[i].Body) {
			t.Fatalf("event %d differs between two runs with one seed", i)
		}
	}
	c := Generate(Config{Seed: 43, IDs: 50, Events: 1000, PoisonIDs: 5})
	same := 0
	for i := range a {
		if bytes.Equal(a[i].Body[len(a[i].Body)/2:], c[i].Body[len(c[i].Body)/2:]) {
			same++
		}
	}
	if same == len(a) {
		t.Errorf("seeds 42 and 43 generated the same workload")
	}
}

// TestGenerateLifecycles checks that every non-poison event is valid for the state its id's
// earlier events leave, that lifecycles are varied, and that the requested poisons are there.
func TestGenerateLifecycles(t *testing.T) {
	cfg := Config{Seed: 7, IDs: 200, Events: 5000, PoisonIDs: 20}
	events := Generate(cfg)
	exists := map[string]bool{}
	ops := map[Op]int{}
	poisons := map[Poison]int{}
	poisonedKeys := map[string]bool{}
	recreated := 0
	deleted := map[string]bool{}
	for _, e := range events {
		if e.Key != strings.ToLower(e.RegistrationID) {
			t.Fatalf("event %s: got key %q, want lower-cased %q", e.ID, e.Key, e.RegistrationID)
		}
		ops[e.Op]++
		if e.Poison != PoisonNone {
			poisons[e.Poison]++
			if poisonedKeys[e.Key] {
				t.Errorf("key %s got a second poison event %s", e.Key, e.ID)
			}
			poisonedKeys[e.Key] = true
			continue
		}
		switch e.Op {
		case OpCreate:
			if exists[e.Key] {
				t.Errorf("event %s creates %s, which exists", e.ID, e.Key)
			}
			if deleted[e.Key] {
				recreated++
			}
		case OpDelete:
			if !exists[e.Key] {
				t.Errorf("event %s deletes %s, which is absent", e.ID, e.Key)
			}
			deleted[e.Key] = true
		}
		exists[e.Key] = e.Op != OpDelete
	}
	for _, op := range []Op{OpCreate, OpUpdate, OpDelete} {
		if ops[op] == 0 {
			t.Errorf("got no %s events in %d", op, len(events))
		}
	}
	if recreated == 0 {
		t.Errorf("got no id created again after a delete")
	}
	if got := len(poisonedKeys); got < cfg.PoisonIDs/2 || got > cfg.PoisonIDs {
		t.Errorf("got %d poisoned ids, want about %d", got, cfg.PoisonIDs)
	}
	if poisons[PoisonStaleETag] == 0 {
		t.Errorf("got no stale-etag poison (poisons %v)", poisons)
	}
}

func TestGenerateWireForm(t *testing.T) {
	events := Generate(Config{Seed: 1, IDs: 30, Events: 300, PoisonIDs: 30})
	sawDot, sawUpper := false, false
	for _, e := range events {
		if !strings.HasPrefix(e.Subject, SubjectPrefix) || strings.Count(e.Subject, ".") != 3 {
			t.Fatalf("event %s: subject %q is not dpsync.events.enrollment.<token>", e.ID, e.Subject)
		}
		sawDot = sawDot || strings.Contains(e.RegistrationID, ".")
		sawUpper = sawUpper || e.RegistrationID != e.Key
		var ce struct {
			SpecVersion string `json:"specversion"`
			ID          string `json:"id"`
			Type        string `json:"type"`
			Source      string `json:"source"`
			Data        struct {
				Operation  Op `json:"operation"`
				Enrollment struct {
					RegistrationID string `json:"registrationId"`
					ETag           string `json:"etag"`
					Attestation    struct {
						Type string `json:"type"`
					} `json:"attestation"`
					InitialTwin *struct {
						Tags struct {
							Seq int `json:"seq"`
						} `json:"tags"`
					} `json:"initialTwin"`
				} `json:"enrollment"`
			} `json:"data"`
		}
		if err := json.Unmarshal(e.Body, &ce); err != nil {
			t.Fatalf("event %s: %v", e.ID, err)
		}
		if ce.SpecVersion != "1.0" || ce.ID != e.ID || ce.Type != EventType || ce.Source == "" {
			t.Errorf("event %s: got envelope %+v", e.ID, ce)
		}
		if ce.Data.Operation != e.Op || ce.Data.Enrollment.RegistrationID != e.RegistrationID {
			t.Errorf("event %s: got data op %q id %q, want %q %q", e.ID, ce.Data.Operation, ce.Data.Enrollment.RegistrationID, e.Op, e.RegistrationID)
		}
		if e.Op != OpDelete && (ce.Data.Enrollment.InitialTwin == nil || ce.Data.Enrollment.InitialTwin.Tags.Seq != e.Seq) {
			t.Errorf("event %s: initialTwin.tags.seq does not carry seq %d", e.ID, e.Seq)
		}
		switch e.Poison {
		case PoisonStaleETag:
			if ce.Data.Enrollment.ETag == "" {
				t.Errorf("event %s: stale-etag poison without etag", e.ID)
			}
		case PoisonTPMWithoutKey:
			if ce.Data.Enrollment.Attestation.Type != "tpm" {
				t.Errorf("event %s: tpm poison with attestation %q", e.ID, ce.Data.Enrollment.Attestation.Type)
			}
		}
	}
	if !sawDot || !sawUpper {
		t.Errorf("got ids with '.': %v, with upper case: %v; want both", sawDot, sawUpper)
	}
}

func TestSubjectToken(t *testing.T) {
	tests := []struct{ id, want string }{
		{"dev-1", "dev-1"},
		{"Dev-1", "dev-1"},
		{"line.3:Dev-7", "line%2E3:dev-7"},
	}
	for _, tt := range tests {
		if got := SubjectToken(tt.id); got != tt.want {
			t.Errorf("SubjectToken(%q) = %q, want %q", tt.id, got, tt.want)
		}
	}
}
