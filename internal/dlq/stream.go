package dlq

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults of the dead-letter stream.
const (
	DefaultStream        = "DPS_DLQ"
	DefaultSubjectPrefix = "dpsync.dlq"
)

// headerMsgSize is set by the server on headers-only deliveries: the size of the body.
const headerMsgSize = "Nats-Msg-Size"

// StreamConfig shapes the dead-letter stream. Zero fields take the defaults.
type StreamConfig struct {
	// Name of the stream (default "DPS_DLQ").
	Name string
	// SubjectPrefix of the letters' subjects (default "dpsync.dlq"); the stream takes
	// "<SubjectPrefix>.>".
	SubjectPrefix string
	// MemoryStorage keeps letters in memory (tests only); the default is file storage.
	MemoryStorage bool
	// Replicas of the stream (default 1; 3 in a cluster).
	Replicas int
	// MaxAge drops letters older than this. The default 0 keeps them until an operator
	// replays or purges them: an expired letter is a lost event.
	MaxAge time.Duration
	// DuplicateWindow is how long the stream remembers letter ids (default 10 min). It must
	// exceed the time a worker may take between publishing a letter and acknowledging its
	// event (AckWait plus a restart), so a redelivered event does not duplicate its letter.
	DuplicateWindow time.Duration
}

func (c *StreamConfig) setDefaults() {
	if c.Name == "" {
		c.Name = DefaultStream
	}
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = DefaultSubjectPrefix
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = 10 * time.Minute
	}
}

// Validate reports the first invalid field.
func (c StreamConfig) Validate() error {
	c.setDefaults()
	switch {
	case strings.ContainsAny(c.Name, ".*> \t"):
		return fmt.Errorf("dlq stream name %q: must not contain '.', '*', '>' or spaces", c.Name)
	case strings.ContainsAny(c.SubjectPrefix, "*> \t") || strings.HasSuffix(c.SubjectPrefix, ".") || strings.HasPrefix(c.SubjectPrefix, "."):
		return fmt.Errorf("dlq subject prefix %q: must be a literal subject", c.SubjectPrefix)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("dlq stream replicas: %d is outside 1..5", c.Replicas)
	case c.MaxAge < 0:
		return fmt.Errorf("dlq stream max age: %v is negative", c.MaxAge)
	case c.DuplicateWindow < 0 || (c.MaxAge > 0 && c.DuplicateWindow > c.MaxAge):
		return fmt.Errorf("dlq stream duplicate window: %v must be between 0 and the max age %v", c.DuplicateWindow, c.MaxAge)
	}
	return nil
}

// EnsureStream creates the dead-letter stream, or updates an existing one to cfg. It is
// idempotent: calling it again with the same cfg changes nothing. Storage cannot change on
// an existing stream; the server's refusal is returned.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	storage := jetstream.FileStorage
	if cfg.MemoryStorage {
		storage = jetstream.MemoryStorage
	}
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        cfg.Name,
		Description: "dpsync dead letters: failed events with the reason in headers",
		Subjects:    []string{cfg.SubjectPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		// Never drop a letter to make room: a full stream refuses new letters, the
		// worker keeps the event unacknowledged, and the operator sees it.
		Discard:     jetstream.DiscardNew,
		MaxAge:      cfg.MaxAge,
		Storage:     storage,
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.DuplicateWindow,
		AllowRollup: false,
		DenyDelete:  false,
		DenyPurge:   false,
	})
	if err != nil {
		return nil, fmt.Errorf("ensure dlq stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// openStream looks up a stream and names it in the error.
func openStream(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Stream, error) {
	if js == nil {
		return nil, errors.New("dlq: no JetStream context")
	}
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, &streamNotFoundError{name: name}
	}
	if err != nil {
		return nil, fmt.Errorf("dlq stream %s: %w", name, err)
	}
	return s, nil
}

// streamNotFoundError says plainly that the stream does not exist (the server's text is
// "API error: code=404 …"); it matches jetstream.ErrStreamNotFound with errors.Is.
type streamNotFoundError struct{ name string }

func (e *streamNotFoundError) Error() string {
	return "dlq stream " + e.name + " not found (does the name match the worker's, and has a worker run?)"
}

func (e *streamNotFoundError) Unwrap() error { return jetstream.ErrStreamNotFound }

// scanBatch is the number of letters fetched per request while scanning.
const scanBatch = 512

// scan calls fn with every message of s from sequence from on (0 or 1: all), in sequence
// order, up to the last message the
// stream held when the scan started, whose sequence it returns. With headersOnly the bodies are not transferred (data
// is nil). It reads through an ordered consumer (an ephemeral, flow-controlled consumer
// the client recreates on a gap) and deletes it when done.
func scan(ctx context.Context, s jetstream.Stream, from uint64, headersOnly bool, fn func(seq uint64, subject string, stored time.Time, h nats.Header, data []byte) error) (uint64, error) {
	info, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("scan %s: %w", s.CachedInfo().Config.Name, err)
	}
	name := info.Config.Name
	last := info.State.LastSeq
	if info.State.Msgs == 0 || from > last {
		return last, nil
	}
	cc := jetstream.OrderedConsumerConfig{
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		HeadersOnly:       headersOnly,
		InactiveThreshold: time.Minute,
	}
	if from > 1 {
		cc.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cc.OptStartSeq = from
	}
	cons, err := s.OrderedConsumer(ctx, cc)
	if err != nil {
		return 0, fmt.Errorf("scan %s: %w", name, err)
	}
	defer func() {
		// The ordered consumer leaves its last server-side consumer behind; remove it
		// now rather than after the inactivity threshold.
		if ci := cons.CachedInfo(); ci != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = s.DeleteConsumer(dctx, ci.Name)
			cancel()
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		batch, err := cons.FetchNoWait(scanBatch)
		if err != nil {
			return 0, fmt.Errorf("scan %s: %w", name, err)
		}
		n, done := 0, false
		var fnErr error
		for msg := range batch.Messages() {
			if fnErr != nil || done {
				continue // drain the batch
			}
			n++
			meta, err := msg.Metadata()
			if err != nil {
				fnErr = fmt.Errorf("scan %s: %w", name, err)
				continue
			}
			seq := meta.Sequence.Stream
			if seq > last {
				done = true
				continue
			}
			var data []byte
			if !headersOnly {
				data = msg.Data()
			}
			if err := fn(seq, msg.Subject(), meta.Timestamp, msg.Headers(), data); err != nil {
				fnErr = err
				continue
			}
			if seq >= last || meta.NumPending == 0 {
				done = true
			}
		}
		if fnErr != nil {
			return 0, fnErr
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
			return 0, fmt.Errorf("scan %s: %w", name, err)
		}
		if done || n == 0 {
			return last, nil
		}
	}
}

// RemoveLetter removes the letter at seq from the dead-letter stream s. A letter that is
// gone already is not an error. The worker calls it when it settled the replay of that
// letter (the event's Dpsync-Replay-Of), before it acknowledges the event.
func RemoveLetter(ctx context.Context, s jetstream.Stream, seq uint64) error {
	if err := deleteLetter(ctx, s, seq); err != nil && !errors.Is(err, errGone) {
		return err
	}
	return nil
}

// deleteLetter removes the letter at seq. It returns errGone if the letter was already
// gone (removed by someone else): the server's refusal does not carry a typed error, so
// that case is told apart by reading the sequence.
func deleteLetter(ctx context.Context, s jetstream.Stream, seq uint64) error {
	err := s.DeleteMsg(ctx, seq)
	if err == nil {
		return nil
	}
	if _, gerr := s.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
		return errGone
	}
	return err
}
