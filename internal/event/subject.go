package event

import (
	"fmt"
	"strconv"
	"strings"
)

// Subject prefixes of the events stream (docs/ARCHITECTURE.md, "Names on the wire").
const (
	// SubjectPrefix is where producers publish: "dpsync.events.<kind>.<token>".
	SubjectPrefix = "dpsync.events"
	// PartitionPrefix is where the stream stores events after its subject transform:
	// "dpsync.part.<p>.<kind>.<token>".
	PartitionPrefix = "dpsync.part"
)

// SubjectToken returns the subject token of a registration id or enrollment group id: the
// id lower-cased (DPS ids are case-insensitive, so "Dev-1" and "dev-1" share a token and thus
// an ordering key and a partition), with every byte other than a-z, 0-9, "-", "_" and ":"
// written as %XX. A valid id can only contain "." among those, so its token differs from the
// lower-cased id only by "." → "%2E" (a "." would split the id into several subject tokens).
// Invalid ids (a space, "/", "*") still give a usable token, so their events reach the worker
// and are dead-lettered with a reason instead of failing at publish time.
func SubjectToken(id string) string {
	id = strings.ToLower(id)
	var b strings.Builder
	b.Grow(len(id) + 8)
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == ':' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0xf])
	}
	return b.String()
}

const hexDigits = "0123456789ABCDEF"

// ParseSubjectToken reverses SubjectToken: it returns the (lower-cased) id of a token. A "%"
// not followed by two hex digits is kept as it is.
func ParseSubjectToken(token string) string {
	if !strings.Contains(token, "%") {
		return token
	}
	var b strings.Builder
	for i := 0; i < len(token); i++ {
		if token[i] == '%' && i+2 < len(token) {
			hi, ok1 := unhex(token[i+1])
			lo, ok2 := unhex(token[i+2])
			if ok1 && ok2 {
				b.WriteByte(hi<<4 | lo)
				i += 2
				continue
			}
		}
		b.WriteByte(token[i])
	}
	return b.String()
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// Subject returns the subject "<prefix>.<kind>.<token>" of the event about id.
func Subject(prefix string, kind Kind, id string) string {
	return prefix + "." + string(kind) + "." + SubjectToken(id)
}

// SubjectFor returns the producer subject "dpsync.events.<kind>.<token>" of the event about id.
func SubjectFor(kind Kind, id string) string { return Subject(SubjectPrefix, kind, id) }

// ParseSubject splits a producer subject "dpsync.events.<kind>.<token>" (partition -1) or a
// stored subject "dpsync.part.<p>.<kind>.<token>" into its kind, token and partition.
func ParseSubject(subject string) (kind Kind, token string, partition int, err error) {
	toks := strings.Split(subject, ".")
	switch {
	case len(toks) == 4 && toks[0]+"."+toks[1] == SubjectPrefix:
		kind, token, partition = Kind(toks[2]), toks[3], -1
	case len(toks) == 5 && toks[0]+"."+toks[1] == PartitionPrefix:
		p, perr := strconv.Atoi(toks[2])
		if perr != nil || p < 0 {
			return "", "", 0, fmt.Errorf("subject %q: partition %q is not a non-negative number", subject, toks[2])
		}
		kind, token, partition = Kind(toks[3]), toks[4], p
	default:
		return "", "", 0, fmt.Errorf("subject %q: want %s.<kind>.<token> or %s.<p>.<kind>.<token>", subject, SubjectPrefix, PartitionPrefix)
	}
	if kind != KindEnrollment && kind != KindGroup {
		return "", "", 0, fmt.Errorf("subject %q: kind %q is not %s or %s", subject, kind, KindEnrollment, KindGroup)
	}
	if token == "" {
		return "", "", 0, fmt.Errorf("subject %q: empty token", subject)
	}
	return kind, token, partition, nil
}
