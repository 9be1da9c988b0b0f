package dlqcli

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/dpsync/dpsync/internal/dlq"
)

// letterJSON is a letter in --json output.
type letterJSON struct {
	Seq           uint64        `json:"seq"`
	Subject       string        `json:"subject,omitempty"`
	Stored        time.Time     `json:"stored,omitzero"`
	Key           string        `json:"key,omitempty"`
	Kind          string        `json:"kind,omitempty"`
	Operation     string        `json:"operation,omitempty"`
	EventID       string        `json:"eventId,omitempty"`
	Class         dlq.Class     `json:"class,omitempty"`
	Code          int           `json:"code,omitempty"`
	Status        int           `json:"status,omitempty"`
	Reason        string        `json:"reason,omitempty"`
	Attempts      int           `json:"attempts,omitempty"`
	FirstFailure  time.Time     `json:"firstFailure,omitzero"`
	LastFailure   time.Time     `json:"lastFailure,omitzero"`
	OriginStream  string        `json:"originStream,omitempty"`
	OriginSubject string        `json:"originSubject,omitempty"`
	OriginSeq     uint64        `json:"originSeq,omitempty"`
	Position      uint64        `json:"position,omitempty"`
	Worker        string        `json:"worker,omitempty"`
	TraceID       string        `json:"traceId,omitempty"`
	Redrives      int           `json:"redrives,omitempty"`
	History       []dlq.Failure `json:"history,omitempty"`
	Size          int           `json:"size"`
	Event         any           `json:"event,omitempty"`
}

func letterJSONOf(l dlq.Letter, withStored bool) letterJSON {
	j := letterJSON{
		Seq: l.Seq, Subject: l.Subject, Key: l.Key, Kind: l.Kind, Operation: l.Operation,
		EventID: l.EventID, Class: l.Class, Code: l.Code, Status: l.Status, Reason: l.Reason,
		Attempts: l.Attempts, FirstFailure: l.FirstFailure, LastFailure: l.LastFailure,
		OriginStream: l.OriginStream, OriginSubject: l.OriginSubject, OriginSeq: l.OriginSeq,
		Position: l.Position, Worker: l.Worker, TraceID: l.TraceID, Redrives: l.Redrives,
		History: l.History, Size: l.Size,
	}
	if withStored {
		j.Stored = l.Time
	}
	return j
}

func lettersJSON(ls []dlq.Letter, withStored bool) []letterJSON {
	out := make([]letterJSON, 0, len(ls))
	for _, l := range ls {
		out = append(out, letterJSONOf(l, withStored))
	}
	return out
}

// secretNames are the members whose string values are masked: symmetric keys and TPM keys.
var secretNames = map[string]bool{
	"primarykey": true, "secondarykey": true, "endorsementkey": true, "storagerootkey": true,
}

const masked = "****"

// eventJSON returns the event for --json output: the (masked) JSON value, or the text of
// a body that is not JSON.
func eventJSON(data []byte, mask bool) any {
	n, err := parseOrdered(data)
	if err != nil {
		s := string(data)
		if mask {
			s = maskText(s)
		}
		return s
	}
	if mask {
		n.mask()
	}
	var b bytes.Buffer
	n.write(&b, "", "")
	return json.RawMessage(b.Bytes())
}

// prettyEvent indents the event with its members in their original order and secrets
// masked; a body that is not JSON is quoted, with secret-looking members masked.
func prettyEvent(data []byte, mask bool) string {
	n, err := parseOrdered(data)
	if err != nil {
		s := string(data)
		if mask {
			s = maskText(s)
		}
		return "(not JSON) " + strconv.Quote(s)
	}
	if mask {
		n.mask()
	}
	var b bytes.Buffer
	n.write(&b, "", "  ")
	return b.String()
}

var secretText = regexp.MustCompile(`(?i)("(?:primaryKey|secondaryKey|endorsementKey|storageRootKey)"\s*:\s*)"[^"]*"`)

// maskText masks secret members in text that is not valid JSON.
func maskText(s string) string {
	return secretText.ReplaceAllString(s, `$1"`+masked+`"`)
}

// node is a JSON value that keeps its object members in order.
type node struct {
	scalar json.RawMessage // string, number, bool, null
	keys   []string        // object
	vals   []*node         // object values or array elements
	object bool
	array  bool
}

func parseOrdered(data []byte) (*node, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	n, err := decodeNode(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("trailing data after the JSON value")
	}
	return n, nil
}

func decodeNode(dec *json.Decoder) (*node, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			n := &node{object: true}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, _ := kt.(string)
				v, err := decodeNode(dec)
				if err != nil {
					return nil, err
				}
				n.keys = append(n.keys, k)
				n.vals = append(n.vals, v)
			}
			_, err := dec.Token() // '}'
			return n, err
		case '[':
			n := &node{array: true}
			for dec.More() {
				v, err := decodeNode(dec)
				if err != nil {
					return nil, err
				}
				n.vals = append(n.vals, v)
			}
			_, err := dec.Token() // ']'
			return n, err
		}
		return nil, errors.New("unexpected delimiter")
	default:
		b, err := json.Marshal(t)
		if err != nil {
			return nil, err
		}
		return &node{scalar: b}, nil
	}
}

// mask replaces the non-empty string values of secret members, at any depth.
func (n *node) mask() {
	for i, v := range n.vals {
		if n.object && secretNames[strings.ToLower(n.keys[i])] && v.scalar != nil && len(v.scalar) > 2 && v.scalar[0] == '"' {
			v.scalar = json.RawMessage(strconv.Quote(masked))
			continue
		}
		v.mask()
	}
}

// write writes n; indent "" writes it compact.
func (n *node) write(b *bytes.Buffer, prefix, indent string) {
	nl := func(p string) {
		if indent != "" {
			b.WriteByte('\n')
			b.WriteString(p)
		}
	}
	sep := ":"
	if indent != "" {
		sep = ": "
	}
	switch {
	case n.object, n.array:
		open, close := byte('{'), byte('}')
		if n.array {
			open, close = '[', ']'
		}
		b.WriteByte(open)
		if len(n.vals) == 0 {
			b.WriteByte(close)
			return
		}
		inner := prefix + indent
		for i, v := range n.vals {
			if i > 0 {
				b.WriteByte(',')
			}
			nl(inner)
			if n.object {
				kb, _ := json.Marshal(n.keys[i])
				b.Write(kb)
				b.WriteString(sep)
			}
			v.write(b, inner, indent)
		}
		nl(prefix)
		b.WriteByte(close)
	default:
		b.Write(n.scalar)
	}
}
