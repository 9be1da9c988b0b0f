// Package event decodes, validates and encodes dpsync events: CloudEvents 1.0 in structured
// JSON mode whose data asks for one DPS enrollment or enrollment group change.
//
//	{"specversion":"1.0","id":"…","source":"…","type":"com.dpsync.enrollment.v1",
//	 "data":{"operation":"create","enrollment":{"registrationId":"…","attestation":{…}}}}
//
// The contract is the JSON Schema schemas/event.v1.schema.json (embedded, compiled once per
// Decoder) plus the checks a schema cannot express (symmetric keys, certificates, attestation
// consistency). Every rejection is an *InvalidError naming the field and what is wrong with it
// in words a person understands; it never quotes a key or certificate.
package event

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/dpsync/dpsync/internal/dps"
	"github.com/dpsync/dpsync/schemas"
)

// Kind is what an event changes.
type Kind string

// Kinds of events.
const (
	KindEnrollment Kind = "enrollment"
	KindGroup      Kind = "group"
)

// CloudEvents types of dpsync events, one per kind.
const (
	TypeEnrollment = "com.dpsync.enrollment.v1"
	TypeGroup      = "com.dpsync.enrollmentgroup.v1"
)

// MaxSize is the largest event accepted, in bytes: DPS's message size limit (96 KB).
const MaxSize = 96 * 1024

// Event is a decoded, valid event.
type Event struct {
	// CloudEvents envelope.
	ID              string
	Source          string
	Type            string
	SpecVersion     string
	Time            time.Time // zero when absent
	Subject         string    // the CloudEvents "subject" attribute (not the NATS subject)
	DataContentType string
	DataSchema      string
	// Extensions holds the other top-level attributes (CloudEvents extensions such as
	// traceparent), as raw JSON.
	Extensions map[string]json.RawMessage

	Kind      Kind
	Operation dps.BulkMode
	// Enrollment is set when Kind is KindEnrollment, Group when Kind is KindGroup.
	Enrollment *dps.IndividualEnrollment
	Group      *dps.EnrollmentGroup

	// Raw is the event as received (nil for an event built with NewEnrollment / NewGroup
	// until it is encoded).
	Raw []byte
}

// TargetID returns the registration id or enrollment group id the event changes, as spelled
// in the event.
func (e *Event) TargetID() string {
	switch {
	case e.Kind == KindGroup && e.Group != nil:
		return e.Group.EnrollmentGroupID
	case e.Kind == KindEnrollment && e.Enrollment != nil:
		return e.Enrollment.RegistrationID
	}
	return ""
}

// Key returns the ordering key "<kind>/<lower-cased id>": events with equal keys change the
// same DPS record (ids are case-insensitive) and are applied one at a time, in order.
func (e *Event) Key() string { return string(e.Kind) + "/" + strings.ToLower(e.TargetID()) }

// StreamSubject returns the NATS subject "<prefix>.<kind>.<token>" of the event; with prefix
// SubjectPrefix it is where a producer publishes it.
func (e *Event) StreamSubject(prefix string) string { return Subject(prefix, e.Kind, e.TargetID()) }

// ETag returns the etag carried by the enrollment or group, if any.
func (e *Event) ETag() string {
	switch {
	case e.Kind == KindGroup && e.Group != nil:
		return e.Group.ETag
	case e.Kind == KindEnrollment && e.Enrollment != nil:
		return e.Enrollment.ETag
	}
	return ""
}

// Decoder decodes and validates events against the compiled event schema. It is immutable
// and safe for concurrent use.
type Decoder struct {
	schema *jsonschema.Schema
	doc    any // the schema document, for its x-messages
}

// NewDecoder compiles the embedded event schema.
func NewDecoder() (*Decoder, error) {
	f, err := schemas.FS().Open(schemas.EventV1)
	if err != nil {
		return nil, fmt.Errorf("open event schema: %w", err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		return nil, fmt.Errorf("parse event schema: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource(schemas.EventV1ID, doc); err != nil {
		return nil, fmt.Errorf("add event schema: %w", err)
	}
	sch, err := c.Compile(schemas.EventV1ID)
	if err != nil {
		return nil, fmt.Errorf("compile event schema: %w", err)
	}
	return &Decoder{schema: sch, doc: doc}, nil
}

// defaultDecoder is built once, on first use, and never changes.
var defaultDecoder = sync.OnceValues(NewDecoder)

// Decode decodes and validates b with a Decoder shared by the process.
func Decode(b []byte) (*Event, error) {
	d, err := defaultDecoder()
	if err != nil {
		return nil, err
	}
	return d.Decode(b)
}

// Decode decodes and validates b. A rejected event yields an *InvalidError; b is kept in
// Event.Raw (not copied: the caller must not modify it).
//
// A typical valid event is decoded by a single-pass fast path (fast.go); anything it does not
// accept, including every invalid event, is decoded again by the schema validator, whose
// verdict and error are the contract.
func (d *Decoder) Decode(b []byte) (*Event, error) {
	if len(b) > MaxSize {
		return nil, &InvalidError{Reason: fmt.Sprintf("event is %d bytes, over DPS's 96 KB message limit (%d bytes)", len(b), MaxSize)}
	}
	if e, ok := decodeFast(b); ok {
		return e, nil
	}
	return d.decodeSlow(b)
}

// decodeSlow decodes b by validating it against the schema, building the Event and
// checking it. It decides every event the fast path does not accept and words the errors.
func (d *Decoder) decodeSlow(b []byte) (*Event, error) {
	doc, err := parseJSON(b)
	if err != nil {
		return nil, err
	}
	if err := d.schema.Validate(doc); err != nil {
		var ve *jsonschema.ValidationError
		if errors.As(err, &ve) {
			return nil, d.explain(ve)
		}
		return nil, &InvalidError{Reason: err.Error()}
	}
	e, err := build(b)
	if err != nil {
		return nil, err
	}
	if err := check(e); err != nil {
		return nil, err
	}
	e.Raw = b
	return e, nil
}

// parseJSON parses b as one JSON value, reporting syntax errors with line and column.
func parseJSON(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, syntaxError(b, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		off := dec.InputOffset()
		line, col := position(b, off)
		return nil, &InvalidError{Reason: fmt.Sprintf("not JSON: unexpected data after the event at line %d, column %d", line, col)}
	}
	return v, nil
}

func syntaxError(b []byte, err error) error {
	if len(bytes.TrimSpace(b)) == 0 {
		return &InvalidError{Reason: "not JSON: the event is empty"}
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line, col := position(b, se.Offset)
		return &InvalidError{Reason: fmt.Sprintf("not JSON: %s at line %d, column %d", se.Error(), line, col)}
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		line, col := position(b, int64(len(b)))
		return &InvalidError{Reason: fmt.Sprintf("not JSON: unexpected end of input at line %d, column %d", line, col)}
	}
	return &InvalidError{Reason: "not JSON: " + err.Error()}
}

// position returns the 1-based line and column (in bytes) of offset in b. For a syntax error
// encoding/json reports the offset just after the offending byte.
func position(b []byte, offset int64) (line, col int) {
	if offset > int64(len(b)) {
		offset = int64(len(b))
	}
	line, col = 1, 1
	for _, c := range b[:max(offset-1, 0)] {
		if c == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return line, col
}

// wireEvent is the JSON form of an event.
type wireEvent struct {
	SpecVersion     string   `json:"specversion"`
	ID              string   `json:"id"`
	Source          string   `json:"source"`
	Type            string   `json:"type"`
	Time            string   `json:"time,omitempty"`
	Subject         string   `json:"subject,omitempty"`
	DataContentType string   `json:"datacontenttype,omitempty"`
	DataSchema      string   `json:"dataschema,omitempty"`
	Data            wireData `json:"data"`
}

type wireData struct {
	Operation       string          `json:"operation"`
	Enrollment      json.RawMessage `json:"enrollment,omitempty"`
	EnrollmentGroup json.RawMessage `json:"enrollmentGroup,omitempty"`
}

var envelopeAttrs = map[string]bool{
	"specversion": true, "id": true, "source": true, "type": true, "time": true,
	"subject": true, "datacontenttype": true, "dataschema": true, "data": true,
}

// build turns schema-valid bytes into an Event.
func build(b []byte) (*Event, error) {
	var w wireEvent
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, &InvalidError{Reason: "not a valid event: " + err.Error()}
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, &InvalidError{Reason: "not a valid event: " + err.Error()}
	}
	e := &Event{
		ID: w.ID, Source: w.Source, Type: w.Type, SpecVersion: w.SpecVersion, Subject: w.Subject,
		DataContentType: w.DataContentType, DataSchema: w.DataSchema,
	}
	for k, v := range all {
		if !envelopeAttrs[k] {
			if e.Extensions == nil {
				e.Extensions = make(map[string]json.RawMessage)
			}
			e.Extensions[k] = v
		}
	}
	if w.Time != "" {
		t, err := time.Parse(time.RFC3339Nano, w.Time)
		if err != nil {
			return nil, &InvalidError{Field: "time", Reason: "must be an RFC 3339 time such as \"2024-05-01T12:00:00Z\""}
		}
		e.Time = t
	}
	op, err := dps.ParseBulkMode(w.Data.Operation)
	if err != nil {
		return nil, &InvalidError{Field: "data.operation", Reason: "must be create, update, updateIfMatchETag or delete"}
	}
	e.Operation = op
	switch w.Type {
	case TypeEnrollment:
		e.Kind = KindEnrollment
		e.Enrollment = new(dps.IndividualEnrollment)
		if err := json.Unmarshal(w.Data.Enrollment, e.Enrollment); err != nil {
			return nil, &InvalidError{Field: "data.enrollment", Reason: "is not a valid IndividualEnrollment: " + err.Error()}
		}
	case TypeGroup:
		e.Kind = KindGroup
		e.Group = new(dps.EnrollmentGroup)
		if err := json.Unmarshal(w.Data.EnrollmentGroup, e.Group); err != nil {
			return nil, &InvalidError{Field: "data.enrollmentGroup", Reason: "is not a valid EnrollmentGroup: " + err.Error()}
		}
	default:
		return nil, &InvalidError{Field: "type", Reason: fmt.Sprintf("must be %q or %q", TypeEnrollment, TypeGroup)}
	}
	return e, nil
}

// NewEnrollment returns an event asking for op on en. Encode fills in its id and time.
func NewEnrollment(op dps.BulkMode, en *dps.IndividualEnrollment) *Event {
	return &Event{SpecVersion: "1.0", Type: TypeEnrollment, Kind: KindEnrollment, Operation: op, Enrollment: en}
}

// NewGroup returns an event asking for op on g. Encode fills in its id and time.
func NewGroup(op dps.BulkMode, g *dps.EnrollmentGroup) *Event {
	return &Event{SpecVersion: "1.0", Type: TypeGroup, Kind: KindGroup, Operation: op, Group: g}
}

// DefaultSource is the source of events encoded without one.
const DefaultSource = "urn:dpsync:producer"

// Encode fills in e's missing ID (random, UUID form), Time (now), Source (DefaultSource),
// SpecVersion, Type and DataContentType, and returns the event as JSON. It validates the
// result as Decode would and returns the *InvalidError if it is not a valid event; on success
// e.Raw holds the bytes. Use e.ID as the Nats-Msg-Id header so retries are deduplicated.
func (e *Event) Encode() ([]byte, error) {
	if e.ID == "" {
		e.ID = newID()
	}
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	if e.Source == "" {
		e.Source = DefaultSource
	}
	if e.SpecVersion == "" {
		e.SpecVersion = "1.0"
	}
	if e.DataContentType == "" {
		e.DataContentType = "application/json"
	}
	w := wireEvent{
		SpecVersion: e.SpecVersion, ID: e.ID, Source: e.Source,
		Time:    e.Time.Format(time.RFC3339Nano),
		Subject: e.Subject, DataContentType: e.DataContentType, DataSchema: e.DataSchema,
		Data: wireData{Operation: string(e.Operation)},
	}
	var err error
	switch e.Kind {
	case KindEnrollment:
		e.Type = TypeEnrollment
		if e.Enrollment == nil {
			return nil, &InvalidError{Field: "data.enrollment", Reason: "is required"}
		}
		w.Data.Enrollment, err = compactJSON(e.Enrollment)
	case KindGroup:
		e.Type = TypeGroup
		if e.Group == nil {
			return nil, &InvalidError{Field: "data.enrollmentGroup", Reason: "is required"}
		}
		w.Data.EnrollmentGroup, err = compactJSON(e.Group)
	default:
		return nil, &InvalidError{Field: "kind", Reason: fmt.Sprintf("must be %q or %q", KindEnrollment, KindGroup)}
	}
	if err != nil {
		return nil, fmt.Errorf("encode event %s: %w", e.ID, err)
	}
	w.Type = e.Type
	b, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("encode event %s: %w", e.ID, err)
	}
	if len(e.Extensions) > 0 {
		b, err = withExtensions(b, e.Extensions)
		if err != nil {
			return nil, fmt.Errorf("encode event %s: %w", e.ID, err)
		}
	}
	if _, err := Decode(b); err != nil {
		return nil, err
	}
	e.Raw = b
	return b, nil
}

// compactJSON marshals v and drops its null members (e.g. the absent attestation of a delete).
func compactJSON(v any) (json.RawMessage, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for k, raw := range m {
		if string(raw) == "null" {
			delete(m, k)
		}
	}
	return json.Marshal(m)
}

func withExtensions(b []byte, ext map[string]json.RawMessage) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for k, v := range ext {
		if !envelopeAttrs[k] {
			m[k] = v
		}
	}
	return json.Marshal(m)
}

// newID returns a random UUID (version 4) string.
func newID() string {
	var u [16]byte
	_, _ = rand.Read(u[:]) // crypto/rand.Read never fails (Go 1.24+)
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	h := hex.EncodeToString(u[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
