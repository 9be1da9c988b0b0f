package workload

import (
	"strings"
	"testing"
)

// ev builds a hand-made ledger event.
func ev(key string, seq int, op Op, poison Poison) Event {
	return Event{ID: "e" + string(rune('a'+seq)), RegistrationID: key, Key: key, Seq: seq, Op: op, Poison: poison}
}

func ledgerOf(events ...Event) *Ledger {
	l := NewLedger()
	for _, e := range events {
		l.Record(e)
	}
	return l
}

func TestExpect(t *testing.T) {
	tests := []struct {
		name      string
		events    []Event
		policy    HoldPolicy
		wantFinal State
		wantApp   int
		wantDL    int
	}{
		{"create update", []Event{ev("a", 0, OpCreate, ""), ev("a", 1, OpUpdate, "")}, Hold, State{true, 1}, 2, 0},
		{"create delete", []Event{ev("a", 0, OpCreate, ""), ev("a", 1, OpDelete, "")}, Hold, State{false, -1}, 2, 0},
		{"recreate", []Event{ev("a", 0, OpCreate, ""), ev("a", 1, OpDelete, ""), ev("a", 2, OpCreate, "")}, Hold, State{true, 2}, 3, 0},
		{"poison holds later events", []Event{ev("a", 0, OpCreate, ""), ev("a", 1, OpUpdateIfMatchETag, PoisonStaleETag), ev("a", 2, OpUpdate, ""), ev("a", 3, OpDelete, "")}, Hold, State{true, 0}, 1, 3},
		{"poison with continue", []Event{ev("a", 0, OpCreate, ""), ev("a", 1, OpUpdateIfMatchETag, PoisonStaleETag), ev("a", 2, OpUpdate, "")}, Continue, State{true, 2}, 2, 1},
		{"poison first", []Event{ev("a", 0, OpCreate, PoisonTPMWithoutKey), ev("a", 1, OpCreate, "")}, Hold, State{false, -1}, 0, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Expect(tt.events, tt.policy)
			if got.Final != tt.wantFinal || len(got.Applied) != tt.wantApp || len(got.DeadLettered) != tt.wantDL {
				t.Errorf("got final %+v, %d applied, %d dead-lettered; want %+v, %d, %d",
					got.Final, len(got.Applied), len(got.DeadLettered), tt.wantFinal, tt.wantApp, tt.wantDL)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	// Key a: create, update, delete, create → exists with seq 5.
	// Key b: create, poison, update (held) → exists with seq 1, two letters.
	// Key c: create, delete → absent.
	l := ledgerOf(
		ev("a", 0, OpCreate, ""), ev("b", 1, OpCreate, ""), ev("a", 2, OpUpdate, ""),
		ev("b", 3, OpUpdateIfMatchETag, PoisonStaleETag), ev("a", 4, OpDelete, ""), ev("a", 5, OpCreate, ""),
		ev("c", 6, OpCreate, ""), ev("b", 7, OpUpdate, ""), ev("c", 8, OpDelete, ""),
	)
	goodState := map[string]State{"a": {true, 5}, "b": {true, 1}}
	goodLetters := []DeadLetter{
		{StreamSeq: 1, EventID: "ed", Key: "b", Class: "permanent", Reason: "412 precondition failed"},
		{StreamSeq: 2, EventID: "eh", Key: "b", Class: "held", Reason: "held behind dead letter 1"},
	}
	tests := []struct {
		name    string
		state   map[string]State
		letters []DeadLetter
		want    Report // counts only
		wantIn  string // a problem must contain this
	}{
		{"all good", goodState, goodLetters, Report{Published: 9, Applied: 7, DeadLettered: 2}, ""},
		{
			"last update lost", map[string]State{"a": {true, 2}, "b": {true, 1}}, goodLetters,
			Report{Published: 9, Applied: 5, DeadLettered: 2, Lost: 2, MismatchedKeys: 1}, "key a: DPS has seq 2, model wants seq 5",
		},
		{
			"delete not applied", map[string]State{"a": {true, 5}, "b": {true, 1}, "c": {true, 6}}, goodLetters,
			Report{Published: 9, Applied: 6, DeadLettered: 2, Lost: 1, MismatchedKeys: 1}, "key c: DPS has seq 6, model wants no enrollment",
		},
		{
			"held event missing from dlq", goodState, goodLetters[:1],
			Report{Published: 9, Applied: 7, DeadLettered: 1, Lost: 1}, "event eh (seq 7, update, held behind",
		},
		{
			"unexpected letter", goodState, append(append([]DeadLetter(nil), goodLetters...), DeadLetter{StreamSeq: 3, EventID: "ea", Key: "a", Class: "transient", Reason: "retry budget exhausted"}),
			Report{Published: 9, Applied: 7, DeadLettered: 2, UnexpectedLetters: 1}, "dead-lettered but no failure was injected",
		},
		{
			"duplicate letter", goodState, append(append([]DeadLetter(nil), goodLetters...), DeadLetter{StreamSeq: 3, EventID: "ed", Key: "b", Class: "permanent", Reason: "412"}),
			Report{Published: 9, Applied: 7, DeadLettered: 2, DuplicateLetters: 1}, "dead-lettered 2 times",
		},
		{
			"foreign letter", goodState, append(append([]DeadLetter(nil), goodLetters...), DeadLetter{StreamSeq: 3, EventID: "zz", Reason: "x"}),
			Report{Published: 9, Applied: 7, DeadLettered: 2, ForeignLetters: 1}, `unknown event "zz"`,
		},
		{
			"letter without reason", goodState, []DeadLetter{goodLetters[0], {StreamSeq: 2, EventID: "eh", Key: "b", Class: "held"}},
			Report{Published: 9, Applied: 7, DeadLettered: 2}, "has no reason",
		},
		{
			"enrollment nobody asked for", map[string]State{"a": {true, 5}, "b": {true, 1}, "zz": {true, 0}}, goodLetters,
			Report{Published: 9, Applied: 7, DeadLettered: 2, MismatchedKeys: 1}, "no event was published for it",
		},
		{
			"applied out of order", map[string]State{"a": {true, 2}, "b": {true, 1}}, goodLetters,
			Report{Published: 9, Applied: 5, DeadLettered: 2, Lost: 2, MismatchedKeys: 1}, "missing or applied out of order",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Check(l, tt.state, tt.letters, Hold)
			counts := *got
			counts.Problems, counts.Truncated = nil, 0
			if counts.Published != tt.want.Published || counts.Applied != tt.want.Applied || counts.DeadLettered != tt.want.DeadLettered ||
				counts.Lost != tt.want.Lost || counts.MismatchedKeys != tt.want.MismatchedKeys || counts.UnexpectedLetters != tt.want.UnexpectedLetters ||
				counts.DuplicateLetters != tt.want.DuplicateLetters || counts.ForeignLetters != tt.want.ForeignLetters {
				t.Errorf("got counts\n%s\nwant\n%s", got, &tt.want)
			}
			if wantOK := tt.wantIn == ""; got.OK() != wantOK {
				t.Errorf("got OK() = %v, want %v\n%s", got.OK(), wantOK, got)
			}
			if tt.wantIn != "" && !strings.Contains(strings.Join(got.Problems, "\n"), tt.wantIn) {
				t.Errorf("got problems\n%s\nwant one containing %q", strings.Join(got.Problems, "\n"), tt.wantIn)
			}
		})
	}
}

func TestReportTable(t *testing.T) {
	r := &Report{Published: 10, Applied: 8, DeadLettered: 2}
	got := r.String()
	for _, want := range []string{"published", "applied", "dead-lettered", "lost", "10", "8", "2"} {
		if !strings.Contains(got, want) {
			t.Errorf("got table\n%s\nwant it to contain %q", got, want)
		}
	}
}
