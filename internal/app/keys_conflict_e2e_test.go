package app

import (
	"context"
	"testing"
	"time"

	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/internal/emulator"
	"github.com/dpsync/dpsync/internal/event"
)

// TestCreateOfExistingIDWithOtherKeysIsNotSilentlyApplied: a create answered 409201 counts as
// applied when DPS already holds its content — but a GET returns no symmetric keys, so an
// enrollment that merely looks alike, with other keys, must not pass: the applier reads the
// keys (attestation mechanism) and dead-letters the create, or its devices could not register.
func TestCreateOfExistingIDWithOtherKeysIsNotSilentlyApplied(t *testing.T) {
	s := newStack(t, emulator.Options{})
	ctx := context.Background()
	if _, err := s.client.CreateOrUpdateEnrollment(ctx, *tagged("keyed-1", 1), nil); err != nil { // DPS generates keys
		t.Fatal(err)
	}
	s.worker(nil)
	supplied := secretKey(t, 32)
	e := tagged("keyed-1", 1) // same content but for the keys
	e.Attestation = &dps.AttestationMechanism{Type: dps.AttestationTypeSymmetricKey,
		SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: supplied, SecondaryKey: secretKey(t, 32)}}
	s.publish(event.NewEnrollment(dps.BulkModeCreate, e))
	s.settle(20 * time.Second)
	att, err := s.client.GetEnrollmentAttestationMechanism(ctx, "keyed-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	held := att.SymmetricKey.PrimaryKey == supplied
	letters := len(s.letters())
	if !held && letters == 0 {
		t.Fatalf("the create was counted as applied (no dead letter) but DPS holds other keys than the event's")
	}
}
