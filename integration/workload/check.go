package workload

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// HoldPolicy is what the worker does with later events of a key after one was
// dead-lettered (internal/consumer's hold policy).
type HoldPolicy int

const (
	// Hold: later events of the key follow its dead letter into the DLQ (the default).
	Hold HoldPolicy = iota
	// Continue: later events of the key are applied as if the dead-lettered one was not there.
	Continue
)

// State is what DPS holds for one key: whether the enrollment exists and, if so, the Seq
// of the event whose content it carries (initialTwin.tags.seq; -1 if absent or unreadable).
type State struct {
	Exists bool
	Seq    int
}

// DeadLetter is one message of the dead-letter stream.
type DeadLetter struct {
	// StreamSeq is the letter's sequence in DPS_DLQ.
	StreamSeq uint64
	EventID   string
	Key       string
	Class     string
	Reason    string
	// Worker, OriginSeq and Position are diagnostics (Dpsync-Worker, Dpsync-Origin-Seq,
	// Dpsync-Position).
	Worker    string
	OriginSeq string
	Position  string
}

// Expectation is the model's verdict for one key.
type Expectation struct {
	// Final is the state DPS must end in.
	Final State
	// Applied are the events whose effect the final state includes, in order; DeadLettered
	// those that must be in the DLQ.
	Applied      []Event
	DeadLettered []Event
}

// Expect computes the model for one key's confirmed events: apply them in publish order;
// a poison event is dead-lettered, and with Hold every later event of the key follows it.
func Expect(events []Event, policy HoldPolicy) Expectation {
	ex := Expectation{Final: State{Seq: -1}}
	held := false
	for _, ev := range events {
		if held || ev.Poison != PoisonNone {
			ex.DeadLettered = append(ex.DeadLettered, ev)
			held = held || policy == Hold
			continue
		}
		ex.Applied = append(ex.Applied, ev)
		if ev.Op == OpDelete {
			ex.Final = State{Seq: -1}
		} else {
			ex.Final = State{Exists: true, Seq: ev.Seq}
		}
	}
	return ex
}

// Report is the checker's verdict on a run.
type Report struct {
	Published    int
	Applied      int
	DeadLettered int
	// Lost counts events neither applied nor dead-lettered: expected letters that are
	// missing, and, for a key whose final state is wrong, the events after the last one its
	// state reflects. It must be 0.
	Lost int
	// MismatchedKeys are keys whose final DPS state differs from the model.
	MismatchedKeys int
	// UnexpectedLetters are letters of events the model applies; DuplicateLetters are extra
	// letters of one event; ForeignLetters are letters of events the ledger does not know.
	UnexpectedLetters int
	DuplicateLetters  int
	ForeignLetters    int
	// BadKeys are the keys with a problem (for diagnostics), at most maxProblems of them.
	BadKeys []string
	// Problems describe every violation, at most maxProblems of them.
	Problems []string
	// Truncated counts problems not listed.
	Truncated int
}

const maxProblems = 30

// OK reports whether the run kept every promise.
func (r *Report) OK() bool {
	return r.Lost == 0 && r.MismatchedKeys == 0 && r.UnexpectedLetters == 0 &&
		r.DuplicateLetters == 0 && r.ForeignLetters == 0 && len(r.Problems) == 0 && r.Truncated == 0
}

func (r *Report) badKey(key string) {
	if len(r.BadKeys) < maxProblems && !slices.Contains(r.BadKeys, key) {
		r.BadKeys = append(r.BadKeys, key)
	}
}

func (r *Report) problem(format string, args ...any) {
	if len(r.Problems) >= maxProblems {
		r.Truncated++
		return
	}
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

// WriteTable writes the counts as a table, then the problems.
func (r *Report) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "published\tapplied\tdead-lettered\tlost\tmismatched keys\tunexpected letters\tduplicate letters\tforeign letters\t")
	fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", r.Published, r.Applied, r.DeadLettered, r.Lost,
		r.MismatchedKeys, r.UnexpectedLetters, r.DuplicateLetters, r.ForeignLetters)
	tw.Flush()
	for _, p := range r.Problems {
		fmt.Fprintln(w, "  -", p)
	}
	if r.Truncated > 0 {
		fmt.Fprintf(w, "  … and %d more problems\n", r.Truncated)
	}
}

// String is the table as text.
func (r *Report) String() string {
	var b strings.Builder
	r.WriteTable(&b)
	return b.String()
}

// Check compares the final DPS state and the dead letters with the model of the ledger.
// state maps lower-cased registration ids to what DPS holds; a key missing from it is
// absent on DPS.
func Check(l *Ledger, state map[string]State, letters []DeadLetter, policy HoldPolicy) *Report {
	r := &Report{}
	byEvent := map[string][]DeadLetter{}
	for _, dl := range letters {
		byEvent[dl.EventID] = append(byEvent[dl.EventID], dl)
	}
	known := map[string]bool{}
	keys := l.Keys()
	slices.Sort(keys)
	for _, key := range keys {
		events := l.Events(key)
		r.Published += len(events)
		ex := Expect(events, policy)
		for _, ev := range events {
			known[ev.ID] = true
		}

		// Dead letters the model expects.
		for _, ev := range ex.DeadLettered {
			got := byEvent[ev.ID]
			switch {
			case len(got) == 0:
				r.Lost++
				r.badKey(key)
				r.problem("key %s: event %s (seq %d, %s%s) is neither applied nor dead-lettered", key, ev.ID, ev.Seq, ev.Op, poisonNote(ev))
				continue
			case len(got) > 1:
				r.DuplicateLetters += len(got) - 1
				r.badKey(key)
				r.problem("key %s: event %s dead-lettered %d times (dlq seqs %v)", key, ev.ID, len(got), letterSeqs(got))
			}
			r.DeadLettered++
			if strings.TrimSpace(got[0].Reason) == "" {
				r.problem("key %s: letter of event %s (dlq seq %d) has no reason", key, ev.ID, got[0].StreamSeq)
			}
			if got[0].Key != "" && got[0].Key != key {
				r.problem("key %s: letter of event %s names key %q", key, ev.ID, got[0].Key)
			}
		}
		// Letters of events the model applies.
		for _, ev := range ex.Applied {
			for _, dl := range byEvent[ev.ID] {
				r.UnexpectedLetters++
				r.badKey(key)
				r.problem("key %s: event %s (seq %d, %s) dead-lettered but no failure was injected: class %q, reason %q",
					key, ev.ID, ev.Seq, ev.Op, dl.Class, dl.Reason)
			}
		}

		// Final state.
		got, ok := state[key]
		if !ok {
			got = State{Seq: -1}
		}
		if !got.Exists {
			got.Seq = -1
		}
		if got == ex.Final {
			r.Applied += len(ex.Applied)
			continue
		}
		r.MismatchedKeys++
		r.badKey(key)
		lost, explain := lostAfter(ex.Applied, got)
		r.Lost += lost
		r.Applied += len(ex.Applied) - lost
		r.problem("key %s: DPS has %s, model wants %s; %s", key, describe(got), describe(ex.Final), explain)
	}
	for id, dls := range byEvent {
		if !known[id] {
			r.ForeignLetters += len(dls)
			r.problem("letter of unknown event %q (dlq seq %v, class %q, reason %q)", id, letterSeqs(dls), dls[0].Class, dls[0].Reason)
		}
	}
	for key, st := range state {
		if st.Exists && len(l.Events(key)) == 0 {
			r.MismatchedKeys++
			r.problem("key %s exists on DPS (seq %d) but no event was published for it", key, st.Seq)
		}
	}
	return r
}

// lostAfter finds the last applied event the observed state reflects and counts the applied
// events after it as lost.
func lostAfter(applied []Event, got State) (int, string) {
	for i := len(applied) - 1; i >= 0; i-- {
		ev := applied[i]
		reflects := (got.Exists && ev.Op != OpDelete && ev.Seq == got.Seq) || (!got.Exists && ev.Op == OpDelete)
		if reflects {
			return len(applied) - 1 - i, fmt.Sprintf("state reflects event seq %d (%s), %d later event(s) missing or applied out of order", ev.Seq, ev.Op, len(applied)-1-i)
		}
	}
	if !got.Exists && len(applied) > 0 {
		return len(applied), "none of the key's events reached DPS"
	}
	return len(applied), "state reflects none of the key's applied events"
}

func describe(s State) string {
	if !s.Exists {
		return "no enrollment"
	}
	return fmt.Sprintf("seq %d", s.Seq)
}

func poisonNote(ev Event) string {
	if ev.Poison == PoisonNone {
		return ", held behind an earlier dead letter"
	}
	return ", poison " + string(ev.Poison)
}

func letterSeqs(dls []DeadLetter) []uint64 {
	s := make([]uint64, len(dls))
	for i, d := range dls {
		s[i] = d.StreamSeq
	}
	return s
}
