package dlq

import (
	"testing"
	"time"
)

// EnsureStream on an existing dead-letter stream applies a new max age and duplicate
// window in place (a max age of 0 removes the limit again), keeps the letters, and is
// idempotent. Zero fields take the defaults: no max age, a 10 min window.
func TestEnsureStreamUpdatesMaxAgeAndDuplicateWindowInPlace(t *testing.T) {
	e := newEnv(t) // created with the defaults
	if c := e.dlq.CachedInfo().Config; c.MaxAge != 0 || c.Duplicates != 10*time.Minute {
		t.Fatalf("defaults: max age %v, window %v; want 0 (keep letters) and 10m", c.MaxAge, c.Duplicates)
	}
	e.publish(t, letter("enrollment/dev-1", 7, "create", ClassPermanent, 409201, t0))
	for _, tt := range []struct {
		maxAge, window, wantWindow time.Duration
	}{
		{90 * 24 * time.Hour, 2 * time.Minute, 2 * time.Minute},
		{90 * 24 * time.Hour, 2 * time.Minute, 2 * time.Minute}, // the same again: no change
		{0, 30 * time.Minute, 30 * time.Minute},
		{0, 0, 10 * time.Minute},
	} {
		s, err := EnsureStream(e.ctx, e.js, StreamConfig{MemoryStorage: true, MaxAge: tt.maxAge, DuplicateWindow: tt.window})
		if err != nil {
			t.Fatalf("max age %v, window %v: %v", tt.maxAge, tt.window, err)
		}
		if c := s.CachedInfo().Config; c.MaxAge != tt.maxAge || c.Duplicates != tt.wantWindow {
			t.Errorf("max age %v, window %v: the stream has %v and %v; want %v and %v", tt.maxAge, tt.window, c.MaxAge, c.Duplicates, tt.maxAge, tt.wantWindow)
		}
		if n := msgCount(t, s); n != 1 {
			t.Errorf("max age %v, window %v: %d letters, want the 1 kept", tt.maxAge, tt.window, n)
		}
	}
}
