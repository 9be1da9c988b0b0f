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
// # Replay protocol
//
// Replay and redrive republish a letter's body to its Dpsync-Origin-Subject with
// Nats-Msg-Id "replay.<dlq seq>", Dpsync-Replay-Of and Dpsync-Position, and wait for the
// events stream's PubAck. They do not remove the letter: the worker that settles the
// event (applies it, or dead-letters it again under a new letter) removes the letter named
// by Dpsync-Replay-Of before it acknowledges the event. The republisher polls the letter
// until it is gone, and only then republishes the key's next letter. So while a replayed
// event is not settled, its letter still holds the key: a newer event of the key that
// waits in the events stream ahead of the replay (a backlog) is held behind the letter
// instead of being applied first, and the replay comes back for it (Replay reads the key
// again once its letters are settled and replays the held letters at its head, round after
// round, up to ReplayOptions.Rounds). A letter whose event was dead-lettered again is told
// by its new letter, whose Dpsync-Origin-Seq is the republished event's sequence
// (DeadLetteredAgainError); the key stops there, its held letters staying behind the new
// letter. The wait for a worker is bounded (ReplayOptions.Wait, default 2 min;
// RedriverOptions.Settle): a letter not settled in time stops its key (NotSettledError), and
// the other keys, replayed concurrently, go on.
//
// # Redrive
//
// Each worker runs a Redriver over the keys of the partitions it owns. The first letter
// of a key, if transient, is redriven when Schedule[redrives] (default 1 min, 5 min,
// 30 min, 2 h) has passed since its last failure: it and the held letters right behind it
// are republished to their origin subjects in order, each once the one before was settled,
// with the redrive count and history on the event. If DPS fails again the worker's new
// letter carries count+1 and the history. A letter whose count reached MaxRedrives
// (default the schedule's length) is parked: replaced by a permanent letter whose
// Dpsync-History lists every failure. A redriven letter not settled within Settle is left
// to a later pass, which does not republish it while its event is still in the events
// stream.
//
// A held letter with no letter of its key ahead of it (the letter it followed was purged,
// or replayed without it: --no-followers, or a replay interrupted before it came back for
// the letters held meanwhile) is released at the next pass: it and the held letters behind
// it are republished in order, without counting a redrive. Otherwise it would hold its key
// for ever.
//
// # Replay safety
//
//   - none is lost: a letter disappears only after its event was stored again and settled;
//   - the duplicate window does not swallow a replay: its id differs from the event's own
//     id, which may still be in the window;
//   - order per key holds: a key's letters go out one at a time in position order, each
//     after the previous one was settled, never past a letter of the key that failed to go
//     out or was not settled, and while a letter is there the worker holds every newer
//     event of its key behind it;
//   - a re-run after an interruption (or a wait that ran out) does not double a letter
//     within the events stream's duplicate window: a letter republished but not yet
//     settled is republished with the same derived id, dropped as a duplicate, and waited
//     for again. Beyond the window the second copy is stored: once the first was settled
//     (the letter gone) it applies the same change again, which undoes a newer event of the
//     key applied between the two copies. Re-run once a worker has taken the first copy
//     (the letter is gone then and nothing is republished), or within the window.
package dlq
