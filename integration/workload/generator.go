// Package workload generates seeded streams of enrollment events, publishes them with a
// ledger of what JetStream confirmed, and checks the final DPS state and dead letters
// against a model.
package workload

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Op is an event's operation.
type Op string

// Operations of an enrollment event (schemas/).
const (
	OpCreate            Op = "create"
	OpUpdate            Op = "update"
	OpUpdateIfMatchETag Op = "updateIfMatchETag"
	OpDelete            Op = "delete"
)

// Poison names a permanent failure the generator injects on purpose.
type Poison string

// Poisons the generator can inject.
const (
	// PoisonNone is an ordinary event.
	PoisonNone Poison = ""
	// PoisonTPMWithoutKey is a create with TPM attestation and no endorsementKey: rejected
	// by the event schema, or by DPS with 400 if the schema lets it through.
	PoisonTPMWithoutKey Poison = "tpm-without-endorsement-key"
	// PoisonStaleETag is an updateIfMatchETag with an etag DPS never issued: 412.
	PoisonStaleETag Poison = "stale-etag"
)

// EventType is the CloudEvents type of individual-enrollment events.
const EventType = "com.dpsync.enrollment.v1"

// SubjectPrefix is where producers publish enrollment events.
const SubjectPrefix = "dpsync.events.enrollment."

// Event is one generated event.
type Event struct {
	// ID is the CloudEvents id, sent as Nats-Msg-Id.
	ID string
	// RegistrationID as the event spells it; Key is its lower-cased form (DPS ids are
	// case-insensitive).
	RegistrationID string
	Key            string
	Op             Op
	// Seq numbers events in generation order and is written into the enrollment as
	// initialTwin.tags.seq, so the final DPS state shows which event was applied last.
	Seq    int
	Poison Poison
	// Subject and Body are what is published.
	Subject string
	Body    []byte
}

// Config shapes a generated workload.
type Config struct {
	// Seed makes the workload reproducible; print it on failure.
	Seed uint64
	// IDs is the number of registration ids, Events the number of events.
	IDs    int
	Events int
	// PoisonIDs is how many ids get one poison event each, at a random point of their
	// lifecycle (later events of such an id are still generated).
	PoisonIDs int
}

// Generate returns cfg.Events events over cfg.IDs ids in publish order. Each id follows a
// realistic lifecycle: created, updated, maybe deleted, maybe created again; events of
// different ids interleave at random. Every event is valid for the state the previous
// events of its id leave (no create of an existing enrollment), except the poisons.
func Generate(cfg Config) []Event {
	r := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	type idState struct {
		spelled  string
		exists   bool
		poisonAt int // index in this id's events at which to inject the poison; -1 none
		n        int // events generated so far
	}
	ids := make([]*idState, cfg.IDs)
	for i := range ids {
		ids[i] = &idState{spelled: spellID(i), poisonAt: -1}
	}
	perID := max(1, cfg.Events/max(1, cfg.IDs))
	for _, i := range r.Perm(cfg.IDs)[:min(cfg.PoisonIDs, cfg.IDs)] {
		ids[i].poisonAt = 1 + r.IntN(perID) // never the first event: the id exists first
	}
	events := make([]Event, 0, cfg.Events)
	for seq := range cfg.Events {
		st := ids[r.IntN(len(ids))]
		ev := Event{
			ID:             fmt.Sprintf("ev-%x-%d", cfg.Seed, seq),
			RegistrationID: st.spelled,
			Key:            strings.ToLower(st.spelled),
			Seq:            seq,
		}
		switch {
		case st.n == st.poisonAt && st.exists:
			ev.Op, ev.Poison = OpUpdateIfMatchETag, PoisonStaleETag
		case st.n == st.poisonAt:
			ev.Op, ev.Poison = OpCreate, PoisonTPMWithoutKey
		case !st.exists:
			// Mostly create; sometimes an update, which creates an absent enrollment
			// (PUT without If-Match).
			ev.Op = OpCreate
			if r.IntN(10) == 0 {
				ev.Op = OpUpdate
			}
		default:
			switch x := r.IntN(100); {
			case x < 75:
				ev.Op = OpUpdate
			default:
				ev.Op = OpDelete
			}
		}
		if st.n == st.poisonAt && st.poisonAt >= 0 {
			st.poisonAt = -2 // injected
		}
		if ev.Poison == PoisonNone {
			st.exists = ev.Op != OpDelete
		}
		st.n++
		ev.Subject = SubjectPrefix + SubjectToken(ev.RegistrationID)
		ev.Body = encode(ev, cfg.Seed)
		events = append(events, ev)
	}
	return events
}

// spellID returns the i-th registration id. Most are plain; some carry upper case, '.' and
// ':' to exercise case-insensitive keys and subject encoding.
func spellID(i int) string {
	switch {
	case i%13 == 5:
		return fmt.Sprintf("line.%d:dev-%05d", i%4, i)
	case i%7 == 3:
		return fmt.Sprintf("Dev-%05d", i)
	default:
		return fmt.Sprintf("dev-%05d", i)
	}
}

// SubjectToken is the subject token of a registration id: lower-cased, '.' written as
// %2E (docs/ARCHITECTURE.md, "Names on the wire").
func SubjectToken(id string) string {
	return strings.ReplaceAll(strings.ToLower(id), ".", "%2E")
}

type cloudEvent struct {
	SpecVersion     string    `json:"specversion"`
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`
	Time            time.Time `json:"time"`
	DataContentType string    `json:"datacontenttype"`
	Data            eventData `json:"data"`
}

type eventData struct {
	Operation  Op             `json:"operation"`
	Enrollment map[string]any `json:"enrollment"`
}

// encode writes the CloudEvents structured JSON of ev (docs/ARCHITECTURE.md).
func encode(ev Event, seed uint64) []byte {
	enr := map[string]any{
		"registrationId": ev.RegistrationID,
		"attestation":    map[string]any{"type": "symmetricKey"},
	}
	if ev.Op != OpDelete {
		enr["provisioningStatus"] = "enabled"
		enr["initialTwin"] = map[string]any{
			"tags": map[string]any{"seq": ev.Seq, "run": fmt.Sprintf("%x", seed)},
		}
	}
	switch ev.Poison {
	case PoisonTPMWithoutKey:
		enr["attestation"] = map[string]any{"type": "tpm", "tpm": map[string]any{}}
	case PoisonStaleETag:
		enr["etag"] = `"00000000-0000-0000-0000-000000000000"`
	}
	ce := cloudEvent{
		SpecVersion:     "1.0",
		ID:              ev.ID,
		Source:          "/dpsync/integration",
		Type:            EventType,
		Time:            time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(ev.Seq) * time.Millisecond),
		DataContentType: "application/json",
		Data:            eventData{Operation: ev.Op, Enrollment: enr},
	}
	b, err := json.Marshal(ce)
	if err != nil {
		panic(fmt.Sprintf("encode generated event: %v", err)) // only maps of plain values
	}
	return b
}
