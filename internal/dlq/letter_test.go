package dlq

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestLetterHeaderRoundTrip(t *testing.T) {
	l := Letter{
		Reason: "DPS 409201: enrollment exists", Class: ClassPermanent, Code: 409201, Status: 409, Attempts: 3,
		FirstFailure: t0, LastFailure: t0.Add(time.Minute),
		OriginStream: "DPS_EVENTS", OriginSubject: "dpsync.events.enrollment.dev-1", OriginSeq: 17, Position: 12,
		Worker: "w1", TraceID: "0af7651916cd43dd8448eb211c80319c", Key: "enrollment/dev-1", Kind: "enrollment",
		Operation: "create", EventID: "ev-17", Redrives: 2,
		History:     []Failure{{Class: ClassTransient, Status: 503, Reason: "unavailable", Attempts: 5, First: t0.Add(-time.Hour), When: t0.Add(-30 * time.Minute)}},
		Traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
	}
	m := &jetstream.RawStreamMsg{Sequence: 5, Subject: "dpsync.dlq.enrollment.dev-1", Header: l.Header(), Data: []byte("{}"), Time: t0}
	got, err := ParseLetter(m)
	if err != nil {
		t.Fatal(err)
	}
	want := l
	want.Seq, want.Subject, want.Data, want.Size, want.Time = 5, m.Subject, m.Data, 2, t0
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestLetterHeaderValues(t *testing.T) {
	l := Letter{Reason: "line one\nline two\r\n" + strings.Repeat("é", 2000), Class: ClassInvalid, OriginStream: "S", OriginSeq: 1}
	h := l.Header()
	r := h.Get(HeaderReason)
	if strings.ContainsAny(r, "\r\n") {
		t.Errorf("reason header %q contains a line break", r[:40])
	}
	if len(r) > maxReason || !strings.HasSuffix(r, "…") || !strings.HasPrefix(r, "line one line two") {
		t.Errorf("reason header: got %d bytes %q…, want ≤ %d bytes ending in …", len(r), r[:20], maxReason)
	}
	for _, k := range []string{HeaderCode, HeaderStatus, HeaderAttempts, HeaderFirstFailure, HeaderHistory, HeaderTraceparent} {
		if v := h.Get(k); v != "" {
			t.Errorf("header %s: got %q, want absent for a zero field", k, v)
		}
	}
}

func TestParseLetterLenient(t *testing.T) {
	h := nats.Header{}
	h.Set(HeaderKey, "enrollment/x")
	h.Set(HeaderOriginSeq, "twelve")
	h.Set(HeaderLastFailure, "yesterday")
	h.Set(HeaderClass, "weird")
	h.Set(headerMsgSize, "321")
	l, err := ParseLetter(&jetstream.RawStreamMsg{Sequence: 9, Header: h})
	if err == nil {
		t.Fatal("got no error for malformed headers, want one")
	}
	for _, want := range []string{HeaderOriginSeq, HeaderLastFailure, HeaderClass} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if l.Key != "enrollment/x" || l.Seq != 9 || l.Size != 321 {
		t.Errorf("got key %q seq %d size %d, want the readable fields kept", l.Key, l.Seq, l.Size)
	}
}

func TestFromEvent(t *testing.T) {
	hist := []Failure{{Class: ClassTransient, Status: 503, When: t0}}
	b, _ := json.Marshal(hist)
	h := nats.Header{}
	h.Set(HeaderTraceparent, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	h.Set(HeaderRedrives, "2")
	h.Set(HeaderHistory, string(b))
	var l Letter
	l.FromEvent(h)
	if l.Redrives != 2 || len(l.History) != 1 || l.TraceID != "0af7651916cd43dd8448eb211c80319c" || l.Traceparent == "" {
		t.Errorf("got redrives %d history %v trace %q, want 2, one failure, the trace id", l.Redrives, l.History, l.TraceID)
	}
}

func TestSubject(t *testing.T) {
	tests := []struct {
		l    Letter
		want string
	}{
		{Letter{OriginSubject: "dpsync.events.enrollment.dev%2E1"}, "dpsync.dlq.enrollment.dev%2E1"},
		{Letter{OriginSubject: "dpsync.events.group.line-a", Key: "other/x"}, "dpsync.dlq.group.line-a"},
		{Letter{Key: "enrollment/Dev.1 *"}, "dpsync.dlq.enrollment.dev%2E1%20%2A"},
		{Letter{Kind: "group"}, "dpsync.dlq.group._"},
		{Letter{}, "dpsync.dlq.unknown._"},
	}
	for _, tt := range tests {
		if got := Subject("dpsync.dlq", tt.l); got != tt.want {
			t.Errorf("Subject(%+v): got %q, want %q", tt.l, got, tt.want)
		}
	}
}

func TestHeldReason(t *testing.T) {
	tests := []struct {
		h    Hold
		want string
	}{
		{Hold{Seq: 4, Class: ClassPermanent, Reason: "DPS 409201 on create"}, "held behind dead letter 4 (DPS 409201 on create)"},
		{Hold{Seq: 6, Class: ClassHeld, Reason: "held behind dead letter 4 (DPS 409201 on create)"}, "held behind dead letter 6 (DPS 409201 on create)"},
		{Hold{Seq: 7, Class: ClassTransient}, "held behind dead letter 7 (transient)"},
	}
	for _, tt := range tests {
		if got := tt.h.HeldReason(); got != tt.want {
			t.Errorf("HeldReason(%+v): got %q, want %q", tt.h, got, tt.want)
		}
	}
}

func TestRewriteOperation(t *testing.T) {
	out, err := RewriteOperation(event("dev-1", "create", "e1"), "update")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		ID   string `json:"id"`
		Data struct {
			Operation  string `json:"operation"`
			Enrollment struct {
				RegistrationID string `json:"registrationId"`
			} `json:"enrollment"`
		} `json:"data"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if got.Data.Operation != "update" || got.ID != "e1" || got.Data.Enrollment.RegistrationID != "dev-1" {
		t.Errorf("got %+v, want operation update with id and enrollment kept", got)
	}
	for _, bad := range []string{`not json`, `{"id":"x"}`, `{"data":"x"}`, `{"data":{"enrollment":{}}}`} {
		if _, err := RewriteOperation([]byte(bad), "update"); err == nil {
			t.Errorf("RewriteOperation(%s): got no error, want one", bad)
		}
	}
}
