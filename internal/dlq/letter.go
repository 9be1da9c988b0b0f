package dlq

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers of a dead letter (docs/ARCHITECTURE.md, "Names on the wire"). Values are single
// lines; times are RFC 3339 in UTC; numbers are decimal. A header whose value would be empty
// or zero is left out.
const (
	HeaderReason        = "Dpsync-Reason"         // why the event failed, one line
	HeaderClass         = "Dpsync-Class"          // transient | permanent | invalid | held
	HeaderCode          = "Dpsync-Code"           // 6-digit DPS error code, if any
	HeaderStatus        = "Dpsync-Status"         // HTTP status, if any
	HeaderAttempts      = "Dpsync-Attempts"       // DPS attempts before the event was dead-lettered
	HeaderFirstFailure  = "Dpsync-First-Failure"  // first failure of this event
	HeaderLastFailure   = "Dpsync-Last-Failure"   // last failure of this event
	HeaderOriginStream  = "Dpsync-Origin-Stream"  // events stream the event came from
	HeaderOriginSubject = "Dpsync-Origin-Subject" // producer-form subject: where replay publishes
	HeaderOriginSeq     = "Dpsync-Origin-Seq"     // the event's sequence in the origin stream
	HeaderPosition      = "Dpsync-Position"       // order position (also on replayed events)
	HeaderWorker        = "Dpsync-Worker"         // worker that dead-lettered the event
	HeaderTraceID       = "Dpsync-Trace-Id"       // W3C trace id of the event's trace
	HeaderKey           = "Dpsync-Key"            // ordering key "<kind>/<lower-cased id>"
	HeaderKind          = "Dpsync-Kind"           // enrollment | group
	HeaderOperation     = "Dpsync-Operation"      // create | update | updateIfMatchETag | delete
	HeaderEventID       = "Dpsync-Event-Id"       // CloudEvents id of the event
	HeaderRedrives      = "Dpsync-Redrives"       // automatic redrives so far (also on redriven events)
	HeaderHistory       = "Dpsync-History"        // JSON array of earlier failures (also on redriven events)
	HeaderReplayOf      = "Dpsync-Replay-Of"      // on a replayed or redriven event: the DLQ sequence it came from
	HeaderTraceparent   = "traceparent"           // W3C trace context, copied from the event
	HeaderTracestate    = "tracestate"            // W3C trace state, copied from the event
)

// Class says why a letter is in the dead-letter stream and what may happen to it.
type Class string

// Classes of dead letters.
const (
	// ClassTransient: DPS kept failing with a retryable error (408, 429, 5xx, timeouts)
	// until the retry budget ran out. Redriven automatically on the schedule.
	ClassTransient Class = "transient"
	// ClassPermanent: DPS refused the event (4xx), or a transient letter used up its
	// automatic redrives and was parked. Needs an operator: fix, then replay or purge.
	ClassPermanent Class = "permanent"
	// ClassInvalid: the event could not be decoded or validated. Needs a fixed producer;
	// usually purged.
	ClassInvalid Class = "invalid"
	// ClassHeld: the event itself never failed; it followed an earlier letter of its key
	// so that it does not overtake it (HoldFollow). Replayed with that letter.
	ClassHeld Class = "held"
)

// Valid reports whether c is one of the four classes.
func (c Class) Valid() bool {
	switch c {
	case ClassTransient, ClassPermanent, ClassInvalid, ClassHeld:
		return true
	}
	return false
}

// Failure describes one failure of an event: the current one of a letter, or an earlier
// one in its History.
type Failure struct {
	Class    Class     `json:"class"`
	Code     int       `json:"code,omitempty"`
	Status   int       `json:"status,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Attempts int       `json:"attempts,omitempty"`
	First    time.Time `json:"first,omitzero"`
	When     time.Time `json:"when"` // the last failure of that round
}

// Letter is one dead letter: the original event bytes and why it failed. The same type is
// read from the stream (Seq, Subject, Time and Size are set) and handed to Publisher.Publish
// (they are ignored there).
type Letter struct {
	Seq     uint64    // sequence in the dead-letter stream
	Subject string    // subject in the dead-letter stream, dpsync.dlq.<kind>.<token>
	Time    time.Time // when the stream stored the letter
	Data    []byte    // the original event bytes (nil when read headers-only)
	Size    int       // length of Data, also when read headers-only

	Reason        string
	Class         Class
	Code          int // 6-digit DPS error code, 0 if none
	Status        int // HTTP status, 0 if none
	Attempts      int
	FirstFailure  time.Time
	LastFailure   time.Time
	OriginStream  string
	OriginSubject string
	OriginSeq     uint64
	Position      uint64
	Worker        string
	TraceID       string
	Key           string
	Kind          string
	Operation     string
	EventID       string
	Redrives      int       // automatic redrives before this letter
	History       []Failure // earlier failures, oldest first
	Traceparent   string
	Tracestate    string
}

// Failure returns the letter's own (latest) failure.
func (l Letter) Failure() Failure {
	return Failure{Class: l.Class, Code: l.Code, Status: l.Status, Reason: l.Reason,
		Attempts: l.Attempts, First: l.FirstFailure, When: l.LastFailure}
}

// OrderPosition is the position that orders the letter among the letters of its key: its
// Position, or its origin sequence when the position is unknown.
func (l Letter) OrderPosition() uint64 {
	if l.Position != 0 {
		return l.Position
	}
	return l.OriginSeq
}

// Age is how long ago the letter last failed at now (its stored time when the failure
// time is unknown).
func (l Letter) Age(now time.Time) time.Duration {
	return now.Sub(l.When())
}

// When is the time of the letter's last failure, or its stored time when that is unknown.
func (l Letter) When() time.Time {
	if !l.LastFailure.IsZero() {
		return l.LastFailure
	}
	return l.Time
}

// FromEvent copies what a letter carries over from the failed event's NATS headers: the
// trace context, and the redrive count and history of an event the redriver republished.
// Fields already set are kept.
func (l *Letter) FromEvent(h nats.Header) {
	if h == nil {
		return
	}
	if l.Traceparent == "" {
		l.Traceparent = h.Get(HeaderTraceparent)
	}
	if l.Tracestate == "" {
		l.Tracestate = h.Get(HeaderTracestate)
	}
	if l.Redrives == 0 {
		if n, err := strconv.Atoi(h.Get(HeaderRedrives)); err == nil && n > 0 {
			l.Redrives = n
		}
	}
	if l.History == nil {
		if v := h.Get(HeaderHistory); v != "" {
			var hist []Failure
			if json.Unmarshal([]byte(v), &hist) == nil {
				l.History = hist
			}
		}
	}
	if l.TraceID == "" {
		l.TraceID = traceIDOf(l.Traceparent)
	}
}

// traceIDOf returns the trace id of a W3C traceparent ("00-<trace id>-<span id>-<flags>").
func traceIDOf(tp string) string {
	parts := strings.Split(tp, "-")
	if len(parts) < 4 || len(parts[1]) != 32 {
		return ""
	}
	return parts[1]
}

// maxReason bounds the Reason header; DPS messages can be long.
const maxReason = 1024

// maxHistory bounds the history carried in headers; the oldest entries are dropped.
const maxHistory = 16

// oneLine makes s a valid single-line header value of at most n bytes.
func oneLine(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == '\t' {
			return ' '
		}
		return r
	}, strings.TrimSpace(s))
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

const timeFormat = "2006-01-02T15:04:05.000Z07:00"

func formatTime(t time.Time) string { return t.UTC().Format(timeFormat) }

// Header returns the letter's headers as they are published.
func (l Letter) Header() nats.Header {
	h := nats.Header{}
	set := func(k, v string) {
		if v != "" {
			h.Set(k, v)
		}
	}
	num := func(k string, v uint64) {
		if v != 0 {
			h.Set(k, strconv.FormatUint(v, 10))
		}
	}
	tm := func(k string, t time.Time) {
		if !t.IsZero() {
			h.Set(k, formatTime(t))
		}
	}
	set(HeaderReason, oneLine(l.Reason, maxReason))
	set(HeaderClass, string(l.Class))
	num(HeaderCode, uint64(max(l.Code, 0)))
	num(HeaderStatus, uint64(max(l.Status, 0)))
	num(HeaderAttempts, uint64(max(l.Attempts, 0)))
	tm(HeaderFirstFailure, l.FirstFailure)
	tm(HeaderLastFailure, l.LastFailure)
	set(HeaderOriginStream, oneLine(l.OriginStream, 256))
	set(HeaderOriginSubject, oneLine(l.OriginSubject, 1024))
	num(HeaderOriginSeq, l.OriginSeq)
	num(HeaderPosition, l.Position)
	set(HeaderWorker, oneLine(l.Worker, 256))
	set(HeaderTraceID, oneLine(l.TraceID, 64))
	set(HeaderKey, oneLine(l.Key, 1024))
	set(HeaderKind, oneLine(l.Kind, 64))
	set(HeaderOperation, oneLine(l.Operation, 64))
	set(HeaderEventID, oneLine(l.EventID, 1024))
	num(HeaderRedrives, uint64(max(l.Redrives, 0)))
	if len(l.History) > 0 {
		h.Set(HeaderHistory, historyHeader(l.History))
	}
	set(HeaderTraceparent, oneLine(l.Traceparent, 256))
	set(HeaderTracestate, oneLine(l.Tracestate, 512))
	return h
}

// historyHeader encodes hist (at most maxHistory newest entries, reasons shortened) as the
// JSON array of the Dpsync-History header.
func historyHeader(hist []Failure) string {
	if len(hist) > maxHistory {
		hist = hist[len(hist)-maxHistory:]
	}
	out := make([]Failure, len(hist))
	for i, f := range hist {
		f.Reason = oneLine(f.Reason, 256)
		out[i] = f
	}
	b, _ := json.Marshal(out) // Failure always marshals
	return string(b)
}

// ParseLetter reads a letter from a message of the dead-letter stream. It is lenient: a
// malformed header leaves its field zero and is named in the returned error, and the
// letter is returned anyway so an operator can still see it.
func ParseLetter(m *jetstream.RawStreamMsg) (Letter, error) {
	if m == nil {
		return Letter{}, errors.New("parse letter: nil message")
	}
	return parseLetter(m.Sequence, m.Subject, m.Time, m.Header, m.Data)
}

func parseLetter(seq uint64, subject string, stored time.Time, h nats.Header, data []byte) (Letter, error) {
	l := Letter{Seq: seq, Subject: subject, Time: stored, Data: data, Size: len(data)}
	var errs []error
	bad := func(k, v string, err error) {
		errs = append(errs, fmt.Errorf("header %s %q: %w", k, v, err))
	}
	u64 := func(k string) uint64 {
		v := h.Get(k)
		if v == "" {
			return 0
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			bad(k, v, errors.New("not a number"))
		}
		return n
	}
	integer := func(k string) int {
		n := u64(k)
		if n > 1<<31 {
			return 0
		}
		return int(n)
	}
	tm := func(k string) time.Time {
		v := h.Get(k)
		if v == "" {
			return time.Time{}
		}
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			bad(k, v, errors.New("not an RFC 3339 time"))
		}
		return t
	}
	l.Reason = h.Get(HeaderReason)
	l.Class = Class(h.Get(HeaderClass))
	if l.Class != "" && !l.Class.Valid() {
		bad(HeaderClass, string(l.Class), errors.New("unknown class"))
	}
	l.Code = integer(HeaderCode)
	l.Status = integer(HeaderStatus)
	l.Attempts = integer(HeaderAttempts)
	l.FirstFailure = tm(HeaderFirstFailure)
	l.LastFailure = tm(HeaderLastFailure)
	l.OriginStream = h.Get(HeaderOriginStream)
	l.OriginSubject = h.Get(HeaderOriginSubject)
	l.OriginSeq = u64(HeaderOriginSeq)
	l.Position = u64(HeaderPosition)
	l.Worker = h.Get(HeaderWorker)
	l.TraceID = h.Get(HeaderTraceID)
	l.Key = h.Get(HeaderKey)
	l.Kind = h.Get(HeaderKind)
	l.Operation = h.Get(HeaderOperation)
	l.EventID = h.Get(HeaderEventID)
	l.Redrives = integer(HeaderRedrives)
	if v := h.Get(HeaderHistory); v != "" {
		if err := json.Unmarshal([]byte(v), &l.History); err != nil {
			bad(HeaderHistory, oneLine(v, 64), errors.New("not a JSON array of failures"))
		}
	}
	l.Traceparent = h.Get(HeaderTraceparent)
	l.Tracestate = h.Get(HeaderTracestate)
	if data == nil {
		if n, err := strconv.Atoi(h.Get(headerMsgSize)); err == nil {
			l.Size = n
		}
	}
	if len(errs) > 0 {
		return l, fmt.Errorf("dead letter %d: %w", seq, errors.Join(errs...))
	}
	return l, nil
}
