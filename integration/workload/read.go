package workload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dpsync/dpsync/internal/dps"
)

// Headers of a dead letter the checker reads (docs/ARCHITECTURE.md, "Names on the wire").
const (
	headerEventID = "Dpsync-Event-Id"
	headerKey     = "Dpsync-Key"
	headerClass   = "Dpsync-Class"
	headerReason  = "Dpsync-Reason"
	headerWorker  = "Dpsync-Worker"
	headerOrigin  = "Dpsync-Origin-Seq"
	headerPos     = "Dpsync-Position"
)

// ReadDeadLetters reads every message of the dead-letter stream. A stream that does not
// exist holds no letters. A letter without Dpsync-Event-Id takes the id of the CloudEvent in
// its body (the original event bytes).
func ReadDeadLetters(ctx context.Context, js jetstream.JetStream, stream string) ([]DeadLetter, error) {
	s, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream %s: %w", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream %s: %w", stream, err)
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream %s: %w", stream, err)
	}
	var letters []DeadLetter
	for {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, fmt.Errorf("read dead letters: %w", err)
		}
		var last jetstream.MsgMetadata
		n := 0
		for msg := range batch.Messages() {
			meta, err := msg.Metadata()
			if err != nil {
				return nil, fmt.Errorf("read dead letters: %w", err)
			}
			last = *meta
			n++
			h := msg.Headers()
			dl := DeadLetter{
				StreamSeq: meta.Sequence.Stream,
				EventID:   h.Get(headerEventID),
				Key:       letterKey(h.Get(headerKey)),
				Class:     h.Get(headerClass),
				Reason:    h.Get(headerReason),
				Worker:    h.Get(headerWorker),
				OriginSeq: h.Get(headerOrigin),
				Position:  h.Get(headerPos),
			}
			if dl.EventID == "" {
				var ce struct {
					ID string `json:"id"`
				}
				if json.Unmarshal(msg.Data(), &ce) == nil {
					dl.EventID = ce.ID
				}
			}
			letters = append(letters, dl)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("read dead letters: %w", err)
		}
		if n == 0 || last.NumPending == 0 {
			return letters, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

// letterKey turns Dpsync-Key ("<kind>/<lower-cased id>") into the ledger's key.
func letterKey(h string) string {
	if kind, id, ok := strings.Cut(h, "/"); ok && (kind == "enrollment" || kind == "group") {
		return id
	}
	return h
}

// StateOf turns enrollments read from DPS into the checker's state: lower-cased id →
// exists, with the Seq from initialTwin.tags.seq (-1 if missing).
func StateOf(enrollments []dps.IndividualEnrollment) map[string]State {
	st := make(map[string]State, len(enrollments))
	for _, e := range enrollments {
		s := State{Exists: true, Seq: -1}
		if e.InitialTwin != nil {
			if raw, ok := e.InitialTwin.Tags["seq"]; ok {
				var n int
				if json.Unmarshal(raw, &n) == nil {
					s.Seq = n
				}
			}
		}
		st[strings.ToLower(e.RegistrationID)] = s
	}
	return st
}
