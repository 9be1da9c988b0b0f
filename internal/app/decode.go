package app

import (
	"github.com/dpsync/dpsync/internal/applier"
	"github.com/dpsync/dpsync/internal/consumer"
	"github.com/dpsync/dpsync/internal/event"
)

// eventDecoder returns the engine's decoder: schema validation (package event) and the
// mapping of a valid event to the item the applier sends.
func eventDecoder() (consumer.Decoder, error) {
	dec, err := event.NewDecoder()
	if err != nil {
		return nil, err
	}
	return func(data []byte) (consumer.Decoded, error) {
		ev, err := dec.Decode(data)
		if err != nil {
			return consumer.Decoded{}, err
		}
		it := applier.Item{Kind: applier.KindEnrollment, Op: ev.Operation, Enrollment: ev.Enrollment}
		if ev.Kind == event.KindGroup {
			it = applier.Item{Kind: applier.KindGroup, Op: ev.Operation, Group: ev.Group}
		}
		return consumer.Decoded{EventID: ev.ID, Key: ev.Key(), Item: it}, nil
	}, nil
}
