package integration

import (
	"testing"
	"time"

	"github.com/dpsync/dpsync/integration/harness"
)

// TestStaleWrites checks the fencing check itself: it must flag a write sent for a
// partition another worker had taken over, and only that.
func TestStaleWrites(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	lw := &leaseWatch{recs: map[int][]leaseRecord{
		0: {{P: 0, Owner: "w1", Epoch: 3, At: at(0)}, {P: 0, Owner: "w1", Epoch: 3, At: at(500)}, {P: 0, Owner: "w2", Epoch: 9, At: at(1000)}},
		1: {{P: 1, Owner: "w2", Epoch: 4, At: at(0)}, {P: 1, Owner: "", At: at(300)}, {P: 1, Owner: "w1", Epoch: 12, At: at(400)}},
	}}
	partOf := map[string]int{"a": 0, "b": 1}
	w := func(tap string, ms int, ids ...string) harness.Write {
		return harness.Write{Tap: tap, At: at(ms), Method: "POST", Mode: "update", IDs: ids, Seqs: make([]int, len(ids)), Status: 200}
	}
	for _, tc := range []struct {
		name  string
		write harness.Write
		stale int
	}{
		{"owner writes", w("w1", 10, "a"), 0},
		{"owner writes after a renewal", w("w1", 999, "a"), 0},
		{"old owner writes after the takeover", w("w1", 1001, "a"), 1},
		{"new owner writes", w("w2", 1001, "a"), 0},
		{"new owner writes before it acquired", w("w2", 900, "a"), 1},
		{"write after a release", w("w2", 350, "b"), 1},
		{"bulk with one stale item", w("w1", 1500, "a", "b"), 1},
		{"before any lease", w("w1", -5, "a"), 1},
		{"unknown key", w("w1", 10, "zz"), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := staleWrites([]harness.Write{tc.write}, lw, partOf)
			if len(got) != tc.stale {
				t.Errorf("got %d stale writes %q, want %d", len(got), got, tc.stale)
			}
		})
	}
}

// TestLeaseWatchQueries checks the takeover and fair-share measurements on a known history.
func TestLeaseWatchQueries(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	lw := &leaseWatch{recs: map[int][]leaseRecord{
		0: {{P: 0, Owner: "dead", At: at(0)}, {P: 0, Owner: "w2", At: at(9000)}},
		1: {{P: 1, Owner: "dead", At: at(0)}, {P: 1, Owner: "w3", At: at(9500)}},
		2: {{P: 2, Owner: "w2", At: at(0)}, {P: 2, Owner: "", At: at(9600)}, {P: 2, Owner: "w3", At: at(9700)}},
		3: {{P: 3, Owner: "dead", At: at(0)}},
	}}
	if got := lw.ownedBy("dead", at(100), 4); len(got) != 3 {
		t.Errorf("got dead's partitions %v, want [0 1 3]", got)
	}
	d, all := lw.takenOver([]int{0, 1}, "dead", at(100))
	if !all || d[0] != 8900*time.Millisecond || d[1] != 9400*time.Millisecond {
		t.Errorf("got takeover %v (all %v), want p0 8.9s, p1 9.4s, all", d, all)
	}
	if _, all := lw.takenOver([]int{0, 3}, "dead", at(100)); all {
		t.Error("got every partition taken over, want p3 missing")
	}
	when, ok := lw.reachedShare("w3", 2, 4, at(100))
	if !ok || !when.Equal(at(9700)) {
		t.Errorf("got w3's share of 2 at %v (%v), want at 9.7s", when.Sub(t0), ok)
	}
	if _, ok := lw.reachedShare("w3", 3, 4, at(100)); ok {
		t.Error("got a share of 3 for w3, want never")
	}
}
