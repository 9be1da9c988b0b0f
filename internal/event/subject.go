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
// an ordering key and a partition), with "." written as "%2E" (a "." would split the id into
// several subject tokens). Valid ids contain no "%", so the encoding is reversible.
func SubjectToken(id string) string {
	return strings.ReplaceAll(strings.ToLower(id), ".", "%2E")
}

// ParseSubjectToken reverses SubjectToken: it returns the (lower-cased) id of a token.
func ParseSubjectToken(token string) string {
	return strings.ReplaceAll(strings.ReplaceAll(token, "%2E", "."), "%2e", ".")
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
