// Package dlq is dpsync's dead-letter stream: the letters, their publisher, the index that
// keeps a key's order behind its letters, the automatic redrive of transient failures, and
// the operators' list / show / stats / replay / purge (the CLI is package dlqcli).
//
// # Letters
//
// Every event ends either applied on DPS or as a letter in the stream DPS_DLQ (subjects
// "dpsync.dlq.<kind>.<token>", the last two tokens of the event's producer subject, so all
// letters of a key share a subject). A letter's body is the original event bytes,
// unchanged; its headers (the Header* constants) say why it failed (reason, class, DPS code
// and HTTP status, attempts, first and last failure), where it came from (origin stream,
// subject and sequence, order position, worker, trace id, traceparent), what it is (key,
// kind, operation, event id) and its past (automatic redrives, a JSON history of earlier
// failures). The letter's Nats-Msg-Id is "dlq.<origin stream>.<origin seq>": a worker that
// crashes between publishing a letter and acknowledging its event publishes the same id
// again after redelivery, and the stream keeps one letter. The worker acknowledges an event
// only after the letter's PubAck; if the publish fails, the event stays unacknowledged and
// comes back.
//
// # Classes
//
//   - transient: DPS kept failing with a retryable error until the worker's retry budget
//     ran out. Redriven automatically.
//   - permanent: DPS refused the event, or a transient letter used up its redrives
//     ("parked"). Fix the cause, then replay (perhaps --as update) or purge.
//   - invalid: not JSON, schema violation, unknown operation, invalid id, too large.
//   - held: the event did not fail; an earlier letter of its key held it (below).
//
// # Order
//
// An event's order position is its Dpsync-Position header (set on replayed and redriven
// events) or else its sequence in the events stream. Under HoldFollow (the default) an
// event is held while the stream has a letter of its key with a lower position: it follows
// that letter as class held with the reason "held behind dead letter <seq> (<reason>)".
// HoldIndex answers that question in memory and confirms every "held" with the stream, so
// letters removed by another process (a replay, purge, redrive) do not hold a key for ever.
// HoldContinue lets later events pass instead; see HoldPolicy for the price.
//
// # Redrive
//
// Each worker runs a Redriver over the keys of the partitions it owns. The first letter
// of a key, if transient, is redriven when Schedule[redrives] (default 1 min, 5 min,
// 30 min, 2 h) has passed since its last failure: it and the held letters right behind it
// are republished to their origin subjects in order, as in a replay, with the redrive count
// and history on the event. If DPS fails again the worker's new letter carries count+1 and
// the history. A letter whose count reached MaxRedrives (default the schedule's length) is
// parked: replaced by a permanent letter whose Dpsync-History lists every failure.
//
// A held letter with no letter of its key ahead of it (the letter it followed was purged,
// or replayed while the event was being held, so the replay did not select it) is
// released at the next pass: it and the held letters behind it are republished in order,
// without counting a redrive. Otherwise it would hold its key for ever.
//
// # Replay safety
//
// Replay (and redrive) republish a letter's body to its Dpsync-Origin-Subject with
// Nats-Msg-Id "replay.<dlq seq>", Dpsync-Replay-Of and Dpsync-Position, wait for the
// events stream's PubAck, and only then delete the letter. Hence:
//
//   - none is lost: a letter disappears only after its event is stored again;
//   - the duplicate window does not swallow a replay: its id differs from the event's own
//     id, which may still be in the window;
//   - a re-run after an interruption does not double a letter: a letter republished but
//     not yet deleted is republished with the same derived id and dropped as a duplicate
//     (within the events stream's duplicate window; beyond it the second copy re-applies
//     the same change, while the still-present letter kept later events of the key held,
//     and the worker's idempotent apply makes it a no-op);
//   - order per key holds: a key's letters go out one at a time in position order, each
//     after the previous one's PubAck and deletion, never past a letter of the key that
//     failed to go out, and the worker holds a replayed event behind any letter of its key
//     with a lower position that is still in the stream.
package dlq
